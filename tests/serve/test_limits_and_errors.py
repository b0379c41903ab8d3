"""Authentication, every limit (body size, inputs, tokens per input, max_tokens, prompt tokens, concurrent
generations, embedding queue, index size, request and body timeouts), malformed JSON, wrong types and unsupported
requests: each answered with its status and OpenAI's error JSON, never a traceback."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import quote

import httpx
import openai
import pytest
from serve_helpers import API_KEY, slow_generation

CHAT = "/v1/chat/completions"


def _post(target, path: str, body=None, **kwargs) -> httpx.Response:
    headers = {**target.headers(), **kwargs.pop("headers", {})}
    if body is not None:
        kwargs["json"] = body
    return httpx.post(target.base_url + path, headers=headers, timeout=30, **kwargs)


def _error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def _chat_body(content: str = "hi", **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


# -- authentication --------------------------------------------------------------------------------------------------
def test_api_key_is_required_everywhere_but_health(server, open_server):
    base = server.base_url
    assert httpx.get(base + "/health").status_code == 200
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/embeddings"), ("POST", CHAT)):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            response = httpx.request(method, base + path, headers=headers, json={})
            _error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(base + "/v1/models", headers={"Authorization": f"bearer {API_KEY}"}).status_code == 200
    assert httpx.get(base + "/v1/nowhere", headers={}).status_code == 401  # nothing is revealed without the key
    assert httpx.get(open_server.base_url + "/v1/models").status_code == 200  # no key configured: open
    with pytest.raises(openai.AuthenticationError):
        server.openai(api_key="wrong").embeddings.create(model="tiny", input="x")


# -- limits ----------------------------------------------------------------------------------------------------------
def test_body_size(server):
    big = {"model": "tiny", "input": "word " * 20_000}
    _error(_post(server, "/v1/embeddings", big), 413, "request_too_large")

    def chunks():
        for _ in range(20):
            yield b" " * 8192  # whitespace: valid JSON padding, sent without a Content-Length

    _error(_post(server, "/v1/embeddings", content=chunks()), 413, "request_too_large")
    with pytest.raises(openai.APIStatusError) as error:
        server.openai().embeddings.create(model="tiny", input=["word " * 20_000])
    assert error.value.status_code == 413


def test_inputs_and_tokens_per_input(server, client):
    _error(_post(server, "/v1/embeddings", {"input": ["a text"] * 9}), 400, "too_many", "input")
    long = "lorem ipsum dolor sit amet " * 40
    _error(_post(server, "/v1/embeddings", {"input": ["short", long]}), 400, "context_length_exceeded", "input[1]")
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        client.embeddings.create(model="tiny", input=long)
    _error(_post(server, "/v1/documents", {"documents": [{"text": long}]}), 400, "context_length_exceeded")
    _error(_post(server, "/v1/documents", {"documents": [{"text": "x"}] * 9}), 400, "too_many")
    _error(_post(server, CHAT, _chat_body(documents=["a"] * 9)), 400, "too_many", "documents")


def test_max_tokens_and_prompt_tokens(server):
    _error(_post(server, CHAT, _chat_body(max_tokens=513)), 400, "too_many", "max_tokens")
    body = _chat_body(max_completion_tokens=600)
    _error(_post(server, CHAT, body), 400, "too_many", "max_completion_tokens")
    _error(_post(server, CHAT, _chat_body(max_tokens=0)), 400, param="max_tokens")
    _error(_post(server, CHAT, _chat_body("lorem ipsum " * 400)), 400, "context_length_exceeded", "messages")
    default = _post(server, CHAT, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).json()
    assert default["usage"]["completion_tokens"] <= 512


def test_concurrent_generations_beyond_the_limit_get_429(open_server, monkeypatch):
    slow_generation(monkeypatch, open_server, delay=0.05)
    client = open_server.openai()
    stream = client.chat.completions.create(**_chat_body(max_tokens=200), stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    with pytest.raises(openai.RateLimitError, match="concurrent generations") as error:
        client.chat.completions.create(**_chat_body())
    assert error.value.response.headers["retry-after"] == "1"
    stream.close()
    deadline = time.monotonic() + 5
    while open_server.state.slots.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.chat.completions.create(**_chat_body()).choices[0].message.content is not None


def test_a_full_embedding_queue_gets_429(open_server, monkeypatch):
    batcher = open_server.state.batcher
    real = batcher.embed_fn
    running, release = threading.Event(), threading.Event()

    def blocking_once(key, texts):
        if not running.is_set():
            running.set()
            release.wait(5)
        return real(key, texts)

    monkeypatch.setattr(batcher, "embed_fn", blocking_once)

    def embed(texts: list[str], results: list) -> None:
        results.append(_post(open_server, "/v1/embeddings", {"input": texts, "cache": False}))

    results: list[httpx.Response] = []
    threads = [threading.Thread(target=embed, args=(["the first batch"], results))]
    threads[0].start()
    assert running.wait(5)  # the worker is busy: what comes next waits in the queue
    for i in range(4):
        threads.append(threading.Thread(target=embed, args=([f"text {i} {j}" for j in range(4)], results)))
        threads[-1].start()
    deadline = time.monotonic() + 1.5
    while batcher.queued < 16 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert batcher.queued == 16  # the queue's limit
    _error(_post(open_server, "/v1/embeddings", {"input": ["one text too many"], "cache": False}), 429, "queue_full")
    release.set()
    for thread in threads:
        thread.join()
    assert [response.status_code for response in results] == [200] * 5


def test_the_index_keeps_at_most_max_documents(open_server):
    rag = open_server.state.rag
    texts = [f"Automatic document number {i} about nothing in particular." for i in range(6)]
    for chunk in (texts[:3], texts[3:]):
        assert _post(open_server, "/v1/embeddings", {"input": chunk}).status_code == 200
    assert len(rag.doc_ids) == 4  # the two oldest automatic documents made room
    pinned = [{"id": f"pinned-{i}", "text": f"Pinned document {i}, kept until deleted."} for i in range(2)]
    assert _post(open_server, "/v1/documents", {"documents": pinned}).status_code == 200
    assert _post(open_server, "/v1/embeddings", {"input": texts[:3]}).status_code == 200
    assert {"pinned-0", "pinned-1"} <= set(rag.doc_ids) and len(rag.doc_ids) == 4
    more = [{"id": f"more-{i}", "text": f"One more pinned document {i}."} for i in range(3)]
    _error(_post(open_server, "/v1/documents", {"documents": more}), 400, "index_full")
    for item in pinned:
        httpx.delete(f"{open_server.base_url}/v1/documents/{item['id']}")


def test_request_timeouts(open_server, monkeypatch):
    slow_generation(monkeypatch, open_server, delay=0.05)
    body = _chat_body(max_tokens=1000, ignore_eos=True)
    started = time.monotonic()
    _error(_post(open_server, CHAT, body), 504, "timeout")
    assert 1.5 < time.monotonic() - started < 10
    with httpx.stream("POST", open_server.base_url + CHAT, json={**body, "stream": True}, timeout=30) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line]
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "timeout"
    with pytest.raises(openai.APIError, match="longer than"):  # the SDK raises on the error event
        chat = {key: value for key, value in body.items() if key != "ignore_eos"}
        list(open_server.openai().chat.completions.create(**chat, stream=True, extra_body={"ignore_eos": True}))

    batcher = open_server.state.batcher
    real = batcher.embed_fn
    monkeypatch.setattr(batcher, "embed_fn", lambda key, texts: (time.sleep(3), real(key, texts))[1])
    _error(_post(open_server, "/v1/embeddings", {"input": "late"}), 504, "timeout")


def test_a_body_that_does_not_arrive_in_time_gets_408(open_server):
    with socket.create_connection(("127.0.0.1", open_server.port), timeout=10) as sock:
        head = (
            "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"input": ')
        reply = b""
        while b'"code"' not in reply and (part := sock.recv(4096)):
            reply += part
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408") and '"request_timeout"' in reply


# -- malformed requests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, status, param",
    [
        (b'{"model": "tiny", "input": ', 400, None),
        (b"not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": "tiny"}', 422, "input"),
        (b'{"input": 3}', 422, "input"),
        (b'{"input": ["a", 1]}', 422, "input[1]"),
        (b'{"input": "a", "encoding_format": "binary"}', 422, "encoding_format"),
        (b'{"input": "a", "dimensions": "8"}', 422, "dimensions"),
        (b'{"input": "a", "cache": "yes"}', 422, "cache"),
        (b'{"input": []}', 400, "input"),
        (b'{"input": ""}', 400, "input"),
        (b'{"input": "\\ud800 lone surrogate"}', 400, "input"),
        (b'{"input": "a", "model": "other"}', 404, "model"),
        (b'{"input": "a", "instruction": ""}', 400, "instruction"),
    ],
)
def test_malformed_embedding_requests(server, body, status, param):
    response = _post(server, "/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    _error(response, status, param=param)


@pytest.mark.parametrize(
    "changes, status, param",
    [
        ({"messages": "hi"}, 422, "messages"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"content": "hi"}]}, 422, "messages[0].role"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, 422, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, 400, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, None),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}, 400, "messages[0]"),
        ({"max_tokens": "4"}, 422, "max_tokens"),
        ({"max_tokens": 1.5}, 422, "max_tokens"),
        ({"temperature": -1}, 400, "temperature"),
        ({"temperature": 3}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"stream": "yes"}, 422, "stream"),
        ({"stop": [""]}, 400, "stop"),
        ({"seed": -1}, 400, "seed"),
        ({"documents": "paris"}, 422, "documents"),
        ({"response_format": {"type": "json_object"}}, 400, "response_format"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"presence_penalty": 0.5}, 400, "presence_penalty"),
    ],
)
def test_malformed_chat_requests(server, changes, status, param):
    body = json.dumps({**_chat_body(), **changes}).encode()
    response = _post(server, CHAT, content=body, headers={"Content-Type": "application/json"})
    _error(response, status, param=param)


def test_unknown_routes_methods_and_content_types(server):
    _error(httpx.get(server.base_url + "/v1/completions", headers=server.headers()), 404, "unknown_url")
    _error(httpx.get(server.base_url + CHAT, headers=server.headers()), 405, "method_not_allowed")
    response = _post(server, "/v1/embeddings", content=b'{"input": "a"}', headers={"Content-Type": "text/plain"})
    _error(response, 400, "invalid_json")
    ignored = _post(server, "/v1/embeddings", {"input": "a", "user": "u1", "something_new": 1})
    assert ignored.status_code == 200


def test_nothing_in_a_request_names_a_file(server, tmp_path):
    """The model is fixed at start (a path is just an unknown model name); document ids are opaque keys."""
    for name in ("/etc/passwd", str(tmp_path), "../default"):
        _error(_post(server, "/v1/embeddings", {"model": name, "input": "a"}), 404, "model_not_found")
    doc_id = "../../../tmp/not-a-file"
    added = _post(server, "/v1/documents", {"documents": [{"id": doc_id, "text": "A document with an odd id."}]})
    assert added.status_code == 200 and added.json()["data"][0]["id"] == doc_id
    url = f"{server.base_url}/v1/documents/{quote(doc_id, safe='')}"  # clients encode odd ids
    assert httpx.get(url, headers=server.headers()).json()["id"] == doc_id
    assert httpx.delete(url, headers=server.headers()).json()["deleted"] is True
    assert not (tmp_path / "not-a-file").exists()
