"""The deprecation warning of a module that moved (its old path stays an alias for one release)."""

from __future__ import annotations

import warnings

__all__ = ["warn_moved"]

REMOVED_IN = "0.4"


def warn_moved(old: str, new: str) -> None:
    """Warn (`FutureWarning`, pointing at the importer) that module `old` moved to `new`."""
    warnings.warn(
        f"`{old}` moved to `{new}` and will be removed in grit-hf {REMOVED_IN}; import from `{new}`.",
        FutureWarning,
        stacklevel=3,
    )
