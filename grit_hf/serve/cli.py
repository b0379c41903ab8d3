"""Deprecated alias of `grit_hf.cli.serve` (removed in grit-hf 0.4)."""

from __future__ import annotations

from .._moved import warn_moved
from ..cli.serve import *  # noqa: F403
from ..cli.serve import __all__  # noqa: F401

warn_moved("grit_hf.serve.cli", "grit_hf.cli.serve")
