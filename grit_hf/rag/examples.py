"""Deprecated alias of `grit_hf.records.rag_examples` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..records.rag_examples import *  # noqa: F403
from ..records.rag_examples import __all__  # noqa: F401

warn_moved("grit_hf.rag.examples", "grit_hf.records.rag_examples")
