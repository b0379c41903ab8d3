"""Building a checkpoint folder once, atomically (the default model, converted Hub names, merged adapters)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["build_folder_once"]


def build_folder_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Return `target`, first running `build(staging)` into a temporary sibling folder and moving it into place
    atomically if `target` has no `config.json` yet: a crash never leaves a half-written checkpoint, and of two
    processes building at once, the second keeps the first's complete folder."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
