"""Deprecated alias of `grit_hf.records.retrieval` (removed in grit-hf 0.4)."""

from __future__ import annotations

from ._moved import warn_moved
from .records.retrieval import *  # noqa: F403
from .records.retrieval import __all__  # noqa: F401

warn_moved("grit_hf.retrieval_data", "grit_hf.records.retrieval")
