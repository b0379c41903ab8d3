"""Deprecated alias of `grit_hf.checkpoint.default_model` (removed in grit-hf 0.4): use `grit_hf.default_model_path`."""

from __future__ import annotations

import warnings

from .checkpoint.default_model import DEFAULT_MODEL_NAME, cache_home, default_base_path, default_model_path

warnings.warn(
    "`grit_hf.default_model` moved to `grit_hf.checkpoint.default_model` and will be removed in grit-hf 0.4; "
    "use `grit_hf.default_model_path()`.",
    FutureWarning,
    stacklevel=2,
)

__all__ = ["default_model_path", "default_base_path", "cache_home", "DEFAULT_MODEL_NAME"]
