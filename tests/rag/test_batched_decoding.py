"""Batched decoding (`batch_decoding=True`): the decode steps of concurrent streams run as one forward pass, and every
stream gives the tokens of sequential decoding; streams join and leave between steps."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from grit_hf import GritLMForCausalLM, GritRAG
from grit_hf.generation import Generator

DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine with many bridges.",
    "Berlin is the capital of Germany. " * 6,
]
PROMPTS = [
    "What is the capital of France?",
    f"{DOCS[1]}\nWhich city is the capital of Germany?",  # a cached document spliced in: a longer cache
    "Count: one two three",
    "Hi",
    f"{DOCS[0]}\n{DOCS[1]}\nCompare them.",
]


@pytest.fixture(scope="module")
def model(grit_checkpoint):
    return GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def rags(model):
    plain = GritRAG(model, cache_attention="causal", verify_positions=False)
    batched = GritRAG(model, cache_attention="causal", verify_positions=False, batch_decoding=True)
    for rag in (plain, batched):
        rag.add_documents(DOCS)
    return plain, batched


def _in_threads(function, count: int, stagger: float = 0.0) -> list:
    results = [None] * count

    def run(index):
        time.sleep(stagger * index)
        results[index] = function(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


OPTIONS = [
    dict(max_new_tokens=12, ignore_eos=True),
    dict(max_new_tokens=7, ignore_eos=True),
    dict(max_new_tokens=16),
    dict(max_new_tokens=9, temperature=0.8, top_p=0.9, seed=3, ignore_eos=True),
    dict(max_new_tokens=10, ignore_eos=True),
]


@pytest.mark.parametrize("stagger", [0.0, 0.02])
def test_concurrent_streams_equal_sequential_decoding(rags, stagger):
    plain, batched = rags
    expected = [plain.generate(p, **o) for p, o in zip(PROMPTS, OPTIONS)]
    got = _in_threads(lambda i: batched.generate(PROMPTS[i], **OPTIONS[i]), len(PROMPTS), stagger)
    for want, have in zip(expected, got):
        assert have.token_ids == want.token_ids and have.text == want.text
        assert (have.finish_reason, have.prompt_tokens, have.cache_read_tokens) == (
            want.finish_reason, want.prompt_tokens, want.cache_read_tokens
        )  # fmt: skip
    assert any(r.cache_read_tokens for r in got)  # cached documents took part


def test_decode_steps_of_concurrent_streams_share_forward_passes(rags, model, monkeypatch):
    _, batched = rags
    sizes, rows = [], []
    real, batch = model.causal_lm_forward, batched.generator.batch
    assert not batch.invariant  # fp32: no shadow row (it would not make fp32 rows invariant)
    monkeypatch.setattr(batch, "invariant", True)  # the bf16 mechanism, on this fp32 model

    def counting(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:  # a decode step
            sizes.append(len(batch._streams))
            rows.append(ids.shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "causal_lm_forward", counting)
    start = threading.Barrier(4)

    def run(index):
        start.wait()
        return batched.generate(PROMPTS[index], max_new_tokens=20, ignore_eos=True)

    _in_threads(run, 4)
    assert sum(sizes) == 4 * 19  # every decode step of every stream, once (the first token comes from the prefill)
    assert len(sizes) < 2 * 19 and max(sizes) == 4  # mostly together
    assert rows == [max(2, size) for size in sizes]  # a lone stream decodes with its shadow row (batch invariance)


def test_a_closed_stream_leaves_and_the_others_go_on(rags):
    plain, batched = rags
    expected = plain.generate(PROMPTS[0], max_new_tokens=30, ignore_eos=True).token_ids
    long_stream = batched.generate(PROMPTS[0], stream=True, max_new_tokens=30, ignore_eos=True)
    short = batched.generate(PROMPTS[2], stream=True, max_new_tokens=30, ignore_eos=True)
    next(short)
    short.close()  # leaves at the next step
    assert "".join(long_stream) is not None and long_stream.result.token_ids == expected
    deadline = time.monotonic() + 10
    while batched.generator.batch.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batched.generator.batch.active == 0


def test_an_error_in_a_step_reaches_every_stream_and_the_batch_recovers(rags, model, monkeypatch):
    plain, batched = rags
    real = model.causal_lm_forward
    failing = {"on": True}

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if failing["on"] and ids is not None and ids.shape[1] == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "causal_lm_forward", forward)
    outcomes = _in_threads(
        lambda i: _outcome(lambda: batched.generate(PROMPTS[i], max_new_tokens=5, ignore_eos=True)), 3
    )
    assert all(isinstance(o, RuntimeError) and "boom" in str(o) for o in outcomes), outcomes
    failing["on"] = False
    again = batched.generate(PROMPTS[0], max_new_tokens=5, ignore_eos=True)
    assert again.token_ids == plain.generate(PROMPTS[0], max_new_tokens=5, ignore_eos=True).token_ids


def _outcome(function):
    try:
        return function()
    except Exception as error:  # noqa: BLE001 (the outcome is what the test checks)
        return error


def test_batch_decoding_needs_a_cache_it_can_stack(model):
    with pytest.raises(ValueError, match="batch_decoding"):
        Generator(model, decode_cache="static", batch_decoding=True)
    with pytest.raises(TypeError, match="batch_decoding"):
        Generator(model, batch_decoding="yes")
