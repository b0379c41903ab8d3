"""The two GRIT losses: contrastive InfoNCE over embeddings (L_rep) and next-token loss aggregation (L_gen)."""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "GEN_LOSS_AGGREGATIONS",
    "info_nce_loss",
    "aggregate_generative_loss",
    "generative_loss_units",
    "sample_index_from_position_ids",
]

GenLossAggregation = Literal["token", "sample", "mixed"]
GEN_LOSS_AGGREGATIONS = ("token", "sample", "mixed")


def info_nce_loss(
    query_embeddings: torch.Tensor,
    passage_embeddings: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 0.02,
) -> torch.Tensor:
    """InfoNCE: cross-entropy of each query's cosine similarities to all passages (divided by `temperature`) against
    the index of its positive. Every other passage is a negative (in-batch and hard negatives alike).

    Args:
        query_embeddings: `(n_queries, dim)`.
        passage_embeddings: `(n_passages, dim)`, positives and hard negatives (possibly gathered across processes).
        targets: `(n_queries,)` index of each query's positive in `passage_embeddings`.
        temperature: softmax temperature; the reference uses 0.02 with normalised embeddings.

    Returns:
        The mean loss over the queries (a scalar, fp32).
    """
    if temperature <= 0:
        raise ValueError(f"`temperature` must be positive, got {temperature!r}.")
    if query_embeddings.ndim != 2 or passage_embeddings.ndim != 2:
        raise ValueError(
            "`query_embeddings` and `passage_embeddings` must be 2-D, got shapes "
            f"{tuple(query_embeddings.shape)} and {tuple(passage_embeddings.shape)}."
        )
    queries = F.normalize(query_embeddings.float(), dim=-1)
    passages = F.normalize(passage_embeddings.float(), dim=-1)
    scores = queries @ passages.T / temperature
    return F.cross_entropy(scores, targets.to(scores.device))


def sample_index_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """The index of the sample each token belongs to, for rows that pack several samples (positions restart at 0)."""
    starts = (position_ids == 0).long()
    starts[:, 0] = 1
    index = starts.flatten().cumsum(0).view_as(position_ids) - 1
    return index


def generative_loss_units(
    token_nll: torch.Tensor,
    loss_mask: torch.Tensor,
    aggregation: str,
    sample_index: torch.Tensor | None = None,
    sub_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce per-token losses of one micro-batch to `(summed units, number of units)`.

    The unit depends on `aggregation`: a token (`"token"`), a sample's mean token loss (`"sample"`), or a sub-batch's
    mean token loss (`"mixed"`). Dividing the sum of units over every micro-batch and process by the total number of
    units gives the loss of the whole global batch, whatever the gradient accumulation and the number of processes.

    Args:
        token_nll: `(batch, seq)` negative log-likelihood of each label (any value where `loss_mask` is 0).
        loss_mask: `(batch, seq)` 1 where the token counts (assistant/completion tokens), else 0.
        aggregation: `"token"`, `"sample"` or `"mixed"`.
        sample_index: `(batch, seq)` id of the sample each token belongs to (default: its row); for packed rows use
            `sample_index_from_position_ids`.
        sub_batch_size: for `"mixed"`, the number of samples per sub-batch (default: the whole micro-batch is one
            sub-batch, i.e. token level inside each device's micro-batch, as in the reference implementation).
    """
    if aggregation not in GEN_LOSS_AGGREGATIONS:
        raise ValueError(f"Invalid `aggregation`: {aggregation!r}. Valid choices are: {GEN_LOSS_AGGREGATIONS}.")
    if token_nll.shape != loss_mask.shape:
        raise ValueError(
            f"`token_nll` and `loss_mask` must have the same shape, got {tuple(token_nll.shape)} and "
            f"{tuple(loss_mask.shape)}."
        )
    mask = loss_mask.to(torch.float32)
    nll = torch.where(mask > 0, token_nll.float(), torch.zeros_like(mask))
    if aggregation == "token":
        return nll.sum(), mask.sum()
    if sample_index is None:
        sample_index = torch.arange(nll.shape[0], device=nll.device).unsqueeze(1).expand_as(nll)
    # Dense sample ids (0..n-1) in order of appearance, counting only samples with at least one loss token.
    flat_ids = sample_index.reshape(-1)
    flat_mask = mask.reshape(-1)
    unique_ids, dense = torch.unique(flat_ids, return_inverse=True)
    sums = torch.zeros(len(unique_ids), device=nll.device).index_add(0, dense, nll.reshape(-1))
    counts = torch.zeros(len(unique_ids), device=nll.device).index_add(0, dense, flat_mask)
    has_tokens = counts > 0
    if aggregation == "sample":
        means = sums[has_tokens] / counts[has_tokens]
        return means.sum(), has_tokens.sum().to(torch.float32)
    # mixed: token level inside each sub-batch of consecutive samples, then one unit per sub-batch
    sums, counts = sums[has_tokens], counts[has_tokens]
    order = torch.arange(len(sums), device=nll.device)
    group = (
        torch.zeros_like(order) if sub_batch_size is None else torch.div(order, sub_batch_size, rounding_mode="floor")
    )
    n_groups = int(group.max().item()) + 1 if len(group) else 0
    group_sums = torch.zeros(n_groups, device=nll.device).index_add(0, group, sums)
    group_counts = torch.zeros(n_groups, device=nll.device).index_add(0, group, counts)
    return (group_sums / group_counts).sum(), torch.tensor(float(n_groups), device=nll.device)


def aggregate_generative_loss(
    token_nll: torch.Tensor,
    loss_mask: torch.Tensor,
    aggregation: str = "mixed",
    sample_index: torch.Tensor | None = None,
    sub_batch_size: int | None = None,
) -> torch.Tensor:
    """The next-token loss of one batch under `aggregation` (see `generative_loss_units`); 0 without loss tokens.

    - `"token"`: every token has the same weight (sum of token losses / number of tokens).
    - `"sample"`: every sample has the same weight (mean over samples of their mean token loss).
    - `"mixed"`: token level inside each sub-batch, then the mean over sub-batches.
    """
    total, units = generative_loss_units(token_nll, loss_mask, aggregation, sample_index, sub_batch_size)
    return total / units.clamp(min=1)
