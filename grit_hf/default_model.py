"""Deprecated alias of `grit_hf.folders.default_model` (removed in grit-hf 0.4): use `grit_hf.default_model_path`."""

from __future__ import annotations

from ._moved import warn_moved
from .folders.default_model import DEFAULT_MODEL_NAME, cache_home, default_base_path, default_model_path

__all__ = ["default_model_path", "default_base_path", "cache_home", "DEFAULT_MODEL_NAME"]

warn_moved("grit_hf.default_model", "grit_hf.folders.default_model")
