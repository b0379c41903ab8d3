"""Stores of key/value states keyed by document id: the `KVStore` interface and the in-memory store (LRU under a
byte budget). The disk store is in `grit_hf.cache.disk`.

Every entry carries the `Fingerprint` of the setup that computed it (model weights, config, tokenizer, dtype,
document template, attention mode); a store refuses to hand back an entry whose fingerprint differs from its own
with `FingerprintMismatchError`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator

from transformers.utils import logging

from .entries import check_states
from .fingerprint import Fingerprint, FingerprintMismatchError
from .states import KVStates

logger = logging.get_logger(__name__)

__all__ = ["KVStore", "MemoryKVStore"]


def _check_states(doc_id: str, states: KVStates, fingerprint: Fingerprint | None) -> Fingerprint:
    """The store's fingerprint, after checking that `states` may be stored under it (`CacheEntryError` if they do
    not fit the model, e.g. wrong shapes or NaNs)."""
    if not isinstance(doc_id, str) or not doc_id:
        raise TypeError(f"`doc_id` must be a non-empty str, got {doc_id!r}.")
    if not isinstance(states, KVStates):
        raise TypeError(f"`states` must be a KVStates, got {type(states).__name__}.")
    if fingerprint is None:
        raise ValueError("This store has no fingerprint yet: pass `fingerprint=` or call `store.bind(fingerprint)`.")
    mode = "causal" if states.is_causal else "bidirectional"
    if mode != fingerprint.attention:
        raise ValueError(
            f"States for {doc_id!r} were computed with {mode} attention, the store expects {fingerprint.attention}."
        )
    check_states(f"The states of {doc_id!r}", states, fingerprint.layout, fingerprint.dtype)
    return fingerprint


class KVStore:
    """Base class of the stores: `put`, `get`, `delete`, `in`, `len`, `keys()`, all thread-safe.

    A store is bound to one `Fingerprint` (`fingerprint=` or `bind`); `get` refuses entries recorded under another.
    """

    def __init__(self, fingerprint: Fingerprint | None = None):
        self.fingerprint = fingerprint
        self._lock = threading.RLock()

    def bind(self, fingerprint: Fingerprint) -> None:
        """Set the fingerprint that new entries record and that entries read back must match."""
        if not isinstance(fingerprint, Fingerprint):
            raise TypeError(f"`fingerprint` must be a Fingerprint, got {type(fingerprint).__name__}.")
        self.fingerprint = fingerprint

    def _refuse(self, doc_id: str, stored: Fingerprint) -> None:
        if self.fingerprint is None or stored.matches(self.fingerprint):
            return
        lines = "; ".join(self.fingerprint.differences(stored))
        raise FingerprintMismatchError(
            f"The cached states of {doc_id!r} were computed by a different setup ({stored.model}) and cannot be "
            f"reused: {lines}. Delete the entry or re-add the document."
        )

    def put(self, doc_id: str, states: KVStates) -> None:
        raise NotImplementedError

    def get(self, doc_id: str) -> KVStates | None:
        """The states of `doc_id`, or `None` if absent. Raises `FingerprintMismatchError` for a foreign entry."""
        raise NotImplementedError

    def delete(self, doc_id: str) -> bool:
        raise NotImplementedError

    def keys(self) -> list[str]:
        raise NotImplementedError

    def __contains__(self, doc_id: object) -> bool:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


class MemoryKVStore(KVStore):
    """States kept in memory, evicting the least recently used entries once they take more than `max_bytes`.

    Args:
        max_bytes: byte budget over all entries (`None`: unbounded). An entry larger than the whole budget is not
            kept (a warning is logged).
        fingerprint: the setup entries belong to (GritRAG binds it).
    """

    def __init__(self, max_bytes: int | None = None, fingerprint: Fingerprint | None = None):
        super().__init__(fingerprint)
        if max_bytes is not None and (not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0):
            raise ValueError(f"`max_bytes` must be a non-negative int or None, got {max_bytes!r}.")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[KVStates, Fingerprint, int]] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    def put(self, doc_id: str, states: KVStates) -> None:
        fingerprint = _check_states(doc_id, states, self.fingerprint)
        size = states.nbytes
        with self._lock:
            self.delete(doc_id)
            if self.max_bytes is not None and size > self.max_bytes:
                logger.warning(f"States of {doc_id!r} ({size} bytes) exceed `max_bytes`={self.max_bytes}; not kept.")
                return
            self._entries[doc_id] = (states, fingerprint, size)
            self.nbytes += size
            while self.max_bytes is not None and self.nbytes > self.max_bytes:
                evicted, (_, _, evicted_size) = self._entries.popitem(last=False)
                self.nbytes -= evicted_size
                self.evictions += 1
                logger.debug(f"Evicted the states of {evicted!r} ({evicted_size} bytes).")

    def get(self, doc_id: str) -> KVStates | None:
        with self._lock:
            entry = self._entries.get(doc_id)
            if entry is None:
                return None
            self._refuse(doc_id, entry[1])
            self._entries.move_to_end(doc_id)
            return entry[0]

    def delete(self, doc_id: str) -> bool:
        with self._lock:
            entry = self._entries.pop(doc_id, None)
            if entry is not None:
                self.nbytes -= entry[2]
            return entry is not None

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def __contains__(self, doc_id: object) -> bool:
        with self._lock:
            return doc_id in self._entries
