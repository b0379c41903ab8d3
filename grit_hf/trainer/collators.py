"""Embedding batches for GRIT training: which examples each step uses, and how they are tokenized.

The embedding stream is independent of the generative one: the examples of micro-step `s` are a pure function of
`(seed, s)`, so every process agrees on the global batch without communication, and a resumed run draws exactly the
batches an uninterrupted one would have drawn.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from ..configuration_gritlm import GritLMConfig
from ..formatting import pad_right, pad_token_id, tokenize_with_prefix
from ..validation import check_positive_int

logger = logging.get_logger(__name__)

__all__ = ["EmbeddingFeatures", "EmbeddingBatchSampler", "EmbeddingCollator", "StepIndexCollator", "tokenize_pairs"]


@dataclass
class EmbeddingFeatures:
    """A right-padded batch of `[prefix + text]` sequences and the number of prefix tokens of each row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prefix_lengths: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> EmbeddingFeatures:
        return EmbeddingFeatures(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.prefix_lengths)))

    def chunks(self, size: int) -> Iterator[EmbeddingFeatures]:
        """Consecutive row chunks of at most `size` rows, each trimmed to its own longest row."""
        for start in range(0, len(self), size):
            rows = slice(start, start + size)
            width = int(self.attention_mask[rows].sum(dim=1).max())
            yield EmbeddingFeatures(
                self.input_ids[rows, :width], self.attention_mask[rows, :width], self.prefix_lengths[rows]
            )


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    config: GritLMConfig,
    pairs: Sequence[tuple[str, str]],
    max_length: int,
) -> EmbeddingFeatures:
    """Tokenize `(instruction, text)` pairs exactly as `encode` does: the checkpoint's query template with the
    instruction (the document template when it is empty) before the text, special tokens added, truncated to
    `max_length`; the prefix tokens are excluded from pooling."""
    token_ids: list[list[int] | None] = [None] * len(pairs)
    prefix_lengths = [0] * len(pairs)
    by_instruction: dict[str, list[int]] = {}
    for index, (instruction, _) in enumerate(pairs):
        by_instruction.setdefault(instruction, []).append(index)
    for instruction, rows in by_instruction.items():
        inputs = tokenize_with_prefix(  # truncation is the point of `*_max_length` here: not warned about
            tokenizer, config.format_query_prefix(instruction), [pairs[i][1] for i in rows], max_length, warn=False
        )
        for row, row_ids in zip(rows, inputs.token_ids):
            token_ids[row] = row_ids
            prefix_lengths[row] = inputs.prefix_length
    input_ids, attention_mask = pad_right(token_ids, pad_token_id(tokenizer))
    return EmbeddingFeatures(input_ids, attention_mask, torch.tensor(prefix_lengths, dtype=torch.long))


class EmbeddingBatchSampler:
    """Global embedding batches by micro-step: an epoch is a seeded shuffle cut into `global_batch_size` batches.

    With `same_dataset=True`, every batch holds examples of a single source (its `source` column), so the in-batch
    negatives come from the same dataset; the order of the batches is shuffled across sources.
    """

    def __init__(self, sources: Sequence[str], global_batch_size: int, seed: int = 42, same_dataset: bool = False):
        check_positive_int(global_batch_size, "global_batch_size")
        self.sources = list(sources)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.same_dataset = same_dataset
        self._epoch_cache: tuple[int, list[list[int]]] | None = None
        self.batches_per_epoch = len(self._batches(0))
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The embedding dataset has {len(self.sources)} examples, fewer than one global embedding batch "
                f"({global_batch_size} = `emb_batch_size` x processes"
                + (", per source with `same_dataset_negatives`" if same_dataset else "")
                + "). Lower `emb_batch_size` or add data."
            )

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = random.Random(f"grit-embedding-{self.seed}-{epoch}")
        groups: dict[str, list[int]] = {}
        for index, source in enumerate(self.sources):
            groups.setdefault(source if self.same_dataset else "", []).append(index)
        batches = []
        for name in sorted(groups):
            indices = groups[name]
            rng.shuffle(indices)
            usable = len(indices) - len(indices) % self.global_batch_size
            if usable < len(indices) and epoch == 0 and self.same_dataset:
                logger.info(f"Source {name!r}: {len(indices) - usable} examples left out per epoch (batch remainder).")
            batches.extend(indices[i : i + self.global_batch_size] for i in range(0, usable, self.global_batch_size))
        rng.shuffle(batches)
        self._epoch_cache = (epoch, batches)
        return batches

    def global_batch(self, micro_step: int) -> list[int]:
        """The dataset indices of the global embedding batch of `micro_step` (0-based, counting every micro-step)."""
        epoch, position = divmod(micro_step, self.batches_per_epoch)
        return self._batches(epoch)[position]

    def local_batch(self, micro_step: int, rank: int, world_size: int) -> list[int]:
        """This process's slice of the global batch of `micro_step`."""
        batch = self.global_batch(micro_step)
        size = len(batch) // world_size
        return batch[rank * size : (rank + 1) * size]


class EmbeddingCollator:
    """Turn embedding examples into query and passage features plus the index of each query's positive.

    Every query gets exactly one positive and `num_hard_negatives` hard negatives (drawn from its `neg` list, with
    replacement when it is short; an example without negatives gets positives of other examples as random
    negatives), so every process holds the same number of passages, as a cross-device gather needs. Passages are laid
    out as `[positives..., negatives...]`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: GritLMConfig,
        num_hard_negatives: int = 1,
        query_max_length: int = 256,
        passage_max_length: int = 512,
        seed: int = 42,
    ):
        if num_hard_negatives < 0:
            raise ValueError(f"`num_hard_negatives` must be >= 0, got {num_hard_negatives!r}.")
        self.tokenizer = tokenizer
        self.config = config
        self.num_hard_negatives = num_hard_negatives
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.seed = seed

    def __call__(self, dataset, indices: Sequence[int], micro_step: int) -> dict:
        """Build the batch of `dataset[indices]` for `micro_step` (the step seeds the choice of passages)."""
        examples = [dataset[int(i)] for i in indices]
        positives, negatives = [], []
        for index, example in zip(indices, examples):
            rng = random.Random(f"grit-passages-{self.seed}-{micro_step}-{index}")
            choice = rng.randrange(len(example["pos"]))
            positives.append((example["pos_instructions"][choice], example["pos"][choice]))
            negatives.extend(self._negatives(dataset, example, index, rng))
        queries = [(example["query_instruction"], example["query"]) for example in examples]
        return {
            "queries": tokenize_pairs(self.tokenizer, self.config, queries, self.query_max_length),
            "passages": tokenize_pairs(self.tokenizer, self.config, positives + negatives, self.passage_max_length),
            "targets": torch.arange(len(examples), dtype=torch.long),
        }

    def _negatives(self, dataset, example: dict, index: int, rng: random.Random) -> list[tuple[str, str]]:
        n = self.num_hard_negatives
        if n == 0:
            return []
        pool = list(zip(example["neg_instructions"], example["neg"]))
        if pool:
            return rng.sample(pool, n) if len(pool) >= n else rng.choices(pool, k=n)
        picked = []
        while len(picked) < n:  # random negatives: a positive of another example
            other = rng.randrange(len(dataset))
            if other != index or len(dataset) == 1:
                row = dataset[other]
                picked.append((row["pos_instructions"][0], row["pos"][0]))
        return picked


class StepIndexCollator:
    """Collator for the placeholder dataset that drives the training loop in `embedding` mode (one row per step)."""

    def __call__(self, examples: list[dict]) -> dict:
        return {"grit_step": torch.tensor([example["grit_step"] for example in examples], dtype=torch.long)}
