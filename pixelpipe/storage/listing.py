"""Stream a ListObjectsV2 of a prefix: resumable after a key, cut between pages at a deadline,
and carrying the S3 server's own clock (its Date header) for the sensor's high-water mark."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: key, ETag without quotes, tz-aware LastModified, size in bytes."""

    key: str
    etag: str
    last_modified: datetime
    size: int

    def __post_init__(self) -> None:
        if self.last_modified.tzinfo is None:
            raise ValueError(f"last_modified of {self.key!r} must be timezone-aware")

    @property
    def timestamp(self) -> float:
        return self.last_modified.timestamp()


class Listing:
    """The objects under `prefix` after `start_after`, page by page (ceil(N/1000) requests).

    Iterating stops after the page during which `deadline` (time.monotonic()) passed; then
    `complete` is False and `last_key` is where the next listing should resume. `server_time`
    is the S3 server's clock (Date of the first response), or None if it sent none.
    """

    def __init__(
        self,
        s3: Any,
        bucket: str,
        prefix: str = "",
        *,
        start_after: str | None = None,
        deadline: float | None = None,
        page_size: int = 1000,
    ) -> None:
        self._s3 = s3
        self._args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        if start_after:
            self._args["StartAfter"] = start_after
        self._deadline = deadline
        self.complete = False
        self.last_key: str | None = None
        self.server_time: float | None = None
        self.pages = 0

    def __iter__(self) -> Iterator[ObjectInfo]:
        args = dict(self._args)
        while True:
            page = self._s3.list_objects_v2(**args)
            self.pages += 1
            if self.server_time is None:
                self.server_time = _server_time(page)
            for item in page.get("Contents", []):
                self.last_key = item["Key"]
                yield ObjectInfo(
                    key=item["Key"],
                    etag=item.get("ETag", "").strip('"'),
                    last_modified=item["LastModified"],
                    size=int(item.get("Size", 0)),
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                self.complete = True
                return
            if self._deadline is not None and time.monotonic() > self._deadline:
                return  # out of time: the caller resumes after last_key
            args = {**self._args, "ContinuationToken": token}
            args.pop("StartAfter", None)


def _server_time(page: dict[str, Any]) -> float | None:
    date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        return None
    try:
        return float(parsedate_to_datetime(str(date)).timestamp())
    except (TypeError, ValueError):
        return None


def list_objects(
    s3_client: Any, bucket: str, prefix: str = "", *, page_size: int = 1000
) -> Iterator[ObjectInfo]:
    """Stream every object under `prefix` (ListObjectsV2, `page_size` keys per request)."""
    return iter(Listing(s3_client, bucket, prefix, page_size=page_size))
