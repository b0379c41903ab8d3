"""Retrieval with reranking by the same model, for the retrieval evaluator: `RerankingRetriever` embeds the corpus into
a `GritRAG` index (one pass gives each document's embedding and its key/value states), retrieves with the embeddings
(the bi-encoder), then reranks each query's first `rerank_top_k` with the generative model (the cross-encoder; the
paper's Table 3), reading the candidates from their cached states (`grit_hf.rag.rerank`).

It keeps the first-stage ranking too, so one run reports the metrics before and after reranking, and the time the
reranking took (`rerank_seconds`).

Command line: `grit-hf eval-retrieval --model default --data DIR --rerank likelihood --rerank-top-k 10`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..cache.store import MemoryKVStore
from ..rag.gritrag import GritRAG
from ..rag.rerank import Reranker, rerank_ranked
from ..validation import check_positive_int

__all__ = ["RerankingRetriever"]


class RerankingRetriever:
    """A `Retriever` (`grit_hf.evaluation.retrieval`) that retrieves through a `GritRAG` index and reranks.

    Args:
        model: a loaded GRIT model.
        rerank: `"likelihood"`, `"permutation"` or a `Reranker`; `None` only retrieves.
        rerank_top_k: candidates reranked per query.
        max_length: tokens embedded per text (template included).
        cache_bytes: the in-memory budget of the documents' states (least recently used ones are dropped and, when
            a query needs them again, recomputed).
        cache_attention: the cached states (`None`: the checkpoint's).
        show_progress_bar: a tqdm bar over the queries while reranking.
    """

    def __init__(
        self,
        model: Any,
        rerank: str | Reranker | None = "likelihood",
        rerank_top_k: int = 10,
        max_length: int = 512,
        cache_bytes: int = 2 * 2**30,
        cache_attention: str | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        check_positive_int(rerank_top_k, "rerank_top_k")
        self.reranker = rerank if rerank is None or isinstance(rerank, Reranker) else Reranker(rerank)
        self.rerank_top_k = rerank_top_k
        store = MemoryKVStore(max_bytes=cache_bytes)
        self.rag = GritRAG(model, cache_attention=cache_attention, store=store, max_length=max_length)
        self.show_progress_bar = show_progress_bar
        self.first_stage: np.ndarray | None = None
        self.rerank_seconds = 0.0
        method = "" if self.reranker is None else f" + {self.reranker.method} rerank of the top {rerank_top_k}"
        self.name = f"grit-rag:{model.name_or_path}{method}"

    def search(self, queries, documents, top_k, query_instruction="", doc_instruction=""):
        """`(indices, scores)` `[queries, top_k]`: the first stage's ranking with its first `rerank_top_k` reranked
        (their scores are the reranker's; the rest keep the first stage's order and cosine scores)."""
        if doc_instruction:
            raise ValueError("`doc_instruction`: GritRAG indexes documents without an instruction.")
        ids = self.rag.add_documents(list(documents), ids=[str(index) for index in range(len(documents))])
        embeddings = self.rag.embed(list(queries), instruction=query_instruction)
        ranked = [self.rag.documents.rank(embedding, min(top_k, len(ids))) for embedding in embeddings]
        self.first_stage = np.array([[int(doc_id) for doc_id, _ in row] for row in ranked])
        if self.reranker is not None:
            started = time.perf_counter()
            bar = tqdm(zip(queries, ranked), total=len(ranked), desc="Reranking", unit="query",
                       disable=not self.show_progress_bar)  # fmt: skip
            for index, (query, row) in enumerate(bar):
                head = rerank_ranked(self.rag, query, row, self.rerank_top_k, self.reranker, self.rerank_top_k)
                ranked[index] = head + row[len(head) :]
            self.rerank_seconds += time.perf_counter() - started
        indices = np.array([[int(doc_id) for doc_id, _ in row] for row in ranked])
        scores = np.array([[score for _, score in row] for row in ranked], dtype=np.float32)
        return indices, scores
