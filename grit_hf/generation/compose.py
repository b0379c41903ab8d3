"""Composing a prompt plan into one cache: cached states placed at their positions, text run on top, and the
positions chosen for selective recomputation computed again causally.

This is the one code path that puts a prompt together, shared by inference (`Generator`, under
`torch.inference_mode`) and by the trainer's cache loss (with gradients flowing into the states). Each cached item's
keys are re-rotated to the offset it takes in the prompt (`grit_hf.cache.positions`), so several documents sit at
correct, consecutive positions; stored tensors are never written to.

Without recomputation, each run of text items goes through the model on top of everything before it. With
recomputation (`grit_hf.generation.recompute`), the cached items keep only their other positions, and one forward
pass runs every text token and every recomputed position at its own position, under an explicit mask: a position
attends to the positions up to itself, cached or computed. Attention is a sum over keys that carry their positions
in their rotation, so the cache may hold them in any order: decoding continues from it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, StaticCache

from ..cache.buffers import append_states
from ..cache.positions import shift_layers
from .plan import Cached, PlanItem, PromptPlan, Tokens
from .recompute import choose_positions, part_batch

__all__ = ["Composition", "close_with_text", "compose", "continuation_logits"]


@dataclass
class Composition:
    """The outcome of `compose`.

    Attributes:
        cache: the cache holding every position of the prompt.
        logits: the logits `[batch, logits_to_keep, vocab]` of the last text token(s).
        position: the number of positions in the cache (the next token's position).
        cache_read: positions taken from cached states instead of being computed.
        recomputed: positions of cached items computed again (selective recomputation).
    """

    cache: object
    logits: torch.Tensor | None
    position: int
    cache_read: int
    recomputed: int = 0


def close_with_text(items: list[PlanItem]) -> list[PlanItem]:
    """`items` with the last token run as text if the prompt ends with a cached item (the next-token logits need one
    token to be run); the cached item keeps its other positions."""
    if not items or not isinstance(items[-1], Cached):
        return items
    last = items[-1]
    own = None if last.recompute is None else [p for p in last.recompute if p < last.num_tokens - 1]
    head = [] if last.num_tokens <= 1 else [Cached(last.doc_id, last.states, own, last.start, last.stop - 1)]
    return [*items[:-1], *head, Cached(last.doc_id, last.states, None, last.stop - 1, last.stop).as_tokens()]


def _as_rows(ids: list[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Token ids as a `[batch, n]` tensor (a list is one row)."""
    if isinstance(ids, torch.Tensor):
        return (ids if ids.dim() == 2 else ids[None]).to(device=device, dtype=torch.long)
    return torch.tensor([ids], dtype=torch.long, device=device)


def _placed(item: Cached, position: int, rotary_emb: nn.Module | None, device) -> list[tuple[torch.Tensor, ...]]:
    """The item's `(keys, values)` per layer from `start` to `stop`, keys re-rotated to start at `position`."""
    if rotary_emb is None:
        raise ValueError("`rotary_emb` is required to place cached states.")
    stop = item.stop
    layers = [(k[..., :stop, :].to(device), v[..., :stop, :].to(device)) for k, v in item.states.layers()]
    return shift_layers(layers, position - item.start, rotary_emb, item.start)


def compose(
    forward: Callable,
    plan: PromptPlan,
    cache,
    rotary_emb: nn.Module | None,
    device: torch.device,
    logits_to_keep: int = 1,
) -> Composition:
    """Write a resolved `plan` into `cache` and return the logits of its last text token(s).

    Args:
        forward: the causal LM forward (`model` or `model.forward`), called with `input_ids`, `position_ids`, `cache`,
            `use_cache=True`, `logits_to_keep` (and a 4-D `attention_mask` when positions are recomputed).
        plan: the prompt (`PromptPlan.resolve`d); a prompt ending with a cached item gets its last token run
            (`close_with_text`). A batch of plans of the same shape is composed at once from batched items (ids as
            `[batch, n]` tensors, states with the batch).
        cache: an empty cache (e.g. `grit_hf.cache.buffers.new_cache(...)` or a `DynamicCache`).
        rotary_emb: the model's rotary embedding (`find_rotary_embedding`); needed only if an item is cached.
        device: where the states and inputs go.
        logits_to_keep: how many final positions get logits (1 to decode; the answer's length plus one for a loss).
    """
    items = close_with_text(plan.items)
    chosen = choose_positions(forward, items, plan.recompute, device)
    if not any(positions is not None and positions.numel() for positions in chosen):
        return _compose_in_order(forward, items, cache, rotary_emb, device, logits_to_keep)
    return _compose_with_recompute(forward, items, chosen, cache, rotary_emb, device, logits_to_keep)


def _compose_in_order(forward, items, cache, rotary_emb, device, logits_to_keep) -> Composition:
    """Cached items appended, each run of text items run on top of everything before it."""
    position, cache_read, pending, logits = 0, 0, [], None
    for index, item in enumerate(items):
        if isinstance(item, Tokens):
            pending.append(_as_rows(item.ids, device))
            if index + 1 < len(items) and isinstance(items[index + 1], Tokens):
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
            cache = append_states(cache, _placed(item, position, rotary_emb, device))
            position += item.num_tokens
            cache_read += item.num_tokens
    return Composition(cache, logits, position, cache_read)


def _compose_with_recompute(forward, items, chosen, cache, rotary_emb, device, logits_to_keep) -> Composition:
    """Cached items without their chosen positions appended; every text token and chosen position run in one forward
    pass under a mask by position (see the module docstring)."""
    position, cache_read, recomputed = 0, 0, 0
    run_ids, run_positions, cached_positions = [], [], []
    for item, positions in zip(items, chosen):
        n = item.num_tokens
        if isinstance(item, Tokens):
            ids = _as_rows(item.ids, device)
            run_ids.append(ids)
            run_positions.append(torch.arange(position, position + n, device=device).expand(ids.shape[0], -1))
        else:
            batch = part_batch(item)
            positions = torch.empty(batch, 0, dtype=torch.long) if positions is None else positions
            keep = _complement(positions, n).to(device)
            layers = [(_gather(k, keep), _gather(v, keep)) for k, v in _placed(item, position, rotary_emb, device)]
            if keep.shape[1]:
                cache = append_states(cache, layers)
            cached_positions.append(position + keep)
            if positions.shape[1]:
                ids = _as_rows(item.as_tokens().ids, device).expand(batch, -1)
                run_ids.append(ids.gather(1, positions.to(device)))
                run_positions.append(position + positions.to(device))
            cache_read += keep.shape[1]
            recomputed += positions.shape[1]
        position += n
    batch = max(ids.shape[0] for ids in run_ids)
    input_ids = torch.cat([ids.expand(batch, -1) for ids in run_ids], dim=1)
    query_positions = torch.cat([p.expand(batch, -1) for p in run_positions], dim=1)
    key_positions = torch.cat([*(p.expand(batch, -1) for p in cached_positions), query_positions], dim=1)
    mask = key_positions[:, None, :] <= query_positions[:, :, None]  # [batch, queries, keys]
    if isinstance(cache, StaticCache):  # its keys are the whole buffer: the empty slots are never attended
        free = cache.get_max_cache_shape() - mask.shape[-1]
        mask = torch.cat([mask, mask.new_zeros(*mask.shape[:2], free)], dim=-1)
    outputs = forward(
        input_ids=input_ids,
        position_ids=query_positions,
        cache=cache,
        attention_mask=_attention_mask(forward, mask[:, None]),
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return Composition(cache, outputs.logits, position, cache_read, recomputed)


def _complement(positions: torch.Tensor, length: int) -> torch.Tensor:
    """The positions `[batch, length - k]` of `0..length-1` not in the sorted rows of `positions` `[batch, k]`."""
    keep = torch.ones(positions.shape[0], length, dtype=torch.bool)
    keep.scatter_(1, positions.cpu(), False)
    return torch.arange(length).expand(positions.shape[0], -1)[keep].reshape(positions.shape[0], -1)


def _gather(states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`states` `[batch, heads, n, dim]` at the positions `keep` `[batch, m]` (per row)."""
    index = keep[:, None, :, None].expand(states.shape[0], states.shape[1], -1, states.shape[3])
    return states.expand(keep.shape[0], -1, -1, -1).gather(2, index)


def _attention_mask(forward: Callable, allowed: torch.Tensor) -> torch.Tensor:
    """The 4-D mask in the form the model's attention takes: boolean for sdpa (and grit-hf's `grit_sdpa`), additive
    for eager attention (which adds the mask to its scores). Flash attention takes no such mask."""
    model = getattr(forward, "__self__", forward)
    model = getattr(model, "module", model)  # a DDP-wrapped model
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if "flash" in implementation:
        raise ValueError(
            f"Selective recomputation needs an attention that takes a mask; {implementation!r} does not. Load the "
            "model with attn_implementation='sdpa' or 'eager'."
        )
    if implementation == "eager":
        dtype = next(model.parameters()).dtype if isinstance(model, nn.Module) else torch.float32
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed


def continuation_logits(
    forward: Callable,
    plan: PromptPlan,
    continuation: list[int] | torch.Tensor,
    rotary_emb: nn.Module | None,
    device: torch.device,
) -> torch.Tensor:
    """The logits `[batch, n + 1, vocab]` that predict each of the `n` tokens of `continuation` after the resolved
    `plan`, and the token after it (teacher forcing, e.g. an answer and its end token); `continuation` is a list of
    ids, or `[batch, n]` ids for batched plans. Used by the cache loss (with gradients) and by the caching-fidelity
    evaluation."""
    n = continuation.shape[-1] if isinstance(continuation, torch.Tensor) else len(continuation)
    items = [*close_with_text(plan.items), Tokens(continuation)] if n else plan.items
    composition = compose(forward, PromptPlan(items, plan.recompute), DynamicCache(), rotary_emb, device, n + 1)
    return composition.logits[:, -(n + 1) :]
