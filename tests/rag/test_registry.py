"""The shared-instance registry (`grit_hf.rag.registry`): one model, one `GritRAG` and one key/value store per
checkpoint or model object, created once under concurrency; and the helpers the integrations use."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import PARITY

import grit_hf.folders.resolve
import grit_hf.rag.registry
from grit_hf import GritLMForCausalLM
from grit_hf.folders.default_model import DEFAULT_MODEL_NAME
from grit_hf.rag import (
    MIN_CACHED_CHARS,
    GritRAG,
    check_model_argument,
    clear_shared,
    document_id,
    get_shared,
    list_shared,
    model_display_name,
    release_shared,
)
from grit_hf.rag.integration import aiter_in_thread, embed_documents

DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Berlin is the capital of Germany; it has many museums and parks.",
]


@pytest.fixture
def path(tmp_path, stock_checkpoint):
    """A symlink to the session's tiny stock checkpoint (released after the test; one thread, as tiny models are
    faster that way on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    link = tmp_path / "tiny"
    link.symlink_to(stock_checkpoint("llama"), target_is_directory=True)
    yield str(link)
    release_shared(str(link))
    torch.set_num_threads(threads)


def test_same_path_same_instance(path):
    shared = get_shared(path)
    assert isinstance(shared, GritRAG)
    assert get_shared(path) is shared
    assert get_shared(path + os.sep) is shared
    assert get_shared(os.path.realpath(path)) is shared  # the symlink's target is the same folder
    assert get_shared(shared.model) is shared
    assert not shared.model.training
    assert model_display_name(shared.model) == "tiny" and model_display_name(path) == "tiny"


def test_model_object_instance(path):
    model = GritLMForCausalLM.from_pretrained(path)
    shared = get_shared(model)
    assert shared.model is model
    assert get_shared(model) is shared and get_shared(path) is not shared
    assert shared in list_shared()
    assert release_shared(model) and not release_shared(model)
    assert get_shared(model) is not shared  # rebuilt after release


def test_default_resolves_to_the_default_folder(path, monkeypatch):
    monkeypatch.setattr(grit_hf.folders.resolve, "default_model_path", lambda: Path(path))
    assert get_shared("default") is get_shared(path)
    assert model_display_name("default") == DEFAULT_MODEL_NAME


def test_concurrent_creation_loads_once(path, monkeypatch):
    loads = []
    original = GritLMForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(threading.get_ident())
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(GritLMForCausalLM, "from_pretrained", classmethod(counting))
    barrier = threading.Barrier(6)

    def get(_):
        barrier.wait()
        return get_shared(path)

    with ThreadPoolExecutor(max_workers=6) as pool:
        instances = list(pool.map(get, range(6)))
    assert len(loads) == 1
    assert all(instance is instances[0] for instance in instances)


def test_settings_conflicts_and_bad_arguments(path):
    shared = get_shared(path, rag_kwargs={"cache_attention": "causal"})
    assert shared.cache_attention == "causal"
    assert get_shared(path, rag_kwargs={"cache_attention": "causal", "batch_size": None}) is shared
    with pytest.raises(ValueError, match="cache_attention"):
        get_shared(path, rag_kwargs={"cache_attention": "bidirectional"})
    with pytest.raises(ValueError, match="dtype"):
        get_shared(path, load_kwargs={"dtype": torch.bfloat16})
    with pytest.raises(ValueError, match="`load_kwargs`"):
        get_shared(shared.model, load_kwargs={"dtype": torch.float32})
    with pytest.raises(TypeError, match="`model`"):
        get_shared(42)
    with pytest.raises(ValueError, match="`model`"):
        check_model_argument("  ")
    with pytest.raises(TypeError, match="`rag_kwargs`"):
        get_shared(path, rag_kwargs=["causal"])


def test_clear_shared(path, monkeypatch):
    monkeypatch.setattr(grit_hf.rag.registry, "_registry", {})  # clear only this test's instances
    shared = get_shared(path)
    clear_shared()
    assert shared not in list_shared()
    assert get_shared(path) is not shared


def test_embed_documents_indexes_once_and_generation_reuses(path):
    shared = get_shared(path)
    vectors = embed_documents(shared, DOCS + ["short"])
    assert vectors.shape == (3, 64) and vectors.dtype == np.float32
    assert shared.doc_ids == [document_id(text) for text in DOCS + ["short"]]
    np.testing.assert_allclose(embed_documents(shared, DOCS[1:]), vectors[1:2], rtol=0, atol=0)
    assert embed_documents(shared, []).shape == (0, 64)
    np.testing.assert_allclose(embed_documents(shared, DOCS, cache=False), vectors[:2], atol=1e-6)

    prompt = shared.render_chat([{"role": "user", "content": f"{DOCS[1]}\n\nWhere are the parks? short"}])
    assert shared.plan_prompt(prompt).doc_ids == [document_id(DOCS[1])]
    assert len("short") < MIN_CACHED_CHARS  # too short to splice, although it appears in the prompt

    result = shared.generate(prompt, max_new_tokens=6)
    assert result.cache_read_tokens > 0 and result.doc_ids == [document_id(DOCS[1])]
    assert result.prompt_tokens > result.cache_read_tokens and result.completion_tokens <= 6
    stream = shared.generate(prompt, stream=True, max_new_tokens=6)
    assert stream.result.cache_read_tokens == result.cache_read_tokens  # known before the first token
    assert "".join(stream) == result.text and stream.result.completion_tokens == result.completion_tokens
    plain = shared.generate(prompt, max_new_tokens=6, reuse_cache=False)
    assert plain.cache_read_tokens == 0 and plain.doc_ids == []
    template = len(shared.tokenizer(shared.model.config.document_template, add_special_tokens=False)["input_ids"])
    assert result.prompt_tokens == plain.prompt_tokens + template  # the spliced states stand for template + text


def test_documents_longer_than_max_length_are_embedded_truncated_and_cached_in_full(path):
    """Truncating a document's embedding is a retrieval choice: its states still cover all of it."""
    shared = get_shared(path, rag_kwargs={"max_length": 12, "cache_attention": "causal"})
    vectors = embed_documents(shared, ["Paris.", DOCS[0]])
    np.testing.assert_allclose(vectors[1], shared.model.encode(DOCS[0], max_length=12), atol=1e-5)
    full = len(shared.embedding_pass.input_ids(DOCS[0], ""))
    assert full > 12 and shared.store.get(document_id(DOCS[0])).num_tokens == full
    kwargs = dict(doc_ids=[document_id(DOCS[0])], max_new_tokens=4, ignore_eos=True)
    cached, plain = shared.answer("Q?", mode="doc", **kwargs), shared.answer("Q?", mode="rag_doc_query", **kwargs)
    assert cached.cache_read_tokens == full and cached.token_ids == plain.token_ids  # causal, one document: exact


def test_documents_longer_than_cache_max_length_are_indexed_but_not_cached(path):
    shared = get_shared(path, rag_kwargs={"max_length": 12, "cache_max_length": 12, "cache_attention": "causal"})
    vectors = embed_documents(shared, ["Paris.", DOCS[0]])
    assert shared.doc_ids == [document_id("Paris."), document_id(DOCS[0])]
    assert document_id(DOCS[0]) not in shared.store  # truncated states cannot stand for the whole text
    np.testing.assert_allclose(vectors[1], shared.model.encode(DOCS[0], max_length=12), atol=1e-5)
    prompt = f"{DOCS[0]}\nQ?"
    cached = shared.generate(prompt, max_new_tokens=4, ignore_eos=True)
    plain = shared.generate(prompt, max_new_tokens=4, ignore_eos=True, reuse_cache=False)
    assert cached.doc_ids == [] and cached.cache_read_tokens == 0  # left in the prompt as text
    assert cached.token_ids == plain.token_ids
    in_doc_mode = shared.answer("Q?", mode="doc", doc_ids=[document_id(DOCS[0])], max_new_tokens=4, ignore_eos=True)
    plain_rag = shared.answer(
        "Q?", mode="rag_doc_query", doc_ids=[document_id(DOCS[0])], max_new_tokens=4, ignore_eos=True
    )
    assert in_doc_mode.cache_read_tokens == 0 and in_doc_mode.token_ids == plain_rag.token_ids


def test_embed_queries(path, stock_checkpoint):
    """`GritRAG.embed` gives the reference package's embeddings (`gritlm`, bidirectional 'bbcc'), with the default
    query instruction and with another, in the checkpoint's own templates."""
    gritlm = pytest.importorskip("gritlm")
    reference = gritlm.GritLM(str(stock_checkpoint("llama")), attn="bbcc", device="cpu")
    shared = get_shared(path, load_kwargs={"dtype": "float32"})
    config = shared.model.config
    for instruction in (None, "Find facts"):
        ours = shared.embed(["capital", "Paris is in France."], instruction=instruction).numpy()
        prefix = config.format_query_prefix(config.default_query_instruction if instruction is None else instruction)
        expected = reference.encode(["capital", "Paris is in France."], instruction=prefix)
        np.testing.assert_allclose(ours, expected, atol=PARITY, rtol=0)
    documents = shared.embed(["capital"], instruction="").numpy()
    np.testing.assert_allclose(
        documents, reference.encode(["capital"], instruction=config.document_template), atol=PARITY
    )


def test_aiter_in_thread():
    def numbers():
        yield threading.get_ident()
        yield threading.get_ident()

    async def collect(factory):
        return [item async for item in aiter_in_thread(factory)]

    first, second = asyncio.run(collect(numbers))
    assert first == second != threading.get_ident()  # one worker thread, not the event loop's

    def failing():
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(collect(failing))


def test_the_recompute_setting_is_shared_and_checked(path):
    """A setting given as text is the same setting as its parsed form; another one is refused, not silently shared."""
    from grit_hf.rag import Recompute

    shared = get_shared(path, rag_kwargs={"recompute": "head:0.1", "cache_attention": "bidirectional"})
    assert shared.recompute == Recompute(0.1, "head")
    assert get_shared(path, rag_kwargs={"recompute": "head:0.1"}) is shared
    assert get_shared(path, rag_kwargs={"recompute": Recompute(0.1, "head")}) is shared
    with pytest.raises(ValueError, match="recompute"):
        get_shared(path, rag_kwargs={"recompute": "deviation:0.1"})
    result = shared.answer(
        "Where are the parks?", mode="doc", doc_ids=shared.add_documents([DOCS[1]]), max_new_tokens=2
    )
    assert result.recomputed_tokens > 0
