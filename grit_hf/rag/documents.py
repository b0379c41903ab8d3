"""`DocumentTable`: what `GritRAG` knows about its indexed documents (ids in order, texts, embeddings, which ones are
too long to cache) and the exact-search ranking over them. Their key/value states live in the `KVStore` beside it.

Why not a vector store from the ecosystem: the index must answer, for a prompt, which indexed texts it contains and
whether their states may stand for them; embeddings are few and exact search is one matrix product. Integrations keep
their own vector stores (LangChain, LlamaIndex) and use this table only to find cached documents.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..generation.segments import CachedSegment
from ..validation import check_str_list
from .prompts import split_on_texts

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

    def __init__(self, dim: int):
        self.ids: list[str] = []
        self.texts: dict[str, str] = {}
        self.uncached: set[str] = set()
        self.embeddings = torch.empty(0, dim)

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
        self.texts.update(new)
        self.uncached = (self.uncached - set(new)) | {doc_id for doc_id, cut in zip(new, uncached) if cut}
        keep = [row for row, doc_id in enumerate(self.ids) if doc_id not in new]
        self.ids = [self.ids[row] for row in keep] + list(new)
        self.embeddings = torch.cat([self.embeddings[keep], embeddings.float().cpu()])

    def remove(self, ids: list[str]) -> list[str]:
        """Forget documents; returns those that were indexed, in the order given (unknown ids are ignored)."""
        removed = [doc_id for doc_id in dict.fromkeys(ids) if doc_id in self.texts]
        gone = set(removed)
        keep = [row for row, doc_id in enumerate(self.ids) if doc_id not in gone]
        self.ids = [self.ids[row] for row in keep]
        self.embeddings = self.embeddings[keep]
        for doc_id in removed:
            del self.texts[doc_id]
            self.uncached.discard(doc_id)
        return removed

    def check_known(self, doc_ids: Any, name: str = "doc_ids") -> list[str]:
        """`doc_ids` as a list, after checking that every id is indexed (`ValueError` naming the unknown ones)."""
        doc_ids = check_str_list(doc_ids, name)
        missing = [doc_id for doc_id in doc_ids if doc_id not in self.texts]
        if missing:
            raise ValueError(f"Unknown document id(s) {missing[:5]!r}: add them with `add_documents` first.")
        return doc_ids

    def embeddings_of(self, doc_ids: list[str]) -> torch.Tensor:
        """The embeddings of indexed documents, in the order of `doc_ids` (a copy)."""
        rows = {doc_id: row for row, doc_id in enumerate(self.ids)}
        return self.embeddings[[rows[doc_id] for doc_id in doc_ids]].clone()

    def rank(self, query_embedding: torch.Tensor, top_k: int) -> list[tuple[str, float]]:
        """The `top_k` documents by cosine similarity (embeddings are normalised), best first."""
        if not self.ids:
            return []
        scores = self.embeddings @ query_embedding.float().cpu().reshape(-1)
        values, order = scores.topk(min(top_k, len(self.ids)))
        return [(self.ids[i], float(v)) for i, v in zip(order.tolist(), values.tolist())]

    def cacheable_texts(self, doc_ids: list[str] | None, min_chars: int) -> dict[str, str]:
        """`{id: text}` of the documents (all, or `doc_ids`) whose states may be spliced into a prompt: cached, and
        at least `min_chars` characters long."""
        candidates = self.ids if doc_ids is None else doc_ids
        return {d: self.texts[d] for d in candidates if len(self.texts[d]) >= min_chars and d not in self.uncached}

    def split_prompt(self, prompt: str, doc_ids: list[str] | None, template: str) -> list[str | CachedSegment]:
        """`prompt` split at verbatim occurrences of the documents whose states may be spliced in (`cacheable_texts`
        of at least `MIN_CACHED_CHARS`), each replaced by a `CachedSegment` (`split_on_texts`: earliest, then longest
        match; `template` directly before a match is taken into it)."""
        pieces = split_on_texts(prompt, self.cacheable_texts(doc_ids, MIN_CACHED_CHARS), template)
        return [piece if isinstance(piece, str) else CachedSegment(piece[0]) for piece in pieces]
