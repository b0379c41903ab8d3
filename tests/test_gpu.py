"""GPU checks (skipped without CUDA): bf16 vs fp32 parity on a 7B-shaped Mistral, sdpa and eager, encode + generate."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TEXTS = ["The capital of France is Paris.", "Photosynthesis happens in chloroplasts. " * 20, "short"]


def _mistral_7b_config(**overrides):
    from transformers import MistralConfig

    kwargs = dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=32768,
        sliding_window=4096,
    )
    kwargs.update(overrides)
    return MistralConfig(**kwargs)


@pytest.fixture(scope="module")
def mistral_7b_dir(tmp_path_factory, stock_checkpoint):
    """A 7B-shaped Mistral GRIT checkpoint with random weights (bf16 on disk) and the tiny test tokenizer."""
    from transformers import AutoTokenizer

    from grit_hf import GritLMConfig, GritLMForCausalLM, save_grit_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(stock_checkpoint("mistral"))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GritLMForCausalLM(GritLMConfig(text_config=_mistral_7b_config(vocab_size=len(tokenizer))))
    model = model.to(torch.bfloat16)
    path = tmp_path_factory.mktemp("mistral-7b")
    save_grit_checkpoint(model, tokenizer, path)
    del model
    torch.cuda.empty_cache()
    return path


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bf16_matches_fp32_on_7b_mistral(mistral_7b_dir, attn):
    from grit_hf import GritLMForCausalLM

    fp32 = GritLMForCausalLM.from_pretrained(mistral_7b_dir, dtype=torch.float32, attn_implementation=attn).cuda()
    reference = fp32.encode(TEXTS, instruction="Retrieve the passage", convert_to_tensor=True)
    del fp32
    torch.cuda.empty_cache()
    bf16 = GritLMForCausalLM.from_pretrained(mistral_7b_dir, dtype=torch.bfloat16, attn_implementation=attn).cuda()
    out = bf16.encode(TEXTS, instruction="Retrieve the passage", convert_to_tensor=True)
    assert out.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(out, reference, dim=-1)
    print(f"{attn}: bf16 vs fp32 cosine min {cosine.min().item():.6f}")
    assert cosine.min().item() >= 0.999
    ids = bf16.tokenizer("The capital of France", return_tensors="pt").to("cuda")
    generated = bf16.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 4


def test_tiny_model_cuda_matches_cpu(grit_checkpoint):
    from grit_hf import GritLMForCausalLM

    path = grit_checkpoint("llama")
    cpu = GritLMForCausalLM.from_pretrained(path).encode(TEXTS)
    gpu = GritLMForCausalLM.from_pretrained(path).cuda().encode(TEXTS)
    assert abs(cpu - gpu).max() <= 1e-4
