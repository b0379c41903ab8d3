"""Batched decoding is batch-invariant in bf16: at every step, a stream's logits are those it gets decoded alone, to the
bit, whatever else is decoded with it (`grit_hf.generation.batched`; measured on the default model in
benchmarks/results/batch_invariance_cpu.md)."""

from __future__ import annotations

import queue

import pytest
import torch
from tiny import make_stock_checkpoint

from grit_hf import GritLMForCausalLM, convert_checkpoint
from grit_hf.generation.batched import DecodeBatch
from grit_hf.generation.engine import GenerationOptions, GenerationResult

STEPS = 12
PROMPTS = [
    "Count: one two three",
    "The capital of France is Paris, a city on the Seine with many bridges and museums.",
    "Hi",
    "Berlin is the capital of Germany. " * 5,
    "ls lists the contents of a directory; cp copies files.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small bf16 model whose MLP sums over 2048 inputs, where oneDNN's bf16 matmul rounds a one-row call
    differently from a call of two or more rows (on the CPU: the kernels are chosen by the row count), into 256
    outputs per row (enough for a difference to show in a few steps)."""
    stock = make_stock_checkpoint(
        tmp_path_factory.mktemp("stock-wide"), "llama", hidden_size=256, intermediate_size=2048
    )
    folder = convert_checkpoint(stock, tmp_path_factory.mktemp("grit-wide"))
    return GritLMForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()


def _decode(model, prompts: list[str], together: bool) -> list[list[torch.Tensor]]:
    """Each prompt's logits at every step of `STEPS` greedy steps, the prompts decoded in one `DecodeBatch` (all
    submitted at once) or each in a batch of its own."""
    seen: dict[float, list[torch.Tensor]] = {}

    def pick(logits, temperature, top_p, sampler) -> int:  # top_p tells the streams apart (greedy: unused)
        seen.setdefault(top_p, []).append(logits.clone())
        return int(logits.argmax())

    submitted = []
    batch = DecodeBatch(model, set(), pick)
    for index, prompt in enumerate(prompts):
        if not together:
            batch = DecodeBatch(model, set(), pick)
        ids = model.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.causal_lm_forward(input_ids=ids, use_cache=True, logits_to_keep=1)
        options = GenerationOptions(max_new_tokens=STEPS, temperature=0.0, top_p=1 - index / 100, ignore_eos=True)
        tokens = batch.submit(out.cache, out.logits[0, -1], ids.shape[1], options, GenerationResult())
        if together:
            submitted.append(tokens)
        else:
            assert len(list(tokens)) == STEPS
    for tokens in submitted:
        assert len(list(tokens)) == STEPS
    return [seen[1 - index / 100] for index in range(len(prompts))]


def test_a_streams_logits_do_not_depend_on_the_batch(model):
    alone = _decode(model, PROMPTS, together=False)
    together = _decode(model, PROMPTS, together=True)
    for index, (mine, batched) in enumerate(zip(alone, together)):
        for step, (a, b) in enumerate(zip(mine, batched, strict=True)):
            assert torch.equal(a, b), (index, step, float((a.float() - b.float()).abs().max()))


def test_a_stream_decodes_alike_as_the_batch_grows_and_shrinks(model):
    """Streams of different lengths join one after another and leave at different steps: the logits of each are
    still its own (the batch's padding, row count and a lone stream's shadow row change nothing)."""
    alone = _decode(model, PROMPTS[:3], together=False)
    seen: dict[float, list[torch.Tensor]] = {}

    def pick(logits, temperature, top_p, sampler) -> int:
        seen.setdefault(top_p, []).append(logits.clone())
        return int(logits.argmax())

    batch = DecodeBatch(model, set(), pick)
    streams = queue.SimpleQueue()
    for index, prompt in enumerate(PROMPTS[:3]):
        ids = model.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.causal_lm_forward(input_ids=ids, use_cache=True, logits_to_keep=1)
        steps = STEPS - 3 * index  # the later ones leave first
        options = GenerationOptions(max_new_tokens=steps, temperature=0.0, top_p=1 - index / 100, ignore_eos=True)
        tokens = batch.submit(out.cache, out.logits[0, -1], ids.shape[1], options, GenerationResult())
        next(tokens)  # this one is decoding before the next joins
        streams.put(tokens)
    while not streams.empty():
        list(streams.get())
    for index in range(3):
        steps = STEPS - 3 * index
        for step, (a, b) in enumerate(zip(alone[index][:steps], seen[1 - index / 100], strict=True)):
            assert torch.equal(a, b), (index, step)
