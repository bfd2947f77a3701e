"""Whether an S3 server honours conditional writes (If-None-Match: *), probed once per bucket."""

from __future__ import annotations

import uuid
from typing import Any

PROBE_PREFIX = "_manifests/_probe"
# answers that say nothing about the header: bad credentials, a missing bucket, throttling
NOT_AN_ANSWER = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
    | {"NoSuchBucket", "SlowDown", "InternalError"}
)
_KNOWN: dict[tuple[str | None, str], bool] = {}


def probe_conditional_writes(s3: Any, bucket: str) -> bool:
    """True when the server refuses a second `If-None-Match: *` put of the same key.

    An error that is no answer (credentials, a missing bucket) is raised, not taken for "no".
    """
    import botocore.exceptions

    key = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in NOT_AN_ANSWER:
                raise
            return code in {"PreconditionFailed", "ConditionalRequestConflict", "412"}
        return False
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in NOT_AN_ANSWER:
            raise
        return False
    finally:
        s3.delete_object(Bucket=bucket, Key=key)


def conditional_writes(s3: Any, endpoint: str | None, bucket: str, mode: str) -> bool:
    """S3_CONDITIONAL_WRITES: on/off as configured; auto probes once per (endpoint, bucket)."""
    if mode != "auto":
        return mode == "on"
    key = (endpoint, bucket)
    if key not in _KNOWN:
        _KNOWN[key] = probe_conditional_writes(s3, bucket)
    return _KNOWN[key]
