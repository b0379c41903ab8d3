"""One chat generation in a worker thread, read from the event loop (through `grit_hf.async_bridge`).

The worker composes the prompt (the prefill, under the model's lock) and then decodes; each decode step takes the
model's lock only for its forward pass, so concurrent generations and embedding batches progress together, one
forward at a time. Events go to the loop as they come: `("start", result)` once the prompt is composed (its counts
are known), `("delta", text)` per piece of text, then `("done", result)`, `("error", exception)` or
`("timeout", None)`. `cancel()` (a disconnected client, a timeout) stops the worker at its next piece; it then closes
the stream, which frees the decode cache, and gives the slot back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

from ..async_bridge import ThreadedIterator
from ..generation.engine import GenerationStream

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
        self._make_stream, self._deadline = make_stream, deadline
        self._worker = ThreadedIterator(self._events, executor, on_exit)

    def _events(self) -> Iterator[tuple[str, Any]]:
        stream = self._make_stream()
        try:
            yield "start", stream.result
            for delta in stream:
                yield "delta", delta
                if time.monotonic() > self._deadline:
                    yield "timeout", None
                    return
            yield "done", stream.result
        finally:
            stream.close()

    def cancel(self) -> None:
        """Stop the worker at its next piece of text."""
        self._worker.cancel()

    async def close(self) -> None:
        """Stop the worker and wait until it has closed the stream and given the slot back."""
        await self._worker.close()

    async def next(self, disconnected: asyncio.Future | None = None) -> tuple[str, Any]:
        """The next event; `("timeout", None)` once the deadline has passed, `("disconnected", None)` when
        `disconnected` completes first (both cancel the worker)."""
        kind, value = await self._worker.next_event(self._deadline - time.monotonic(), disconnected)
        return value if kind == "item" else (kind, value)
