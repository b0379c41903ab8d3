"""What makes a stored entry usable: its structure fits the model, its numbers are finite, and (on disk) its bytes are
the ones written. Every check fails with `CacheEntryError`, which names the entry.

The model's layout (layers, key/value heads, head size, vocabulary) is recorded in the `Fingerprint`; an entry is
checked against the layout of the store it is read from (int8 entries: their int8 tensors and the shapes, dtype and
values of their scales and offsets), so a damaged or foreign entry never reaches generation
(where a wrong shape would crash inside torch, and NaNs or flipped bytes would silently change the answer).
"""

from __future__ import annotations

import zlib

import torch

from .quantization import QuantizedKVStates
from .states import KVStates

__all__ = ["CacheEntryError", "model_layout", "parse_layout", "check_states", "checksum"]


class CacheEntryError(ValueError):
    """A stored entry is malformed, damaged, or does not fit the model. The message names the entry."""


def model_layout(model) -> str:
    """`"layers=L;kv_heads=H;head_dim=D;vocab=V"` of `model`'s decoder, from its config (`""` if the config does not
    say, e.g. for attention variants with other key/value sizes)."""
    config = model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    layers, vocab = getattr(config, "num_hidden_layers", None), getattr(config, "vocab_size", None)
    if not all(isinstance(v, int) and v > 0 for v in (layers, kv_heads, head_dim, vocab)):
        return ""
    return f"layers={layers};kv_heads={kv_heads};head_dim={head_dim};vocab={vocab}"


def parse_layout(layout: str) -> dict[str, int]:
    """The fields of a `model_layout` string (empty for `""`)."""
    if not layout:
        return {}
    return {key: int(value) for key, value in (item.split("=") for item in layout.split(";"))}


def check_states(where: str, states: KVStates, layout: str, dtype: str) -> None:
    """Raise `CacheEntryError` (starting with `where`) unless `states` fit `layout` and `dtype` and are finite."""
    expected = parse_layout(layout)
    ids = states.input_ids
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype != torch.long or ids.numel() == 0:
        raise CacheEntryError(f"{where}: `input_ids` must be a non-empty 1-D int64 tensor.")
    if expected and (int(ids.min()) < 0 or int(ids.max()) >= expected["vocab"]):
        raise CacheEntryError(f"{where}: token ids outside the vocabulary of {expected['vocab']}.")
    quantized = isinstance(states, QuantizedKVStates)
    layers = states.quantized if quantized else states.layers()
    count = len(layers)
    if not count or (expected and count != expected["layers"]):
        want = expected.get("layers", "at least 1")
        raise CacheEntryError(f"{where}: {count} layers of states, the model has {want}.")
    if quantized:
        if dtype and str(states.dtype) != dtype:
            raise CacheEntryError(
                f"{where}: the int8 states dequantize to {states.dtype}, the model computes {dtype}."
            )
        for index, pair in enumerate(layers):
            for name, part in zip(("keys", "values"), pair):
                _check_quantized(where, index, name, part, ids.numel(), expected, states.dtype)
        return
    for index, (keys, values) in enumerate(layers):
        for name, tensor in (("keys", keys), ("values", values)):
            _check_shape(where, index, name, tensor, ids.numel(), expected)
            if dtype and str(tensor.dtype) != dtype:
                raise CacheEntryError(f"{where}: layer {index} {name} are {tensor.dtype}, the model computes {dtype}.")
            # one reduction instead of an elementwise isfinite: NaN/inf propagate into the sum (states are far from
            # fp32's overflow), and it costs one fast pass
            if not torch.isfinite(tensor.sum(dtype=torch.float32)):
                raise CacheEntryError(f"{where}: layer {index} {name} hold NaN or infinite values.")


def _check_shape(
    where: str, index: int, name: str, tensor: torch.Tensor, seq: int, expected: dict[str, int]
) -> tuple[int, int]:
    """`(heads, head_dim)` of a layer's keys or values `[1, heads, seq, head_dim]`, checked against the layout."""
    shape = tuple(tensor.shape)
    if len(shape) != 4 or shape[0] != 1 or shape[2] != seq:
        raise CacheEntryError(
            f"{where}: layer {index} {name} have shape {shape}, expected (1, heads, {seq}, head_dim)."
        )
    if expected and (shape[1], shape[3]) != (expected["kv_heads"], expected["head_dim"]):
        raise CacheEntryError(
            f"{where}: layer {index} {name} have {shape[1]} heads of {shape[3]}, the model "
            f"{expected['kv_heads']} of {expected['head_dim']}."
        )
    return shape[1], shape[3]


def _check_quantized(
    where: str, index: int, name: str, part, seq: int, expected: dict[str, int], dtype: torch.dtype
) -> None:
    """A layer's int8 keys or values (`QuantizedTensor`): int8 data for every position; dense rows of `dtype`, finite,
    at distinct int32 positions in `[0, seq)`; float32 scales and offsets `[1, heads, 1, head_dim]`, finite (scales
    not negative)."""
    tensors = part.tensors()
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise CacheEntryError(f"{where}: layer {index} {name} are not tensors.")
    dense, data, scale, offset, positions = tensors
    heads, head_dim = _check_shape(where, index, name, data, seq, expected)
    rows = positions.shape[-1] if positions.ndim == 3 else -1
    if tuple(positions.shape) != (1, heads, rows) or tuple(dense.shape) != (1, heads, rows, head_dim):
        raise CacheEntryError(
            f"{where}: layer {index} {name} hold dense rows {tuple(dense.shape)} at positions "
            f"{tuple(positions.shape)}, expected (1, {heads}, rows, {head_dim}) at (1, {heads}, rows)."
        )
    if data.dtype != torch.int8:
        raise CacheEntryError(f"{where}: layer {index} {name} are {data.dtype}, int8 states hold int8.")
    if positions.dtype != torch.int32:
        raise CacheEntryError(f"{where}: layer {index} {name} positions are {positions.dtype}, expected int32.")
    if rows and (int(positions.min()) < 0 or int(positions.max()) >= seq or bool((positions.diff(dim=-1) <= 0).any())):
        raise CacheEntryError(
            f"{where}: layer {index} {name}: the dense rows' positions are not increasing in [0, {seq})."
        )
    if dense.dtype != dtype:
        raise CacheEntryError(f"{where}: layer {index} {name}: the dense part is {dense.dtype}, the states {dtype}.")
    if not torch.isfinite(dense.sum(dtype=torch.float32)):
        raise CacheEntryError(f"{where}: layer {index} {name} hold NaN or infinite values.")
    shape = (1, heads, 1, head_dim)
    for what, tensor in (("scales", scale), ("offsets", offset)):
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != shape:
            raise CacheEntryError(
                f"{where}: layer {index} {name} {what} are {tensor.dtype} {tuple(tensor.shape)}, expected float32 "
                f"{shape}."
            )
    if not bool(torch.isfinite(offset).all()):
        raise CacheEntryError(f"{where}: layer {index} {name} offsets hold NaN or infinite values.")
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise CacheEntryError(f"{where}: layer {index} {name} scales hold negative, NaN or infinite values.")


def checksum(tensor: torch.Tensor) -> str:
    """CRC-32 (hex) of a CPU tensor's bytes: detects damaged files (not tampering)."""
    data = tensor.detach().contiguous().view(torch.uint8).reshape(-1).numpy()
    return f"{zlib.crc32(memoryview(data)):08x}"
