"""Answering one chat completion from its generation job: the JSON completion, or the server-sent events of a
stream (ending with `data: [DONE]` or an error event), with OpenAI's errors (the job's slot is free again before the
client hears of a failure), the client's disconnect (499; the generation stops at once) and the metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .errors import APIError, error_body
from .runner import GenerationJob
from .schemas import chat_chunk, chat_completion
from .state import ServerState

logger = logging.getLogger("grit_hf.serve")

__all__ = ["ChatAnswer"]

ENDPOINT = "/v1/chat/completions"


class ChatAnswer:
    """The response to one chat completion, read from its `GenerationJob`.

    Args:
        state: the server's state (metrics, timeouts).
        job: the generation job.
        request_id, created, model: the response's id, creation time and model name.
        arrived: `time.perf_counter()` when the request arrived (time to first token).
    """

    def __init__(
        self, state: ServerState, job: GenerationJob, request_id: str, created: int, model: str, arrived: float
    ):
        self.state, self.job = state, job
        self.request_id, self.created, self.model, self.arrived = request_id, created, model, arrived

    async def respond(self, request: Request, stream: bool, include_usage: bool) -> Response:
        """Wait until the prompt is composed, then answer: a stream of events, or the whole completion."""
        job, state = self.job, self.state
        disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            kind, value = await job.next(disconnected)
        except BaseException:
            job.cancel()
            disconnected.cancel()
            raise
        if kind != "start":
            disconnected.cancel()
            if kind == "disconnected":
                return Response(status_code=499)
            raise await self._failure(kind, value)
        if stream:
            disconnected.cancel()  # the streaming response listens for the disconnect itself
            return _ClosingStreamingResponse(
                self._events(include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            first = True
            while True:
                kind, value = await job.next(disconnected)
                if kind == "delta" and first:
                    state.metrics.ttft.observe(time.perf_counter() - self.arrived)
                    first = False
                elif kind == "done":
                    self._record(value)
                    return JSONResponse(chat_completion(self.request_id, self.model, value.text, value, self.created))
                elif kind == "disconnected":
                    return Response(status_code=499)
                elif kind in ("timeout", "error"):
                    raise await self._failure(kind, value)
        finally:
            job.cancel()
            disconnected.cancel()

    async def _events(self, include_usage: bool):
        """The server-sent events of a streamed completion, ending with `data: [DONE]` (or an error event)."""
        request_id, model, created = self.request_id, self.model, self.created
        try:
            yield _sse(chat_chunk(request_id, model, created, {"role": "assistant", "content": "", "refusal": None}))
            first = True
            while True:
                kind, value = await self.job.next()
                if kind == "delta":
                    if first:
                        self.state.metrics.ttft.observe(time.perf_counter() - self.arrived)
                        first = False
                    yield _sse(chat_chunk(request_id, model, created, {"content": value}))
                elif kind == "done":
                    self._record(value)
                    yield _sse(chat_chunk(request_id, model, created, {}, value.finish_reason))
                    if include_usage:
                        yield _sse(chat_chunk(request_id, model, created, result=value))
                    yield _sse("[DONE]")
                    return
                else:
                    error = await self._failure(kind, value)
                    yield _sse(error_body(error.status, error.message, error.param, error.code))
                    return
        finally:
            self.job.cancel()

    async def _failure(self, kind: str, value) -> APIError:
        """The error a job that timed out or failed ends with, once it is closed (so its slot is free again before
        the client hears of the failure)."""
        await self.job.close()
        return self.state.timeout_error() if kind == "timeout" else _as_api_error(value)

    def _record(self, result) -> None:
        metrics = self.state.metrics
        metrics.prompt_tokens.labels(ENDPOINT).inc(result.prompt_tokens)
        metrics.cached_tokens.inc(result.cache_read_tokens)
        metrics.completion_tokens.inc(result.completion_tokens)


def _as_api_error(error: BaseException) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, (ValueError, TypeError)):
        code = "context_length_exceeded" if "positions" in str(error) else None
        return APIError(400, str(error), None, code)
    logger.error("Generation failed", exc_info=error)
    return APIError(500, f"Generation failed ({type(error).__name__}); see the server's log.", code="internal_error")


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


class _ClosingStreamingResponse(StreamingResponse):
    """Closes its body iterator however the response ends (a client that went away included), so the generation
    stops and frees its cache at once rather than when the iterator is garbage collected."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
