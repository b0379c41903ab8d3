"""Prompts made of segments: text to run through the model, and cached key/value states to splice in.

A segment is a `str` (text, tokenized without special tokens, so a rendered chat prompt keeps its own), a list of token
ids, a `KVStates` (states of an embedding pass, e.g. a query's) or a `CachedSegment` (a stored document, looked up by
id). `resolve_segments` turns them into `Part`s: token ids, plus the states computed for them when they are cached.
A cached document stands for its whole embedding input (`document_template + text`, with BOS when the tokenizer adds
one); a BOS only belongs at the start of a prompt, so a cached part that is not first skips its leading special
tokens (`Part.start`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..cache.states import KVStates
from ..formatting import special_tokens_around_text

__all__ = ["CachedSegment", "Segment", "Part", "special_prefix", "strip_prefix_end", "resolve_segments"]


@dataclass(frozen=True)
class CachedSegment:
    """A document whose stored states stand in the prompt for `document_template + text` (see `GritRAG`)."""

    doc_id: str


Segment = str | list[int] | KVStates | CachedSegment


@dataclass
class Part:
    """A resolved segment: the token ids of a piece of prompt, and the states computed for them if it is cached.

    Attributes:
        ids: token ids (for a cached part, the ids its states were computed from); a `[batch, n]` tensor for a
            batch of prompts of the same shape (the cache loss batches such prompts; states then hold the batch).
        states: the cached states, or `None` for text to run.
        start: leading positions of `ids`/`states` left out (a BOS that only belongs at the start of a prompt).
        end: positions used up to here (exclusive); `None` for all.
    """

    ids: list[int] | torch.Tensor
    states: KVStates | None = None
    start: int = 0
    end: int | None = None

    @property
    def stop(self) -> int:
        length = self.ids.shape[-1] if isinstance(self.ids, torch.Tensor) else len(self.ids)
        return length if self.end is None else self.end

    @property
    def num_tokens(self) -> int:
        return self.stop - self.start

    def token_slice(self, start: int, stop: int) -> list[int] | torch.Tensor:
        """`ids[start:stop]` along the sequence (for batched parts too)."""
        return self.ids[..., start:stop] if isinstance(self.ids, torch.Tensor) else self.ids[start:stop]

    def as_text(self) -> Part:
        """The same tokens, to be run instead of read from the cache."""
        return Part(self.token_slice(self.start, self.stop))


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before any text (e.g. `[BOS]`; `[]` for tokenizers that add none)."""
    return special_tokens_around_text(tokenizer)[0]


def strip_prefix_end(ids: list[int], prefix: list[int], first: bool) -> int:
    """How many leading ids to leave out: the special prefix of a part that does not open the prompt."""
    return len(prefix) if not first and prefix and ids[: len(prefix)] == prefix else 0


def resolve_segments(
    segments: Segment | Sequence[Segment],
    tokenizer: PreTrainedTokenizerBase,
    lookup: Callable[[str], KVStates | list[int]] | None = None,
    reuse_cache: bool = True,
    prefix: list[int] | None = None,
) -> list[Part]:
    """The `Part`s of a prompt given as segments (empty text pieces are left out).

    Args:
        segments: the prompt, in order.
        tokenizer: tokenizes text segments (no special tokens added).
        lookup: maps a `CachedSegment`'s document id to its `KVStates`, or to the token ids of its embedding input
            when it has no stored states (required when the prompt has a `CachedSegment`).
        reuse_cache: `False` turns every cached part into text (the no-cache reference).
        prefix: the tokenizer's `special_prefix` (computed if not given).

    Raises:
        TypeError: for a segment of another type; ValueError: if the prompt holds no token.
    """
    if isinstance(segments, (str, CachedSegment, KVStates)):
        segments = [segments]
    if not isinstance(segments, (list, tuple)) or not segments:
        raise TypeError(f"`segments` must be a non-empty list of str / CachedSegment, got {segments!r:.80}.")
    if prefix is None:
        prefix = special_prefix(tokenizer)
    parts: list[Part] = []
    for index, segment in enumerate(segments):
        if isinstance(segment, str):
            if segment:
                parts.append(Part(tokenizer(segment, add_special_tokens=False)["input_ids"]))
            continue
        if isinstance(segment, CachedSegment):
            if lookup is None:
                raise TypeError(f"`segments[{index}]` is a CachedSegment, but no store to look it up in was given.")
            found = lookup(segment.doc_id)
            if isinstance(found, list):  # a document without stored states: its embedding input, run as text
                parts.append(Part(found[strip_prefix_end(found, prefix, first=not parts) :]))
                continue
            segment = found
        if isinstance(segment, KVStates):
            ids = segment.input_ids.tolist()
            parts.append(Part(ids, segment, strip_prefix_end(ids, prefix, first=not parts)))
        elif isinstance(segment, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in segment):
            if segment:
                parts.append(Part(list(segment)))
        else:
            raise TypeError(
                f"`segments[{index}]` must be a str, a list of token ids, KVStates or a CachedSegment, "
                f"got {type(segment).__name__}."
            )
    if not reuse_cache:
        parts = [part.as_text() if part.states is not None else part for part in parts]
    if not parts:
        raise ValueError("`segments` hold no tokens: the prompt is empty.")
    return parts
