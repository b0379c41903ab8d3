"""Selective recomputation of cached states (`grit_hf.generation.recompute`, composed by `compose`): recomputing
every position equals plain RAG's causal states, recomputing none is the path without recomputation, and recomputing
some equals a hand-built reference that decodes the chosen positions one by one on top of the cached states with
transformers' own cache (no custom mask)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from grit_hf import GritLMForCausalLM
from grit_hf.cache.positions import find_rotary_embedding, shift_layers
from grit_hf.generation.compose import close_with_text, compose, continuation_logits
from grit_hf.generation.plan import Cached, PromptPlan, Tokens
from grit_hf.generation.recompute import Recompute, choose_positions, deviation_values
from grit_hf.rag import GritRAG

DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine, and it has many bridges.",
    "Berlin is the capital of Germany; it has many museums and parks along the Spree.",
]
QUERY = "What is the capital of France?"
GEN = dict(max_new_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module", params=[("llama", True), ("qwen2", False)], ids=str)
def rag(request, stock_checkpoint):
    family, add_bos = request.param
    model = GritLMForCausalLM.from_pretrained(stock_checkpoint(family, add_bos=add_bos), dtype=torch.float32).eval()
    rag = GritRAG(model, cache_attention="bidirectional")
    rag.add_documents(DOCS, ids=["paris", "berlin"])
    return rag


def test_recomputing_every_position_is_plain_rag(rag):
    """r = 1: the cached documents are computed again causally, all of them: plain RAG's answer token for token
    (fp32) and its logits."""
    for top_k in (1, 2):
        full = rag.answer(QUERY, mode="doc", top_k=top_k, recompute=1.0, **GEN)
        plain = rag.answer(QUERY, mode="rag_doc_query", top_k=top_k, **GEN)
        assert full.token_ids == plain.token_ids
        assert full.cache_read_tokens == 0 and full.recomputed_tokens > 0
        assert full.prompt_tokens == plain.prompt_tokens
    plan = rag.build_plan(QUERY, "doc", ["paris", "berlin"], recompute="head:1.0")
    answer = rag.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    ours = rag.generator.continuation_logits(rag.resolve(plan), answer)
    theirs = rag.generator.continuation_logits(rag.resolve(plan, reuse_cache=False), answer)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_recomputing_nothing_is_the_path_without_recomputation(rag):
    """r = 0 parses to no recomputation, and an item naming no positions composes exactly as before."""
    assert Recompute.parse(0) is None and Recompute.parse("deviation:0") is None and Recompute.parse("none") is None
    base = rag.answer(QUERY, mode="doc", recompute="none", **GEN)
    assert rag.answer(QUERY, mode="doc", recompute=0.0, **GEN).token_ids == base.token_ids
    assert base.recomputed_tokens == 0
    plan = rag.resolve(rag.build_plan(QUERY, "doc", ["paris"], recompute="none"))
    named = PromptPlan([Cached("paris", plan.items[0].states, recompute=[]), *plan.items[1:]])
    rotary = find_rotary_embedding(rag.model)
    with torch.inference_mode():
        first = compose(rag.model, PromptPlan(close_with_text(plan.items)), DynamicCache(), rotary, rag.model.device)
        second = compose(rag.model, PromptPlan(close_with_text(named.items)), DynamicCache(), rotary, rag.model.device)
    assert torch.equal(first.logits, second.logits) and second.recomputed == 0


def _reference(rag, plan: PromptPlan, positions: list[int]):
    """By hand: the cached document's states placed at their offsets, then each chosen position decoded alone (a
    one-token forward sees the whole cache, so the cache is built to hold exactly what that position may see), then the
    rest of the prompt as text on top. Returns the logits of the last token and the states of every position."""
    model, rotary = rag.model, find_rotary_embedding(rag.model)
    document, *rest = plan.items
    n = document.num_tokens
    placed = shift_layers(
        [(k[..., : document.stop, :], v[..., : document.stop, :]) for k, v in document.states.layers()],
        0 - document.start, rotary, document.start,
    )  # fmt: skip
    keys = [k.clone() for k, _ in placed]
    values = [v.clone() for _, v in placed]
    ids = document.as_tokens().ids
    with torch.inference_mode():
        for position in sorted(positions):
            # what this position may see: the positions before it, cached or (chosen ones) already recomputed
            cache = DynamicCache([(k[:, :, :position], v[:, :, :position]) for k, v in zip(keys, values)])
            model(input_ids=torch.tensor([[ids[position]]]), position_ids=torch.tensor([[position]]), cache=cache,
                  use_cache=True)  # fmt: skip
            for layer, (k, v) in enumerate(zip(keys, values)):
                k[:, :, position] = cache.layers[layer].keys[:, :, -1]
                v[:, :, position] = cache.layers[layer].values[:, :, -1]
        cache = DynamicCache(list(zip(keys, values)))
        text = [t for item in rest for t in item.ids]
        logits = model(
            input_ids=torch.tensor([text]), position_ids=torch.arange(n, n + len(text))[None], cache=cache,
            use_cache=True,
        ).logits  # fmt: skip
    return logits[0, -1], keys, values


@pytest.mark.parametrize("positions", [[0, 1, 2], [3, 7, 8, 15], [5]])
def test_recomputed_positions_equal_a_hand_built_reference(rag, positions):
    plan = rag.resolve(rag.build_plan(QUERY, "doc", ["paris"], recompute="none"))
    document = plan.items[0]
    chosen = PromptPlan([Cached("paris", document.states, recompute=positions), *plan.items[1:]])
    expected_logits, keys, values = _reference(rag, plan, positions)
    rotary = find_rotary_embedding(rag.model)
    with torch.inference_mode():
        composition = compose(rag.model, chosen, DynamicCache(), rotary, rag.model.device)
    assert composition.recomputed == len(positions) and composition.cache_read == document.num_tokens - len(positions)
    torch.testing.assert_close(composition.logits[0, -1], expected_logits, rtol=1e-4, atol=1e-4)
    # the cache holds the kept positions first, then the recomputed ones and the text: compare position by position
    n = document.num_tokens
    kept = [p for p in range(n) if p not in positions]
    order = kept + sorted(positions)
    for layer, (k, v) in enumerate(zip(keys, values)):
        got = composition.cache.layers[layer]
        torch.testing.assert_close(got.keys[:, :, :n], k[:, :, order], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.values[:, :, :n], v[:, :, order], rtol=1e-4, atol=1e-4)
    # and the recomputed positions really changed: their states are not the cached ones
    cached_values = document.states.layers()[-1][1][:, :, document.start :]
    assert not torch.allclose(values[-1][:, :, positions], cached_values[:, :, positions], atol=1e-3)


def test_the_eager_attention_takes_the_same_mask(stock_checkpoint):
    model = GritLMForCausalLM.from_pretrained(stock_checkpoint("llama"), attn_implementation="eager").eval()
    eager = GritRAG(model, cache_attention="bidirectional")
    eager.add_documents(DOCS, ids=["paris", "berlin"])
    sdpa_model = GritLMForCausalLM.from_pretrained(stock_checkpoint("llama")).eval()
    sdpa = GritRAG(sdpa_model, cache_attention="bidirectional")
    sdpa.add_documents(DOCS, ids=["paris", "berlin"])
    for setting in ("head:4", "random:0.3", "deviation:0.2", 1.0):
        assert (
            eager.answer(QUERY, mode="doc", recompute=setting, **GEN).token_ids
            == sdpa.answer(QUERY, mode="doc", recompute=setting, **GEN).token_ids
        )


def test_rules_choose_their_positions(rag):
    assert Recompute(3, "head").choose(10, 2).tolist() == [[0, 1, 2]] * 2
    assert Recompute(0.3, "tail").choose(10, 1).tolist() == [[7, 8, 9]]
    assert Recompute(5, "ends").choose(10, 2).tolist() == [[0, 1, 2, 8, 9]] * 2  # the odd one at the head
    assert Recompute(1.0, "ends").choose(4, 1).tolist() == [[0, 1, 2, 3]]
    first = Recompute(4, "random", seed=5).choose(20, 1)
    assert torch.equal(first, Recompute(4, "random", seed=5).choose(20, 1)) and len(set(first[0].tolist())) == 4
    deviation = torch.tensor([[0.0, 5.0, 1.0, 9.0, 2.0]])
    assert Recompute(2, "deviation").choose(5, 1, deviation).tolist() == [[1, 3]]
    assert Recompute(0.5).count(7) == 4 and Recompute(100).count(7) == 7


def test_deviation_values_are_the_causal_layer_values(rag):
    ids = torch.tensor([rag.index.document_input_ids("paris")])
    with torch.inference_mode():
        full = rag.model(input_ids=ids, use_cache=True).cache
        for layer in (0, 1):
            torch.testing.assert_close(deviation_values(rag.model, ids, layer), full.layers[layer].values)
    with pytest.raises(ValueError, match="no layer"):
        deviation_values(rag.model, ids, 99)


def test_the_deviation_rule_recomputes_the_most_deviating_positions(rag):
    plan = rag.resolve(rag.build_plan(QUERY, "doc", ["paris"], recompute="deviation:4"))
    document = plan.items[0]
    ids = torch.tensor([[t for item in plan.as_text().items for t in item.ids]])
    with torch.inference_mode():
        fresh = deviation_values(rag.model, ids, 1)[:, :, : document.num_tokens]
    cached = document.states.layers()[1][1][:, :, document.start :]
    expected = sorted((cached - fresh).pow(2).sum(dim=(1, 3))[0].topk(4).indices.tolist())
    result = rag.answer(QUERY, mode="doc", doc_ids=["paris"], recompute="deviation:4", **GEN)
    assert result.recomputed_tokens == 4
    chosen = choose_positions(rag.model, close_with_text(plan.items), plan.recompute, "cpu")
    assert chosen[0].tolist() == [expected]


def test_settings_are_checked_and_recorded(rag):
    assert str(Recompute.parse("deviation:0.15")) == "deviation:0.15" and Recompute.parse(0.2).rule == "deviation"
    assert Recompute.parse("head:8") == Recompute(8, "head")
    for bad, error in (("sideways:3", ValueError), ("head:x", ValueError), (1.5, ValueError), (-2, ValueError),
                       (True, TypeError), ([1], TypeError)):  # fmt: skip
        with pytest.raises(error, match="recompute|Recompute"):
            Recompute.parse(bad)
    with pytest.raises(ValueError, match=r"\[0, "):
        rag.generate_from_plan([Cached("paris", recompute=[999]), "?"], max_new_tokens=2)
    causal = GritRAG(rag.model, cache_attention="causal")
    assert causal.recompute is None  # causal caches are exact: nothing to recompute by default
    rag.model.config.cache_recompute = "head:6"
    try:
        assert GritRAG(rag.model, cache_attention="bidirectional").recompute == Recompute(6, "head")
    finally:
        rag.model.config.cache_recompute = None


def test_generate_and_plan_prompt_carry_the_setting(rag):
    prompt = f"{rag.model.config.document_template}{DOCS[0]}\nQ: {QUERY}\nA:"
    result = rag.generate(prompt, recompute="head:5", **GEN)
    assert result.doc_ids == ["paris"] and result.recomputed_tokens == 5
    plan = rag.resolve(rag.plan_prompt(prompt))
    assert plan.recompute == rag.recompute


def test_batched_plans_recompute_each_row_its_own_positions(rag):
    """Two prompts of the same shape in one batch (as the cache loss composes them) give each row what it gives
    alone, with per-row deviation choices."""
    texts = [f"The code of the blue door is {d}{d}{d}, and it opens at {d} in the morning." for d in "123456789"]
    lengths = {}
    for text in texts:
        lengths.setdefault(len(rag.model.tokenize_for_embedding([text]).token_ids[0]), []).append(text)
    pair = next(group[:2] for group in lengths.values() if len(group) >= 2)
    ids = rag.add_documents(pair)
    plans = [rag.resolve(rag.build_plan(QUERY, "doc", [doc_id], recompute="deviation:0.25")) for doc_id in ids]
    from grit_hf.trainer.cache_loss import _stack

    batch = _stack(plans)
    answer = torch.tensor([[5, 6, 7]] * 2)
    rotary = find_rotary_embedding(rag.model)
    with torch.inference_mode():
        together = continuation_logits(rag.model, batch, answer, rotary, "cpu")
        for row, plan in enumerate(plans):
            alone = continuation_logits(rag.model, plan, [5, 6, 7], rotary, "cpu")
            torch.testing.assert_close(together[row], alone[0], rtol=1e-4, atol=1e-4)
    assert isinstance(batch.items[-1], Tokens)
    chosen = choose_positions(rag.model, close_with_text(batch.items), batch.recompute, "cpu")[0]
    assert chosen.shape[0] == 2 and not torch.equal(chosen[0], chosen[1])  # each row chose its own positions
