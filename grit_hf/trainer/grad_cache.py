"""The representation loss of GRIT training: embed, InfoNCE, optionally GradCache-style in chunks.

With `chunk_size`, the embedding batch is split as in GradCache (Gao et al., 2021) and the GRIT paper: every chunk is
embedded without a graph, the loss is computed on the cached embeddings (so every chunk still sees all in-batch
negatives), and each chunk is then re-embedded with a graph and back-propagated with its cached gradient, the last one
by the caller. Memory then grows with the chunk, not with the batch, and the gradient equals the unchunked one (RNG
states are replayed so dropout masks match).
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

__all__ = ["representation_backward", "representation_loss"]

EmbedFn = Callable[["EmbeddingFeatures"], torch.Tensor]


def _plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


def representation_loss(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """`loss_scale` times the InfoNCE loss of `queries` against `passages`, ready for one last backward pass.

    Without `chunk_size`, the result is one graph over the whole batch. With it (GradCache), every chunk but the last
    is re-embedded and back-propagated here, each under `no_sync`; the result carries the last chunk's graph only.
    Its backward completes the gradient of `loss_scale * L_rep`, and its value is `loss_scale * L_rep`.

    Args:
        embed: maps a feature batch to `(n, dim)` embeddings (the model's bidirectional, prefix-excluded pooling).
        queries, passages: tokenized batches (`EmbeddingFeatures`); `targets[i]` is the index of query `i`'s positive
            among this process's passages.
        temperature: InfoNCE temperature.
        loss_scale: factor of the loss in the backward pass (lambda_rep, divided by the gradient accumulation steps).
        chunk_size: GradCache chunk size (texts per forward pass); `None` embeds everything in one graph.
        cross_device: gather the passages of every process (autograd-aware) so they all serve as negatives.
        no_sync: context manager factory that suspends gradient synchronisation (DDP), used for the backward passes
            of the chunks before the last.
        backward: the function that back-propagates a model loss (e.g. `accelerator.backward`), used for the chunks
            before the last.

    Returns:
        `(scaled, rep_loss)`: `loss_scale * L_rep` with the graph still to back-propagate, and the unscaled InfoNCE
        loss, detached.
    """
    if cross_device:
        offset = _rank() * len(passages)
        targets = targets + offset
    if chunk_size is None:
        query_embeddings = embed(queries)
        passage_embeddings = embed(passages)
        all_passages = _gather(passage_embeddings) if cross_device else passage_embeddings
        loss = info_nce_loss(query_embeddings, all_passages, targets, temperature)
        return loss * loss_scale, loss.detach()

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

    def surrogate(chunk, state, leaf) -> torch.Tensor:
        """Re-embed `chunk` with a graph (same dropout): its gradient is the chunk's share of the loss's."""
        with state:
            embeddings = embed(chunk)
        return torch.dot(embeddings.flatten(), leaf.grad.flatten())

    *earlier, last = zip(chunks, states, cached)
    for chunk_state_leaf in earlier:
        with no_sync():  # the forward too: DDP prepares its reducer in the forward pass
            backward(surrogate(*chunk_state_leaf))
    last_part = surrogate(*last)
    # The value of `loss * loss_scale` with the gradient of the last chunk's surrogate (`x - x.detach()` is 0).
    return (loss * loss_scale).detach() + (last_part - last_part.detach()), loss.detach()


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
    """`representation_loss`, then its last backward pass (outside `no_sync`), with `extra_loss()` added to it.

    `extra_loss` (e.g. a generative loss) is called after the representation graphs are built, so that a single
    synchronised backward reaches every parameter. The other arguments are those of `representation_loss`.

    Returns:
        `(rep_loss, extra)`: the unscaled InfoNCE loss and the extra loss, both detached.
    """
    scaled, loss = representation_loss(
        embed, queries, passages, targets, temperature, loss_scale, chunk_size, cross_device, no_sync, backward
    )
    extra = extra_loss() if extra_loss is not None else None
    backward(scaled if extra is None else scaled + extra)
    return loss, None if extra is None else extra.detach()


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
