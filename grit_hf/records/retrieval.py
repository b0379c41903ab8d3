"""Retrieval data on disk (BEIR-like folders), read by both training and evaluation.

A folder holds `queries.jsonl` and `corpus.jsonl` (`{"id", "text"}` per line, an optional `title`), `qrels.tsv`
(`query-id<TAB>doc-id<TAB>relevance`, an optional header line) and an optional `task.json` with `query_instruction`
(queries get it) and `doc_instruction` (documents get it, usually none), e.g. `../shared/data/manpages/eval`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .files import read_records

__all__ = ["RetrievalData", "load_retrieval_data", "is_retrieval_folder", "RETRIEVAL_FILES"]

RETRIEVAL_FILES = ("queries.jsonl", "corpus.jsonl", "qrels.tsv")


def is_retrieval_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder with the three retrieval files."""
    path = Path(path)
    return path.is_dir() and all((path / name).is_file() for name in RETRIEVAL_FILES)


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


def _read_texts(path: Path) -> dict[str, str]:
    """`{id: text}` of a `queries.jsonl` / `corpus.jsonl` (a `title` goes before its text)."""
    rows: dict[str, str] = {}
    for where, row, _ in read_records(path, "retrieval"):
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
            raise ValueError(f"{where} must be a JSON object with 'id' and a string 'text'.")
        title = row.get("title")
        rows[str(row["id"])] = f"{title} {row['text']}" if title else row["text"]
    return rows


def load_retrieval_data(path: str | os.PathLike) -> RetrievalData:
    """Read `queries.jsonl`, `corpus.jsonl`, `qrels.tsv` and the optional `task.json` from the folder `path`."""
    path = Path(path)
    for name in RETRIEVAL_FILES:
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
        queries=_read_texts(path / "queries.jsonl"),
        corpus=_read_texts(path / "corpus.jsonl"),
        qrels=qrels,
        query_instruction=task.get("query_instruction") or task.get("instruction") or "",
        doc_instruction=task.get("doc_instruction") or "",
        name=task.get("name") or path.name,
    )
