"""Write-once manifests in S3: content-addressed keys, a latest.json that only moves forward."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

MANIFEST_ROOT = "_manifests"


def content_digest(manifest: Any) -> str:
    """sha256 of what a manifest says, without run id, time or timings (so re-runs match)."""
    body = manifest.model_dump(mode="json", exclude={"run_id", "created_at", "stats"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def manifest_prefix(asset: str, partition: str) -> str:
    return f"{MANIFEST_ROOT}/{asset}/{partition}"


CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _put_new(s3: Any, bucket: str, key: str, body: bytes) -> bool:
    """Put `key` unless it exists (If-None-Match); False when it was already there."""
    import botocore.exceptions

    for _ in range(5):
        try:
            s3.put_object(
                Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", ContentType="application/json"
            )
            return True
        except botocore.exceptions.ClientError as exc:
            code = _error_code(exc)
            if code in {"PreconditionFailed", "412"}:
                return False
            if code not in {"ConditionalRequestConflict", "409"}:
                raise
            time.sleep(0.2)  # another identical write is in flight: ask again
    return False


def write_manifest(
    s3: Any, bucket: str, manifest: Any, *, conditional: bool, run_started: float | None = None
) -> tuple[str, bool]:
    """Write a manifest that is never rewritten in place; return (s3 uri, newly_written).

    With conditional writes the key is content-addressed and put with If-None-Match, so a
    re-run that produced the same outputs finds the first run's manifest and keeps it.
    Without them, each run writes its own key. Then `latest.json` moves to it, unless a run
    that started later already put its own manifest there (`advance_latest`).
    """
    prefix = manifest_prefix(manifest.asset, manifest.partition)
    body = manifest.model_dump_json(indent=1).encode()
    written = True
    if conditional:
        key = f"{prefix}/manifest-{content_digest(manifest)[:16]}.json"
        written = _put_new(s3, bucket, key, body)
    else:
        key = f"{prefix}/runs/{manifest.run_id}.json"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    uri = f"s3://{bucket}/{key}"
    started = time.time() if run_started is None else run_started
    advance_latest(s3, bucket, prefix, uri, manifest.run_id, started, conditional=conditional)
    return uri, written


def _read_pointer(s3: Any, bucket: str, key: str) -> tuple[dict[str, Any] | None, str | None]:
    import botocore.exceptions

    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) in {"NoSuchKey", "404"}:
            return None, None
        raise
    return json.loads(response["Body"].read()), response.get("ETag")


def advance_latest(
    s3: Any,
    bucket: str,
    prefix: str,
    uri: str,
    run_id: str,
    run_started: float,
    *,
    conditional: bool,
) -> bool:
    """Point `<prefix>/latest.json` at `uri` unless a run that started later is there already.

    latest.json only moves forward: the run started last wins, whichever finishes last. With
    conditional writes the put carries If-Match on the ETag just read (If-None-Match when there
    is none), so two runs racing cannot both win; without them the rule still holds but two
    writes within the same instant may race. Returns True when the pointer moved.
    """
    import botocore.exceptions

    key = f"{prefix}/latest.json"
    mine = (run_started, run_id)
    pointer = json.dumps({"manifest_uri": uri, "run_id": run_id, "run_started": run_started})
    for _ in range(10):
        current, etag = _read_pointer(s3, bucket, key)
        if current is not None:
            theirs = (float(current.get("run_started") or 0.0), str(current.get("run_id", "")))
            if theirs >= mine:
                return False
        extra: dict[str, str] = {}
        if conditional:
            extra = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=pointer.encode(),
                ContentType="application/json",
                **extra,
            )
            return True
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) not in CONFLICT_CODES:
                raise
            time.sleep(0.1)  # someone else moved it: read again and decide again
    raise RuntimeError(f"s3://{bucket}/{key} kept changing under concurrent writers")


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def read_json(s3: Any, uri: str) -> dict[str, Any]:
    """The JSON object stored at an s3:// URI."""
    bucket, key = split_uri(uri)
    doc: dict[str, Any] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return doc


def latest_manifest_uri(s3: Any, bucket: str, asset: str, partition: str) -> str | None:
    """The manifest the partition's latest run wrote, or None if it never completed."""
    import botocore.exceptions

    try:
        pointer = read_json(s3, f"s3://{bucket}/{manifest_prefix(asset, partition)}/latest.json")
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise
    return str(pointer["manifest_uri"])
