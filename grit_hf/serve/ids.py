"""Ids in the server's URLs and bodies: one rule, checked once.

An id (of a document; a model's name) is a non-empty string of Unicode characters (no lone surrogate) other than "."
and "..". `POST /v1/documents` refuses any other id with a 400 (`check_id`); every id it accepts round-trips through a
URL as its percent-encoded UTF-8 (`urllib.parse.quote(id, safe="")`). A route's `{name:grit_id}` parameter is the whole
rest of the path, newlines included (Starlette's `path` stops before a final newline, so `a%0A` named "a"), and
`path_id` refuses a path that is not UTF-8 once percent-decoded (the server reads `%FF` as U+FFFD, another id).
"""

from __future__ import annotations

import urllib.parse

from fastapi import Request
from starlette.convertors import Convertor, register_url_convertor

from ..validation import check_text
from .errors import APIError

__all__ = ["ID_CONVERTOR", "check_id", "path_id"]

ID_CONVERTOR = "grit_id"
"""The convertor of id parameters in route paths: `@router.get("/v1/documents/{doc_id:grit_id}")`."""
_DOT_SEGMENTS = (".", "..")  # URL paths remove them (RFC 3986 5.2.4): a client cannot send them as a segment


class _WholeRest(Convertor[str]):
    """The rest of the path, any character (`.` matches newlines too)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor(ID_CONVERTOR, _WholeRest())


def check_id(doc_id: str, param: str) -> str:
    """Return `doc_id` if a URL can carry it; else a 400 naming `param` (empty, ".", "..", a lone surrogate)."""
    if doc_id in ("", *_DOT_SEGMENTS):
        raise APIError(
            400,
            f"`{param}` is {doc_id!r}: an id must be a non-empty string other than '.' and '..' (URLs cannot carry "
            "those as a path segment).",
            param,
        )
    try:
        return check_text(doc_id, param)
    except ValueError as error:  # a lone surrogate has no UTF-8, so no URL
        raise APIError(400, str(error), param) from None


def path_id(request: Request, name: str) -> str:
    """The id that the request's path spells in the parameter `name`: 400 if the raw path is not UTF-8 once
    percent-decoded (the server would have replaced the bad bytes with U+FFFD and named another id)."""
    raw = request.scope.get("raw_path")
    if raw is not None:
        try:
            urllib.parse.unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError as error:
            raise APIError(
                400,
                f"The path {raw.decode('ascii', 'replace')!r} is not UTF-8 once percent-decoded ({error.reason} at "
                f"byte {error.start}): ids in URLs are their percent-encoded UTF-8.",
                "id",
            ) from None
    return request.path_params[name]
