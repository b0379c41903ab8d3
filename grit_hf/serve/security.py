"""The guard in front of every endpoint: Bearer authentication (all but `/health`), the body size limit (413 on
`Content-Length`, and while reading a body sent in chunks) and the time allowed to send the body (408)."""

from __future__ import annotations

import asyncio
import hmac

from starlette.exceptions import HTTPException

from .errors import send_error

__all__ = ["GuardMiddleware", "HTTPError", "OPEN_PATHS"]

OPEN_PATHS = frozenset({"/health"})


class HTTPError(HTTPException):
    """An error raised while FastAPI reads the body, where it turns other exceptions into a generic 400: it passes
    HTTP exceptions through, and the handler answers with OpenAI's error JSON and `code`."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(status, message)
        self.code = code


class GuardMiddleware:
    """A pure ASGI middleware (it never buffers a response, so streams pass through untouched).

    Args:
        app: the ASGI app.
        api_key: the key clients must send as `Authorization: Bearer KEY` (`None`: no authentication).
        max_body_bytes: the largest request body.
        body_timeout: seconds the client has to send the whole body.
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout: float):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            return await send_error(
                send,
                401,
                "Missing or wrong API key: send `Authorization: Bearer <key>` with the key the server was started with.",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_error(send, 400, "Invalid Content-Length header.", "invalid_content_length")
            if int(declared) > self.max_body_bytes:
                return await send_error(send, 413, self._too_large(int(declared)), "request_too_large")
        received, complete = 0, False
        deadline = asyncio.get_running_loop().time() + self.body_timeout  # for the whole body, not each part

        async def guarded_receive():
            nonlocal received, complete
            if complete:  # e.g. waiting for the client to disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise HTTPError(408, "The request body did not arrive in time.", "request_timeout") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPError(413, self._too_large(received, "at least "), "request_too_large")
                complete = not message.get("more_body", False)
            return message

        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except HTTPError as error:  # raised outside FastAPI's handlers
            if started:
                raise
            await send_error(send, error.status_code, str(error.detail), error.code)

    def _too_large(self, size: int, prefix: str = "") -> str:
        return f"The request body has {prefix}{size} bytes; the server accepts at most {self.max_body_bytes}."
