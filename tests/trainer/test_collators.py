from __future__ import annotations

import datasets
import pytest
import torch
from torch.testing import assert_close
from transformers import AutoTokenizer

from grit_hf import GritLMForCausalLM
from grit_hf.trainer import add_embedding_forward
from grit_hf.trainer.collators import EmbeddingBatchSampler, EmbeddingCollator, tokenize_pairs
from grit_hf.trainer.data import normalize_embedding_record

from .helpers import INSTRUCTION, embedding_records


def test_sampler_is_a_function_of_the_step():
    sources = ["a", "b"] * 10
    first, second = EmbeddingBatchSampler(sources, 4, seed=3), EmbeddingBatchSampler(sources, 4, seed=3)
    assert first.batches_per_epoch == 5
    assert [first.global_batch(s) for s in range(12)] == [second.global_batch(s) for s in range(12)]
    epoch = sorted(i for s in range(5) for i in first.global_batch(s))
    assert epoch == list(range(20))  # an epoch sees every example once
    assert first.global_batch(5) != first.global_batch(0)  # the next epoch is reshuffled
    assert first.local_batch(7, 0, 2) + first.local_batch(7, 1, 2) == first.global_batch(7)


def test_same_dataset_batches_hold_one_source():
    sources = ["a"] * 9 + ["b"] * 6
    sampler = EmbeddingBatchSampler(sources, 3, same_dataset=True)
    assert sampler.batches_per_epoch == 5
    for step in range(10):
        assert len({sources[i] for i in sampler.global_batch(step)}) == 1


def test_sampler_rejects_too_little_data():
    with pytest.raises(ValueError, match="fewer than one global embedding batch"):
        EmbeddingBatchSampler(["a"] * 3, 4)


@pytest.fixture(scope="module")
def tiny_model(grit_checkpoint):
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()
    add_embedding_forward(model)
    return model


def test_training_embeddings_equal_encode(tiny_model):
    """The training path (tokenize_pairs + the embedding forward) embeds exactly like `encode`."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.name_or_path)
    texts = ["Paris is the capital of France.", "ls lists a directory", "short"]
    pairs = [(INSTRUCTION, texts[0]), ("", texts[1]), (INSTRUCTION, texts[2])]
    features = tokenize_pairs(tokenizer, tiny_model.config, pairs, max_length=64)
    with torch.no_grad():
        trained = tiny_model(
            input_ids=features.input_ids, attention_mask=features.attention_mask,
            prefix_lengths=features.prefix_lengths, grit_embed=True,
        )  # fmt: skip
    assert trained.dtype == torch.float32
    expected = torch.stack(
        [
            torch.as_tensor(tiny_model.encode(texts[0], instruction=INSTRUCTION)),
            torch.as_tensor(tiny_model.encode(texts[1])),
            torch.as_tensor(tiny_model.encode(texts[2], instruction=INSTRUCTION)),
        ]
    )
    assert_close(trained, expected, rtol=1e-5, atol=1e-6)


def test_collator_layout_and_random_negatives(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.name_or_path)
    records = embedding_records(4)
    records[1]["neg"] = []  # gets random negatives (positives of other examples)
    rows = [normalize_embedding_record(r, "x", "s") for r in records]
    dataset = datasets.Dataset.from_list(rows)
    collator = EmbeddingCollator(tokenizer, tiny_model.config, num_hard_negatives=2, passage_max_length=64)
    batch = collator(dataset, [0, 1, 2], micro_step=5)
    assert len(batch["queries"]) == 3 and len(batch["passages"]) == 3 + 3 * 2
    assert batch["targets"].tolist() == [0, 1, 2]
    again = collator(dataset, [0, 1, 2], micro_step=5)
    assert torch.equal(batch["passages"].input_ids, again.get("passages").input_ids)  # deterministic per step
    positives = {r["pos"][0] for r in rows}
    decoded = tokenizer.batch_decode(batch["passages"].input_ids[5:7], skip_special_tokens=True)
    assert all(any(p in text for p in positives) for text in decoded)  # query 1's negatives
