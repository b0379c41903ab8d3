"""Turning stock decoder checkpoints into GRIT checkpoints, and saving GRIT checkpoints (safetensors only)."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging

from .modeling_gritlm import GritLMForCausalLM, GritLMPreTrainedModel

logger = logging.get_logger(__name__)

__all__ = ["convert_checkpoint", "save_grit_checkpoint", "CHECKPOINT_WRITERS"]

# Functions `(output_dir, model, tokenizer) -> None` run after every GRIT checkpoint is saved, e.g. to add the
# sentence-transformers files. Other grit_hf modules append to it; users should not need to.
CHECKPOINT_WRITERS: list = []


def save_grit_checkpoint(
    model: GritLMPreTrainedModel, tokenizer: PreTrainedTokenizerBase, output_dir: str | os.PathLike
) -> Path:
    """Save `model` and `tokenizer` as a GRIT checkpoint: safetensors weights in the stock layout, the tokenizer with
    a chat template (the config's when the tokenizer has none), and the files every registered writer adds."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    if tokenizer.chat_template is None and model.config.chat_template:
        tokenizer.chat_template = model.config.chat_template
    tokenizer.save_pretrained(output_dir)
    for writer in CHECKPOINT_WRITERS:
        writer(output_dir, model, tokenizer)
    return output_dir


def convert_checkpoint(
    source: str | os.PathLike, output_dir: str | os.PathLike, dtype: str = "auto", **grit_settings
) -> Path:
    """Convert a stock decoder checkpoint folder (Llama, Mistral, Mixtral, Qwen2/3, Gemma, ...; also one laid out
    like GritLM/GritLM-7B with an `auto_map`) into a GRIT checkpoint in `output_dir`.

    No code from `source` is run. Only safetensors weights are read. `grit_settings` override GRIT config fields
    (e.g. `query_template=...`, `pooling_method="weightedmean"`).
    """
    source = Path(source)
    if not (source / "config.json").is_file():
        raise ValueError(f"`source` must be a checkpoint folder with a config.json, got {str(source)!r}.")
    if not any(source.glob("*.safetensors")):
        raise ValueError(f"{source} has no .safetensors weights; grit-hf reads safetensors only (never pickle).")
    model = GritLMForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True)
    for key, value in grit_settings.items():
        if not hasattr(model.config, key):
            raise ValueError(f"Unknown GRIT setting `{key}`.")
        setattr(model.config, key, value)
    model.config._check_grit_settings()
    tokenizer = AutoTokenizer.from_pretrained(source)
    logger.info(f"Converting {source} ({model.config.text_config.model_type}) into a GRIT checkpoint at {output_dir}")
    return save_grit_checkpoint(model, tokenizer, output_dir)
