"""PEFT adapters of GRIT models: load one onto its base, or merge it into a full grit-hf checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers.utils import logging

from ..checkpoint.resolve import resolve_checkpoint
from ..checkpoint.saving import merge_adapter_checkpoint
from ..modeling_gritlm import GritLMForCausalLM

logger = logging.get_logger(__name__)

__all__ = ["load_adapter_model", "merge_adapter"]


def load_adapter_model(adapter_dir: str | os.PathLike, base_model: str | os.PathLike | None = None, **kwargs):
    """A `PeftModel` of the adapter in `adapter_dir` on its GRIT base model (the base recorded in the adapter's
    config unless `base_model` is given; `"default"` is the default model). `kwargs` go to `from_pretrained`."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    base = GritLMForCausalLM.from_pretrained(base_model or _recorded_base(adapter_dir), **kwargs)
    return PeftModel.from_pretrained(base, str(adapter_dir))


def _recorded_base(adapter_dir: Path) -> str:
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise ValueError(
            f"`adapter_dir` must be a PEFT adapter folder with adapter_config.json, got {str(adapter_dir)!r}."
        )
    base_model = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base_model:
        raise ValueError(f"{config_path} names no base model: pass `base_model`.")
    return base_model


def merge_adapter(
    adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, base_model: str | os.PathLike | None = None
) -> Path:
    """Merge the adapter in `adapter_dir` into its base model (the one its config records unless `base_model` is
    given) and save a full grit-hf checkpoint in `output_dir`, with the GRIT settings the training recorded."""
    adapter_dir = Path(adapter_dir)
    base = resolve_checkpoint(base_model if base_model is not None else _recorded_base(adapter_dir))
    logger.info(f"Merging the adapter {adapter_dir} into {base}; saving to {output_dir}")
    return merge_adapter_checkpoint(base, adapter_dir, Path(output_dir))
