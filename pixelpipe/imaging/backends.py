"""Pick a resize backend (DALI on a GPU, else a pool of CPU workers) behind one small interface."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, TypeVar

from pixelpipe.imaging import resize_dali
from pixelpipe.imaging.decode import ImageError
from pixelpipe.imaging.files import write_atomic
from pixelpipe.imaging.geometry import Geometry
from pixelpipe.imaging.resize_cpu import VariantOutput, VariantOutputs, process_files
from pixelpipe.imaging.variants import Variant
from pixelpipe.storage.keys import content_key

BackendName = Literal["auto", "cpu", "dali", "dali-cpu", "dali-gpu"]
BACKEND_NAMES: tuple[str, ...] = ("auto", "cpu", "dali", "dali-cpu", "dali-gpu")
# Files per task sent to a worker: enough to amortise pickling, few enough to balance load.
MAX_CHUNK = 16
T = TypeVar("T")
_B = TypeVar("_B", bound="_ClosesOnExit")

__all__ = [
    "BACKEND_NAMES",
    "CpuBackend",
    "DaliBackend",
    "ResizeBackend",
    "VariantOutput",
    "VariantOutputs",
    "WriteJob",
    "WrittenVariant",
    "get_backend",
    "write_outputs",
]


@dataclass(frozen=True)
class WriteJob:
    """One source file and the key its variants are written under (without the variant prefix)."""

    path: str
    rel_key: str


@dataclass(frozen=True)
class WrittenVariant:
    """One variant once its JPEG is on disk: small enough to send back from a worker."""

    variant_name: str
    rel_path: str
    sha256: str
    bytes: int
    geometry: Geometry
    render_seconds: float
    write_seconds: float
    decode_seconds: float


class ResizeBackend(Protocol):
    """Turns source files into every variant, either returned as bytes or written to a folder."""

    name: str

    def process(
        self, paths: Sequence[str], variants: Sequence[Variant], quality: int = 90
    ) -> list[VariantOutputs | ImageError]: ...

    def render_to_dir(
        self,
        jobs: Sequence[WriteJob],
        variants: Sequence[Variant],
        out_dir: Path,
        quality: int = 90,
    ) -> list[list[WrittenVariant] | ImageError]: ...

    def close(self) -> None: ...


def write_outputs(outputs: VariantOutputs, rel_key: str, out_dir: Path) -> list[WrittenVariant]:
    """Write each variant to out_dir/<variant>/<rel_key stem>-<digest>.jpg (atomically, named by
    its bytes so no later run can overwrite it with others) and describe it."""
    written = []
    stem = rel_key.removesuffix(".jpg")
    for out in outputs.outputs:
        sha256 = hashlib.sha256(out.jpeg).hexdigest()
        rel_path = content_key(f"{out.variant.name}/{stem}", sha256)
        start = time.perf_counter()
        write_atomic(out_dir / rel_path, out.jpeg)
        written.append(
            WrittenVariant(
                variant_name=out.variant.name,
                rel_path=rel_path,
                sha256=sha256,
                bytes=len(out.jpeg),
                geometry=out.geometry,
                render_seconds=out.seconds,
                write_seconds=time.perf_counter() - start,
                decode_seconds=outputs.decode_seconds,
            )
        )
    return written


def _render_chunk(
    jobs: Sequence[WriteJob], variants: Sequence[Variant], out_dir: Path, quality: int
) -> list[list[WrittenVariant] | ImageError]:
    """Worker task: decode, resize, encode and write a few files; only metadata goes back."""
    results = process_files([j.path for j in jobs], variants, quality)
    return [
        r if isinstance(r, ImageError) else write_outputs(r, job.rel_key, out_dir)
        for job, r in zip(jobs, results, strict=True)
    ]


def _init_worker() -> None:
    # One OpenCV thread per worker process: the pool already fills every core.
    import cv2

    cv2.setNumThreads(1)


def _init_worker_noop(_: int) -> None:
    """A task that only proves a worker is up."""


class _ClosesOnExit:
    """`with backend:` closes its pools and pipelines on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class CpuBackend(_ClosesOnExit):
    """Reduced-scale decode + cascaded INTER_AREA resize, across a spawn process pool."""

    name = "cpu"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool: Executor | None = None

    def _executor(self) -> Executor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_init_worker
            )
        return self._pool

    def _chunks(self, items: Sequence[T]) -> list[Sequence[T]]:
        size = max(1, min(MAX_CHUNK, len(items) // (self.workers * 4)))
        return [items[i : i + size] for i in range(0, len(items), size)]

    def warm_up(self) -> None:
        """Start every worker now (spawn imports take a second) so timings exclude it."""
        if self.workers > 1:
            list(self._executor().map(_init_worker_noop, range(self.workers)))

    def process(
        self, paths: Sequence[str], variants: Sequence[Variant], quality: int = 90
    ) -> list[VariantOutputs | ImageError]:
        if self.workers == 1:
            return process_files(paths, variants, quality)
        pool = self._executor()
        chunks = self._chunks(paths)
        futures = [pool.submit(process_files, chunk, variants, quality) for chunk in chunks]
        return [r for f in futures for r in f.result()]

    def render_to_dir(
        self,
        jobs: Sequence[WriteJob],
        variants: Sequence[Variant],
        out_dir: Path,
        quality: int = 90,
    ) -> list[list[WrittenVariant] | ImageError]:
        if self.workers == 1:
            return _render_chunk(jobs, variants, out_dir, quality)
        pool = self._executor()
        chunks = self._chunks(jobs)
        futures = [pool.submit(_render_chunk, c, variants, out_dir, quality) for c in chunks]
        return [r for f in futures for r in f.result()]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class DaliBackend(_ClosesOnExit):
    """DALI decode + resize in batches in this process; encode and write here too."""

    def __init__(self, resizer: resize_dali.DaliResizer) -> None:
        self.resizer = resizer
        self.name = resizer.name
        self.workers = resizer.num_threads
        self._writers: ThreadPoolExecutor | None = None

    def warm_up(self) -> None:
        """Nothing to start ahead: pipelines are built on first use per variant set."""

    def process(
        self, paths: Sequence[str], variants: Sequence[Variant], quality: int = 90
    ) -> list[VariantOutputs | ImageError]:
        return self.resizer.process(paths, variants, quality)

    def render_to_dir(
        self,
        jobs: Sequence[WriteJob],
        variants: Sequence[Variant],
        out_dir: Path,
        quality: int = 90,
    ) -> list[list[WrittenVariant] | ImageError]:
        # Writes (open, hash, rename) run on threads while DALI works on the next batch.
        pending: list[Future[list[WrittenVariant]] | ImageError] = []
        step = self.resizer.batch_size
        for start in range(0, len(jobs), step):
            batch = jobs[start : start + step]
            outputs = self.resizer.process_batch([j.path for j in batch], variants, quality)
            for job, r in zip(batch, outputs, strict=True):
                if isinstance(r, ImageError):
                    pending.append(r)
                else:
                    pending.append(self._writer().submit(write_outputs, r, job.rel_key, out_dir))
        return [p if isinstance(p, ImageError) else p.result() for p in pending]

    def _writer(self) -> ThreadPoolExecutor:
        if self._writers is None:
            self._writers = ThreadPoolExecutor(self.workers)
        return self._writers

    def close(self) -> None:
        self.resizer.close()
        if self._writers is not None:
            self._writers.shutdown()
            self._writers = None


def get_backend(name: str = "auto", workers: int | None = None) -> CpuBackend | DaliBackend:
    """'auto' = DALI on the GPU when CUDA and DALI are there, else the CPU pool.

    'dali' picks the GPU when there is one and DALI-on-CPU otherwise; 'dali-cpu' and 'dali-gpu'
    force a device. workers sizes the CPU pool (default: one per core; 1 = in this process)
    and DALI's thread count.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown resize backend {name!r}; expected one of {BACKEND_NAMES}")
    if name == "auto":
        use_dali = resize_dali.available() and resize_dali.cuda_available()
        name = "dali-gpu" if use_dali else "cpu"
    if name == "cpu":
        return CpuBackend(workers)
    devices: dict[str, resize_dali.Device | None] = {
        "dali": None,
        "dali-cpu": "cpu",
        "dali-gpu": "gpu",
    }
    resizer = resize_dali.DaliResizer(device=devices[name], num_threads=workers)
    return DaliBackend(resizer)
