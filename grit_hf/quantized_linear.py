"""Linear layers over torchao's quantized weights that call torch's CPU kernels directly (the lean decode step).

torchao 0.18 runs `F.linear` on a quantized weight through its tensor subclass: a Python `__torch_function__`
dispatch, checks and reshapes around the kernel on every call. A decode step of the default model makes 211 such
calls, and on the CPU this project measures on (AMD EPYC, one thread) they cost about as much again as the int4
kernels themselves (cProfile of a step: 0.84 s in the calls for 0.48 s in `_weight_int4pack_mm_for_cpu`). For int8
weights, torchao's eager CPU path dequantizes the whole weight to the activations' dtype at every call (2.5x slower
than the bf16 matmul at one row), while torch has a kernel for int8 weights, `_weight_int8pack_mm` (2x faster than
bf16 at one or two rows, slower from eight rows on: there torchao's path runs).

`Int4Linear` and `Int8Linear` keep the weight as torchao's tensor (saving, loading, fingerprints and `state_dict`
are torchao's) and only replace `forward`: the same kernel (int4) or torch's int8 kernel (int8, few rows) on the
tensor's stored values and scales. `install_quantized_linears(model)` turns every eligible `nn.Linear` into one (the
module keeps its parameters; only its class changes).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Int4Linear", "Int8Linear", "install_quantized_linears"]

INT8_KERNEL_MAX_ROWS = 4
"""Up to this many rows (tokens) an int8 layer calls `_weight_int8pack_mm`; above, torchao's dequantizing path
(faster there: the kernel is a matrix-vector kernel)."""


class Int4Linear(nn.Linear):
    """`nn.Linear` whose weight is torchao's `Int4OpaqueTensor` (CPU, weight-only): `_weight_int4pack_mm_for_cpu`
    (the layout holds every output feature: torch packs only weights whose output size is a multiple of 16)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        rows = input.reshape(-1, input.shape[-1]).contiguous()
        output = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, weight.qdata, weight.block_size[-1], weight.scale_and_zero
        )
        output = output.reshape(*input.shape[:-1], weight.shape[0])
        return output if self.bias is None else output + self.bias


class Int8Linear(nn.Linear):
    """`nn.Linear` whose weight is torchao's `Int8Tensor` (weight-only, one scale per output row): for a few rows,
    `_weight_int8pack_mm`; else torchao's own path."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if input.numel() > INT8_KERNEL_MAX_ROWS * input.shape[-1] or input.device.type != "cpu":
            return super().forward(input)
        rows = input.reshape(-1, input.shape[-1]).contiguous()
        scales = weight.scale.reshape(-1).to(input.dtype)
        output = torch.ops.aten._weight_int8pack_mm(rows, weight.qdata, scales)
        output = output.reshape(*input.shape[:-1], weight.shape[0])
        return output if self.bias is None else output + self.bias


def _lean_class(weight: torch.Tensor) -> type[nn.Linear] | None:
    kind = type(weight).__name__
    if getattr(weight, "act_pre_scale", None) is not None or weight.device.type != "cpu":
        return None
    if kind == "Int4OpaqueTensor" and weight.act_mapping_type is None and weight.block_size[0] == 1:
        return Int4Linear
    if kind == "Int8Tensor" and weight.act_quant_kwargs is None and weight.block_size[-1] == weight.shape[-1]:
        return Int8Linear
    return None


def install_quantized_linears(model: nn.Module) -> int:
    """Turn every `nn.Linear` of `model` whose weight is an eligible torchao tensor (CPU int4 weight-only; int8
    weight-only per row) into `Int4Linear`/`Int8Linear`; returns how many were changed. Call it again after moving
    the model to another device (layers off the CPU go back to `nn.Linear`)."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and type(module) in (nn.Linear, Int4Linear, Int8Linear):
            lean = _lean_class(module.weight) or nn.Linear
            changed += lean is not nn.Linear and type(module) is not lean
            module.__class__ = lean
    return changed
