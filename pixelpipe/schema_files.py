"""Write JSON Schemas as committed files: <directory>/<name>.schema.json, stable formatting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_schema_files(schemas: dict[str, dict[str, Any]], directory: Path) -> list[Path]:
    """Write each schema sorted and indented, so regenerating gives reviewable diffs."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in schemas.items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
