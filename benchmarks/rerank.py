"""Reranking with the same model (the paper's Table 3): retrieval quality before and after, and what reading the
candidates from their cached states saves.

Quality (manpages/eval, held out): nDCG@10 of embedding retrieval alone, then with its top `--rerank-top-k` reranked by
each method (`grit_hf.evaluation.reranking.RerankingRetriever`; one first stage per model, reranked by each method).
Time: `--candidates` synthetic documents of `--doc-tokens` tokens and a short query; scoring them all by each method
from their cached states against the same scores read as text (medians of `--runs`, round-robin).

    python benchmarks/rerank.py --models default default-base --threads 1 --results benchmarks/results/rerank_cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rag_latency import text_of_tokens
from report import command_line, data_folder, environment, write_report

METHODS = ("likelihood", "permutation")
QUERY = "Which passage explains how the river reaches the sea?"


def quality(model_name: str, args) -> dict:
    from grit_hf import load_model
    from grit_hf.evaluation import RetrievalEvaluator, retrieval_metrics
    from grit_hf.evaluation.reranking import RerankingRetriever
    from grit_hf.rag.rerank import Reranker
    from grit_hf.records.retrieval import load_retrieval_data

    data = load_retrieval_data(args.data or data_folder() / "manpages" / "eval")
    if args.queries:
        kept = list(data.qrels)[: args.queries]
        data.qrels = {qid: data.qrels[qid] for qid in kept}
    evaluator = RetrievalEvaluator(data, top_k=args.rerank_top_k)
    model = load_model(model_name)
    retriever = RerankingRetriever(
        model, rerank=None, rerank_top_k=args.rerank_top_k, max_length=args.max_length,
        cache_bytes=int(args.cache_gb * 2**30), show_progress_bar=not args.no_progress,
    )  # fmt: skip
    first = evaluator(retriever)
    rows = {"embedding retrieval": {"ndcg@10": first["ndcg@10"], "seconds": None}}
    for method in args.methods:
        retriever.reranker, retriever.rerank_seconds = Reranker(method), 0.0
        after = retrieval_metrics(evaluator.search(retriever), evaluator.data.qrels, evaluator.metrics)
        rows[f"+ {method}"] = {"ndcg@10": after["ndcg@10"], "seconds": retriever.rerank_seconds}
    return {"queries": len(evaluator.query_ids), "dtype": str(model.dtype), "rows": rows}


def timings(model_name: str, args) -> dict:
    from grit_hf import GritRAG, load_model

    model = load_model(model_name)
    rag = GritRAG(model, max_length=args.doc_tokens + 64)
    texts = [text_of_tokens(rag.tokenizer, args.doc_tokens + index) for index in range(args.candidates)]
    doc_ids = rag.add_documents(texts)
    seconds = {(method, cached): [] for method in args.methods for cached in (True, False)}
    for run in range(args.runs + 1):  # the first run warms up
        for method, cached in seconds:
            started = time.perf_counter()
            rag.rerank(QUERY, doc_ids=doc_ids, method=method, reuse_cache=cached)
            if run:
                seconds[method, cached].append(time.perf_counter() - started)
    out = {}
    for method in args.methods:
        from_states, from_text = (statistics.median(seconds[method, c]) for c in (True, False))
        out[method] = {"cached_s": from_states, "text_s": from_text, "ratio": from_states / from_text}
    return {"dtype": str(model.dtype), "cache_attention": rag.cache_attention, "methods": out}


def markdown(report: dict) -> str:
    lines = [
        "# Reranking with the same model",
        "",
        f"{report['environment']['date']}, {report['environment']['machine']['cpu']}, {report['threads']} thread(s); "
        f"command: `{report['command']}`",
    ]
    for model, entry in report["models"].items():
        q, t = entry["quality"], entry["time"]
        lines += [
            "",
            f"## {model}",
            "",
            f"manpages/eval, {q['queries']} queries, top {report['rerank_top_k']} reranked ({q['dtype']}):",
            "",
            "| retrieval | nDCG@10 | gain | reranking s (all queries) |",
            "|---|---:|---:|---:|",
        ]
        base = q["rows"]["embedding retrieval"]["ndcg@10"]
        for name, row in q["rows"].items():
            seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
            lines.append(f"| {name} | {row['ndcg@10']:.4f} | {row['ndcg@10'] - base:+.4f} | {seconds} |")
        lines += [
            "",
            f"Time to score {report['candidates']} candidates of {report['doc_tokens']} tokens ({t['dtype']}, "
            f"{t['cache_attention']} cached states), medians of {report['runs']}:",
            "",
            "| method | from cached states s | from text s | ratio |",
            "|---|---:|---:|---:|",
            *(
                f"| {m} | {v['cached_s']:.3f} | {v['text_s']:.3f} | {v['ratio']:.2f} |"
                for m, v in t["methods"].items()
            ),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["default", "default-base"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--data", default=None, help="a retrieval folder (default: the shared manpages/eval)")
    parser.add_argument("--queries", type=int, default=None, help="the first N judged queries (default: all)")
    parser.add_argument("--rerank-top-k", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=256, help="tokens embedded per document")
    parser.add_argument("--cache-gb", type=float, default=3.0, help="memory for the documents' states")
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--doc-tokens", type=int, default=250)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--results", default=None, help="write PREFIX.json and PREFIX.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {
        "environment": environment("transformers", "grit-hf"),
        "command": command_line(__file__, argv),
        "threads": args.threads,
        "rerank_top_k": args.rerank_top_k,
        "candidates": args.candidates,
        "doc_tokens": args.doc_tokens,
        "runs": args.runs,
        "models": {m: {"quality": quality(m, args), "time": timings(m, args)} for m in args.models},
    }
    write_report(args.results, report, markdown(report))


if __name__ == "__main__":
    main()
