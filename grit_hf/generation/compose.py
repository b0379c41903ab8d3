"""Composing a prompt's cache from its parts: cached states placed at their position, text run on top.

This is the one code path that puts cached segments together, shared by inference (`grit_hf.rag.decoding`, under
`torch.inference_mode`) and by the trainer's cache loss (with gradients flowing into the states). Each cached part's
keys are re-rotated to the offset the part takes in the prompt (`grit_hf.cache.positions`), so several documents sit
at correct, consecutive positions; each text part runs on top of everything before it; stored tensors are never
written to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from ..cache.buffers import append_states
from ..cache.positions import shift_layers
from .segments import Part

__all__ = ["Composition", "close_with_text", "compose", "continuation_logits"]


@dataclass
class Composition:
    """The outcome of `compose`.

    Attributes:
        cache: the cache holding every position of the prompt.
        logits: the logits `[batch, logits_to_keep, vocab]` of the last text run, or `None` if the prompt ended
            cached.
        position: the number of positions in the cache (the next token's position).
        cache_read: positions taken from cached states instead of being computed.
    """

    cache: object
    logits: torch.Tensor | None
    position: int
    cache_read: int


def close_with_text(parts: list[Part]) -> list[Part]:
    """`parts` with the last token run as text if the prompt ends with a cached part (the next-token logits need one
    token to be run); the cached part keeps its other positions."""
    if not parts or parts[-1].states is None:
        return parts
    last = parts[-1]
    head = [] if last.num_tokens <= 1 else [Part(last.ids, last.states, last.start, last.stop - 1)]
    return [*parts[:-1], *head, Part(last.token_slice(last.stop - 1, last.stop))]


def _as_rows(ids: list[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Token ids as a `[batch, n]` tensor (a list is one row)."""
    if isinstance(ids, torch.Tensor):
        return ids.to(device=device, dtype=torch.long)
    return torch.tensor([ids], dtype=torch.long, device=device)


def compose(
    forward: Callable,
    parts: list[Part],
    cache,
    rotary_emb: nn.Module | None,
    device: torch.device,
    logits_to_keep: int = 1,
) -> Composition:
    """Write the prompt `parts` into `cache` and return the logits of the last text run.

    Args:
        forward: the causal LM forward (`model` or `model.forward`), called with `input_ids`, `position_ids`, `cache`,
            `use_cache=True` and `logits_to_keep`.
        parts: the prompt (see `grit_hf.rag.segments.resolve_segments`); consecutive text parts run in one pass. A
            batch of prompts of the same shape is composed at once from batched parts (`Part.ids` as tensors).
        cache: an empty cache (e.g. `grit_hf.cache.buffers.new_cache(...)` or a `DynamicCache`).
        rotary_emb: the model's rotary embedding (`find_rotary_embedding`); needed only if a part is cached.
        device: where the states and inputs go.
        logits_to_keep: how many final positions of the last text run get logits (1 to decode; the answer's
            length plus one for a training loss).
    """
    position, cache_read, pending, logits = 0, 0, [], None
    for index, part in enumerate(parts):
        if part.states is None:
            pending.append(_as_rows(part.ids, device))
            if index + 1 < len(parts) and parts[index + 1].states is None:
                continue
            input_ids = torch.cat(pending, dim=1)
            length = input_ids.shape[1]
            positions = torch.arange(position, position + length, device=device).expand(input_ids.shape[0], -1)
            outputs = forward(
                input_ids=input_ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=logits_to_keep
            )
            logits = outputs.logits
            position += length
            pending = []
        else:
            stop = part.stop
            layers = [(k[..., :stop, :].to(device), v[..., :stop, :].to(device)) for k, v in part.states.layers()]
            if rotary_emb is None:
                raise ValueError("`rotary_emb` is required to place cached states.")
            cache = append_states(cache, shift_layers(layers, position - part.start, rotary_emb, part.start))
            position += part.num_tokens
            cache_read += part.num_tokens
    return Composition(cache, logits, position, cache_read)


def continuation_logits(
    forward: Callable,
    parts: list[Part],
    continuation: list[int] | torch.Tensor,
    rotary_emb: nn.Module | None,
    device: torch.device,
) -> torch.Tensor:
    """The logits `[batch, n + 1, vocab]` that predict each of the `n` tokens of `continuation` after the prompt
    `parts`, and the token after it (teacher forcing, e.g. an answer and its end token); `continuation` is a list of
    ids, or `[batch, n]` ids for batched parts. Used by the cache loss (with gradients) and by the caching-fidelity
    evaluation."""
    n = continuation.shape[-1] if isinstance(continuation, torch.Tensor) else len(continuation)
    parts = [*close_with_text(parts), Part(continuation)] if n else close_with_text(parts)
    composition = compose(forward, parts, DynamicCache(), rotary_emb, device, logits_to_keep=n + 1)
    return composition.logits[:, -(n + 1) :]
