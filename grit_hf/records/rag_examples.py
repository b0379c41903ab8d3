"""RAG examples on disk, read by the cache loss (training) and the caching-fidelity evaluation.

A record is `{"documents": [str, ...], "question": str, "answer": str}` (`answer` optional; `documents` may be a
single str). A retrieval folder (`grit_hf.records.retrieval`) also gives examples: each judged query's first relevant
document, with a question made by `question_template` (`{query}`, and `{names}` from the folder's `meta.jsonl` when
it has one, e.g. the man pages' NAME line: "What does the chgrp command do?"); its gold answer is the query itself
when the template uses `{names}` (the man page's one-line summary).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import DATA_SUFFIXES, read_records
from .retrieval import is_retrieval_folder, load_retrieval_data

__all__ = ["RAGExample", "normalize_rag_record", "read_rag_examples", "MANPAGES_QUESTION"]

MANPAGES_QUESTION = "What does the {names} command do?"


@dataclass
class RAGExample:
    """Documents, a question about them, and the gold answer if there is one (`""` otherwise)."""

    documents: list[str]
    question: str
    answer: str = ""


def normalize_rag_record(record: Any, where: str) -> RAGExample:
    """Check one RAG record (see the module docstring); `ValueError` naming `where` and the field otherwise."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a RAG record must be a JSON object, got {type(record).__name__}.")
    documents, question, answer = record.get("documents"), record.get("question"), record.get("answer")
    if isinstance(documents, str):
        documents = [documents]
    if not isinstance(documents, list) or not documents or not all(isinstance(d, str) and d for d in documents):
        raise ValueError(f"{where}: `documents` must be a non-empty list of non-empty str, got {documents!r:.80}.")
    if not isinstance(question, str) or not question:
        raise ValueError(f"{where}: `question` must be a non-empty str, got {question!r:.80}.")
    if answer is not None and not isinstance(answer, str):
        raise ValueError(f"{where}: `answer` must be a str when given, got {type(answer).__name__}.")
    return RAGExample(documents, question, answer or "")


def _meta_names(folder: Path) -> dict[str, str]:
    path = folder / "meta.jsonl"
    if not path.is_file():
        return {}
    rows = (row for _, row, _ in read_records(path, "meta"))
    return {str(row["qid"]): str(row["names"]) for row in rows if "qid" in row and "names" in row}


def read_rag_examples(
    source: str | os.PathLike, question_template: str | None = None, limit: int | None = None
) -> list[RAGExample]:
    """RAG examples from a `.jsonl`/`.json` file of records or a retrieval folder (see the module docstring).

    For a retrieval folder, `question_template` defaults to `MANPAGES_QUESTION` when the folder names its queries'
    pages (`meta.jsonl` with `names`), else to `"{query}"`.
    """
    path = Path(source)
    examples: list[RAGExample] = []
    if is_retrieval_folder(path):
        data, names = load_retrieval_data(path), _meta_names(path)
        template = question_template or (MANPAGES_QUESTION if names else "{query}")
        for query_id, judged in data.qrels.items():
            relevant = [doc_id for doc_id, relevance in judged.items() if relevance > 0 and doc_id in data.corpus]
            if not relevant:
                continue
            query = data.queries[query_id]
            question = template.format(query=query, names=names.get(query_id, query))
            gold = query if "{names}" in template and query_id in names else ""
            examples.append(RAGExample([data.corpus[relevant[0]]], question, gold))
            if limit is not None and len(examples) >= limit:
                break
        return examples
    if not (path.is_file() and path.name.endswith(DATA_SUFFIXES)):
        raise ValueError(
            f"`data` must be a .jsonl/.json file of RAG records or a retrieval folder, got {str(path)!r}."
        )
    for where, record, _ in read_records(path, "RAG"):
        examples.append(normalize_rag_record(record, where))
        if limit is not None and len(examples) >= limit:
            break
    return examples
