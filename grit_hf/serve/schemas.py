"""Request bodies in OpenAI's shapes (pydantic), with grit-hf's extensions, and the response builders.

Types are checked strictly (no `"1"` for `1`, no number for a string), so a wrong type is a clear 422 naming the
field. Values are checked later by the engine's own checks (`GenerationOptions`, `grit_hf.validation`) and give 400.
Fields OpenAI clients send that change nothing here (`user`, `metadata`, `store`, ...) are accepted and ignored;
fields whose non-default value would change the answer and that the server does not implement (`n > 1`, `tools`,
`logprobs`, penalties, `response_format` other than text) are refused with 400 rather than silently ignored.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

__all__ = [
    "EmbeddingRequest",
    "ChatMessage",
    "ChatRequest",
    "StreamOptions",
    "DocumentIn",
    "DocumentsRequest",
    "RerankDocument",
    "RerankRequest",
    "encode_embedding",
    "chat_completion",
    "chat_chunk",
    "new_id",
]

Number = StrictInt | StrictFloat


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class EmbeddingRequest(_Body):
    """`POST /v1/embeddings`. Extensions: `input_type`, `instruction`, `cache`."""

    model: StrictStr | None = None
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None
    input_type: Literal["document", "query"] | None = Field(
        default=None, description="grit-hf: 'document' (default; no instruction) or 'query' (query instruction)"
    )
    instruction: StrictStr | None = Field(default=None, description="grit-hf: query instruction (implies a query)")
    cache: StrictBool | None = Field(
        default=None, description="grit-hf: index documents and keep their key/value states (default: on)"
    )


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[TextPart | dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[Any] | None = None


class StreamOptions(_Body):
    include_usage: StrictBool = False


class ResponseFormat(_Body):
    type: StrictStr


class ChatRequest(_Body):
    """`POST /v1/chat/completions`. Extensions: `documents`, `reuse_cache`, `ignore_eos`."""

    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    logit_bias: dict[str, Number] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: ResponseFormat | None = None
    user: StrictStr | None = None
    documents: list[StrictStr] | None = Field(
        default=None, description="grit-hf: ids of indexed documents to put before the last user message"
    )
    reuse_cache: StrictBool = Field(default=True, description="grit-hf: splice cached document states (default)")
    ignore_eos: StrictBool = Field(default=False, description="grit-hf: decode past the end token")


class RerankDocument(_Body):
    text: StrictStr


class RerankRequest(_Body):
    """`POST /v1/rerank` (and `/rerank`), as vLLM, TEI and Infinity serve it for Cohere/Jina clients. Extensions:
    `method` (`likelihood` or `permutation`)."""

    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | RerankDocument] = Field(min_length=1)
    top_n: StrictInt | None = None
    return_documents: StrictBool = True
    method: Literal["likelihood", "permutation"] = Field(
        default="likelihood", description="grit-hf: how the model reranks (see grit_hf.rag.rerank)"
    )


class DocumentIn(_Body):
    id: StrictStr | None = None
    text: StrictStr


class DocumentsRequest(_Body):
    """`POST /v1/documents`: index documents (embed them and keep their key/value states)."""

    documents: list[DocumentIn] = Field(min_length=1)


def encode_embedding(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A float32 vector as a list of floats, or as base64 of its little-endian float32 bytes (what the openai SDK
    decodes with `np.frombuffer(..., dtype="float32")`)."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(result) -> dict[str, Any]:
    """OpenAI's `usage` of a `GenerationResult`; `prompt_tokens_details.recomputed_tokens` (an extension) counts the
    cached positions computed again (selective recomputation)."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": result.cache_read_tokens,
            "recomputed_tokens": result.recomputed_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def chat_completion(request_id: str, model: str, text: str, result, created: int | None = None) -> dict[str, Any]:
    """The `chat.completion` object of a finished `GenerationResult` (`cached_documents` lists the spliced ids)."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "system_fingerprint": None,
        "cached_documents": list(result.doc_ids),
    }


def chat_chunk(
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    result=None,
) -> dict[str, Any]:
    """One `chat.completion.chunk`: a delta (with `finish_reason` on the last one), or with `result` the usage
    chunk (no choices) that `stream_options.include_usage` asks for."""
    chunk: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }
    if result is not None:
        chunk["choices"] = []
        chunk["usage"] = usage(result)
        chunk["cached_documents"] = list(result.doc_ids)
    else:
        chunk["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}]
    return chunk
