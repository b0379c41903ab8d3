"""Deprecated alias of `grit_hf.generation.compose` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..generation.compose import *  # noqa: F403
from ..generation.compose import __all__  # noqa: F401

warn_moved("grit_hf.rag.compose", "grit_hf.generation.compose")
