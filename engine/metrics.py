"""Prometheus metrics, safe with several worker processes.

``keystage serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the
workers start; each worker then writes its samples there and ``/-/metrics`` merges them.
Without that variable (tests, a single embedded app) each app keeps its own registry.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # In multiprocess mode samples go to files whatever the registry; a private registry
        # per app keeps several apps in one process (tests) from colliding.
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "keystage_http_requests", "HTTP requests answered", ["method", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "keystage_http_request_duration_seconds", "Time to answer an HTTP request", ["method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def observe(self, method: str, status: int, seconds: float) -> None:
        method = method if method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS") else "OTHER"
        self.requests.labels(method, str(status)).inc()
        self.duration.labels(method).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
