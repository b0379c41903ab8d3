"""The corpus an index is built from, and how it is cut into chunks of work.

A corpus is a JSONL/JSON file or folder, a retrieval folder (its `corpus.jsonl`), a saved `datasets` folder, a
dataset name, a `datasets.Dataset`, or a list of texts or records (`grit_hf.records.files.iter_records` reads them).
Ids are the records' `id_field`, or by default `document_id(text)`, a content hash: the same text is one document.

Chunks are consecutive runs of `chunk_size` documents, in corpus order. Every process of a build takes the chunks
`rank, rank + world, ...`; a chunk is embedded as one call (the same batches whatever the number of processes, so
the same numbers) and is complete once its part file is written. A chunk's name carries a hash of its ids and texts:
a rerun over the same corpus finds the complete chunks and skips them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records.files import iter_records
from ..records.retrieval import is_retrieval_folder
from .documents import document_id

__all__ = ["Corpus", "Chunk", "read_corpus"]


@dataclass(frozen=True)
class Chunk:
    """A unit of work: the rows `start:stop` of the corpus, named `chunk-{index}-{hash}`."""

    index: int
    start: int
    stop: int
    name: str


@dataclass
class Corpus:
    """The documents to index, each once, in corpus order: `ids[i]` names `texts[i]`."""

    ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def digest(self) -> str:
        """sha256 over the ids and texts in order (the manifest records it)."""
        digest = hashlib.sha256()
        for doc_id, text in zip(self.ids, self.texts):
            digest.update(f"{len(doc_id)}:{doc_id}{len(text)}:".encode() + text.encode("utf-8"))
        return digest.hexdigest()

    def chunks(self, chunk_size: int) -> list[Chunk]:
        """The corpus cut into chunks of `chunk_size` documents (see the module docstring)."""
        chunks = []
        for index, start in enumerate(range(0, len(self), chunk_size)):
            stop = min(start + chunk_size, len(self))
            piece = Corpus(self.ids[start:stop], self.texts[start:stop]).digest()[:16]
            chunks.append(Chunk(index, start, stop, f"chunk-{index:06d}-{piece}"))
        return chunks


def read_corpus(corpus: Any, text_field: str = "text", id_field: str | None = None, split: str = "train") -> Corpus:
    """The documents of `corpus` (see the module docstring), each id once (a repeated id with the same text is kept
    once; with another text it is a `ValueError` naming both records).

    Args:
        corpus: the source.
        text_field: the records' text field (lists of strings need none).
        id_field: the records' id field; `None`: `document_id(text)`.
        split: the split of a `DatasetDict` or dataset name.
    """
    for name, value in (("text_field", text_field), ("id_field", id_field)):
        if value is not None and (not isinstance(value, str) or not value):
            raise TypeError(
                f"`{name}` must be a non-empty str{' or None' if name == 'id_field' else ''}, got {value!r}."
            )
    if isinstance(corpus, (str, os.PathLike)) and is_retrieval_folder(corpus):
        corpus = Path(corpus) / "corpus.jsonl"
    if isinstance(corpus, Sequence) and not isinstance(corpus, (str, bytes)):
        records = ((f"corpus[{index}]", record) for index, record in enumerate(corpus))
    else:
        records = ((where, record) for where, record, _ in iter_records(corpus, split, "corpus"))
    ids, texts, seen = [], [], {}
    for where, record in records:
        if isinstance(record, str) and id_field is None:
            text = record
        elif isinstance(record, dict) and isinstance(record.get(text_field), str):
            text = record[text_field]
        else:
            raise ValueError(f"{where} must be a text or an object with a string {text_field!r}, got {record!r:.120}.")
        if id_field is None:
            doc_id = document_id(text)
        elif isinstance(record, dict) and isinstance(record.get(id_field), (str, int)) and str(record[id_field]):
            doc_id = str(record[id_field])
        else:
            raise ValueError(f"{where} has no id in {id_field!r} (a non-empty string or integer).")
        if doc_id in seen:
            first, first_text = seen[doc_id]
            if first_text != text:
                raise ValueError(f"{where} and {first} give the id {doc_id!r} to two different texts.")
            continue
        seen[doc_id] = (where, text)
        ids.append(doc_id)
        texts.append(text)
    if not ids:
        raise ValueError(f"The corpus {corpus!r:.120} holds no documents.")
    return Corpus(ids, texts)
