"""Where the pipeline's own objects live in the artifacts bucket (batch listings)."""

from __future__ import annotations

BATCHES_PREFIX = "batches"


def batch_listing_key(partition: str) -> str:
    """The key of a batch partition's listing (its keys, ETags and sizes)."""
    return f"{BATCHES_PREFIX}/{partition}.json"
