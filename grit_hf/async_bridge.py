"""Running a blocking iterator (a generation stream) in a worker thread and reading it from an asyncio event loop:
the one bridge behind the server's chat generations (`grit_hf.serve.runner`) and the integrations' async streams
(`grit_hf.rag.integration.aiter_in_thread`).

The iterator is created, advanced and closed in the worker thread (a generation stream holds the decode cache of
that thread's prefill); its items reach the loop as they come. `cancel()` stops the worker at its next item, which
then closes the iterator (freeing the decode cache).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

__all__ = ["ThreadedIterator"]

T = TypeVar("T")


class ThreadedIterator(Generic[T]):
    """`make_iterator()` run in `executor` (or a thread of its own), its items handed to the running event loop.

    Args:
        make_iterator: builds the iterator, in the worker thread.
        executor: where the worker runs (`None`: a daemon thread).
        on_exit: called in the worker once the iterator is closed (e.g. to release a slot).
    """

    def __init__(
        self,
        make_iterator: Callable[[], Iterator[T]],
        executor: Executor | None = None,
        on_exit: Callable[[], None] | None = None,
    ):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._exited = asyncio.Event()
        self._make_iterator, self._on_exit = make_iterator, on_exit
        try:
            if executor is None:
                threading.Thread(target=self._run, name="grit-hf-stream", daemon=True).start()
            else:
                executor.submit(self._run)
        except BaseException:
            if on_exit is not None:
                on_exit()
            raise

    def _post(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening
            self._cancelled.set()

    def _run(self) -> None:
        iterator = None
        try:
            if self._cancelled.is_set():
                return
            iterator = self._make_iterator()
            for item in iterator:
                if self._cancelled.is_set():
                    return
                self._post("item", item)
            self._post("done", None)
        except BaseException as error:  # handed to the reader
            self._post("error", error)
        finally:
            try:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            finally:
                try:
                    if self._on_exit is not None:
                        self._on_exit()
                finally:
                    try:
                        self._loop.call_soon_threadsafe(self._exited.set)
                    except RuntimeError:  # the loop is closed (shutdown)
                        pass

    def cancel(self) -> None:
        """Stop the worker at its next item (it then closes the iterator)."""
        self._cancelled.set()

    async def close(self) -> None:
        """Cancel the worker and wait until it has closed the iterator and run `on_exit` (at most one more item,
        e.g. one decode step), so that whatever `on_exit` frees is free when this returns."""
        self.cancel()
        await self._exited.wait()

    async def next_event(
        self, timeout: float | None = None, disconnected: asyncio.Future | None = None
    ) -> tuple[str, Any]:
        """The next event: `("item", item)`, `("done", None)` or `("error", exception)`; `("timeout", None)` after
        `timeout` seconds, `("disconnected", None)` when `disconnected` completes first (both cancel the worker)."""
        getter = asyncio.ensure_future(self._events.get())
        waiting = {getter} if disconnected is None else {getter, disconnected}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=None if timeout is None else max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        self.cancel()
        return ("disconnected", None) if disconnected is not None and disconnected in done else ("timeout", None)

    async def items(self) -> AsyncIterator[T]:
        """The items, as an async iterator (an error of the worker is raised here; leaving early cancels it)."""
        try:
            while True:
                kind, value = await self.next_event()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            self.cancel()
