"""Reading data on disk, in one place: record files (`files.py`: JSONL, JSON lists, folders of them, `datasets`),
retrieval folders (`retrieval.py`) and RAG examples (`rag_examples.py`). Training (`grit_hf.trainer`), evaluation,
the command line and the demo read through it."""

from __future__ import annotations

from .files import Record, iter_records, read_records
from .rag_examples import RAGExample, read_rag_examples
from .retrieval import RetrievalData, is_retrieval_folder, load_retrieval_data

__all__ = [
    "Record",
    "read_records",
    "iter_records",
    "RetrievalData",
    "load_retrieval_data",
    "is_retrieval_folder",
    "RAGExample",
    "read_rag_examples",
]
