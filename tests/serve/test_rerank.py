"""`POST /v1/rerank` and `/rerank` over real HTTP (httpx): the Cohere/Jina/vLLM/TEI shape, the same scores as the
model computes from text, indexed documents read from their cached states, and limits, errors and authentication as
on the other endpoints."""

from __future__ import annotations

import httpx
import pytest

from grit_hf.rag.index import DocumentIndex

DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
]
QUERY = "What is the capital of France?"


def _post(server, path: str, body: dict, **kwargs) -> httpx.Response:
    headers = {**server.headers(), **kwargs.pop("headers", {})}
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=60, **kwargs)


def _error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize("method", ["likelihood", "permutation"])
def test_rerank_returns_the_models_ranking_in_the_cohere_shape(server, method):
    body = {"model": "tiny", "query": QUERY, "documents": DOCS, "top_n": 2, "method": method}
    response = _post(server, "/v1/rerank", body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"id", "object", "model", "results", "usage"} and data["model"] == "tiny"
    # the model's scores read from text (the server's model is bf16: cached states round differently, hence rel 1e-3)
    expected = server.state.rag.rerank(QUERY, texts=DOCS, method=method, reuse_cache=False)
    results = data["results"]
    assert len(results) == 2 and [r["relevance_score"] for r in results] == sorted(
        (r["relevance_score"] for r in results), reverse=True
    )
    for result in results:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], rel=1e-3)
        assert result["document"]["text"] == DOCS[result["index"]]
    order = [r["index"] for r in results]
    tokens = sum(len(server.state.rag.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in [QUERY, *DOCS])
    assert data["usage"]["total_tokens"] == tokens
    alias = _post(server, "/rerank", {**body, "documents": [{"text": d} for d in DOCS], "return_documents": False})
    assert [r["index"] for r in alias.json()["results"]] == order
    assert all("document" not in r for r in alias.json()["results"])


def test_indexed_documents_are_scored_from_their_states(server, monkeypatch):
    assert _post(server, "/v1/documents", {"documents": [{"id": "rerank-paris", "text": DOCS[0]}]}).status_code == 200
    looked_up = []
    real = DocumentIndex.document_states
    monkeypatch.setattr(
        DocumentIndex, "document_states", lambda self, doc_id: looked_up.append(doc_id) or real(self, doc_id)
    )
    unseen = "An unindexed passage about the rivers of South America and their basins."
    response = _post(server, "/v1/rerank", {"query": QUERY, "documents": [DOCS[0], unseen]})
    assert response.status_code == 200 and len(response.json()["results"]) == 2
    assert looked_up == ["rerank-paris"]  # the indexed one from its states, the other read as text
    assert httpx.delete(server.base_url + "/v1/documents/rerank-paris", headers=server.headers()).status_code == 200


def test_rerank_limits_errors_and_authentication(server):
    _error(_post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS}, headers={"Authorization": "x"}), 401)
    _error(_post(server, "/v1/rerank", {"model": "gpt-4o", "query": QUERY, "documents": DOCS}), 404)
    _error(_post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": 0}), 400, "top_n")
    _error(_post(server, "/v1/rerank", {"query": "", "documents": DOCS}), 400, "query")
    _error(_post(server, "/v1/rerank", {"query": QUERY, "documents": ["ok", ""]}), 400, "documents[1]")
    _error(_post(server, "/v1/rerank", {"query": QUERY, "documents": ["d"] * 9}), 400, "documents")  # 8 at most
    _error(_post(server, "/v1/rerank", {"query": QUERY, "documents": ["word " * 200]}), 400)  # 64 tokens at most
    for bad, param in (({"documents": DOCS}, "query"), ({"query": QUERY, "documents": []}, "documents"),
                       ({"query": 3, "documents": DOCS}, "query"),
                       ({"query": QUERY, "documents": DOCS, "method": "bm25"}, "method")):  # fmt: skip
        _error(_post(server, "/v1/rerank", bad), 422, param)  # a wrong or missing field, as on every endpoint
