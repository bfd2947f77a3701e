"""FT1 steps 1-3 and FT2 for Stage 1 on the real stack: sensor, staged run, objects, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_helpers import (
    execute,
    instance,
    materializations,
    sha256,
    tick,
    unique_prefix,
    upload_sample,
)

from pixelpipe import manifests as mf
from pixelpipe import settings as settings_mod
from pixelpipe.settings import Settings


@pytest.fixture
def keep_nvme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVME_KEEP", "1")
    settings_mod.get_settings.cache_clear()
    yield
    settings_mod.get_settings.cache_clear()


def test_ft1_sensor_run_writes_augmented_objects_and_manifest(
    settings: Settings, s3, tmp_path: Path
) -> None:
    prefix = unique_prefix(settings, "ft1")
    upload_sample(settings, tmp_path, prefix, count=4)
    # hostile and broken inputs fail alone
    s3.put_object(
        Bucket=settings.raw_bucket, Key=f"{prefix}/broken.jpg", Body=b"\xff\xd8\xff\xe0trunc"
    )
    s3.put_object(Bucket=settings.raw_bucket, Key=f"{prefix}/notes.png", Body=b"just text")
    inst = instance(settings)

    result, defs = tick(settings, prefix, inst)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.run_key == request.partition_key
    # objects under ANNOTATIONS_PREFIX are never batched; the listing pins keys and ETags
    listing = mf.read_json(
        s3, f"s3://{settings.artifacts_bucket}/batches/{request.partition_key}.json"
    )
    keys = {o["key"] for o in listing["objects"]}
    assert len(keys) == 6 and all(k.startswith(prefix + "/") for k in keys)
    assert all(o["etag"] for o in listing["objects"])

    (run,) = execute(defs, inst, result)
    assert run.success
    meta = materializations(run)["augmented_images"]
    manifest = mf.read_json(s3, meta["manifest_uri"])
    mf.validate_against_schema("stage1_manifest", manifest)
    assert manifest["stage"] == "augment" and manifest["partition"] == request.partition_key
    copies = settings.augment_copies
    assert len(manifest["items"]) == 4 * copies
    for item in manifest["items"]:
        assert item["source_uri"].startswith(f"s3://{settings.raw_bucket}/{prefix}/")
        bucket, key = mf.split_uri(item["output_uri"])
        assert bucket == settings.augmented_bucket
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert sha256(body) == item["sha256"] and len(body) == item["bytes"]
        assert item["transform"]["seed"] == item["seed"]
    reasons = {f["source_uri"].rsplit("/", 1)[-1]: f["reason"] for f in manifest["failures"]}
    assert set(reasons) == {"broken.jpg", "notes.png"}
    assert "truncated" in reasons["broken.jpg"] and "not an image" in reasons["notes.png"]
    assert meta["items"] == 8 and meta["failures"] == 2 and "seconds_stage_in" in meta
    checks = run.get_asset_check_evaluations()
    assert {c.check_name for c in checks if c.passed} >= {
        "manifest_valid",
        "outputs_exist",
        "counts_add_up",
    }

    # the same objects never come twice; nothing new means a SkipReason
    again, _ = tick(settings, prefix, inst)
    assert not again.run_requests and "no new images" in again.skip_reason.skip_message


def test_ft2_stage1_stages_through_nvme(settings: Settings, s3, tmp_path: Path, keep_nvme) -> None:
    prefix = unique_prefix(settings, "ft2")
    sample = upload_sample(settings, tmp_path, prefix, count=4)
    inst = instance(settings)
    result, defs = tick(settings, prefix, inst)
    (run,) = execute(defs, inst, result)
    assert run.success
    root = settings.nvme_root.resolve()
    staged_in = root / "input" / run.run_id / "augmented_images"
    raw_by_name = {p.name: sha256(p.read_bytes()) for p in (sample / "images").iterdir()}
    inputs = [p for p in staged_in.rglob("*") if p.is_file()]
    assert len(inputs) == 4
    for path in inputs:
        assert sha256(path.read_bytes()) == raw_by_name[path.name]

    manifest = mf.read_json(s3, materializations(run)["augmented_images"]["manifest_uri"])
    out_dir = root / "output" / run.run_id / "augmented_images"
    logged: dict[str, set[str]] = {"stage_in": set(), "stage_out": set()}
    for entry in inst.all_logs(run.run_id):
        message = entry.user_message or ""
        if entry.step_key == "augmented_images" and message.startswith("{"):
            record = json.loads(message)
            if record.get("event") in logged:
                logged[record["event"]].update(record["paths"])
    assert logged["stage_in"] == {str(p) for p in inputs}
    for item in manifest["items"]:
        _, key = mf.split_uri(item["output_uri"])
        local = out_dir / key
        assert sha256(local.read_bytes()) == item["sha256"]
        assert str(local) in logged["stage_out"]
        head = s3.head_object(Bucket=settings.augmented_bucket, Key=key)
        # written locally before the upload: the file is no newer than the object
        assert local.stat().st_mtime <= head["LastModified"].timestamp() + 1


def test_rerun_is_idempotent_and_fallback_manifest_path(
    settings: Settings, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique_prefix(settings, "idem")
    upload_sample(settings, tmp_path, prefix, count=2)
    inst = instance(settings)
    result, defs = tick(settings, prefix, inst)
    (first,) = execute(defs, inst, result)
    (second,) = execute(defs, inst, result)  # re-materialize the same partition
    m1, m2 = (materializations(r)["augmented_images"] for r in (first, second))
    assert m1["conditional_write"] is True
    assert m1["manifest_uri"] == m2["manifest_uri"] and m2["manifest_newly_written"] is False
    listed = s3.list_objects_v2(
        Bucket=settings.augmented_bucket, Prefix=result.run_requests[0].partition_key + "/"
    )
    assert listed["KeyCount"] == 2 * settings.augment_copies  # nothing duplicated

    # servers without If-None-Match: a key per run plus a pointer, same content
    monkeypatch.setenv("S3_CONDITIONAL_WRITES", "off")
    settings_mod.get_settings.cache_clear()
    off = settings.model_copy(update={"s3_conditional_writes": "off"})
    result_off, defs_off = tick(off, prefix, inst)
    assert not result_off.run_requests
    (third,) = execute(defs_off, inst, result)
    m3 = materializations(third)["augmented_images"]
    assert m3["conditional_write"] is False and f"/runs/{third.run_id}.json" in m3["manifest_uri"]
    doc1, doc3 = mf.read_json(s3, m1["manifest_uri"]), mf.read_json(s3, m3["manifest_uri"])
    assert doc1["items"] == doc3["items"] and doc1["run_id"] != doc3["run_id"]
    partition = result.run_requests[0].partition_key
    latest = mf.latest_manifest_uri(s3, settings.augmented_bucket, "augmented_images", partition)
    assert latest == m3["manifest_uri"]
    settings_mod.get_settings.cache_clear()


def test_hostile_keys_in_a_batch_become_failures_not_files(
    settings: Settings, s3, tmp_path: Path
) -> None:
    """S3 servers may accept keys like 'a/../../x'; staging refuses them by name."""
    prefix = unique_prefix(settings, "hostile")
    sample = upload_sample(settings, tmp_path, prefix, count=1)
    good = f"{prefix}/{next((sample / 'images').iterdir()).name}"
    head = s3.head_object(Bucket=settings.raw_bucket, Key=good)
    hostile = [f"{prefix}/../../../../escape.jpg", "/abs.jpg", f"{prefix}/nul\x00.jpg"]
    objects = [
        mf.BatchObject(
            key=k,
            etag=head["ETag"].strip('"'),
            size=head["ContentLength"],
            last_modified=head["LastModified"].isoformat(),
        )
        for k in [good, *hostile]
    ]
    partition = f"b-hostile-{prefix.rsplit('-', 1)[-1]}"
    listing = mf.BatchListing(
        partition=partition,
        bucket=settings.raw_bucket,
        prefix=prefix,
        created_at=mf.now_iso(),
        objects=objects,
    )
    s3.put_object(
        Bucket=settings.artifacts_bucket,
        Key=f"batches/{partition}.json",
        Body=listing.model_dump_json().encode(),
    )
    inst = instance(settings)
    inst.add_dynamic_partitions("raw_image_batches", [partition])
    _, defs = tick(settings, prefix, inst)
    run = defs.resolve_job_def("ingest_job").execute_in_process(
        partition_key=partition, instance=inst
    )
    assert run.success
    manifest = mf.read_json(s3, materializations(run)["augmented_images"]["manifest_uri"])
    reasons = {f["source_uri"]: f["reason"] for f in manifest["failures"]}
    assert len(reasons) == 3
    assert any("'..' segment" in r for r in reasons.values())
    assert any("absolute path" in r for r in reasons.values())
    assert any("control character" in r for r in reasons.values())
    assert len(manifest["items"]) == settings.augment_copies
    root = settings.nvme_root.resolve()
    assert not any(p.name == "escape.jpg" for p in root.parent.rglob("escape.jpg"))
