"""The server's limits (`Limits`), the slots that bound concurrent generations (429 when full) and the checks of
request sizes that answer with the right status."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..validation import check_text
from .errors import APIError

__all__ = ["Limits", "GenerationSlots", "check_count", "check_tokens"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much the server takes on at once.

    Attributes:
        max_body_bytes: largest request body (413 above; checked on `Content-Length` and while reading).
        max_inputs: most texts per embeddings request, documents per `/v1/documents` request or `documents` ids per
            chat (400 above).
        max_input_tokens: most tokens per embedded text or document (400 above; nothing is truncated silently).
        max_tokens: most new tokens per chat completion (400 above); also the default when a request names none.
        max_prompt_tokens: most tokens in a rendered chat prompt (400 above).
        max_concurrent_generations: chat completions decoding at once; one more gets 429.
        max_queued_inputs: texts waiting for the embedding batcher; a request that would exceed it gets 429.
        max_documents: documents in the index. Texts cached by `/v1/embeddings` are forgotten oldest first to make
            room; documents indexed by `/v1/documents` are kept until deleted (400 when the index is full of them).
        request_timeout: seconds a request may take, reading its body included (504 for work that ran out of time,
            408 for a body that did not arrive in time; a stream that runs out of time ends with an error event).
    """

    max_body_bytes: int = 4 * 1024 * 1024
    max_inputs: int = 256
    max_input_tokens: int = 2048
    max_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_concurrent_generations: int = 8
    max_queued_inputs: int = 4096
    max_documents: int = 100_000
    request_timeout: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_inputs", "max_input_tokens", "max_tokens", "max_prompt_tokens"):
            self._check_positive(name)
        for name in ("max_concurrent_generations", "max_queued_inputs", "max_documents"):
            self._check_positive(name)
        if not isinstance(self.request_timeout, (int, float)) or not self.request_timeout > 0:
            raise ValueError(f"`request_timeout` must be a number > 0, got {self.request_timeout!r}.")

    def _check_positive(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


class GenerationSlots:
    """At most `size` generations at once: `try_acquire` takes a slot or answers 429 at once (no queue, so a client
    knows immediately and may retry); `release` gives it back when the generation has ended and freed its cache."""

    def __init__(self, size: int):
        self.size = size
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self.active = 0

    def try_acquire(self) -> None:
        if not self._free.acquire(blocking=False):
            raise APIError(
                429,
                f"The server is already generating {self.size} completions (its limit of concurrent generations): "
                "retry shortly.",
                code="too_many_generations",
                headers={"Retry-After": "1"},
            )
        with self._lock:
            self.active += 1

    def release(self) -> None:
        with self._lock:
            self.active -= 1
        self._free.release()


def check_count(count: int, limit: int, param: str, what: str) -> None:
    """400 if a request holds more than `limit` items."""
    if count > limit:
        raise APIError(400, f"`{param}` holds {count} {what}; the server accepts at most {limit}.", param, "too_many")


def check_request_text(text: str, where: str) -> None:
    """400 for an empty text or one that is not valid Unicode (a lone surrogate), naming where it is."""
    if not text:
        raise APIError(400, f"`{where}` is an empty string: every input must hold text.", where)
    try:
        check_text(text, where)
    except ValueError as error:
        raise APIError(400, str(error), where) from None


def check_tokens(counts: list[int], limit: int, param: str) -> None:
    """400 naming the first text with more than `limit` tokens."""
    for index, count in enumerate(counts):
        if count > limit:
            where = f"{param}[{index}]" if len(counts) > 1 else param
            raise APIError(
                400,
                f"`{where}` has {count} tokens; the server accepts at most {limit} per text (nothing is truncated). "
                "Split the text or shorten it.",
                where,
                "context_length_exceeded",
            )
