"""Offline evaluation: retrieval metrics (`metrics.py`), retrievers and the retrieval evaluator (`retrieval.py`).
The command-line commands are in `grit_hf.cli.evaluate`."""

from __future__ import annotations

from ..records.retrieval import RetrievalData, load_retrieval_data
from .metrics import DEFAULT_METRICS, retrieval_metrics
from .retrieval import BM25Retriever, GritRetriever, RetrievalEvaluator, Retriever, SentenceTransformerRetriever

__all__ = [
    "RetrievalData",
    "load_retrieval_data",
    "DEFAULT_METRICS",
    "retrieval_metrics",
    "Retriever",
    "GritRetriever",
    "SentenceTransformerRetriever",
    "BM25Retriever",
    "RetrievalEvaluator",
]
