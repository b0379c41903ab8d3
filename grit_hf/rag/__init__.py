"""RAG with one GRIT model: retrieval, and generation that reuses the key/value states computed while embedding
(on the generation engine, `grit_hf.generation`), with one shared instance behind the integrations and the server.

- `gritrag.py`: `GritRAG` (add documents, search, answer in every caching mode, generate from prompts with cached
  documents spliced in);
- `documents.py`: `DocumentTable`, the indexed documents (ids, texts, embeddings) and exact search;
- at scale: `build.py` (`build_index`, `grit-hf index`: data-parallel indexing into a directory, `manifest.py`,
  `corpus.py`), `vectors.py` (FAISS), `opening.py` (`GritRAG.from_index`) and `layers.py` (a shared read-only index
  under a local table);
- `prompts.py`: the prompt formats of each mode;
- `registry.py`: one shared `GritRAG` per checkpoint or model object; `integration.py`: what the LangChain and
  LlamaIndex classes share.

The prompt plan and generation names (`PromptPlan`, `Cached`, `Recompute`, `Generator`, `GenerationResult`, ...) are
also exported here, next to `GritRAG` that builds and answers them.
"""

from __future__ import annotations

from ..generation.engine import GenerationOptions, GenerationResult, GenerationStream, Generator
from ..generation.plan import Cached, PromptPlan, Text, Tokens
from ..generation.recompute import RECOMPUTE_RULES, Recompute
from .build import IndexSummary, build_index
from .documents import MIN_CACHED_CHARS, document_id
from .gritrag import GritRAG
from .prompts import CACHING_MODES, RAG_MODES, RAGMode, RAGPrompts
from .registry import check_model_argument, clear_shared, get_shared, list_shared, model_display_name, release_shared
from .vectors import VectorIndex

__all__ = [
    "GritRAG",
    "build_index",
    "IndexSummary",
    "VectorIndex",
    "document_id",
    "MIN_CACHED_CHARS",
    "GenerationOptions",
    "GenerationResult",
    "GenerationStream",
    "Generator",
    "PromptPlan",
    "Text",
    "Tokens",
    "Cached",
    "Recompute",
    "RECOMPUTE_RULES",
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
