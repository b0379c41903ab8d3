"""LangChain integration of grit-hf: `GritLMEmbeddings`, `ChatGritLM` and `GritLMRerank` on one shared GRIT model.

Both classes take `model=` as a checkpoint folder, a Hub name, `"default"` or a loaded `GritLMForCausalLM`; the same
checkpoint or object shares one model and one key/value store in the process, so documents embedded by
`GritLMEmbeddings` have their key/value states reused by `ChatGritLM` when their text appears in a prompt (the
standard retrieval chain works unchanged), and `GritLMRerank` (a document compressor for
`ContextualCompressionRetriever`) reranks them from those same states.
"""

from __future__ import annotations

from .chat_models import ChatGritLM
from .embeddings import GritLMEmbeddings
from .rerank import GritLMRerank

__all__ = ["ChatGritLM", "GritLMEmbeddings", "GritLMRerank"]
