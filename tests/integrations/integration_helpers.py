"""Helpers of the integration tests (a module with a unique name, so test files can import it; see conftest.py)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from tiny import make_stock_checkpoint

__all__ = ["DOCS", "tiny_checkpoint"]

DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
]


@functools.cache
def tiny_checkpoint(name: str = "chat") -> str:
    """A tiny random Llama checkpoint folder, made once per process per `name` (the standard suites read it from a
    class property, where fixtures are not available). Removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix=f"grit-integrations-{name}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(make_stock_checkpoint(folder, "llama"))
