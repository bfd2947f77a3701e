"""Manifests are write-once, and latest.json only moves forward, on the real S3 server."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pixelpipe import manifests as mf


def _manifest(run_id: str, quality: int) -> mf.Stage1Manifest:
    return mf.Stage1Manifest(
        asset="augmented_images",
        run_id=run_id,
        partition="b-1",
        created_at=mf.now_iso(),
        config={"jpeg_quality": quality},
        items=[],
    )


@pytest.mark.parametrize("conditional", [True, False])
def test_an_older_run_finishing_last_does_not_roll_latest_back(
    s3: Any, bucket: str, conditional: bool
) -> None:
    newer, _ = mf.write_manifest(
        s3, bucket, _manifest("run-new", 90), conditional=conditional, run_started=200.0
    )
    older, _ = mf.write_manifest(
        s3, bucket, _manifest("run-old", 80), conditional=conditional, run_started=100.0
    )
    assert newer != older
    assert mf.latest_manifest_uri(s3, bucket, "augmented_images", "b-1") == newer
    assert mf.read_json(s3, older)["run_id"] == "run-old"  # written, just not made latest


def test_racing_writers_leave_latest_on_the_run_that_started_last(s3: Any, bucket: str) -> None:
    barrier = threading.Barrier(8)
    uris: dict[float, str] = {}

    def write(started: float) -> None:
        barrier.wait()
        manifest = _manifest(f"run-{started}", int(started))
        uris[started] = mf.write_manifest(
            s3, bucket, manifest, conditional=True, run_started=started
        )[0]

    threads = [threading.Thread(target=write, args=(float(i),)) for i in range(10, 18)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mf.latest_manifest_uri(s3, bucket, "augmented_images", "b-1") == uris[17.0]
