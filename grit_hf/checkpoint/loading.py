"""Loading a GRIT model for use: resolve its name, load it on a device in a dtype, in eval mode (the one loader behind
the CLI, evaluation, MTEB, the shared registry and the demo)."""

from __future__ import annotations

import os

import torch

from ..modeling_gritlm import GritLMForCausalLM

__all__ = ["load_model"]


def load_model(
    name: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    revision: str | None = None,
    **kwargs,
) -> GritLMForCausalLM:
    """A `GritLMForCausalLM` for `name` (see `resolve_checkpoint`) on `device` (default: CUDA if available, else
    CPU), in eval mode. `kwargs` go to `from_pretrained`."""
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"`dtype` must be a torch dtype name such as 'float32' or 'bfloat16', got {dtype!r}.")
        dtype = getattr(torch, dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = GritLMForCausalLM.from_pretrained(name, dtype=dtype, revision=revision, **kwargs)
    return model.to(device).eval()
