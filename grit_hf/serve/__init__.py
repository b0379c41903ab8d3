"""`grit-hf serve`: an OpenAI-compatible HTTP server in which one GRIT model embeds and generates, and chats reuse the
key/value states cached while documents were embedded.

Endpoints:

| endpoint | what |
|---|---|
| `GET /health` | liveness (no authentication) |
| `GET /metrics` | Prometheus metrics (`grit_hf.serve.metrics`) |
| `GET /v1/models`, `GET /v1/models/{id}` | the one served model |
| `POST /v1/embeddings` | OpenAI's embeddings; extensions `input_type`, `instruction`, `cache` (`grit_hf.serve.embeddings`) |
| `POST /v1/chat/completions` | OpenAI's chat completions, streamed or not; extensions `documents`, `reuse_cache`, `ignore_eos` |
| `POST /v1/rerank`, `POST /rerank` | rank documents for a query (Cohere/Jina/vLLM/TEI shape); indexed ones from their states |
| `POST /v1/documents` | index documents `{"documents": [{"id"?, "text"}]}` (kept until deleted) |
| `GET /v1/documents`, `GET/DELETE /v1/documents/{id}` | list, read, delete indexed documents |

Ids in paths are percent-encoded UTF-8 and name exactly the id they spell; `POST /v1/documents` refuses ids a URL
cannot carry (`grit_hf.serve.ids`). Batching: embedding requests that arrive together are embedded in one model call (`embedding_batcher.py`); the decode
steps of all active chats run as one forward pass (`grit_hf.generation.batched.DecodeBatch`, on by default,
`--no-batch-decoding`). A chat request is checked and planned in `chat_request.py` and answered in `chat_answer.py`.
Errors use OpenAI's error JSON (`grit_hf.serve.errors`); limits are in `grit_hf.serve.limits.Limits`.
Needs the `serve` extra: `pip install "grit-hf[serve]"`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Limits", "ServerSettings"]

_EXPORTS = {"create_app": ".app", "Limits": ".limits", "ServerSettings": ".state"}


def __getattr__(name: str) -> Any:  # lazy: `grit-hf --help` must not import FastAPI
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
