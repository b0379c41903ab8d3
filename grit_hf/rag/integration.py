"""What the LangChain and LlamaIndex classes (and the server) share: the `UsesSharedGrit` pydantic base that finds
the process-wide `GritRAG` of their `model`, document embedding that caches states, and running a blocking iterator
from async code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from ..async_bridge import ThreadedIterator
from .gritrag import GritRAG
from .registry import check_model_argument, get_shared, model_display_name

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


class UsesSharedGrit(BaseModel):
    """The pydantic base of the LangChain and LlamaIndex classes (both pydantic v2): the fields that find the
    process-wide `GritRAG` of their `model`, declared once.

    Attributes:
        model: a checkpoint folder, a Hub name such as `"GritLM/GritLM-7B"` (read from the local HF cache when
            offline), `"default"` (the offline SmolLM2-135M GRIT model) or a loaded `GritLMForCausalLM` (checked when
            set). The same checkpoint (a Hub name and its snapshot folder alike) or object shares one model and one
            key/value store in the process.
        cache_attention: attention of the cached states, `"bidirectional"` (the embedding pass's own states, as in
            the paper) or `"causal"` (an extra causal pass; exact continuation). `None`: the shared instance's
            setting (the checkpoint's `cache_attention` when this object creates it).
        rag_kwargs: more `GritRAG` settings for the shared instance, e.g. `{"store": DiskKVStore("kv/")}` or
            `{"max_length": 1024}`; like `cache_attention`, they must agree with an instance that exists already.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: Any = Field(
        default="default", description="Checkpoint folder, Hub name, 'default' or a loaded GritLMForCausalLM."
    )
    cache_attention: Literal["bidirectional", "causal"] | None = Field(
        default=None, description="Attention of the cached states (None: the shared instance's setting)."
    )
    rag_kwargs: dict[str, Any] | None = Field(default=None, description="More GritRAG settings (e.g. a store).")

    _shared: GritRAG | None = PrivateAttr(default=None)

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: Any) -> Any:
        return check_model_argument(value)

    def _shared_rag_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.rag_kwargs or {})
        if self.cache_attention is not None:
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


def aiter_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Iterate `make_iterator()` in one worker thread and yield its items in the event loop as they come (the
    iterator is created, advanced and closed in that same thread; it is closed early if the consumer stops)."""
    return ThreadedIterator(make_iterator).items()
