"""Errors in OpenAI's JSON shape (`{"error": {"message", "type", "param", "code"}}`) with the right status, for
every failure the server can see: its own checks, FastAPI's validation, unknown routes and unexpected exceptions
(logged with their traceback, answered with a 500 that shows none)."""

from __future__ import annotations

import json
import logging
from typing import Any

logger = logging.getLogger("grit_hf.serve")

__all__ = ["APIError", "error_body", "error_response", "send_error", "install_error_handlers"]

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered with `status` and OpenAI's error JSON.

    Args:
        status: the HTTP status.
        message: what went wrong and what to do about it.
        param: the request field at fault, if any (e.g. `"input"`, `"messages[0].content"`).
        code: a short machine-readable code (e.g. `"model_not_found"`, `"context_length_exceeded"`).
        headers: extra response headers (e.g. `Retry-After`).
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(error: APIError):
    """A `JSONResponse` of `error`."""
    from fastapi.responses import JSONResponse

    return JSONResponse(
        error_body(error.status, error.message, error.param, error.code), error.status, headers=error.headers
    )


async def send_error(send, status: int, message: str, code: str | None = None, headers=None) -> None:
    """Answer with OpenAI's error JSON straight through ASGI (for middleware, before the app runs)."""
    body = json.dumps(error_body(status, message, None, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


_BUILTIN_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "tuple"}


def _is_tag(part) -> bool:
    """Whether a location part names a member of a union (`'str'`, `'list[str]'`, `'TextPart'`), not a field."""
    return isinstance(part, str) and ("[" in part or part in _BUILTIN_TAGS or part[:1].isupper() or "-" in part)


def _location(loc: tuple) -> str | None:
    """`("body", "messages", 0, "content")` -> `"messages[0].content"` (union member tags left out)."""
    text = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        if _is_tag(part):
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _validation_response(error, content_type: str) -> tuple[int, dict]:
    """`(status, body)` of a FastAPI validation error: 400 for a body that is not a JSON object, else 422 naming
    each wrong field once (with the type it got)."""
    errors = error.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        message = f"We could not parse the JSON body of your request ({detail}): send valid JSON."
        return 400, error_body(400, message, None, "invalid_json")
    if tuple(first.get("loc", ())) == ("body",):
        hint = "" if "json" in content_type else " with `Content-Type: application/json`"
        message = f"The request body must be a JSON object{hint}."
        return 400, error_body(400, message, None, "invalid_json")
    fields: dict[str, str] = {}
    for item in errors:
        where = _location(tuple(item.get("loc", ()))) or "body"
        if where not in fields:
            got = type(item.get("input")).__name__ if item.get("type", "").endswith("_type") else None
            got = {"NoneType": "null", "dict": "object", "list": "array"}.get(got, got)
            fields[where] = f"`{where}`: {item.get('msg', 'invalid value')}" + (f" (got {got})" if got else "")
    parts = list(fields.values())
    more = f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""
    message = "Invalid request: " + "; ".join(parts[:5]) + more + "."
    deepest = max(fields, key=lambda where: where.count(".") + where.count("["))  # a union's most precise member
    return 422, error_body(422, message, deepest, "invalid_type")


def install_error_handlers(app) -> None:
    """Answer every error of the FastAPI `app` with OpenAI's error JSON."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        status, body = _validation_response(error, request.headers.get("content-type", ""))
        return JSONResponse(body, status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = (
                f"Unknown endpoint {request.method} {request.url.path}: see GET /v1/models, POST /v1/embeddings, "
            )
            message += "POST /v1/chat/completions, /v1/documents, GET /health and GET /metrics."
            return JSONResponse(error_body(404, message, None, "unknown_url"), 404)
        if error.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
            return JSONResponse(error_body(405, message, None, "method_not_allowed"), 405, headers=error.headers)
        body = error_body(error.status_code, str(error.detail), None, getattr(error, "code", None))
        return JSONResponse(body, error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception(f"Unexpected error in {request.method} {request.url.path}")
        message = f"The server failed while handling the request ({type(error).__name__}); see its log."
        return JSONResponse(error_body(500, message, None, "internal_error"), 500)
