"""Ids in URLs (`GET`/`DELETE /v1/documents/{id}`, `GET /v1/models/{id}`), property-based over real HTTP.

The rule (README, server section): an id is a non-empty string of Unicode characters (no lone surrogates), other than
"." and ".."; `POST /v1/documents` refuses any other with a 400, and every id it accepts round-trips through the URL
as its percent-encoded UTF-8. A path names exactly the id its percent-decoded UTF-8 spells, never another one: a path that is
not valid UTF-8 once decoded is a 400.
"""

from __future__ import annotations

import urllib.parse
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
TEXT = "Ids in URLs must name exactly the document they were given to."

CONTROL = st.characters(categories=["Cc", "Zl", "Zp", "Cf"])  # \n \r \t \x00 \x7f \x85 \u2028 \u200b ...
URL_SPECIAL = st.sampled_from(list("/%?#&=+ .~:;@!$'()*,[]\\\"<>^`{|}") + ["%0A", "%25", "%2F", ".."])
NEWLINES = st.sampled_from(["\n", "\n\n", "\r\n", "\r", "\x85", "\u2028"])
CHARS = st.lists(st.one_of(CONTROL, URL_SPECIAL, st.characters(codec="utf-8")), max_size=8).map("".join)
# final newlines were the router's blind spot; "", "." and ".." are refused (test_post_refuses_an_id_...)
ID = st.one_of(CHARS, st.builds(str.__add__, CHARS, NEWLINES), NEWLINES).filter(lambda i: i not in ("", ".", ".."))
ENCODED = st.sampled_from(
    ["%0A", "%0a", "%0D", "%09", "%00", "%7F", "%C2%85", "%E2%80%A8", "%20", "%2F", "%25", "%2525", "%61", "a", "/"]
)
BROKEN = st.sampled_from(["%FF", "%C3", "%ED%A0%80", "%80", "%C0%AF", "%F4%90%80%80"])  # not UTF-8 once decoded


def _url(server, route: str, path: str) -> str:
    return f"{server.base_url}{route}/{path}"


def _quote(doc_id: str) -> str:
    return urllib.parse.quote(doc_id, safe="")


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@SETTINGS
@given(doc_id=ID)
def test_every_id_that_post_accepts_round_trips_through_the_url(server, doc_id):
    headers = server.headers()
    posted = httpx.post(
        server.base_url + "/v1/documents", json={"documents": [{"text": TEXT, "id": doc_id}]}, headers=headers
    )
    assert posted.status_code == 200, posted.text[:300]
    assert [item["id"] for item in posted.json()["data"]] == [doc_id]
    read = httpx.get(_url(server, "/v1/documents", _quote(doc_id)), headers=headers)
    assert read.status_code == 200, read.text[:300]
    assert (read.json()["id"], read.json()["text"]) == (doc_id, TEXT)
    deleted = httpx.delete(_url(server, "/v1/documents", _quote(doc_id)), headers=headers)
    assert deleted.status_code == 200 and deleted.json()["id"] == doc_id, deleted.text[:300]
    _error(httpx.get(_url(server, "/v1/documents", _quote(doc_id)), headers=headers), 404)


@SETTINGS
@given(
    prefix=st.lists(ENCODED, max_size=2).map("".join), suffix=st.lists(ENCODED, min_size=1, max_size=3).map("".join)
)
def test_a_path_never_names_another_id(server, prefix, suffix):
    """Documents "a" and "tiny" are indexed (and "tiny" is the model's name); a path that adds encoded characters
    around them (`a%0A` is the id "a\n", not "a") names nothing: a 404 on every route, and both stay indexed."""
    headers = server.headers()
    documents = [{"text": TEXT, "id": "a"}, {"text": TEXT + " (2)", "id": "tiny"}]
    assert httpx.post(server.base_url + "/v1/documents", json={"documents": documents}, headers=headers).is_success
    for name in ("a", "tiny"):
        path = prefix + name + suffix
        for method, route in (("GET", "/v1/documents"), ("DELETE", "/v1/documents"), ("GET", "/v1/models")):
            response = httpx.request(method, _url(server, route, path), headers=headers)
            assert response.status_code == 404, (method, route, path, response.text[:300])
    for name in ("a", "tiny"):
        assert httpx.get(_url(server, "/v1/documents", name), headers=headers).json()["id"] == name


@SETTINGS
@given(before=ID, broken=BROKEN)
def test_a_path_that_is_not_utf8_once_decoded_is_a_400(server, before, broken):
    """`%FF` must not be read as U+FFFD (which could be an indexed id): every route with an id refuses it."""
    headers = server.headers()
    path = _quote(before) + broken
    for method, route in (("GET", "/v1/documents"), ("DELETE", "/v1/documents"), ("GET", "/v1/models")):
        error = _error(httpx.request(method, _url(server, route, path), headers=headers), 400)
        assert error["param"] == "id" and "UTF-8" in error["message"]


@pytest.mark.parametrize("doc_id", ["a\\ud800", "\\udfff", ".", "..", ""])
def test_post_refuses_an_id_the_url_cannot_carry(server, doc_id):
    """A lone surrogate (JSON escapes allow it) has no UTF-8 encoding, "." and ".." are path segments that clients
    remove from URLs, and "" names nothing: a 400 naming the id, and nothing of the request indexed."""
    good = f"ok-{uuid.uuid4().hex}"
    body = b'{"documents": [{"text": "%s", "id": "%s"}, {"text": "%s 2", "id": "%s"}]}' % (
        TEXT.encode(),
        good.encode(),
        TEXT.encode(),
        doc_id.encode(),
    )
    headers = {**server.headers(), "Content-Type": "application/json"}
    error = _error(httpx.post(server.base_url + "/v1/documents", content=body, headers=headers), 400)
    assert error["param"] == "documents[1].id"
    _error(httpx.get(_url(server, "/v1/documents", good), headers=server.headers()), 404)
