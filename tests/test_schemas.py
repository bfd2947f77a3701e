"""The committed JSON Schemas in schemas/ match the pydantic manifest models."""

from __future__ import annotations

import json

from pixelpipe import manifests as mf


def test_committed_schemas_match_models() -> None:
    for name, schema in mf.json_schemas().items():
        path = mf.SCHEMA_DIR / f"{name}.schema.json"
        assert path.exists(), f"{path} missing: run `make schemas`"
        committed = json.loads(path.read_text())
        assert committed == json.loads(json.dumps(schema)), f"{path} drifted: run `make schemas`"


def test_schema_rejects_a_manifest_missing_output_uri() -> None:
    import jsonschema
    import pytest

    item = {
        "source_uri": "s3://r/a.jpg",
        "source_key": "a.jpg",
        "sha256": "0" * 64,
        "width": 1,
        "height": 1,
        "bytes": 1,
        "copy_index": 0,
        "seed": 1,
        "transform": {},
        "boxes": [],
    }
    doc = {
        "asset": "augmented_images",
        "run_id": "r",
        "partition": "p",
        "created_at": "t",
        "config": {},
        "items": [item],
    }
    with pytest.raises(jsonschema.ValidationError, match="output_uri"):
        mf.validate_against_schema("stage1_manifest", doc)
    item["output_uri"] = "s3://a/b.jpg"
    mf.validate_against_schema("stage1_manifest", doc)
