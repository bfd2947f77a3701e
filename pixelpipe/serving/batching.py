"""Micro-batching: concurrent requests queue up and share one model call (Triton-style)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

MAX_BATCH_ENV = "SERVE_MAX_BATCH"
MAX_WAIT_ENV = "SERVE_MAX_WAIT_MS"
TORCH_THREADS_ENV = "SERVE_TORCH_THREADS"
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_WAIT_MS = 5.0

In = TypeVar("In")
Out = TypeVar("Out")
# run(items) -> one result per item; called in the inference thread
BatchFn = Callable[[list[In]], Sequence[Out]]
# on_batch(items in the batch, model seconds, queue seconds of each item)
BatchObserver = Callable[[int, float, list[float]], None]


class BatcherStopped(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass(frozen=True)
class BatchConfig:
    """How long a request may wait for company and how large a shared call may get."""

    max_batch_size: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 4096:
            raise ValueError(f"{MAX_BATCH_ENV}: expected 1..4096, got {self.max_batch_size}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"{MAX_WAIT_ENV}: expected 0..10000 ms, got {self.max_wait_ms}")

    @classmethod
    def from_settings(cls, settings: Any = None) -> BatchConfig:
        """settings.serve_max_batch / serve_max_wait_ms if defined, else the env, else defaults."""
        batch = getattr(settings, "serve_max_batch", None)
        wait = getattr(settings, "serve_max_wait_ms", None)
        if batch is None:
            batch = int(os.environ.get(MAX_BATCH_ENV) or DEFAULT_MAX_BATCH)
        if wait is None:
            wait = float(os.environ.get(MAX_WAIT_ENV) or DEFAULT_MAX_WAIT_MS)
        return cls(int(batch), float(wait))


def set_torch_threads(threads: int | None = None) -> int:
    """Intra-op threads of the inference thread: SERVE_TORCH_THREADS, else a quarter of the cores.

    Requests decode in parallel threads, so the model gets a share of the cores, not all: on a
    busy small machine, intra-op threads waiting on each other cost far more than they gain.
    """
    import torch

    wanted = threads or int(os.environ.get(TORCH_THREADS_ENV) or 0)
    count = wanted or max(1, len(os.sched_getaffinity(0)) // 4)
    torch.set_num_threads(count)
    return count


@dataclass
class _Item(Generic[In, Out]):
    payload: In
    size: int
    future: asyncio.Future[Out]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[In, Out]):
    """Collect up to max_batch_size items (counted by `size`) or wait max_wait_ms, then run once.

    One worker task gathers batches; the batch function runs in a single dedicated thread, so
    the event loop keeps accepting requests while the model computes (torch releases the GIL).
    An item larger than max_batch_size runs in a batch of its own.
    """

    def __init__(
        self,
        run: BatchFn[In, Out],
        config: BatchConfig | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.run = run
        self.config = config or BatchConfig()
        self.on_batch = on_batch
        self._pending: deque[_Item[In, Out]] = deque()
        self._inflight: list[_Item[In, Out]] = []
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pixelpipe-infer")
        self._task = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        leftovers = [*self._inflight, *self._pending]
        self._pending.clear()
        self._inflight = []
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(BatcherStopped("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, payload: In, size: int = 1) -> Out:
        """Queue one request's payload (`size` items of the batch); its result when done."""
        if not self.running or self._arrived is None:
            raise BatcherStopped("the model is not ready")
        item: _Item[In, Out] = _Item(payload, size, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._arrived.set()
        return await item.future

    async def _work(self) -> None:
        while True:
            batch = await self._gather()
            await self._execute(batch)

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        """Wait until submit() adds an item (or timeout seconds pass); False on timeout."""
        assert self._arrived is not None
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _gather(self) -> list[_Item[In, Out]]:
        while not self._pending:
            await self._wait_for_arrival(None)
        first = self._pending.popleft()
        batch, count = [first], first.size
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.max_wait_ms / 1000
        while count < self.config.max_batch_size:
            if not self._pending:
                remaining = deadline - loop.time()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
                continue
            if count + self._pending[0].size > self.config.max_batch_size:
                break
            item = self._pending.popleft()
            batch.append(item)
            count += item.size
        return batch

    async def _execute(self, batch: list[_Item[In, Out]]) -> None:
        live = [item for item in batch if not item.future.done()]  # cancelled: client left
        if not live:
            return
        started = time.perf_counter()
        waits = [started - item.queued_at for item in live]
        loop = asyncio.get_running_loop()
        self._inflight = live
        try:
            results = await loop.run_in_executor(
                self._executor, self.run, [item.payload for item in live]
            )
            if len(results) != len(live):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(live)}")
        except Exception as exc:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self._inflight = []
        if self.on_batch is not None:
            self.on_batch(sum(i.size for i in live), time.perf_counter() - started, waits)
        for item, result in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
