"""Moving cached key/value states to another position: re-rotating RoPE keys by a position delta.

A rotary key at position `p` is `R(p) k`. Rotations compose, `R(d) R(p) = R(p + d)`, so states cached at positions
`0..n-1` are moved to `offset..offset+n-1` by rotating every key by `d = offset` (values carry no position). The
rotation is taken from the model's own `rotary_emb` module, so its rope type and scaling (linear, llama3, yarn, ...)
are honoured; the `attention_scaling` that some types (yarn, longrope) multiply into cos/sin is divided out, because
the cached keys already carry it once. Re-rotating is exact for rope types whose frequencies do not depend on the
sequence length; `dynamic` and `longrope` change frequencies past `original_max_position_embeddings` (a warning is
logged). `verify_rerotation` checks on the live model that re-rotated layer-0 keys equal keys computed at the offset.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["find_rotary_embedding", "rotate_keys", "shift_layers", "verify_rerotation"]

_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def find_rotary_embedding(model: nn.Module) -> nn.Module:
    """The decoder's rotary embedding module: the decoder is found with transformers' `get_decoder()`, and its rotary
    module by transformers' naming convention for every rotary class (`*RotaryEmbedding`), whatever the attribute is
    called (`rotary_emb`, `rotary_embedding`, ...).

    Raises `NotImplementedError` if the decoder has none (e.g. ALiBi or learned absolute positions) or several.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    found = [module for _, module in decoder.named_children() if type(module).__name__.endswith("RotaryEmbedding")]
    if len(found) != 1:
        raise NotImplementedError(
            f"{type(decoder).__name__} has {len(found)} top-level rotary embedding modules, not one: moving cached "
            "states to another position is only supported for RoPE decoders with one rotation (Llama, Mistral, "
            "Mixtral, Qwen2/3, ...)."
        )
    rotary = found[0]
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type in _LENGTH_DEPENDENT_ROPE:
        logger.warning_once(
            f"rope type {rope_type!r} changes its frequencies with the sequence length; re-rotated cached keys are "
            "exact only while prompts stay within `original_max_position_embeddings`."
        )
    return rotary


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.no_grad()
def _cos_sin(rotary_emb: nn.Module, delta: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[rot_dim]` (fp32) of a rotation by `delta` positions, without the `attention_scaling` factor."""
    probe = torch.zeros(1, 1, 1, dtype=torch.float32, device=device)
    cos, sin = rotary_emb(probe, torch.tensor([[delta]], dtype=torch.long, device=device))
    scale = float(getattr(rotary_emb, "attention_scaling", 1.0) or 1.0)
    return cos.reshape(-1).float() / scale, sin.reshape(-1).float() / scale


def rotate_keys(keys: torch.Tensor, delta: int, rotary_emb: nn.Module) -> torch.Tensor:
    """Return `keys` `[..., seq, head_dim]` rotated by `delta` positions (a new tensor; the input is not changed).

    The rotation is computed in fp32 and cast back to the keys' dtype. With partial rotary embeddings only the first
    `rot_dim` channels are rotated, as the model does.
    """
    if not isinstance(delta, int) or isinstance(delta, bool):
        raise TypeError(f"`delta` must be an int, got {type(delta).__name__}.")
    if delta == 0:
        return keys
    cos, sin = _cos_sin(rotary_emb, delta, keys.device)
    rot_dim = cos.shape[-1]
    if rot_dim > keys.shape[-1] or rot_dim % 2:
        raise ValueError(f"The rotary embedding has {rot_dim} channels but the keys have {keys.shape[-1]}.")
    rotated_part = keys[..., :rot_dim].float()
    rotated_part = rotated_part * cos + _rotate_half(rotated_part) * sin
    if rot_dim == keys.shape[-1]:
        return rotated_part.to(keys.dtype)
    return torch.cat((rotated_part.to(keys.dtype), keys[..., rot_dim:]), dim=-1)


def shift_layers(
    layers: list[tuple[torch.Tensor, torch.Tensor]], delta: int, rotary_emb: nn.Module, start: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer `(keys, values)` from position `start` on, with the keys re-rotated by `delta` positions.

    Values are returned as views (never copied); keys are new tensors unless `delta == 0`.
    """
    shifted = []
    for keys, values in layers:
        shifted.append((rotate_keys(keys[..., start:, :], delta, rotary_emb), values[..., start:, :]))
    return shifted


@torch.inference_mode()
def verify_rerotation(model: nn.Module, offset: int = 37, num_tokens: int = 8, rtol: float | None = None) -> float:
    """Check on `model` that re-rotating layer-0 keys computed at positions `0..n-1` by `offset` equals computing
    them at `offset..offset+n-1` (layer-0 keys depend only on the token and its position).

    Returns the largest difference relative to the largest key; raises `NotImplementedError` if it exceeds `rtol`
    (default 1e-4 in fp32, 3e-2 in 16-bit), e.g. for a model with interleaved rotary channels, because moved caches
    would then be wrong.
    """
    rotary_emb = find_rotary_embedding(model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    vocab = int(decoder.get_input_embeddings().weight.shape[0])
    device = decoder.get_input_embeddings().weight.device
    input_ids = (torch.arange(num_tokens, device=device) * 7919 + 11) % vocab
    input_ids = input_ids.unsqueeze(0)
    positions = torch.arange(num_tokens, device=device).unsqueeze(0)
    at_zero = decoder(input_ids=input_ids, position_ids=positions, use_cache=True).cache.layers[0].keys
    at_offset = decoder(input_ids=input_ids, position_ids=positions + offset, use_cache=True).cache
    at_offset = at_offset.layers[0].keys
    moved = rotate_keys(at_zero, offset, rotary_emb)
    if rtol is None:
        rtol = 1e-4 if at_offset.dtype == torch.float32 else 3e-2
    scale = float(at_offset.float().abs().max()) or 1.0
    difference = float((moved.float() - at_offset.float()).abs().max()) / scale
    if difference > rtol:
        raise NotImplementedError(
            f"Re-rotated cached keys differ from keys computed at their new position by {difference:.3g} on "
            f"{type(decoder).__name__}: this model's rotary layout is not supported for moving cached states."
        )
    return difference
