"""Fixtures of the integration tests: one tiny random checkpoint shared by the LangChain and LlamaIndex suites, and an
import fallback so `langchain_gritlm` and `llama_index.{embeddings,llms}.gritlm` load without an install."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

INTEGRATIONS = Path(__file__).resolve().parents[2] / "integrations"
if importlib.util.find_spec("langchain_gritlm") is None:  # not installed (`pip install -e .` exposes them)
    sys.path.insert(0, str(INTEGRATIONS))  # llama_index is a namespace package: its path picks this folder up too

from tiny import make_stock_checkpoint  # noqa: E402  (tests/ is on sys.path, see tests/conftest.py)

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


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run ~10x faster on one thread than on two contended ones (the CPU is shared); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_path() -> str:
    """The shared tiny checkpoint (the same path, hence the same shared instance, in every test)."""
    return tiny_checkpoint()


@pytest.fixture
def fresh_path(tmp_path) -> str:
    """A tiny checkpoint of this test alone (its own shared instance and key/value store)."""
    path = str(make_stock_checkpoint(tmp_path / "tiny", "llama"))
    yield path
    from grit_hf.shared import release_shared

    release_shared(path)


@pytest.fixture
def docs() -> list[str]:
    return list(DOCS)
