"""Where a model name leads: the one place that resolves `"default"`, `"default-base"`, local folders and Hugging Face
Hub names (through `huggingface_hub`, which reads the local HF cache when offline). `GritLMPreTrainedModel.from_pretrained`
calls it, so every loader of grit-hf (and every user of `from_pretrained`) takes the same names."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id
from transformers.utils import logging

from .default_model import default_base_path, default_model_path

logger = logging.get_logger(__name__)

__all__ = [
    "DEFAULT_NAMES",
    "HUB_PATTERNS",
    "resolve_checkpoint",
    "is_model_name",
    "hub_repo_id",
    "checkpoint_display_name",
    "known_grit_checkpoint",
]

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
        # offline: say so (huggingface_hub < 1.32 otherwise tries to list the files of a commit-hash revision)
        offline = bool(hub_constants.HF_HUB_OFFLINE)
        return Path(snapshot_download(text, revision=revision, allow_patterns=HUB_PATTERNS, local_files_only=offline))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        command = f"hf download {text}" + (f" --revision {revision}" if revision else "")
        what = f"{text!r} at revision {revision!r}" if revision else repr(text)
        raise ValueError(
            f"The Hub model {what} is not in the local Hugging Face cache ({hub_constants.HF_HUB_CACHE}) and cannot "
            f"be downloaded here ({type(error).__name__}). On a machine with internet access run `{command}`, then "
            "copy that machine's HF cache folder (HF_HUB_CACHE, by default ~/.cache/huggingface/hub) here; or pass a "
            "local folder."
        ) from None


# `.../models--ORG--NAME/snapshots/<commit>`: where `snapshot_download` puts a Hub repository's files.
_SNAPSHOT = re.compile(r"^models--(?P<repo>.+)$")


def hub_repo_id(folder: str | os.PathLike) -> str | None:
    """`"ORG/NAME"` if `folder` is a snapshot folder of the Hugging Face cache (`models--ORG--NAME/snapshots/REV`),
    else `None`. Only the path is read."""
    path = Path(folder)
    if path.parent.name != "snapshots":
        return None
    match = _SNAPSHOT.match(path.parent.parent.name)
    return match["repo"].replace("--", "/") if match else None


def checkpoint_display_name(name_or_folder: str | os.PathLike) -> str:
    """A readable name for a checkpoint name or folder: `"ORG/NAME"` for a Hub name or a snapshot folder of the HF
    cache (not its commit hash), else the folder's last part."""
    text = str(name_or_folder).rstrip("/")
    if text.count("/") == 1 and not os.path.exists(text):
        try:
            validate_repo_id(text)
            return text  # a Hub name
        except HFValidationError:
            pass
    return hub_repo_id(text) or Path(text).name or text


def known_grit_checkpoint(folder: str | os.PathLike) -> str | None:
    """Why the checkpoint in `folder` is known to be a GRIT model (a short reason), or `None`: a grit-hf checkpoint
    (`model_type: gritlm`), GritLM's remote code in its `auto_map` (GritLM/GritLM-7B's `modeling_gritlm7b`), a
    repository of the `GritLM` Hub organisation, or GRIT's `<|embed|>` marker in its chat template. Such a checkpoint
    embeds correctly only with GRIT semantics (bidirectional attention, mean over the text tokens, GRIT prompts),
    which a plain causal `SentenceTransformer`/`AutoModel` load does not give. Only JSON files are read."""
    folder = Path(folder)

    def read(name: str) -> dict[str, Any]:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    config = read("config.json")
    if config.get("model_type") == "gritlm":
        return "a grit-hf checkpoint"
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    modules = sorted({str(v).split(".")[0] for v in auto_map.values() if "gritlm" in str(v).lower()})
    if modules:
        return f"GritLM remote code in its auto_map ({', '.join(modules)})"
    repo = hub_repo_id(folder)
    if repo is not None and repo.split("/")[0].lower() == "gritlm":
        return f"the Hub repository {repo}"
    if "<|embed|>" in str(read("tokenizer_config.json").get("chat_template") or ""):
        return "GRIT's <|embed|> marker in its chat template"
    return None
