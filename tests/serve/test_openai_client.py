"""The official openai client against the server: models, embeddings (float, base64, dimensions, queries, caching),
chat (plain, streamed, stop/seed), cached document states (pasted text and the `documents` extension), the document
index, and errors mapped to the SDK's exception types."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from serve_helpers import API_KEY

from grit_hf.rag import document_id

DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
]
QUESTION = "What is the capital of France?"


def _ask(client, content: str, **kwargs):
    kwargs.setdefault("max_tokens", 8)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kwargs)


def test_models_and_health(server, client):
    path = server.state.rag.model.name_or_path  # started with `--model PATH --served-model-name tiny`
    assert [model.id for model in client.models.list().data] == ["tiny", str(path), Path(path).name]
    assert client.models.retrieve("tiny").owned_by == "grit-hf"
    with pytest.raises(openai.NotFoundError, match="serves 'tiny'"):
        client.models.retrieve("gpt-4o")
    assert httpx.get(server.base_url + "/health").json()["status"] == "ok"


def test_embeddings_float_and_base64_are_the_documents_embeddings(server, client):
    rag = server.state.rag
    as_float = client.embeddings.create(model="tiny", input=DOCS[:2], encoding_format="float")
    as_base64 = client.embeddings.create(model="tiny", input=DOCS[:2])  # the SDK asks for base64 and decodes it
    first = np.array([item.embedding for item in as_float.data], dtype=np.float32)
    second = np.array([item.embedding for item in as_base64.data], dtype=np.float32)
    assert np.array_equal(first, second)
    expected = rag.embed(DOCS[:2], instruction="").numpy()
    assert np.allclose(first, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    assert [item.index for item in as_float.data] == [0, 1]
    tokens = sum(len(rag.tokenizer(doc, add_special_tokens=False)["input_ids"]) for doc in DOCS[:2])
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == tokens
    single = client.embeddings.create(model="tiny", input=DOCS[0], encoding_format="float")
    assert np.allclose(single.data[0].embedding, first[0], atol=1e-6)


def test_dimensions_truncate_and_renormalise(client):
    full = np.array(client.embeddings.create(model="tiny", input=DOCS[2]).data[0].embedding)
    for encoding in ("float", "base64"):
        cut = client.embeddings.create(model="tiny", input=DOCS[2], dimensions=16, encoding_format=encoding)
        raw = cut.data[0].embedding  # the SDK hands back the base64 text when it was asked for explicitly
        vector = np.frombuffer(base64.b64decode(raw), "<f4") if encoding == "base64" else np.array(raw)
        assert vector.shape == (16,) and np.allclose(vector, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="tiny", input="x", dimensions=10_000)


def test_queries_use_the_instruction_and_are_not_cached(server, client):
    rag = server.state.rag
    before = rag.doc_ids
    query = "Which city is the capital of France, please?"
    default = client.embeddings.create(model="tiny", input=[query], extra_body={"input_type": "query"})
    assert np.allclose(default.data[0].embedding, rag.embed([query]).numpy()[0], atol=1e-5)
    custom = client.embeddings.create(model="tiny", input=[query], extra_body={"instruction": "Find the city"})
    assert np.allclose(custom.data[0].embedding, rag.embed([query], instruction="Find the city").numpy()[0], atol=1e-5)
    uncached = client.embeddings.create(
        model="tiny", input=["A text that nobody indexes."], extra_body={"cache": False}
    )
    assert len(uncached.data) == 1
    assert rag.doc_ids == before
    with pytest.raises(openai.BadRequestError, match="never cached"):
        client.embeddings.create(model="tiny", input=[query], extra_body={"input_type": "query", "cache": True})


def test_embedded_documents_are_reused_when_pasted_into_a_chat(server, client):
    rag = server.state.rag
    client.embeddings.create(model="tiny", input=DOCS)
    doc_id = document_id(DOCS[0])
    assert doc_id in rag.doc_ids and doc_id in rag.store
    prompt = f"Context:\n{DOCS[0]}\n\nQuestion: {QUESTION}"
    cached = _ask(client, prompt)
    details = cached.usage.prompt_tokens_details
    assert details.cached_tokens > 0 and cached.usage.prompt_tokens > details.cached_tokens
    assert cached.model_extra["cached_documents"] == [doc_id]
    plain = _ask(client, prompt, extra_body={"reuse_cache": False})
    assert plain.usage.prompt_tokens_details.cached_tokens == 0 and plain.model_extra["cached_documents"] == []
    # the server answers exactly as the engine does on the same prompt
    direct = rag.generate([{"role": "user", "content": prompt}], max_new_tokens=8)
    assert cached.choices[0].message.content == direct.text
    assert cached.usage.prompt_tokens == direct.prompt_tokens
    assert details.cached_tokens == direct.cache_read_tokens
    assert cached.usage.completion_tokens == direct.completion_tokens


def test_streaming_matches_the_plain_answer(server, client):
    plain = _ask(client, QUESTION, max_tokens=12)
    stream = _ask(client, QUESTION, max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(chunk.usage is None for chunk in chunks[:-1])
    without_usage = list(_ask(client, QUESTION, max_tokens=12, stream=True))
    assert all(chunk.usage is None for chunk in without_usage) and without_usage[-1].choices
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        headers=server.headers(),
        json={"model": "tiny", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "stream": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in events)


def test_stop_seed_and_sampling(client):
    greedy = _ask(client, QUESTION, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].message.content
    assert len(greedy) > 4
    stop = greedy[2:4]
    cut = _ask(client, QUESTION, max_tokens=16, stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content
    assert greedy.startswith(cut.choices[0].message.content)
    sampled = [
        _ask(client, QUESTION, max_tokens=16, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_documents_extension_and_index(server, client):
    headers = server.headers()
    url = server.base_url + "/v1/documents"
    added = httpx.post(url, headers=headers, json={"documents": [{"id": "paris", "text": DOCS[0]}, {"text": DOCS[1]}]})
    assert added.status_code == 200, added.text
    assert [d["id"] for d in added.json()["data"]] == ["paris", document_id(DOCS[1])]
    listed = httpx.get(url, headers=headers, params={"limit": 10_000}).json()
    paris = next(d for d in listed["data"] if d["id"] == "paris")
    assert paris["source"] == "documents" and paris["states_cached"] and not listed["has_more"]
    assert httpx.get(url + "/paris", headers=headers).json()["text"] == DOCS[0]

    by_id = _ask(client, QUESTION, extra_body={"documents": ["paris"]})
    assert by_id.model_extra["cached_documents"] == ["paris"]
    assert by_id.usage.prompt_tokens_details.cached_tokens > 0
    pasted = _ask(client, f"{DOCS[0]}\n\n{QUESTION}")  # what the extension sends the model
    assert by_id.choices[0].message.content == pasted.choices[0].message.content
    assert by_id.usage.prompt_tokens == pasted.usage.prompt_tokens

    deleted = httpx.delete(url + "/paris", headers=headers).json()
    assert deleted == {"id": "paris", "object": "document.deleted", "deleted": True}
    assert "paris" not in server.state.rag.doc_ids and "paris" not in server.state.rag.store
    assert httpx.get(url + "/paris", headers=headers).status_code == 404
    assert httpx.delete(url + "/paris", headers=headers).status_code == 404
    with pytest.raises(openai.NotFoundError, match="paris"):
        _ask(client, QUESTION, extra_body={"documents": ["paris"]})


def test_errors_are_openai_exceptions(server, client):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert error.value.code == "model_not_found" and error.value.param == "model"
    with pytest.raises(openai.BadRequestError, match="512"):
        _ask(client, "hi", max_tokens=513)
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        _ask(client, "hi", temperature="hot")
    with pytest.raises(openai.BadRequestError, match="tools"):
        _ask(client, "hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError, match="`n`"):
        _ask(client, "hi", n=2)
    with pytest.raises(openai.BadRequestError, match="token ids"):
        client.embeddings.create(model="tiny", input=[[1, 2, 3]])
    with pytest.raises(openai.AuthenticationError):
        server.openai(api_key="wrong").models.list()
    assert API_KEY != "wrong"


def test_metrics_count_requests_tokens_and_cached_tokens(server, client, metrics):
    client.embeddings.create(model="tiny", input=DOCS[2])
    _ask(client, f"Context:\n{DOCS[2]}\n\nQuestion: {QUESTION}")
    values = metrics()
    assert values['grit_hf_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"}'] >= 1
    assert values["grit_hf_cached_tokens_total"] > 0 and values["grit_hf_completion_tokens_total"] > 0
    assert values['grit_hf_prompt_tokens_total{endpoint="/v1/embeddings"}'] > 0
    assert values['grit_hf_request_duration_seconds_count{endpoint="/v1/embeddings"}'] >= 1
    assert values["grit_hf_time_to_first_token_seconds_count"] >= 1
    assert values["grit_hf_embedding_batch_size_count"] >= 1
    assert values["grit_hf_indexed_documents"] >= 1 and values["grit_hf_kv_store_bytes"] > 0
