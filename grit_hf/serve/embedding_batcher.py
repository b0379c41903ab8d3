"""The embedding micro-batcher: requests that arrive together are embedded in one model call.

One worker thread takes the oldest waiting request, then keeps collecting for at most `max_wait` seconds or until
`max_batch` texts are waiting, and embeds the texts of all collected requests that share a kind (documents to cache,
documents not to cache, queries with one instruction) in one call of `embed_fn` (which runs the model's forward
passes, each under the model's lock, so chats keep decoding between them). While it computes, new requests queue up
and form the next batch, so batches grow with the load even with `max_wait=0`. Results go back to each request's
future; a request whose future was cancelled (timeout, disconnect) before its batch started is skipped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from .errors import APIError

__all__ = ["EmbeddingBatcher"]

EmbedFn = Callable[[Hashable, list[str]], np.ndarray]


@dataclass
class _Job:
    key: Hashable
    texts: list[str]
    future: Future = field(default_factory=Future)


class EmbeddingBatcher:
    """Batches embedding requests for one model (see the module docstring).

    Args:
        embed_fn: `embed_fn(key, texts) -> (len(texts), dim) float32 array`, called from the worker thread only.
        max_batch: texts per call to collect at most (one larger request is still embedded in one call).
        max_wait: seconds to wait for more requests after the first one arrives.
        max_queued: texts waiting at most; `submit` answers 429 beyond.
        on_batch: called with the number of texts of each call (metrics).
    """

    def __init__(
        self,
        embed_fn: EmbedFn,
        max_batch: int = 64,
        max_wait: float = 0.002,
        max_queued: int = 4096,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.embed_fn = embed_fn
        self.max_batch, self.max_wait, self.max_queued = max_batch, max_wait, max_queued
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._queued = 0
        self._count_lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="grit-hf-embed-batcher", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        """Texts waiting (not yet being embedded)."""
        return self._queued

    def submit(self, key: Hashable, texts: list[str]) -> Future:
        """Queue `texts` of kind `key`; the future gets their embeddings (or the exception of their batch)."""
        with self._count_lock:
            if self._queued + len(texts) > self.max_queued:
                raise APIError(
                    429,
                    f"The embedding queue is full ({self._queued} texts waiting, at most {self.max_queued}): retry "
                    "shortly.",
                    code="queue_full",
                    headers={"Retry-After": "1"},
                )
            self._queued += len(texts)
        job = _Job(key, texts)
        self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker after the requests already queued."""
        self._queue.put(None)
        self._worker.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, size, stop = [first], len(first.texts), False
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
            size += len(job.texts)
        with self._count_lock:
            self._queued -= size
        return jobs, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._embed_group(key, group)

    def _embed_group(self, key: Hashable, jobs: list[_Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        try:
            vectors = self.embed_fn(key, texts)
            if self.on_batch is not None:
                self.on_batch(len(texts))
        except BaseException as error:  # handed to every request of the batch
            for job in jobs:
                job.future.set_exception(error)
            return
        start = 0
        for job in jobs:
            job.future.set_result(vectors[start : start + len(job.texts)])
            start += len(job.texts)
