"""RAG with one GRIT model: retrieval, generation that reuses the key/value states computed while embedding, and the
shared instance behind the integrations.

- `index.py`: `GritRAG` (add documents, search, answer in every caching mode, generate from prompts with cached
  documents spliced in);
- `segments.py`: prompts made of text and cached segments; `compose.py`: composing them into one cache (shared with
  the trainer's cache loss); `decoding.py`: the one generation engine (`Generator`, `GenerationResult`,
  `GenerationStream`);
- `prompts.py`: the prompt formats of each mode; `registry.py`: one shared `GritRAG` per checkpoint or model object;
  `integration.py`: what the LangChain/LlamaIndex classes share.
"""

from __future__ import annotations

from .decoding import GenerationOptions, GenerationResult, GenerationStream, Generator
from .documents import MIN_CACHED_CHARS, document_id
from .index import GritRAG
from .prompts import CACHING_MODES, RAG_MODES, RAGMode, RAGPrompts
from .registry import check_model_argument, clear_shared, get_shared, list_shared, model_display_name, release_shared
from .segments import CachedSegment, Segment

__all__ = [
    "GritRAG",
    "document_id",
    "MIN_CACHED_CHARS",
    "GenerationOptions",
    "GenerationResult",
    "GenerationStream",
    "Generator",
    "CachedSegment",
    "Segment",
    "RAGPrompts",
    "RAGMode",
    "RAG_MODES",
    "CACHING_MODES",
    "get_shared",
    "release_shared",
    "clear_shared",
    "list_shared",
    "check_model_argument",
    "model_display_name",
]
