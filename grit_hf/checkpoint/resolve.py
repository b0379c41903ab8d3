"""Deprecated alias of `grit_hf.folders.resolve` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..folders.resolve import *  # noqa: F403
from ..folders.resolve import __all__  # noqa: F401

warn_moved("grit_hf.checkpoint.resolve", "grit_hf.folders.resolve")
