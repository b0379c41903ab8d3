"""`POST /v1/embeddings`: OpenAI's embeddings, micro-batched (`grit_hf.serve.embedding_batcher`).

Which embedding: GRIT embeds documents without an instruction and queries with one, but OpenAI clients send both
through the same request shape. Inputs are therefore embedded as **documents** by default (symmetric similarity,
what OpenAI-style clients expect), and indexed with their key/value states cached, so that a client that embeds
documents and later pastes retrieved ones into a chat gets their states reused with no new API. A client that can
send extra fields marks queries with `input_type: "query"` (the checkpoint's query instruction) or its own
`instruction`; queries are never cached. `cache: false` embeds documents without indexing them, and the server flag
`--no-cache-embeddings` makes that the default.

`encoding_format`: `float` or `base64` (little-endian float32, which the openai SDK asks for and decodes).
`dimensions`: the first `dimensions` components, renormalised to unit length. Token arrays are refused: send text.
"""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..validation import check_text
from .errors import APIError
from .limits import check_count, check_request_text, check_tokens
from .schemas import EmbeddingRequest, encode_embedding
from .state import ServerState, get_state

__all__ = ["router", "embedding_key", "truncate"]

router = APIRouter()

ENDPOINT = "/v1/embeddings"


def _texts(body: EmbeddingRequest) -> list[str]:
    raw = body.input
    texts = [raw] if isinstance(raw, str) else list(raw)
    if not texts:
        raise APIError(400, "`input` is empty: send a string or a non-empty list of strings.", "input")
    if any(not isinstance(item, str) for item in texts):
        raise APIError(
            400,
            "`input` holds token ids: this server embeds text only (the model's templates are added to the text). "
            "Send a string or a list of strings.",
            "input",
            "token_input_unsupported",
        )
    for index, text in enumerate(texts):
        check_request_text(text, f"input[{index}]" if not isinstance(raw, str) else "input")
    return texts


def embedding_key(state: ServerState, body: EmbeddingRequest) -> tuple[str, object]:
    """`("document", cache)` or `("query", instruction)` from `input_type`, `instruction` and `cache`."""
    if body.instruction is not None:
        if body.input_type == "document":
            raise APIError(400, "`instruction` is for queries, but `input_type` is 'document'.", "instruction")
        if not body.instruction.strip():
            raise APIError(400, "`instruction` is empty: leave it out to embed documents.", "instruction")
        try:
            check_text(body.instruction, "instruction")
        except ValueError as error:
            raise APIError(400, str(error), "instruction") from None
        instruction = body.instruction
    elif body.input_type == "query":
        instruction = state.rag.query_instruction
    else:
        return ("document", state.settings.cache_embeddings if body.cache is None else body.cache)
    if body.cache:
        raise APIError(400, "Queries are never cached: leave out `cache` or embed documents.", "cache")
    return ("query", instruction)


def truncate(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first `dimensions` components of each row, renormalised to unit length."""
    cut = vectors[:, :dimensions].astype(np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)


@router.post(ENDPOINT)
async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    state = get_state(request)
    deadline = state.deadline()
    state.check_model(body.model)
    texts = _texts(body)
    check_count(len(texts), state.limits.max_inputs, "input", "texts")
    if body.dimensions is not None and not 1 <= body.dimensions <= state.dimension:
        raise APIError(400, f"`dimensions` must be in [1, {state.dimension}], got {body.dimensions}.", "dimensions")
    key = embedding_key(state, body)
    counts = await state.in_thread(state.count_tokens, texts)
    check_tokens(counts, state.limits.max_input_tokens, "input")
    await state.in_thread(state.check_fits, texts, "" if key[0] == "document" else key[1], "input")
    future = asyncio.wrap_future(state.batcher.submit(key, texts))
    try:
        vectors = await state.before(deadline, future)
    except (ValueError, TypeError) as error:
        raise APIError(400, str(error), "input") from None
    if body.dimensions is not None:
        vectors = truncate(vectors, body.dimensions)
    tokens = sum(counts)
    state.metrics.prompt_tokens.labels(ENDPOINT).inc(tokens)
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": encode_embedding(vector, body.encoding_format)}
                for index, vector in enumerate(vectors)
            ],
            "model": state.settings.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
