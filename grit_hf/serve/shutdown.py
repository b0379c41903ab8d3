"""Shutting down with requests still open: a grace period, then every open request ends in OpenAI's format.

When the server starts to shut down (SIGTERM, Ctrl-C), it stops accepting connections and open requests get
`shutdown_timeout` seconds to finish (`ServerSettings.shutdown_timeout`, `grit-hf serve --shutdown-timeout`). Past
that, `EndOnShutdown` ends each one: a JSON 503 if its response has not started, a final error event if it is a
stream (`code: "server_shutting_down"`), with one log line for all of them and no traceback; the generation behind a
request stops as when its client leaves. uvicorn's own deadline, which cancels tasks and logs a traceback for each,
is set `BACKSTOP_SECONDS` later and is not reached.
"""

from __future__ import annotations

import asyncio
import json
import logging

import uvicorn

from ..validation import check_non_negative_number
from .errors import error_body, send_error

logger = logging.getLogger("grit_hf.serve")

__all__ = ["BACKSTOP_SECONDS", "SHUTDOWN_CODE", "ShutdownGrace", "EndOnShutdown", "GracefulServer"]

SHUTDOWN_CODE = "server_shutting_down"
BACKSTOP_SECONDS = 5.0


class ShutdownGrace:
    """The open HTTP requests of one app, and the end of their grace period once shutdown starts.

    Args:
        timeout: seconds open requests may still take after shutdown starts (0: end them at once).
    """

    def __init__(self, timeout: float):
        self.timeout = check_non_negative_number(timeout, "shutdown_timeout")
        self.open: set[asyncio.Task] = set()
        self.expired = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start the grace period (call it in the server's event loop, when shutdown starts)."""
        if self._timer is None and not self.expired:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self.expire)

    def expire(self) -> None:
        """End every open request now (each task's `EndOnShutdown` answers for it); log it in one line."""
        self.expired = True
        if self.open:
            logger.warning(
                f"Shutdown: {len(self.open)} request(s) still open after the {self.timeout:g} s grace period; each "
                "ends with a 503 (streams with a final error event)."
            )
        for task in list(self.open):
            task.cancel()

    def message(self) -> str:
        return (
            f"The server is shutting down and this request did not finish within its {self.timeout:g} s grace "
            "period. Retry against another instance or after the restart."
        )


class EndOnShutdown:
    """ASGI middleware: runs each HTTP request as a task that `ShutdownGrace.expire` can end, and then answers in
    OpenAI's format: a JSON 503 if the response has not started, else a final error event (server-sent events) and
    the end of the body."""

    def __init__(self, app, grace: ShutdownGrace):
        self.app, self.grace = app, grace

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started: dict[str, bool] = {}

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                started["sse"] = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                started["complete"] = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, tracked_send))
        self.grace.open.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if not (self.grace.expired and task.cancelled()) or asyncio.current_task().cancelling():
                raise  # cancelled by someone else (uvicorn's backstop, the client's connection)
            await self._end(send, started)
        finally:
            self.grace.open.discard(task)

    async def _end(self, send, started: dict[str, bool]) -> None:
        if started.get("complete"):
            return
        if "sse" not in started:
            await send_error(send, 503, self.grace.message(), SHUTDOWN_CODE, {"Connection": "close"})
            return
        if started["sse"]:
            event = json.dumps(error_body(503, self.grace.message(), None, SHUTDOWN_CODE))
            await send({"type": "http.response.body", "body": f"data: {event}\n\n".encode(), "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class GracefulServer(uvicorn.Server):
    """uvicorn's server that starts the app's `ShutdownGrace` when its shutdown starts; its own deadline
    (`timeout_graceful_shutdown`) must be `BACKSTOP_SECONDS` past the grace period."""

    def __init__(self, config: uvicorn.Config, grace: ShutdownGrace):
        super().__init__(config)
        self.grace = grace

    async def shutdown(self, sockets=None) -> None:
        self.grace.start()
        await super().shutdown(sockets)
