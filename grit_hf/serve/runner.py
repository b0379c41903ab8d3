"""One chat generation in a worker thread, read from the event loop.

The worker composes the prompt (the prefill, under the model's lock) and then decodes; each decode step takes the
model's lock only for its forward pass, so concurrent generations and embedding batches progress together, one
forward at a time. Events go to the loop as they come: `("start", result)` once the prompt is composed (its counts
are known), `("delta", text)` per piece of text, then `("done", result)`, `("error", exception)` or
`("timeout", None)`. `cancel()` (a disconnected client, a timeout) stops the worker at its next piece; it then closes
the stream, which frees the decode cache, and gives the slot back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from ..rag.decoding import GenerationStream

__all__ = ["GenerationJob"]


class GenerationJob:
    """Runs `make_stream()` (which composes the prompt and returns a `GenerationStream`) in `executor`.

    Args:
        executor: where the worker runs (sized to the generation slots, so it never queues).
        make_stream: builds the stream, in the worker thread.
        deadline: `time.monotonic()` after which the worker stops with a `"timeout"` event.
        on_exit: called in the worker once the stream is closed (releases the slot).
    """

    def __init__(
        self,
        executor: Executor,
        make_stream: Callable[[], GenerationStream],
        deadline: float,
        on_exit: Callable[[], None],
    ):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._make_stream, self._deadline, self._on_exit = make_stream, deadline, on_exit
        try:
            executor.submit(self._run)
        except BaseException:
            on_exit()
            raise

    def _post(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening
            self._cancelled.set()

    def _run(self) -> None:
        stream = None
        try:
            if self._cancelled.is_set():
                return
            stream = self._make_stream()
            self._post("start", stream.result)
            for delta in stream:
                if self._cancelled.is_set():
                    return
                self._post("delta", delta)
                if time.monotonic() > self._deadline:
                    self._post("timeout", None)
                    return
            self._post("done", stream.result)
        except BaseException as error:  # handed to the request
            self._post("error", error)
        finally:
            try:
                if stream is not None:
                    stream.close()
            finally:
                self._on_exit()

    def cancel(self) -> None:
        """Stop the worker at its next piece of text."""
        self._cancelled.set()

    async def next(self, disconnected: asyncio.Future | None = None) -> tuple[str, Any]:
        """The next event; `("timeout", None)` once the deadline has passed, `("disconnected", None)` when
        `disconnected` completes first (both cancel the worker)."""
        remaining = self._deadline - time.monotonic()
        getter = asyncio.ensure_future(self._events.get())
        waiting = {getter} if disconnected is None else {getter, disconnected}
        try:
            done, _ = await asyncio.wait(waiting, timeout=max(remaining, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        self.cancel()
        return ("disconnected", None) if disconnected is not None and disconnected in done else ("timeout", None)
