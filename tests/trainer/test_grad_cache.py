from __future__ import annotations

import pytest
import torch
from sentence_transformers.base.losses.gradcache import RandContext
from torch.testing import assert_close
from transformers import AutoTokenizer

from grit_hf import GritLMForCausalLM, load_grit_config
from grit_hf.trainer import add_embedding_forward
from grit_hf.trainer.collators import tokenize_pairs
from grit_hf.trainer.grad_cache import representation_backward

from .helpers import INSTRUCTION, TOPICS


def _setup(path, attention_dropout: float = 0.0):
    config = load_grit_config(path)
    config.text_config.attention_dropout = attention_dropout
    model = GritLMForCausalLM.from_pretrained(path, config=config)
    model.train()
    add_embedding_forward(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    queries = tokenize_pairs(tokenizer, model.config, [(INSTRUCTION, t[:15]) for t in TOPICS[:5]], 96)
    passages = tokenize_pairs(tokenizer, model.config, [("", t) for t in TOPICS[:5] + TOPICS[3:8]], 128)
    return model, queries, passages


def _embed(model):
    def embed(features):
        return model(
            input_ids=features.input_ids, attention_mask=features.attention_mask,
            prefix_lengths=features.prefix_lengths, grit_embed=True,
        )  # fmt: skip

    return embed


def _gradients(model, queries, passages, chunk_size, with_extra=False):
    model.zero_grad(set_to_none=True)
    extra = None
    if with_extra:
        ids = queries.input_ids[:2]

        def extra():
            return model(input_ids=ids, labels=ids).loss * 0.5

    loss, extra_value = representation_backward(
        _embed(model), queries, passages, torch.arange(len(queries)), temperature=0.02, loss_scale=0.7,
        chunk_size=chunk_size, extra_loss=extra,
    )  # fmt: skip
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss, extra_value, grads


@pytest.mark.parametrize("chunk_size", [1, 3])
@pytest.mark.parametrize("with_extra", [False, True])
def test_gradcache_gradient_equals_unchunked(tiny_grit, chunk_size, with_extra):
    model, queries, passages = _setup(tiny_grit)
    loss, extra, reference = _gradients(model, queries, passages, None, with_extra)
    chunked_loss, chunked_extra, chunked = _gradients(model, queries, passages, chunk_size, with_extra)
    assert_close(chunked_loss, loss, rtol=1e-5, atol=1e-6)
    if with_extra:
        assert_close(chunked_extra, extra)
        assert "lm_head.weight" in chunked
    assert reference.keys() == chunked.keys() and len(reference) > 10
    for name in reference:  # float noise only: differences are ~1e-7 of the gradient's scale
        scale = reference[name].abs().max().item()
        assert_close(chunked[name], reference[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_rand_context_replays_dropout(tiny_grit):
    """sentence-transformers' `RandContext` (used by the GradCache step) replays the embedding pass's dropout."""
    model, queries, _ = _setup(tiny_grit, attention_dropout=0.5)
    state = RandContext(queries.input_ids)
    with torch.no_grad():
        first = _embed(model)(queries)
        with state:
            replayed = _embed(model)(queries)
        state_again = RandContext(queries.input_ids)
        other = _embed(model)(queries)
    assert not torch.equal(first, other)  # dropout is active
    assert torch.equal(replayed, first)
    with torch.no_grad(), state_again:
        assert torch.equal(_embed(model)(queries), other)
    assert replayed.shape == first.shape


def test_chunk_size_must_be_positive(tiny_grit):
    model, queries, passages = _setup(tiny_grit)
    with pytest.raises(ValueError, match="chunk_size"):
        representation_backward(_embed(model), queries, passages, torch.arange(5), 0.02, 1.0, chunk_size=0)
