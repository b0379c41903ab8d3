"""`grit-hf eval-retrieval`: retrieval metrics on local data; `grit-hf eval-rag`: caching fidelity."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..folders.resolve import DEFAULT_NAMES, resolve_checkpoint

__all__ = ["add_parsers"]


def _is_grit_folder(path: str) -> bool:
    config = Path(path) / "config.json"
    return path in DEFAULT_NAMES or (config.is_file() and json.loads(config.read_text()).get("model_type") == "gritlm")


def _make_retriever(args: argparse.Namespace):
    from ..evaluation import BM25Retriever, GritRetriever, SentenceTransformerRetriever

    if args.bm25 or args.bm25_stem:
        return BM25Retriever(stem=args.bm25_stem, max_words=args.max_length, show_progress_bar=not args.no_progress)
    if args.model is None:
        raise SystemExit("grit-hf eval-retrieval: give --model (a GRIT or sentence-transformers folder) or --bm25.")
    # names (Hub names: their snapshot folder in the HF cache) are resolved first, so the checks below see a folder
    model = args.model if args.model in DEFAULT_NAMES else str(resolve_checkpoint(args.model, revision=args.revision))
    is_st_folder = (Path(model) / "modules.json").is_file()
    if args.sentence_transformers or (is_st_folder and not _is_grit_folder(model)):
        if args.causal:
            raise SystemExit("grit-hf eval-retrieval: --causal needs the GRIT path (drop --sentence-transformers).")
        return SentenceTransformerRetriever(
            model,
            batch_size=args.batch_size,
            max_length=args.max_length,
            device=args.device,
            show_progress_bar=not args.no_progress,
        )
    return GritRetriever(  # GRIT checkpoints and stock decoder folders (wrapped as GRIT models)
        model,
        batch_size=args.batch_size,
        max_length=args.max_length or 512,
        is_causal=True if args.causal else None,
        device=args.device,
        dtype=args.dtype,
        quantization=args.quantization,
        show_progress_bar=not args.no_progress,
    )


def _make_reranking_retriever(args: argparse.Namespace):
    from ..checkpoint.loading import load_model
    from ..evaluation.reranking import RerankingRetriever

    if args.model is None or args.bm25 or args.bm25_stem or args.sentence_transformers or args.causal:
        raise SystemExit("grit-hf eval-retrieval: --rerank needs a GRIT --model (no --bm25, --causal or ST path).")
    model = load_model(args.model, device=args.device, dtype=args.dtype, revision=args.revision)
    return RerankingRetriever(
        model, args.rerank, rerank_top_k=args.rerank_top_k, max_length=args.max_length or 512,
        cache_bytes=int(args.rerank_cache_gb * 2**30), show_progress_bar=not args.no_progress,
    )  # fmt: skip


def _cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from ..evaluation import BM25Retriever, RetrievalEvaluator, retrieval_metrics

    start = time.perf_counter()
    retriever = _make_reranking_retriever(args) if args.rerank else _make_retriever(args)
    evaluator = RetrievalEvaluator(args.data, top_k=args.top_k, query_instruction=args.instruction)
    metrics = evaluator(retriever)
    if args.rerank:
        before = retrieval_metrics(evaluator.rankings(retriever.first_stage), evaluator.data.qrels, evaluator.metrics)
        metrics = {
            **{f"{name} (first stage)": value for name, value in before.items()},
            **metrics,
            "rerank_seconds": retriever.rerank_seconds,
        }
    result = {
        "data": str(args.data),
        "retriever": retriever.name,
        "queries": len(evaluator.data.qrels),
        "documents": len(evaluator.data.corpus),
        "max_length": args.max_length,
        "query_instruction": None if isinstance(retriever, BM25Retriever) else evaluator.query_instruction,
        **{name: round(value, 4) for name, value in metrics.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def _cmd_eval_rag(args: argparse.Namespace) -> int:
    from ..checkpoint.loading import load_model
    from ..evaluation.rag_fidelity import evaluate_rag_fidelity, format_fidelity_table
    from ..rag import GritRAG
    from ..records.rag_examples import read_rag_examples

    start = time.perf_counter()
    examples = read_rag_examples(args.data, question_template=args.question_template, limit=args.limit)
    model = load_model(
        args.model, device=args.device, dtype=args.dtype, revision=args.revision, quantization=args.quantization
    )
    rag = GritRAG(model, cache_attention=args.cache_attention, max_length=args.max_length)
    result = evaluate_rag_fidelity(
        rag,
        examples,
        modes=args.modes,
        max_new_tokens=args.max_new_tokens,
        retrieve_top_k=args.top_k if args.retrieve else None,
        show_progress_bar=not args.no_progress,
        recompute=args.recompute,
    )
    result.update(model=str(args.model), data=str(args.data), seconds=round(time.perf_counter() - start, 1))
    table = format_fidelity_table(result)
    if args.output:
        import shlex
        import sys

        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        command = "grit-hf " + shlex.join(sys.argv[1:])
        Path(args.output).with_suffix(".md").write_text(f"{table}\n\ncommand: `{command}`\n", encoding="utf-8")
    print(table)
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `grit-hf eval-retrieval` and `grit-hf eval-rag`."""
    from ..rag.prompts import CACHING_MODES, RAG_MODES
    from .model_commands import add_model_arguments, add_quantization_argument, add_recompute_argument

    rag = subparsers.add_parser(
        "eval-rag",
        help="RAG fidelity: each mode against plain RAG and the gold answers (token F1, KL, gold F1, time, hit@k); "
        "every mode gives the paper's Table 6 layout. JSON + table.",
    )
    rag.add_argument(
        "--data", required=True, help="a .jsonl of {documents, question, answer?} records, or a retrieval folder"
    )
    rag.add_argument("--modes", nargs="+", default=list(CACHING_MODES), choices=list(RAG_MODES))
    add_recompute_argument(rag, several=True)
    rag.add_argument(
        "--cache-attention",
        default=None,
        choices=["bidirectional", "causal"],
        help="cached states (default: the checkpoint's config.cache_attention)",
    )
    rag.add_argument("--question-template", default=None, help="for a retrieval folder: '... {query} ... {names} ...'")
    rag.add_argument("--limit", type=int, default=None, help="evaluate the first N examples")
    rag.add_argument("--max-new-tokens", type=int, default=32)
    rag.add_argument("--max-length", type=int, default=4096, help="tokens per document or query part")
    rag.add_argument("--retrieve", action="store_true", help="retrieve the documents (reports hit@k)")
    rag.add_argument("--top-k", type=int, default=1, help="documents retrieved per question with --retrieve")
    rag.add_argument(
        "--output",
        default=None,
        help="also write the JSON result (with every answer) to this file, and the table beside",
    )
    rag.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_model_arguments(rag)
    rag.set_defaults(func=_cmd_eval_rag)

    parser = subparsers.add_parser(
        "eval-retrieval",
        help="nDCG@10, recall@1/10, MRR@10 on local retrieval data (GRIT, sentence-transformers or BM25).",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="GRIT checkpoint (folder, Hub name, 'default') or a sentence-transformers folder or Hub name",
    )
    parser.add_argument(
        "--data", required=True, help="folder with queries.jsonl, corpus.jsonl, qrels.tsv [, task.json]"
    )
    parser.add_argument(
        "--rerank",
        choices=["likelihood", "permutation"],
        default=None,
        help="rerank each query's first --rerank-top-k with the same GRIT model (reports the metrics before too)",
    )
    parser.add_argument("--rerank-top-k", type=int, default=10, help="candidates reranked per query")
    parser.add_argument(
        "--rerank-cache-gb", type=float, default=2.0, help="memory for the documents' cached states while reranking"
    )
    parser.add_argument("--bm25", action="store_true", help="BM25 (bm25s) instead of a model")
    parser.add_argument("--bm25-stem", action="store_true", help="BM25 with the English stemmer (PyStemmer)")
    parser.add_argument("--causal", action="store_true", help="embed with causal attention (GRIT models)")
    parser.add_argument("--sentence-transformers", action="store_true", help="use the sentence-transformers path")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text, format prefix included (default 512; ST: the model's); BM25: words per document",
    )
    parser.add_argument("--instruction", default=None, help="query instruction (default: task.json's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (default auto: bfloat16 on a CPU with native bf16, else float32; the checkpoint's on GPUs)",
    )
    add_quantization_argument(parser)
    parser.add_argument("--output", default=None, help="also write the JSON result to this file")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_cmd_eval_retrieval)
