"""`DocumentIndex`: the documents one `GritRAG` retrieves from and answers with: their ids, texts and embeddings
(`DocumentTable`), their key/value states (a `KVStore`, bound to the model's fingerprint), and the embedding pass that
computes both in one forward pass.

It is the `DocumentSource` that prompt plans are resolved against (`grit_hf.generation.plan`): a cached document's
states, recomputed if they were evicted or damaged, or the token ids of its embedding input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.utils import logging

from ..cache.entries import CacheEntryError
from ..cache.states import KVStates
from ..cache.store import KVStore
from ..validation import check_str_list, check_texts
from .documents import DocumentTable, document_id
from .embedding_pass import EmbeddingPass

logger = logging.get_logger(__name__)

__all__ = ["DocumentIndex"]


class DocumentIndex:
    """Indexed documents with their embeddings and stored states.

    Args:
        embedding_pass: how texts are embedded and their states computed.
        store: where the states go; bound to `fingerprint` here.
        fingerprint: the model setup's fingerprint (`grit_hf.cache.fingerprint.compute_fingerprint`).

    Changes happen under the model's forward lock, so a prompt being resolved never sees half a change.
    """

    def __init__(self, embedding_pass: EmbeddingPass, store: KVStore, fingerprint: str):
        if not isinstance(store, KVStore):
            raise TypeError(f"`store` must be a KVStore, got {type(store).__name__}.")
        self.embedding_pass = embedding_pass
        self.store = store
        self.store.bind(fingerprint)
        self.table = DocumentTable(embedding_pass.model.config.text_config.hidden_size)
        self.lock = embedding_pass.model.forward_lock

    def add(self, texts, ids: Sequence[str] | None = None, show_progress_bar: bool | None = None) -> list[str]:
        """Embed documents and store their states (see `GritRAG.add_documents`); returns the ids, in order."""
        texts, _ = check_texts(texts, "texts")
        if ids is None:
            ids = [document_id(text) for text in texts]
        else:
            ids = check_str_list(ids, "ids")
            if len(ids) != len(texts):
                raise ValueError(f"`ids` must hold one id per text: {len(texts)} texts, {len(ids)} ids.")
        new = self.table.changed(ids, texts)
        if not new:
            return ids
        embeddings, parts = self.embedding_pass.run(list(new.values()), "", states=True, progress=show_progress_bar)
        uncached = [isinstance(part, list) for part in parts]  # too long to cache: any older entry is deleted
        with self.lock:
            self.store.put_many({i: None if cut else part for i, part, cut in zip(new, parts, uncached)})
            self.table.update(new, embeddings, uncached)
        return ids

    def remove(self, ids: Sequence[str]) -> list[str]:
        """Forget documents (texts, embeddings, states); returns those that were indexed, in the order given."""
        ids = check_str_list(ids, "ids")
        with self.lock:
            removed = self.table.remove(ids)
            for doc_id in removed:
                self.store.delete(doc_id)
        return removed

    def text(self, doc_id: str) -> str:
        """The text of an indexed document (`ValueError` for an unknown id)."""
        return self.table.texts[self.table.check_known([doc_id])[0]]

    def embeddings(self, doc_ids: Sequence[str]) -> torch.Tensor:
        """The stored embeddings `(n, dim)` (float32, CPU) of indexed documents, in the order of `doc_ids`."""
        doc_ids = self.table.check_known(doc_ids)
        with self.lock:
            return self.table.embeddings_of(doc_ids)

    def document_states(self, doc_id: str) -> KVStates | list[int]:
        """The stored states of an indexed document, recomputed (and stored again) if they were evicted or their entry
        is damaged; the token ids of its embedding input if it is too long to cache."""
        text = self.text(doc_id)
        if doc_id in self.table.uncached:
            return self.embedding_pass.input_ids(text, "")
        try:
            states = self.store.get(doc_id)
        except CacheEntryError as error:  # e.g. a file damaged on disk: the document's text is still here
            logger.warning(f"{error} Recomputing the states of {doc_id!r}.")
            states = None
        if states is None:
            _, (states,) = self.embedding_pass.run([text], "", states=True, embeddings=False)
            self.store.put(doc_id, states)
        return states

    def document_input_ids(self, doc_id: str) -> list[int]:
        """The token ids of an indexed document's embedding input (document template + text), in full: what its
        states stand for."""
        return self.embedding_pass.input_ids(self.text(doc_id), "")
