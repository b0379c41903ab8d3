"""LangChain integration of grit-hf: `GritLMEmbeddings` and `ChatGritLM` on one shared GRIT model.

Both classes take `model=` as a checkpoint folder, a Hub name, `"default"` or a loaded `GritLMForCausalLM`; the same
checkpoint or object shares one model and one key/value store in the process, so documents embedded by
`GritLMEmbeddings` have their key/value states reused by `ChatGritLM` when their text appears in a prompt (the
standard retrieval chain works unchanged).
"""

from __future__ import annotations

from .chat_models import ChatGritLM
from .embeddings import GritLMEmbeddings

__all__ = ["ChatGritLM", "GritLMEmbeddings"]
