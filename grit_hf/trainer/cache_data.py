"""Reading the data of the cache loss: RAG examples (documents, a question, optionally an answer).

Records, any of:
- `{"documents": [str, ...], "question": str, "answer": str}`: the answer is the target;
- `{"documents": [...], "question": str}`: no answer; the model in plain-RAG mode (document text in the prompt,
  causal) is the teacher (see `GRITConfig.cache_teacher_loss`);
- an embedding record `{"query": str | [instruction, text], "pos": [...], ...}` or a retrieval folder, when
  `question_template` is given: its first positive becomes the document and the query becomes a question about it
  (`question_template.format(query=...)`), without an answer. So any retrieval data is cache-training data.

A source is a `.jsonl`/`.json` file, a folder of them, a retrieval folder, a `datasets.Dataset` or a dataset name, as
for the other streams (`grit_hf.trainer.data`). Optional `"source"` names the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..records.files import iter_records
from ..records.rag_examples import normalize_rag_record
from ..records.retrieval import is_retrieval_folder
from .data import normalize_embedding_record, read_retrieval_folder

logger = logging.get_logger(__name__)

__all__ = ["CACHE_COLUMNS", "normalize_cache_record", "load_cache_dataset"]

CACHE_COLUMNS = ("documents", "question", "answer", "source")


def normalize_cache_record(record: Any, where: str, source: str, question_template: str | None = None) -> dict:
    """One cache-loss example as a row with `CACHE_COLUMNS` (`answer` is `""` when there is none)."""
    if isinstance(record, dict) and "documents" not in record and "query" in record and question_template is not None:
        row = normalize_embedding_record(record, where, source)
        return {
            "documents": [row["pos"][0]],
            "question": question_template.format(query=row["query"]),
            "answer": "",
            "source": row["source"],
        }
    try:
        example = normalize_rag_record(record, where)
    except ValueError as error:
        hint = (
            " (embedding records need `cache_question_template`)"
            if isinstance(record, dict) and "query" in record
            else ""
        )
        raise ValueError(f"{error}{hint}") from None
    source = str(record.get("source") or source)
    return {"documents": example.documents, "question": example.question, "answer": example.answer, "source": source}


def load_cache_dataset(source: Any, split: str = "train", question_template: str | None = None):
    """Load cache-loss examples (see the module docstring) into a `datasets.Dataset` with `CACHE_COLUMNS`."""
    import datasets

    if question_template is not None and "{query}" not in question_template:
        raise ValueError(f"`cache_question_template` must contain '{{query}}', got {question_template!r}.")
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is not None and is_retrieval_folder(path):
        if question_template is None:
            raise ValueError(f"{path} is a retrieval folder: set `cache_question_template` to make questions of it.")
        records = read_retrieval_folder(path)
    else:
        records = iter_records(source, split, "cache")
    rows = [normalize_cache_record(record, where, name, question_template) for where, record, name in records]
    if not rows:
        raise ValueError(f"The cache dataset {source!r:.100} holds no examples.")
    without = sum(1 for row in rows if not row["answer"])
    logger.info(f"Loaded {len(rows)} cache examples from {source!r:.100} ({without} without an answer).")
    return datasets.Dataset.from_dict({column: [row[column] for row in rows] for column in CACHE_COLUMNS})
