"""Turning stock decoder checkpoints (folders or Hub names, GritLM-7B's layout included) into GRIT checkpoints, and
the one-liner to a `SentenceTransformer` with GRIT semantics."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoTokenizer
from transformers.utils import logging

from ..configuration_gritlm import GritLMConfig
from ..modeling_gritlm import GritLMForCausalLM
from .default_model import cache_home
from .resolve import checkpoint_display_name, resolve_checkpoint
from .saving import build_folder_once, save_grit_checkpoint

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.get_logger(__name__)

__all__ = ["convert_checkpoint", "grit_checkpoint_folder", "sentence_transformer"]


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = "auto",
    revision: str | None = None,
    **grit_settings,
) -> Path:
    """Convert a stock decoder checkpoint (Llama, Mistral, Mixtral, Qwen2/3, Gemma, ...; also one laid out like
    GritLM/GritLM-7B with an `auto_map`) into a GRIT checkpoint in `output_dir`.

    `source` is a folder or a Hugging Face Hub name (read from the local HF cache when offline). No code from
    `source` is run and only safetensors weights are read. `grit_settings` override GRIT config fields (e.g.
    `query_template=...`, `pooling_method="weightedmean"`).
    """
    folder = resolve_checkpoint(source, revision=revision)
    if not (folder / "config.json").is_file():
        raise ValueError(f"`source` must be a checkpoint with a config.json, got {str(source)!r}.")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{source} has no .safetensors weights; grit-hf reads safetensors only (never pickle).")
    unknown = [key for key in grit_settings if key not in GritLMConfig.__dataclass_fields__ or key == "text_config"]
    if unknown:
        raise ValueError(f"Unknown GRIT setting(s) {unknown}.")
    model = GritLMForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    for key, value in grit_settings.items():
        setattr(model.config, key, value)
    model.config._check_grit_settings()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    logger.info(f"Converting {source} ({model.config.text_config.model_type}) into a GRIT checkpoint at {output_dir}")
    return save_grit_checkpoint(model, tokenizer, output_dir)


def grit_checkpoint_folder(name: str | os.PathLike, revision: str | None = None) -> Path:
    """A grit-hf checkpoint folder for `name` (see `resolve_checkpoint`): the folder itself if it is one, else a
    conversion made once (atomically) into `$GRIT_HF_HOME/converted/<name>-<hash of its folder>`."""
    folder = resolve_checkpoint(name, revision=revision)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if config.get("model_type") == GritLMConfig.model_type and (folder / "modules.json").is_file():
        return folder
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    label = checkpoint_display_name(folder).replace("/", "--")  # "GritLM--GritLM-7B" for a Hub snapshot, not its hash
    target = cache_home() / "converted" / f"{label}-{digest}"
    if not (target / "config.json").is_file():
        logger.warning(f"Converting {name} into a grit-hf checkpoint at {target}; this happens once.")
    return build_folder_once(target, lambda staging: convert_checkpoint(folder, staging))


def sentence_transformer(
    name: str | os.PathLike = "default", revision: str | None = None, **kwargs
) -> SentenceTransformer:
    """A stock `SentenceTransformer` with GRIT semantics (bidirectional attention, mean over the text tokens, the
    checkpoint's query/document prompts) for `name`: a grit-hf checkpoint, a stock decoder or a GRIT model such as
    `"GritLM/GritLM-7B"` (converted once, see `grit_checkpoint_folder`). `kwargs` go to `SentenceTransformer`.

    Example:

    ```python
    >>> import grit_hf
    >>> model = grit_hf.sentence_transformer("GritLM/GritLM-7B")   # from the local HF cache when offline
    >>> model.encode_query(["how tall is the eiffel tower?"]).shape
    (1, 4096)
    ```
    """
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(grit_checkpoint_folder(name, revision=revision)), **kwargs)
