"""Where the pipeline's own objects live in the artifacts bucket (listings, boxes, indexes)."""

from __future__ import annotations

BATCHES_PREFIX = "batches"


def batch_listing_key(partition: str) -> str:
    """The key of a batch partition's listing (its keys, ETags and sizes)."""
    return f"{BATCHES_PREFIX}/{partition}.json"


RAW_BOXES_KEY = "annotations/raw_boxes.json"  # raw-pixel boxes by raw key, what Stage 1 reads
RAW_COCO_KEY = "annotations/raw/coco.json"  # the same boxes as COCO in raw pixels


def dataset_index_key(variant: str) -> str:
    """The dataset index of one size variant, what training reads."""
    return f"datasets/{variant}/index.json"
