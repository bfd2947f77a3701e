"""Load for the serving bench: request builders, a closed-loop async driver, a tally, CSV rows."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WARMUP_REQUESTS = 20
RequestFn = Callable[[Any], Any]  # (httpx.AsyncClient) -> awaitable httpx.Response


_JSON = {"content-type": "application/json"}


def infer_request(url: str, model_name: str, image: bytes) -> RequestFn:
    b64 = base64.b64encode(image).decode("ascii")
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}
    body = json.dumps({"inputs": [tensor]}).encode()  # encoded once: measure servers, not json
    target = f"{url}/v2/models/{model_name}/infer"
    return lambda client: client.post(target, content=body, headers=_JSON)


def mlflow_request(url: str, image: bytes) -> RequestFn:
    b64 = base64.b64encode(image).decode("ascii")
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b64]]}}).encode()
    return lambda client: client.post(f"{url}/invocations", content=body, headers=_JSON)


def predict_request(url: str, image: bytes) -> RequestFn:
    files = {"file": ("bench.jpg", image, "image/jpeg")}
    return lambda client: client.post(f"{url}/predict", files=files)


@dataclass
class Tally:
    """What the timed part of one or more drives of a target saw."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    elapsed: float = 0.0
    server_cpu: float | None = 0.0

    def add_cpu(self, seconds: float | None) -> None:
        self.server_cpu = (
            None if seconds is None or self.server_cpu is None else (self.server_cpu + seconds)
        )


async def _drive(
    request: RequestFn,
    concurrency: int,
    seconds: float,
    max_requests: int,
    tally: Tally,
    cpu: Callable[[], float | None],
) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(min(WARMUP_REQUESTS, max_requests)):
            await request(client)
        budget = {"left": max_requests}
        cpu_before = cpu()
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline and budget["left"] > 0:
                budget["left"] -= 1
                t0 = time.perf_counter()
                try:
                    response = await request(client)
                    ok = response.status_code == 200
                    detail = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                if ok:
                    tally.latencies.append(time.perf_counter() - t0)
                else:
                    tally.errors += 1
                    tally.first_error = tally.first_error or detail

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        tally.elapsed += time.perf_counter() - started
        cpu_after = cpu()
        if cpu_before is None or cpu_after is None:
            tally.add_cpu(None)
        else:
            tally.add_cpu(cpu_after - cpu_before)


def drive(
    request: RequestFn,
    concurrency: int,
    seconds: float,
    max_requests: int,
    tally: Tally,
    cpu: Callable[[], float | None] = lambda: None,
) -> Tally:
    """Keep `concurrency` requests in flight for `seconds` (after a short warm-up).

    cpu() reads the server's CPU seconds so far (None: unknown); it is read around the timed part.
    """
    asyncio.run(_drive(request, concurrency, seconds, max_requests, tally, cpu))
    return tally


def summarize(target: str, concurrency: int, tally: Tally) -> dict[str, Any]:
    """A CSV row: req/s, latency percentiles (ms) and server CPU per request."""
    lat = np.asarray(tally.latencies) * 1000
    ok = len(lat)
    cpu_ms = round(tally.server_cpu / ok * 1000, 2) if ok and tally.server_cpu is not None else None
    return {
        "target": target,
        "concurrency": concurrency,
        "seconds": round(tally.elapsed, 3),
        "requests": ok,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "req_per_s": round(ok / tally.elapsed, 2) if tally.elapsed else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if ok else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if ok else None,
        "mean_ms": round(float(lat.mean()), 2) if ok else None,
        "server_cpu_ms_per_req": cpu_ms,
    }
