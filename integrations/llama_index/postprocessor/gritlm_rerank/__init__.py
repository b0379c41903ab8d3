"""LlamaIndex reranker of grit-hf: `GritLMRerank`, a node postprocessor on the shared GRIT model."""

from __future__ import annotations

from .base import GritLMRerank

__all__ = ["GritLMRerank"]
