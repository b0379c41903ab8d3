from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from grit_hf.trainer.losses import (
    aggregate_generative_loss,
    generative_loss_units,
    info_nce_loss,
    sample_index_from_position_ids,
)

# Three samples: 3, 1 and 2 loss tokens.
NLL = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [5.0, 6.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])


def test_info_nce_matches_hand_computation():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # not normalised: the loss uses cosine similarity
    passages = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss = info_nce_loss(queries, passages, torch.tensor([0, 1]), temperature=0.5)
    c = math.sqrt(0.5)
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(2 * c)))  # same for both queries
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(torch.ones(1, 2), torch.ones(1, 2), torch.tensor([0]), temperature=0.0)


def test_gather_without_process_group_is_identity():
    from grit_hf.trainer.grad_cache import _gather

    x = torch.randn(3, 2)
    assert _gather(x) is x


@pytest.mark.parametrize(
    ("aggregation", "sub_batch_size", "expected"),
    [
        ("token", None, (1 + 2 + 3 + 4 + 5 + 6) / 6),  # every token weighs the same
        ("sample", None, (2.0 + 4.0 + 5.5) / 3),  # every sample weighs the same
        ("mixed", None, 3.5),  # one sub-batch: token level
        ("mixed", 2, ((1 + 2 + 3 + 4) / 4 + 5.5) / 2),  # sub-batches {0, 1} and {2}
        ("mixed", 1, (2.0 + 4.0 + 5.5) / 3),  # one sample per sub-batch: sample level
    ],
)
def test_aggregation_matches_hand_computation(aggregation, sub_batch_size, expected):
    loss = aggregate_generative_loss(NLL, MASK, aggregation, sub_batch_size=sub_batch_size)
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("aggregation", ["token", "sample", "mixed"])
def test_packed_rows_aggregate_like_padded_rows(aggregation):
    # The three samples packed in one row: positions restart at each sample.
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    mask = torch.ones_like(nll)
    position_ids = torch.tensor([[0, 1, 2, 0, 0, 1]])
    index = sample_index_from_position_ids(position_ids)
    assert index.tolist() == [[0, 0, 0, 1, 2, 2]]
    packed = aggregate_generative_loss(nll, mask, aggregation, sample_index=index, sub_batch_size=2)
    padded = aggregate_generative_loss(NLL, MASK, aggregation, sub_batch_size=2)
    assert_close(packed, padded)


@pytest.mark.parametrize("aggregation", ["token", "sample"])
def test_units_over_micro_batches_give_the_global_loss(aggregation):
    """Summing units over micro-batches and dividing by the total units = the loss of the whole batch."""
    parts = [generative_loss_units(NLL[rows], MASK[rows], aggregation) for rows in (slice(0, 2), slice(2, 3))]
    total = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    assert_close(total, aggregate_generative_loss(NLL, MASK, aggregation))


def test_mixed_units_count_sub_batches():
    total, units = generative_loss_units(NLL, MASK, "mixed", sub_batch_size=2)
    assert units.item() == 2 and total.item() == pytest.approx(2.5 + 5.5)


def test_no_loss_tokens_gives_zero():
    assert aggregate_generative_loss(NLL, torch.zeros_like(MASK), "sample").item() == 0.0


def test_bad_aggregation_is_rejected():
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_generative_loss(NLL, MASK, "tokens")
