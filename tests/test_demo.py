from __future__ import annotations

from grit_hf.cli import main
from grit_hf.demo import load_demo_documents


def test_demo_documents_are_bundled():
    documents = load_demo_documents()
    assert len(documents) >= 6 and all(d["id"] and d["text"] for d in documents)


def test_demo_retrieves_and_answers_from_the_document(default_model_dir, capsys):
    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "retrieved for 'How tall is the Eiffel Tower?': eiffel" in out
    plain = next(line for line in out.splitlines() if "plain RAG" in line)
    cached = next(line for line in out.splitlines() if "doc caching" in line)
    assert "330" in plain
    # causal caches continue exactly: the cached answer is the plain RAG answer
    assert plain.split(": ", 1)[1] == cached.split(": ", 1)[1]
    assert "cached tokens reused" in cached and "(0 cached" not in cached
