"""`POST /v1/rerank` (also `/rerank`): the documents of a request ranked for its query by the served model
(`grit_hf.rag.rerank`), in the shape vLLM, TEI and Infinity serve for Cohere/Jina clients:
`{model, query, documents, top_n, return_documents}` -> `{id, model, results: [{index, relevance_score, document?}],
usage}`, best first.

A document already indexed (through `/v1/documents` or `/v1/embeddings`) is scored from its cached states: only the
instruction and the query are run for it. Any other document is read as text and not indexed. Extension: `method`
(`likelihood`, the default, or `permutation`, the paper's listwise prompt).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..rag.rerank import Reranker
from .errors import APIError
from .limits import check_count, check_request_text, check_tokens
from .schemas import RerankRequest, new_id
from .state import get_state

__all__ = ["router"]

router = APIRouter()

ENDPOINT = "/v1/rerank"


@router.post(ENDPOINT)
@router.post("/rerank")
async def rerank(body: RerankRequest, request: Request) -> JSONResponse:
    state = get_state(request)
    deadline = state.deadline()
    state.check_model(body.model)
    texts = [item if isinstance(item, str) else item.text for item in body.documents]
    check_count(len(texts), state.limits.max_inputs, "documents", "documents")
    check_request_text(body.query, "query")
    for index, text in enumerate(texts):
        check_request_text(text, f"documents[{index}]")
    top_n = len(texts) if body.top_n is None else body.top_n
    if top_n < 1:
        raise APIError(400, f"`top_n` must be at least 1, got {top_n}.", "top_n")
    counts = await state.in_thread(state.count_tokens, [body.query, *texts])
    check_tokens(counts[:1], state.limits.max_input_tokens, "query")
    check_tokens(counts[1:], state.limits.max_input_tokens, "documents")
    reranker = Reranker(body.method)
    try:
        scores = await state.before(deadline, state.in_thread(state.rag.rerank, body.query, None, texts, reranker))
    except (ValueError, TypeError) as error:
        raise APIError(400, str(error), "documents") from None
    order = sorted(range(len(texts)), key=lambda index: -scores[index])[:top_n]
    results = []
    for index in order:
        result = {"index": index, "relevance_score": scores[index]}
        if body.return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    tokens = sum(counts)
    state.metrics.prompt_tokens.labels(ENDPOINT).inc(tokens)
    return JSONResponse(
        {
            "id": new_id("rerank"),
            "object": "list",
            "model": state.settings.model_name,
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
