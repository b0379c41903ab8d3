"""`grit_sdpa`: new tokens after cached ones attend exactly as with an explicit mask, through the maskless fast path."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import grit_hf.attention as attention
from grit_hf import GritLMForCausalLM


@pytest.fixture(scope="module")
def model(stock_checkpoint):
    return GritLMForCausalLM.from_pretrained(stock_checkpoint("llama")).eval()  # 4 heads, 2 key/value heads


def _prefill_after_cache(model, implementation: str, ids: torch.Tensor, cached: int):
    model.set_attn_implementation(implementation)
    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=ids[:, :cached], cache=cache, use_cache=True)
        positions = torch.arange(cached, ids.shape[1]).unsqueeze(0)
        logits = model(input_ids=ids[:, cached:], position_ids=positions, cache=cache, use_cache=True).logits
    return logits, cache


def test_loaded_models_use_grit_sdpa(model):
    assert model.config.get_text_config()._attn_implementation == attention.ATTENTION_NAME


@pytest.mark.parametrize("cached", [1, 7, 9, 30])  # padded queries (1, 7), merged calls (9, 30)
def test_prefill_after_a_cache_equals_the_masked_kernels(model, monkeypatch, cached):
    ids = torch.randint(3, 300, (1, 40), generator=torch.Generator().manual_seed(cached))
    calls, flash, sdpa = [], attention._flash, torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(attention, "_flash", lambda *args: calls.append("merged") or flash(*args))

    def counted_sdpa(query, *args, **kwargs):  # the padded call has a query row per key (40); the first pass fewer
        if query.shape[2] == ids.shape[1]:
            calls.append("padded")
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted_sdpa)
    fast, fast_cache = _prefill_after_cache(model, "grit_sdpa", ids, cached)
    monkeypatch.undo()
    padded = attention.PAD_RATIO * cached <= ids.shape[1] - cached  # one padded call, else cached part + new part
    layers = model.config.text_config.num_hidden_layers
    assert calls == (["padded"] * layers if padded else ["merged"] * 2 * layers), calls
    for reference in ("sdpa", "eager"):
        logits, cache = _prefill_after_cache(model, reference, ids, cached)
        torch.testing.assert_close(fast, logits, rtol=1e-5, atol=1e-5)
        for mine, theirs in zip(fast_cache.layers, cache.layers):
            torch.testing.assert_close(mine.keys, theirs.keys, rtol=1e-5, atol=1e-5)
    model.set_attn_implementation("grit_sdpa")


def _prefill_gradients(checkpoint, implementation: str, ids: torch.Tensor, cached: int, bf16: bool):
    """Logits and parameter gradients of a prefill after `cached` positions (training, optionally bf16 autocast)."""
    model = GritLMForCausalLM.from_pretrained(checkpoint)
    model.set_attn_implementation(implementation)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        cache = DynamicCache()
        model(input_ids=ids[:, :cached], cache=cache, use_cache=True)
        positions = torch.arange(cached, ids.shape[1]).unsqueeze(0)
        logits = model(input_ids=ids[:, cached:], position_ids=positions, cache=cache, use_cache=True).logits
    logits.float().logsumexp(-1).sum().backward()
    return logits.detach().float(), [p.grad for p in model.parameters() if p.grad is not None]


# 1 cached: the padded path; 30: the merged path at inference; 39: one new token, transformers' sdpa
@pytest.mark.parametrize("cached", [1, 30, 39], ids=["few-cached", "many-cached", "one-new-token"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_training_after_a_cache_gives_sdpas_gradients(stock_checkpoint, cached, bf16):
    """The cache loss trains through grit_sdpa: its forward and gradients are sdpa's on every path, in fp32 and under
    CPU bf16 autocast (`bf16: true, use_cpu: true`), where RoPE leaves queries and keys in fp32 next to bf16 values.
    In bf16 both are compared with the fp32 computation: grit_sdpa's error is sdpa's own."""
    checkpoint = stock_checkpoint("llama")
    ids = torch.randint(3, 300, (1, 40), generator=torch.Generator().manual_seed(cached))
    exact_logits, exact_grads = _prefill_gradients(checkpoint, "sdpa", ids, cached, bf16=False)
    results = {name: _prefill_gradients(checkpoint, name, ids, cached, bf16) for name in ("grit_sdpa", "sdpa")}

    def errors(name):
        logits, grads = results[name]
        assert len(grads) == len(exact_grads) > 0
        gradient = max(float((g - e).norm() / e.norm()) for g, e in zip(grads, exact_grads))
        return float((logits - exact_logits).abs().max()), gradient

    (logits_error, gradient_error), (sdpa_logits_error, sdpa_gradient_error) = errors("grit_sdpa"), errors("sdpa")
    if bf16:
        assert logits_error <= 1.5 * sdpa_logits_error + 1e-3 and gradient_error <= 1.5 * sdpa_gradient_error + 1e-3
    else:
        assert logits_error < 1e-5 and gradient_error < 1e-5, (logits_error, gradient_error)


def test_padding_and_decoding_keep_transformers_sdpa(model):
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: an explicit mask is needed
    results = {}
    for implementation in ("grit_sdpa", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.inference_mode():
            results[implementation] = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(results["grit_sdpa"], results["sdpa"], rtol=0, atol=1e-6)
    model.set_attn_implementation("grit_sdpa")


def test_training_with_dropout_uses_the_explicit_mask(stock_checkpoint):
    model = GritLMForCausalLM.from_pretrained(stock_checkpoint("llama"))
    model.config.text_config.attention_dropout = 0.0
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(0))
    model.train()
    cache = DynamicCache()
    model(input_ids=ids[:, :5], cache=cache, use_cache=True)
    logits = model(input_ids=ids[:, 5:], position_ids=torch.arange(5, 20)[None], cache=cache, use_cache=True).logits
    assert torch.isfinite(logits).all()
    model.eval()


@pytest.mark.parametrize("padded", [False, True])
def test_low_precision_decode_steps_compute_sdpas_numbers_in_fp32(stock_checkpoint, monkeypatch, padded):
    """A bf16 decode step on the CPU runs `_decode_attention` (fp32 matmuls), which gives the logits of transformers'
    sdpa computing the same bf16 model in fp32 internally; grouped-query heads and a left-padding mask included."""
    model = GritLMForCausalLM.from_pretrained(stock_checkpoint("llama"), dtype=torch.bfloat16).eval()  # 4 / 2 heads
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :5] = 0
    calls, real = [], attention._decode_attention
    monkeypatch.setattr(attention, "_decode_attention", lambda *a: calls.append(a[0].shape) or real(*a))
    steps = {}
    for implementation in ("grit_sdpa", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.inference_mode():
            cache = DynamicCache()
            model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], cache=cache, use_cache=True)
            positions = (mask.cumsum(1) - 1)[:, -1:]
            steps[implementation] = model(
                input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
            ).logits.float()
    model.set_attn_implementation("grit_sdpa")
    assert calls and all(shape[2] == 1 for shape in calls)  # the decode step, in every layer
    torch.testing.assert_close(steps["grit_sdpa"], steps["sdpa"], rtol=0, atol=0.05)  # bf16 rounding of the output
    reference = torch.nn.functional.scaled_dot_product_attention
    query, key, value = (torch.randn(1, heads, length, 8) for heads, length in ((4, 1), (2, 30), (2, 30)))
    expected = reference(query, key, value, enable_gqa=True).transpose(1, 2)
    got = attention._decode_attention(query.bfloat16(), key.bfloat16(), value.bfloat16(), None, None).float()
    rounded = reference(query.bfloat16().float(), key.bfloat16().float(), value.bfloat16().float(), enable_gqa=True)
    torch.testing.assert_close(got, rounded.transpose(1, 2), rtol=0, atol=1e-2)  # fp32 math of the bf16 inputs
    assert (got - expected).abs().max() < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_attention_of_a_padded_batch_is_each_rows_own(dtype):
    """Rows of a decode batch, left-padded to its longest cache: each row's output is, to the bit, what the row gets
    alone over its own keys (in another buffer), whatever the padding in front of it and the batch's size."""
    generator = torch.Generator().manual_seed(0)
    lengths = [1, 7, 64, 65, 300, 1031, 1500, 2]
    width = max(lengths)
    query = torch.randn(len(lengths), 9, 1, 64, generator=generator).to(dtype)  # 9 heads over 3 key/value heads
    key = (2 * torch.randn(len(lengths), 3, width + 64, 64, generator=generator)).to(dtype)[:, :, :width]
    value = torch.randn(len(lengths), 3, width + 64, 64, generator=generator).to(dtype)[:, :, :width]
    mask = torch.arange(width)[None] >= torch.tensor([width - length for length in lengths])[:, None]
    with torch.inference_mode():
        batched = attention._decode_attention(query, key, value, mask[:, None, None], None)
        for row, length in enumerate(lengths):
            own_key, own_value = key[row : row + 1, :, -length:].clone(), value[row : row + 1, :, -length:].clone()
            alone = attention._decode_attention(query[row : row + 1], own_key, own_value, None, None)
            assert torch.equal(batched[row : row + 1], alone), (row, length)
