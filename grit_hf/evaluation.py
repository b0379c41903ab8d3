"""Offline retrieval evaluation on local data: a GRIT model, any sentence-transformers folder, or BM25.

Data folder (BEIR-like): `queries.jsonl` and `corpus.jsonl` (`{"id", "text"}` per line), `qrels.tsv`
(`query-id<TAB>doc-id<TAB>relevance`, an optional header line), optional `task.json` with `query_instruction`
(queries get it, documents get `doc_instruction`, usually none). Metrics follow trec_eval/BEIR/MTEB: nDCG@k with linear
gains, recall@k, MRR@k, averaged over the queries that have a relevant document.

Example:

```python
>>> from grit_hf.evaluation import GritRetriever, RetrievalEvaluator
>>> evaluator = RetrievalEvaluator("data/manpages/eval")
>>> evaluator(GritRetriever("default", max_length=256))["ndcg@10"]
0.30...
```

Command line: `grit-hf eval-retrieval --model default --data DIR [--bm25] [--causal] [--max-length 256]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "RetrievalData",
    "load_retrieval_data",
    "retrieval_metrics",
    "Retriever",
    "GritRetriever",
    "SentenceTransformerRetriever",
    "BM25Retriever",
    "RetrievalEvaluator",
    "add_cli_command",
]

DEFAULT_METRICS = ("ndcg@10", "recall@1", "recall@10", "mrr@10")


@dataclass
class RetrievalData:
    """A retrieval set: ids and texts of queries and documents, graded relevance, and the task's instructions."""

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    query_instruction: str = ""
    doc_instruction: str = ""
    name: str = field(default="retrieval")

    def __post_init__(self) -> None:
        for attribute in ("queries", "corpus", "qrels"):
            if not isinstance(getattr(self, attribute), dict):
                raise TypeError(f"`{attribute}` must be a dict, got {type(getattr(self, attribute)).__name__}.")
        missing = {qid for qid in self.qrels if qid not in self.queries}
        if missing:
            raise ValueError(f"`qrels` names {len(missing)} unknown query id(s), e.g. {sorted(missing)[:3]}.")


def _read_jsonl(path: Path) -> dict[str, str]:
    rows: dict[str, str] = {}
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{number} must be a JSON object with 'id' and a string 'text'.")
            title = row.get("title")
            rows[str(row["id"])] = f"{title} {row['text']}" if title else row["text"]
    return rows


def load_retrieval_data(path: str | os.PathLike) -> RetrievalData:
    """Read `queries.jsonl`, `corpus.jsonl`, `qrels.tsv` and the optional `task.json` from the folder `path`."""
    path = Path(path)
    for name in ("queries.jsonl", "corpus.jsonl", "qrels.tsv"):
        if not (path / name).is_file():
            raise ValueError(
                f"`data` must be a folder with queries.jsonl, corpus.jsonl and qrels.tsv; {path} has no {name}."
            )
    qrels: dict[str, dict[str, int]] = {}
    with (path / "qrels.tsv").open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            parts = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            if len(parts) != 3:
                raise ValueError(f"{path / 'qrels.tsv'}:{number} must be query-id<TAB>doc-id<TAB>relevance.")
            try:
                score = int(float(parts[2]))
            except ValueError:
                if number == 1:  # a header line
                    continue
                raise ValueError(f"{path / 'qrels.tsv'}:{number}: relevance {parts[2]!r} is not a number.") from None
            qrels.setdefault(parts[0], {})[parts[1]] = score
    task = json.loads((path / "task.json").read_text(encoding="utf-8")) if (path / "task.json").is_file() else {}
    return RetrievalData(
        queries=_read_jsonl(path / "queries.jsonl"),
        corpus=_read_jsonl(path / "corpus.jsonl"),
        qrels=qrels,
        query_instruction=task.get("query_instruction") or task.get("instruction") or "",
        doc_instruction=task.get("doc_instruction") or "",
        name=task.get("name") or path.name,
    )


def retrieval_metrics(
    run: dict[str, Sequence[str]], qrels: dict[str, dict[str, int]], metrics: Iterable[str] = DEFAULT_METRICS
) -> dict[str, float]:
    """Average `ndcg@k`, `recall@k`, `mrr@k` and `precision@k` of ranked lists `run` (query id -> doc ids, best first)
    over the queries of `qrels` that have at least one relevant (relevance > 0) document. A query missing from `run`
    counts as retrieving nothing. nDCG uses linear gains (relevance), like trec_eval."""
    totals: dict[str, float] = {}
    parsed = []
    for metric in metrics:
        name, _, k = metric.partition("@")
        if name not in ("ndcg", "recall", "mrr", "precision") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"Invalid metric {metric!r}: use ndcg@k, recall@k, mrr@k or precision@k with k >= 1.")
        parsed.append((metric, name, int(k)))
        totals[metric] = 0.0
    judged = [qid for qid, docs in qrels.items() if any(score > 0 for score in docs.values())]
    if not judged:
        raise ValueError("`qrels` has no query with a relevant document.")
    for qid in judged:
        relevance = qrels[qid]
        ranked = list(run.get(qid, ()))
        n_relevant = sum(1 for score in relevance.values() if score > 0)
        ideal = sorted((score for score in relevance.values() if score > 0), reverse=True)
        for metric, name, k in parsed:
            gains = [max(relevance.get(doc, 0), 0) for doc in ranked[:k]]
            if name == "ndcg":
                dcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))
                idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal[:k]))
                totals[metric] += dcg / idcg
            elif name == "recall":
                totals[metric] += sum(1 for gain in gains if gain > 0) / n_relevant
            elif name == "precision":
                totals[metric] += sum(1 for gain in gains if gain > 0) / k
            else:
                totals[metric] += next((1.0 / (rank + 1) for rank, gain in enumerate(gains) if gain > 0), 0.0)
    return {metric: total / len(judged) for metric, total in totals.items()}


class Retriever(Protocol):
    """Anything that ranks `documents` for each of `queries`: returns `(indices, scores)`, `[n_queries, top_k]`."""

    name: str

    def search(
        self,
        queries: list[str],
        documents: list[str],
        top_k: int,
        query_instruction: str = "",
        doc_instruction: str = "",
    ) -> tuple[np.ndarray, np.ndarray]: ...


def _dense_top_k(
    queries: torch.Tensor, documents: torch.Tensor, top_k: int, similarity=None, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Best `top_k` documents per query by `similarity` (default: dot product of normalised embeddings = cosine),
    `chunk_size` queries at a time; ties go to the document that comes first in the corpus."""
    top_k = min(top_k, documents.shape[0])
    indices, scores = [], []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = queries[start : start + chunk_size]
        chunk_scores = (chunk @ documents.T if similarity is None else similarity(chunk, documents)).float().cpu()
        order = torch.argsort(chunk_scores, dim=1, descending=True, stable=True)[:, :top_k]
        indices.append(order)
        scores.append(torch.gather(chunk_scores, 1, order))
    if not indices:
        return np.zeros((0, top_k), dtype=np.int64), np.zeros((0, top_k), dtype=np.float32)
    return torch.cat(indices).numpy(), torch.cat(scores).numpy()


class GritRetriever:
    """Dense retrieval with a GRIT model's `encode`: queries with the task instruction, documents with theirs (usually
    none), cosine similarity. `model` is a loaded GRIT model, a checkpoint folder, a stock decoder folder or
    `"default"`."""

    def __init__(
        self,
        model: Any = "default",
        *,
        batch_size: int = 32,
        max_length: int = 512,
        is_causal: bool | None = None,
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        show_progress_bar: bool | None = None,
    ) -> None:
        from .modeling_gritlm import GritLMForCausalLM, GritLMPreTrainedModel

        if isinstance(model, (str, os.PathLike)):
            from .default_model import resolve_model_path

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = GritLMForCausalLM.from_pretrained(resolve_model_path(model), dtype=dtype).to(device).eval()
        if not isinstance(model, GritLMPreTrainedModel):
            raise TypeError(f"`model` must be a GRIT model, a folder or 'default', got {type(model).__name__}.")
        self.model = model
        self.encode_kwargs = dict(
            batch_size=batch_size, max_length=max_length, is_causal=is_causal, show_progress_bar=show_progress_bar
        )
        attention = (
            "causal" if (is_causal if is_causal is not None else model.config.is_causal_embedding) else "bidirectional"
        )
        self.name = f"grit:{Path(str(model.name_or_path)).name or 'model'} ({attention})"

    def search(self, queries, documents, top_k, query_instruction="", doc_instruction=""):
        q = self.model.encode(
            queries, instruction=query_instruction, normalize=True, convert_to_tensor=True, **self.encode_kwargs
        )
        d = self.model.encode(
            documents, instruction=doc_instruction, normalize=True, convert_to_tensor=True, **self.encode_kwargs
        )
        return _dense_top_k(q, d, top_k)


class SentenceTransformerRetriever:
    """Dense retrieval with any sentence-transformers model (a folder or a loaded model). Queries get the task
    instruction as a prompt formatted by the model's `query_template` when it is a GRIT checkpoint; otherwise its own
    `query`/`document` prompts, if any. Scores use the model's similarity function."""

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        if isinstance(model, (str, os.PathLike)):
            from .default_model import resolve_model_path

            model = SentenceTransformer(resolve_model_path(model), device=device)
        if not isinstance(model, SentenceTransformer):
            raise TypeError(f"`model` must be a SentenceTransformer or a folder, got {type(model).__name__}.")
        if max_length is not None:
            model.max_seq_length = max_length
        self.model = model
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.name = f"sentence-transformers:{Path(str(model[0].auto_model.name_or_path)).name or 'model'}"

    def _encode(self, texts: list[str], instruction: str, prompt_name: str) -> torch.Tensor:
        from .configuration_gritlm import GritLMConfig

        config = getattr(self.model[0].auto_model, "config", None)
        kwargs: dict[str, Any] = dict(batch_size=self.batch_size, show_progress_bar=self.show_progress_bar)
        if isinstance(config, GritLMConfig):
            kwargs["prompt"] = config.format_query_prefix(instruction)
        elif prompt_name in self.model.prompts:
            kwargs["prompt_name"] = prompt_name
        return self.model.encode(texts, convert_to_tensor=True, **kwargs)

    def search(self, queries, documents, top_k, query_instruction="", doc_instruction=""):
        q = self._encode(queries, query_instruction, "query")
        d = self._encode(documents, doc_instruction, "document")
        return _dense_top_k(q, d, top_k, similarity=self.model.similarity)


class BM25Retriever:
    """Lexical retrieval with `bm25s` (Lucene BM25, k1=1.5, b=0.75, English stopwords). `stem=True` adds the English
    Snowball stemmer (needs `pip install PyStemmer`). `max_words` truncates documents to their first words
    (whitespace split) before indexing."""

    def __init__(
        self,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stem: bool = False,
        max_words: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        import bm25s  # noqa: F401  (fail early with a clear ImportError)

        if stem:
            try:
                import Stemmer  # noqa: F401
            except ImportError:
                raise ImportError("BM25 with `stem=True` needs PyStemmer: pip install PyStemmer") from None
        if max_words is not None and (not isinstance(max_words, int) or max_words < 1):
            raise ValueError(f"`max_words` must be a positive int or None, got {max_words!r}.")
        self.k1, self.b, self.stem, self.max_words = k1, b, stem, max_words
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        self.show_progress_bar = show_progress_bar
        self.name = "bm25" + (" (stemmed)" if stem else "")

    def search(self, queries, documents, top_k, query_instruction="", doc_instruction=""):
        import bm25s

        stemmer = None
        if self.stem:
            import Stemmer

            stemmer = Stemmer.Stemmer("english")
        if self.max_words:
            documents = [" ".join(doc.split()[: self.max_words]) for doc in documents]
        show = self.show_progress_bar
        index = bm25s.BM25(k1=self.k1, b=self.b)
        index.index(bm25s.tokenize(documents, stopwords="en", stemmer=stemmer, show_progress=show), show_progress=show)
        query_tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=show)
        indices, scores = index.retrieve(query_tokens, k=min(top_k, len(documents)), show_progress=show)
        return np.asarray(indices), np.asarray(scores)


class RetrievalEvaluator:
    """Run a `Retriever` on a `RetrievalData` (or a data folder) and compute `metrics`. Each query retrieves `top_k`
    documents (at least the largest k of `metrics`)."""

    def __init__(
        self,
        data: RetrievalData | str | os.PathLike,
        *,
        metrics: Sequence[str] = DEFAULT_METRICS,
        top_k: int = 100,
        query_instruction: str | None = None,
    ) -> None:
        self.data = data if isinstance(data, RetrievalData) else load_retrieval_data(data)
        retrieval_metrics({}, {"q": {"d": 1}}, metrics)  # validate the metric names now
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"`top_k` must be a positive int, got {top_k!r}.")
        self.metrics = tuple(metrics)
        self.top_k = max(top_k, *(int(metric.split("@")[1]) for metric in self.metrics))
        self.query_instruction = self.data.query_instruction if query_instruction is None else query_instruction

    def search(self, retriever: Retriever) -> dict[str, list[str]]:
        """Ranked document ids per query id (`top_k` each)."""
        query_ids = [qid for qid in self.data.queries if qid in self.data.qrels]
        doc_ids = list(self.data.corpus)
        indices, _ = retriever.search(
            [self.data.queries[qid] for qid in query_ids],
            [self.data.corpus[did] for did in doc_ids],
            self.top_k,
            query_instruction=self.query_instruction,
            doc_instruction=self.data.doc_instruction,
        )
        return {qid: [doc_ids[i] for i in row] for qid, row in zip(query_ids, indices)}

    def __call__(self, retriever: Retriever) -> dict[str, float]:
        return retrieval_metrics(self.search(retriever), self.data.qrels, self.metrics)


# -- command line ------------------------------------------------------------------------------------------------------
def _is_grit_folder(path: str) -> bool:
    config = Path(path) / "config.json"
    return path == "default" or (config.is_file() and json.loads(config.read_text()).get("model_type") == "gritlm")


def _make_retriever(args: argparse.Namespace) -> Retriever:
    if args.bm25 or args.bm25_stem:
        return BM25Retriever(stem=args.bm25_stem, max_words=args.max_length, show_progress_bar=not args.no_progress)
    if args.model is None:
        raise SystemExit("grit-hf eval-retrieval: give --model (a GRIT or sentence-transformers folder) or --bm25.")
    is_st_folder = (Path(args.model) / "modules.json").is_file()
    if args.sentence_transformers or (is_st_folder and not _is_grit_folder(args.model)):
        if args.causal:
            raise SystemExit("grit-hf eval-retrieval: --causal needs the GRIT path (drop --sentence-transformers).")
        return SentenceTransformerRetriever(
            args.model,
            batch_size=args.batch_size,
            max_length=args.max_length,
            device=args.device,
            show_progress_bar=not args.no_progress,
        )
    return GritRetriever(  # GRIT checkpoints and stock decoder folders (wrapped as GRIT models)
        args.model,
        batch_size=args.batch_size,
        max_length=args.max_length or 512,
        is_causal=True if args.causal else None,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        show_progress_bar=not args.no_progress,
    )


def _cmd_eval_retrieval(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    retriever = _make_retriever(args)
    evaluator = RetrievalEvaluator(args.data, top_k=args.top_k, query_instruction=args.instruction)
    metrics = evaluator(retriever)
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


def add_cli_command(subparsers: argparse._SubParsersAction) -> None:
    """Add `grit-hf eval-retrieval`."""
    parser = subparsers.add_parser(
        "eval-retrieval",
        help="nDCG@10, recall@1/10, MRR@10 on local retrieval data (GRIT, sentence-transformers or BM25).",
    )
    parser.add_argument(
        "--model", default=None, help="GRIT checkpoint folder, 'default', or a sentence-transformers folder"
    )
    parser.add_argument(
        "--data", required=True, help="folder with queries.jsonl, corpus.jsonl, qrels.tsv [, task.json]"
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
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--output", default=None, help="also write the JSON result to this file")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_cmd_eval_retrieval)
