"""Re-rotating cached keys to a new offset equals computing them there (grit_hf.cache.positions)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from grit_hf import GritLMForCausalLM
from grit_hf.cache.positions import find_rotary_embedding, rotate_keys, shift_layers, verify_rerotation

BASE = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 512,
        "rope_theta": 500000.0,
    },
    "yarn": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512, "rope_theta": 10000.0},
}


def _model(family: str = "llama", rope: str = "default"):
    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM, {}),
        "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 4096}),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
        "gpt_neox": (GPTNeoXConfig, GPTNeoXForCausalLM, {"rotary_pct": 0.5, "num_key_value_heads": None}),
    }
    config_class, model_class, extra = classes[family]
    kwargs = {key: value for key, value in {**BASE, **extra}.items() if value is not None}
    if ROPES[rope] is not None:
        kwargs["rope_parameters"] = ROPES[rope]
    torch.manual_seed(0)
    return model_class(config_class(**kwargs)).eval()


def _layer0_keys(model, input_ids: torch.Tensor, start: int) -> torch.Tensor:
    positions = torch.arange(start, start + input_ids.shape[1]).unsqueeze(0)
    with torch.inference_mode():
        return model.get_decoder()(input_ids=input_ids, position_ids=positions, use_cache=True).cache.layers[0].keys


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gpt_neox"])
@pytest.mark.parametrize("offset", [1, 37, 1000])
def test_rerotated_keys_equal_keys_computed_at_offset(family, offset):
    model = _model(family)
    input_ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(1))
    moved = rotate_keys(_layer0_keys(model, input_ids, 0), offset, find_rotary_embedding(model))
    assert_close(moved, _layer0_keys(model, input_ids, offset), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rope", ["linear", "llama3", "yarn"])
def test_rerotation_honours_rope_scaling(rope):
    model = _model("llama", rope)
    rotary = find_rotary_embedding(model)
    assert rotary.rope_type == rope
    input_ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(2))
    for offset in (5, 700, 3000):  # inside and beyond original_max_position_embeddings
        moved = rotate_keys(_layer0_keys(model, input_ids, 0), offset, rotary)
        assert_close(moved, _layer0_keys(model, input_ids, offset), rtol=1e-4, atol=1e-4)
    assert verify_rerotation(model) < 1e-4


def test_rotations_compose_and_zero_is_identity():
    model = _model()
    rotary = find_rotary_embedding(model)
    keys = torch.randn(1, 2, 6, 16)
    assert rotate_keys(keys, 0, rotary) is keys
    assert_close(rotate_keys(rotate_keys(keys, 11, rotary), 29, rotary), rotate_keys(keys, 40, rotary))
    assert_close(rotate_keys(rotate_keys(keys, 40, rotary), -40, rotary), keys, rtol=1e-5, atol=1e-5)


def test_rotate_keys_in_bf16_stays_close():
    model = _model()
    input_ids = torch.randint(0, 300, (1, 8), generator=torch.Generator().manual_seed(3))
    keys = _layer0_keys(model, input_ids, 0)
    moved = rotate_keys(keys.bfloat16(), 100, find_rotary_embedding(model))
    assert moved.dtype == torch.bfloat16
    assert_close(moved.float(), _layer0_keys(model, input_ids, 100), rtol=2e-2, atol=2e-2)


def test_shift_layers_slices_and_keeps_values_as_views():
    model = _model()
    rotary = find_rotary_embedding(model)
    keys, values = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    ((moved_keys, moved_values),) = shift_layers([(keys, values)], 7, rotary, start=1)
    assert moved_keys.shape[-2] == 4
    assert moved_values.data_ptr() == values[..., 1:, :].data_ptr()
    assert_close(moved_keys, rotate_keys(keys[..., 1:, :], 7, rotary))


def test_errors():
    model = _model()
    with pytest.raises(TypeError, match="`delta`"):
        rotate_keys(torch.randn(1, 1, 2, 16), 1.5, find_rotary_embedding(model))
    with pytest.raises(NotImplementedError, match="0 top-level rotary embedding modules"):
        find_rotary_embedding(torch.nn.Linear(2, 2))


def test_rotary_module_is_found_whatever_its_attribute_name(stock_checkpoint):
    model = GritLMForCausalLM.from_pretrained(stock_checkpoint("gpt_neox"))
    rotary = model.model.rotary_emb
    model.model.register_module("positions", model.model._modules.pop("rotary_emb"))
    assert find_rotary_embedding(model) is rotary
    assert find_rotary_embedding(model.model) is rotary


def test_verify_rerotation_rejects_an_interleaved_layout(monkeypatch):
    import grit_hf.cache.positions as positions

    model = _model()
    monkeypatch.setattr(positions, "_rotate_half", lambda x: torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2))
    with pytest.raises(NotImplementedError, match="differ"):
        verify_rerotation(model)
