from __future__ import annotations

from grit_hf.cli import main
from grit_hf.demo import load_demo_documents


def test_demo_documents_are_bundled():
    documents = load_demo_documents()
    assert len(documents) >= 6 and all(d["id"] and d["text"] for d in documents)


def test_demo_retrieves_and_answers_from_the_document(default_model_dir, capsys):
    """By default (bf16 on a CPU with native bf16) the demo retrieves and answers; in float32 the answer from causal
    cached states is plain RAG's token for token."""
    for dtype in ("auto", "float32"):
        assert main(["demo", "--no-progress", "--dtype", dtype]) == 0
        out = capsys.readouterr().out
        assert "retrieved for 'How tall is the Eiffel Tower?': eiffel" in out
        plain = next(line for line in out.splitlines() if "plain RAG" in line)
        cached = next(line for line in out.splitlines() if "doc caching" in line)
        assert "330" in plain
        assert "cached tokens reused" in cached and "(0 cached" not in cached
    assert "torch.float32" in out
    assert plain.split(": ", 1)[1] == cached.split(": ", 1)[1]
