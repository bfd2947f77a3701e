"""Stage 2: write every size variant of each stage-1 image, with projected boxes and metadata."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pixelpipe.imaging.backends import (
    ResizeBackend,
    WriteJob,
    WrittenVariant,
    get_backend,
)
from pixelpipe.imaging.boxes import Box
from pixelpipe.imaging.decode import ImageError
from pixelpipe.imaging.geometry import project_boxes
from pixelpipe.imaging.variants import Variant


@dataclass(frozen=True)
class Stage2Input:
    """One stage-1 image: where it came from, where it is now, its output key and its boxes."""

    source_uri: str
    local_path: str
    rel_key: str  # e.g. b-0001/cats/img1__c0.jpg; written as <variant>/<rel_key>
    boxes: list[Box] = field(default_factory=list)


@dataclass
class Stage2Result:
    """One written variant of one input, or (reason set, variant_name None) one failed input."""

    source_uri: str
    rel_key: str
    variant_name: str | None = None
    width: int = 0
    height: int = 0
    rel_path: str | None = None
    sha256: str | None = None
    bytes: int = 0
    geometry: dict[str, Any] | None = None
    boxes: list[Box] = field(default_factory=list)
    reason: str | None = None
    render_seconds: float = 0.0
    write_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_stage2(
    inputs: Sequence[Stage2Input],
    variants: Sequence[Variant],
    out_dir: str | Path,
    backend: ResizeBackend | str = "auto",
    quality: int = 90,
    workers: int | None = None,
) -> list[Stage2Result]:
    """Write every variant of every input under out_dir/<variant>/<rel_key>.

    Returns, in input order, one ok result per (input, variant) and one failed result per bad
    input. A backend given by name is created here (workers sizes it) and closed afterwards.
    """
    if not variants:
        raise ValueError("run_stage2 needs at least one variant")
    for item in inputs:
        check_rel_key(item.rel_key)
    out = Path(out_dir)
    owned = isinstance(backend, str)
    engine = get_backend(backend, workers) if isinstance(backend, str) else backend
    try:
        jobs = [WriteJob(item.local_path, item.rel_key) for item in inputs]
        written = engine.render_to_dir(jobs, variants, out, quality)
    finally:
        if owned:
            engine.close()
    results: list[Stage2Result] = []
    for item, outcome in zip(inputs, written, strict=True):
        results.extend(_results_for(item, outcome))
    return results


def check_rel_key(rel_key: str) -> None:
    """ValueError unless rel_key is a plain relative POSIX path that stays inside its folder."""
    path = PurePosixPath(rel_key)
    if not rel_key or path.is_absolute() or ".." in path.parts or "\\" in rel_key:
        raise ValueError(f"rel_key must be a relative path inside the output folder: {rel_key!r}")


def _results_for(
    item: Stage2Input, outcome: list[WrittenVariant] | ImageError
) -> list[Stage2Result]:
    if isinstance(outcome, ImageError):
        return [Stage2Result(item.source_uri, item.rel_key, reason=str(outcome))]
    return [
        Stage2Result(
            source_uri=item.source_uri,
            rel_key=item.rel_key,
            variant_name=w.variant_name,
            width=w.geometry.width,
            height=w.geometry.height,
            rel_path=w.rel_path,
            sha256=w.sha256,
            bytes=w.bytes,
            geometry=w.geometry.to_dict(),
            boxes=project_boxes(item.boxes, w.geometry),
            render_seconds=w.render_seconds,
            write_seconds=w.write_seconds,
            decode_seconds=w.decode_seconds,
        )
        for w in outcome
    ]


def timing_stats(results: Sequence[Stage2Result]) -> dict[str, dict[str, float]]:
    """Per variant: files, bytes, render/write seconds, median ms and write MB/s.

    Also '_decode' (decode seconds, counted once per source) and '_failed' (count).
    """
    by_variant: dict[str, list[Stage2Result]] = defaultdict(list)
    decode: dict[str, float] = {}
    failed = 0
    for r in results:
        if not r.ok or r.variant_name is None:
            failed += 1
            continue
        by_variant[r.variant_name].append(r)
        decode[r.source_uri + "\0" + r.rel_key] = r.decode_seconds
    stats = {name: _variant_stats(rows) for name, rows in by_variant.items()}
    stats["_decode"] = {"files": float(len(decode)), "seconds": sum(decode.values())}
    stats["_failed"] = {"files": float(failed)}
    return stats


def _variant_stats(rows: list[Stage2Result]) -> dict[str, float]:
    total_bytes = sum(r.bytes for r in rows)
    write_s = sum(r.write_seconds for r in rows)
    return {
        "files": float(len(rows)),
        "bytes": float(total_bytes),
        "render_seconds": sum(r.render_seconds for r in rows),
        "render_ms_median": 1000 * statistics.median(r.render_seconds for r in rows),
        "write_seconds": write_s,
        "write_mb_s": total_bytes / 1e6 / write_s if write_s > 0 else 0.0,
    }


__all__ = [
    "Stage2Input",
    "Stage2Result",
    "check_rel_key",
    "run_stage2",
    "timing_stats",
]
