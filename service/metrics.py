"""Prometheus metrics, one ``CollectorRegistry`` per app so ``create_app`` can run many times."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
            "Time spent in the pooling operator itself (device included).",
            ["method"],
            registry=self.registry,
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )

    def observe(self, route: str, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        code = str(status)
        self.requests.labels(route, method, code).inc()
        if status >= 400:
            self.errors.labels(route, method, code).inc()
        self.latency.labels(route, method).observe(seconds)
        if received:
            self.bytes_in.labels(route, method).inc(received)
        if sent:
            self.bytes_out.labels(route, method).inc(sent)
