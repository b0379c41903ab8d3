"""The README's runnable examples run end to end on the default model and reuse cached document states, and the
retrieval benchmark runs on a tiny retrieval set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["langchain_rag.py", "llamaindex_rag.py"])
def test_readme_examples_run(script, default_model_dir):
    completed = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), "--threads", "1", "--max-tokens", "12"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout.lower()
    assert "eiffel" in output  # the retrieved document
    assert "cache" in output and "0 cached" not in output  # it reports reused states


def test_retrieval_benchmark_runs_on_a_tiny_set(tmp_path, default_model_dir):
    folder = tmp_path / "tiny-retrieval"
    folder.mkdir()
    corpus = ["chgrp changes the group of each file.", "ls lists directory contents.", "cp copies files."]
    queries = ["change group ownership", "list directory contents", "copy files"]
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(corpus))
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(queries))
    )
    (folder / "qrels.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(3)))
    retrieval_eval = load_benchmark("retrieval_eval")

    output = tmp_path / "retrieval"
    argv = ["--data", str(folder), "--configs", "bm25", "minilm", "grit-bidirectional", "--output", str(output)]
    assert retrieval_eval.main(argv) == 0
    results = json.loads(output.with_suffix(".json").read_text())["results"]
    assert set(results) == {"bm25", "minilm", "grit-bidirectional"}
    assert results["minilm"]["ndcg@10"] == 1.0  # three obvious pairs
    assert 0 < results["grit-bidirectional"]["ndcg@10"] <= 1


def test_bf16_error_benchmark_compares_with_the_reference(stock_checkpoint):
    """The comparison behind tests/test_gpu.py's bf16 check, on CPU and the tiny model: grit-hf's fp32 embeddings
    are the reference's, and its bf16 error is the reference's within the margin the GPU test allows."""
    pytest.importorskip("gritlm")
    bf16_error = load_benchmark("bf16_error")
    bf16_errors, error_ratio = bf16_error.bf16_errors, bf16_error.error_ratio

    errors = bf16_errors(stock_checkpoint("mistral"), "eager")
    assert max(abs(e) for e in errors["grit_hf_fp32"]) <= 1e-6
    assert 0 < max(errors["reference_bf16"]) < 1e-2  # bf16 does lose something
    assert error_ratio(errors) <= 1.5


def _readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith("python\n")]


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(default_model_dir, monkeypatch):
    """Every Python block of the README runs, in order, in one namespace, on the default model (Hub names are
    swapped for "default": no hub is reachable here). The OpenAI-client block needs a server: tests/serve runs the
    same calls against one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    blocks = _readme_python_blocks()
    assert len(blocks) >= 5
    namespace: dict = {}
    ran = 0
    for block in blocks:
        if "OpenAI(" in block:
            continue
        code = block.replace('"GritLM/GritLM-7B"', '"default"').replace(
            'rag.generate([{"role": "user", "content": "..."}])',
            'rag.generate([{"role": "user", "content": "Hello"}], max_new_tokens=4)',
        )
        exec(compile(code, "README.md", "exec"), namespace)
        ran += 1
    assert ran == len(blocks) - 1
    assert namespace["answer"].cache_read_tokens > 0 and namespace["answer"].doc_ids
