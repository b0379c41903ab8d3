"""Deprecated alias of `grit_hf.generation.engine` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..generation.engine import *  # noqa: F403
from ..generation.engine import __all__  # noqa: F401

warn_moved("grit_hf.rag.decoding", "grit_hf.generation.engine")
