"""The benchmark scripts run (tiny model, few texts) and their GPU modes exit cleanly without CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_benchmark
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[2]


def test_encode_flops_by_hand(grit_checkpoint):
    from grit_hf import GritLMConfig

    throughput = load_benchmark("encode_throughput")
    config = GritLMConfig.from_pretrained(grit_checkpoint("llama"))  # hidden 64, 4 heads x 16, 2 kv heads, mlp 128
    per_layer = 2 * 64 * (64 + 2 * 32) + 2 * 64 * 64 + 2 * 3 * 64 * 128
    expected = 2 * per_layer * 10 + 4 * 64 * 2 * 10 * 10
    assert throughput.encode_flops(config, [10]) == expected


def test_encode_throughput_runs_on_a_tiny_model(grit_checkpoint, tmp_path, capsys, shared_data, monkeypatch):
    monkeypatch.setenv("GRIT_HF_DATA", str(shared_data))
    throughput = load_benchmark("encode_throughput")
    argv = ["--model", str(grit_checkpoint("llama")), "--n-docs", "6", "--n-queries", "6", "--rounds", "1"]
    argv += ["--methods", "grit-hf", "reference", "sentence-transformers", "--threads", "1"]
    assert throughput.main([*argv, "--max-length", "160", "--output", str(tmp_path / "tp")]) == 0
    result = json.loads((tmp_path / "tp.json").read_text())
    rows = {(row["method"], row["dtype"]): row for row in result["results"]}
    assert set(rows) == {
        (m, d) for m in ("grit-hf", "reference", "sentence-transformers") for d in ("float32", "bfloat16")
    }
    for method in ("grit-hf", "reference", "sentence-transformers"):  # the same embeddings in fp32
        assert rows[method, "float32"]["cosine_to_grit_hf_first_dtype_min"] >= 1 - 1e-6
        assert rows[method, "bfloat16"]["cosine_to_grit_hf_first_dtype_mean"] >= 0.99  # bf16 rounding only
    assert rows["grit-hf", "float32"]["speedup_vs_grit_hf_first_dtype"] == 1.0
    assert (tmp_path / "tp.md").read_text().count("|") > 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_gpu_mode_skips_without_cuda(capsys):
    throughput = load_benchmark("encode_throughput")
    assert throughput.main(["--model", "mistral-7b-random", "--device", "cuda", "--dtypes", "bfloat16"]) == 0
    assert "CUDA is not available" in capsys.readouterr().out


def test_rag_latency_runs_on_a_tiny_model_and_reports_fidelity(grit_checkpoint, tmp_path):
    latency = load_benchmark("rag_latency")
    output = tmp_path / "latency"
    argv = ["--model", str(grit_checkpoint("llama")), "--lengths", "12", "--runs", "1", "--disk-runs", "1"]
    latency.main([*argv, "--new-tokens", "3", "--threads", "1", "--output", str(output)])
    result = json.loads(output.with_suffix(".json").read_text())
    rows = {(r["sample"], r["mode"]): r for r in result["rows"]}
    assert len(rows) == 14 and result["disk"]
    # causal caches (the checkpoint's setting): doc and query caching give plain RAG's answer exactly
    assert rows[("A", "doc")]["cache_attention"] == "causal"
    assert rows[("A", "doc")]["exact_match"] == 1.0 and rows[("B", "query")]["token_f1"] == 1.0
    assert "token F1 / exact match" in output.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    "script", ["decode_engine", pytest.param("gradcache_memory", marks=pytest.mark.slow), "decode_profile"]
)
def test_benchmark_scripts_run_in_a_tiny_configuration(script, grit_checkpoint, tmp_path):
    module = load_benchmark(script)
    output = tmp_path / script
    if script == "decode_engine":
        argv = ["--model", str(grit_checkpoint("llama")), "--lengths", "20", "--runs", "1", "--new-tokens", "3"]
    elif script == "decode_profile":
        argv = [
            "--model",
            str(grit_checkpoint("llama")),
            "--batches",
            "1",
            "3",
            "--prompt-tokens",
            "12",
            "--steps",
            "2",
            "--settings",
            "bfloat16",
            "int4",
            "--bandwidth-mib",
            "4",
        ]
    else:
        argv = ["--model", str(grit_checkpoint("llama")), "--batch-sizes", "4", "8", "--chunk-size", "2"]
    assert module.main([*argv, "--output", str(output)]) in (0, None)
    report = json.loads(output.with_suffix(".json").read_text())
    if script == "decode_engine":
        assert all(row["same_tokens"] for row in report["rows"])  # both engines decode the same greedy tokens
    if script == "decode_profile":
        assert len(report["points"]) == 4 and all(
            p["operators_ms"] > 0 and p["bound_ms"] > 0 for p in report["points"]
        )
        dense, int4 = report["points"][0], report["points"][2]  # batch 1 of each setting
        assert int4["weight_bytes"] < dense["weight_bytes"] / 3 and report["bandwidth_gb_s"]["1"]["triad"] > 0
    assert output.with_suffix(".md").is_file()


def test_kv_quantization_runs_on_a_tiny_model(grit_checkpoint, shared_data, tmp_path):
    quantization = load_benchmark("kv_quantization")
    output = tmp_path / "kvq"
    argv = ["--model", str(grit_checkpoint("llama")), "--data", str(shared_data / "manpages" / "eval"), "--first", "0"]
    argv += ["--questions", "2", "--bidirectional-questions", "1", "--new-tokens", "3", "--verify", "1"]
    quantization.main([*argv, "--lengths", "12", "--runs", "1", "--latency-new-tokens", "2", "--output", str(output)])
    report = json.loads(output.with_suffix(".json").read_text())
    causal, bidirectional = report["fidelity"]
    assert (causal["questions"], bidirectional["questions"]) == (2, 1)
    assert causal["bytes_per_token"]["int8"] < causal["bytes_per_token"]["bf16"]  # (fixed per-entry block: short docs)
    assert causal["generated_disagreements"] == 0  # the teacher-forced check predicts what generation does
    assert report["latency"] and output.with_suffix(".md").is_file()


def test_dtype_quality_runs_on_a_tiny_model(grit_checkpoint, shared_data, tmp_path, monkeypatch):
    """bf16 against fp32: retrieval, answers and parity with the reference, on a tiny model and a subset."""
    pytest.importorskip("gritlm")
    monkeypatch.setenv("GRIT_HF_DATA", str(shared_data))
    quality = load_benchmark("dtype_quality")
    output = tmp_path / "dtype"
    argv = ["--model", str(grit_checkpoint("llama")), "--smoke", "--questions", "2", "--parity-texts", "4"]
    assert quality.main([*argv, "--new-tokens", "3", "--output", str(output)]) == 0
    report = json.loads(output.with_suffix(".json").read_text())
    assert set(report["retrieval"]) >= {"float32", "bfloat16", "cosine_mean", "cosine_min"}
    assert 0.9 < report["retrieval"]["cosine_min"] <= report["retrieval"]["cosine_mean"] <= 1 + 1e-6
    assert report["reference_parity"]["fp32_max_abs_diff_grit_hf_vs_reference"] <= 1e-5
    assert report["answers"]["identical"]["doc"].endswith("/2")


def test_bf16_residual_probe_runs_on_a_tiny_model(grit_checkpoint, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GRIT_HF_DATA", str(shared_data))
    probe = load_benchmark("bf16_residual_probe")
    model = AutoModelForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()
    ids = model.tokenizer("The capital of France", return_tensors="pt").input_ids
    with torch.no_grad():
        fp32 = model(ids).logits
        patched = probe.bf16_matmuls(model)
        assert patched.lm_head.weight.dtype == torch.float32  # the LM head and everything but the matmuls stay fp32
        assert {m.weight.dtype for m in patched.modules() if isinstance(m, probe.Bf16MatmulLinear)} == {torch.bfloat16}
        mixed = patched(ids).logits
    assert mixed.dtype == torch.float32 and 0 < (mixed - fp32).abs().max() < 0.05
    output = tmp_path / "probe"
    argv = ["--model", str(grit_checkpoint("llama")), "--questions", "1", "--new-tokens", "3", "--output", str(output)]
    assert probe.main(argv) == 0
    rows = json.loads(output.with_suffix(".json").read_text())["rows"]
    assert [r["variant"] for r in rows][:2] == ["float32", "bfloat16"] and rows[0]["identical_to_fp32"] == "2/2"


def test_reports_record_the_command_as_a_shell_would_run_it():
    report = load_benchmark("report")
    assert report.command_line("/anywhere/benchmarks/rag_latency.py", ["--lengths", "12", "--label", "a b"]) == (
        "python benchmarks/rag_latency.py --lengths 12 --label 'a b'"
    )


def test_recompute_frontier_runs_on_a_tiny_model(grit_checkpoint, tmp_path, shared_data, monkeypatch):
    """Every setting is evaluated and timed; amount 1.0 (every position recomputed) equals plain RAG."""
    monkeypatch.setenv("GRIT_HF_DATA", str(shared_data))
    frontier = load_benchmark("recompute_frontier")
    path = str(grit_checkpoint("llama"))
    argv = ["--models", path, "--rules", "head", "deviation", "--amounts", "0", "0.5", "1.0", "--examples", "2"]
    argv += ["--new-tokens", "4", "--time-dtypes", "float32", "--lengths", "12", "--time-new-tokens", "2"]
    frontier.main([*argv, "--runs", "1", "--no-progress", "--results", str(tmp_path / "f")])
    report = json.loads((tmp_path / "f.json").read_text())
    rows = report["models"][path]["fidelity"]["settings"]
    assert set(rows) == {"none", "head:0.5", "deviation:0.5", "head:1.0"}
    assert rows["head:1.0"]["token_f1"] == 1.0 and rows["head:1.0"]["cache_read"] == 0
    assert rows["none"]["recomputed"] == 0 < rows["head:0.5"]["recomputed"] < rows["head:1.0"]["recomputed"]
    assert set(report["time"]["float32"]["12"]) == {"plain", *rows}
    assert (tmp_path / "f.png").stat().st_size > 0 and "| head:0.5 |" in (tmp_path / "f.md").read_text()


def test_document_finding_runs_on_a_tiny_model(grit_checkpoint, tmp_path):
    """The benchmark finds every request's documents both ways (it asserts the same ids) and reports the times."""
    finding = load_benchmark("document_finding")
    finding.main(["--documents", "300", "--runs", "3", "--model", str(grit_checkpoint("llama")), "--results",
                  str(tmp_path / "d")])  # fmt: skip
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["documents"] == 300 and set(report["median_ms"]) == {
        "by id (plan)", "pasted texts (plan)", "pasted texts (str.find, before)"
    }  # fmt: skip


def test_rerank_benchmark_runs_on_a_tiny_model(grit_checkpoint, tmp_path):
    """Both methods rerank the first stage (nDCG before and after) and are timed from states and from text."""
    from evaluation.retrieval_folder import write_data

    rerank = load_benchmark("rerank")
    path = str(grit_checkpoint("llama"))
    argv = [
        "--models",
        path,
        "--data",
        str(write_data(tmp_path / "data")),
        "--rerank-top-k",
        "3",
        "--max-length",
        "64",
    ]
    rerank.main([*argv, "--candidates", "3", "--doc-tokens", "12", "--runs", "1", "--no-progress", "--results",
                 str(tmp_path / "r")])  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    entry = report["models"][path]
    assert set(entry["quality"]["rows"]) == {"embedding retrieval", "+ likelihood", "+ permutation"}
    assert set(entry["time"]["methods"]) == {"likelihood", "permutation"}
    assert all(row["ndcg@10"] <= 1.0 for row in entry["quality"]["rows"].values())


def test_quantization_quality_runs_on_a_tiny_model(grit_checkpoint, shared_data, tmp_path, monkeypatch):
    """Quantized settings against bf16: retrieval, answers, fidelity and fingerprints, on a tiny model and a subset."""
    pytest.importorskip("torchao")
    monkeypatch.setenv("GRIT_HF_DATA", str(shared_data))
    quality = load_benchmark("quantization_quality")
    output = tmp_path / "quant"
    argv = ["--model", str(grit_checkpoint("llama")), "--smoke", "--questions", "2", "--new-tokens", "3"]
    assert quality.main([*argv, "--output", str(output)]) == 0
    report = json.loads(output.with_suffix(".json").read_text())
    rows = report["settings"]
    assert set(rows) == {"bfloat16", "int8", "int4"} and report["reference"] == "bfloat16"
    assert rows["int4"]["weight_bytes"] < rows["int8"]["weight_bytes"] < rows["bfloat16"]["weight_bytes"]
    assert rows["int4"]["fingerprint_differs"] and rows["int8"]["fingerprint_differs"]
    assert 0.5 < rows["int4"]["cosine_min"] <= rows["int4"]["cosine_mean"] <= 1 + 1e-6
    assert rows["int8"]["plain_vs_reference"]["identical"].endswith("/2")


def test_prefill_attention_benchmark_compares_an_attention_equal_to_sdpa(tmp_path):
    """The blocked matmul attention the benchmark times computes sdpa's attention (bf16 rounding apart)."""
    bench = load_benchmark("prefill_attention")
    assert bench.main(["--shapes", "2x40", "--repeats", "1", "--output", str(tmp_path / "attn")]) == 0
    rows = json.loads((tmp_path / "attn.json").read_text())["rows"]
    assert [r["attention"] for r in rows] == ["bidirectional, padded", "causal"]
    assert all(r["max_abs_diff"] < 0.05 for r in rows)  # outputs are averages of N(0, 1) values, in bf16
