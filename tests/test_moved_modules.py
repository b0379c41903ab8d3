"""Modules that moved keep their old import path for one release: importing it warns (FutureWarning, naming the new
path) and gives the very objects of the new module."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MOVED = {
    "grit_hf.default_model": "grit_hf.folders.default_model",
    "grit_hf.retrieval_data": "grit_hf.records.retrieval",
    "grit_hf.checkpoint.default_model": "grit_hf.folders.default_model",
    "grit_hf.checkpoint.resolve": "grit_hf.folders.resolve",
    "grit_hf.checkpoint.sentence_transformers": "grit_hf.folders.sentence_transformers",
    "grit_hf.rag.index": "grit_hf.rag.gritrag",
    "grit_hf.rag.decoding": "grit_hf.generation.engine",
    "grit_hf.rag.compose": "grit_hf.generation.compose",
    "grit_hf.rag.segments": "grit_hf.generation.segments",
    "grit_hf.rag.examples": "grit_hf.records.rag_examples",
    "grit_hf.trainer.adapters": "grit_hf.checkpoint.adapters",
    "grit_hf.serve.cli": "grit_hf.cli.serve",
}


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_path_warns_and_gives_the_new_objects(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(FutureWarning, match=f"`{old}` moved to `{new}`"):
        alias = importlib.import_module(old)
    target = importlib.import_module(new)
    names = getattr(alias, "__all__", None)
    assert names, f"{old} exports nothing"
    for name in names:
        assert getattr(alias, name) is getattr(target, name), name


def test_the_package_imports_no_old_path():
    """A fresh process importing grit-hf's modules at their new paths (and the package) meets no moved-module warning."""
    modules = ["grit_hf", "grit_hf.cli", "grit_hf.serve", "grit_hf.trainer", *sorted(set(MOVED.values()))]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
    run = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code, *modules], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
