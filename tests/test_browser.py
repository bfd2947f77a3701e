"""What users look at, in a real browser (Debian's chromium under Playwright): after a small
pipeline run on the test stack, dagster-webserver's catalog and lineage show every asset
materialized, an asset page shows its passed checks and its preview images really loaded, and
the MLflow UI shows the training run's metrics and the registered version with its aliases.
Screenshots land in reports/screenshots/, which scripts/test.sh uploads with the reports."""

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from browser_helpers import chromium, screenshot
from mlflow.tracking import MlflowClient
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from pixelpipe import settings as settings_mod
from pixelpipe.datagen import generate
from pixelpipe.devstack.processes import HOST, pick_ports, stop_pid, wait_http
from pixelpipe.pipeline import instance_for, poll
from pixelpipe.settings import Settings, load_settings
from pixelpipe.uploads import upload_dataset

pytestmark = pytest.mark.stack

PIPELINE_ASSETS = [
    "raw_image_batches",
    "augmented_images",
    "normalized_images",
    "raw_annotations",
    "coco_annotations",
]
# Materialized here through Dagster by train_and_predict(); that is the one place to follow
# the detector's trained_model config and batch_predictions when they change.
MODEL_ASSETS = ["trained_model", "batch_predictions"]
PREVIEW_ASSET = "normalized_images"  # every variant side by side, boxes drawn
CHECKS = ["counts_add_up", "manifest_valid", "outputs_exist"]
TRAIN_CONFIG = {"variant": "small", "model": "tiny", "epochs": 1, "batch_size": 8,
                "loader": "torch", "device": "cpu", "max_images": 12}  # fmt: skip


@dataclass
class UiRun:
    """What the small pipeline run made: its batch, training run and model version."""

    settings: Settings
    partition: str
    run_id: str
    model_version: str
    thumbnails: int


@pytest.fixture(scope="module")
def ui_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The session's stack and buckets, but an instance, experiment and model of our own, so the
    UI shows exactly this module's run."""
    root = tmp_path_factory.mktemp("ui")
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # create the instance's storage now: the webserver and this process migrating a fresh
    # sqlite store at the same moment can leave it with two alembic heads
    dg.DagsterInstance.from_config(str(root / "dagster")).get_runs_count()
    tag = secrets.token_hex(3)
    env = {
        "DAGSTER_HOME": str(root / "dagster"),
        "MLFLOW_EXPERIMENT": f"ui-{tag}",
        "REGISTERED_MODEL_NAME": f"ui-{tag}-model",
        "NVME_ROOT": str(root / "nvme"),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        settings_mod.get_settings.cache_clear()
        yield load_settings()
    settings_mod.get_settings.cache_clear()  # the patch restored the session's variables


def train_and_predict(settings: Settings, instance: dg.DagsterInstance, partition: str) -> str:
    """trained_model through its job, promote the candidate, batch_predictions for the batch
    (through the definitions' asset job: it stages the batch's raw images as its input)."""
    from pixelpipe.definitions import build_definitions
    from pixelpipe.serving.registry import promote

    defs = build_definitions(settings)
    job = defs.resolve_job_def("training_job")
    trained = job.execute_in_process(
        instance=instance, run_config={"ops": {"trained_model": {"config": TRAIN_CONFIG}}}
    )
    assert trained.success
    version = promote(MlflowClient(settings.mlflow_tracking_uri), settings.registered_model_name)
    predicted = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[dg.AssetKey("batch_predictions")],
        partition_key=partition,
        instance=instance,
    )
    assert predicted.success
    return version


@pytest.fixture(scope="module")
def ui_run(ui_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> UiRun:
    """Three small labelled images through the sensor's batch, annotations, training and
    predictions, all on the module's own Dagster instance."""
    prefix = f"{ui_settings.raw_prefix}/ui-{secrets.token_hex(3)}"
    sample = generate(
        tmp_path_factory.mktemp("ui-data"), 3, seed=21, sizes=[(320, 240), (480, 360)]
    )
    assert not upload_dataset(sample.out_dir, ui_settings, prefix).failures
    (batch,) = poll(ui_settings.model_copy(update={"raw_prefix": prefix}), prefix, echo=print)
    assert batch.success
    instance = instance_for(ui_settings)
    version = train_and_predict(ui_settings, instance, batch.partition)
    thumbnails = batch.metadata[PREVIEW_ASSET]["preview_thumbnails"]
    model = MlflowClient(ui_settings.mlflow_tracking_uri).get_model_version(
        ui_settings.registered_model_name, version
    )
    return UiRun(ui_settings, batch.partition, model.run_id, version, int(thumbnails))


@dataclass
class Webserver:
    """A dagster-webserver process of this module's own."""

    url: str
    pid: int
    log: Path

    def ready(self) -> str:
        """Wait until it answers and both code locations have loaded; return its URL."""
        wait_http(f"{self.url}/server_info", 120, self.pid, self.log)
        _wait_for_locations(self.url, {"pixelpipe"}, self.log)
        return self.url


@pytest.fixture(scope="module")
def webserver(
    ui_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Webserver]:
    """dagster-webserver on the module's instance with pixelpipe's code location, launched
    before the pipeline runs so that its code server loads meanwhile."""
    root = tmp_path_factory.mktemp("webserver")
    workspace = root / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n      module_name: pixelpipe.definitions\n"
        "      location_name: pixelpipe\n"
    )
    (port,) = pick_ports(1, grpc=False)
    log = root / "webserver.log"
    cmd = [str(Path(sys.executable).parent / "dagster-webserver"), "-h", HOST, "-p", str(port),
           "-w", str(workspace)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True
        )
    try:
        yield Webserver(f"http://{HOST}:{port}", proc.pid, log)
    finally:
        stop_pid(proc.pid, signal.SIGTERM)


def _wait_for_locations(url: str, names: set[str], log: Path, timeout: float = 120) -> None:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
    query += "locationOrLoadError { __typename } } } } }"
    deadline = time.monotonic() + timeout
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        body = httpx.post(f"{url}/graphql", json={"query": query}, timeout=30).json()
        entries = body["data"]["workspaceOrError"]["locationEntries"]
        loaded = {
            e["name"]
            for e in entries
            if e["loadStatus"] == "LOADED"
            and (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation"
        }
        if names <= loaded:
            return
        time.sleep(1)
    raise AssertionError(f"code locations did not load: {entries}; see {log}")


@pytest.fixture(scope="module")
def page(webserver: Webserver, ui_run: UiRun) -> Iterator[Any]:
    """One browser page, once the run is done; Dagster's "Join the Dagster community" modal
    is skipped once."""
    webserver.ready()
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        page = context.new_page()
        skip = page.get_by_role("button", name="Skip")
        # should it come back mid-test, whatever waits on the page clicks it away first
        page.add_locator_handler(skip, lambda button: button.click())
        page.goto(f"{webserver.url}/overview")
        try:  # a fresh instance shows it a few seconds in; Skip records that on the server
            skip.wait_for(timeout=30_000)
            skip.click()
        except PlaywrightTimeout:
            pass
        yield page
        context.close()


def _open_dagster(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")


def _catalog(page: Any, names: list[str], timeout: float = 60) -> dict[str, str]:
    """Asset name -> the text of its Status cell, once every named row has loaded its status."""
    rows = page.locator("[class*=VirtualizedAssetRow_rowGrid]")
    rows.first.wait_for()
    deadline = time.monotonic() + timeout
    while True:
        out = {}
        for i in range(rows.count()):
            row = rows.nth(i)
            name = row.locator("input[data-testid^=checkbox-]").get_attribute("data-testid")
            cell = row.locator(":scope > div").nth(3).inner_text()
            out[name.removeprefix("checkbox-")] = " ".join(cell.split())
        # a row shows dashes until its status query has answered
        if all(n in out and "—" not in out[n] for n in names) or time.monotonic() > deadline:
            return out
        page.wait_for_timeout(500)


def test_catalog_and_lineage_show_every_asset_materialized(page: Any, webserver: Webserver) -> None:
    expected = [*PIPELINE_ASSETS, *MODEL_ASSETS]
    _open_dagster(page, f"{webserver.url}/assets")
    status = _catalog(page, expected)
    screenshot(page, "dagster-catalog")
    assert set(expected) <= set(status), status
    for name in expected:
        # unpartitioned: "Materialized · <time>"; partitioned: "All" with 0 missing, 0 failed,
        # 0 in progress of "1 partitions"
        assert status[name].startswith("Materialized") or status[name].startswith(
            "All 0 0 0 1 partition"
        ), (name, status[name])

    _open_dagster(page, f"{webserver.url}/asset-groups")
    page.keyboard.press("Alt+e")  # "Expand all groups"
    for name in expected:
        page.get_by_text(name, exact=True).last.wait_for()
    screenshot(page, "dagster-lineage")


def test_asset_pages_show_passed_checks_and_loaded_previews(
    page: Any, webserver: Webserver, ui_run: UiRun
) -> None:
    _open_dagster(page, f"{webserver.url}/assets/normalized_images?view=checks")
    for check in CHECKS:
        page.get_by_text(check, exact=True).first.wait_for()
    assert page.get_by_text("Succeeded", exact=True).count() == len(CHECKS)
    assert page.get_by_text("Passed", exact=True).count() == 1  # the selected check's latest
    screenshot(page, "dagster-normalized-images-checks")

    _open_dagster(page, f"{webserver.url}/assets/{PREVIEW_ASSET}?partition={ui_run.partition}")
    page.get_by_text(ui_run.partition).first.wait_for()
    # a data-URI preview is longer than the 1,000 characters Dagster renders inline
    page.get_by_text("[Show Markdown]").first.click()
    dialog = page.get_by_role("dialog")
    images = dialog.locator("img")
    images.nth(ui_run.thumbnails - 1).wait_for()
    page.wait_for_function(
        "n => [...document.querySelectorAll('[role=dialog] img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length === n",
        arg=ui_run.thumbnails,
    )
    loaded = images.evaluate_all("els => els.map(e => [e.alt, e.naturalWidth, e.naturalHeight])")
    assert len(loaded) == ui_run.thumbnails
    variants = [v.name for v in ui_run.settings.variants]
    assert [alt.split()[0] for alt, _, _ in loaded[: len(variants)]] == variants
    assert all(max(w, h) == 128 for _, w, h in loaded)
    screenshot(page, "dagster-stage2-preview")


def _shown(value: float) -> str:
    """A metric value as the MLflow UI prints it (JavaScript's shortest round-trip form)."""
    return str(int(value)) if value == int(value) else repr(value)


def test_mlflow_shows_the_run_metrics_and_the_aliased_version(page: Any, ui_run: UiRun) -> None:
    settings = ui_run.settings
    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(ui_run.run_id)
    page.goto(f"{settings.mlflow_tracking_uri}/#/experiments/{run.info.experiment_id}"
              f"/runs/{ui_run.run_id}")  # fmt: skip
    heading = page.get_by_text(f"Metrics ({len(run.data.metrics)})")
    heading.wait_for(timeout=60_000)
    heading.scroll_into_view_if_needed()
    for name in ("train_loss", "val_loss", "val_f1_macro"):
        row = page.get_by_role("row").filter(has=page.get_by_text(name, exact=True)).first
        assert _shown(run.data.metrics[name]) in row.inner_text(), name
    screenshot(page, "mlflow-run")

    page.goto(f"{settings.mlflow_tracking_uri}/#/models/{settings.registered_model_name}")
    row = page.get_by_role("row").filter(has=page.get_by_text(f"Version {ui_run.model_version}"))
    row.first.wait_for(timeout=60_000)
    text = " ".join(row.first.inner_text().split())  # the UI writes "@\u00a0candidate"
    assert "@ candidate" in text and "@ champion" in text, text
    screenshot(page, "mlflow-registered-model")
