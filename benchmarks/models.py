"""The model a benchmark runs, by the name on its command line: `default`, a checkpoint folder or Hub name (through
`grit_hf.load_model`), or `mistral-7b-random`: GritLM-7B's shape (the GPU tests' Mistral config) with random bf16
weights, built on the GPU in memory (CUDA only)."""

from __future__ import annotations

import torch
from report import tests_module

__all__ = ["load_benchmark_model"]


def load_benchmark_model(name: str, device: str, dtype: str = "auto"):
    """A `GritLMForCausalLM` in eval mode on `device` (`dtype` as `grit_hf.load_model` takes it)."""
    from grit_hf import GritLMConfig, GritLMForCausalLM, load_model

    if name != "mistral-7b-random":
        return load_model(name, device=device, dtype=dtype)
    if device != "cuda" or not torch.cuda.is_available():
        raise SystemExit("--model mistral-7b-random needs --device cuda and a GPU.")
    config = tests_module("test_gpu")._mistral_7b_config(sliding_window=None)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = GritLMForCausalLM(GritLMConfig(text_config=config))
    finally:
        torch.set_default_dtype(default_dtype)
    model.tokenizer = tests_module("tiny").make_tokenizer()
    return model.eval()
