"""Streams: closing one part-way frees the model and its decode cache; streams of several threads progress together
and give the sequential answers; the embeddings and query states `GritRAG` exposes are `encode`'s."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from grit_hf import GritLMForCausalLM, GritRAG

DOCS = ["The capital of France is Paris. Paris is a city on the Seine.", "Berlin is the capital of Germany."]
QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def rag(grit_checkpoint):
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()
    rag = GritRAG(model, cache_attention="causal", decode_cache="static")
    rag.add_documents(DOCS, ids=["paris", "berlin"])
    return rag


def _lock_is_free(rag) -> bool:
    """Whether another thread can take the model's lock right now."""
    taken = []

    def probe():
        taken.append(rag.lock.acquire(blocking=False))
        if taken[-1]:
            rag.lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return taken[0]


def test_closing_a_stream_part_way_frees_the_lock_and_the_cache(rag):
    stream = rag.answer(QUERY, mode="doc", stream=True, max_new_tokens=20, ignore_eos=True)
    next(stream)
    assert _lock_is_free(rag)  # the lock is held per forward pass only, never between tokens
    pooled = sum(len(caches) for caches in rag.generator._static_pool.values())
    stream.close()
    assert sum(len(caches) for caches in rag.generator._static_pool.values()) == pooled + 1  # returned to the pool
    assert stream.result.completion_tokens < 20
    with pytest.raises(StopIteration):
        next(stream)
    again = rag.answer(QUERY, mode="doc", max_new_tokens=20, ignore_eos=True)
    assert again.completion_tokens == 20


def test_a_stream_used_as_a_context_manager_is_closed(rag):
    pooled = sum(len(caches) for caches in rag.generator._static_pool.values())
    with rag.generate("Tell me about Paris.", stream=True, max_new_tokens=10, ignore_eos=True) as stream:
        next(stream)
    assert sum(len(caches) for caches in rag.generator._static_pool.values()) >= pooled


def test_streams_of_several_threads_interleave_and_equal_the_sequential_answers(rag):
    jobs = [("doc", "paris"), ("rag_doc_query", "berlin"), ("doc", "berlin")]
    expected = [rag.answer(QUERY, mode=m, doc_ids=[d], max_new_tokens=12, ignore_eos=True).token_ids for m, d in jobs]
    events: list[int] = []
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(index: int) -> None:
        mode, doc_id = jobs[index]
        stream = rag.answer(QUERY, mode=mode, doc_ids=[doc_id], stream=True, max_new_tokens=12, ignore_eos=True)
        start.wait()
        for _ in stream:
            events.append(index)
        results[index] = stream.result.token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected
    # progress together: no stream produced all its pieces before another produced its first
    firsts = {index: events.index(index) for index in range(len(jobs))}
    lasts = {index: len(events) - 1 - events[::-1].index(index) for index in range(len(jobs))}
    assert all(firsts[other] < lasts[index] for index in firsts for other in firsts if other != index)


def test_get_embeddings_and_query_states_are_encodes(rag):
    stored = rag.get_embeddings(["berlin", "paris"])
    np.testing.assert_allclose(stored.numpy(), rag.model.encode([DOCS[1], DOCS[0]]), atol=1e-6)
    states = rag.query_states(QUERY)
    _, (expected,) = rag.model.encode(
        [QUERY],
        instruction=rag.query_instruction,
        return_states=True,
        is_causal=True,
        max_length=rag.embedding_pass.max_length,
    )
    assert torch.equal(states.input_ids, expected.input_ids) and states.is_causal
    for (keys, values), (keys_ref, values_ref) in zip(states.layers(), expected.layers()):
        torch.testing.assert_close(keys, keys_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(values, values_ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown document id"):
        rag.get_embeddings(["nope"])
