"""Key/value states of embedded texts and where they are kept."""

from __future__ import annotations

from .positions import find_rotary_embedding, rotate_keys, shift_layers, verify_rerotation
from .states import KVStates, split_batch_cache
from .store import (
    DiskKVStore,
    Fingerprint,
    FingerprintMismatchError,
    KVStore,
    MemoryKVStore,
    cache_from_layers,
    compute_fingerprint,
)

__all__ = [
    "KVStates",
    "split_batch_cache",
    "KVStore",
    "MemoryKVStore",
    "DiskKVStore",
    "Fingerprint",
    "FingerprintMismatchError",
    "compute_fingerprint",
    "cache_from_layers",
    "find_rotary_embedding",
    "rotate_keys",
    "shift_layers",
    "verify_rerotation",
]
