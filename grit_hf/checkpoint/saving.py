"""Saving a GRIT checkpoint: the tokenizer (with a chat template), the weights and every file a checkpoint carries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..modeling_gritlm import GritLMPreTrainedModel

__all__ = ["save_grit_checkpoint"]


def save_grit_checkpoint(
    model: GritLMPreTrainedModel, tokenizer: PreTrainedTokenizerBase, output_dir: str | os.PathLike
) -> Path:
    """Save `model` and `tokenizer` as a GRIT checkpoint: the tokenizer with a chat template (the config's when the
    tokenizer has none), then safetensors weights in the stock layout plus the files every GRIT checkpoint carries
    (sentence-transformers files, remote-code shim), written once by `model.save_pretrained`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer.chat_template is None and model.config.chat_template:
        tokenizer.chat_template = model.config.chat_template
    tokenizer.save_pretrained(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True, tokenizer=tokenizer)
    return output_dir
