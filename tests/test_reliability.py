"""Reliability under hostile use: threads mixing embedding and chat on one model, atomic indexing on a failing disk,
and clear errors (naming the argument) for every bad input found by fuzzing."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import grit_hf.cache.disk as disk_module
from grit_hf import GritLMForCausalLM, GritRAG, chat
from grit_hf.cache import DiskKVStore
from grit_hf.formatting import count_suffix_tokens, tokenize_with_prefix

DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "ls lists the contents of a directory.",
    "cp copies files and directories.",
    "chgrp changes the group ownership of files.",
]
LONE_SURROGATE = "broken \ud800 text"


@pytest.fixture(scope="module")
def model(grit_checkpoint):
    return GritLMForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()


def test_threads_mixing_encode_and_chat_give_the_sequential_results(model):
    """transformers' per-call `is_causal=False` writes the config flag during the pass: without the per-model
    lock, overlapping passes left it False and every later chat ran bidirectionally."""
    config = model.config.text_config
    flag_before = (hasattr(config, "is_causal"), getattr(config, "is_causal", None))
    texts = [f"{doc} ({i})" for i, doc in enumerate(DOCS * 2)]
    expected_embeddings = model.encode(texts, batch_size=2)
    expected_answers = [chat(model, text, max_new_tokens=6, ignore_eos=True) for text in texts[:4]]
    embeddings, answers, errors = {}, {}, []

    def embed(worker: int) -> None:
        try:
            for round_ in range(5):
                embeddings[(worker, round_)] = model.encode(texts, batch_size=2)
        except Exception as error:  # reported below
            errors.append(error)

    def talk(worker: int) -> None:
        try:
            for round_ in range(2):
                answers[(worker, round_)] = [chat(model, t, max_new_tokens=6, ignore_eos=True) for t in texts[:4]]
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=embed, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=talk, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for value in embeddings.values():
        np.testing.assert_allclose(value, expected_embeddings, rtol=0, atol=1e-6)
    assert all(value == expected_answers for value in answers.values())
    assert (hasattr(config, "is_causal"), getattr(config, "is_causal", None)) == flag_before
    assert chat(model, texts[0], max_new_tokens=6, ignore_eos=True) == expected_answers[0]


def _tokenizer_with_eos():
    """A tokenizer that wraps every text in `<s> ... </s>` (like the instruction-tuned families that append EOS)."""
    from tokenizers import processors

    from tests.tiny import make_tokenizer

    tokenizer = make_tokenizer(add_bos=True)
    backend = tokenizer.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", backend.token_to_id("<s>")), ("</s>", backend.token_to_id("</s>"))],
    )
    return tokenizer


@pytest.mark.parametrize("kind", ["bos", "none", "bos_eos"])
def test_hand_truncation_cuts_as_the_tokenizer_does(kind):
    from tests.tiny import make_tokenizer

    tokenizer = _tokenizer_with_eos() if kind == "bos_eos" else make_tokenizer(add_bos=kind == "bos")
    prefix = "<|embed|>\n"
    texts = [doc * 4 for doc in DOCS] + ["short"]
    ours = tokenize_with_prefix(tokenizer, prefix, texts, max_length=20, warn=False).token_ids
    reference = tokenizer([prefix + t for t in texts], truncation=True, max_length=20)["input_ids"]
    assert ours == reference
    assert count_suffix_tokens(tokenizer) == (1 if kind == "bos_eos" else 0)


def test_threads_tokenizing_long_and_short_texts_give_the_serial_results():
    """A fast tokenizer's own `truncation=True` switches truncation on in the shared backend: a thread tokenizing
    short texts at the same time could find its texts cut (or fail with "Already borrowed")."""
    tokenizer = _tokenizer_with_eos()
    long_texts, short_texts = [doc * 8 for doc in DOCS], DOCS
    expected_long = tokenize_with_prefix(tokenizer, "", long_texts, max_length=16, warn=False).token_ids
    expected_short = tokenize_with_prefix(tokenizer, "", short_texts, max_length=4096).token_ids
    results, errors = [], []

    def work(long: bool) -> None:
        try:
            for _ in range(200):
                if long:
                    results.append(
                        tokenize_with_prefix(tokenizer, "", long_texts, 16, warn=False).token_ids == expected_long
                    )
                else:
                    results.append(tokenize_with_prefix(tokenizer, "", short_texts, 4096).token_ids == expected_short)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 1200 and all(results)


def test_a_full_disk_leaves_the_index_as_it_was(model, tmp_path, monkeypatch):
    rag = GritRAG(model, cache_attention="causal", store=DiskKVStore(tmp_path / "kv"))
    rag.add_documents(DOCS[:2], ids=["a", "b"])
    before_ids, before_keys = rag.doc_ids, sorted(rag.store.keys())
    before_embeddings = rag.get_embeddings(before_ids)
    real_save, calls = disk_module.save_file, []

    def fails_third(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            from safetensors import SafetensorError

            raise SafetensorError("No space left on device (os error 28)")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(disk_module, "save_file", fails_third)
    new_texts = ["changed text for a, long enough to be cached"] + DOCS[2:]
    with pytest.raises(OSError, match="No space left on device"):
        rag.add_documents(new_texts, ids=["a", "c", "d", "e", "f"])
    assert rag.doc_ids == before_ids and sorted(rag.store.keys()) == before_keys
    assert rag.get_text("a") == DOCS[0]
    torch.testing.assert_close(rag.get_embeddings(before_ids), before_embeddings)
    assert rag.store.get("a").input_ids.tolist() == rag.model.tokenize_for_embedding([DOCS[0]]).token_ids[0]
    monkeypatch.setattr(disk_module, "save_file", real_save)
    assert rag.add_documents(new_texts, ids=["a", "c", "d", "e", "f"]) and len(rag.store.keys()) == 6


@pytest.fixture(scope="module")
def rag(model):
    rag = GritRAG(model, cache_attention="causal")
    rag.add_documents(DOCS[:3], ids=["paris", "berlin", "photo"])
    return rag


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda rag: rag.answer("q", temperature=float("nan")), ValueError, "`temperature`"),
        (lambda rag: rag.answer("q", temperature=-1), ValueError, "`temperature`"),
        (lambda rag: rag.answer("q", top_p=float("nan")), ValueError, "`top_p`"),
        (lambda rag: rag.answer("q", temperature=1.0, seed=2**64), ValueError, "`seed`"),
        (lambda rag: rag.answer("q", temperature=1.0, seed="s"), TypeError, "`seed`"),
        (lambda rag: rag.answer("q", max_new_tokens=True), ValueError, "`max_new_tokens`"),
        (lambda rag: rag.answer(LONE_SURROGATE), ValueError, "`query` contains a lone surrogate"),
        (lambda rag: rag.answer("q", doc_ids="pb"), TypeError, "`doc_ids` must be a list of str"),
        (lambda rag: rag.answer("q", doc_ids=["nope"]), ValueError, "Unknown document id"),
        (lambda rag: rag.generate(""), ValueError, "`prompt` is empty"),
        (lambda rag: rag.generate(LONE_SURROGATE), ValueError, "`prompt` contains a lone surrogate"),
        (lambda rag: rag.generate([{"role": "user"}]), ValueError, "has no 'content'"),
        (lambda rag: rag.add_documents([LONE_SURROGATE]), ValueError, r"`texts\[0\]` contains a lone surrogate"),
        (lambda rag: rag.add_documents(["x"], ids="ab"), TypeError, "`ids` must be a list of str"),
        (lambda rag: rag.add_documents(["x", "y"], ids=["a"]), ValueError, "one id per text"),
        (lambda rag: rag.search("q", top_k=0), ValueError, "`top_k`"),
        (lambda rag: rag.embed([3]), TypeError, r"`texts\[0\]` must be a str"),
        (lambda rag: rag.model.encode(LONE_SURROGATE), ValueError, "`sentences` contains a lone surrogate"),
        (lambda rag: chat(rag.model, None), TypeError, "`messages` must be a str or a non-empty list"),
        (lambda rag: chat(rag.model, [{"role": "user"}]), ValueError, r"`messages\[0\]` has no 'content'"),
        (lambda rag: chat(rag.model, [{"role": "user", "content": 5}]), TypeError, r"messages\[0\]\['content'\]"),
        (lambda rag: chat(rag.model, "hi", max_new_tokens=0), ValueError, "`max_new_tokens`"),
    ],
)
def test_bad_input_is_a_clear_error(rag, call, error, name):
    with pytest.raises(error, match=name):
        call(rag)


def test_text_past_the_position_limit(rag, caplog):
    """Embedding truncates to the position limit with a warning; generation refuses with the numbers."""
    limit = rag.model.max_positions
    long_text = "word " * (limit + 100)
    with caplog.at_level("WARNING", logger="grit_hf.formatting"):
        vector = rag.model.encode(long_text, max_length=limit * 2)
    assert np.isfinite(vector).all() and any("truncated" in r.message for r in caplog.records)
    with pytest.raises(ValueError, match=f"at most {limit} positions"):
        rag.generate(long_text, max_new_tokens=4)
    with pytest.raises(ValueError, match=f"at most {limit} positions"):
        rag.generate("short", max_new_tokens=limit + 1)


def test_integrations_refuse_bad_input_clearly(grit_checkpoint):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_gritlm import ChatGritLM, GritLMEmbeddings
    from llama_index.embeddings.gritlm import GritLMEmbedding
    from llama_index.llms.gritlm import GritLM

    path = str(grit_checkpoint("llama"))
    with pytest.raises(ValueError, match="`temperature`"):
        ChatGritLM(model=path).invoke("hi", temperature=float("nan"))
    with pytest.raises(ValueError, match="`temperature`"):
        GritLM(model=path).complete("hi", temperature=float("nan"))
    with pytest.raises(ValueError, match="`prompt` is empty"):
        GritLM(model=path).complete("", formatted=True)
    with pytest.raises(ValueError, match="lone surrogate"):
        GritLMEmbeddings(model=path).embed_documents([LONE_SURROGATE])
    with pytest.raises(ValueError, match="lone surrogate"):
        GritLMEmbeddings(model=path).embed_query(LONE_SURROGATE)
    with pytest.raises(ValueError, match="lone surrogate"):
        GritLMEmbedding(model=path).get_text_embedding(LONE_SURROGATE)
    with pytest.raises(ValueError, match="lone surrogate"):
        ChatGritLM(model=path).invoke(LONE_SURROGATE)


def test_disk_stores_fingerprint_every_weight(model, tmp_path):
    """A change of one weight the sampled fingerprint does not look at is seen by a disk store's (full) one."""
    from grit_hf.cache import FingerprintMismatchError

    store = DiskKVStore(tmp_path / "kv")
    first = GritRAG(model, cache_attention="causal", store=store)
    first.add_documents(DOCS[:1], ids=["a"])
    changed = GritLMForCausalLM.from_pretrained(model.name_or_path).eval()
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight[5, 7] += 1.0  # not in the 4096-value sample
    sampled = GritRAG(changed, cache_attention="causal", weights_hash="sample")
    assert (
        sampled.fingerprint.weights
        == GritRAG(model, cache_attention="causal", weights_hash="sample").fingerprint.weights
    )
    second = GritRAG(changed, cache_attention="causal", store=DiskKVStore(tmp_path / "kv"))
    second.documents = first.documents
    with pytest.raises(FingerprintMismatchError, match="weights"):
        second.answer("q", mode="doc", doc_ids=["a"], max_new_tokens=2)
