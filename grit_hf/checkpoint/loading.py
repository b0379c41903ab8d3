"""Loading a GRIT model for use: resolve its name, load it on a device in a dtype, in eval mode (the one loader behind
the CLI, the server, evaluation, MTEB, the shared registry of the integrations and the demo).

The default dtype (`dtype="auto"`) is bfloat16 on a CPU with native bf16 matrix multiplication (AVX512-BF16 or AMX:
2.1-2.4x the fp32 matmul throughput on the AMD EPYC this project measures on, with embeddings at cosine 0.9999 to
fp32, see `benchmarks/results/dtype_quality_cpu.md`), float32 on other CPUs (where bf16 is emulated and slower), and
the checkpoint's own dtype on GPUs. Pooling, normalisation and the training losses stay in float32 in every case.

`quantization="int8" | "int4"` quantizes the weights with torchao while loading (`grit_hf.quantization`);
a checkpoint saved quantized loads quantized without it.
"""

from __future__ import annotations

import functools
import json
import os

import torch
from transformers.utils import logging

from ..modeling_gritlm import GritLMForCausalLM
from ..quantization import check_quantization, model_quantization, quantize_lm_head, torchao_config

logger = logging.get_logger(__name__)

__all__ = ["load_model", "resolve_dtype", "cpu_has_native_bf16"]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX tiles), as oneDNN uses them."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> str | torch.dtype:
    """The dtype to load in: an explicit dtype (a `torch.dtype` or its name) as given; `"auto"` as the module
    docstring says (said once per process on CPUs, where it is a choice)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str) or (dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype)):
        raise ValueError(
            f"`dtype` must be 'auto' or a torch dtype (name) such as 'float32' or 'bfloat16', got {dtype!r}."
        )
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.device(device).type != "cpu":
        return "auto"
    if cpu_has_native_bf16():
        logger.warning_once(
            "grit-hf: loading in bfloat16, as this CPU multiplies bf16 matrices natively (about 2x float32); pass "
            "dtype='float32' (--dtype float32) for float32."
        )
        return torch.bfloat16
    return torch.float32


def load_model(
    name: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    revision: str | None = None,
    quantization: str | None = None,
    **kwargs,
) -> GritLMForCausalLM:
    """A `GritLMForCausalLM` for `name` (see `resolve_checkpoint`) on `device` (default: CUDA if available, else
    CPU), in `dtype` (see `resolve_dtype`), in eval mode. `kwargs` go to `from_pretrained`.

    `quantization`: `None` (the weights as saved), `"int8"` or `"int4"` (CPU only): see
    `grit_hf.quantization`, and the README for what each costs in speed and accuracy. A checkpoint saved
    quantized loads quantized; asking it for another quantization raises a `ValueError`."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(dtype, device)
    quantization = check_quantization(quantization)
    if quantization is not None:
        if "quantization_config" in kwargs:
            raise ValueError("Pass either `quantization` or `quantization_config`, not both.")
        if quantization == "int4" and torch.device(device).type != "cpu":
            raise ValueError(f"`quantization='int4'` uses torchao's CPU int4 layout, but `device` is {device!r}.")
        if _saved_quantization(name, revision) is None:
            kwargs["quantization_config"] = torchao_config(quantization)
    model = GritLMForCausalLM.from_pretrained(name, dtype=dtype, revision=revision, **kwargs)
    if quantization is not None:
        quantize_lm_head(model, quantization)
        if (found := model_quantization(model)) != quantization:
            raise ValueError(
                f"{name!r} was saved quantized ({found}): it cannot load as `quantization`={quantization!r}."
            )
    return model.to(device).eval()


def _saved_quantization(name: str | os.PathLike, revision: str | None) -> dict | None:
    """The `quantization_config` of the checkpoint `name`'s `config.json`, if it was saved quantized."""
    from ..folders.resolve import resolve_checkpoint

    config = resolve_checkpoint(name, revision=revision) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("quantization_config")
    except (OSError, ValueError):
        return None
