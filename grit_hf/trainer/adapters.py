"""Deprecated alias of `grit_hf.checkpoint.adapters` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..checkpoint.adapters import *  # noqa: F403
from ..checkpoint.adapters import __all__  # noqa: F401

warn_moved("grit_hf.trainer.adapters", "grit_hf.checkpoint.adapters")
