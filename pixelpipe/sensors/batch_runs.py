"""Where each batch partition stands (new, running, done, to retry, given up) and its run requests.

A partition is done only when its latest run succeeded. A run that failed or was canceled is
retried until RUN_RETRIES retries are spent, then the partition is reported as failed with the
command that re-runs it. Under a daemon whose instance has `run_retries` enabled, Dagster's own
run retries re-launch failed runs (the request carries `dagster/max_retries`); the sensor only
steps in for canceled runs, or when no retry appeared within RETRY_GRACE_SECONDS.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import dagster as dg

BATCH_TAG = "pixelpipe/batch"
MAX_RETRIES_TAG = "dagster/max_retries"
RETRY_STRATEGY_TAG = "dagster/retry_strategy"
RETRY_GRACE_SECONDS = 120.0
State = Literal["new", "running", "succeeded", "retry", "exhausted"]
FAILED_STATUSES = frozenset({dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED})


@dataclass(frozen=True)
class BatchStatus:
    """One partition's state, how many runs it had, and its latest run."""

    partition: str
    state: State
    attempts: int = 0
    last_run_id: str | None = None
    last_status: str | None = None


def rerun_command(partition: str) -> str:
    """What a person types to run a given-up batch again."""
    return f"pixelpipe rerun {partition}"


def batch_status(
    instance: dg.DagsterInstance,
    partition: str,
    *,
    max_retries: int,
    daemon_retries: bool,
    now: float | None = None,
) -> BatchStatus:
    """The partition's state from its runs (every attempt carries BATCH_TAG)."""
    runs = dg.RunsFilter(tags={BATCH_TAG: partition})
    records = instance.get_run_records(runs, limit=1)
    if not records:
        return BatchStatus(partition, "new")
    latest = records[0]
    status = latest.dagster_run.status
    base = {"last_run_id": latest.dagster_run.run_id, "last_status": status.value}
    if status == dg.DagsterRunStatus.SUCCESS:
        return BatchStatus(partition, "succeeded", 1, **base)
    if status not in FAILED_STATUSES:
        return BatchStatus(partition, "running", 1, **base)
    attempts = instance.get_runs_count(runs)
    if attempts > max_retries:
        return BatchStatus(partition, "exhausted", attempts, **base)
    ended = latest.end_time or latest.update_timestamp.timestamp()
    waiting = (now or time.time()) - ended < RETRY_GRACE_SECONDS
    if daemon_retries and status == dg.DagsterRunStatus.FAILURE and waiting:
        return BatchStatus(partition, "running", attempts, **base)  # the daemon retries it
    return BatchStatus(partition, "retry", attempts, **base)


def run_request(partition: str, job_name: str, attempt: int, max_retries: int) -> dg.RunRequest:
    """The run of attempt `attempt` (0 = first) of a batch; each attempt has its own run_key."""
    run_key = partition if attempt == 0 else f"{partition}:retry-{attempt}"
    return dg.RunRequest(
        run_key=run_key,
        partition_key=partition,
        job_name=job_name,
        tags={
            BATCH_TAG: partition,
            MAX_RETRIES_TAG: str(max_retries),
            # a retry re-runs the whole batch: outputs are content-addressed, so it is idempotent
            RETRY_STRATEGY_TAG: "ALL_STEPS",
        },
    )


@dataclass
class PendingReview:
    """What to do about the pending partitions this tick."""

    requests: list[dg.RunRequest] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    retrying: list[BatchStatus] = field(default_factory=list)
    given_up: list[BatchStatus] = field(default_factory=list)


def review_pending(
    instance: dg.DagsterInstance,
    partitions: Iterable[str],
    job_name: str,
    *,
    max_retries: int,
    retry_failed: bool | None = None,
) -> PendingReview:
    """Run requests for new and failed batches; keep what is not done; report what gave up.

    `retry_failed=None` leaves failed runs to the daemon's run retries when the instance has
    them enabled; `pixelpipe poll` (no daemon) passes True.
    """
    daemon_retries = instance.run_retries_enabled if retry_failed is None else not retry_failed
    review = PendingReview()
    for partition in dict.fromkeys(partitions):
        status = batch_status(
            instance, partition, max_retries=max_retries, daemon_retries=daemon_retries
        )
        if status.state == "succeeded":
            continue
        if status.state == "exhausted":
            review.given_up.append(status)
            continue
        review.pending.append(partition)
        if status.state == "new":
            review.requests.append(run_request(partition, job_name, 0, max_retries))
        elif status.state == "retry":
            review.retrying.append(status)
            review.requests.append(run_request(partition, job_name, status.attempts, max_retries))
    return review
