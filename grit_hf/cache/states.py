"""Key/value states of one embedded text, as handed back by `encode(..., return_states=True)`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = ["KVStates", "split_batch_cache", "cache_from_layers"]


@dataclass
class KVStates:
    """The key/value states a forward pass computed for one text.

    Attributes:
        input_ids: `[seq]` token ids the states were computed from (prefix + text, no padding).
        cache: a batch-1 `DynamicCache` of `seq` positions starting at position 0.
        is_causal: whether the states were computed with causal attention (exact for continuation) or
            bidirectional attention (the GRIT embedding pass; an approximation for continuation).

    `storage` is `"dense"`: the states are kept as computed (`grit_hf.cache.quantization.QuantizedKVStates` keeps
    them in 8 bits).
    """

    input_ids: torch.Tensor
    cache: DynamicCache
    is_causal: bool

    storage = "dense"  # a class attribute, not a field

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[-1])

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`[(keys, values), ...]`, one pair per layer, each `[1, kv_heads, seq, head_dim]`."""
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers())


def split_batch_cache(
    cache: DynamicCache, input_ids: torch.Tensor, lengths: list[int], is_causal: bool
) -> list[KVStates]:
    """Split a right-padded batch cache into one unpadded `KVStates` per row (copies, so the batch can be freed)."""
    per_text = []
    for row, length in enumerate(lengths):
        layers = [
            (layer.keys[row : row + 1, :, :length].clone(), layer.values[row : row + 1, :, :length].clone())
            for layer in cache.layers
        ]
        per_text.append(KVStates(input_ids[row, :length].clone(), DynamicCache(layers), is_causal))
    return per_text


def cache_from_layers(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A `DynamicCache` whose layers hold the given tensors themselves (no copy, unlike `DynamicCache(layers)`).

    Safe to hand to generation: `DynamicLayer.update` concatenates into new tensors and `crop` slices, so the given
    tensors are never written to.
    """
    cache = DynamicCache()
    for keys, values in layers:
        layer = DynamicLayer()
        layer.dtype, layer.device = keys.dtype, keys.device
        layer.keys, layer.values = keys, values
        layer.is_initialized = True
        cache.layers.append(layer)
    return cache
