"""Saving a GRIT checkpoint: the tokenizer (with a chat template), the weights and every file a checkpoint carries."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..modeling_gritlm import GritLMPreTrainedModel

__all__ = ["save_grit_checkpoint", "build_folder_once"]


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
    model.tokenizer = tokenizer
    model.save_pretrained(output_dir, safe_serialization=True)
    return output_dir


def build_folder_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Return `target`, first running `build(staging)` into a temporary sibling folder and moving it into place
    atomically if `target` has no `config.json` yet: a crash never leaves a half-written checkpoint, and of two
    processes building at once, the second keeps the first's complete folder."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
