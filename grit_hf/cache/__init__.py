"""Key/value states of embedded texts and where they are kept."""

from __future__ import annotations

from .states import KVStates, split_batch_cache

__all__ = ["KVStates", "split_batch_cache"]
