"""Check the end state a user trusts: each raw image has exactly its outputs, and they are intact.

`pixelpipe audit --prefix P` (and the fault-injection tests) read the latest stage-1 and stage-2
manifest of every batch partition and the raw objects under P, then count what would break a
training set: raw images with no outputs for their current bytes (lost), outputs listed twice
or more copies than configured (duplicated), outputs whose bytes differ from the manifest or
that do not exist (mismatched), and, when the caller knows which images are bad, failures
recorded for images that are not (false failures).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from pixelpipe import manifests as mf
from pixelpipe.storage.cursor import list_objects

STAGES = (("augmented_images", "augmented"), ("normalized_images", "normalized"))
OBJECT_STATES = ("gone since listed", "changed since")


@dataclass
class AuditReport:
    """What the audit found; every list holds keys or URIs, and should be empty but `failed`."""

    raw_images: int = 0
    partitions: int = 0
    outputs: int = 0
    expected_outputs: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    failed: dict[str, list[str]] = field(default_factory=dict)
    false_failures: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.mismatched or self.false_failures)

    def row(self) -> dict[str, Any]:
        """One line of the fault table: counts only."""
        return {
            "raw_images": self.raw_images,
            "expected_outputs": self.expected_outputs,
            "outputs": self.outputs,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "mismatched": len(self.mismatched),
            "false_failures": len(self.false_failures),
        }


def _partitions(s3: Any, bucket: str, asset: str) -> list[str]:
    prefix = f"{mf.manifest_prefix(asset, '')}"
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/"
    )
    return [
        p["Prefix"][len(prefix) :].rstrip("/")
        for page in pages
        for p in page.get("CommonPrefixes", [])
        if not p["Prefix"].endswith("/_probe/")
    ]


def _sha256(s3: Any, uri: str) -> str | None:
    import botocore.exceptions

    bucket, key = mf.split_uri(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError:
        return None
    return hashlib.sha256(body).hexdigest()


def audit(
    s3: Any,
    *,
    raw_bucket: str,
    prefix: str,
    buckets: dict[str, str],
    copies: int,
    variants: int,
    verify_bytes: bool = True,
    expected_bad: set[str] | None = None,
) -> AuditReport:
    """Audit every raw object under `prefix` against the latest manifests of every partition.

    `buckets` maps "augmented" and "normalized" to their bucket names; `expected_bad` is the
    set of raw keys known to be bad images (None: do not judge failures).
    """
    report = AuditReport()
    scan = prefix.strip("/") + "/" if prefix.strip("/") else ""
    listed = list_objects(s3, raw_bucket, scan)
    raw = {o.key: _sha256(s3, f"s3://{raw_bucket}/{o.key}") or "" for o in listed}
    report.raw_images = len(raw)
    per_image = {"augmented": copies, "normalized": copies * variants}
    made: dict[str, Counter[tuple[str, str]]] = {name: Counter() for _, name in STAGES}
    uris: Counter[str] = Counter()
    partitions: set[str] = set()
    for asset, name in STAGES:
        bucket = buckets[name]
        for partition in _partitions(s3, bucket, asset):
            uri = mf.latest_manifest_uri(s3, bucket, asset, partition)
            if uri is None:
                continue
            doc = mf.read_json(s3, uri)
            if not any(i["source_key"] in raw for i in doc["items"]) and not any(
                mf.split_uri(f["source_uri"])[1] in raw for f in doc["failures"]
            ):
                continue  # a partition of another prefix
            partitions.add(partition)
            for item in doc["items"]:
                made[name][(item["source_key"], item["source_sha256"])] += 1
                uris[item["output_uri"]] += 1
                if verify_bytes and _sha256(s3, item["output_uri"]) != item["sha256"]:
                    report.mismatched.append(item["output_uri"])
            for failure in doc["failures"]:
                report.failed.setdefault(failure["source_uri"], []).append(failure["reason"])
    report.partitions = len(partitions)
    report.outputs = sum(uris.values())
    # "gone"/"changed since listed" say what happened to an object, not that it is a bad image:
    # its new bytes (if any) must still be processed
    bad = {
        mf.split_uri(uri)[1]
        for uri, reasons in report.failed.items()
        if any(not r.startswith(OBJECT_STATES) for r in reasons)
    }
    if expected_bad is not None:
        report.false_failures = sorted(bad - expected_bad)
    counted: defaultdict[str, int] = defaultdict(int)
    for key, sha in raw.items():
        if key in bad and not any(made[n][(key, sha)] for n in per_image):
            continue  # a bad image fails alone, with its reason
        counted["images"] += 1
        for name, expected in per_image.items():
            found = made[name][(key, sha)]
            if found == 0:
                report.lost.append(f"{name}: {key}")
            elif found > expected:
                report.duplicated.append(f"{name}: {key} x{found}")
    report.expected_outputs = counted["images"] * sum(per_image.values())
    report.duplicated += [uri for uri, n in uris.items() if n > 1]
    return report
