"""`grit_hf.quantized_linear`: linear layers over torchao's quantized weights that call torch's CPU kernels directly,
against torchao's own `F.linear` on the same weights and a hand computation from the stored values and scales."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("torchao")

from grit_hf.quantized_linear import INT8_KERNEL_MAX_ROWS, Int4Linear, Int8Linear, install_quantized_linears  # noqa

ROWS = [1, 2, 3, INT8_KERNEL_MAX_ROWS, INT8_KERNEL_MAX_ROWS + 1, 8, 37]


def _quantized(kind: str, bias: bool) -> torch.nn.Linear:
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=bias).to(torch.bfloat16)
    config = PrototypeInt4WeightOnlyConfig(group_size=32) if kind == "int4" else Int8WeightOnlyConfig()
    quantize_(linear, config)
    return linear


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", ROWS)
def test_int4_layer_gives_torchaos_output_exactly(rows, bias):
    plain = _quantized("int4", bias)
    lean = copy.deepcopy(plain)
    assert install_quantized_linears(lean) == 1 and type(lean) is Int4Linear
    x = torch.randn(2, rows, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(lean(x), plain(x), rtol=0, atol=0)  # torchao's dispatch, same kernel


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", ROWS)
def test_int8_layer_computes_the_stored_weights_product(rows, bias):
    """Hand computation in fp32 from the stored int8 values and per-row scales; torchao's own path (a bf16 matmul
    with the dequantized weight) is as far from it as the bf16 output's rounding allows, and so is ours."""
    plain = _quantized("int8", bias)
    lean = copy.deepcopy(plain)
    assert install_quantized_linears(lean) == 1 and type(lean) is Int8Linear
    weight = plain.weight
    dense = weight.qdata.float() * weight.scale.float()  # [out, in]
    x = torch.randn(rows, 64, dtype=torch.bfloat16)
    want = x.float() @ dense.t() + (0 if plain.bias is None else plain.bias.float())
    with torch.inference_mode():
        got, theirs = lean(x).float(), plain(x).float()
    tolerance = 2**-7 * want.abs().max().item()  # bf16 rounding of the output (and of the scales)
    torch.testing.assert_close(got, want, rtol=0, atol=tolerance)
    torch.testing.assert_close(theirs, want, rtol=0, atol=tolerance)


def test_install_changes_only_eligible_layers_once():
    model = torch.nn.Sequential(_quantized("int4", False), _quantized("int8", True), torch.nn.Linear(4, 4))
    assert install_quantized_linears(model) == 2
    assert [type(m) for m in model] == [Int4Linear, Int8Linear, torch.nn.Linear]
    assert install_quantized_linears(model) == 0  # already lean
    assert install_quantized_linears(torch.nn.Sequential(torch.nn.Linear(4, 4))) == 0
