"""The documents of an opened index: a read-only `StoredTable` (a built index directory, shared by every replica that
opens it) under a `DocumentTable` of this process alone (documents added at run time), joined by `LayeredTable`.

`LayeredTable` answers as one `DocumentTable` does (ids, texts, ranking, finding documents in prompts), so `GritRAG`,
the prompt plans and the server use it unchanged. Its rules:

- documents of the shared index cannot be changed or removed here (`ValueError`); adding one again with the same text
  is a no-op, so a replica re-embedding a shared text reuses its row;
- everything else goes to the local table, and is seen by this process only;
- `rank` merges the two rankings by score (the shared one first on equal scores), so replicas with the same local
  additions rank identically.
"""

from __future__ import annotations

import json
from collections import ChainMap
from pathlib import Path

import numpy as np
import torch

from .documents import DocumentTable
from .manifest import DOCUMENTS, EMBEDDINGS, VECTORS, IndexManifest
from .vectors import VectorIndex

__all__ = ["StoredTable", "LayeredTable"]


def _read_only(doc_id: str) -> ValueError:
    return ValueError(
        f"The document {doc_id!r} belongs to the shared index, which is read-only here: rebuild the index to change "
        "it, or add the new text under another id."
    )


class StoredTable(DocumentTable):
    """The documents of a built index directory, read-only: texts and ids in memory, embeddings memory-mapped, search
    through its FAISS index (`VectorIndex`)."""

    def __init__(self, ids: list[str], texts: dict[str, str], uncached: set[str], embeddings, vectors: VectorIndex):
        super().__init__(embeddings.shape[1])
        self.ids, self.texts, self.uncached = ids, texts, uncached
        self.embeddings = embeddings
        self._vectors = vectors
        self._rows = {doc_id: row for row, doc_id in enumerate(ids)}
        for doc_id in ids:
            self._index_start(doc_id, texts[doc_id])

    @classmethod
    def open(cls, directory: str | Path, manifest: IndexManifest, nprobe: int | None = None) -> StoredTable:
        """The table of the index in `directory` (described by `manifest`)."""
        directory = Path(directory)
        ids, texts, uncached = [], {}, set()
        with open(directory / DOCUMENTS, encoding="utf-8") as stream:
            for line in stream:
                row = json.loads(line)
                ids.append(row["id"])
                texts[row["id"]] = row["text"]
                if not row["cached"]:
                    uncached.add(row["id"])
        embeddings = torch.from_numpy(np.load(directory / EMBEDDINGS, mmap_mode="c"))
        vectors = VectorIndex.load(directory / VECTORS, nprobe=nprobe or manifest.nprobe)
        if not len(ids) == len(embeddings) == len(vectors) == manifest.documents:
            raise ValueError(
                f"The index {directory} is inconsistent: {len(ids)} documents, {len(embeddings)} embeddings, "
                f"{len(vectors)} vectors, the manifest says {manifest.documents}. Rebuild it."
            )
        return cls(ids, texts, uncached, embeddings, vectors)

    def changed(self, ids: list[str], texts: list[str]) -> dict[str, str]:
        for doc_id, text in zip(ids, texts):
            if self.texts.get(doc_id, text) != text:
                raise _read_only(doc_id)
        return {doc_id: text for doc_id, text in zip(ids, texts) if doc_id not in self.texts}

    def update(self, new: dict[str, str], embeddings: torch.Tensor, uncached: list[bool]) -> None:
        raise _read_only(next(iter(new), ""))

    def remove(self, ids: list[str]) -> list[str]:
        shared = [doc_id for doc_id in ids if doc_id in self.texts]
        if shared:
            raise _read_only(shared[0])
        return []

    def embeddings_of(self, doc_ids: list[str]) -> torch.Tensor:
        return self.embeddings[[self._rows[doc_id] for doc_id in doc_ids]].clone()

    def is_shared(self, doc_id: str) -> bool:
        return doc_id in self._rows


class _Starts:
    """`_starts` of a layered table: the shared documents starting with a prefix, then the local ones."""

    def __init__(self, base: DocumentTable, overlay: DocumentTable):
        self.base, self.overlay = base, overlay

    def get(self, key: str, default=None):
        found = self.base._starts.get(key, []) + self.overlay._starts.get(key, [])
        return found or default


class _Uncached:
    """`uncached` of a layered table: documents whose states are not stored, in either table."""

    def __init__(self, base: DocumentTable, overlay: DocumentTable):
        self.base, self.overlay = base, overlay

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.overlay.uncached or doc_id in self.base.uncached


class LayeredTable(DocumentTable):
    """A shared, read-only `StoredTable` (`base`) under a local `DocumentTable` (`overlay`); see the module
    docstring."""

    def __init__(self, base: StoredTable, overlay: DocumentTable | None = None):
        self.base = base
        self.overlay = overlay if overlay is not None else DocumentTable(base.embeddings.shape[1])
        self._starts = _Starts(base, self.overlay)
        self.uncached = _Uncached(base, self.overlay)

    @property
    def ids(self) -> list[str]:
        return self.base.ids + self.overlay.ids

    @property
    def texts(self) -> ChainMap:
        return ChainMap(self.overlay.texts, self.base.texts)

    @property
    def embeddings(self) -> torch.Tensor:
        """Every row's embedding (a copy: prefer `embeddings_of`)."""
        return torch.cat([self.base.embeddings, self.overlay.embeddings])

    def __len__(self) -> int:
        return len(self.base) + len(self.overlay)

    def changed(self, ids: list[str], texts: list[str]) -> dict[str, str]:
        self.base.changed(ids, texts)  # raises for a shared id given another text
        local = [(doc_id, text) for doc_id, text in zip(ids, texts) if not self.base.is_shared(doc_id)]
        return self.overlay.changed([doc_id for doc_id, _ in local], [text for _, text in local])

    def update(self, new: dict[str, str], embeddings: torch.Tensor, uncached: list[bool]) -> None:
        self.overlay.update(new, embeddings, uncached)

    def remove(self, ids: list[str]) -> list[str]:
        self.base.remove(ids)  # raises for a shared id
        return self.overlay.remove(ids)

    def embeddings_of(self, doc_ids: list[str]) -> torch.Tensor:
        rows = [
            (self.base if self.base.is_shared(doc_id) else self.overlay).embeddings_of([doc_id]) for doc_id in doc_ids
        ]
        return torch.cat(rows) if rows else self.overlay.embeddings[:0].clone()

    def rank(self, query_embedding: torch.Tensor, top_k: int) -> list[tuple[str, float]]:
        merged = self.base.rank(query_embedding, top_k) + self.overlay.rank(query_embedding, top_k)
        return sorted(merged, key=lambda pair: -pair[1])[:top_k]  # stable: the shared ranking first on ties

    def id_of(self, text: str) -> str | None:
        found = self.overlay.id_of(text)
        return found if found is not None else self.base.id_of(text)

    def is_shared(self, doc_id: str) -> bool:
        return self.base.is_shared(doc_id)
