"""Prometheus metrics of one server (its own `CollectorRegistry`, so several apps in a process do not collide), and
the middleware that times every request by endpoint, method and status.

| metric | kind | labels |
|---|---|---|
| `grit_hf_requests_total` | counter | endpoint, method, status |
| `grit_hf_request_duration_seconds` | histogram | endpoint (a stream: until its last byte) |
| `grit_hf_prompt_tokens_total` | counter | endpoint (embedded text tokens, or chat prompt tokens) |
| `grit_hf_cached_tokens_total` | counter | prompt tokens served from cached document states |
| `grit_hf_completion_tokens_total` | counter | generated tokens |
| `grit_hf_time_to_first_token_seconds` | histogram | chat, from arrival to the first text |
| `grit_hf_embedding_batch_size` | histogram | texts per model call of the embedding batcher |
| `grit_hf_active_generations` | gauge | chat completions decoding now |
| `grit_hf_queued_embedding_inputs` | gauge | texts waiting for the batcher |
| `grit_hf_indexed_documents` | gauge | documents in the index |
| `grit_hf_kv_store_bytes` | gauge | bytes of the in-memory key/value store |
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "MetricsMiddleware", "endpoint_label", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ENDPOINTS = (
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/embeddings",
    "/v1/chat/completions",
    "/v1/documents",
    "/v1/rerank",
    "/rerank",
)


def endpoint_label(path: str) -> str:
    """The route of `path` (bounded label values: ids and unknown paths do not create new series)."""
    if path in _ENDPOINTS:
        return path
    for prefix in ("/v1/documents/", "/v1/models/"):
        if path.startswith(prefix):
            return prefix + "{id}"
    return "other"


class Metrics:
    """The server's metrics (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("grit_hf_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram(
            "grit_hf_request_duration_seconds", "Request latency", ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("grit_hf_prompt_tokens", "Prompt or input tokens", ["endpoint"], registry=r)
        self.cached_tokens = Counter(
            "grit_hf_cached_tokens", "Prompt tokens served from cached document states", registry=r
        )
        self.completion_tokens = Counter("grit_hf_completion_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram(
            "grit_hf_time_to_first_token_seconds", "Time to the first text", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "grit_hf_embedding_batch_size",
            "Texts per model call of the embedding batcher",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.active_generations = Gauge("grit_hf_active_generations", "Chat completions decoding now", registry=r)
        self.queued_inputs = Gauge("grit_hf_queued_embedding_inputs", "Texts waiting for the batcher", registry=r)
        self.documents = Gauge("grit_hf_indexed_documents", "Documents in the index", registry=r)
        self.store_bytes = Gauge("grit_hf_kv_store_bytes", "Bytes of the in-memory key/value store", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request (outermost, so refused requests count too)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            endpoint = endpoint_label(scope["path"])
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
