"""Length-sorted batching used by `encode` for throughput: little padding, every text once, same embeddings."""

from __future__ import annotations

import random

import numpy as np
import pytest

from grit_hf import GritLMForCausalLM
from grit_hf.formatting import length_sorted_batches


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_batches_cover_every_text_once_longest_first(batch_size):
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(200)]
    batches = length_sorted_batches(lengths, batch_size)
    assert sorted(i for batch in batches for i in batch) == list(range(200))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat, reverse=True)
    for batch in batches:  # a batch pads by at most 10% of its longest text, or 16 tokens
        longest = lengths[batch[0]]
        assert all(longest - lengths[i] <= max(0.1 * longest, 16) for i in batch)


def test_padding_is_small_and_short_texts_share_batches():
    rng = random.Random(1)
    lengths = [rng.randint(40, 256) for _ in range(128)]
    batches = length_sorted_batches(lengths, 32)
    padded = sum(lengths[batch[0]] * len(batch) for batch in batches)
    assert padded / sum(lengths) < 1.08
    assert len(length_sorted_batches([8, 9, 10, 12, 20, 23] * 5, 32)) == 1  # gaps under 16 tokens: one batch
    assert length_sorted_batches([], 32) == []
    assert length_sorted_batches([3, 3, 3], 2) == [[0, 1], [2]]  # stable


def test_encode_is_independent_of_batching(grit_checkpoint):
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("qwen2"))
    texts = ["short", "a somewhat longer text " * 3, "x", "the longest text of them all, " * 6, "mid length text here"]
    single = np.stack([model.encode(text) for text in texts])
    for batch_size in (1, 2, 32):
        assert np.abs(model.encode(texts, batch_size=batch_size) - single).max() <= 1e-5
