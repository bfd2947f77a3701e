"""FT1 steps 4-6 and FT2 for Stage 2: per-variant objects, manifest, NVMe reuse within a run."""

from __future__ import annotations

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
from pixelpipe.definitions import build_definitions
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.settings import Settings

SIZES = "small:96x96,medium:160x160:letterbox,wide:200x100:stretch"


@pytest.fixture
def three_variants(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    monkeypatch.setenv("NORMALIZE_SIZES", SIZES)
    monkeypatch.setenv("NVME_KEEP", "1")
    settings_mod.get_settings.cache_clear()
    yield settings.model_copy(update={"normalize_sizes": SIZES, "nvme_keep": True})
    settings_mod.get_settings.cache_clear()


def _count_gets(settings: Settings) -> list[str]:
    """Count GetObject calls (direct or presigned) on the client the IO manager uses."""
    calls: list[str] = []
    client = S3Resource.from_settings(settings).client()
    client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: calls.append(params["Key"])
    )
    return calls


def test_ft1_stage2_variants_manifest_and_nvme_reuse(
    three_variants: Settings, s3, tmp_path: Path
) -> None:
    settings = three_variants
    prefix = unique_prefix(settings, "ft1s2")
    upload_sample(settings, tmp_path, prefix, count=4)
    inst = instance(settings)
    gets = _count_gets(settings)
    result, defs = tick(settings, prefix, inst)
    (run,) = execute(defs, inst, result)
    assert run.success
    partition = result.run_requests[0].partition_key
    meta = materializations(run)
    stage1 = mf.read_json(s3, meta["augmented_images"]["manifest_uri"])
    stage1_keys = {mf.split_uri(i["output_uri"])[1] for i in stage1["items"]}
    # within one run Stage 2 read Stage 1's outputs from NVMe instead of downloading them
    assert meta["normalized_images"]["reused_from_nvme"] == len(stage1["items"])
    assert not stage1_keys & set(gets)

    manifest = mf.read_json(s3, meta["normalized_images"]["manifest_uri"])
    mf.validate_against_schema("stage2_manifest", manifest)
    expected = {"small": (96, 96), "medium": (160, 160), "wide": (200, 100)}
    assert len(manifest["items"]) == len(stage1["items"]) * 3
    root = settings.nvme_root.resolve() / "output" / run.run_id / "normalized_images"
    for item in manifest["items"]:
        name = item["variant_name"]
        assert (item["width"], item["height"]) == expected[name]
        bucket, key = mf.split_uri(item["output_uri"])
        assert bucket == settings.normalized_bucket and key.startswith(f"{name}/{partition}/")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert sha256(body) == item["sha256"] == sha256((root / key).read_bytes())
        assert item["geometry"]["mode"] in {"fit", "letterbox", "stretch"}
    for name, (w, _h) in expected.items():
        listed = s3.list_objects_v2(
            Bucket=settings.normalized_bucket, Prefix=f"{name}/{partition}/"
        )
        assert listed["KeyCount"] == len(stage1["items"])
        assert manifest["variant_stats"][name]["width"] == w
    letterboxed = [i for i in manifest["items"] if i["variant_name"] == "medium"]
    assert all(i["geometry"]["pad_x"] > 0 or i["geometry"]["pad_y"] > 0 for i in letterboxed)


def test_stage2_materializes_alone_from_s3(three_variants: Settings, s3, tmp_path: Path) -> None:
    """A later run of Stage 2 alone downloads Stage 1's outputs (NVMe was another run's)."""
    import dagster as dg

    settings = three_variants
    prefix = unique_prefix(settings, "alone")
    upload_sample(settings, tmp_path, prefix, count=2)
    inst = instance(settings)
    result, defs = tick(settings, prefix, inst)
    execute(defs, inst, result)
    partition = result.run_requests[0].partition_key
    gets = _count_gets(settings)
    defs = build_definitions(settings)
    alone = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[dg.AssetKey("normalized_images")], partition_key=partition, instance=inst
    )
    assert alone.success
    meta = materializations(alone)["normalized_images"]
    assert meta["downloaded"] == 2 * settings.augment_copies and meta["reused_from_nvme"] == 0
    assert len(gets) >= meta["downloaded"]
