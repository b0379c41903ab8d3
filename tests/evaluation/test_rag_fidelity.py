"""`evaluate_rag_fidelity` / `grit-hf eval-rag`: with causal caches a single cached document or query answers as plain
RAG (F1 1, KL 0), the plain modes are compared with plain RAG, every recompute setting is a run of its own, and the
figures are the metrics of the answers as written (hand computation)."""

from __future__ import annotations

import json

import pytest
import torch

from grit_hf import GritLMForCausalLM, GritRAG
from grit_hf.cli import main
from grit_hf.evaluation.metrics import token_f1
from grit_hf.evaluation.rag_fidelity import evaluate_rag_fidelity, format_fidelity_table
from grit_hf.records.rag_examples import RAGExample

EXAMPLES = [
    RAGExample(["The capital of France is Paris, a city on the Seine."], "What is the capital of France?", "Paris"),
    RAGExample(["cp copies files and directories to a destination."], "What does cp do?", "copies files"),
]


@pytest.fixture(scope="module")
def model(grit_checkpoint):
    return GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"), dtype=torch.float32).eval()


def test_causal_caches_answer_as_plain_rag_and_plain_modes_compare_with_it(model):
    rag = GritRAG(model, cache_attention="causal")
    modes = ["none", "rag_doc_query", "rag_query_doc", "doc", "query"]
    result = evaluate_rag_fidelity(rag, EXAMPLES, modes=modes, max_new_tokens=4)
    figures = result["modes"]
    for mode in ("doc", "query"):  # one cached part first in the prompt: exactly plain RAG
        assert figures[mode]["token_f1"] == 1.0 and figures[mode]["kl"] == pytest.approx(0, abs=1e-6)
        assert figures[mode]["cache_read"] > 0 and figures[mode]["recomputed"] == 0
    assert figures["rag_doc_query"]["token_f1"] == 1.0 and figures["rag_doc_query"]["cache_read"] == 0
    answers = result["answers"]
    for mode in ("none", "rag_query_doc"):  # against plain RAG's answer, and the gold answers, as written
        expected = sum(token_f1(row[mode], row["rag_doc_query"]) for row in answers) / len(answers)
        assert figures[mode]["token_f1"] == pytest.approx(expected)
    gold = sum(token_f1(row["doc"]["none"], example.answer) for row, example in zip(answers, EXAMPLES)) / 2
    assert figures["doc"]["gold_f1"] == pytest.approx(gold)
    assert "| doc | none |" in format_fidelity_table(result)


def test_every_recompute_setting_is_a_run(model):
    rag = GritRAG(model, cache_attention="bidirectional")
    result = evaluate_rag_fidelity(rag, EXAMPLES, modes=["doc"], max_new_tokens=4, recompute=["none", "head:2", 1.0])
    runs = {run["recompute"]: run["modes"]["doc"] for run in result["runs"]}
    assert list(runs) == ["none", "head:2", "deviation:1.0"]
    assert runs["none"]["recomputed"] == 0 and runs["head:2"]["recomputed"] == 2
    assert runs["deviation:1.0"]["token_f1"] == 1.0 and runs["deviation:1.0"]["cache_read"] == 0
    with pytest.raises(ValueError, match="modes"):
        evaluate_rag_fidelity(rag, EXAMPLES, modes=["fast"])


def test_cli_writes_the_table_and_json(grit_checkpoint, tmp_path, capsys):
    data = tmp_path / "rag.jsonl"
    data.write_text("".join(json.dumps({"documents": e.documents, "question": e.question, "answer": e.answer}) + "\n"
                            for e in EXAMPLES))  # fmt: skip
    argv = ["eval-rag", "--model", str(grit_checkpoint("llama")), "--data", str(data), "--dtype", "float32"]
    argv += ["--modes", "rag_doc_query", "doc", "--recompute", "none", "head:2", "--max-new-tokens", "3"]
    assert main([*argv, "--no-progress", "--output", str(tmp_path / "out.json")]) == 0
    assert "| doc | head:2 |" in capsys.readouterr().out
    result = json.loads((tmp_path / "out.json").read_text())
    assert [run["recompute"] for run in result["runs"]] == ["none", "head:2"]
    assert "| rag_doc_query | - |" in (tmp_path / "out.md").read_text()
