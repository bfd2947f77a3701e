"""Ordinary faults on the real stack lose nothing: a batch is complete or it fails and is retried.

Every fault is really caused: the SeaweedFS server is SIGKILLed at a chosen request (a TCP proxy
in front of it picks the moment, every byte still goes to the real server), the NVMe disk is a
small tmpfs that really fills up, objects are overwritten and deleted between listing and
staging, two runs of one partition really overlap (a daemon-launched run and `pixelpipe rerun`).
Each test ends with the audit a user would run (pixelpipe.audit): every raw image has exactly its
outputs, every manifest sha256 equals its object, no two items share an output, nothing is
recorded as a bad image that is not one. Each writes a row to reports/faults.csv.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from fault_tools import FaultProxy, fill, kill_process_group, record, small_filesystem

from pixelpipe import manifests as mf
from pixelpipe import settings as settings_mod
from pixelpipe.audit import audit
from pixelpipe.datagen import generate
from pixelpipe.devstack.stack import DAGSTER_YAML, DevStack
from pixelpipe.pipeline import poll, rerun
from pixelpipe.resources.s3 import make_client
from pixelpipe.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
BUCKETS = {
    "RAW_BUCKET": "faults-raw",
    "AUGMENTED_BUCKET": "faults-augmented",
    "NORMALIZED_BUCKET": "faults-normalized",
    "ARTIFACTS_BUCKET": "faults-artifacts",
}
SIZES = "small:64x64,medium:96x96:letterbox"
COPIES = 2


@dataclass
class FaultStack:
    """A stack of the module's own (its server gets killed) and the proxy in front of it."""

    dev: DevStack
    proxy: FaultProxy
    s3_pid: int

    def kill_s3(self) -> None:
        kill_process_group(self.s3_pid)

    def restart(self) -> None:
        port = self.proxy.upstream[1]
        info = self.dev.up()
        assert info.s3_port == port, "a restarted stack keeps its ports"
        self.s3_pid = info.s3_pid


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    saved = {k: os.environ.get(k) for k in BUCKETS}
    os.environ.update(BUCKETS)
    dev = DevStack(tmp_path_factory.mktemp("fault-stack"), load_settings())
    info = dev.up()
    proxy = FaultProxy(info.s3_port)
    try:
        yield FaultStack(dev, proxy, info.s3_pid)
    finally:
        proxy.close()
        dev.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def fenv(fstack: FaultStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The environment of one fault test: S3 through the proxy, its own Dagster instance."""
    info = fstack.dev.info()
    assert info is not None
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    dg.DagsterInstance.from_config(str(home)).get_runs_count()  # create storage once
    env = {
        **BUCKETS,
        "S3_ENDPOINT_URL": fstack.proxy.endpoint,
        "AWS_ACCESS_KEY_ID": info.access_key,
        "AWS_SECRET_ACCESS_KEY": info.secret_key,
        "MLFLOW_TRACKING_URI": info.mlflow_uri,
        "MLFLOW_S3_ENDPOINT_URL": fstack.proxy.endpoint,
        "DAGSTER_HOME": str(home),
        "NVME_ROOT": str(tmp_path / "nvme"),
        "RAW_PREFIX": "incoming",
        "S3_MAX_ATTEMPTS": "2",
        "INGEST_BATCH_SIZE": "16",
        "AUGMENT_COPIES": str(COPIES),
        "NORMALIZE_SIZES": SIZES,
        "WORKERS": "2",
        "IMAGE_BACKEND": "cpu",
        "RUN_RETRIES": "3",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings_mod.get_settings.cache_clear()
    yield load_settings()
    settings_mod.get_settings.cache_clear()


def direct(fstack: FaultStack) -> Any:
    """A client that bypasses the proxy (the test's own view of S3)."""
    info = fstack.dev.info()
    assert info is not None
    return make_client(info.s3_endpoint, info.access_key, info.secret_key, "us-east-1")


def put_images(s3: Any, settings: Settings, tmp: Path, prefix: str, keys: list[str]) -> None:
    """Real datagen scenes, small, uploaded under the given keys."""
    sample = tmp / "sample"
    generate(sample, len(keys), seed=11, sizes=[(160, 120), (96, 128)])
    for key, path in zip(keys, sorted((sample / "images").iterdir()), strict=True):
        s3.put_object(Bucket=settings.raw_bucket, Key=f"{prefix}/{key}", Body=path.read_bytes())


def check_end_state(
    fstack: FaultStack, settings: Settings, prefix: str, fault: str, runs: int, started: float
) -> None:
    report = audit(
        direct(fstack),
        raw_bucket=settings.raw_bucket,
        prefix=prefix,
        buckets={"augmented": settings.augmented_bucket, "normalized": settings.normalized_bucket},
        copies=COPIES,
        variants=len(settings.variants),
        expected_bad=set(),
    )
    record(fault, runs, report.row(), time.monotonic() - started)
    assert report.raw_images > 0 and report.outputs == report.expected_outputs, report
    assert report.clean, report


def s3_kill_on(fstack: FaultStack, method: str, bucket: str) -> Any:
    def matches(m: str, path: str) -> bool:
        return m == method and path.startswith(f"/{bucket}/") and "/_manifests/" not in path

    return fstack.proxy.on(matches, fstack.kill_s3)


@pytest.mark.parametrize(("phase", "method", "bucket_var"), [
    ("stage-in", "GET", "RAW_BUCKET"), ("stage-out", "PUT", "AUGMENTED_BUCKET"),
])  # fmt: skip
def test_s3_killed_mid_stage_fails_the_run_and_the_retry_completes(
    fstack: FaultStack, fenv: Settings, tmp_path: Path, phase: str, method: str, bucket_var: str
) -> None:
    started = time.monotonic()
    prefix = f"incoming/kill-{phase}"
    put_images(direct(fstack), fenv, tmp_path, prefix, [f"img{i}.jpg" for i in range(6)])
    fired = s3_kill_on(fstack, method, os.environ[bucket_var])
    lines: list[str] = []
    (failed,) = poll(fenv, prefix, echo=lines.append)
    assert fired.is_set() and not failed.success
    log = "\n".join(lines)
    assert f"FAILED: {phase} failed: {method} s3://{os.environ[bucket_var]}/" in log, log
    assert "gave up after 3 attempts" in log and "retried on the next tick" in log, log
    fstack.restart()
    s3 = direct(fstack)
    for asset, bucket in (("augmented_images", fenv.augmented_bucket),):
        assert mf.latest_manifest_uri(s3, bucket, asset, failed.partition) is None  # none written
    (retried,) = poll(fenv, prefix, echo=lines.append)
    assert retried.success and retried.partition == failed.partition
    check_end_state(fstack, fenv, prefix, f"S3 SIGKILLed during {phase}", 2, started)


@pytest.mark.parametrize("phase", ["stage-in", "outputs"])
def test_full_disk_fails_the_step_with_a_clear_message(
    fstack: FaultStack, fenv: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    started = time.monotonic()
    prefix = f"incoming/disk-{phase}"
    put_images(direct(fstack), fenv, tmp_path, prefix, [f"img{i}.jpg" for i in range(6)])
    raw_bytes = sum(
        o["Size"]
        for o in direct(fstack).list_objects_v2(Bucket=fenv.raw_bucket, Prefix=prefix)["Contents"]
    )
    with contextlib.ExitStack() as stack:
        try:
            nvme = stack.enter_context(small_filesystem(4 * 1024 * 1024))
        except PermissionError as exc:
            pytest.skip(f"needs root to mount a small tmpfs as NVME_ROOT: {exc}")
        monkeypatch.setenv("NVME_ROOT", str(nvme))
        settings_mod.get_settings.cache_clear()
        settings = load_settings()
        # stage-in: room for a third of the inputs; outputs: room for the inputs only
        room = raw_bytes // 3 if phase == "stage-in" else raw_bytes + 6 * 8192
        filler = fill(nvme, room)
        lines: list[str] = []
        (failed,) = poll(settings, prefix, echo=lines.append)
        log = "\n".join(lines)
        assert not failed.success
        assert "No space left on device" in log, log
        expected = "stage-in failed: GET s3://" if phase == "stage-in" else "cannot write "
        assert expected in log, log
        s3 = direct(fstack)
        assert mf.latest_manifest_uri(s3, fenv.augmented_bucket, "augmented_images",
                                      failed.partition) is None  # fmt: skip
        filler.unlink()
        (retried,) = poll(settings, prefix, echo=lines.append)
        assert retried.success
    check_end_state(fstack, fenv, prefix, f"NVMe full during {phase}", 2, started)


def test_objects_changed_or_deleted_after_listing_fail_alone_and_new_bytes_are_processed(
    fstack: FaultStack, fenv: Settings, tmp_path: Path
) -> None:
    started = time.monotonic()
    prefix = "incoming/changed"
    s3 = direct(fstack)
    put_images(s3, fenv, tmp_path, prefix, [f"img{i}.jpg" for i in range(5)])
    from pixelpipe.pipeline import INGEST_JOB, instance_for
    from pixelpipe.resources.s3 import client_from_settings
    from pixelpipe.sensors.raw_images import evaluate_tick

    instance = instance_for(fenv)
    tick = evaluate_tick(instance, client_from_settings(fenv), fenv, prefix, INGEST_JOB)
    assert len(tick.run_requests) == 1  # listed (keys, ETags, sizes) ...
    replacement = (tmp_path / "sample" / "images").iterdir().__next__().read_bytes()
    s3.put_object(Bucket=fenv.raw_bucket, Key=f"{prefix}/img1.jpg", Body=replacement[::-1][:999])
    s3.put_object(Bucket=fenv.raw_bucket, Key=f"{prefix}/img2.jpg", Body=replacement)
    s3.delete_object(Bucket=fenv.raw_bucket, Key=f"{prefix}/img3.jpg")
    # ... then overwritten and deleted before the run stages them; the same tick lists the
    # overwritten objects again (new ETags) as a batch of their own
    runs = {r.partition: r for r in poll(fenv, prefix, echo=lambda _: None)}
    assert len(runs) == 2 and all(r.success for r in runs.values())
    first = runs.pop(tick.run_requests[0].partition_key)
    (second,) = runs.values()
    manifest = mf.read_json(s3, first.metadata["augmented_images"]["manifest_uri"])
    reasons = {mf.split_uri(f["source_uri"])[1].rsplit("/", 1)[-1]: f["reason"]
               for f in manifest["failures"]}  # fmt: skip
    assert reasons["img1.jpg"].startswith("changed since listed")
    assert reasons["img2.jpg"].startswith("changed since listed")
    assert reasons["img3.jpg"] == "gone since listed: NoSuchKey (HTTP 404)"
    assert len(reasons) == 3 and len(manifest["items"]) == 2 * COPIES
    second_manifest = mf.read_json(s3, second.metadata["augmented_images"]["manifest_uri"])
    assert len(second_manifest["items"]) == COPIES
    (bad,) = second_manifest["failures"]  # img1's new bytes are not an image; img2's are
    assert bad["source_uri"].endswith("/img1.jpg") and "image" in bad["reason"], bad
    report = audit(
        s3,
        raw_bucket=fenv.raw_bucket,
        prefix=prefix,
        buckets={"augmented": fenv.augmented_bucket, "normalized": fenv.normalized_bucket},
        copies=COPIES,
        variants=len(fenv.variants),
        expected_bad={f"{prefix}/img1.jpg"},  # its new bytes are not an image
    )
    seconds = time.monotonic() - started
    record("object overwritten / deleted after listing", 2, report.row(), seconds)
    assert report.clean and report.outputs == report.expected_outputs, report


def test_keys_that_differ_by_extension_long_keys_and_file_beside_folder_all_process(
    fstack: FaultStack, fenv: Settings, tmp_path: Path
) -> None:
    started = time.monotonic()
    prefix = "incoming/keys"
    long_name = "/".join(["d" * 200] * 4) + "/"
    long_name += "n" * (1023 - len(f"{prefix}/") - len(long_name) - 4) + ".jpg"
    keys = ["cat.jpg", "cat.png", "IMG_1.JPG", "IMG_1.jpg", "x.jpeg", "x.jpg", "x.jpg/y.jpg",
            "e" * 250 + ".jpg", long_name]  # fmt: skip
    assert len(f"{prefix}/{long_name}".encode()) == 1023
    put_images(direct(fstack), fenv, tmp_path, prefix, keys)
    (run,) = poll(fenv, prefix, echo=lambda _: None)
    assert run.success
    manifest = mf.read_json(direct(fstack), run.metadata["augmented_images"]["manifest_uri"])
    assert manifest["failures"] == []
    assert {i["source_key"] for i in manifest["items"]} == {f"{prefix}/{k}" for k in keys}
    assert all(len(mf.split_uri(i["output_uri"])[1].encode()) <= 1024 for i in manifest["items"])
    check_end_state(fstack, fenv, prefix, "same-stem, 1,023-byte and file-beside-folder keys",
                    1, started)  # fmt: skip


def test_a_daemon_run_and_a_manual_rerun_of_one_partition_at_once_leave_one_output_set(
    fstack: FaultStack, fenv: Settings, tmp_path: Path
) -> None:
    started = time.monotonic()
    prefix = "incoming/concurrent"
    put_images(direct(fstack), fenv, tmp_path, prefix, [f"img{i}.jpg" for i in range(16)])
    env = {**os.environ, "RAW_PREFIX": prefix, "SENSOR_INTERVAL_SECONDS": "1"}
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "daemon.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    instance = dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"])
    try:
        daemon_run = _wait_for_run(instance, tmp_path, dg.DagsterRunStatus.STARTED)
        partition = daemon_run.tags["pixelpipe/batch"]
        manual = rerun(fenv, partition, echo=lambda _: None)
        final = _wait_for_run(instance, tmp_path, None, daemon_run.run_id)
    finally:
        kill_process_group(daemon.pid)
        daemon.wait(30)
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(
        dg.RunsFilter(tags={"pixelpipe/batch": partition}))}  # fmt: skip
    ours, theirs = records[manual.run_id], records[daemon_run.run_id]
    assert theirs.start_time < ours.end_time and ours.start_time < theirs.end_time, "overlap"
    assert manual.success and final.status == dg.DagsterRunStatus.SUCCESS
    s3 = direct(fstack)
    for bucket, per in ((fenv.augmented_bucket, COPIES), (fenv.normalized_bucket, 2 * COPIES)):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        outputs = [o["Key"] for p in pages for o in p.get("Contents", [])
                   if partition in o["Key"] and "/_manifests/" not in f"/{o['Key']}"]  # fmt: skip
        assert len(outputs) == 16 * per  # one set of outputs, whoever wrote them
    latest = mf.latest_manifest_uri(s3, fenv.augmented_bucket, "augmented_images", partition)
    assert latest is not None
    mf.validate_against_schema("stage1_manifest", mf.read_json(s3, latest))
    check_end_state(fstack, fenv, prefix, "daemon run + manual rerun of one partition at once",
                    2, started)  # fmt: skip


def _wait_for_run(
    instance: dg.DagsterInstance,
    tmp_path: Path,
    status: dg.DagsterRunStatus | None,
    run_id: str | None = None,
    timeout: float = 180,
) -> Any:
    """The daemon's run once it reaches `status` (None: once it has finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run_id:
            run = instance.get_run_by_id(run_id)
            runs = [run] if run else []
        else:
            runs = [r.dagster_run for r in instance.get_run_records(
                dg.RunsFilter(job_name="ingest_job"), limit=1)]  # fmt: skip
        for run in runs:
            done = run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
            if (status is None and done) or (status is not None and run.status == status):
                return run
        time.sleep(0.25)
    log = (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"no run reached {status} in {timeout}s; daemon log:\n{log}")


def test_a_batch_that_keeps_failing_is_retried_then_reported_with_its_rerun_command(
    fstack: FaultStack, fenv: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing that points outside RAW_BUCKET (someone wrote batches/ by hand) is refused every
    time: a permanent fault, retried RUN_RETRIES times and then reported, never run forever."""
    from pixelpipe.pipeline import INGEST_JOB, instance_for
    from pixelpipe.sensors.batch_runs import review_pending

    monkeypatch.setenv("RUN_RETRIES", "1")
    settings_mod.get_settings.cache_clear()
    settings = load_settings()
    partition = "b-foreign-listing"
    listing = mf.BatchListing(
        partition=partition, bucket="someone-elses-bucket", prefix="incoming", created_at="now",
        objects=[mf.BatchObject(key="incoming/a.jpg", etag="0" * 32, size=1, last_modified="")],
    )  # fmt: skip
    s3 = direct(fstack)
    s3.put_object(Bucket=settings.artifacts_bucket, Key=f"batches/{partition}.json",
                  Body=listing.model_dump_json().encode())  # fmt: skip
    instance = instance_for(settings)
    instance.add_dynamic_partitions("raw_image_batches", [partition])
    lines: list[str] = []
    first = rerun(settings, partition, echo=lines.append)
    assert not first.success
    assert "names bucket 'someone-elses-bucket'; batches may only come from RAW_BUCKET" in lines[-1]
    review = review_pending(instance, [partition], INGEST_JOB, max_retries=1, retry_failed=True)
    assert [r.run_key for r in review.requests] == [f"{partition}:retry-1"]
    assert review.requests[0].tags["dagster/max_retries"] == "1"
    assert not rerun(settings, partition, echo=lines.append).success
    review = review_pending(instance, [partition], INGEST_JOB, max_retries=1, retry_failed=True)
    assert not review.requests and not review.pending
    (given_up,) = review.given_up
    assert given_up.attempts == 2 and given_up.last_status == "FAILURE"
