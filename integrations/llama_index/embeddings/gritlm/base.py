"""`GritLMEmbedding`: LlamaIndex embeddings from a GRIT model that also cache the nodes' key/value states."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import Field

from grit_hf.rag import check_model_argument, model_display_name
from grit_hf.rag.integration import UsesSharedGrit, embed_documents

__all__ = ["GritLMEmbedding"]


class GritLMEmbedding(UsesSharedGrit, BaseEmbedding):
    """Embeddings from a GRIT model (one decoder that embeds and generates).

    Texts (nodes) are embedded without an instruction and, by default, their key/value states are kept in the shared
    store of the model, so a `GritLM` LLM on the same `model` reuses them when the node text appears in a prompt.
    Queries are embedded with `query_instruction` (the checkpoint's `default_query_instruction` when unset).

    Args:
        model, cache_attention, rag_kwargs: the shared model and its key/value store (`UsesSharedGrit`): a
            checkpoint folder, a Hub name such as `"GritLM/GritLM-7B"`, `"default"` or a loaded `GritLMForCausalLM`.
        query_instruction: instruction for queries; `None` uses the checkpoint's default.
        cache_documents: keep the key/value states of embedded texts for generation.
        embed_batch_size: texts per call.

    Example:

    ```python
    >>> from llama_index.embeddings.gritlm import GritLMEmbedding
    >>> embed_model = GritLMEmbedding(model="default")
    >>> len(embed_model.get_text_embedding("Paris is the capital of France."))
    576
    ```
    """

    query_instruction: str | None = Field(default=None, description="Instruction for queries (None: the default).")
    cache_documents: bool = Field(default=True, description="Keep the key/value states of embedded texts.")

    def __init__(self, model: Any = "default", **kwargs: Any) -> None:
        kwargs.setdefault("model_name", model_display_name(check_model_argument(model)))
        super().__init__(model=model, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "GritLMEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self.shared.embed([query], instruction=self.query_instruction)[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        return embed_documents(self.shared, texts, cache=self.cache_documents).tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
