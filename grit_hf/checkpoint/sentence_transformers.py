"""Deprecated alias of `grit_hf.folders.sentence_transformers` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..folders.sentence_transformers import *  # noqa: F403
from ..folders.sentence_transformers import __all__  # noqa: F401

warn_moved("grit_hf.checkpoint.sentence_transformers", "grit_hf.folders.sentence_transformers")
