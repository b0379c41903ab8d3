"""The embedding pass as a forward of the (possibly wrapped) model, so that DDP, FSDP, DeepSpeed and PEFT see it."""

from __future__ import annotations

import functools
import types

import torch

from ..modeling_gritlm import GritLMPreTrainedModel

__all__ = ["add_embedding_forward"]

_FORWARD_ONLY_KWARGS = (
    "labels",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "inputs_embeds",
    "use_cache",
)


def add_embedding_forward(model: GritLMPreTrainedModel) -> None:
    """Let `model(input_ids=..., attention_mask=..., prefix_lengths=..., grit_embed=True)` return pooled embeddings,
    and `model(input_ids=..., attention_mask=..., grit_states=True)` the key/value states of the embedding pass.

    The embedding pass then goes through the model's `__call__`, so DDP, FSDP, DeepSpeed and PEFT wrappers see it like
    any forward pass. It is `embedding_forward` + `pool`, the path of `encode` (bidirectional attention, fp32 pooling
    over the text tokens only). Without `grit_embed`/`grit_states` the forward is unchanged.
    """
    previous_forward = model.forward

    @functools.wraps(type(model).forward)
    def _forward(
        self, *args, grit_embed: bool = False, grit_states: bool = False, prefix_lengths: torch.Tensor | None = None,
        **kwargs,
    ):  # fmt: skip
        if not (grit_embed or grit_states):
            return previous_forward(*args, **kwargs)
        if args or (grit_embed and prefix_lengths is None):
            raise TypeError("The embedding forward takes `input_ids`, `attention_mask` and `prefix_lengths` keywords.")
        input_ids, attention_mask = kwargs.pop("input_ids"), kwargs.pop("attention_mask")
        kwargs = {k: v for k, v in kwargs.items() if k not in _FORWARD_ONLY_KWARGS and v is not None}
        outputs = self.embedding_forward(input_ids, attention_mask, use_cache=grit_states, **kwargs)
        if grit_states:
            return outputs.cache
        return self.pool(outputs.last_hidden_state, attention_mask, prefix_lengths)

    model.forward = types.MethodType(_forward, model)
