"""Generation from a prompt made of text and cached segments: compose one cache, then a tight decode loop.

A prompt is a list of segments: text to run through the model, or cached states to splice in. Cached states are
re-rotated to the position they take in the prompt (`grit_hf.cache.positions`) and concatenated once into a fresh
cache sized for the prompt plus the answer (`grit_hf.cache.buffers`: by default a preallocated buffer, so each
decode step appends without copying the cache); text parts run on top of what precedes them; the stored tensors are
never written to. Decoding is a greedy (or sampled) loop under `torch.inference_mode`, one forward per token with the
model's lock held only for that forward, so streams of several threads interleave safely. With
`decode_cache="static"` the decode runs on a `StaticCache` (and, on CUDA with `compile=True`, a `torch.compile`d
forward).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import StaticCache
from transformers.utils import logging

from .cache.buffers import append_states, new_cache, static_cache_size
from .cache.positions import shift_layers
from .cache.states import KVStates

logger = logging.get_logger(__name__)

__all__ = ["model_lock", "CachedSegment", "Segment", "GenerationResult", "GenerationStream", "SegmentGenerationMixin"]


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_POOL_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The re-entrant lock that serialises use of `model` (one per model object, shared by every `GritRAG` on it).

    Embedding toggles the decoder's attention flag for the duration of a call, so a forward that generates must not
    run at the same time as one that embeds; hold this lock around direct `model.encode`/forward calls made
    alongside a `GritRAG`.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@dataclass(frozen=True)
class CachedSegment:
    """A document whose stored states stand in the prompt for `document_template + text` (see `GritRAG`)."""

    doc_id: str


Segment = str | CachedSegment


@dataclass
class GenerationResult:
    """The outcome of one generation.

    Attributes:
        text: the generated text (stop string excluded).
        token_ids: the generated token ids.
        prompt_tokens: tokens in the prompt, cached ones included.
        cache_read_tokens: prompt tokens whose states were reused instead of computed.
        completion_tokens: generated tokens.
        finish_reason: `"stop"` (end token or stop string) or `"length"` (`max_new_tokens` reached).
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    cache_read_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"


class GenerationStream:
    """An iterator of text pieces; once exhausted, `result` holds the `GenerationResult`. `close()` stops early."""

    def __init__(self, pieces: Iterator[str], result: GenerationResult):
        self._pieces = pieces
        self.result = result

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


@dataclass
class _Part:
    """A resolved segment: token ids to run, or states (with the ids they were computed from) to splice."""

    ids: list[int]
    states: KVStates | None = None
    start: int = 0  # leading states skipped (a BOS that only belongs at the start of a prompt)
    end: int | None = None  # states used up to here (exclusive); None: all


def _check_generation_args(max_new_tokens: int, stop, temperature: float, top_p: float) -> list[str]:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive int, got {max_new_tokens!r}.")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise TypeError(f"`stop` must be a non-empty str or a list of them, got {stop!r}.")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"`temperature` must be a number >= 0, got {temperature!r}.")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"`top_p` must be in (0, 1], got {top_p!r}.")
    return list(stop)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(-1, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _held_back(text: str, stop: list[str]) -> int:
    """How many trailing characters of `text` could start a stop string (or are an incomplete character)."""
    hold = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:size]):
                hold = max(hold, size)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, 1)
    return hold


class SegmentGenerationMixin:
    """Generation from segments. Expects `model`, `tokenizer`, `_lock`, `_rotary`, `_special_prefix`,
    `decode_cache`, `compile` and `_cached_states(doc_id)` on the class it is mixed into."""

    # -- composition -------------------------------------------------------------------------------------------------
    def _resolve(self, segments, reuse_cache: bool) -> list[_Part]:
        if isinstance(segments, (str, CachedSegment)):
            segments = [segments]
        if not isinstance(segments, (list, tuple)) or not segments:
            raise TypeError(f"`segments` must be a non-empty list of str / CachedSegment, got {segments!r:.80}.")
        parts = []
        for index, segment in enumerate(segments):
            if isinstance(segment, str):
                if segment:
                    parts.append(_Part(self.tokenizer(segment, add_special_tokens=False)["input_ids"]))
            elif isinstance(segment, CachedSegment):
                parts.append(self._states_part(self._cached_states(segment.doc_id), first=not parts))
            elif isinstance(segment, KVStates):
                parts.append(self._states_part(segment, first=not parts))
            elif isinstance(segment, list) and all(isinstance(i, int) for i in segment):
                parts.append(_Part(list(segment)))
            else:
                raise TypeError(f"`segments[{index}]` must be a str or a CachedSegment, got {type(segment).__name__}.")
        if not reuse_cache:
            parts = [_Part(part.ids[part.start :]) for part in parts]
        if not parts:
            raise ValueError("`segments` hold no tokens: the prompt is empty.")
        return parts

    def _states_part(self, states: KVStates, first: bool) -> _Part:
        ids = states.input_ids.tolist()
        start = 0
        if not first and self._special_prefix and ids[: len(self._special_prefix)] == self._special_prefix:
            start = len(self._special_prefix)
        return _Part(ids, states, start)

    def _forward(self, ids: list[int], position: int, cache) -> torch.Tensor:
        device = self.model.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        positions = torch.arange(position, position + len(ids), device=device).unsqueeze(0)
        with self._lock:
            outputs = self.model(
                input_ids=input_ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1
            )
        return outputs.logits[0, -1]

    @torch.inference_mode()
    def _prefill(self, parts: list[_Part], max_new_tokens: int = 0):
        """Compose the prompt's cache (room for `max_new_tokens` more). Returns
        `(cache, last_logits, prompt_tokens, cache_read_tokens)`."""
        if parts[-1].states is not None:  # the next-token logits need one token run: re-run the last cached token
            last = parts.pop()
            if len(last.ids) - last.start > 1:
                parts.append(_Part(last.ids, last.states, last.start, len(last.ids) - 1))
            parts.append(_Part(last.ids[-1:]))
        ends = [len(part.ids) if part.end is None else part.end for part in parts]
        capacity = sum(end - part.start for part, end in zip(parts, ends)) + max_new_tokens
        cache = self._new_cache(capacity)
        position, cache_read, pending_ids, logits = 0, 0, [], None
        device = self.model.device
        for index, (part, end) in enumerate(zip(parts, ends)):
            if part.states is None:
                pending_ids.extend(part.ids)
                if index + 1 < len(parts) and parts[index + 1].states is None:
                    continue
                logits = self._forward(pending_ids, position, cache)
                position += len(pending_ids)
                pending_ids = []
            else:
                layers = [(k[..., :end, :].to(device), v[..., :end, :].to(device)) for k, v in part.states.layers()]
                cache = append_states(cache, shift_layers(layers, position - part.start, self._rotary, part.start))
                position += end - part.start
                cache_read += end - part.start
        return cache, logits, position, cache_read

    def _new_cache(self, capacity: int):
        """A cache for `capacity` positions; static caches come from a pool (one per size, reset before reuse), so
        a compiled decode step keeps seeing the same buffers instead of recompiling for every answer."""
        config = self.model.config.get_text_config(decoder=True)
        if self.decode_cache == "static":
            size = static_cache_size(capacity)
            with _POOL_GUARD:
                free = self.__dict__.setdefault("_static_pool", {}).get(size)
                if free:
                    cache = free.pop()
                    cache.reset()
                    return cache
        return new_cache(self.decode_cache, config, capacity)

    def _release_cache(self, cache) -> None:
        if isinstance(cache, StaticCache):
            with _POOL_GUARD:
                self.__dict__.setdefault("_static_pool", {}).setdefault(cache.layers[0].max_cache_len, []).append(
                    cache
                )

    def _decode_forward(self):
        """The forward the decode loop calls: compiled for the static cache on CUDA with `compile=True`."""
        if not (self.compile and self.decode_cache == "static" and self.model.device.type == "cuda"):
            return self.model
        if getattr(self, "_compiled_forward", None) is None:
            self._compiled_forward = torch.compile(self.model.forward, mode="reduce-overhead")
        return self._compiled_forward

    # -- decoding ----------------------------------------------------------------------------------------------------
    def _token_stream(self, cache, logits, position, max_new_tokens, temperature, top_p, ignore_eos, seed, result):
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=logits.device).manual_seed(seed)
        forward = self._decode_forward()
        device = self.model.device
        try:
            with torch.inference_mode():
                for step in range(max_new_tokens):
                    token = _pick(logits, temperature, top_p, generator)
                    if token in eos_ids and not ignore_eos:
                        result.finish_reason = "stop"
                        return
                    yield token
                    if step + 1 == max_new_tokens:
                        return
                    with self._lock:
                        logits = forward(
                            input_ids=torch.tensor([[token]], device=device),
                            position_ids=torch.tensor([[position]], device=device),
                            past_key_values=cache,
                            use_cache=True,
                        ).logits[0, -1]
                    position += 1
        finally:
            self._release_cache(cache)

    def _text_stream(self, tokens: Iterator[int], stop: list[str], result: GenerationResult) -> Iterator[str]:
        emitted = ""
        try:
            for token in tokens:
                result.token_ids.append(token)
                result.completion_tokens += 1
                text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True)
                hits = [i for i in (text.find(s, max(0, len(emitted) - len(s))) for s in stop) if i >= 0]
                if hits:
                    text = text[: min(hits)]
                    result.finish_reason = "stop"
                    result.text = text
                    if len(text) > len(emitted):
                        yield text[len(emitted) :]
                    return
                result.text = text
                safe = text[: len(text) - _held_back(text, stop)]
                if len(safe) > len(emitted):
                    yield safe[len(emitted) :]
                    emitted = safe
            if len(result.text) > len(emitted):
                yield result.text[len(emitted) :]
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()

    def _start(
        self,
        segments,
        max_new_tokens,
        stop,
        temperature=0.0,
        top_p=1.0,
        ignore_eos=False,
        seed=None,
        reuse_cache=True,
        result: GenerationResult | None = None,
    ):
        stop = _check_generation_args(max_new_tokens, stop, temperature, top_p)
        parts = self._resolve(segments, reuse_cache)
        cache, logits, prompt_tokens, cache_read = self._prefill(parts, max_new_tokens)
        result = GenerationResult() if result is None else result
        result.prompt_tokens, result.cache_read_tokens = prompt_tokens, cache_read
        tokens = self._token_stream(
            cache, logits, prompt_tokens, max_new_tokens, temperature, top_p, ignore_eos, seed, result
        )
        return self._text_stream(tokens, stop, result), result

    def generate_from_segments(
        self,
        segments: list[Segment],
        max_new_tokens: int = 256,
        stop: str | list[str] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        ignore_eos: bool = False,
        seed: int | None = None,
        reuse_cache: bool = True,
    ) -> GenerationResult:
        """Generate after a prompt made of text segments (`str`, run as is: no special tokens are added, so a
        rendered chat prompt keeps its own) and `CachedSegment`s (the stored states of a document, re-rotated to
        their offset; they stand for `document_template + text`, without a leading BOS unless first).

        Args:
            segments: the prompt, in order (token id lists and a query's `KVStates`, as `GritRAG.build_segments`
                makes them, are accepted too).
            max_new_tokens: the most tokens to generate.
            stop: stop string(s); the text ends before the first one found.
            temperature: 0 decodes greedily; above 0 samples.
            top_p: nucleus sampling threshold (with `temperature > 0`).
            ignore_eos: keep going after the end token (benchmarks).
            seed: seed of the sampler.
            reuse_cache: `False` re-reads the cached documents' tokens as text (the no-cache reference).

        Returns:
            A `GenerationResult` (text, token ids, prompt/cache-read/completion token counts, finish reason).
        """
        stream = self.stream_from_segments(
            segments, max_new_tokens, stop, temperature, top_p, ignore_eos, seed, reuse_cache
        )
        for _ in stream:
            pass
        return stream.result

    def stream_from_segments(
        self,
        segments: list[Segment],
        max_new_tokens: int = 256,
        stop: str | list[str] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        ignore_eos: bool = False,
        seed: int | None = None,
        reuse_cache: bool = True,
    ) -> GenerationStream:
        """Like `generate_from_segments`, but returns a `GenerationStream` yielding text deltas as they are decoded
        (text that may start a stop string is held back); its `result` is complete once the stream is exhausted.
        The prompt is composed before this returns."""
        pieces, result = self._start(segments, max_new_tokens, stop, temperature, top_p, ignore_eos, seed, reuse_cache)
        return GenerationStream(pieces, result)
