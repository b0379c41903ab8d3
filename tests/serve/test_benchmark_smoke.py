"""`benchmarks/serve_load.py --smoke`: `grit-hf serve` started as its own process by the command line, loaded by
concurrent clients on every flow (embeddings, chat, RAG with and without cached states), with no errors."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[2]


def test_serve_load_smoke_run(tmp_path):
    module = load_benchmark("serve_load")
    assert module.main(["--smoke", "--concurrency", "1", "2", "--output", str(tmp_path / "smoke")]) == 0
    report = json.loads((tmp_path / "smoke.json").read_text())
    rows = {(row["flow"], row["concurrency"]): row for row in report["results"]}
    assert set(rows) == {
        (flow, n) for flow in ("embeddings", "chat", "rag (cached)", "rag (no cache)") for n in (1, 2)
    }
    assert all(row["errors"] == 0 and row["requests"] == 2 * row["concurrency"] for row in rows.values())
    assert rows["rag (cached)", 2]["mean_cached_tokens"] > 0 and rows["rag (no cache)", 2]["mean_cached_tokens"] == 0
    assert (tmp_path / "smoke.png").stat().st_size > 0 and "| rag (cached) | grit-hf bf16+batching |" in (
        tmp_path / "smoke.md"
    ).read_text()
