from __future__ import annotations

from grit_hf.cli import main
from grit_hf.demo import load_demo_documents
from grit_hf.folders.default_model import packaged_adapter


def test_demo_documents_are_bundled():
    documents = load_demo_documents()
    assert len(documents) >= 6 and all(d["id"] and d["text"] for d in documents)


def _demo_lines(capsys, *args: str) -> tuple[str, str, str]:
    """The demo's whole output, its plain RAG line and its doc caching line."""
    assert main(["demo", "--no-progress", *args]) == 0
    out = capsys.readouterr().out
    assert "retrieved for 'How tall is the Eiffel Tower?': eiffel" in out
    plain = next(line for line in out.splitlines() if "plain RAG" in line)
    cached = next(line for line in out.splitlines() if "doc caching" in line)
    assert "330" in plain
    assert "cached states reused" in cached and "(0 cached" not in cached
    return out, plain, cached


def test_demo_answers_from_the_embedding_pass_states_of_the_shipped_model(default_model_dir, capsys):
    """By default (bf16 on a CPU with native bf16) the demo retrieves and answers; with grit-hf's trained adapter
    shipped, from the embedding pass's own (bidirectional) states, which hold the answer."""
    out, plain, cached = _demo_lines(capsys)
    if packaged_adapter() is None:
        assert "from causal cached states" in cached
    else:
        assert "kept the key/value states of that same pass" in out
        assert "from the embedding pass's own states" in cached
        # the shipped recompute setting (the adapter's `cache_recompute`): some states recomputed, the rest reused,
        # and the answer a correct sentence about the right subject, as plain RAG's is
        assert "recomputed causally" in cached
        answer = cached.rsplit(": ", 1)[1]
        assert "Eiffel Tower" in answer and "330 metres" in answer, answer


def test_demo_with_causal_states_in_float32_answers_as_plain_rag(default_model_dir, capsys):
    """Causal cached states continue the prompt exactly in float32: the cached answer is plain RAG's, token for
    token."""
    out, plain, cached = _demo_lines(capsys, "--dtype", "float32", "--cache-attention", "causal")
    assert "torch.float32" in out and "from causal cached states" in cached
    assert plain.split(": ", 1)[1] == cached.split(": ", 1)[1]
