"""Reranking with the same model (`grit_hf.rag.rerank`): likelihood scores equal a hand computation and the same
scores from text, permutations are parsed and repaired as written, RankGPT's window slides as written, and search /
answer rerank their first-stage candidates."""

from __future__ import annotations

import math

import pytest
import torch

from grit_hf import GritLMForCausalLM
from grit_hf.generation.plan import Cached, Tokens
from grit_hf.rag import GritRAG
from grit_hf.rag.prompts import fill
from grit_hf.rag.rerank import LIKELIHOOD_PROMPT, Reranker, repair_permutation

DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The Danube crosses ten countries on its way to the Black Sea.",
]
QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def model(stock_checkpoint):
    return GritLMForCausalLM.from_pretrained(stock_checkpoint("llama"), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def causal(model):
    rag = GritRAG(model, cache_attention="causal")
    rag.add_documents(DOCS, ids=["paris", "berlin", "photo", "danube"])
    return rag


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[2] > [1] > [3]", [1, 0, 2]),
        ("[3] > [3] > [9] > [0] > [1]", [2, 0, 1]),  # repeats and out-of-range dropped, [2] appended
        ("I cannot rank these.", [0, 1, 2]),  # nothing usable: the first-stage order
        ("[2]>[1]", [1, 0, 2]),
        ("", [0, 1, 2]),
    ],
)
def test_permutations_are_parsed_and_repaired(text, expected):
    assert repair_permutation(text, 3) == expected


def test_likelihood_scores_equal_a_hand_computation_and_text(causal):
    """exp(mean log P(query | document + instruction)), computed by hand with the plain model on the whole prompt;
    from causal cached states the scores equal those from text."""
    scores = causal.rerank(QUERY, doc_ids=["paris", "berlin"])
    text_scores = causal.rerank(QUERY, doc_ids=["paris", "berlin"], reuse_cache=False)
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(text_scores), rtol=1e-5, atol=1e-7)
    tokenizer, model = causal.tokenizer, causal.model
    suffix = fill(LIKELIHOOD_PROMPT, user=causal.prompts.user, assistant=causal.prompts.assistant)
    query_ids = tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    for doc_id, score in zip(["paris", "berlin"], scores):
        prompt = causal.index.document_input_ids(doc_id) + tokenizer(suffix, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + query_ids])).logits[0].float()
        log_probs = logits[len(prompt) - 1 : -1].log_softmax(-1)
        expected = math.exp(float(log_probs.gather(-1, torch.tensor(query_ids)[:, None]).mean()))
        assert score == pytest.approx(expected, rel=1e-5)


def test_texts_that_are_indexed_are_read_from_their_states(causal):
    from grit_hf.rag.rerank import candidate_items

    items = candidate_items(causal, None, [DOCS[1], "An unindexed passage about rivers and seas."])
    assert isinstance(items[0], Cached) and items[0].doc_id == "berlin"
    assert isinstance(items[1], Tokens) and items[1].embedding_input
    by_text = causal.rerank(QUERY, texts=[DOCS[1], DOCS[0]])
    by_id = causal.rerank(QUERY, doc_ids=["berlin", "paris"])
    assert by_text == by_id
    with pytest.raises(TypeError, match="not both"):
        causal.rerank(QUERY, doc_ids=["paris"], texts=["x"])
    with pytest.raises(ValueError, match="method"):
        causal.rerank(QUERY, doc_ids=["paris"], method="bm25")
    with pytest.raises(ValueError, match="Unknown document"):
        causal.rerank(QUERY, doc_ids=["nope"])


def test_the_permutation_window_slides_as_rankgpt_does(causal, monkeypatch):
    """With a window ranker that orders by a known relevance, the window slides from the end of the list to its top
    as RankGPT's does. By hand (window 3, step 1, relevance 0:1 1:5 2:2 3:9 4:3 5:7): [3 4 5] -> 0 1 2 3 5 4;
    [2 3 5] -> 0 1 3 5 2 4; [1 3 5] -> 0 3 5 1 2 4; [0 3 5] -> 3 5 0 1 2 4 (one pass, not a full sort)."""
    relevance = {0: 1, 1: 5, 2: 2, 3: 9, 4: 3, 5: 7}
    items = [Tokens([1, 2, index]) for index in range(6)]
    seen = []

    def rank_window(self, rag, query, window, reuse_cache):
        seen.append([item.ids[-1] for item in window])
        return sorted(range(len(window)), key=lambda i: -relevance[window[i].ids[-1]])

    monkeypatch.setattr(Reranker, "_rank_window", rank_window)
    scores = Reranker("permutation", window=3, step=1).scores(causal, QUERY, items)
    order = sorted(range(6), key=lambda i: -scores[i])
    assert seen[0] == [3, 4, 5] and len(seen) == 4
    assert order == [3, 5, 0, 1, 2, 4]
    assert scores[3] == 1.0 and min(scores) > 0


def test_permutation_prompts_read_the_candidates_from_their_states(causal):
    """The prompt lists the candidates as cached items inside the chat template: from causal states the generated
    order equals the one generated from text, and it is a complete permutation."""
    reranker = Reranker("permutation", max_new_tokens=12)
    cached = reranker.scores(causal, QUERY, [Cached("paris"), Cached("berlin"), Cached("photo")])
    text = reranker.scores(causal, QUERY, [Cached("paris"), Cached("berlin"), Cached("photo")], reuse_cache=False)
    assert cached == text and sorted(cached) == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_search_and_answer_rerank_their_candidates(causal, monkeypatch):
    first_stage = causal.search(QUERY, top_k=4)
    boost = {"danube": 0.9, "photo": 0.8, "berlin": 0.1, "paris": 0.2}

    def scores(self, rag, query, candidates, reuse_cache=True):
        return [boost[item.doc_id] for item in candidates]

    monkeypatch.setattr(Reranker, "scores", scores)
    reranked = causal.search(QUERY, top_k=2, rerank="likelihood", rerank_top_k=4)
    assert reranked == [("danube", 0.9), ("photo", 0.8)]
    assert {doc_id for doc_id, _ in first_stage} == set(boost)
    only_two = causal.search(QUERY, top_k=2, rerank="likelihood", rerank_top_k=2)
    assert {doc_id for doc_id, _ in only_two} == {doc_id for doc_id, _ in first_stage[:2]}
    answer = causal.answer(QUERY, mode="doc", top_k=1, rerank="likelihood", rerank_top_k=4, max_new_tokens=2)
    assert answer.doc_ids == ["danube"] and answer.scores == [0.9]
    with pytest.raises(ValueError, match="rerank_top_k"):
        causal.search(QUERY, rerank="likelihood", rerank_top_k=0)


def test_bidirectional_scores_approximate_the_text_scores(model):
    """From the embedding pass's own states the scores are an approximation (documented), close on this model."""
    rag = GritRAG(model, cache_attention="bidirectional")
    rag.add_documents(DOCS, ids=["paris", "berlin", "photo", "danube"])
    cached = torch.tensor(rag.rerank(QUERY, doc_ids=["paris", "berlin", "photo"]))
    text = torch.tensor(rag.rerank(QUERY, doc_ids=["paris", "berlin", "photo"], reuse_cache=False))
    assert not torch.equal(cached, text)
    torch.testing.assert_close(cached, text, rtol=0.2, atol=0)
