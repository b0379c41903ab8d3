"""Deprecated alias of `grit_hf.rag.gritrag` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..rag.gritrag import *  # noqa: F403
from ..rag.gritrag import __all__  # noqa: F401

warn_moved("grit_hf.rag.index", "grit_hf.rag.gritrag")
