"""Pooling of final hidden states over the text tokens of each sequence (prefix and padding excluded)."""

from __future__ import annotations

import torch

__all__ = ["pool", "text_token_mask"]


def text_token_mask(attention_mask: torch.Tensor, prefix_lengths: torch.Tensor | int) -> torch.Tensor:
    """The attention mask with each row's first `prefix_lengths` positions (BOS, format, instruction) set to 0.

    Sequences must be right-padded. The prefix tokens still influence the result through attention; they are only
    left out of the pooling.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    prefix_lengths = torch.as_tensor(prefix_lengths, device=attention_mask.device).reshape(-1, 1)
    return attention_mask * (positions.unsqueeze(0) >= prefix_lengths).to(attention_mask.dtype)


def pool(hidden_states: torch.Tensor, pooling_mask: torch.Tensor, method: str = "mean") -> torch.Tensor:
    """Pool `hidden_states` `[batch, seq, dim]` over the positions where `pooling_mask` `[batch, seq]` is 1, in fp32.

    - `mean`: the mean of the selected positions.
    - `weightedmean`: the mean weighted by the rank of each selected position (1, 2, 3, ...), as in SGPT/GritLM.
    - `lasttoken`: the last selected position.

    A row with no selected position (the empty text) pools to the zero vector, as in sentence-transformers.
    """
    hidden_states = hidden_states.float()
    mask = pooling_mask.to(hidden_states.device, torch.float32)
    if method == "lasttoken":
        seq_len = mask.shape[1]
        last = seq_len - 1 - torch.argmax(mask.flip(dims=(1,)), dim=1)
        pooled = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
        return pooled * (mask.sum(dim=1, keepdim=True) > 0)
    if method == "weightedmean":
        mask = mask * mask.cumsum(dim=1)
    elif method != "mean":
        raise ValueError(
            f"Invalid pooling method: {method!r}. Valid pooling methods are: mean, weightedmean, lasttoken."
        )
    summed = torch.einsum("bsd,bs->bd", hidden_states, mask)
    return summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
