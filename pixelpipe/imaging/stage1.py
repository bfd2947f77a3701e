"""Stage 1 worker: decode, augment N seeded copies, encode and write JPEGs, in a spawn pool."""

from __future__ import annotations

import atexit
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypedDict

from pixelpipe.imaging.augment import augment, seed_for
from pixelpipe.imaging.boxes import Box
from pixelpipe.imaging.decode import ImageError, encode_jpeg, load_rgb
from pixelpipe.imaging.files import WriteError, write_atomic
from pixelpipe.storage.keys import content_key

MAX_CHUNK = 16
_CHUNKS_PER_WORKER = 4


@dataclass
class Stage1Task:
    """One source image to turn into `copies` augmented JPEGs under
    out_dir/<out_stem>__c<i>-<digest>.jpg (out_stem planned and bounded by the caller)."""

    source_key: str
    local_path: str
    out_dir: str
    out_stem: str
    copies: int
    spec: list[dict[str, Any]]
    spec_digest: str
    boxes: list[Box] = field(default_factory=list)
    quality: int = 90


class Stage1Item(TypedDict):
    """One written copy: where it is, what it holds and how it was made."""

    rel_path: str
    sha256: str
    bytes: int
    width: int
    height: int
    copy_index: int
    seed: int
    record: dict[str, Any]
    boxes: list[Box]


@dataclass
class Stage1Result:
    """The outcome for one task: items when it worked, a reason when it did not, and timings."""

    source_key: str
    items: list[Stage1Item] = field(default_factory=list)
    reason: str | None = None
    decode_s: float = 0.0
    augment_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None


def process_task(task: Stage1Task) -> Stage1Result:
    """Run one task; a bad image becomes a result with a reason, never an exception.

    A local write that fails (WriteError: disk full, ...) is not the image's fault: it
    propagates and fails the step.
    """
    result = Stage1Result(source_key=task.source_key)
    try:
        _run(task, result)
    except WriteError:
        raise
    except ImageError as exc:
        result.items, result.reason = [], str(exc)
    except Exception as exc:  # one bad file must not stop the batch
        result.items, result.reason = [], f"{type(exc).__name__}: {exc}"
    return result


def _run(task: Stage1Task, result: Stage1Result) -> None:
    clock = time.perf_counter()
    image = load_rgb(task.local_path)
    now = time.perf_counter()
    result.decode_s, clock = now - clock, now
    for index in range(task.copies):
        seed = seed_for(task.source_key, index, task.spec_digest)
        sample = augment(image, task.spec, seed, task.boxes)
        now = time.perf_counter()
        result.augment_s, clock = result.augment_s + now - clock, now
        data = encode_jpeg(sample.image, task.quality)
        now = time.perf_counter()
        result.encode_s, clock = result.encode_s + now - clock, now
        sha256 = hashlib.sha256(data).hexdigest()
        rel_path = content_key(f"{task.out_stem}__c{index}", sha256)
        write_atomic(Path(task.out_dir) / rel_path, data)
        now = time.perf_counter()
        result.write_s, clock = result.write_s + now - clock, now
        height, width = sample.image.shape[:2]
        result.items.append(
            Stage1Item(
                rel_path=rel_path,
                sha256=sha256,
                bytes=len(data),
                width=width,
                height=height,
                copy_index=index,
                seed=seed,
                record=sample.record.model_dump(),
                boxes=sample.boxes,
            )
        )


# ---------------------------------------------------------------- pool

_POOLS: dict[int, ProcessPoolExecutor] = {}


def _init_worker() -> None:
    """One compute thread per worker: N workers on N cores must not oversubscribe."""
    import cv2

    cv2.setNumThreads(1)
    cv2.ocl.setUseOpenCL(False)


def _pool(workers: int) -> ProcessPoolExecutor:
    pool = _POOLS.get(workers)
    if pool is None:
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker
        )
        _POOLS[workers] = pool
    return pool


def shutdown_pools() -> None:
    """Stop every worker pool this process started."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pools)


def _process_chunk(tasks: list[Stage1Task]) -> list[Stage1Result]:
    return [process_task(task) for task in tasks]


def _chunks(tasks: Sequence[Stage1Task], workers: int) -> list[list[Stage1Task]]:
    per_chunk = -(-len(tasks) // (workers * _CHUNKS_PER_WORKER))
    size = max(1, min(MAX_CHUNK, per_chunk))
    return [list(tasks[i : i + size]) for i in range(0, len(tasks), size)]


def run_tasks(tasks: Sequence[Stage1Task], workers: int) -> list[Stage1Result]:
    """Process tasks with `workers` spawn processes (in-process for one); results in input order."""
    if workers <= 1 or len(tasks) <= 1:
        return [process_task(task) for task in tasks]
    pool = _pool(workers)
    chunks = _chunks(tasks, workers)
    futures: list[Future[list[Stage1Result]]] = [pool.submit(_process_chunk, c) for c in chunks]
    results: list[Stage1Result] = []
    broken = False
    for chunk, future in zip(chunks, futures, strict=True):
        try:
            results.extend(future.result())
        except BrokenProcessPool as exc:
            broken = True
            reason = f"worker process died: {exc}"
            results.extend(Stage1Result(source_key=t.source_key, reason=reason) for t in chunk)
    if broken:
        _POOLS.pop(workers, None)
        pool.shutdown(wait=False, cancel_futures=True)
    return results


# ---------------------------------------------------------------- benchmark baseline


def baseline_loop(paths: Sequence[str | Path], spec: Sequence[dict[str, Any]], quality: int) -> int:
    """The plain single-process albumentations loop Stage 1 is measured against; images done."""
    import albumentations as A
    import cv2

    compose = A.Compose([getattr(A, t["name"])(**_args(t)) for t in spec])
    done = 0
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        out = compose(image=rgb)["image"]
        ok, _ = cv2.imencode(
            ".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        done += int(ok)
    return done


def _args(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "name"}
