"""What the LangChain and LlamaIndex classes (and the server) share: the `UsesSharedGrit` mixin that finds the
process-wide `GritRAG` of their `model`, document embedding that caches states, and running a blocking iterator
from async code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from .index import GritRAG
from .registry import get_shared, model_display_name

__all__ = ["UsesSharedGrit", "embed_documents", "aiter_in_thread"]

T = TypeVar("T")


def embed_documents(rag: GritRAG, texts: Sequence[str], cache: bool = True) -> np.ndarray:
    """Embed documents (no instruction): `(n, dim)` float32. With `cache`, each text is indexed in `rag` (once per
    text, see `GritRAG.add_documents`), so its key/value states are stored for generation."""
    if not cache:
        return rag.embed(texts, instruction="").numpy()
    ids = rag.add_documents(texts)
    return (
        rag.get_embeddings(ids).numpy() if ids else np.zeros((0, rag.model.config.text_config.hidden_size), np.float32)
    )


class UsesSharedGrit:
    """Mixin of the LangChain and LlamaIndex classes. The class has a `model` field (a checkpoint name or a loaded
    model) and a `_shared` private attribute (initially `None`); optional `rag_kwargs` and `cache_attention` fields
    are its `GritRAG` preferences (`None` means none)."""

    def _shared_rag_kwargs(self) -> dict[str, Any]:
        kwargs = dict(getattr(self, "rag_kwargs", None) or {})
        if getattr(self, "cache_attention", None) is not None:
            kwargs["cache_attention"] = self.cache_attention
        return kwargs

    @property
    def shared(self) -> GritRAG:
        """The process-wide `GritRAG` (model and key/value store) behind `model` (loaded on first use)."""
        if self._shared is None:
            self._shared = get_shared(self.model, rag_kwargs=self._shared_rag_kwargs())
        return self._shared

    @property
    def shared_name(self) -> str:
        """A readable name of `model` (the checkpoint folder's name), without loading it."""
        return model_display_name(self._shared.model if self._shared is not None else self.model)


async def aiter_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Iterate `make_iterator()` in one worker thread and yield its items in the event loop as they come (the
    iterator is created, advanced and closed in that same thread; it is closed early if the consumer stops)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            iterator = make_iterator()
            try:
                for item in iterator:
                    loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
                    if stop.is_set():
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))
        except BaseException as error:  # handed to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, ("error", error))

    worker = threading.Thread(target=produce, name="grit-hf-aiter", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = await queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
