"""A second code location for the browser tests: one asset whose metadata is a Stage 2 preview
built by pixelpipe.imaging.preview (variants side by side, boxes drawn), so the tests see what
dagster-webserver does with it. Stage 1/2 assets will carry such previews themselves."""

import tempfile
from collections import defaultdict
from pathlib import Path

import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.imaging.boxes import Box
from pixelpipe.imaging.preview import Thumb, preview_markdown
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.sensors.raw_images import raw_batches_partitions
from pixelpipe.settings import get_settings

SOURCES = 2  # stage-1 images shown, each with all of its variants


@dg.asset(
    partitions_def=raw_batches_partitions,
    deps=[dg.AssetKey("normalized_images")],
    group_name="ui_probe",
)
def stage2_preview(context: dg.AssetExecutionContext, s3: S3Resource) -> dg.MaterializeResult:
    """The first stage-2 sources of a batch with every variant side by side, boxes drawn."""
    settings = get_settings()
    client = s3.client()
    uri = mf.latest_manifest_uri(
        client, settings.normalized_bucket, "normalized_images", context.partition_key
    )
    if uri is None:
        raise FileNotFoundError(f"no normalized_images manifest for {context.partition_key}")
    by_source: dict[str, list[dict]] = defaultdict(list)
    for item in mf.read_json(client, uri)["items"]:
        by_source[item["source_uri"]].append(item)
    order = {v.name: i for i, v in enumerate(settings.variants)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source, items in sorted(by_source.items())[:SOURCES]:
            thumbs = []
            for item in sorted(items, key=lambda i: order.get(i["variant_name"], len(order))):
                bucket, key = mf.split_uri(item["output_uri"])
                local = Path(tmp) / f"{len(rows)}-{item['variant_name']}.jpg"
                client.download_file(bucket, key, str(local))
                boxes = [Box(label=b["label"], x=b["x"], y=b["y"], w=b["w"], h=b["h"])
                         for b in item["boxes"]]  # fmt: skip
                caption = f"{item['variant_name']} {item['width']}x{item['height']}"
                thumbs.append(Thumb(local, caption, boxes))
            rows.append((source.split("/", 3)[3], thumbs))
        markdown = preview_markdown(rows)
    return dg.MaterializeResult(
        metadata={
            "preview": dg.MetadataValue.md(markdown),
            "thumbnails": sum(len(t) for _, t in rows),
            "preview_bytes": len(markdown),
        }
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[stage2_preview], resources={"s3": S3Resource.from_settings(get_settings())}
    )
