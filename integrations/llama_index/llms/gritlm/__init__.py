"""LlamaIndex LLM from grit-hf: `GritLM` (reuses cached key/value states of nodes found in the prompt) and
`GritLMCachedContext`, a node postprocessor that makes the LLM see exactly the text that was embedded."""

from __future__ import annotations

from llama_index.llms.gritlm.base import GritLM
from llama_index.llms.gritlm.postprocessor import GritLMCachedContext

__all__ = ["GritLM", "GritLMCachedContext"]
