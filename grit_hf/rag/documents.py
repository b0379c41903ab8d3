"""`DocumentTable`: what `GritRAG` knows about its indexed documents (ids in order, texts, embeddings, which ones are
too long to cache) and the exact-search ranking over them. Their key/value states live in the `KVStore` beside it.

The ranking goes through a `VectorIndex` (`grit_hf.rag.vectors`): FAISS's exact flat index when FAISS is installed
(the `index` extra), else the same matrix product in torch; it is rebuilt after a change, at the next search. The
table itself answers, for a prompt, which indexed texts it contains and whether their states may stand for them.
Integrations keep their own vector stores (LangChain, LlamaIndex) and use this table only to find cached documents.
An index built by `grit-hf index` is opened as a read-only table under a local one (`grit_hf.rag.layers`).

Finding documents in a free-text prompt (`find_in`) costs one dictionary lookup per character of the prompt, whatever
the number of documents: each spliceable document is indexed by its first `MIN_CACHED_CHARS` characters, and only
documents that start where the prompt does are compared in full.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..generation.plan import Cached, PlanItem, Text
from ..validation import check_str_list
from .vectors import VectorIndex

__all__ = ["DocumentTable", "document_id", "MIN_CACHED_CHARS"]

MIN_CACHED_CHARS = 16
"""Documents shorter than this (in characters) are never spliced into a prompt by `generate`: they are cheap to
recompute and likely to match a prompt by accident."""


def document_id(text: str) -> str:
    """The default id of a document: the first 16 hex digits of the sha256 of its text (so the same text is indexed
    once, whoever adds it)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class DocumentTable:
    """Indexed documents: ids (in indexing order), texts, embeddings `(n, dim)` (float32, CPU), and the ids whose
    states are not stored (too long for `GritRAG.cache_max_length`; they are re-read as text).

    Not thread-safe on its own: `GritRAG` changes it under the model's lock."""

    vector_backend = "auto"
    """How `rank` searches: `"auto"` (FAISS's exact flat index if installed, else torch), `"faiss"` or `"torch"`."""

    def __init__(self, dim: int):
        self.ids: list[str] = []
        self.texts: dict[str, str] = {}
        self.uncached: set[str] = set()
        self.embeddings = torch.empty(0, dim)
        self._starts: dict[str, list[str]] = {}  # first MIN_CACHED_CHARS characters -> spliceable documents
        self._vectors: VectorIndex | None = None  # built from `embeddings` at the first search after a change

    def __len__(self) -> int:
        return len(self.ids)

    def changed(self, ids: list[str], texts: list[str]) -> dict[str, str]:
        """The `{id: text}` of the documents that are new or whose text changed (an id given to two different texts
        is a `ValueError`)."""
        new: dict[str, str] = {}
        for doc_id, text in zip(ids, texts):
            if new.get(doc_id, text) != text:
                raise ValueError(f"`ids` give the id {doc_id!r} to two different texts.")
            if self.texts.get(doc_id) != text:
                new[doc_id] = text
        return new

    def update(self, new: dict[str, str], embeddings: torch.Tensor, uncached: list[bool]) -> None:
        """Add (or replace) the documents `new` with their embeddings (and whether their states are not stored), in
        order, at the end."""
        for doc_id in new:
            self._unindex_start(doc_id)
        self.texts.update(new)
        self.uncached = (self.uncached - set(new)) | {doc_id for doc_id, cut in zip(new, uncached) if cut}
        for doc_id, text in new.items():
            self._index_start(doc_id, text)
        keep = [row for row, doc_id in enumerate(self.ids) if doc_id not in new]
        self.ids = [self.ids[row] for row in keep] + list(new)
        self.embeddings = torch.cat([self.embeddings[keep], embeddings.float().cpu()])
        self._vectors = None

    def remove(self, ids: list[str]) -> list[str]:
        """Forget documents; returns those that were indexed, in the order given (unknown ids are ignored)."""
        removed = [doc_id for doc_id in dict.fromkeys(ids) if doc_id in self.texts]
        gone = set(removed)
        keep = [row for row, doc_id in enumerate(self.ids) if doc_id not in gone]
        self.ids = [self.ids[row] for row in keep]
        self.embeddings = self.embeddings[keep]
        self._vectors = None
        for doc_id in removed:
            self._unindex_start(doc_id)
            del self.texts[doc_id]
            self.uncached.discard(doc_id)
        return removed

    def _index_start(self, doc_id: str, text: str) -> None:
        """Make `doc_id` findable in prompts (`find_in`) if it is spliceable."""
        if len(text) >= MIN_CACHED_CHARS and doc_id not in self.uncached:
            self._starts.setdefault(text[:MIN_CACHED_CHARS], []).append(doc_id)

    def _unindex_start(self, doc_id: str) -> None:
        text = self.texts.get(doc_id)
        starts = self._starts.get(text[:MIN_CACHED_CHARS]) if text is not None else None
        if starts is not None and doc_id in starts:
            starts.remove(doc_id)
            if not starts:
                del self._starts[text[:MIN_CACHED_CHARS]]

    def first_unknown(self, doc_ids: list[str]) -> int | None:
        """The index of the first id in `doc_ids` that is not indexed, or `None`."""
        return next((index for index, doc_id in enumerate(doc_ids) if doc_id not in self.texts), None)

    def check_known(self, doc_ids: Any, name: str = "doc_ids") -> list[str]:
        """`doc_ids` as a list, after checking that every id is indexed (`ValueError` naming the unknown ones)."""
        doc_ids = check_str_list(doc_ids, name)
        unknown = self.first_unknown(doc_ids)
        if unknown is not None:
            raise ValueError(f"Unknown document id {doc_ids[unknown]!r}: add it with `add_documents` first.")
        return doc_ids

    def embeddings_of(self, doc_ids: list[str]) -> torch.Tensor:
        """The embeddings of indexed documents, in the order of `doc_ids` (a copy)."""
        rows = {doc_id: row for row, doc_id in enumerate(self.ids)}
        return self.embeddings[[rows[doc_id] for doc_id in doc_ids]].clone()

    def rank(self, query_embedding: torch.Tensor, top_k: int) -> list[tuple[str, float]]:
        """The `top_k` documents by cosine similarity (embeddings are normalised), best first."""
        if not self.ids:
            return []
        if self._vectors is None:
            self._vectors = VectorIndex.build(self.embeddings, "flat", backend=self.vector_backend)
        return [(self.ids[row], score) for row, score in self._vectors.search(query_embedding, top_k)]

    def is_shared(self, doc_id: str) -> bool:
        """Whether `doc_id` belongs to a shared, read-only index (never here; see `grit_hf.rag.layers`)."""
        return False

    def id_of(self, text: str) -> str | None:
        """The id of an indexed, spliceable document whose text is `text` (the first indexed), or `None`."""
        return next((d for d in self._starts.get(text[:MIN_CACHED_CHARS], ()) if self.texts[d] == text), None)

    def find_in(self, prompt: str, doc_ids: list[str] | None = None) -> list[tuple[int, int, str]]:
        """`(start, end, doc_id)` of the spliceable documents (states stored, at least `MIN_CACHED_CHARS` characters;
        all, or those of `doc_ids`) found verbatim in `prompt`: the earliest match first, the longest at one place,
        overlapping matches skipped."""
        allowed = None if doc_ids is None else set(doc_ids)
        found, index, last = [], 0, len(prompt) - MIN_CACHED_CHARS
        while index <= last:
            candidates = self._starts.get(prompt[index : index + MIN_CACHED_CHARS])
            best = None
            for doc_id in candidates or ():
                text = self.texts[doc_id]
                if (allowed is None or doc_id in allowed) and (best is None or len(text) > len(self.texts[best])):
                    if prompt.startswith(text, index):
                        best = doc_id
            if best is None:
                index += 1
                continue
            found.append((index, index + len(self.texts[best]), best))
            index += len(self.texts[best])
        return found

    def plan_items(self, prompt: str, doc_ids: list[str] | None, template: str) -> list[PlanItem]:
        """`prompt` as plan items: each spliceable document found in it (`find_in`) a `Cached` item, the rest text.
        A cached document stands for `template + text`: a `template` directly before a match is taken into it."""
        items: list[PlanItem] = []
        position = 0
        for start, end, doc_id in self.find_in(prompt, doc_ids):
            if template and prompt.endswith(template, position, start):
                start -= len(template)
            if start > position:
                items.append(Text(prompt[position:start]))
            items.append(Cached(doc_id))
            position = end
        if position < len(prompt):
            items.append(Text(prompt[position:]))
        return items
