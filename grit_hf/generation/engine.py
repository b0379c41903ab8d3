"""The one generation engine of grit-hf: plain chat, `GritRAG`, the LangChain/LlamaIndex classes and the server all
decode through `Generator`.

A prompt (a resolved `PromptPlan`: text, token ids and cached states, see `grit_hf.generation.plan`) is composed once
into a fresh cache sized for the prompt plus the answer (`grit_hf.generation.compose`; by default a preallocated
buffer, so each decode step appends without copying the cache), then decoded one token per forward pass under
`torch.inference_mode`. Every forward pass
takes the model's lock only for itself (`grit_hf.locking`), so streams of several threads progress together, token
by token, and never see another pass's attention setting.

Why a hand-written loop rather than transformers' `generate` on the composed cache: `generate` runs its whole loop
inside one call, so concurrent streams could only interleave by holding the model for a whole answer, and its
per-step bookkeeping (logits processors, stopping criteria, cache-position handling) cost 2.1x the decode time of this
loop on an H100 at 7B (0.41 s against 0.19 s for a 4000-token doc-cached answer); the CPU comparison is in
`benchmarks/results/decode_engine_cpu.md` (`benchmarks/decode_engine.py`). Sampling, stop strings and streaming are
small and written here: greedy or temperature/top-p sampling with a seeded generator, stop strings matched on the
decoded text (text that may begin a stop string is held back while streaming).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import StaticCache
from transformers.utils import logging

from ..cache.buffers import DECODE_CACHES, DecodeCache, new_cache, static_cache_size
from ..cache.positions import find_rotary_embedding
from ..validation import check_non_negative_number, check_positive_int, check_probability, check_seed
from .batched import DecodeBatch
from .compose import compose, continuation_logits
from .plan import PromptPlan, special_prefix

logger = logging.get_logger(__name__)

__all__ = ["GenerationOptions", "GenerationResult", "GenerationStream", "Generator"]


@dataclass
class GenerationOptions:
    """How to decode. Checked when built (`TypeError`/`ValueError` naming the field).

    Attributes:
        max_new_tokens: the most tokens to generate.
        stop: stop strings; the text ends before the first one found.
        temperature: 0 (or below `MIN_TEMPERATURE`) decodes greedily; above, samples.
        top_p: nucleus sampling threshold (with `temperature > 0`).
        seed: seed of the sampler (`None`: torch's global generator).
        ignore_eos: keep going after the end token (benchmarks).
    """

    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        check_positive_int(self.max_new_tokens, "max_new_tokens")
        stop = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise TypeError(f"`stop` must be a non-empty str or a list of them, got {self.stop!r:.80}.")
        self.stop = list(stop)
        self.temperature = check_non_negative_number(
            0.0 if self.temperature is None else self.temperature, "temperature"
        )
        self.top_p = check_probability(self.top_p, "top_p")
        self.seed = check_seed(self.seed)
        if not isinstance(self.ignore_eos, bool):
            raise TypeError(f"`ignore_eos` must be a bool, got {type(self.ignore_eos).__name__}.")


@dataclass
class GenerationResult:
    """The outcome of one generation (complete once its stream is exhausted).

    Attributes:
        text: the generated text (stop string excluded).
        token_ids: the generated token ids.
        prompt_tokens: tokens in the prompt, cached ones included.
        cache_read_tokens: prompt tokens whose states were reused instead of computed.
        recomputed_tokens: prompt tokens of cached parts computed again (selective recomputation).
        completion_tokens: generated tokens.
        finish_reason: `"stop"` (end token or stop string) or `"length"` (`max_new_tokens` reached).
        doc_ids: the documents used (retrieved or found in the prompt).
        scores: their retrieval scores, when they were retrieved.
        mode: the RAG mode, for `GritRAG.answer`.
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    cache_read_tokens: int = 0
    recomputed_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    doc_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    mode: str | None = None


class GenerationStream:
    """An iterator of text pieces. `result` holds the `GenerationResult`: its prompt counts are known from the start,
    the rest once the stream is exhausted. `close()` stops early and frees the decode cache."""

    def __init__(self, pieces: Iterator[str], result: GenerationResult):
        self._pieces = pieces
        self.result = result

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def consume(self) -> GenerationResult:
        """Run the stream to its end and return the result."""
        for _ in self:
            pass
        return self.result


MIN_TEMPERATURE = 1e-4
"""Below this, sampling is greedy: the softmax of logits divided by such a temperature is one-hot to float
precision, and dividing by a tiny one overflows to infinity."""


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    if temperature < MIN_TEMPERATURE:
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


class Generator:
    """Generation from a prompt of parts (see the module docstring) with one model.

    Args:
        model: a `GritLMForCausalLM` (its tokenizer is `model.tokenizer`).
        decode_cache: `"preallocated"` (default; appends without copying), `"dynamic"` (transformers'
            `DynamicCache`) or `"static"` (`StaticCache`, fixed shapes).
        compile: decode with a `torch.compile`d forward: on CUDA with `decode_cache="static"` (CUDA graphs), on the
            CPU with the preallocated cache (shapes marked dynamic: one graph for one stream, one for a batch). The
            first steps compile (minutes on a small CPU); `benchmarks/results/decode_compile_cpu.md` says when it
            pays.
        batch_decoding: decode concurrent streams together, one forward pass a step (`grit_hf.generation.batched`;
            for servers: one stream alone decodes as fast either way).
    """

    def __init__(
        self, model, decode_cache: DecodeCache = "preallocated", compile: bool = False, batch_decoding: bool = False
    ):
        if decode_cache not in DECODE_CACHES:
            raise ValueError(f"Invalid `decode_cache`: {decode_cache!r}. Valid choices are: {DECODE_CACHES}.")
        on_cuda = model.device.type == "cuda"
        if compile and decode_cache != ("static" if on_cuda else "preallocated"):
            raise ValueError(
                "`compile=True` needs `decode_cache='static'` on CUDA and `decode_cache='preallocated'` on the CPU, "
                f"got {decode_cache!r} on {model.device.type}."
            )
        if not isinstance(batch_decoding, bool):
            raise TypeError(f"`batch_decoding` must be a bool, got {type(batch_decoding).__name__}.")
        if batch_decoding and decode_cache == "static":
            raise ValueError("`batch_decoding=True` stacks the streams' caches: use `decode_cache` 'preallocated'.")
        self.model = model
        self.tokenizer = model.tokenizer
        self.decode_cache, self.compile = decode_cache, compile
        self.special_prefix = special_prefix(self.tokenizer)
        self._rotary = None
        self._static_pool: dict[int, list[StaticCache]] = {}
        self._pool_guard = threading.Lock()
        self._compiled_forward = None
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        self.batch = DecodeBatch(model, self.eos_ids, _pick, self._step_forward) if batch_decoding else None

    @property
    def rotary_emb(self):
        """The model's rotary embedding (found on first use: only cached parts need it)."""
        if self._rotary is None:
            self._rotary = find_rotary_embedding(self.model)
        return self._rotary

    # -- caches ------------------------------------------------------------------------------------------------------
    def _new_cache(self, capacity: int):
        """A cache for `capacity` positions. Static caches come from a pool (one list per size, reset before reuse),
        so a compiled decode step keeps seeing the same buffers instead of recompiling for every answer."""
        if self.decode_cache == "static":
            with self._pool_guard:
                free = self._static_pool.get(static_cache_size(capacity))
                if free:
                    cache = free.pop()
                    cache.reset()
                    return cache
        return new_cache(self.decode_cache, self.model.config.get_text_config(decoder=True), capacity)

    def _release_cache(self, cache) -> None:
        if isinstance(cache, StaticCache):
            with self._pool_guard:
                self._static_pool.setdefault(cache.layers[0].max_cache_len, []).append(cache)

    def _decode_forward(self):
        """The forward of a decode step, called under the model's lock: `causal_lm_forward`, compiled with
        `compile=True` (compiled on first use)."""
        if not self.compile:
            return self.model.causal_lm_forward
        if self._compiled_forward is None:
            if self.model.device.type == "cuda":
                self._compiled_forward = torch.compile(self.model.causal_lm_forward, mode="reduce-overhead")
            else:
                self._compiled_forward = torch.compile(self.model.causal_lm_forward, dynamic=True)
        return self._compiled_forward

    def _step_forward(self, **inputs):
        """One decode step's forward (`_decode_forward`), for the batched loop."""
        return self._decode_forward()(**inputs)

    # -- generation --------------------------------------------------------------------------------------------------
    def check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Refuse a prompt plus answer longer than the model's position limit (`ValueError` with the numbers)."""
        limit = self.model.max_positions
        if limit is not None and prompt_tokens + max_new_tokens > limit:
            raise ValueError(
                f"The prompt has {prompt_tokens} tokens and up to `max_new_tokens`={max_new_tokens} more were asked "
                f"for, but the model handles at most {limit} positions. Shorten the prompt or lower max_new_tokens."
            )

    def stream(
        self, plan: PromptPlan, options: GenerationOptions | None = None, result: GenerationResult | None = None
    ) -> GenerationStream:
        """Compose the resolved prompt `plan` (before this returns) and return a `GenerationStream` of text deltas.

        `result` (e.g. carrying `doc_ids`) is filled in and becomes the stream's `result`."""
        options = GenerationOptions() if options is None else options
        result = GenerationResult() if result is None else result
        prompt_tokens = plan.num_tokens
        self.check_length(prompt_tokens, options.max_new_tokens)
        rotary = self.rotary_emb if plan.is_cached else None
        with torch.inference_mode():  # a pooled static cache holds inference tensors: reset it in this mode
            cache = self._new_cache(prompt_tokens + options.max_new_tokens)
            try:
                composition = compose(self.model, plan, cache, rotary, self.model.device)
            except BaseException:
                self._release_cache(cache)
                raise
        result.prompt_tokens, result.cache_read_tokens = composition.position, composition.cache_read
        result.recomputed_tokens = composition.recomputed
        if self.batch is not None:  # decoded with the other streams, one forward pass a step
            last = composition.logits[0, -1]
            tokens = self.batch.submit(composition.cache, last, composition.position, options, result)
        else:
            tokens = self._tokens(composition.cache, composition.logits[0, -1], composition.position, options, result)
        return GenerationStream(self._text(tokens, options.stop, result), result)

    @torch.inference_mode()
    def continuation_logits(self, plan: PromptPlan, continuation: list[int]) -> torch.Tensor:
        """The logits `[1, n + 1, vocab]` predicting each of the `n` tokens of `continuation` after the resolved prompt
        `plan`, and the token after it (teacher forcing, e.g. to compare two prompts' distributions along one
        answer)."""
        rotary = self.rotary_emb if plan.is_cached else None
        with self.model.forward_lock:
            return continuation_logits(self.model, plan, continuation, rotary, self.model.device)

    def generate(
        self, plan: PromptPlan, options: GenerationOptions | None = None, result: GenerationResult | None = None
    ) -> GenerationResult:
        """`stream(...)` run to its end."""
        return self.stream(plan, options, result).consume()

    def _tokens(self, cache, logits, position: int, options: GenerationOptions, result: GenerationResult):
        generator = None
        if options.seed is not None:
            generator = torch.Generator(device=logits.device).manual_seed(options.seed)
        forward = self._decode_forward()
        device = self.model.device
        try:
            with torch.inference_mode():
                for step in range(options.max_new_tokens):
                    token = _pick(logits, options.temperature, options.top_p, generator)
                    if token in self.eos_ids and not options.ignore_eos:
                        result.finish_reason = "stop"
                        return
                    yield token
                    if step + 1 == options.max_new_tokens:
                        return
                    with self.model.forward_lock:
                        logits = forward(
                            input_ids=torch.tensor([[token]], device=device),
                            position_ids=torch.tensor([[position]], device=device),
                            cache=cache,
                            use_cache=True,
                            logits_to_keep=1,
                        ).logits[0, -1]
                    position += 1
        finally:
            self._release_cache(cache)

    def _text(self, tokens, stop: list[str], result: GenerationResult) -> Iterator[str]:
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
            tokens.close()
