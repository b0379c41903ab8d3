"""Caches that a composed RAG prompt is written into and decoded from.

- `"preallocated"` (default): a `DynamicCache` whose layers write into one buffer sized for the prompt plus the
  answer. Appending copies only the new states and attention reads exactly the filled part, so a decode step costs
  no copy of the whole cache (transformers' `DynamicLayer` concatenates, i.e. copies everything, at every token: on
  CPU with a 4000-token cache that doubled the time per token).
- `"dynamic"`: transformers' `DynamicCache`; a lone cached part at the start is used without any copy.
- `"static"`: transformers' `StaticCache` (fixed shapes, for `torch.compile` on CUDA).
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer

from .states import cache_from_layers

__all__ = ["DecodeCache", "DECODE_CACHES", "PreallocatedLayer", "new_cache", "append_states", "static_cache_size"]

DecodeCache = Literal["preallocated", "dynamic", "static"]
DECODE_CACHES = ("preallocated", "dynamic", "static")


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` that writes into a buffer of `capacity` positions (doubled if ever exceeded); `keys` and
    `values` are views of the filled part."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._keys = key_states.new_empty(*key_states.shape[:2], self.capacity, key_states.shape[-1])
        self._values = value_states.new_empty(*value_states.shape[:2], self.capacity, value_states.shape[-1])
        self._set_views()
        self.is_initialized = True

    def _set_views(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            capacity = max(end, 2 * self._keys.shape[-2])
            keys = self._keys.new_empty(*self._keys.shape[:2], capacity, self._keys.shape[-1])
            values = self._values.new_empty(*self._values.shape[:2], capacity, self._values.shape[-1])
            keys[:, :, : self.length] = self._keys[:, :, : self.length]
            values[:, :, : self.length] = self._values[:, :, : self.length]
            self._keys, self._values = keys, values
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._set_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"`crop` takes a negative number of tokens to remove, got {tokens_to_remove}.")
        self.length = max(0, self.length + tokens_to_remove)
        if self.is_initialized:
            self._set_views()


def static_cache_size(capacity: int) -> int:
    """Static caches come in sizes of multiples of 512 positions (fewer shapes to compile for)."""
    return max(1, -(-capacity // 512)) * 512


def new_cache(kind: str, config, capacity: int):
    """An empty cache of `kind` for `capacity` positions of a model with (text) config `config`."""
    if kind not in DECODE_CACHES:
        raise ValueError(f"Invalid `decode_cache`: {kind!r}. Valid choices are: {DECODE_CACHES}.")
    if kind == "static":
        return StaticCache(config=config, max_cache_len=static_cache_size(capacity))
    cache = DynamicCache()
    if kind == "preallocated":
        cache.layers.extend(PreallocatedLayer(capacity) for _ in range(config.num_hidden_layers))
    return cache


def append_states(cache, layers: list[tuple[torch.Tensor, torch.Tensor]]):
    """Append per-layer `(keys, values)` to `cache`; returns the cache (a new one when `cache` is an empty
    `DynamicCache`, which then holds the given tensors without a copy)."""
    if (
        type(cache) is DynamicCache
        and cache.get_seq_length() == 0
        and not any(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
    ):
        return cache_from_layers(layers)
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache
