from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from grit_hf.pooling import pool, text_token_mask


@pytest.fixture
def hidden():
    torch.manual_seed(0)
    return torch.randn(2, 5, 3)


def test_text_token_mask_drops_prefix_and_padding():
    attention = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert text_token_mask(attention, 2).tolist() == [[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert text_token_mask(attention, torch.tensor([1, 3])).tolist() == [[0, 1, 1, 1, 0], [0, 0, 0, 1, 1]]


def test_mean_pooling_by_hand(hidden):
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    expected = torch.stack([(hidden[0, 1] + hidden[0, 2]) / 2, (hidden[1, 2] + hidden[1, 3] + hidden[1, 4]) / 3])
    assert_close(pool(hidden, mask, "mean"), expected, rtol=0, atol=1e-7)


def test_weighted_mean_pooling_by_hand(hidden):
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    expected = torch.stack(
        [(1 * hidden[0, 1] + 2 * hidden[0, 2]) / 3, (hidden[1, 2] + 2 * hidden[1, 3] + 3 * hidden[1, 4]) / 6]
    )
    assert_close(pool(hidden, mask, "weightedmean"), expected, rtol=0, atol=1e-6)


def test_last_token_pooling_by_hand(hidden):
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    assert_close(pool(hidden, mask, "lasttoken"), torch.stack([hidden[0, 2], hidden[1, 4]]), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["mean", "weightedmean", "lasttoken"])
def test_row_without_text_tokens_pools_to_zero(hidden, method):
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    out = pool(hidden, mask, method)
    assert torch.equal(out[0], torch.zeros(3))
    assert torch.isfinite(out).all()


def test_pooling_is_fp32_for_bf16_input(hidden):
    out = pool(hidden.bfloat16(), torch.ones(2, 5, dtype=torch.long), "mean")
    assert out.dtype == torch.float32
    assert_close(out, hidden.bfloat16().float().mean(dim=1), rtol=0, atol=1e-6)


def test_unknown_pooling_method_is_a_value_error(hidden):
    with pytest.raises(ValueError, match="cls"):
        pool(hidden, torch.ones(2, 5), "cls")
