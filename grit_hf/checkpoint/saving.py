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

__all__ = ["save_grit_checkpoint", "build_folder_once", "merge_adapter_checkpoint", "ADAPTER_GRIT_CONFIG"]

ADAPTER_GRIT_CONFIG = "grit_config.json"
"""Written next to a PEFT adapter by `GRITTrainer`: the GRIT settings the training gave the model (e.g.
`cache_attention`), applied when the adapter is merged."""


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


def merge_adapter_checkpoint(base: Path, adapter_dir: Path, output_dir: Path) -> Path:
    """Merge the PEFT adapter in `adapter_dir` into the GRIT checkpoint folder `base` and save the result in
    `output_dir`, with the GRIT settings of the adapter's `grit_config.json` (if any) applied.

    Only the stock decoder class is built (GRIT checkpoints keep the stock weight layout, and adapters trained on a
    GRIT model name the same modules), so this also serves the default model, whose name resolution sits below the
    GRIT model classes. Needs `peft`.
    """
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..configuration_gritlm import GritLMConfig
    from .sentence_transformers import write_checkpoint_files

    config = GritLMConfig.from_pretrained(base)
    settings_path = Path(adapter_dir) / ADAPTER_GRIT_CONFIG
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    unknown = [key for key in settings if key not in GritLMConfig.__dataclass_fields__ or key == "text_config"]
    if unknown:
        raise ValueError(f"{settings_path} sets unknown GRIT settings {unknown}.")
    for key, value in settings.items():
        setattr(config, key, value)
    config._check_grit_settings()
    stock = AutoModelForCausalLM.from_pretrained(base, config=config.text_config)
    merged = PeftModel.from_pretrained(stock, str(adapter_dir)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base)
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir, safe_serialization=True)
    config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_checkpoint_files(output_dir, config, tokenizer=tokenizer)
    return output_dir
