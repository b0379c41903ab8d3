"""`GRITConfig`: the training arguments of `GRITTrainer` (TRL's `SFTConfig` plus the GRIT objective and data)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from transformers.utils import logging
from trl import SFTConfig

from ..generation.recompute import Recompute
from ..rag.prompts import CACHING_MODES
from ..validation import check_non_negative_number, check_positive_int
from .losses import GEN_LOSS_AGGREGATIONS

logger = logging.get_logger(__name__)

__all__ = ["GRITConfig", "GRIT_MODES", "CACHE_TEACHER_LOSSES"]

GRIT_MODES = ("unified", "embedding", "generative")
CACHE_TEACHER_LOSSES = ("ce", "kl")


def _has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


@dataclass
class GRITConfig(SFTConfig):
    r"""
    Configuration of the [`GRITTrainer`]: every [`~trl.SFTConfig`] argument (which applies to the generative stream),
    plus the GRIT objective `L = lambda_rep * L_rep + lambda_gen * L_gen + lambda_cache * L_cache` and its data
    streams.

    Parameters:
        > Parameters that control the objective

        mode (`str`, *optional*, defaults to `"unified"`):
            `"unified"` (both losses), `"embedding"` (L_rep only) or `"generative"` (L_gen only).
        lambda_rep (`float`, *optional*, defaults to `1.0`):
            Weight of the contrastive loss L_rep.
        lambda_gen (`float`, *optional*, defaults to `1.0`):
            Weight of the next-token loss L_gen.
        temperature (`float`, *optional*, defaults to `0.02`):
            InfoNCE temperature on cosine similarities (the reference value).
        gen_loss_aggregation (`str`, *optional*, defaults to `"mixed"`):
            How token losses become L_gen: `"token"` (every token of the global batch weighs the same), `"sample"`
            (every sample weighs the same), `"mixed"` (token level inside each sub-batch, then the mean over
            sub-batches; the GRIT paper's best).
        gen_sub_batch_size (`int`, *optional*):
            Samples per sub-batch for `"mixed"`. By default a sub-batch is one process's micro-batch.
        lambda_cache (`float`, *optional*, defaults to `0.0`):
            Weight of the cache loss L_cache (cache-aware GRIT): the next-token loss on RAG answers generated from
            the embedding pass's own document (and query) states. Above 0, saved checkpoints record
            `cache_attention="bidirectional"`, so `GritRAG` answers from the embedding pass's states by default.
        cache_modes (`list[str]`, *optional*, defaults to `["doc"]`):
            Caching modes trained (`doc`, `query`, `query_doc`, `doc_query`), taken in turn over the examples.
        cache_teacher_loss (`str`, *optional*, defaults to `"ce"`):
            For examples without an answer (the model's own plain-RAG answer is the target): `"ce"` (cross-entropy
            on that answer) or `"kl"` (KL divergence from the plain-RAG next-token distributions along it).
        cache_answer_max_tokens (`int`, *optional*, defaults to `64`):
            Tokens of the teacher's answers, and at most of gold answers.
        cache_answer_half_life (`float`, *optional*):
            Aims the cache loss at the first answer tokens, where answers from cached states part from plain RAG's:
            answer token `t` weighs `0.5 ** (t / cache_answer_half_life)`. `None` weighs every token the same.
        cache_recompute (`str`, *optional*):
            Selective recomputation of the cached parts in the cache loss, `"RULE:AMOUNT"` (e.g. `"head:6"`,
            `"deviation:0.15"`; `grit_hf.generation.recompute`), as `GritRAG` runs it at inference; recorded in the
            checkpoint as its `cache_recompute`, the setting `GritRAG` then uses by default. `None`: none.
        cache_prompts (`dict`, *optional*):
            `RAGPrompts` fields to override in the cache loss's prompts (e.g. a shorter `doc_cached` suffix); give the
            same `RAGPrompts` to `GritRAG` at inference.

        > Parameters that control the data

        embedding_dataset (`str`, *optional*):
            Embedding examples: a .jsonl/.json file, a folder of them, a retrieval folder (queries.jsonl,
            corpus.jsonl, qrels.tsv, task.json), a saved `datasets` folder or a dataset name. Can also be passed to
            the trainer as a `datasets.Dataset`.
        generative_dataset (`str`, *optional*):
            Generative examples (`text`, `messages` or `prompt`/`completion` records), same kinds of source.
        cache_dataset (`str`, *optional*):
            RAG examples for the cache loss (`{"documents", "question", "answer"?}`; see `grit_hf.trainer.cache_data`).
        cache_question_template (`str`, *optional*):
            Makes embedding records or a retrieval folder cache data: the query becomes
            `cache_question_template.format(query=...)` about its first positive (answered by the teacher).
        cache_batch_size (`int`, *optional*, defaults to `4`):
            Cache-loss examples per process and micro-step.
        cache_document_max_length (`int`, *optional*):
            Tokens per cached document (or query) part of the cache loss, format included; `None` uses
            `passage_max_length`. Cached documents are as long as `GritRAG` stores them at inference, which can be
            longer than the passages the contrastive loss needs.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to use for sources with several splits.
        emb_batch_size (`int`, *optional*, defaults to `8`):
            Embedding queries per process and micro-step, independent of `per_device_train_batch_size` (the
            generative examples per process and micro-step).
        emb_chunk_size (`int`, *optional*):
            GradCache chunk size: embed at most this many texts per forward/backward pass (same gradient, memory
            bounded by the chunk). `None` embeds the whole batch in one graph.
        num_hard_negatives (`int`, *optional*, defaults to `1`):
            Hard negatives per query (from its `neg` list; random passages when it has none).
        query_max_length (`int`, *optional*, defaults to `256`):
            Tokens per query, instruction and format included.
        passage_max_length (`int`, *optional*, defaults to `512`):
            Tokens per passage, format included.
        negatives_cross_device (`bool`, *optional*, defaults to `False`):
            Use the passages of every process as negatives (autograd-aware all-gather; exact gradients).
        same_dataset_negatives (`bool`, *optional*, defaults to `False`):
            Build every embedding batch from one source, so in-batch negatives come from the same dataset.
        init_adapter (`str`, *optional*):
            A PEFT adapter folder (e.g. the committed adapter of an earlier run whose Trainer checkpoint is gone) that
            the model starts from, trainable, instead of a new adapter. The optimizer and the schedule start afresh:
            give a short warm-up and the remaining `max_steps`.

    > [!NOTE]
    > Differences from [`~trl.SFTConfig`]: the loss is the GRIT objective above; labels come from the data loader
    > (assistant turns only), so `assistant_only_loss` and `completion_only_loss` are not used; `loss_type` must be
    > `"nll"`; `average_tokens_across_devices` is implied (all aggregations are exact over the global batch). An epoch
    > is a pass over the generative data (over the embedding data in `"embedding"` mode).
    """

    mode: str = field(
        default="unified",
        metadata={
            "help": "Training objective: both losses, the embedding loss or the generative loss.",
            "choices": list(GRIT_MODES),
        },
    )
    lambda_rep: float = field(default=1.0, metadata={"help": "Weight of the contrastive loss L_rep."})
    lambda_gen: float = field(default=1.0, metadata={"help": "Weight of the next-token loss L_gen."})
    temperature: float = field(default=0.02, metadata={"help": "InfoNCE temperature on cosine similarities."})
    gen_loss_aggregation: str = field(
        default="mixed",
        metadata={"help": "Aggregation of token losses into L_gen.", "choices": list(GEN_LOSS_AGGREGATIONS)},
    )
    gen_sub_batch_size: int | None = field(
        default=None,
        metadata={"help": "Samples per sub-batch for the 'mixed' aggregation (default: a process's micro-batch)."},
    )
    lambda_cache: float = field(default=0.0, metadata={"help": "Weight of the cache loss L_cache (0: off)."})
    cache_modes: list[str] = field(
        default_factory=lambda: ["doc"],
        metadata={"help": "Caching modes the cache loss trains.", "choices": list(CACHING_MODES)},
    )
    cache_teacher_loss: str = field(
        default="ce",
        metadata={"help": "Loss on teacher answers.", "choices": list(CACHE_TEACHER_LOSSES)},
    )
    cache_answer_max_tokens: int = field(default=64, metadata={"help": "Tokens of teacher answers (and gold ones)."})
    cache_answer_half_life: float | None = field(
        default=None, metadata={"help": "Weigh answer token t by 0.5 ** (t / half_life) in the cache loss (None: 1)."}
    )
    cache_recompute: str | None = field(
        default=None, metadata={"help": "Selective recomputation in the cache loss, 'RULE:AMOUNT' (None: none)."}
    )
    cache_prompts: dict[str, str] | None = field(
        default=None, metadata={"help": "RAGPrompts fields overridden in the cache loss's prompts."}
    )
    cache_dataset: str | None = field(
        default=None, metadata={"help": "RAG examples for the cache loss: file, folder, saved dataset or name."}
    )
    cache_question_template: str | None = field(
        default=None, metadata={"help": "Turns embedding/retrieval records into questions: '... {query} ...'."}
    )
    cache_batch_size: int = field(default=4, metadata={"help": "Cache-loss examples per process and micro-step."})
    init_adapter: str | None = field(
        default=None, metadata={"help": "PEFT adapter folder to continue training from (fresh optimizer)."}
    )
    cache_document_max_length: int | None = field(
        default=None, metadata={"help": "Tokens per cached part of the cache loss (None: `passage_max_length`)."}
    )
    embedding_dataset: str | None = field(
        default=None, metadata={"help": "Embedding data: file, folder, retrieval folder, saved dataset or name."}
    )
    generative_dataset: str | None = field(
        default=None, metadata={"help": "Generative data: file, folder, saved dataset or name."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split of multi-split sources."})
    emb_batch_size: int = field(default=8, metadata={"help": "Embedding queries per process and micro-step."})
    emb_chunk_size: int | None = field(
        default=None, metadata={"help": "GradCache chunk size for the embedding forward/backward (None: no chunks)."}
    )
    num_hard_negatives: int = field(default=1, metadata={"help": "Hard negatives per query."})
    query_max_length: int = field(default=256, metadata={"help": "Maximum tokens per query (prefix included)."})
    passage_max_length: int = field(default=512, metadata={"help": "Maximum tokens per passage (prefix included)."})
    negatives_cross_device: bool = field(
        default=False, metadata={"help": "Gather passages from all processes as negatives (exact gradients)."}
    )
    same_dataset_negatives: bool = field(
        default=False, metadata={"help": "Draw each embedding batch from a single source dataset."}
    )

    def __post_init__(self):
        if self.deepspeed and self.emb_chunk_size is not None:
            raise ValueError(
                "`emb_chunk_size` (GradCache) needs several backward passes per step, which DeepSpeed does not allow: "
                "unset one of `deepspeed` and `emb_chunk_size`."
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not _has_accelerator():
            # Without `use_cpu`, accelerate treats CPU-only processes as independent single-process runs.
            logger.info("Several processes and no accelerator: setting `use_cpu=True` (gloo).")
            self.use_cpu = True
        super().__post_init__()
        if self.mode not in GRIT_MODES:
            raise ValueError(f"Invalid `mode`: {self.mode!r}. Valid modes are: {GRIT_MODES}.")
        if self.gen_loss_aggregation not in GEN_LOSS_AGGREGATIONS:
            raise ValueError(
                f"Invalid `gen_loss_aggregation`: {self.gen_loss_aggregation!r}. "
                f"Valid choices are: {GEN_LOSS_AGGREGATIONS}."
            )
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be positive, got {self.temperature!r}.")
        for name in ("lambda_rep", "lambda_gen", "lambda_cache"):
            check_non_negative_number(getattr(self, name), name)
        for name in ("emb_batch_size", "query_max_length", "passage_max_length", "cache_batch_size"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.cache_answer_max_tokens, "cache_answer_max_tokens")
        if self.cache_answer_half_life is not None and not check_non_negative_number(
            self.cache_answer_half_life, "cache_answer_half_life"
        ):
            raise ValueError(
                f"`cache_answer_half_life` must be positive or None, got {self.cache_answer_half_life!r}."
            )
        for name in ("emb_chunk_size", "gen_sub_batch_size", "cache_document_max_length"):
            check_positive_int(getattr(self, name), name, allow_none=True)
        if self.num_hard_negatives < 0:
            raise ValueError(f"`num_hard_negatives` must be >= 0, got {self.num_hard_negatives!r}.")
        if self.loss_type != "nll":
            raise ValueError(f"`loss_type` must be 'nll' for GRIT training, got {self.loss_type!r}.")
        checkpointing_kwargs = self.activation_checkpointing_kwargs
        if (checkpointing_kwargs or {}).get("use_reentrant"):
            raise ValueError(
                "`activation_checkpointing_kwargs={'use_reentrant': True}` is not supported: GRIT runs several "
                "forward passes of the same layers before one backward, which needs non-reentrant checkpointing."
            )
        if self.mode == "unified" and self.lambda_rep == 0 and self.lambda_gen == 0 and self.lambda_cache == 0:
            raise ValueError("`lambda_rep`, `lambda_gen` and `lambda_cache` are all 0: nothing to train.")
        if isinstance(self.cache_modes, str):
            self.cache_modes = [mode.strip() for mode in self.cache_modes.split(",") if mode.strip()]
        unknown = [mode for mode in self.cache_modes if mode not in CACHING_MODES]
        if unknown or not self.cache_modes:
            raise ValueError(f"Invalid `cache_modes`: {self.cache_modes!r}. Valid modes are: {CACHING_MODES}.")
        self.cache_recompute = (
            None if Recompute.parse(self.cache_recompute) is None else str(Recompute.parse(self.cache_recompute))
        )
        if self.cache_teacher_loss not in CACHE_TEACHER_LOSSES:
            raise ValueError(
                f"Invalid `cache_teacher_loss`: {self.cache_teacher_loss!r}. Valid choices are: {CACHE_TEACHER_LOSSES}."
            )
