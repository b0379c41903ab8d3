"""The representation step of GRIT training: embed, InfoNCE, backward, optionally GradCache-style in chunks.

With `chunk_size`, the embedding batch is split as in GradCache (Gao et al., 2021) and the GRIT paper: every chunk is
embedded without a graph, the loss is computed on the cached embeddings (so every chunk still sees all in-batch
negatives), and each chunk is then re-embedded with a graph and back-propagated with its cached gradient. Memory then
grows with the chunk, not with the batch, and the gradient equals the unchunked one (RNG states are replayed so dropout
masks match).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from sentence_transformers.base.losses.gradcache import RandContext
from sentence_transformers.util import all_gather_with_grad
from transformers.utils import logging

from ..validation import check_positive_int
from .losses import info_nce_loss

if TYPE_CHECKING:
    from .collators import EmbeddingFeatures

logger = logging.get_logger(__name__)

__all__ = ["representation_backward"]

EmbedFn = Callable[["EmbeddingFeatures"], torch.Tensor]


def _plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


def representation_backward(
    embed: EmbedFn,
    queries: EmbeddingFeatures,
    passages: EmbeddingFeatures,
    targets: torch.Tensor,
    temperature: float,
    loss_scale: float,
    chunk_size: int | None = None,
    cross_device: bool = False,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    backward: Callable[[torch.Tensor], None] = _plain_backward,
    extra_loss: Callable[[], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute the InfoNCE loss of `queries` against `passages` and back-propagate `loss_scale * loss`.

    Args:
        embed: maps a feature batch to `(n, dim)` embeddings (the model's bidirectional, prefix-excluded pooling).
        queries, passages: tokenized batches (`EmbeddingFeatures`); `targets[i]` is the index of query `i`'s positive
            among this process's passages.
        temperature: InfoNCE temperature.
        loss_scale: factor of the loss in the backward pass (lambda_rep, divided by the gradient accumulation steps).
        chunk_size: GradCache chunk size (texts per forward pass); `None` embeds everything in one graph.
        cross_device: gather the passages of every process (autograd-aware) so they all serve as negatives.
        no_sync: context manager factory that suspends gradient synchronisation (DDP), used for all backward passes
            but the last.
        backward: the function that back-propagates a model loss (e.g. `accelerator.backward`).
        extra_loss: called just before the final backward; its result is added to it (the generative loss, so that a
            single synchronised backward reaches every parameter).

    Returns:
        `(rep_loss, extra)`: the unscaled InfoNCE loss and the extra loss, both detached.
    """
    if cross_device:
        offset = _rank() * len(passages)
        targets = targets + offset
    if chunk_size is None:
        query_embeddings = embed(queries)
        passage_embeddings = embed(passages)
        all_passages = _gather(passage_embeddings) if cross_device else passage_embeddings
        loss = info_nce_loss(query_embeddings, all_passages, targets, temperature)
        total = loss * loss_scale
        extra = extra_loss() if extra_loss is not None else None
        backward(total if extra is None else total + extra)
        return loss.detach(), None if extra is None else extra.detach()

    check_positive_int(chunk_size, "chunk_size")
    chunks = list(queries.chunks(chunk_size)) + list(passages.chunks(chunk_size))
    n_query_chunks = len(chunks) - len(list(passages.chunks(chunk_size)))
    states, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandContext(chunk.input_ids))
            cached.append(embed(chunk).detach().requires_grad_())
    query_embeddings = torch.cat(cached[:n_query_chunks])
    passage_embeddings = torch.cat(cached[n_query_chunks:])
    all_passages = _gather(passage_embeddings) if cross_device else passage_embeddings
    loss = info_nce_loss(query_embeddings, all_passages, targets, temperature)
    # Only the cached leaves receive gradients here (no model parameter is in this graph).
    torch.autograd.backward(loss * loss_scale, inputs=cached)

    extra = None
    for index, (chunk, state, leaf) in enumerate(zip(chunks, states, cached)):
        last = index == len(chunks) - 1
        with contextlib.nullcontext() if last else no_sync():
            with state:
                embeddings = embed(chunk)
            surrogate = torch.dot(embeddings.flatten(), leaf.grad.flatten())
            if last and extra_loss is not None:
                extra = extra_loss()
                surrogate = surrogate + extra
            backward(surrogate)
    return loss.detach(), None if extra is None else extra.detach()


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Passages of every process, autograd-aware (sentence-transformers' `all_gather_with_grad`: its backward sums
    the gradients of every process, which gives exactly the single-process gradient); the local tensor alone
    without a process group."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    return all_gather_with_grad(tensor.contiguous())


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
