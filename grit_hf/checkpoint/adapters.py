"""PEFT adapters of GRIT models, by name or folder: load one onto its base model, or merge it into a full grit-hf
checkpoint (the folder-level merge, below the model classes, is `grit_hf.folders.adapters`)."""

from __future__ import annotations

import os
from pathlib import Path

from transformers.utils import logging

from ..folders.adapters import merge_adapter_checkpoint, recorded_base_model
from ..folders.resolve import resolve_checkpoint
from ..modeling_gritlm import GritLMForCausalLM

logger = logging.get_logger(__name__)

__all__ = ["load_adapter_model", "merge_adapter"]


def load_adapter_model(adapter_dir: str | os.PathLike, base_model: str | os.PathLike | None = None, **kwargs):
    """A `PeftModel` of the adapter in `adapter_dir` on its GRIT base model (the base recorded in the adapter's
    config unless `base_model` is given; `"default"` is the default model). `kwargs` go to `from_pretrained`."""
    from peft import PeftModel

    base = GritLMForCausalLM.from_pretrained(base_model or recorded_base_model(adapter_dir), **kwargs)
    return PeftModel.from_pretrained(base, str(adapter_dir))


def merge_adapter(
    adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, base_model: str | os.PathLike | None = None
) -> Path:
    """Merge the adapter in `adapter_dir` into its base model (the one its config records unless `base_model` is
    given; a folder or a name such as `"default-base"`) and save a full grit-hf checkpoint in `output_dir`, with the
    GRIT settings the training recorded."""
    adapter_dir = Path(adapter_dir)
    base = resolve_checkpoint(base_model if base_model is not None else recorded_base_model(adapter_dir))
    logger.info(f"Merging the adapter {adapter_dir} into {base}; saving to {output_dir}")
    return merge_adapter_checkpoint(base, adapter_dir, Path(output_dir))
