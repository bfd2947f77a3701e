"""Stage 1 benchmark: augmentation images/s per worker against a plain albumentations loop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pixelpipe.bench.publish import spread, write_csv
from pixelpipe.imaging import augment as aug
from pixelpipe.imaging.stage1 import Stage1Task, baseline_loop, run_tasks


def run_bench(
    paths: Sequence[Path], out_dir: Path, workers: int, repeats: int = 3, quality: int = 90
) -> dict[str, Any]:
    """Median/spread of images/s for run_tasks(workers) and baseline_loop on the same files.

    The baseline runs in this process with OpenCV limited to one thread, as each of our workers
    is, so "per worker" compares one core with one core.
    """
    import cv2

    cv2.setNumThreads(1)
    spec = aug.load_spec(None)
    digest = aug.spec_digest(spec)
    work = out_dir / "stage1-out"
    tasks = [
        Stage1Task(
            source_key=p.name,
            local_path=str(p),
            out_dir=str(work),
            out_stem=p.stem,
            copies=1,
            spec=spec,
            spec_digest=digest,
            quality=quality,
        )
        for p in paths
    ]
    run_tasks(tasks[: max(workers, 1)], workers)  # start the pool outside the timing
    rows = []
    for repeat in range(repeats):
        started = time.perf_counter()
        results = run_tasks(tasks, workers)
        ours = time.perf_counter() - started
        assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
        started = time.perf_counter()
        baseline_loop([str(p) for p in paths], spec, quality)
        base = time.perf_counter() - started
        rows.append(
            {
                "repeat": repeat,
                "images": len(paths),
                "workers": workers,
                "ours_images_s": len(paths) / ours,
                "baseline_images_s": len(paths) / base,
            }
        )
    ours_s = spread([r["ours_images_s"] for r in rows])
    base_s = spread([r["baseline_images_s"] for r in rows])
    summary = {
        "ours_images_s_median": ours_s["median"],
        "ours_spread": ours_s["spread"],
        "baseline_images_s_median": base_s["median"],
        "baseline_spread": base_s["spread"],
        "per_worker_ratio": ours_s["median"] / workers / base_s["median"],
    }
    write_csv(out_dir / "stage1.csv", rows)
    write_csv(out_dir / "stage1_summary.csv", [summary])
    return summary
