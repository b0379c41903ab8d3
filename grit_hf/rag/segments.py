"""Deprecated alias of `grit_hf.generation.segments` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..generation.segments import *  # noqa: F403
from ..generation.segments import __all__  # noqa: F401

warn_moved("grit_hf.rag.segments", "grit_hf.generation.segments")
