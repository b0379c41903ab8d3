"""One re-entrant lock per model object, held around every forward pass of a GRIT model.

Why a lock: transformers' per-call `is_causal=False` (how grit-hf embeds bidirectionally with any decoder family)
writes the decoder config's `is_causal` flag for the duration of the forward pass. Two overlapping passes on one model
in different threads would restore the flag wrongly and leave the model generating with bidirectional attention. So
`encode`, every forward of `GritLMModel`/`GritLMForCausalLM` (and hence `generate`, sentence-transformers, the trainer
and the RAG engine) run under this lock: the flag is always restored before another pass starts. Locks live in a weak
map, not on the model, so models stay picklable and deep-copyable (a copy gets its own lock).
"""

from __future__ import annotations

import threading
import weakref

__all__ = ["model_lock"]

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def model_lock(model: object) -> threading.RLock:
    """The re-entrant lock that serialises the forward passes of `model` (created on first use)."""
    lock = _LOCKS.get(model)
    if lock is None:
        with _GUARD:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
    return lock
