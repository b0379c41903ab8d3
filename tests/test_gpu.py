"""GPU checks (skipped without CUDA): bf16 error against the reference gritlm's on a 7B-shaped Mistral (sdpa and
eager), bf16 generation, and the tiny model on CUDA against CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
TEXTS = ["The capital of France is Paris.", "Photosynthesis happens in chloroplasts. " * 20, "short"]
# grit-hf may lose at most this much more to bf16 than the reference gritlm on the same weights. Measured
# (benchmarks/results/bf16_error_cpu.md, default model): the largest errors are equal (ratio 1.00, both kernels);
# per text the sdpa ratio reaches 1.41, as grit-hf's attention kernel differs from the reference's.
BF16_ERROR_RATIO = 1.5


@pytest.fixture(scope="module")
def mistral_7b_stock_dir(tmp_path_factory):
    """A stock Mistral-7B-shaped checkpoint with random bf16 weights (the reference gritlm loads stock folders)."""
    from encode_throughput import make_random_mistral_7b

    return make_random_mistral_7b(tmp_path_factory.mktemp("mistral-7b") / "stock", torch.bfloat16, stock=True)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bf16_error_is_no_worse_than_the_reference(mistral_7b_stock_dir, attn):
    """A fixed cosine threshold on random weights fails every implementation (bf16 vs fp32 gives ~0.998 on random 7B
    weights): compare grit-hf's bf16 error with the reference's on the same weights and texts instead."""
    from bf16_error import bf16_errors, error_ratio

    errors = bf16_errors(mistral_7b_stock_dir, attn, device="cuda")
    print(f"{attn}: {errors}")
    assert max(errors["grit_hf_fp32"]) <= 1e-4
    assert error_ratio(errors) <= BF16_ERROR_RATIO


def test_bf16_generates_on_7b_mistral(mistral_7b_stock_dir):
    from grit_hf import GritLMForCausalLM

    model = GritLMForCausalLM.from_pretrained(mistral_7b_stock_dir, dtype=torch.bfloat16).cuda()
    assert model.encode(TEXTS, convert_to_tensor=True).dtype == torch.float32
    ids = model.tokenizer("The capital of France", return_tensors="pt").to("cuda")
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 4


def test_tiny_model_cuda_matches_cpu(grit_checkpoint):
    from grit_hf import GritLMForCausalLM

    path = grit_checkpoint("llama")
    cpu = GritLMForCausalLM.from_pretrained(path).encode(TEXTS)
    gpu = GritLMForCausalLM.from_pretrained(path).cuda().encode(TEXTS)
    assert abs(cpu - gpu).max() <= 1e-4
