"""Where a model name leads: the one place that resolves `"default"`, `"default-base"`, local folders and Hugging Face
Hub names (through `huggingface_hub`, which reads the local HF cache when offline). `GritLMPreTrainedModel.from_pretrained`
calls it, so every loader of grit-hf (and every user of `from_pretrained`) takes the same names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id
from transformers.utils import logging

from .default_model import default_base_path, default_model_path

logger = logging.get_logger(__name__)

__all__ = ["DEFAULT_NAMES", "HUB_PATTERNS", "resolve_checkpoint", "is_model_name"]

DEFAULT_NAMES = ("default", "default-base")
"""`"default"`: the offline default model (SmolLM2-135M-Instruct as a GRIT checkpoint); `"default-base"`: the same
model without grit-hf's trained adapter."""

# What a GRIT checkpoint needs from a Hub repository: configs, safetensors weights, tokenizer files (never pickled
# weights or code).
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def is_model_name(value: Any) -> bool:
    """Whether `value` can name a model: a str or `os.PathLike` that is not blank (nothing is resolved)."""
    return isinstance(value, (str, os.PathLike)) and bool(str(value).strip())


def resolve_checkpoint(name: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder of the checkpoint `name`.

    Args:
        name: `"default"` (the default model, converted once into grit-hf's cache), `"default-base"` (its untrained
            base), a local folder, or a Hugging Face Hub name such as `"GritLM/GritLM-7B"` (its configs, safetensors
            and tokenizer files; with `HF_HUB_OFFLINE=1` only the local HF cache is read).
        revision: the Hub revision (branch, tag or commit); only for Hub names.

    Raises:
        TypeError: if `name` is not a str or path.
        ValueError: if `name` is neither a folder nor a valid Hub name, or if an offline Hub name is not cached (the
            message gives the command that downloads it).
    """
    if not is_model_name(name):
        raise TypeError(f"`model` must be a checkpoint folder, a Hub name or 'default', got {name!r:.80}.")
    text = str(name)
    if text in DEFAULT_NAMES:
        return default_model_path() if text == "default" else default_base_path()
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"`model` must be a checkpoint folder, got the file {text!r}.")
        return path
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise ValueError(
            f"`model` {text!r} is neither an existing folder nor a Hugging Face Hub name (like 'GritLM/GritLM-7B')."
        ) from None
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=HUB_PATTERNS))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        command = f"hf download {text}" + (f" --revision {revision}" if revision else "")
        raise ValueError(
            f"The Hub model {text!r} is not in the local Hugging Face cache ({os.environ.get('HF_HUB_CACHE') or '~'}"
            f"/.cache/huggingface/hub) and cannot be downloaded here ({type(error).__name__}). On a machine with "
            f"internet access run `{command}` (same HF_HOME), or pass a local folder."
        ) from None
