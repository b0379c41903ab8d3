"""Property-based checks (hypothesis): whatever a caller passes to `encode`, `chat`, `GritRAG` and both integrations,
the outcome is a correct result or a documented error (`TypeError`/`ValueError` naming the argument), never an error
from inside torch, a tokenizer or a template. Bounded (a few dozen examples each) to keep the suite fast."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grit_hf import GritLMForCausalLM, GritRAG, chat

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# Unicode text, lone surrogates included (what a bad JSON escape produces), short enough for the tiny model.
# (hypothesis's own text strategy never draws surrogates, so they are appended to drawn text)
texts = st.one_of(
    st.text(max_size=40),
    st.builds(str.__add__, st.text(max_size=20), st.sampled_from(["\ud800", "x\udfff", "\x00{}", "{doc}"])),
)
junk = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=8), texts, st.lists(texts, max_size=3)
)
anything = st.one_of(junk, st.lists(junk, max_size=3), st.dictionaries(texts, junk, max_size=2))
bad_numbers = st.sampled_from([float("nan"), float("inf"), -1.0, -(2**70), 2**70, "1", None, True])
temperatures = st.one_of(st.floats(0.0, 2.0), st.just(0), bad_numbers)
top_ps = st.one_of(st.floats(0.01, 1.0), st.just(1), bad_numbers, st.just(0.0))
seeds = st.one_of(st.none(), st.integers(0, 2**63 - 1), st.sampled_from([-1, 2**63, 2**64, "s", 1.5]))


def _valid_text(text) -> bool:
    if not isinstance(text, str):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _outcome(call):
    """Run `call`; return the result, or the error if it is a documented one (anything else fails the test)."""
    try:
        return call()
    except (TypeError, ValueError) as error:
        assert "`" in str(error), f"the error does not name an argument: {error!r}"
        return error


@pytest.fixture(scope="module")
def model(grit_checkpoint):
    return GritLMForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()


@pytest.fixture(scope="module", autouse=True)
def _release_shared_checkpoint(grit_checkpoint):
    """The integration properties share the tiny checkpoint's process-wide instance; release it for later modules."""
    yield
    from grit_hf.rag import release_shared

    release_shared(str(grit_checkpoint("llama")))


@pytest.fixture(scope="module")
def rag(model):
    rag = GritRAG(model, cache_attention="causal", max_length=64)
    rag.add_documents(["The capital of France is Paris.", "cp copies files."], ids=["paris", "cp"])
    return rag


@SETTINGS
@given(sentences=st.one_of(anything, st.lists(texts, max_size=4)), instruction=st.one_of(texts, junk))
def test_encode(model, sentences, instruction):
    result = _outcome(lambda: model.encode(sentences, instruction=instruction, max_length=48))
    valid = _valid_text(sentences) or (isinstance(sentences, list) and all(map(_valid_text, sentences)))
    valid = valid and _valid_text(instruction)
    if valid:
        assert isinstance(result, np.ndarray) and np.isfinite(result).all(), result
        assert result.shape[-1] == model.config.text_config.hidden_size
    else:
        assert isinstance(result, (TypeError, ValueError))


@SETTINGS
@given(messages=st.one_of(anything, st.lists(st.fixed_dictionaries({"role": texts, "content": junk}), max_size=2)))
def test_chat(model, messages):
    result = _outcome(lambda: chat(model, messages, max_new_tokens=3))
    assert isinstance(result, (str, TypeError, ValueError))
    if isinstance(messages, str) and _valid_text(messages):
        assert isinstance(result, str)


@SETTINGS
@given(temperature=temperatures, top_p=top_ps, seed=seeds)
def test_sampling_options(rag, temperature, top_p, seed):
    result = _outcome(
        lambda: rag.answer("capital?", temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=2)
    )

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    valid = (
        (temperature is None or (number(temperature) and temperature >= 0))
        and number(top_p) and 0 < top_p <= 1
        and (seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63))
    )  # fmt: skip
    assert (not isinstance(result, Exception)) == valid, (temperature, top_p, seed, result)


@SETTINGS
@given(
    query=st.one_of(texts, junk), doc_ids=st.one_of(st.none(), junk, st.lists(st.sampled_from(["paris", "cp", "x"])))
)
def test_answer(rag, query, doc_ids):
    result = _outcome(lambda: rag.answer(query, mode="doc", doc_ids=doc_ids, max_new_tokens=2))
    if isinstance(result, Exception):
        return
    assert _valid_text(query) and result.completion_tokens <= 2


@SETTINGS
@given(documents=st.one_of(anything, st.lists(texts, max_size=3)), ids=st.one_of(st.none(), junk))
def test_add_documents(model, documents, ids):
    rag = GritRAG(model, cache_attention="causal", max_length=48, verify_positions=False)
    result = _outcome(lambda: rag.add_documents(documents, ids=ids))
    if isinstance(result, Exception):
        assert rag.doc_ids == []  # nothing half-indexed
    else:
        assert set(rag.doc_ids) == set(result)


@SETTINGS
@given(prompt=st.one_of(texts, anything))
def test_generate(rag, prompt):
    result = _outcome(lambda: rag.generate(prompt, max_new_tokens=2))
    assert isinstance(result, Exception) or result.completion_tokens <= 2


@SETTINGS
@given(texts_=st.one_of(anything, st.lists(texts, max_size=3)), query=st.one_of(texts, junk))
def test_langchain_embeddings(grit_checkpoint, texts_, query):
    pytest.importorskip("langchain_core")
    from langchain_gritlm import GritLMEmbeddings

    embeddings = GritLMEmbeddings(model=str(grit_checkpoint("llama")))
    documents = _outcome(lambda: embeddings.embed_documents(texts_))
    assert isinstance(documents, (list, TypeError, ValueError))
    vector = _outcome(lambda: embeddings.embed_query(query))
    assert isinstance(vector, list) == _valid_text(query)


@SETTINGS
@given(prompt=st.one_of(texts, junk), temperature=temperatures)
def test_llamaindex_llm(grit_checkpoint, prompt, temperature):
    pytest.importorskip("llama_index.core")
    from llama_index.llms.gritlm import GritLM

    llm = GritLM(model=str(grit_checkpoint("llama")), max_new_tokens=2)
    result = _outcome(lambda: llm.complete(prompt, temperature=temperature))
    assert isinstance(result, Exception) or isinstance(result.text, str)
