from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, LlamaForCausalLM, MistralForCausalLM

from grit_hf import GritLMConfig, GritLMForCausalLM, convert_checkpoint
from grit_hf.cli import main


def _logits(model, tokenizer, text="Paris is the capital of France"):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_converted_llama_loads_in_stock_class_with_identical_logits(stock_checkpoint, tmp_path):
    source = stock_checkpoint("llama")
    output = convert_checkpoint(source, tmp_path / "grit")
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "gritlm" and config["text_config"]["model_type"] == "llama"
    assert list(output.glob("*.safetensors")) and not list(output.glob("*.bin"))
    stock = LlamaForCausalLM.from_pretrained(source)
    reloaded = LlamaForCausalLM.from_pretrained(output)
    grit = AutoModelForCausalLM.from_pretrained(output)
    assert isinstance(grit, GritLMForCausalLM)
    expected = _logits(stock, grit.tokenizer)
    assert_close(_logits(reloaded, grit.tokenizer), expected, rtol=0, atol=0)
    assert_close(_logits(grit, grit.tokenizer), expected, rtol=0, atol=0)


def test_gritlm_7b_layout_converts_without_running_its_code(stock_checkpoint, tmp_path):
    """A folder laid out like GritLM/GritLM-7B: mistral config, auto_map to modeling_gritlm7b.*, a code file."""
    source = tmp_path / "GritLM-7B"
    shutil.copytree(stock_checkpoint("mistral"), source)
    config = json.loads((source / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    config["auto_map"] = {
        "AutoModel": "modeling_gritlm7b.MistralModel",
        "AutoModelForCausalLM": "modeling_gritlm7b.MistralForCausalLM",
    }
    (source / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-was-run"
    (source / "modeling_gritlm7b.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(1)\n")

    assert main(["convert", str(source), str(tmp_path / "out")]) == 0
    assert not marker.exists()
    out_config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "modeling_gritlm7b" not in json.dumps(out_config)
    assert not (tmp_path / "out" / "modeling_gritlm7b.py").exists()
    stock = MistralForCausalLM.from_pretrained(stock_checkpoint("mistral"))
    grit = GritLMForCausalLM.from_pretrained(tmp_path / "out")
    assert_close(_logits(grit, grit.tokenizer), _logits(stock, grit.tokenizer), rtol=0, atol=0)
    # loading the stock folder directly (the Python API) ignores the auto_map as well
    direct = GritLMForCausalLM.from_pretrained(source)
    assert not marker.exists()
    assert_close(_logits(direct, grit.tokenizer), _logits(stock, grit.tokenizer), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mixtral"])
def test_other_families_round_trip(family, stock_checkpoint, tmp_path):
    source = stock_checkpoint(family)
    output = convert_checkpoint(source, tmp_path / "grit")
    stock = AutoModelForCausalLM.from_pretrained(source)
    grit = AutoModelForCausalLM.from_pretrained(output)
    assert isinstance(grit, GritLMForCausalLM)
    assert_close(_logits(grit, grit.tokenizer), _logits(stock, grit.tokenizer), rtol=0, atol=0)
    assert isinstance(grit.config, GritLMConfig) and grit.config.text_config.model_type == family


def test_grit_settings_are_applied_and_checked(stock_checkpoint, tmp_path):
    out = convert_checkpoint(stock_checkpoint("llama"), tmp_path / "a", query_template="Q {instruction}: ")
    assert GritLMConfig.from_pretrained(out).query_template == "Q {instruction}: "
    with pytest.raises(ValueError, match=r"Unknown GRIT setting\(s\) \['poolin'\]"):
        convert_checkpoint(stock_checkpoint("llama"), tmp_path / "b", poolin="mean")
    with pytest.raises(ValueError, match="`pooling_method`"):
        convert_checkpoint(stock_checkpoint("llama"), tmp_path / "c", pooling_method="max")


def test_pickle_only_checkpoints_are_refused(stock_checkpoint, tmp_path):
    source = tmp_path / "bin-only"
    shutil.copytree(stock_checkpoint("llama"), source)
    for file in source.glob("*.safetensors"):
        file.unlink()
    with pytest.raises(ValueError, match="safetensors only"):
        convert_checkpoint(source, tmp_path / "out")
    with pytest.raises(ValueError, match="neither an existing folder nor a Hugging Face Hub name"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "out")


def test_unknown_model_type_is_a_clear_error(stock_checkpoint, tmp_path):
    source = tmp_path / "weird"
    shutil.copytree(stock_checkpoint("llama"), source)
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "not_a_model"
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="`not_a_model`"):
        GritLMForCausalLM.from_pretrained(source)


def test_checkpoint_gets_a_chat_template(grit_checkpoint):
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"))
    prompt = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<s><|user|>\nHi\n<|assistant|>\n"
