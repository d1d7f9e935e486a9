"""Prometheus metrics, one ``CollectorRegistry`` per app so ``create_app`` can run many times."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["Metrics", "route_label"]

_FIXED = ("/health", "/ready", "/methods", "/metrics", "/docs", "/openapi.json", "/redoc", "/")


def route_label(path: str) -> str:
    """A bounded set of route labels, whatever paths clients ask for."""
    if path.startswith("/pool/"):
        return "/pool/{method}"
    if path == "/ui" or path.startswith("/ui/"):
        return "/ui"
    if path.startswith("/bench/"):
        return "/bench"
    if path.startswith("/v2/models/"):  # the Open Inference Protocol's routes (issue 11)
        for action in ("infer", "ready"):
            if path.endswith("/" + action):
                return "/v2/models/{name}/" + action
        return "/v2/models/{name}"
    if path in ("/v2", "/v2/health/live", "/v2/health/ready"):
        return path
    return path if path in _FIXED else "other"


class Metrics:
    """Requests, latencies, bytes and errors by route, pooling method and status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("route", "method")
        self.requests = Counter(
            "poolserve_requests", "HTTP requests answered.", [*labels, "status"], registry=self.registry
        )
        self.errors = Counter(
            "poolserve_errors",
            "HTTP requests answered with status >= 400.",
            [*labels, "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "poolserve_request_seconds",
            "Time from request start to response end.",
            labels,
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.bytes_in = Counter(
            "poolserve_request_bytes", "Request body bytes read.", labels, registry=self.registry
        )
        self.bytes_out = Counter(
            "poolserve_response_bytes", "Response body bytes sent.", labels, registry=self.registry
        )
        self.pool_seconds = Histogram(
            "poolserve_pool_seconds",
            "Time in the pooling operator itself per request (device included); requests that shared one "
            "call each count an equal share of it.",
            ["method"],
            registry=self.registry,
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.queue_depth = Gauge(
            "poolserve_queue_depth",
            "Requests (and UI calls) waiting for a torch worker, not counting those running.",
            registry=self.registry,
        )
        self.shed = Counter(
            "poolserve_shed_requests",
            "Pool requests answered without running: queue_full, queue_timeout and shutting_down got 503; "
            "client_gone had disconnected before a worker took it (or before its answer).",
            ["reason"],
            registry=self.registry,
        )
        self.stack_fallbacks = Counter(
            "poolserve_stack_fallbacks",
            "Shared (stacked) operator calls that failed, whose requests then ran one by one: each is also "
            "logged with its traceback. Should stay 0.",
            ["method"],
            registry=self.registry,
        )
        self.auth_throttled = Counter(
            "poolserve_auth_throttled",
            "Requests refused (429, gRPC RESOURCE_EXHAUSTED) because their client address sent too many "
            "wrong API keys within a minute, on any protocol.",
            registry=self.registry,
        )
        # Labelled children by (metric, labels): ``labels()`` validates and locks on every call, and the
        # label values are a bounded set (route labels, registry names, status codes).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, route: str, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        code = str(status)
        self._child(self.requests, route, method, code).inc()
        if status >= 400:
            self._child(self.errors, route, method, code).inc()
        self._child(self.latency, route, method).observe(seconds)
        if received:
            self._child(self.bytes_in, route, method).inc(received)
        if sent:
            self._child(self.bytes_out, route, method).inc(sent)

    def observe_pool(self, method: str, seconds: float) -> None:
        self._child(self.pool_seconds, method).observe(seconds)

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """Report ``depth()`` as the queue depth, read at each scrape."""
        self.queue_depth.set_function(depth)

    def observe_stack_fallback(self, method: str) -> None:
        self._child(self.stack_fallbacks, method).inc()

    def observe_shed(self, reason: str) -> None:
        self._child(self.shed, reason).inc()
