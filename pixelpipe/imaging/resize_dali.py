"""DALI resize backend: one graph decodes a batch into every variant; JPEG encode on the CPU."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from pixelpipe.imaging.decode import ImageError, encode_jpeg
from pixelpipe.imaging.geometry import PAD_VALUE, Geometry, plan
from pixelpipe.imaging.resize_cpu import (
    VariantOutput,
    VariantOutputs,
    plain_jpeg_size,
    process_file,
)
from pixelpipe.imaging.variants import Mode, Variant

if TYPE_CHECKING:
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.tensors import TensorListCPU, TensorListGPU

Device = Literal["gpu", "cpu"]
DEFAULT_BATCH = 32
_JPEG_EOI = b"\xff\xd9"
# What external_source is fed per sample: encoded bytes, float sizes, int32 windows.
FeedValue = npt.NDArray[np.uint8] | npt.NDArray[np.int32] | np.float32
_log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def available() -> bool:
    """True when nvidia.dali imports (it does without a GPU, then runs CPU-only)."""
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when DALI can see at least one CUDA device (no torch import needed)."""
    if not available():
        return False
    from nvidia.dali import backend

    try:
        # backend.pyi declares only the tensor classes; the pybind module has the function.
        return int(backend.GetCUDADeviceCount()) > 0  # type: ignore[attr-defined]
    except Exception:  # a missing or broken driver reads as no GPU
        return False


@dataclass(frozen=True)
class _Sample:
    """One file headed for the DALI graph: its bytes and one geometry per variant."""

    index: int
    path: str
    data: npt.NDArray[np.uint8]
    geoms: tuple[Geometry, ...]


class DaliResizer:
    """Decode + resize + crop/pad on DALI (GPU 'mixed' decode, or CPU), encode with encode_jpeg.

    Files DALI should not see (non-JPEG, CMYK, EXIF-rotated, oversized, unparsable) and files
    whose decode fails inside DALI are handed to the CPU backend one by one, so a bad file
    fails alone with the same ImageError reason as on the CPU path.
    """

    def __init__(
        self,
        device: Device | None = None,
        batch_size: int = DEFAULT_BATCH,
        num_threads: int | None = None,
    ) -> None:
        if not available():
            raise RuntimeError("nvidia.dali is not installed (pip install nvidia-dali-cuda120)")
        self.device: Device = device or ("gpu" if cuda_available() else "cpu")
        if self.device == "gpu" and not cuda_available():
            raise RuntimeError("DALI device 'gpu' needs a CUDA GPU")
        self.batch_size = batch_size
        self.num_threads = num_threads or os.cpu_count() or 1
        self.name = f"dali-{self.device}"
        self._encode_pool: ThreadPoolExecutor | None = None

    def process(
        self, paths: Sequence[str], variants: Sequence[Variant], quality: int = 90
    ) -> list[VariantOutputs | ImageError]:
        """All files, batch by batch, results in input order."""
        results: list[VariantOutputs | ImageError] = []
        for start in range(0, len(paths), self.batch_size):
            batch = paths[start : start + self.batch_size]
            results.extend(self.process_batch(batch, variants, quality))
        return results

    def process_batch(
        self, paths: Sequence[str], variants: Sequence[Variant], quality: int = 90
    ) -> list[VariantOutputs | ImageError]:
        """At most batch_size files through one run of the graph; each bad file fails alone."""
        if len(paths) > self.batch_size:
            raise ValueError(f"{len(paths)} files exceed batch_size {self.batch_size}")
        results: list[VariantOutputs | ImageError | None] = [None] * len(paths)
        samples: list[_Sample] = []
        for index, path in enumerate(paths):
            sample = _prepare(index, path, variants)
            if sample is None:
                results[index] = _cpu_fallback(path, variants, quality)
            else:
                samples.append(sample)
        for sample, outcome in self._run_isolating_failures(samples, variants, quality):
            results[sample.index] = outcome
        return [r for r in results if r is not None]

    def _run_isolating_failures(
        self, samples: list[_Sample], variants: Sequence[Variant], quality: int
    ) -> list[tuple[_Sample, VariantOutputs | ImageError]]:
        if not samples:
            return []
        try:
            return list(zip(samples, self._run(samples, variants, quality), strict=True))
        except RuntimeError as exc:
            _log.warning("DALI failed on %d file(s), isolating: %s", len(samples), exc)
            if len(samples) == 1:
                return [(samples[0], _cpu_fallback(samples[0].path, variants, quality))]
        # One bad file poisons the whole batch in DALI: retry file by file to find it.
        pairs: list[tuple[_Sample, VariantOutputs | ImageError]] = []
        for sample in samples:
            pairs.extend(self._run_isolating_failures([sample], variants, quality))
        return pairs

    def _run(
        self, samples: list[_Sample], variants: Sequence[Variant], quality: int
    ) -> list[VariantOutputs]:
        shapes = tuple((v.mode, v.width, v.height) for v in variants)
        pipe = _pipeline(shapes, self.device, self.batch_size, self.num_threads)
        start = time.perf_counter()
        outputs = pipe.run(**_feed(samples, tuple(v.mode for v in variants)))
        arrays = [_to_host(out) for out in outputs]
        per_file = (time.perf_counter() - start) / len(samples)

        def encode(cell: tuple[int, int]) -> VariantOutput:
            row, col = cell
            t0 = time.perf_counter()
            jpeg = encode_jpeg(arrays[col][row], quality)
            geom = samples[row].geoms[col]
            return VariantOutput(variants[col], geom, jpeg, time.perf_counter() - t0)

        cells = [(row, col) for row in range(len(samples)) for col in range(len(variants))]
        encoded = iter(self._encoders().map(encode, cells))
        return [
            VariantOutputs(sample.path, [next(encoded) for _ in variants], per_file)
            for sample in samples
        ]

    def close(self) -> None:
        """Stop the encode threads (built pipelines stay cached for the next resizer)."""
        if self._encode_pool is not None:
            self._encode_pool.shutdown()
            self._encode_pool = None

    def _encoders(self) -> ThreadPoolExecutor:
        # The host-side JPEG encode is the CPU cost left on a GPU box; spread it over threads.
        if self._encode_pool is None:
            self._encode_pool = ThreadPoolExecutor(self.num_threads)
        return self._encode_pool


def _prepare(index: int, path: str, variants: Sequence[Variant]) -> _Sample | None:
    """Read and header-check a file; None sends it down the CPU path instead."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    size = plain_jpeg_size(data)
    # nvJPEG may paint a truncated file grey instead of failing; the strict CPU path decides.
    if size is None or not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        return None
    geoms = tuple(plan(size[0], size[1], v) for v in variants)
    return _Sample(index, str(path), np.frombuffer(data, dtype=np.uint8), geoms)


def _cpu_fallback(
    path: str, variants: Sequence[Variant], quality: int
) -> VariantOutputs | ImageError:
    try:
        return process_file(path, variants, quality)
    except ImageError as exc:
        return exc


def _feed(samples: list[_Sample], modes: tuple[Mode, ...]) -> dict[str, list[FeedValue]]:
    """Per-sample inputs by external_source name: bytes, then sizes and windows per variant."""
    feed: dict[str, list[FeedValue]] = {"encoded": [s.data for s in samples]}
    for i, mode in enumerate(modes):
        geoms = [s.geoms[i] for s in samples]
        feed[f"rw{i}"] = [np.float32(g.resized_width) for g in geoms]
        feed[f"rh{i}"] = [np.float32(g.resized_height) for g in geoms]
        if mode == "stretch":
            continue
        # (x, y) of the output window inside the resized image; negative = letterbox padding.
        feed[f"anchor{i}"] = [
            np.array([g.crop_x - g.pad_x, g.crop_y - g.pad_y], dtype=np.int32) for g in geoms
        ]
        feed[f"shape{i}"] = [np.array([g.width, g.height], dtype=np.int32) for g in geoms]
    return feed


def _to_host(out: TensorListCPU | TensorListGPU) -> npt.NDArray[np.uint8]:
    """A batch of equally sized outputs as one N x H x W x 3 uint8 array."""
    # as_cpu() copies a GPU list to the host and passes a CPU list through.
    array: npt.NDArray[np.uint8] = out.as_cpu().as_array()
    return array


def cascade_sources(shapes: Sequence[tuple[Mode, int, int]]) -> list[int | None]:
    """For each variant, the earlier variant whose resized image it can be made from, or None.

    Statically safe only within one mode: there a larger target on both axes gives a resized
    image at least as large on both axes for every source aspect ratio.
    """
    sources: list[int | None] = [None] * len(shapes)
    done: list[int] = []
    for j in sorted(range(len(shapes)), key=lambda k: -shapes[k][1] * shapes[k][2]):
        mode, width, height = shapes[j]
        covering = [
            i
            for i in done
            if shapes[i][0] == mode and shapes[i][1] >= width and shapes[i][2] >= height
        ]
        if covering:
            sources[j] = min(covering, key=lambda i: shapes[i][1] * shapes[i][2])
        done.append(j)
    return sources


@lru_cache(maxsize=16)
def _pipeline(
    shapes: tuple[tuple[Mode, int, int], ...], device: Device, batch_size: int, num_threads: int
) -> Pipeline:
    """Build once per (variant shapes, device, batch size); per-sample sizes are fed at run time."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.data_node import DataNode

    sources = cascade_sources(shapes)

    @pipeline_def
    def graph() -> tuple[DataNode, ...]:
        encoded = fn.external_source(name="encoded", dtype=types.DALIDataType.UINT8, ndim=1)
        decoder_device = "mixed" if device == "gpu" else "cpu"
        images = fn.decoders.image(
            encoded, device=decoder_device, output_type=types.DALIImageType.RGB
        )
        resized: dict[int, DataNode] = {}
        outputs: dict[int, DataNode] = {}
        for i in sorted(range(len(shapes)), key=lambda k: -shapes[k][1] * shapes[k][2]):
            rw = fn.external_source(name=f"rw{i}", dtype=types.DALIDataType.FLOAT, ndim=0)
            rh = fn.external_source(name=f"rh{i}", dtype=types.DALIDataType.FLOAT, ndim=0)
            cascade_from = sources[i]
            source = images if cascade_from is None else resized[cascade_from]
            node = fn.resize(source, resize_x=rw, resize_y=rh, antialias=True)
            # One input without save_attrs gives one node; the stub's union covers the rest.
            if not isinstance(node, DataNode):
                raise TypeError(f"fn.resize returned {type(node).__name__}, not one DataNode")
            resized[i] = node
            outputs[i] = resized[i]
            if shapes[i][0] != "stretch":
                int32 = types.DALIDataType.INT32
                anchor = fn.external_source(name=f"anchor{i}", dtype=int32, ndim=1)
                shape = fn.external_source(name=f"shape{i}", dtype=int32, ndim=1)
                # One slice does both: a window inside (fit crop) or around (letterbox pad).
                outputs[i] = fn.slice(
                    resized[i], anchor, shape, out_of_bounds_policy="pad", fill_values=PAD_VALUE
                )
        # Copying to host inside the graph batches the transfers through pinned memory;
        # TensorListGPU.as_cpu() afterwards was 5x slower for five variants on an H100.
        if device == "gpu":
            return tuple(outputs[i].cpu() for i in range(len(shapes)))
        return tuple(outputs[i] for i in range(len(shapes)))

    pipe = graph(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=0 if device == "gpu" else None,
        prefetch_queue_depth=1,
    )
    pipe.build()
    return pipe
