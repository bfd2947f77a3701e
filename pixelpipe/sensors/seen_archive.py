"""Where the polling sensor keeps its archive of seen objects: one object in ARTIFACTS_BUCKET.

8 bytes an object (pixelpipe.storage.cursor.Archive), read only when it changed (If-None-Match
on the ETag this process saw last) and written with If-Match, merging with whatever an
overlapping tick wrote in between, so no tick's archived objects are lost.
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions

from pixelpipe.storage.cursor import Archive

PREFIX = "sensors/raw_images"
_CACHE: dict[str, tuple[str, Archive]] = {}


def archive_key(scope: str) -> str:
    return f"{PREFIX}/{scope}/archive.u64"


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def load(s3: Any, bucket: str, scope: str) -> tuple[Archive, str | None]:
    """The archive and its ETag (None when there is none yet)."""
    key = archive_key(scope)
    cached = _CACHE.get(f"{bucket}/{key}")
    extra = {"IfNoneMatch": cached[0]} if cached else {}
    try:
        response = s3.get_object(Bucket=bucket, Key=key, **extra)
    except botocore.exceptions.ClientError as exc:
        if cached and _code(exc) in {"304", "NotModified"}:
            return cached[1], cached[0]
        if _code(exc) in {"NoSuchKey", "404"}:
            return Archive(), None
        raise
    archive = Archive.from_bytes(response["Body"].read())
    _CACHE[f"{bucket}/{key}"] = (response["ETag"], archive)
    return archive, response["ETag"]


def save(s3: Any, bucket: str, scope: str, archive: Archive, etag: str | None) -> None:
    """Write `archive`, merged with any version written since `etag` was read."""
    key = archive_key(scope)
    for _ in range(10):
        extra = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            response = s3.put_object(Bucket=bucket, Key=key, Body=archive.to_bytes(), **extra)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) not in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}:
                raise
            theirs, etag = load(s3, bucket, scope)
            archive = theirs.merged(int(v) for v in archive.values)
            continue
        _CACHE[f"{bucket}/{key}"] = (response["ETag"], archive)
        return
    raise RuntimeError(f"s3://{bucket}/{key} kept changing under concurrent sensor ticks")
