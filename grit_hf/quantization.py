"""Quantized weights: torchao through transformers' `TorchAoConfig` (`grit_hf.load_model(..., quantization=...)`).

- `"int4"`: every linear layer, the LM head included, in torchao's CPU int4 layout (`Int4OpaqueTensor`, torch's
  tinygemm kernel `_weight_int4pack_mm_for_cpu`): 4-bit values in groups of 32 along the input dimension, each
  group with a bf16 scale and zero point (0.625 bytes per weight, GGUF Q4_1's format). CPU only.
- `"int8"`: every linear layer, the LM head included, as 8-bit values with one scale per output row (torchao's
  `Int8WeightOnlyConfig`).

The input embeddings stay dense (a lookup reads one row per token): a tied LM head is untied first, so the quantized
model holds its own LM head. Activations, norms, attention and the key/value states keep the model's dtype.
A quantized model saves and reloads quantized (transformers writes torchao's tensors to safetensors with the
`TorchAoConfig` in `config.json`).

Measured on the CPU this project benchmarks on (AMD EPYC, one thread): see `benchmarks/results/decode_profile_cpu.md`
and the README's table of settings.
"""

from __future__ import annotations

import functools
from importlib.util import find_spec
from typing import Literal

from torch import nn
from transformers.utils import logging

from .quantized_linear import install_quantized_linears

logger = logging.get_logger(__name__)

__all__ = [
    "QUANTIZATIONS",
    "Quantization",
    "is_torchao_available",
    "check_quantization",
    "torchao_config",
    "quantize_lm_head",
    "model_quantization",
    "check_not_quantized",
    "prepare_quantized_loading",
    "finish_quantized_loading",
    "weight_bytes",
]

Quantization = Literal["int8", "int4"]
QUANTIZATIONS = ("int8", "int4")

INT4_GROUP_SIZE = 32
"""Values per int4 scale/zero group along the input dimension: GGUF Q4_1's block. The default model's base weights
come from a Q4_1 file, so at 32 its int4 weights are its original 4-bit values (relative error 0.7%, from rounding the
scales to bf16; 9% at 64)."""


@functools.lru_cache
def is_torchao_available() -> bool:
    """Whether torchao is installed (`pip install "grit-hf[quant]"`)."""
    return find_spec("torchao") is not None


def check_quantization(quantization: str | None) -> str | None:
    """`quantization` if it is `None` or one of `QUANTIZATIONS`; else a `TypeError`/`ValueError` naming the choices.
    A valid name also needs torchao (`ImportError` with the command that installs it)."""
    if quantization is None:
        return None
    if not isinstance(quantization, str):
        raise TypeError(f"`quantization` must be None or a str, got {type(quantization).__name__}.")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Invalid `quantization`: {quantization!r}. Valid choices are: {QUANTIZATIONS} (or None).")
    if not is_torchao_available():
        raise ImportError(f'`quantization={quantization!r}` needs torchao: pip install "grit-hf[quant]".')
    return quantization


def _base_config(quantization: str):
    """torchao's config for `quantization`; `set_inductor_config=False`: quantizing leaves torch.compile's global
    settings alone (torchao's default changes them for every compiled function of the process)."""
    if quantization == "int4":
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        _register_int4_safetensors()
        return PrototypeInt4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, set_inductor_config=False)
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig(set_inductor_config=False)


def torchao_config(quantization: str):
    """The `TorchAoConfig` that `from_pretrained` quantizes the linear layers with (the LM head, excluded by
    transformers when tied, is `quantize_lm_head`'s)."""
    from transformers import TorchAoConfig

    return TorchAoConfig(_base_config(check_quantization(quantization)))


def quantize_lm_head(model: nn.Module, quantization: str) -> None:
    """Quantize `model.lm_head` like the other linear layers. A head tied to the input embeddings is untied first
    (the embeddings stay dense), and the config records it untied, so a saved checkpoint keeps its own head. Then
    every quantized linear layer calls the CPU kernels directly (`grit_hf.quantized_linear`)."""
    from torchao.quantization import quantize_
    from torchao.utils import TorchAOBaseTensor

    head = model.get_output_embeddings()
    if isinstance(head.weight, TorchAOBaseTensor):
        install_quantized_linears(model)
        return
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False
        model.config.get_text_config(decoder=True).tie_word_embeddings = False
        model._tied_weights_keys = {}
    quantize_(head, _base_config(quantization), filter_fn=lambda module, name: isinstance(module, nn.Linear))
    install_quantized_linears(model)


def model_quantization(model: nn.Module) -> str | None:
    """`"int8"`/`"int4"` for a model quantized by grit-hf (its weights are torchao tensors), `"torchao"` for other
    torchao quantizations, `None` for dense weights. bitsandbytes (QLoRA) weights are not torchao's: `None`."""
    if not is_torchao_available():
        return None
    from torchao.utils import TorchAOBaseTensor

    kinds = {type(p).__name__ for p in model.parameters() if isinstance(p, TorchAOBaseTensor)}
    if not kinds:
        return None
    if kinds == {"Int4OpaqueTensor"}:
        return "int4"
    if kinds == {"Int8Tensor"}:
        return "int8"
    return "torchao"


def check_not_quantized(model: nn.Module, purpose: str) -> None:
    """Raise a `ValueError` if `model` has torchao-quantized weights, which `purpose` cannot use."""
    quantization = model_quantization(model)
    if quantization is not None:
        raise ValueError(
            f"{purpose} needs dense weights, but this model is quantized ({quantization}, torchao). Load the dense "
            "checkpoint (without `quantization`) for this; quantize when loading the result for inference."
        )


def prepare_quantized_loading() -> None:
    """Get torchao ready to load a checkpoint saved quantized (called by `from_pretrained` when its config has a
    `quantization_config`)."""
    if is_torchao_available():
        _register_int4_safetensors()


def finish_quantized_loading(model: nn.Module) -> None:
    """After `from_pretrained` of a quantized model: its linear layers call the CPU kernels directly
    (`grit_hf.quantized_linear`)."""
    if is_torchao_available():
        install_quantized_linears(model)


@functools.cache
def _register_int4_safetensors() -> None:
    """Let torchao save and load its CPU int4 layout: torchao 0.18 serialises configs and tensor subclasses found
    in its allow-lists, whose handling is generic (a config's fields; a tensor's data and attributes), but lists
    neither the prototype module of `PrototypeInt4WeightOnlyConfig` nor `Int4OpaqueTensor`. Checked by the
    save/reload test (tests/test_quantization.py)."""
    from torchao.core import config as config_io
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor
    from torchao.prototype.safetensors import safetensors_utils

    config_io.ALLOWED_AO_MODULES.add("torchao.prototype.quantization.int4")
    safetensors_utils.ALLOWED_CLASSES.setdefault("Int4OpaqueTensor", Int4OpaqueTensor)
    if "Int4OpaqueTensor" not in safetensors_utils.ALLOWED_TENSORS_SUBCLASSES:
        safetensors_utils.ALLOWED_TENSORS_SUBCLASSES.append("Int4OpaqueTensor")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights a decode step reads: every parameter but the input embeddings (a lookup), counting a
    quantized weight's stored tensors (values, scales, zero points) and a tied head once."""
    embeddings = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total, seen = 0, set()
    for parameter in model.parameters():
        if id(parameter) in seen or (parameter is embeddings and head is not embeddings):
            continue
        seen.add(id(parameter))
        inner = parameter.__tensor_flatten__()[0] if hasattr(parameter, "__tensor_flatten__") else None
        tensors = [getattr(parameter, name) for name in inner] if inner else [parameter]
        total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return total
