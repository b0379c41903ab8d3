"""Merging a PEFT adapter into a GRIT checkpoint folder (the trained default model; `grit_hf.checkpoint.merge_adapter`).

Only the stock decoder class is built (GRIT checkpoints keep the stock weight layout, and adapters trained on a GRIT
model name the same modules), so merging sits below the GRIT model classes and serves the default model, whose name
resolution leads here. Needs `peft`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from ..configuration_gritlm import GritLMConfig
from .sentence_transformers import write_checkpoint_files

__all__ = [
    "ADAPTER_GRIT_CONFIG",
    "adapter_settings",
    "merge_adapter_checkpoint",
    "recorded_base_model",
]

ADAPTER_GRIT_CONFIG = "grit_config.json"
"""Written next to a PEFT adapter by `GRITTrainer`: the GRIT settings the training gave the model (e.g.
`cache_attention`), applied when the adapter is merged."""


def adapter_settings(adapter_dir: str | os.PathLike) -> dict:
    """The GRIT settings recorded next to an adapter (`ADAPTER_GRIT_CONFIG`; `{}` without one), checked against the
    fields of `GritLMConfig`."""
    path = Path(adapter_dir) / ADAPTER_GRIT_CONFIG
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    unknown = [key for key in settings if key not in GritLMConfig.__dataclass_fields__ or key == "text_config"]
    if unknown:
        raise ValueError(f"{path} sets unknown GRIT settings {unknown}.")
    return settings


def merge_adapter_checkpoint(base: Path, adapter_dir: Path, output_dir: Path) -> Path:
    """Merge the PEFT adapter in `adapter_dir` into the GRIT checkpoint folder `base` and save the result in
    `output_dir`, with the adapter's GRIT settings (`adapter_settings`) applied."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = GritLMConfig.from_pretrained(base)
    for key, value in adapter_settings(adapter_dir).items():
        setattr(config, key, value)
    config._check_grit_settings()
    stock = AutoModelForCausalLM.from_pretrained(base, config=config.text_config)
    with warnings.catch_warnings():  # peft reads a property transformers 5.x deprecated: theirs, not the user's
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        merged = PeftModel.from_pretrained(stock, str(adapter_dir)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base)
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir, safe_serialization=True)
    config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_checkpoint_files(output_dir, config, tokenizer=tokenizer)
    return output_dir


def recorded_base_model(adapter_dir: str | os.PathLike) -> str:
    """The base model an adapter's `adapter_config.json` records."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise ValueError(
            f"`adapter_dir` must be a PEFT adapter folder with adapter_config.json, got {str(adapter_dir)!r}."
        )
    base_model = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base_model:
        raise ValueError(f"{config_path} names no base model: pass `base_model`.")
    return base_model
