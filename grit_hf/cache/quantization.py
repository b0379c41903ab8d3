"""Cached states kept in 8 bits: int8 with a float32 scale and offset per (layer, head, channel), the few outlier
positions (the first one included) kept as computed.

`quantize_states(states)` turns `KVStates` into `QuantizedKVStates`, which hold int8 keys and values with their scales
and offsets and hand back dequantized tensors in the model's dtype from `layers()`, so everything that reads states
(composition, re-rotation of keys, the cache loss) works unchanged; only the stored bytes shrink. The stores take
`quantize="int8"` (`MemoryKVStore`, `DiskKVStore`).

The format, per layer, head, and for keys and values alike:

- `dense_row_count(seq)` positions (`DENSE_ROWS + ceil(DENSE_FRACTION * seq)`) stay in the model's dtype: the first
  position (the attention sink: later tokens put much of their attention there, so its error reaches every answer;
  KVQuant and IntactKV keep it exact for the same reason) and the positions that stray farthest from the channel
  medians (largest deviation over the channels, in units of each channel's mean deviation). A few such outlier tokens
  otherwise widen the ranges of every channel;
- every position is int8, asymmetric per head and channel over the other positions:
  `scale = (max - min) / 255`, `x ~= int8 * scale + offset` with `offset = min + 128 * scale`, an error of at most
  `scale / 2`. Per-channel ranges suit keys, whose outliers sit in fixed channels (KIVI, Liu et al. 2024), and cost no
  bytes per token, so every further token takes half the bytes of bf16 (a quarter of fp32), plus the outlier rows
  (1% of the tokens) and a fixed block per entry (scales, offsets, `DENSE_ROWS` rows).

Chosen on the default model (man-page questions 0..99, causal states, greedy 32-token answers; bf16 storage of the
same states: RMS change of the next-token logits 0.010, 40/40 answers of questions 0..39 identical). By RMS change:
symmetric per-channel int8 0.067, the same with the first position kept 0.027, asymmetric with it kept 0.018.
Per-token scales after a Hadamard rotation reached 0.019 but cost 6% more bytes per token; fp8 (e4m3) with
per-channel scales changed more answers than symmetric int8. By identical answers (questions 0..39): asymmetric with
the first position kept 36/40 (values caused most changes: 37/40 with exact keys, 39/40 with exact values); keeping
8 more outlier rows 39/40, 32 more 40/40; per-token value ranges 38/40. `benchmarks/kv_quantization.py` measures the
format on other questions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import DynamicCache

from .states import KVStates, cache_from_layers

__all__ = [
    "Quantization",
    "QUANTIZATIONS",
    "DENSE_ROWS",
    "DENSE_FRACTION",
    "dense_row_count",
    "QuantizedTensor",
    "QuantizedKVStates",
    "quantize_states",
    "quantize_tensor",
    "check_quantize",
    "parse_dtype",
]

Quantization = Literal["int8"]
QUANTIZATIONS = ("int8",)
DENSE_ROWS = 8
"""Positions kept in the model's dtype in every entry (the first one and the strongest outliers)..."""
DENSE_FRACTION = 0.01
"""...and this share of the positions more (outliers)."""
_STEPS = 255  # int8: 256 levels, -128..127


def check_quantize(quantize: str | None) -> str | None:
    """`quantize` if it is `None` or a known format, else `ValueError`."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"Invalid `quantize`: {quantize!r}. Valid choices are: None, {', '.join(QUANTIZATIONS)}.")
    return quantize


def parse_dtype(name: str) -> torch.dtype:
    """The floating-point torch dtype named `name` (`"torch.float32"` or `"float32"`); `ValueError` otherwise."""
    dtype = getattr(torch, name.removeprefix("torch."), None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name!r} is not a floating-point torch dtype.")
    return dtype


def dense_row_count(seq: int) -> int:
    """How many of `seq` positions an entry keeps in the model's dtype."""
    return min(seq, DENSE_ROWS + math.ceil(DENSE_FRACTION * seq))


@dataclass(frozen=True)
class QuantizedTensor:
    """Keys or values of one layer in 8 bits.

    Attributes:
        dense: `[1, kv_heads, d, head_dim]`, `d` positions per head in the model's dtype.
        data: int8 `[1, kv_heads, seq, head_dim]`, every position (those of `dense` are replaced by it).
        scale, offset: float32 `[1, kv_heads, 1, head_dim]`: `data * scale + offset` approximates the positions.
        positions: int32 `[1, kv_heads, d]`, the positions of `dense`'s rows (position 0 among them).
    """

    dense: torch.Tensor
    data: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    positions: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.dense, self.data, self.scale, self.offset, self.positions

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def dequantize(self) -> torch.Tensor:
        """The `[1, kv_heads, seq, head_dim]` tensor in the dtype of `dense` (a new tensor; computed in float32)."""
        dense, data = self.dense, self.data
        if dense.dtype == torch.float32:
            out = torch.mul(data, self.scale)  # int8 x float32 -> float32
            out.add_(self.offset)
        else:
            out = torch.addcmul(self.offset, data.float(), self.scale).to(dense.dtype)  # one rounding
        rows = self.positions.long().unsqueeze(-1).expand(-1, -1, -1, data.shape[-1])
        return out.scatter_(-2, rows, dense)


def _outlier_positions(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """`[1, heads, count]` positions per head, sorted: position 0 and those whose largest deviation from the channel
    medians (in units of the channel's mean absolute deviation) is largest."""
    deviation = (tensor - tensor.median(dim=-2, keepdim=True).values).abs()
    score = (deviation / deviation.mean(dim=-2, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)).amax(-1)
    score[..., 0] = float("inf")
    return score.topk(count, dim=-1).indices.sort(dim=-1).values


def quantize_tensor(tensor: torch.Tensor, dense_rows: int | None = None) -> QuantizedTensor:
    """`tensor` `[1, kv_heads, seq, head_dim]` in 8 bits: `dense_rows` positions per head (default
    `dense_row_count(seq)`; position 0 first among them) as they are, every position int8 with a scale and offset per
    head and channel over the other positions (a constant channel gets scale 0 and is exact)."""
    tensor = tensor.detach()
    seq, head_dim = tensor.shape[-2], tensor.shape[-1]
    count = dense_row_count(seq) if dense_rows is None else min(dense_rows, seq)
    values = tensor.float()
    positions = _outlier_positions(values, count) if count else values.new_zeros((*values.shape[:2], 0), dtype=int)
    dense = tensor.gather(-2, positions.unsqueeze(-1).expand(-1, -1, -1, head_dim))
    if count < seq:
        kept = torch.zeros(values.shape[:3], dtype=torch.bool, device=values.device).scatter_(-1, positions, True)
        kept = kept.unsqueeze(-1)
        low = values.masked_fill(kept, float("inf")).amin(dim=-2, keepdim=True)
        high = values.masked_fill(kept, float("-inf")).amax(dim=-2, keepdim=True)
    else:
        low = high = values.new_zeros((*values.shape[:2], 1, head_dim))
    scale = (high - low) / _STEPS
    steps = torch.round((values.clamp(low, high) - low) / scale.clamp_min(torch.finfo(torch.float32).tiny))
    offset = low + 128 * scale
    return QuantizedTensor(dense, (steps.clamp_(0, _STEPS) - 128).to(torch.int8), scale, offset, positions.int())


class QuantizedKVStates(KVStates):
    """`KVStates` kept in 8 bits (see the module docstring).

    `layers()` dequantizes on every call into new tensors of the model's dtype (nothing dequantized is kept, so the
    states take `nbytes` in memory); `cache` builds a `DynamicCache` of them. Immutable like all states.

    Attributes:
        input_ids, is_causal: as for `KVStates`.
        quantized: one `(keys, values)` pair of `QuantizedTensor`s per layer.
        dtype: the dtype the states were computed in and are dequantized to.
    """

    storage = "int8"

    def __init__(
        self,
        input_ids: torch.Tensor,
        quantized: list[tuple[QuantizedTensor, QuantizedTensor]],
        is_causal: bool,
        dtype: torch.dtype,
    ):
        self.input_ids = input_ids
        self.quantized = list(quantized)
        self.is_causal = is_causal
        self.dtype = dtype

    def __repr__(self) -> str:
        return (
            f"QuantizedKVStates(tokens={self.num_tokens}, layers={len(self.quantized)}, is_causal={self.is_causal}, "
            f"dtype={self.dtype}, storage='int8')"
        )

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @property
    def cache(self) -> DynamicCache:  # type: ignore[override]
        """A `DynamicCache` of the dequantized states (built on each access)."""
        return cache_from_layers(self.layers())

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`[(keys, values), ...]` dequantized to the model's dtype, each `[1, kv_heads, seq, head_dim]` (new tensors)."""
        return [(keys.dequantize(), values.dequantize()) for keys, values in self.quantized]

    @property
    def nbytes(self) -> int:
        """Bytes of the int8 states, their scales and offsets and the dense rows with their positions (what they take
        in a store)."""
        return sum(keys.nbytes + values.nbytes for keys, values in self.quantized)


def quantize_states(
    states: KVStates, quantize: Quantization = "int8", dense_rows: int | None = None
) -> QuantizedKVStates:
    """`states` in 8 bits (`QuantizedKVStates`); states already in 8 bits are returned as they are.

    Args:
        states: the states (any dtype; dequantized back to it).
        quantize: the format, `"int8"`.
        dense_rows: positions per head kept as they are (default `dense_row_count(seq)`: position 0 and outliers).
    """
    if check_quantize(quantize) is None:
        raise ValueError("`quantize` must name a format, e.g. 'int8'.")
    if dense_rows is not None and (not isinstance(dense_rows, int) or isinstance(dense_rows, bool) or dense_rows < 0):
        raise ValueError(f"`dense_rows` must be None or a non-negative int, got {dense_rows!r}.")
    if isinstance(states, QuantizedKVStates):
        return states
    layers = states.layers()
    if not layers:
        raise ValueError("`states` hold no layers.")
    quantized = [(quantize_tensor(k, dense_rows), quantize_tensor(v, dense_rows)) for k, v in layers]
    return QuantizedKVStates(states.input_ids, quantized, states.is_causal, layers[0][0].dtype)
