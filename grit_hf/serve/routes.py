"""The small endpoints: `GET /health`, `GET /metrics`, `GET /v1/models[/{id}]` and the document index
(`POST /v1/documents` to index, `GET /v1/documents[/{id}]` to list or read, `DELETE /v1/documents/{id}`)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from .errors import APIError
from .ids import ID_CONVERTOR, path_id
from .limits import check_count, check_request_text, check_tokens
from .metrics import CONTENT_TYPE_LATEST
from .schemas import DocumentsRequest
from .state import get_state

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    state = get_state(request)
    return {"status": "ok", "model": state.settings.model_name}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _model(request: Request, name: str) -> dict:
    return {"id": name, "object": "model", "created": get_state(request).created, "owned_by": "grit-hf"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model(request, name) for name in get_state(request).model_names]}


@router.get(f"/v1/models/{{model_id:{ID_CONVERTOR}}}")
async def get_model(request: Request) -> dict:
    model_id = path_id(request, "model_id")
    get_state(request).check_model(model_id)
    return _model(request, model_id)


@router.post("/v1/documents")
async def add_documents(body: DocumentsRequest, request: Request) -> JSONResponse:
    """Index documents (embed them and keep their states); they stay until deleted."""
    state = get_state(request)
    check_count(len(body.documents), state.limits.max_inputs, "documents", "documents")
    texts = [document.text for document in body.documents]
    for index, text in enumerate(texts):
        check_request_text(text, f"documents[{index}].text")
    counts = await state.in_thread(state.count_tokens, texts)
    check_tokens(counts, state.limits.max_input_tokens, "documents")
    await state.in_thread(state.check_fits, texts, "", "documents")
    try:
        ids = await state.in_thread(state.documents.add, texts, [document.id for document in body.documents])
    except ValueError as error:  # e.g. a lone surrogate
        raise APIError(400, str(error), "documents") from None
    state.metrics.prompt_tokens.labels("/v1/documents").inc(sum(counts))
    data = [state.documents.describe(doc_id) for doc_id in ids]
    return JSONResponse({"object": "list", "data": data, "usage": {"prompt_tokens": sum(counts)}})


@router.get("/v1/documents")
async def list_documents(
    request: Request, limit: int = Query(default=1000, ge=1, le=10_000), after: str | None = None
) -> dict:
    return get_state(request).documents.list(limit, after)


@router.get(f"/v1/documents/{{doc_id:{ID_CONVERTOR}}}")
async def get_document(request: Request) -> dict:
    doc_id = path_id(request, "doc_id")
    documents = get_state(request).documents
    documents.check_known([doc_id], "id")
    return documents.describe(doc_id, with_text=True)


@router.delete(f"/v1/documents/{{doc_id:{ID_CONVERTOR}}}")
async def delete_document(request: Request) -> dict:
    doc_id = path_id(request, "doc_id")
    state = get_state(request)
    return await state.in_thread(state.documents.delete, doc_id)
