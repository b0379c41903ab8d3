from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from trl import ModelConfig, get_peft_config, get_quantization_config

from grit_hf import GritLMForCausalLM
from grit_hf.trainer import GRITTrainer, load_adapter_model, merge_adapter

TEXTS = ["ls lists a directory", "Paris is the capital of France."]


def _lora(**overrides):
    kwargs = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])
    kwargs.update(overrides)
    return get_peft_config(ModelConfig(model_name_or_path="x", **kwargs))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_saves_loads_and_merges(tiny_grit, make_args, tmp_path, checkpointing):
    args = make_args(max_steps=2, learning_rate=5e-2, activation_checkpointing=checkpointing, emb_chunk_size=3)
    trainer = GRITTrainer(str(tiny_grit), args=args, peft_config=_lora())
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all("loss_rep" in e and "loss_gen" in e for e in logged)
    trainer.save_model(str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tiny_grit)
    trained = trainer.model.eval()
    expected = trained.get_base_model().encode(TEXTS, instruction="Find it")
    base = GritLMForCausalLM.from_pretrained(tiny_grit).encode(TEXTS, instruction="Find it")
    assert not np.allclose(expected, base, atol=1e-4)  # the adapter changed the embeddings

    loaded = load_adapter_model(tmp_path / "adapter").eval()  # onto the base named in the adapter config
    np.testing.assert_allclose(loaded.get_base_model().encode(TEXTS, instruction="Find it"), expected, atol=1e-5)
    merged_dir = merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    merged = GritLMForCausalLM.from_pretrained(merged_dir)
    np.testing.assert_allclose(merged.encode(TEXTS, instruction="Find it"), expected, atol=1e-5)
    assert json.loads((merged_dir / "config.json").read_text())["model_type"] == "gritlm"
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 9, 12]])
        torch.testing.assert_close(merged(ids).logits, loaded(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_quantization_flags_build_a_4bit_config():
    config = get_quantization_config(ModelConfig(model_name_or_path="x", load_in_4bit=True))
    assert config is not None and config.load_in_4bit


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs CUDA")
def test_qlora_trains(tiny_grit, make_args, tmp_path):
    """Skipped only without CUDA: where a GPU is, a missing bitsandbytes (`pip install grit-hf[qlora]`) fails."""
    assert importlib.util.find_spec("bitsandbytes") is not None, "QLoRA needs bitsandbytes: pip install grit-hf[qlora]"
    from transformers import BitsAndBytesConfig

    model = GritLMForCausalLM.from_pretrained(
        tiny_grit, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16),
        device_map={"": 0},
    )  # fmt: skip
    args = make_args(max_steps=2, use_cpu=False, bf16=True)
    trainer = GRITTrainer(model, args=args, peft_config=_lora())
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all(np.isfinite(e["loss_rep"]) and np.isfinite(e["loss_gen"]) for e in logged)
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_widened_adapter_computes_what_the_narrow_one_does_and_trains(tiny_grit, make_args, tmp_path):
    """`expand_adapter_rank`: the same logits as the rank-4 adapter (the new directions start at zero), the new rank
    and scale recorded, and the new directions receive gradients."""
    from peft import PeftModel

    from grit_hf.folders.adapters import expand_adapter_rank

    trainer = GRITTrainer(str(tiny_grit), args=make_args(max_steps=2, learning_rate=5e-2), peft_config=_lora())
    trainer.train()
    trainer.save_model(str(tmp_path / "narrow"))
    wide = expand_adapter_rank(tmp_path / "narrow", tmp_path / "wide", rank=12)
    config = json.loads((wide / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (12, 24)
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        narrow = load_adapter_model(tmp_path / "narrow").eval()(input_ids=ids).logits
    widened = PeftModel.from_pretrained(GritLMForCausalLM.from_pretrained(tiny_grit), str(wide), is_trainable=True)
    logits = widened(input_ids=ids).logits
    torch.testing.assert_close(logits, narrow, rtol=1e-5, atol=1e-5)
    logits.float().pow(2).mean().backward()
    b = next(p for name, p in widened.named_parameters() if "lora_B" in name)
    assert b.shape[1] == 12 and b.grad[:, 4:].abs().sum() > 0
    with pytest.raises(ValueError, match="rank"):
        expand_adapter_rank(tmp_path / "narrow", tmp_path / "bad", rank=4)
