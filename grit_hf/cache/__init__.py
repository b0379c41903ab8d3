"""Key/value states of embedded texts and where they are kept: `KVStates` (states.py), fingerprints of the setup
that computed them (fingerprint.py), the memory and disk stores (store.py, disk.py; a disk store also lives under an
fsspec URL: objects.py), a shared store under a local one (layered.py), states kept in 8 bits
(quantization.py), moving states to another position (positions.py) and the caches a prompt is decoded from
(buffers.py)."""

from __future__ import annotations

from .disk import DiskKVStore
from .entries import CacheEntryError
from .fingerprint import Fingerprint, FingerprintMismatchError, compute_fingerprint
from .layered import LayeredKVStore
from .positions import find_rotary_embedding, rotate_keys, shift_layers, verify_rerotation
from .quantization import QUANTIZATIONS, QuantizedKVStates, quantize_states
from .states import KVStates, cache_from_layers, split_batch_cache
from .store import KVStore, MemoryKVStore

__all__ = [
    "KVStates",
    "QuantizedKVStates",
    "quantize_states",
    "QUANTIZATIONS",
    "split_batch_cache",
    "cache_from_layers",
    "KVStore",
    "MemoryKVStore",
    "DiskKVStore",
    "LayeredKVStore",
    "CacheEntryError",
    "Fingerprint",
    "FingerprintMismatchError",
    "compute_fingerprint",
    "find_rotary_embedding",
    "rotate_keys",
    "shift_layers",
    "verify_rerotation",
]
