"""Fixtures of the integration tests: one tiny random checkpoint shared by the LangChain and LlamaIndex suites, and an
import fallback so `langchain_gritlm` and `llama_index.{embeddings,llms}.gritlm` load without an install."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

INTEGRATIONS = Path(__file__).resolve().parents[2] / "integrations"
if importlib.util.find_spec("langchain_gritlm") is None:  # not installed (`pip install -e .` exposes them)
    sys.path.insert(0, str(INTEGRATIONS))  # llama_index is a namespace package: its path picks this folder up too

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from integration_helpers import ...`

from integration_helpers import DOCS, tiny_checkpoint  # noqa: E402
from tiny import make_stock_checkpoint  # noqa: E402  (tests/ is on sys.path, see tests/conftest.py)


@pytest.fixture
def tiny_path() -> str:
    """The shared tiny checkpoint (the same path, hence the same shared instance, in every test)."""
    return tiny_checkpoint()


@pytest.fixture
def fresh_path(tmp_path) -> str:
    """A tiny checkpoint of this test alone (its own shared instance and key/value store)."""
    path = str(make_stock_checkpoint(tmp_path / "tiny", "llama"))
    yield path
    from grit_hf.rag import release_shared

    release_shared(path)


@pytest.fixture
def docs() -> list[str]:
    return list(DOCS)
