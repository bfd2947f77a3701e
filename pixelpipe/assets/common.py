"""Helpers shared by the stage assets: config snapshot, checks of written manifests."""

import json
from collections.abc import Callable, Iterator
from typing import Any

import botocore.exceptions
import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.imaging.boxes import Box
from pixelpipe.io_managers.staging import run_manifest_uri
from pixelpipe.storage.keys import bounded_stem, relative_key
from pixelpipe.storage.layout import RAW_BOXES_KEY

CHECK_NAMES = ("manifest_valid", "outputs_exist", "counts_add_up")
CHECK_DESCRIPTIONS = {
    "manifest_valid": "the manifest validates against its committed JSON Schema",
    "outputs_exist": "every output_uri in the manifest exists",
    "counts_add_up": "outputs and failures in the stats match the listed items",
}


def load_raw_boxes(s3: Any, artifacts_bucket: str) -> dict[str, list[Box]]:
    """Raw-pixel boxes by raw object key, from the latest Label Studio conversion ({} if none)."""
    try:
        body = s3.get_object(Bucket=artifacts_bucket, Key=RAW_BOXES_KEY)["Body"].read()
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return {}
        raise
    boxes: dict[str, list[Box]] = json.loads(body).get("boxes", {})
    return dict(boxes)


def output_stem(partition: str, source_key: str, prefix: str) -> str:
    """<partition>/<key under the batch prefix>, extension kept (so cat.jpg and cat.png never
    share outputs), over-long parts shortened with a hash (pixelpipe.storage.keys)."""
    rel = relative_key(source_key, prefix, max_segment=None) if prefix else source_key
    return f"{partition}/{bounded_stem(rel)}"


def manifest_check_results(
    s3: Any,
    uri: str | None,
    asset: str,
    partition: str,
    schema: str,
    extra: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, tuple[bool, dict[str, Any]]]:
    """Check outcomes for one manifest: it validates, every output exists, counts add up."""
    if uri is None:
        missing = (False, {"reason": f"no {asset} manifest for {partition}"})
        return dict.fromkeys(CHECK_NAMES, missing)
    doc = mf.read_json(s3, uri)
    out: dict[str, tuple[bool, dict[str, Any]]] = {}
    try:
        mf.validate_against_schema(schema, doc)
        out["manifest_valid"] = (True, {"manifest_uri": uri})
    except Exception as exc:  # noqa: BLE001 - the check reports whatever is wrong
        out["manifest_valid"] = (False, {"manifest_uri": uri, "reason": str(exc)[:500]})
    absent = missing_objects(s3, [i["output_uri"] for i in doc["items"]])
    out["outputs_exist"] = (not absent, {"checked": len(doc["items"]), "missing": absent[:20]})
    stats = doc["stats"]
    ok = stats["outputs"] == len(doc["items"]) and stats["failures"] == len(doc["failures"])
    ok = ok and (extra is None or extra(doc))
    out["counts_add_up"] = (bool(ok), {k: stats[k] for k in ("inputs", "outputs", "failures")})
    return out


def build_manifest_checks(
    asset: Any,
    bucket_of: Callable[[Any], str],
    schema: str,
    extra: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dg.AssetChecksDefinition]:
    """The CHECK_NAMES checks of `asset`, blocking and partitioned, from one read of the manifest
    this run wrote (not whatever a concurrent run made latest)."""
    from pixelpipe.resources.s3 import S3Resource
    from pixelpipe.resources.settings import SettingsResource

    name = asset.key.path[-1]
    specs = [
        dg.AssetCheckSpec(
            check_name,
            asset=asset,
            blocking=True,
            partitions_def=asset.partitions_def,
            description=CHECK_DESCRIPTIONS[check_name],
        )
        for check_name in CHECK_NAMES
    ]

    @dg.multi_asset_check(specs=specs, name=f"{name}_manifest_checks")
    def _checks(
        context: dg.AssetCheckExecutionContext, s3: S3Resource, settings: SettingsResource
    ) -> Iterator[dg.AssetCheckResult]:
        client = s3.client()
        partition = context.partition_key
        uri = run_manifest_uri(context.instance, context.run.run_id, name)
        if uri is None:
            uri = mf.latest_manifest_uri(client, bucket_of(settings.get()), name, partition)
        results = manifest_check_results(client, uri, name, partition, schema, extra)
        for check_name in CHECK_NAMES:
            passed, metadata = results[check_name]
            yield dg.AssetCheckResult(
                asset_key=asset.key, check_name=check_name, passed=passed, metadata=metadata
            )

    return [_checks]


def missing_objects(s3: Any, uris: list[str]) -> list[str]:
    """The URIs that do not exist: one listing per folder, not one HEAD per object."""
    from pixelpipe.storage.cursor import list_objects

    folders: dict[tuple[str, str], set[str]] = {}
    for uri in uris:
        bucket, key = mf.split_uri(uri)
        folders.setdefault((bucket, key.rsplit("/", 1)[0] + "/" if "/" in key else ""), set())
    for (bucket, prefix), found in folders.items():
        found.update(o.key for o in list_objects(s3, bucket, prefix))
    missing = []
    for uri in uris:
        bucket, key = mf.split_uri(uri)
        if key not in folders[(bucket, key.rsplit("/", 1)[0] + "/" if "/" in key else "")]:
            missing.append(uri)
    return missing
