"""Selective recomputation of cached states: which positions of a cached part are computed again, causally, on top
of the rest, when a prompt is composed.

States from GRIT's embedding pass are bidirectional: every position of a document attended to the whole document.
Generation continues causally, so answers from those states part from plain RAG's. Computing some positions again,
causally and on top of the cached states (`grit_hf.generation.compose`), brings the prompt closer to plain RAG at a
fraction of its cost. The rules (KV-reuse work starts from causal chunks; here the states are bidirectional):

- `"deviation"` (CacheBlend): the positions whose values deviate most, at an early layer (`layer`, default 1), between
  the cached states and the same layer computed causally over the whole prompt (a pass through the first layers
  only: `deviation_values`). Layer 0's keys and values depend on the token alone, so layer 1 is the first that
  differs;
- `"head"` (EPIC's LegoLink): the first positions of each cached part: its template first (`<|embed|>\\n`), which
  every later position attends to as a sink;
- `"tail"`: the last positions (a check: alone, it leaves the template's states bidirectional);
- `"ends"`: half at the head (the template first), half at the tail: the head repairs the sink every position
  attends to, the tail the positions the question reads first (the default model answered "The Eiffel Tower is
  324.29 meters tall." with `head:0.2` and with `head:0.9`, and "The Eiffel Tower is 330 metres tall.", as plain RAG
  does, with `ends:0.15`);
- `"random"`: a seeded random choice (the control).

`amount` is a fraction of each cached part's positions (a float in [0, 1]) or a count per part (an int). A rule is
written `"RULE:AMOUNT"`, e.g. `"deviation:0.15"` or `"head:8"` (checkpoints record theirs as `cache_recompute`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache

from .plan import RECOMPUTE_RULES, Cached, PlanItem, Recompute

__all__ = ["RECOMPUTE_RULES", "Recompute", "choose_positions", "deviation_values", "part_batch"]


class _LayerReached(Exception):
    """Raised by `_CaptureValues` to end a forward pass once the wanted layer's values are computed."""


class _CaptureValues(DynamicCache):
    """A cache that keeps layer `layer`'s new values and stops the forward pass there: the layers above it are
    never run. transformers' attention layers of every decoder family hand their new keys and values to
    `cache.update`, so this works without per-architecture code (a forward hook on `v_proj` would not: fused
    projections name it otherwise)."""

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer
        self.values: torch.Tensor | None = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx == self.layer:
            self.values = value_states
            raise _LayerReached
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


@torch.no_grad()
def deviation_values(forward: Callable, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The values `[batch, kv_heads, n, head_dim]` of layer `layer` for `input_ids` `[batch, n]` at positions
    `0..n-1`, computed causally (the plain prompt) by running only the layers up to it."""
    capture = _CaptureValues(layer)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    try:
        forward(input_ids=input_ids, position_ids=positions, cache=capture, use_cache=True, logits_to_keep=1)
    except _LayerReached:
        return capture.values
    raise ValueError(f"The model has no layer {layer}: lower the recompute `layer`.")


def part_batch(item: Cached) -> int:
    """The batch of a cached item (1, or the rows of a batch of prompts of the same shape)."""
    ids = item.states.input_ids
    return ids.shape[0] if ids.dim() == 2 else 1


def _rows(item: PlanItem, device) -> torch.Tensor:
    """An item's token ids (a cached item's as text) as a `[batch, n]` tensor."""
    ids = item.as_tokens().ids if isinstance(item, Cached) else item.ids
    if isinstance(ids, torch.Tensor):
        return (ids if ids.dim() == 2 else ids[None]).to(device=device, dtype=torch.long)
    return torch.tensor([ids], dtype=torch.long, device=device)


def choose_positions(
    forward: Callable, items: list[PlanItem], rule: Recompute | None, device
) -> list[torch.Tensor | None]:
    """Per item of a resolved prompt, the positions `[batch, k]` (from the item's `start`) to recompute: a cached
    item's own (`Cached.recompute`), else those `rule` chooses; `None` for text items."""
    deviation = None
    if (
        rule is not None
        and rule.rule == "deviation"
        and any(isinstance(i, Cached) and i.recompute is None for i in items)
    ):
        input_ids = torch.cat([_rows(i, device) for i in items], 1)
        deviation = deviation_values(forward, input_ids, rule.layer)
    chosen, position = [], 0
    for item in items:
        if isinstance(item, Cached):
            n = item.num_tokens
            if item.recompute is not None:
                rows = torch.as_tensor(list(item.recompute), dtype=torch.long).reshape(1, -1)
                if rows.numel() and (rows.min() < 0 or rows.max() >= n):
                    raise ValueError(f"Recompute positions must lie in [0, {n}) for a cached item of {n} positions.")
                chosen.append(rows.unique().reshape(1, -1).expand(part_batch(item), -1))
            elif rule is None:
                chosen.append(None)
            else:
                spread = None
                if deviation is not None:
                    cached = item.states.layers()[rule.layer][1][..., item.start : item.stop, :].to(device)
                    fresh = deviation[..., position : position + n, :]
                    spread = (cached.float() - fresh.float()).pow(2).sum(dim=(1, 3))
                chosen.append(rule.choose(n, part_batch(item), spread))
        else:
            chosen.append(None)
        position += item.num_tokens
    return chosen
