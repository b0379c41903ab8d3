"""Property-based checks at the HTTP layer (hypothesis over request bodies): whatever a client sends to any endpoint,
the answer is a 2xx with a valid body or a 4xx in OpenAI's error format; never a 500, a hang or a traceback in the log.

Bodies are drawn field by field: each field of an endpoint is left out, given a value of its type (at, inside and
past every limit of the server: `SMALL_LIMITS`), or given any JSON value (nested, huge and negative numbers, NaN and
infinities, unicode with lone surrogates escaped as JSON allows); unknown fields are added now and then. They are
sent as raw bytes, so that what `json.dumps` would refuse (NaN, lone surrogates) still reaches the server.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import log_records

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
LIMITS = {"max_inputs": 8, "max_input_tokens": 64, "max_tokens": 512}  # SMALL_LIMITS of serve_helpers

SURROGATES = st.sampled_from(["\ud800", "\udfff", "\ud83d"])
TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=8), SURROGATES, st.text(max_size=8)),
    st.just(""),
    st.just("word " * 80),  # past max_input_tokens
)
NUMBER = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, *(v + d for v in LIMITS.values() for d in (-1, 0, 1))]),
    st.floats(allow_nan=True, allow_infinity=True),
)
ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBER, TEXT),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)),
    max_leaves=12,
)


def _field(typed) -> st.SearchStrategy:
    """A field's value: absent (`_ABSENT`), of its type (most often), or any JSON value."""
    return st.one_of(st.just(_ABSENT), typed, typed, typed, ANY_JSON)


_ABSENT = object()
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "bogus"]), "content": TEXT}
)
FIELDS = {
    "/v1/embeddings": {
        "model": _field(st.sampled_from(["tiny", "other"])),
        "input": _field(st.one_of(TEXT, st.lists(TEXT, max_size=10), st.lists(st.integers(0, 500), max_size=5))),
        "encoding_format": _field(st.sampled_from(["float", "base64", "bogus"])),
        "dimensions": _field(st.integers(-2, 100)),
        "input_type": _field(st.sampled_from(["query", "document", "bogus"])),
        "instruction": _field(TEXT),
        "cache": _field(st.booleans()),
        "user": _field(TEXT),
    },
    "/v1/chat/completions": {
        "model": _field(st.sampled_from(["tiny", "other"])),
        "messages": _field(st.lists(MESSAGE, max_size=3)),
        "max_tokens": _field(st.integers(-2, 520)),
        "max_completion_tokens": _field(st.integers(-2, 520)),
        "temperature": _field(st.one_of(st.floats(-1, 3), st.just(float("nan")))),
        "top_p": _field(st.one_of(st.floats(-0.5, 1.5), st.just(float("nan")))),
        "stop": _field(st.one_of(TEXT, st.lists(TEXT, max_size=5))),
        "seed": _field(NUMBER),
        "n": _field(st.integers(-1, 3)),
        "stream": _field(st.booleans()),
        "documents": _field(st.lists(TEXT, max_size=3)),
        "reuse_cache": _field(st.booleans()),
        "ignore_eos": _field(st.booleans()),
    },
    "/v1/documents": {
        "documents": _field(st.lists(st.fixed_dictionaries({"text": _field(TEXT), "id": _field(TEXT)}), max_size=10)),
    },
}
EXTRA = st.dictionaries(st.text(min_size=1, max_size=10), ANY_JSON, max_size=2)
VALID = {
    "/v1/embeddings": {"model": "tiny", "input": ["Paris is in France.", "hello"]},
    "/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    "/v1/documents": {"documents": [{"text": "Paris is the capital of France."}]},
}


def _fields(path: str) -> st.SearchStrategy:
    """Every field drawn, or (three times as often) a valid body with one field drawn, so that draws also get past
    validation under every hypothesis version's choices."""
    drawn = st.fixed_dictionaries(FIELDS[path])
    one = st.sampled_from(sorted(FIELDS[path])).flatmap(
        lambda name: FIELDS[path][name].map(lambda value: {**VALID[path], name: value})
    )
    return st.one_of(drawn, one, one, one)


def _body(fields: dict, extra: dict) -> bytes:
    body = {name: value for name, value in fields.items() if value is not _ABSENT}
    body.update({k: v for k, v in extra.items() if k not in FIELDS["/v1/chat/completions"]})
    if isinstance(body.get("documents"), list):  # nested absent fields
        body["documents"] = [
            {k: v for k, v in d.items() if v is not _ABSENT} if isinstance(d, dict) else d for d in body["documents"]
        ]
    if "max_tokens" in body and isinstance(body["max_tokens"], int) and body.get("stream"):
        body["max_tokens"] = min(body["max_tokens"], 16)  # keep streamed runs short; limits are tested unstreamed
    return json.dumps(body, allow_nan=True).encode()  # NaN and escaped lone surrogates go through as sent


@pytest.fixture(scope="module")
def server_errors():
    """ERROR records of the server's loggers (a 500 is logged with its traceback)."""
    with log_records(logging.ERROR) as records:
        yield records


SUCCEEDED: dict[str, int] = {}  # 2xx answers by endpoint, so that the last test can check some requests were valid


def _check(response: httpx.Response, errors: list) -> dict | None:
    assert 200 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text
    assert not errors, [r.getMessage() for r in errors]
    if response.status_code < 400:
        SUCCEEDED[response.request.url.path] = SUCCEEDED.get(response.request.url.path, 0) + 1
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
        return None
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines and (lines[-1] == "data: [DONE]" or "error" in json.loads(lines[-1][6:]))
        return None
    return response.json()


def _post(server, path: str, content: bytes) -> httpx.Response:
    headers = {**server.headers(), "Content-Type": "application/json"}
    return httpx.post(server.base_url + path, content=content, headers=headers, timeout=60)


@SETTINGS
@given(fields=_fields("/v1/embeddings"), extra=st.one_of(st.just({}), EXTRA))
def test_embeddings(server, server_errors, fields, extra):
    data = _check(_post(server, "/v1/embeddings", _body(fields, extra)), server_errors)
    if data is not None:
        inputs = fields["input"]
        assert len(data["data"]) == (1 if isinstance(inputs, str) else len(inputs))
        assert all(isinstance(item["embedding"], (list, str)) for item in data["data"])
        assert data["usage"]["prompt_tokens"] <= LIMITS["max_input_tokens"] * LIMITS["max_inputs"]


@SETTINGS
@given(fields=_fields("/v1/chat/completions"), extra=st.one_of(st.just({}), EXTRA))
def test_chat_completions(server, server_errors, fields, extra):
    data = _check(_post(server, "/v1/chat/completions", _body(fields, extra)), server_errors)
    if data is not None:
        choice = data["choices"][0]
        assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
        assert data["usage"]["completion_tokens"] <= LIMITS["max_tokens"]


@SETTINGS
@given(fields=_fields("/v1/documents"), extra=st.one_of(st.just({}), EXTRA))
def test_documents(server, server_errors, fields, extra):
    data = _check(_post(server, "/v1/documents", _body(fields, extra)), server_errors)
    if data is not None:
        ids = [item["id"] for item in data["data"]]
        assert len(ids) == len(fields["documents"])
        for doc_id in ids:
            response = httpx.delete(f"{server.base_url}/v1/documents/{doc_id}", headers=server.headers(), timeout=30)
            assert response.status_code in (200, 404)


@SETTINGS
@given(
    path=st.one_of(TEXT, st.text(alphabet="/%.?#&=", max_size=6)),
    limit=st.one_of(st.none(), NUMBER.map(lambda v: v if not isinstance(v, float) or math.isfinite(v) else 0)),
    after=st.one_of(st.none(), TEXT),
)
def test_reads_and_deletes(server, server_errors, path, limit, after):
    params = {
        k: str(v).encode("utf-8", "surrogatepass") for k, v in (("limit", limit), ("after", after)) if v is not None
    }
    base, headers = server.base_url, server.headers()
    quoted = urllib.parse.quote_from_bytes(path.encode("utf-8", "surrogatepass"), safe="")
    query = urllib.parse.urlencode(params)
    for response in (
        httpx.get(f"{base}/v1/documents?{query}", headers=headers, timeout=30),
        httpx.get(f"{base}/v1/documents/{quoted}", headers=headers, timeout=30),
        httpx.delete(f"{base}/v1/documents/{quoted}", headers=headers, timeout=30),
        httpx.get(f"{base}/v1/models/{quoted}", headers=headers, timeout=30),
    ):
        _check(response, server_errors)


def test_some_drawn_requests_were_valid():
    """The draws reach past validation: every POST endpoint answered some of them with a 2xx."""
    for path in FIELDS:
        assert SUCCEEDED.get(path, 0) >= 3, SUCCEEDED
