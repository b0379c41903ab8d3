"""`LayeredKVStore`: a shared store that many processes read (the states of a built index, on NFS or in object
storage) under a store of this process alone (what it adds at run time, and states it had to recompute).

Nothing is ever written to the shared store from here: replicas serving one index cannot change each other's states.
A damaged or evicted shared entry is recomputed by the caller (`DocumentIndex.document_states`) and kept locally.
"""

from __future__ import annotations

from transformers.utils import logging

from .fingerprint import Fingerprint
from .states import KVStates
from .store import KVStore

logger = logging.get_logger(__name__)

__all__ = ["LayeredKVStore"]


class LayeredKVStore(KVStore):
    """Reads the local `overlay` first, then the shared `base`; writes and deletes go to the overlay only.

    Args:
        base: the shared store (read only from here), e.g. `DiskKVStore("s3://bucket/states")`.
        overlay: this process's store (e.g. a `MemoryKVStore` with a byte budget, or a local `DiskKVStore`).
    """

    def __init__(self, base: KVStore, overlay: KVStore):
        for name, store in (("base", base), ("overlay", overlay)):
            if not isinstance(store, KVStore):
                raise TypeError(f"`{name}` must be a KVStore, got {type(store).__name__}.")
        super().__init__(overlay.fingerprint or base.fingerprint, overlay.quantize)
        self.base, self.overlay = base, overlay

    def bind(self, fingerprint: Fingerprint) -> None:
        super().bind(fingerprint)
        self.base.bind(fingerprint)
        self.overlay.bind(fingerprint)

    @property
    def nbytes(self) -> int:
        """Bytes held by the overlay (what this process added; the shared store is not counted)."""
        return getattr(self.overlay, "nbytes", 0)

    def put(self, doc_id: str, states: KVStates) -> None:
        self.overlay.put(doc_id, states)

    def get(self, doc_id: str) -> KVStates | None:
        states = self.overlay.get(doc_id)
        return states if states is not None else self.base.get(doc_id)

    def delete(self, doc_id: str) -> bool:
        """Delete the overlay's entry of `doc_id` (a shared entry stays, for the other processes)."""
        return self.overlay.delete(doc_id)

    def keys(self) -> list[str]:
        return list(dict.fromkeys(self.base.keys() + self.overlay.keys()))

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.overlay or doc_id in self.base
