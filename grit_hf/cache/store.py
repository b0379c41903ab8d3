"""Stores of key/value states keyed by document id: the `KVStore` interface and the in-memory store (LRU under a
byte budget). The disk store is in `grit_hf.cache.disk`.

Every entry carries the `Fingerprint` of the setup that computed it (model weights, config, tokenizer, dtype,
document template, attention mode) and the format its states are kept in (`storage`); a store refuses to hand back an
entry whose fingerprint differs from its own with `FingerprintMismatchError`.

`quantize="int8"` makes a store keep new entries in 8 bits (`grit_hf.cache.quantization`): half the bytes of bf16
states per token. Entries keep the format they were written in: a store reads dense and int8 entries alike, and int8
states hand back dequantized tensors in the model's dtype.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace

from transformers.utils import logging

from ..validation import check_text
from .entries import check_states
from .fingerprint import Fingerprint, FingerprintMismatchError
from .quantization import Quantization, check_quantize, quantize_states
from .states import KVStates

logger = logging.get_logger(__name__)

__all__ = ["KVStore", "MemoryKVStore", "check_doc_id"]


def check_doc_id(doc_id: object) -> str:
    """`doc_id` if it can key an entry in every store: a non-empty str of valid Unicode (a disk entry records it in
    UTF-8 metadata and names its file after it). `TypeError`/`ValueError` naming `doc_id` otherwise, in every store
    alike."""
    if not isinstance(doc_id, str) or not doc_id:
        raise TypeError(f"`doc_id` must be a non-empty str, got {doc_id!r:.80}.")
    return check_text(doc_id, "doc_id")


def valid_doc_id(doc_id: object) -> bool:
    """Whether `check_doc_id` accepts `doc_id` (what `in` asks: an id no store can hold is in none)."""
    try:
        check_doc_id(doc_id)
    except (TypeError, ValueError):
        return False
    return True


def _check_states(doc_id: str, states: KVStates, fingerprint: Fingerprint | None) -> Fingerprint:
    """The store's fingerprint, after checking that `states` may be stored under it (`CacheEntryError` if they do
    not fit the model, e.g. wrong shapes or NaNs)."""
    check_doc_id(doc_id)
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
    With `quantize="int8"`, `put` keeps states in 8 bits (`quantize_states`); states already in 8 bits are kept as
    they are in any store.
    """

    def __init__(self, fingerprint: Fingerprint | None = None, quantize: Quantization | None = None):
        self.fingerprint = fingerprint
        self.quantize = check_quantize(quantize)
        self._lock = threading.RLock()

    def _prepare(self, doc_id: str, states: KVStates) -> tuple[KVStates, Fingerprint]:
        """`(states in the form this store keeps, the fingerprint their entry records)`; checks them first."""
        _check_states(doc_id, states, self.fingerprint)
        if self.quantize is not None:
            states = quantize_states(states, self.quantize)
        return states, replace(self.fingerprint, storage=states.storage)

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

    def put_many(self, entries: dict[str, KVStates | None]) -> None:
        """Put (or, for `None`, delete) every entry, all or none: if one fails (e.g. a full disk, `OSError`), the
        entries already changed are restored and the error is raised."""
        previous = {}
        try:
            for doc_id, states in entries.items():
                previous[doc_id] = self.get(doc_id) if doc_id in self else None
                self.delete(doc_id) if states is None else self.put(doc_id, states)
        except BaseException:
            for doc_id, old in previous.items():
                try:
                    self.put(doc_id, old) if old is not None else self.delete(doc_id)
                except Exception as error:  # the original error matters more; the entry is then dropped
                    logger.warning(f"Could not restore the states of {doc_id!r} ({error}); dropping them.")
                    self.delete(doc_id)
            raise


class MemoryKVStore(KVStore):
    """States kept in memory, evicting the least recently used entries once they take more than `max_bytes`.

    Args:
        max_bytes: byte budget over all entries (`None`: unbounded), counted in the bytes the entries take (int8
            states and their scales with `quantize="int8"`). An entry larger than the whole budget is not kept (a
            warning is logged).
        fingerprint: the setup entries belong to (GritRAG binds it).
        quantize: `"int8"` keeps states in 8 bits (half of bf16 per token; see `grit_hf.cache.quantization`);
            `None` keeps them as computed.
    """

    def __init__(
        self,
        max_bytes: int | None = None,
        fingerprint: Fingerprint | None = None,
        quantize: Quantization | None = None,
    ):
        super().__init__(fingerprint, quantize)
        if max_bytes is not None and (not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0):
            raise ValueError(f"`max_bytes` must be a non-negative int or None, got {max_bytes!r}.")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[KVStates, Fingerprint, int]] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    def put(self, doc_id: str, states: KVStates) -> None:
        states, fingerprint = self._prepare(doc_id, states)
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
        check_doc_id(doc_id)
        with self._lock:
            entry = self._entries.get(doc_id)
            if entry is None:
                return None
            self._refuse(doc_id, entry[1])
            self._entries.move_to_end(doc_id)
            return entry[0]

    def delete(self, doc_id: str) -> bool:
        check_doc_id(doc_id)
        with self._lock:
            entry = self._entries.pop(doc_id, None)
            if entry is not None:
                self.nbytes -= entry[2]
            return entry is not None

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def __contains__(self, doc_id: object) -> bool:
        if not valid_doc_id(doc_id):
            return False
        with self._lock:
            return doc_id in self._entries
