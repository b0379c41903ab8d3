"""The server's document index: which indexed documents came from `/v1/embeddings` (cached automatically, forgotten
oldest first when the index is full) and which from `/v1/documents` (kept until deleted), on top of the shared
`GritRAG` (texts, embeddings, key/value states in its store).

One entry per text: a text indexed through `/v1/documents` under an id of the client's choice is not indexed again by
`/v1/embeddings` (its stored embedding is returned), and replaces an automatic entry of the same text.

Over an index built by `grit-hf index` (`grit-hf serve --index DIR`), its documents are shared by every replica and
read-only: they are listed and used like any other (`source: "index"`), but never evicted, replaced or deleted here
(409), and `--max-documents` counts only the documents this replica added.

Index changes (adding, evicting, deleting) are serialised by one lock; the model's forward passes inside them take the
model's lock one at a time, so chats keep decoding meanwhile. Removing a document takes the model's lock, which a chat
also holds while it finds documents in its prompt and composes it, so a chat never sees half a removal.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..rag.documents import MIN_CACHED_CHARS, document_id
from ..rag.gritrag import GritRAG
from .errors import APIError
from .ids import check_id

__all__ = ["ServerDocuments"]

logger = logging.getLogger("grit_hf.serve")


class ServerDocuments:
    """Bookkeeping of the documents of one server.

    Args:
        rag: the shared `GritRAG`.
        max_documents: most documents in the index.
    """

    def __init__(self, rag: GritRAG, max_documents: int):
        self.rag = rag
        self.max_documents = max_documents
        self._automatic: OrderedDict[str, None] = OrderedDict()  # least recently embedded first
        self._pinned: dict[str, str] = {}  # id -> document_id(text)
        self._pinned_texts: dict[str, str] = {}  # document_id(text) -> id
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.rag.documents)

    def _local_count(self) -> int:
        """Documents this server added (an opened index's shared documents are not counted)."""
        return len(getattr(self.rag.documents, "overlay", self.rag.documents))

    def _refuse_shared(self, doc_id: str, param: str, action: str) -> None:
        raise APIError(
            409,
            f"The document {doc_id!r} belongs to the shared index this server was started with (--index), which is "
            f"read-only: it cannot be {action} here. Rebuild the index to change it, or use another id.",
            param,
            "document_read_only",
        )

    # -- adding ------------------------------------------------------------------------------------------------------
    def embed_and_cache(self, texts: list[str]) -> np.ndarray:
        """Embed documents for `/v1/embeddings`, indexing them and caching their states (`(n, dim)` float32).
        Texts embedded before are not recomputed; the oldest automatic documents make room when the index is full."""
        with self._lock:
            ids = [self._pinned_texts.get(key, key) for key in map(document_id, texts)]
            new = [text for text, doc_id in zip(texts, ids) if doc_id not in self._pinned]
            if new:
                self._index(new, None)
            vectors = self.rag.get_embeddings(ids).numpy()
            for doc_id in ids:
                if doc_id not in self._pinned and not self.rag.documents.is_shared(doc_id):
                    self._automatic[doc_id] = None
                    self._automatic.move_to_end(doc_id)
            self._evict()
        return vectors

    def add(self, texts: list[str], ids: list[str | None]) -> list[str]:
        """Index documents for `/v1/documents` (ids default to `document_id(text)`); kept until deleted."""
        ids = [document_id(text) if doc_id is None else doc_id for text, doc_id in zip(texts, ids)]
        seen: dict[str, str] = {}
        for index, (doc_id, text) in enumerate(zip(ids, texts)):
            check_id(doc_id, f"documents[{index}].id")
            if seen.setdefault(doc_id, text) != text:
                raise APIError(400, f"The id {doc_id!r} is given to two different texts.", f"documents[{index}].id")
            if self.rag.documents.is_shared(doc_id) and self.rag.get_text(doc_id) != text:
                self._refuse_shared(doc_id, f"documents[{index}].id", "replaced")
        with self._lock:
            count = len(set(self._pinned) | {doc_id for doc_id in ids if not self.rag.documents.is_shared(doc_id)})
            if count > self.max_documents:
                raise APIError(
                    400,
                    f"The index would hold {count} documents added through /v1/documents; the server keeps at "
                    f"most {self.max_documents}. Delete some first.",
                    "documents",
                    "index_full",
                )
            self._index(texts, ids)
            for doc_id, text in zip(ids, texts):
                if self.rag.documents.is_shared(doc_id):  # already there, for every replica
                    continue
                self._unpin(doc_id)
                key = self._pinned[doc_id] = document_id(text)
                self._pinned_texts[key] = doc_id
                self._automatic.pop(doc_id, None)
                if key != doc_id and key in self._automatic:  # the same text, indexed automatically before
                    del self._automatic[key]
                    self.rag.remove_documents([key])
            self._evict()
        return ids

    def _index(self, texts: list[str], ids: list[str] | None) -> None:
        """`GritRAG.add_documents` (all or nothing); a store that cannot be written (a full or read-only disk) is a
        507 or 503 naming the cause, logged in one line, and leaves the index as it was."""
        try:
            self.rag.add_documents(texts, ids=ids)
        except OSError as error:
            full = error.errno == errno.ENOSPC or "No space left" in str(error)
            logger.warning(f"Could not store the states of {len(texts)} document(s): {error}")
            raise APIError(
                507 if full else 503,
                f"The server's key/value store could not be written ({error}); nothing was indexed. Retry later.",
                None,
                "storage_full" if full else "storage_unavailable",
            ) from None

    def _unpin(self, doc_id: str) -> None:
        key = self._pinned.pop(doc_id, None)
        if key is not None and self._pinned_texts.get(key) == doc_id:
            del self._pinned_texts[key]

    def _evict(self) -> None:
        excess = self._local_count() - self.max_documents
        if excess > 0:
            victims = list(self._automatic)[:excess]
            self.rag.remove_documents(victims)
            for doc_id in victims:
                del self._automatic[doc_id]

    # -- reading and deleting ----------------------------------------------------------------------------------------
    def check_known(self, ids: list[str], param: str) -> None:
        """404 naming the first id that is not indexed."""
        known = set(self.rag.doc_ids)
        for index, doc_id in enumerate(ids):
            if doc_id not in known:
                raise APIError(
                    404,
                    f"No document has the id {doc_id!r}: index it first (POST /v1/documents or /v1/embeddings).",
                    f"{param}[{index}]",
                    "document_not_found",
                )

    def text(self, doc_id: str) -> str:
        self.check_known([doc_id], "id")
        return self.rag.get_text(doc_id)

    def describe(self, doc_id: str, with_text: bool = False) -> dict[str, Any]:
        """The `document` object of an indexed document."""
        text = self.rag.get_text(doc_id)
        shared = self.rag.documents.is_shared(doc_id)  # its index says whether it has states: no request to ask
        info = {
            "id": doc_id,
            "object": "document",
            "source": "index" if shared else "documents" if doc_id in self._pinned else "embeddings",
            "characters": len(text),
            "states_cached": doc_id not in self.rag.documents.uncached if shared else doc_id in self.rag.store,
            "spliceable": len(text) >= MIN_CACHED_CHARS,
        }
        if with_text:
            info["text"] = text
        return info

    def list(self, limit: int, after: str | None) -> dict[str, Any]:
        """OpenAI's list object of the indexed documents, oldest first, from after the id `after`."""
        ids = self.rag.doc_ids
        start = 0
        if after is not None:
            if after not in ids:
                raise APIError(404, f"No document has the id {after!r}.", "after", "document_not_found")
            start = ids.index(after) + 1
        page = ids[start : start + limit]
        data = []
        for doc_id in page:
            try:
                data.append(self.describe(doc_id))
            except ValueError:  # removed meanwhile
                continue
        return {
            "object": "list",
            "data": data,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
            "has_more": start + limit < len(ids),
        }

    def delete(self, doc_id: str) -> dict[str, Any]:
        """Forget a document (text, embedding, states); 404 if it is not indexed."""
        if self.rag.documents.is_shared(doc_id):
            self._refuse_shared(doc_id, "id", "deleted")
        with self._lock:
            if doc_id not in self.rag.documents.texts or not self.rag.remove_documents([doc_id]):
                raise APIError(404, f"No document has the id {doc_id!r}.", "id", "document_not_found")
            self._unpin(doc_id)
            self._automatic.pop(doc_id, None)
        return {"id": doc_id, "object": "document.deleted", "deleted": True}
