"""`compile=True` on the CPU: the decode step runs `torch.compile`d (dynamic shapes, the preallocated cache) and gives
the tokens of eager decoding, for one stream and for batched streams. Compiling takes a minute or more here: slow."""

from __future__ import annotations

import threading

import pytest
import torch

from grit_hf import GritLMForCausalLM, GritRAG
from grit_hf.generation import Generator

DOCS = ["The capital of France is Paris. Paris is a city on the Seine with many bridges."]
PROMPTS = ["What is the capital of France?", f"{DOCS[0]}\nWhere is Paris?", "Count: one two three"]
OPTIONS = dict(max_new_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def model(grit_checkpoint):
    return GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"), dtype=torch.float32).eval()


def test_compile_needs_the_preallocated_cache_on_the_cpu(model):
    for cache in ("dynamic", "static"):
        with pytest.raises(ValueError, match="`compile=True` needs .* `decode_cache='preallocated'` on the CPU"):
            Generator(model, decode_cache=cache, compile=True)


@pytest.mark.slow
def test_compiled_decoding_gives_the_tokens_of_eager_decoding(model):
    eager = GritRAG(model, cache_attention="causal", verify_positions=False)
    compiled = GritRAG(model, cache_attention="causal", verify_positions=False, compile=True, batch_decoding=True)
    for rag in (eager, compiled):
        rag.add_documents(DOCS)
    want = [eager.generate(prompt, **OPTIONS).token_ids for prompt in PROMPTS]
    assert [compiled.generate(prompt, **OPTIONS).token_ids for prompt in PROMPTS] == want  # one stream at a time
    got = [None] * len(PROMPTS)

    def run(index: int) -> None:
        got[index] = compiled.generate(PROMPTS[index], **OPTIONS).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert got == want  # concurrent streams: batched compiled steps
    assert compiled.generator._compiled_forward is not None
