"""Deprecated alias of `grit_hf.folders.default_model` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..folders.default_model import *  # noqa: F403
from ..folders.default_model import __all__  # noqa: F401

warn_moved("grit_hf.checkpoint.default_model", "grit_hf.folders.default_model")
