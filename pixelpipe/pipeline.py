"""Run the pipeline without a daemon: evaluate the sensor against the instance, execute its runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.settings import Settings, SettingsError

INGEST_JOB = "ingest_job"
ANNOTATIONS_JOB = "annotations_job"
# the console shows warnings only; every event still goes to the instance's event log
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class RunOutcome:
    """One executed batch run."""

    partition: str
    run_id: str
    success: bool
    metadata: dict[str, dict[str, Any]]


def instance_for(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance in DAGSTER_HOME (the daemon's and the UI's instance)."""
    home = settings.dagster_home or os.environ.get("DAGSTER_HOME")
    if not home:
        raise SettingsError(
            "DAGSTER_HOME='': expected the Dagster instance directory; "
            "`eval $(pixelpipe devstack env)` sets it"
        )
    os.environ["DAGSTER_HOME"] = str(home)
    os.makedirs(home, exist_ok=True)
    return dg.DagsterInstance.get()


def _materializations(result: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return out


def poll(
    settings: Settings,
    prefix: str,
    *,
    once: bool = True,
    interval: float = 10.0,
    max_ticks: int | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> list[RunOutcome]:
    """Evaluate the sensor (same cursor as the daemon's) and run each requested batch in-process.

    No daemon retries runs here, so a batch whose latest run failed is requested again on the
    next tick, up to RUN_RETRIES times; then it is reported with the command that re-runs it.
    """
    from pixelpipe.definitions import build_definitions
    from pixelpipe.sensors.annotations import evaluate_exports
    from pixelpipe.sensors.batch_runs import rerun_command
    from pixelpipe.sensors.raw_images import evaluate_tick
    from pixelpipe.storage.client import client_from_settings

    instance = instance_for(settings)
    defs = build_definitions(settings)
    job = defs.resolve_job_def(INGEST_JOB)
    annotations_job = defs.resolve_job_def(ANNOTATIONS_JOB)
    s3 = client_from_settings(settings)
    outcomes: list[RunOutcome] = []
    ticks = 0
    while True:
        ticks += 1
        # exports first, so Stage 1 of this tick's batches already has their boxes
        exports = evaluate_exports(instance, s3, settings)
        if exports:
            echo(f"tick {ticks}: {len(exports)} new or changed annotation file(s)")
            _run_annotations(annotations_job, instance, ["raw_annotations"], echo)
        tick = evaluate_tick(
            instance, s3, settings, prefix, INGEST_JOB, retry_failed=True, echo=echo
        )
        if tick.skip_reason:
            echo(f"tick {ticks}: {tick.skip_reason}")
        else:
            retrying = f", {len(tick.retrying)} retried" if tick.retrying else ""
            echo(
                f"tick {ticks}: {tick.listed} listed, {tick.new_objects} new -> "
                f"{len(tick.run_requests)} batch run(s){retrying}"
            )
        for name in tick.newly_failed:
            echo(
                f"  batch {name} FAILED {settings.run_retries + 1} times; "
                f"re-run it with `{rerun_command(name)}`"
            )
        partitions = [r.partition_key for r in tick.run_requests if r.partition_key]
        instance.add_dynamic_partitions(raw_batches_partitions.name or "", partitions)
        runs = execute_batches(job, instance, tick.run_requests, settings, echo, progress)
        outcomes += runs
        if any(not run.success for run in runs) and settings.run_retries:
            echo("  failed batches are retried on the next tick (`pixelpipe poll` again)")
        if exports or any(run.success for run in runs):
            _run_annotations(annotations_job, instance, ["coco_annotations"], echo)
        if once or (max_ticks and ticks >= max_ticks):
            return outcomes
        time.sleep(interval)


def rerun(settings: Settings, partition: str, echo: Callable[[str], None] = print) -> RunOutcome:
    """Run one batch partition again (e.g. one that failed after every retry), in-process."""
    from pixelpipe.definitions import build_definitions
    from pixelpipe.sensors.batch_runs import BATCH_TAG, run_request

    instance = instance_for(settings)
    if not instance.has_dynamic_partition(raw_batches_partitions.name or "", partition):
        raise SettingsError(f"partition {partition!r}: expected an existing batch partition")
    job = build_definitions(settings).resolve_job_def(INGEST_JOB)
    attempt = instance.get_runs_count(dg.RunsFilter(tags={BATCH_TAG: partition}))
    request = run_request(partition, INGEST_JOB, attempt, settings.run_retries)
    (outcome,) = execute_batches(job, instance, [request], settings, echo, progress=False)
    return outcome


def execute_batches(
    job: Any,
    instance: dg.DagsterInstance,
    requests: list[dg.RunRequest],
    settings: Settings,
    echo: Callable[[str], None],
    progress: bool,
) -> list[RunOutcome]:
    """Execute each batch run in this process, print its manifests, clean its NVMe dirs."""
    from rich.progress import Progress

    from pixelpipe.io_managers.batches import cleanup_run

    outcomes: list[RunOutcome] = []
    with Progress(disable=not progress or not requests, transient=True) as bar:
        task = bar.add_task("batch runs", total=len(requests))
        for request in requests:
            started = time.monotonic()
            echo(f"  run {request.partition_key} ...")
            result = job.execute_in_process(
                partition_key=request.partition_key,
                instance=instance,
                tags=dict(request.tags),
                raise_on_error=False,
                run_config=QUIET,
            )
            made = _materializations(result)
            outcome = RunOutcome(request.partition_key or "", result.run_id, result.success, made)
            outcomes.append(outcome)
            status = "ok" if result.success else f"FAILED: {_failure_message(result)}"
            echo(
                f"  run {request.partition_key} {status} in {time.monotonic() - started:.1f}s "
                f"(run id {result.run_id})"
            )
            for asset, meta in outcome.metadata.items():
                if "manifest_uri" in meta:
                    echo(
                        f"    {asset}: {meta.get('items')} items, {meta.get('failures')} "
                        f"failures, manifest {meta['manifest_uri']}"
                    )
            if not settings.nvme_keep:
                cleanup_run(settings.nvme_root.resolve(), result.run_id)
            bar.advance(task)
    return outcomes


def _failure_message(result: Any) -> str:
    """The first step failure's message: what failed, on which key, and why."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            # Dagster's wrappers first; the first error below them is the one that says why
            while error.cause is not None and error.cls_name.startswith("Dagster"):
                error = error.cause
            message = error.message.strip().splitlines()[0]
            name, _, rest = message.partition(": ")
            return (rest if name.endswith(error.cls_name) else message)[:1000]
    return "see the run's event log"


def _run_annotations(job: Any, instance: dg.DagsterInstance, assets: list[str], echo: Any) -> None:
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(a) for a in assets],
        raise_on_error=False,
        run_config=QUIET,
    )
    for asset, meta in _materializations(result).items():
        summary = {
            k: meta[k]
            for k in ("images", "annotations", "failures", "coco_files", "unlabelled_images")
            if k in meta
        }
        echo(
            f"  {asset}: {'ok' if result.success else 'FAILED'} {summary} "
            f"manifest {meta.get('manifest_uri')}"
        )
