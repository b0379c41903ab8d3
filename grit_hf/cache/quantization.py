"""Cached states kept in 8 bits: int8 with a float32 scale and offset per (layer, head, channel), the first position
kept as computed.

`quantize_states(states)` turns `KVStates` into `QuantizedKVStates`, which hold int8 keys and values with their scales
and offsets and hand back dequantized tensors in the model's dtype from `layers()`, so everything that reads states
(composition, re-rotation of keys, the cache loss) works unchanged; only the stored bytes shrink. The stores take
`quantize="int8"` (`MemoryKVStore`, `DiskKVStore`).

The format, per layer and for keys and values alike:

- positions `0..DENSE_POSITIONS-1` stay in the model's dtype. The first position is the attention sink: later tokens
  put much of their attention there, so its error reaches every answer (KVQuant and IntactKV keep it exact for the
  same reason);
- the other positions are int8, asymmetric per head and channel over those positions:
  `scale = (max - min) / 255`, `x ~= int8 * scale + offset` with `offset = min + 128 * scale`, an error of at most
  `scale / 2`. Per-channel ranges suit keys, whose outliers sit in fixed channels (KIVI, Liu et al. 2024), and cost no
  bytes per token, so every further token takes exactly half the bytes of bf16 (a quarter of fp32); the scales,
  offsets and first position are a fixed block per entry.

Chosen on the default model by the RMS change of the next-token logits along greedy 32-token answers (man-page
questions 0..99, causal states; bf16 storage of the same states: 0.010): symmetric per-channel int8 0.067, the same
with the first position kept 0.027, asymmetric with it kept 0.018 (this format). Per-token scales after a Hadamard
rotation reached 0.019 but cost 6% more bytes per token; fp8 (e4m3) with per-channel scales changed more answers than
symmetric int8. With bidirectional states (questions 0..39) asymmetric ranges matter most (0.037 -> 0.023; keeping the
first position changes little there). `benchmarks/kv_quantization.py` measures the format on other questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import DynamicCache

from .states import KVStates, cache_from_layers

__all__ = [
    "Quantization",
    "QUANTIZATIONS",
    "DENSE_POSITIONS",
    "QuantizedTensor",
    "QuantizedKVStates",
    "quantize_states",
    "quantize_tensor",
    "check_quantize",
    "parse_dtype",
]

Quantization = Literal["int8"]
QUANTIZATIONS = ("int8",)
DENSE_POSITIONS = 1
"""Leading positions kept in the model's dtype (the attention sink)."""
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


@dataclass(frozen=True)
class QuantizedTensor:
    """Keys or values of one layer in 8 bits.

    Attributes:
        dense: `[1, kv_heads, d, head_dim]`, the first `d` positions in the model's dtype.
        data: int8 `[1, kv_heads, seq - d, head_dim]`, the other positions.
        scale, offset: float32 `[1, kv_heads, 1, head_dim]`: `data * scale + offset` approximates them.
    """

    dense: torch.Tensor
    data: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.dense, self.data, self.scale, self.offset

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def dequantize(self) -> torch.Tensor:
        """The `[1, kv_heads, seq, head_dim]` tensor in the dtype of `dense` (a new tensor; computed in float32)."""
        dense, data = self.dense, self.data
        out = torch.empty(
            (*data.shape[:2], dense.shape[-2] + data.shape[-2], data.shape[-1]), dtype=dense.dtype, device=data.device
        )
        out[..., : dense.shape[-2], :] = dense
        rest = out[..., dense.shape[-2] :, :]
        if out.dtype == torch.float32:
            torch.mul(data, self.scale, out=rest)  # int8 x float32 -> float32, written in place
            rest.add_(self.offset)
        else:
            rest.copy_(torch.addcmul(self.offset, data.float(), self.scale))  # one rounding to the model's dtype
        return out


def quantize_tensor(tensor: torch.Tensor, dense_positions: int = DENSE_POSITIONS) -> QuantizedTensor:
    """`tensor` `[1, kv_heads, seq, head_dim]` in 8 bits: the first `dense_positions` positions as they are, the rest
    int8 with a scale and offset per head and channel (a constant channel gets scale 0 and is exact)."""
    tensor = tensor.detach()
    dense = tensor[..., :dense_positions, :].clone()
    rest = tensor[..., dense_positions:, :].float()
    if rest.shape[-2] == 0:
        low = high = rest.new_zeros((*rest.shape[:2], 1, rest.shape[-1]))
    else:
        low, high = rest.amin(dim=-2, keepdim=True), rest.amax(dim=-2, keepdim=True)
    scale = (high - low) / _STEPS
    steps = torch.round((rest - low) / scale.clamp_min(torch.finfo(torch.float32).tiny)).clamp_(0, _STEPS)
    offset = low + 128 * scale
    return QuantizedTensor(dense, (steps - 128).to(torch.int8), scale, offset)


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
        """Bytes of the int8 states, their scales and offsets and the dense first positions (what they take in a
        store)."""
        return sum(keys.nbytes + values.nbytes for keys, values in self.quantized)


def quantize_states(
    states: KVStates, quantize: Quantization = "int8", dense_positions: int = DENSE_POSITIONS
) -> QuantizedKVStates:
    """`states` in 8 bits (`QuantizedKVStates`); states already in 8 bits are returned as they are.

    Args:
        states: the states (any dtype; dequantized back to it).
        quantize: the format, `"int8"`.
        dense_positions: leading positions kept as they are (default `DENSE_POSITIONS`, the attention sink).
    """
    if check_quantize(quantize) is None:
        raise ValueError("`quantize` must name a format, e.g. 'int8'.")
    if not isinstance(dense_positions, int) or isinstance(dense_positions, bool) or dense_positions < 0:
        raise ValueError(f"`dense_positions` must be a non-negative int, got {dense_positions!r}.")
    if isinstance(states, QuantizedKVStates):
        return states
    layers = states.layers()
    if not layers:
        raise ValueError("`states` hold no layers.")
    quantized = [(quantize_tensor(k, dense_positions), quantize_tensor(v, dense_positions)) for k, v in layers]
    return QuantizedKVStates(states.input_ids, quantized, states.is_causal, layers[0][0].dtype)
