"""Prometheus metrics of one app (in its own CollectorRegistry) and the middleware counting them.

Names follow the conventions the usual scrapers and dashboards already know:

* HTTP traffic as prometheus-fastapi-instrumentator names it: `http_requests_total{handler,
  method,status}` and the `http_request_duration_seconds{handler,method}` histogram, with the
  route template as `handler` (so random paths cannot blow up the label set).
* Inference as Triton names it: `nv_inference_request_success` / `nv_inference_request_failure`
  (requests), `nv_inference_count` (images inferred) and `nv_inference_exec_count` (model
  executions, i.e. batches). prometheus_client exposes counters with a `_total` suffix, so the
  scraped series are e.g. `nv_inference_count_total`.
* Stage timings as KServe's model server names them: `request_preprocess_seconds` (decode +
  resize of one request) and `request_predict_seconds` (one batched model execution), plus
  `request_queue_seconds` (time an image waited for its batch, Triton's queue duration).
* `pixelpipe_inference_batch_size` (images per execution) and the `pixelpipe_model` Info
  metric (`pixelpipe_model_info{name,version,platform}`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from starlette.routing import Match

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServingMetrics:
    """Every metric of one service instance, registered in a registry of its own."""

    def __init__(self, model_name: str, model_version: str, platform: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = {"model": model_name, "version": model_version}
        r = self.registry
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests by route, method and status code",
            ["handler", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route and method",
            ["handler", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        model_labels = ["model", "version"]
        self.success = Counter(
            "nv_inference_request_success",
            "inference requests answered",
            model_labels,
            registry=r,
        )
        self.failure = Counter(
            "nv_inference_request_failure",
            "inference requests refused or failed, by status",
            [*model_labels, "reason"],
            registry=r,
        )
        self.inference_count = Counter(
            "nv_inference_count", "images inferred", model_labels, registry=r
        )
        self.exec_count = Counter(
            "nv_inference_exec_count", "model executions (batches)", model_labels, registry=r
        )
        self.batch_size = Histogram(
            "pixelpipe_inference_batch_size",
            "images per model execution",
            model_labels,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "request_preprocess_seconds",
            "decode + resize + normalise time of one request",
            model_labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predict_seconds = Histogram(
            "request_predict_seconds",
            "time of one batched model execution",
            model_labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "request_queue_seconds",
            "time a request waited for its batch to start",
            model_labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.info = Info("pixelpipe_model", "the model this service serves", registry=r)
        self.info.info({"name": model_name, "version": model_version, "platform": platform})

    def observe_batch(self, images: int, seconds: float, waits: list[float]) -> None:
        """MicroBatcher callback: one execution of `images` images that took `seconds`."""
        self.exec_count.labels(**self.labels).inc()
        self.inference_count.labels(**self.labels).inc(images)
        self.batch_size.labels(**self.labels).observe(images)
        self.predict_seconds.labels(**self.labels).observe(seconds)
        for wait in waits:
            self.queue_seconds.labels(**self.labels).observe(wait)

    def observe_preprocess(self, seconds: float) -> None:
        self.preprocess_seconds.labels(**self.labels).observe(seconds)

    def request_done(self, status: int) -> None:
        """An inference request (infer or predict) finished with HTTP `status`."""
        if status < 400:
            self.success.labels(**self.labels).inc()
        else:
            self.failure.labels(**self.labels, reason=str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_template(app: Any, scope: Scope) -> str:
    """The matching route's path template (e.g. /v2/models/{name}/infer), else '<unmatched>'."""
    partial = None
    for route in getattr(app, "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", UNMATCHED))
        if match == Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", UNMATCHED))  # path matched, method did not
    return partial or UNMATCHED


class MetricsMiddleware:
    """Outermost ASGI layer: counts every HTTP response (413s from the body limit included)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, router_app: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.router_app = router_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            handler = route_template(self.router_app, scope)
            method = scope.get("method", "")
            method = method if method in _METHODS else "OTHER"
            self.metrics.http_requests.labels(handler, method, str(status["code"])).inc()
            self.metrics.http_latency.labels(handler, method).observe(time.perf_counter() - started)
