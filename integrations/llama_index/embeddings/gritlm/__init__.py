"""LlamaIndex embeddings from grit-hf: `GritLMEmbedding` (caches the key/value states of the texts it embeds)."""

from __future__ import annotations

from llama_index.embeddings.gritlm.base import GritLMEmbedding

__all__ = ["GritLMEmbedding"]
