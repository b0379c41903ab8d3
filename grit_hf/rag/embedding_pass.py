"""The embedding pass of GRIT RAG: one forward pass over a text gives both its embedding (for retrieval) and its
key/value states (for generation), where the two attentions and the lengths agree; otherwise a second pass gives the
states.

The embedding is of the text truncated to `max_length` (a retrieval choice); the states cover the text up to
`cache_max_length` (by default the model's positions), so that a long document embedded truncated keeps its cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache.states import KVStates

__all__ = ["EmbeddingPass"]


@dataclass(frozen=True)
class EmbeddingPass:
    """How `GritRAG` embeds texts and computes their states.

    Attributes:
        model: the `GritLMForCausalLM`.
        causal_cache: whether the cached states are causal (else bidirectional, as the embedding pass runs).
        max_length: most tokens embedded per text, template included.
        cache_max_length: most tokens per text whose states are computed.
        batch_size: texts per forward pass.
    """

    model: object
    causal_cache: bool
    max_length: int
    cache_max_length: int
    batch_size: int

    def run(
        self, texts: list[str], instruction: str, states: bool, embeddings: bool = True, progress: bool | None = False
    ) -> tuple[torch.Tensor | None, list[KVStates | list[int]] | None]:
        """`(embeddings, parts)` of `texts` with `instruction` (`""`: as documents): embeddings `(n, dim)` in the
        model's embedding attention (`None` with `embeddings=False`, which skips a pass that would only give them),
        and what stands for each text in a prompt: with `states`, its `KVStates` in the cache attention, or the token
        ids of its whole embedding input where states would not cover it (longer than `cache_max_length`); without,
        the token ids of its whole embedding input."""
        model, kwargs = self.model, dict(batch_size=self.batch_size, show_progress_bar=progress)
        inputs = model.tokenize_for_embedding(texts, instruction, self.max_length, warn=embeddings)
        if not states:
            vectors = model.embed_inputs(inputs, **kwargs)[0] if embeddings else None
            whole = [self.input_ids(text, instruction) if cut else ids
                     for text, ids, cut in zip(texts, inputs.token_ids, inputs.truncated)]  # fmt: skip
            return vectors, whole
        one_pass = self.causal_cache == model.config.is_causal_embedding
        vectors, parts = None, None
        if embeddings or one_pass:
            vectors, parts = model.embed_inputs(inputs, return_states=one_pass, **kwargs)
        parts = parts or [None] * len(texts)
        redo = [i for i, cut in enumerate(inputs.truncated) if cut or not one_pass]
        if redo:  # the states of the whole text: its embedding input was truncated, or the attentions differ
            full = model.tokenize_for_embedding([texts[i] for i in redo], instruction, self.cache_max_length)
            _, redone = model.embed_inputs(full, return_states=True, is_causal=self.causal_cache, **kwargs)
            for i, text_states, cut in zip(redo, redone, full.truncated):
                parts[i] = self.input_ids(texts[i], instruction) if cut else text_states
        return vectors, parts

    def input_ids(self, text: str, instruction: str) -> list[int]:
        """The token ids of the embedding input of `text` (template with `instruction`, special tokens), in full."""
        prefix = self.model.config.format_query_prefix(instruction)
        return self.model.tokenizer(prefix + text, add_special_tokens=True)["input_ids"]
