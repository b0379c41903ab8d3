"""`GRITTrainer`: TRL's `SFTTrainer` with the joint GRIT objective `L = lambda_rep * L_rep + lambda_gen * L_gen`."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from trl import SFTTrainer

from ..checkpoint.saving import save_grit_checkpoint
from ..folders.adapters import ADAPTER_GRIT_CONFIG
from ..folders.resolve import checkpoint_display_name
from ..generation.recompute import Recompute
from ..modeling_gritlm import GritLMForCausalLM, GritLMPreTrainedModel
from ..quantization import check_not_quantized
from ..rag.prompts import RAGPrompts
from .cache_data import load_cache_dataset
from .cache_loss import CacheStream
from .collators import EmbeddingBatchSampler, EmbeddingCollator, StepIndexCollator
from .data import load_embedding_dataset, load_generative_dataset
from .embedding_forward import add_embedding_forward
from .grad_cache import representation_loss
from .grit_config import GRITConfig
from .losses import generative_loss_units, sample_index_from_position_ids
from .teardown import end_training

logger = get_logger(__name__)

__all__ = ["GRITTrainer"]


def _unwrap_grit(model) -> GritLMPreTrainedModel | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base if isinstance(base, GritLMPreTrainedModel) else None


class GRITTrainer(SFTTrainer):
    """Train one model to embed and to generate (GRIT).

    Each micro-step takes `emb_batch_size` embedding examples (queries with a positive and hard negatives) from the
    embedding stream and `per_device_train_batch_size` generative examples from the generative stream (the training
    data loader, prepared by `SFTTrainer`: truncation, packing, padding-free). L_rep is InfoNCE over the same
    bidirectional, instruction-excluded pooling as `encode`; L_gen is the next-token loss on assistant tokens with
    the configured aggregation. `loss_rep` and `loss_gen` are logged next to `loss`. Checkpoints are grit-hf
    checkpoints (or PEFT adapters with `peft_config`).

    Args:
        model: a `GritLMForCausalLM` (or a PEFT model around one), or a checkpoint name: a folder, a Hugging Face Hub
            name such as `"GritLM/GritLM-7B"` (read from the local HF cache when offline) or `"default"` (the
            default model); stock decoder checkpoints are wrapped.
        args: a `GRITConfig`.
        train_dataset: the generative data (a `datasets.Dataset` or a source path); defaults to
            `args.generative_dataset`.
        embedding_dataset: the embedding data (a `datasets.Dataset` or a source path); defaults to
            `args.embedding_dataset`.
        cache_dataset: the cache-loss data (RAG examples; a `datasets.Dataset` or a source path); defaults to
            `args.cache_dataset`. Used when `args.lambda_cache > 0`.
        eval_dataset: optional generative evaluation data (L_gen only).
        processing_class: the tokenizer (loaded from the model's folder if not given).
        peft_config: a `peft.PeftConfig` (LoRA, QLoRA with a quantized model).
        **kwargs: passed on to `SFTTrainer` (`callbacks`, `optimizers`, ...).
    """

    _tag_names = ["trl", "sft", "grit", "grit-hf"]
    _name = "GRIT"
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: str | Any,
        args: GRITConfig | None = None,
        train_dataset: Any = None,
        embedding_dataset: Any = None,
        eval_dataset: Any = None,
        cache_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: Any = None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, (str, os.PathLike)) else getattr(model.config, "name_or_path", "")
            args = GRITConfig(f"{checkpoint_display_name(name).split('/')[-1] if name else 'model'}-GRIT")
        elif not isinstance(args, GRITConfig):
            raise TypeError(f"`args` must be a `GRITConfig`, got {type(args).__name__}.")
        if isinstance(model, (str, os.PathLike)):
            model = GritLMForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
        grit_model = _unwrap_grit(model)
        if grit_model is None:
            raise TypeError(
                f"`model` must be a grit-hf model (`GritLMForCausalLM`) or a path, got {type(model).__name__}."
            )
        check_not_quantized(grit_model, "Training (GRITTrainer)")  # torchao weights (bitsandbytes QLoRA trains)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(grit_model.name_or_path)
        if not isinstance(processing_class, PreTrainedTokenizerBase):
            raise TypeError(f"`processing_class` must be a tokenizer, got {type(processing_class).__name__}.")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        grit_model.tokenizer = processing_class  # the model embeds (and the cache loss builds prompts) with it

        generative, embedding = self._load_data(
            args, train_dataset, embedding_dataset, processing_class, grit_model.config.chat_template
        )
        if eval_dataset is not None:
            eval_dataset = load_generative_dataset(
                eval_dataset, processing_class, grit_model.config.chat_template, args.dataset_train_split
            )
        world_size = args.world_size
        if args.mode == "embedding":
            if train_dataset is not None:
                logger.warning("`mode='embedding'` trains on the embedding data only: `train_dataset` is ignored.")
            sampler = EmbeddingBatchSampler(
                embedding["source"], args.emb_batch_size * world_size, args.seed, args.same_dataset_negatives
            )
            rows = sampler.batches_per_epoch * world_size * args.per_device_train_batch_size
            import datasets

            generative = datasets.Dataset.from_dict({"grit_step": list(range(rows))})
            args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
            args.remove_unused_columns = False
            args.packing = args.padding_free = False
            kwargs["data_collator"] = StepIndexCollator()
            if not grit_model.config.tie_word_embeddings and peft_config is None and args.lambda_cache == 0:
                grit_model.lm_head.requires_grad_(False)  # unused by L_rep; DDP needs every trainable param used

        super().__init__(
            model, args=args, train_dataset=generative, eval_dataset=eval_dataset,
            processing_class=processing_class, peft_config=peft_config, **kwargs,
        )  # fmt: skip
        if self.is_deepspeed_enabled and args.emb_chunk_size is not None:  # DeepSpeed from accelerate's config
            raise ValueError(
                "`emb_chunk_size` (GradCache) needs several backward passes per step, which DeepSpeed does not allow."
            )
        add_embedding_forward(_unwrap_grit(self.model))

        self._embedding_dataset = embedding
        if embedding is not None:
            self._emb_sampler = EmbeddingBatchSampler(
                embedding["source"], args.emb_batch_size * self.accelerator.num_processes, args.seed,
                same_dataset=args.same_dataset_negatives,
            )  # fmt: skip
            self._emb_collator = EmbeddingCollator(
                processing_class, grit_model.config, args.num_hard_negatives, args.query_max_length,
                args.passage_max_length, seed=args.seed,
            )  # fmt: skip
        logger.info(
            f"GRIT {args.mode}: {args.emb_batch_size} embedding queries (+{args.num_hard_negatives} hard negatives "
            f"each, chunks of {args.emb_chunk_size or 'all'}) and {args.per_device_train_batch_size} generative "
            f"examples per process and micro-step; L = {args.lambda_rep} L_rep + {args.lambda_gen} L_gen "
            f"({args.gen_loss_aggregation} aggregation)."
        )
        self._cache_stream = None
        if args.lambda_cache > 0:
            self._cache_stream = self._make_cache_stream(args, cache_dataset, grit_model)
            config = _unwrap_grit(self.model).config  # recorded in every checkpoint
            config.cache_attention = "bidirectional"
            config.cache_recompute = args.cache_recompute
        self._gen_units_total: torch.Tensor | None = None
        self._micro = (-1, 0)  # (global step, micro-steps taken in it)
        self._grit_sums = dict.fromkeys(
            ("loss_rep", "loss_gen", "loss_cache", "num_tokens_rep", "num_tokens_gen"), 0.0
        )
        self._grit_tokens_seen = {"num_tokens_rep": 0, "num_tokens_gen": 0}  # all processes, this run
        self._grit_steps: set[int] = set()  # optimizer steps since the last log

    def _make_cache_stream(self, args: GRITConfig, cache_dataset, grit_model) -> CacheStream:
        source = cache_dataset if cache_dataset is not None else args.cache_dataset
        if source is None:
            raise ValueError("`lambda_cache > 0` needs cache data: set `cache_dataset`.")
        if grit_model.config.is_causal_embedding:
            logger.warning("The embedding attention is causal: the cache loss trains on causal embedding states.")
        dataset = load_cache_dataset(source, args.dataset_train_split, args.cache_question_template)
        sampler = EmbeddingBatchSampler(
            dataset["source"], args.cache_batch_size * self.accelerator.num_processes, args.seed
        )
        prompts = RAGPrompts.for_model(grit_model, **(args.cache_prompts or {}))
        return CacheStream(
            grit_model, dataset, sampler, args.cache_modes, args.cache_document_max_length or args.passage_max_length,
            args.cache_answer_max_tokens, args.cache_teacher_loss, prompts, args.cache_answer_half_life,
            Recompute.parse(args.cache_recompute),
        )  # fmt: skip

    @staticmethod
    def _load_data(args: GRITConfig, train_dataset, embedding_dataset, tokenizer, chat_template: str | None):
        generative_source = train_dataset if train_dataset is not None else args.generative_dataset
        embedding_source = embedding_dataset if embedding_dataset is not None else args.embedding_dataset
        needs = {"unified": ("generative", "embedding"), "embedding": ("embedding",), "generative": ("generative",)}
        sources = {"generative": generative_source, "embedding": embedding_source}
        for kind in needs[args.mode]:
            if sources[kind] is None:
                what = "`train_dataset`/`generative_dataset`" if kind == "generative" else "`embedding_dataset`"
                raise ValueError(f"`mode={args.mode!r}` needs {kind} data: set {what}.")
        generative = embedding = None
        if "generative" in needs[args.mode]:
            generative = load_generative_dataset(generative_source, tokenizer, chat_template, args.dataset_train_split)
        if "embedding" in needs[args.mode]:
            embedding = load_embedding_dataset(embedding_source, args.dataset_train_split)
        return generative, embedding

    # -- training step -----------------------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also count the L_gen units (tokens, samples or sub-batches) of the whole global batch, over every
        gradient accumulation micro-batch and process, so that every aggregation is exact."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.args.mode != "embedding":
            units = torch.zeros((), device=device)
            for batch in batch_samples:
                mask = batch["labels"][:, 1:] != -100
                _, batch_units = generative_loss_units(
                    torch.zeros(mask.shape, device=mask.device), mask, self.args.gen_loss_aggregation,
                    self._sample_index(batch), self.args.gen_sub_batch_size,
                )  # fmt: skip
                units = units + batch_units.to(device)
            self._gen_units_total = self.accelerator.reduce(units, "sum")
        return batch_samples, num_items_in_batch

    @staticmethod
    def _sample_index(inputs: dict) -> torch.Tensor | None:
        if "position_ids" in inputs and "attention_mask" not in inputs:  # packed / padding-free rows
            return sample_index_from_position_ids(inputs["position_ids"])[:, 1:]
        return None

    def _next_micro_step(self) -> int:
        step, taken = self._micro
        if step != self.state.global_step:
            step, taken = self.state.global_step, 0
        self._micro = (step, taken + 1)
        return step * self.args.gradient_accumulation_steps + taken

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """This micro-step's `lambda_rep * L_rep + lambda_gen * L_gen + lambda_cache * L_cache`, already scaled for
        gradient accumulation and processes (`loss_is_scaled_for_ga`); the stock `training_step` back-propagates it.

        L_rep is computed on this micro-step's embedding batch, L_gen on `inputs` (this micro-batch's share of the
        global batch's L_gen, exact for every aggregation: see `get_batch_samples`, so `num_items_in_batch` is not
        used) and L_cache on this micro-step's cache batch. Evaluation (the model in eval mode) is `SFTTrainer`'s.

        GradCache (`emb_chunk_size`) needs one backward pass per chunk, and the stock `training_step` runs one per
        micro-step: each chunk's graph is freed before the next one is built, which is where its memory saving comes
        from. So the chunks before the last are back-propagated here, under `accelerator.no_sync` (DDP synchronises
        the gradients once, in the last backward); the returned loss carries the last chunk's graph, L_gen's and
        L_cache's, and its value is the whole loss, which the Trainer logs. DeepSpeed, which allows one backward pass
        per step, is refused in `__init__`.
        """
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        micro_step = self._next_micro_step()
        self._grit_steps.add(self.state.global_step)
        args, sums = self.args, self._grit_sums
        accumulation, world = self.current_gradient_accumulation_steps, self.accelerator.num_processes
        loss = torch.zeros((), device=self.accelerator.device)
        if args.mode != "generative":
            batch = self._embedding_batch(micro_step)

            def embed(features):
                return model(
                    input_ids=features.input_ids, attention_mask=features.attention_mask,
                    prefix_lengths=features.prefix_lengths, grit_embed=True,
                )  # fmt: skip

            loss, rep_loss = representation_loss(
                embed, batch["queries"], batch["passages"], batch["targets"], args.temperature,
                loss_scale=args.lambda_rep / accumulation, chunk_size=args.emb_chunk_size,
                cross_device=args.negatives_cross_device,
                no_sync=functools.partial(self.accelerator.no_sync, model=model), backward=self.accelerator.backward,
            )  # fmt: skip
            sums["loss_rep"] += rep_loss / (accumulation * world)
            sums["num_tokens_rep"] += batch["queries"].attention_mask.sum() + batch["passages"].attention_mask.sum()
        if args.mode != "embedding":
            gen_share = self._generative_share(model, inputs)
            loss = loss + args.lambda_gen * gen_share * world  # DDP averages gradients over processes
            sums["loss_gen"] += gen_share.detach()
            mask = inputs.get("attention_mask")
            sums["num_tokens_gen"] += mask.sum() if mask is not None else inputs["input_ids"].numel()
        if self._cache_stream is not None:
            cache_loss = self._cache_stream.loss(
                model, lambda ids, mask: model(input_ids=ids, attention_mask=mask, grit_states=True), micro_step,
                self.accelerator.process_index, world,
            )  # fmt: skip
            loss = loss + args.lambda_cache * cache_loss / accumulation
            sums["loss_cache"] += cache_loss.detach() / (accumulation * world)
        return (loss, None) if return_outputs else loss

    def _generative_share(self, model, inputs: dict) -> torch.Tensor:
        """This micro-batch's share of the global batch's L_gen (the shares of all micro-batches and processes sum
        to L_gen).

        The label log-probabilities come from TRL's fused LM head, which `SFTTrainer.__init__` puts on the model with
        `trl.trainer.utils.add_fused_lm_head` (temperature 1). What we rely on, tested on the lowest TRL we allow
        (`tests/trainer/test_grit_trainer.py::test_fused_lm_head_contract`):

        - `model(**inputs, fused_lm_head=True)` with `labels` `(batch, seq)` runs the decoder (`model.base_model`,
          whose output has `last_hidden_state`) and scores each position's next-token label through the LM head
          without building the `(batch, seq, vocab)` logits; without the flag the forward is the model's own.
        - `.log_probs` `(batch, seq - 1)`: `log_softmax(logits[:, :-1])` at `labels[:, 1:]`, with its gradient, and
          0 where that label is -100. (With `shift_labels`, which context parallelism passes, it would be `seq`
          long: we pass none.)
        - `.label_mask` `(batch, seq - 1)`, bool: `labels[:, 1:] != -100`, the tokens L_gen counts.
        - `.aux_loss`: the MoE load-balancing loss, when called with `output_router_logits=True`.
        """
        inputs = {k: v for k, v in inputs.items() if k != "grit_step"}
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        outputs = model(**inputs, fused_lm_head=True)
        total, units = generative_loss_units(
            -outputs.log_probs, outputs.label_mask, self.args.gen_loss_aggregation, self._sample_index(inputs),
            self.args.gen_sub_batch_size,
        )  # fmt: skip
        units_total = self._gen_units_total
        if units_total is None:  # called outside the training loop: this micro-batch alone
            units_total = units * self.current_gradient_accumulation_steps * self.accelerator.num_processes
        share = total / units_total.clamp(min=1)
        if self.aux_loss_enabled:
            scale = self.current_gradient_accumulation_steps * self.accelerator.num_processes
            share = share + self.router_aux_loss_coef * outputs.aux_loss / scale
        return share

    def _embedding_batch(self, micro_step: int) -> dict:
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        indices = self._emb_sampler.local_batch(micro_step, rank, world)
        batch = self._emb_collator(self._embedding_dataset, indices, micro_step)
        device = self.accelerator.device
        return {key: value.to(device) for key, value in batch.items()}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `loss_rep` and `loss_gen` (means over the steps since the last log) and the embedding and generative
        tokens seen so far (`num_tokens_rep`, `num_tokens_gen`, all processes) to training logs."""
        if "loss" in logs and self.model.training:
            steps = max(len(self._grit_steps), 1)
            self._grit_steps.clear()
            keys = list(self._grit_sums)
            dtype = torch.float32 if self.accelerator.device.type == "mps" else torch.float64  # exact token counts
            values = torch.tensor([float(self._grit_sums[k]) for k in keys], dtype=dtype)
            totals = dict(zip(keys, self.accelerator.reduce(values.to(self.accelerator.device), "sum").tolist()))
            self._grit_sums = dict.fromkeys(keys, 0.0)
            if self.args.mode != "generative":
                logs["loss_rep"] = round(totals["loss_rep"] / steps, 6)
            if self.args.mode != "embedding":
                logs["loss_gen"] = round(totals["loss_gen"] / steps, 6)
            if self._cache_stream is not None:
                logs["loss_cache"] = round(totals["loss_cache"] / steps, 6)
            for key in self._grit_tokens_seen:
                self._grit_tokens_seen[key] += int(totals[key])
                logs[key] = self._grit_tokens_seen[key]
        super().log(logs, start_time)

    # -- saving ------------------------------------------------------------------------------------------------------
    def end(self) -> None:
        """Finish the trackers and end the distributed state in order (see `teardown.end_training`): call it once,
        at the end, after everything that needs the other processes."""
        end_training(self)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save a grit-hf checkpoint (stock-layout weights, tokenizer with chat template, the files every checkpoint
        carries, written by the model's `save_pretrained`); PEFT models save their adapter."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if isinstance(model, GritLMPreTrainedModel) and state_dict is None and self.args.should_save:
            save_grit_checkpoint(model, self.processing_class, output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
            return
        super()._save(output_dir, state_dict)
        grit = _unwrap_grit(model)
        if grit is not None and grit is not model and self.args.should_save:  # an adapter: keep the GRIT settings
            settings = {"cache_attention": grit.config.cache_attention}
            if grit.config.cache_recompute is not None:
                settings["cache_recompute"] = grit.config.cache_recompute
            Path(output_dir, ADAPTER_GRIT_CONFIG).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
