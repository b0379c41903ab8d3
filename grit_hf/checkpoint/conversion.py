"""Turning stock decoder checkpoints (folders or Hub names, GritLM-7B's layout included) into GRIT checkpoints, the
one-liner to a `SentenceTransformer` with GRIT semantics, and the stock-config export that plain sentence-transformers
loads with GRIT semantics without grit-hf."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoTokenizer
from transformers.utils import logging

from ..configuration_gritlm import GritLMConfig
from ..folders.build import build_folder_once
from ..folders.default_model import cache_home
from ..folders.resolve import checkpoint_display_name, resolve_checkpoint
from ..folders.sentence_transformers import SHIM_MODULE
from ..modeling_gritlm import GritLMForCausalLM
from .saving import save_grit_checkpoint

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.get_logger(__name__)

__all__ = ["convert_checkpoint", "export_stock_sentence_transformer", "grit_checkpoint_folder", "sentence_transformer"]


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


def export_stock_sentence_transformer(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = "auto",
    revision: str | None = None,
    **grit_settings,
) -> Path:
    """Write a checkpoint that *plain* sentence-transformers (no grit-hf installed, no remote code) loads with GRIT
    semantics, and that stays the stock family for transformers.

    The folder holds the stock family's `config.json` (e.g. `model_type: mistral`, `architectures:
    [MistralForCausalLM]`) with `is_causal: true`, the weights and tokenizer, and sentence-transformers files whose
    `sentence_bert_config.json` loads the config with `config_kwargs={"is_causal": false}`: transformers (5.x) then
    builds the decoder with bidirectional attention for sentence-transformers only, and its `Pooling`
    (`include_prompt: false`) and prompts are GRIT's. `AutoModelForCausalLM.from_pretrained(out)` is the unchanged
    causal stock model; `AutoModel.from_pretrained(out)` is the stock causal base model (pass `is_causal=False` for
    GRIT's bidirectional hidden states). Differences from `model.encode`: sentence-transformers pools in the model's
    dtype (grit-hf pools in fp32), and a transformers release that ignores `config.is_causal` would embed causally
    without a warning. `grit_settings` are as in `convert_checkpoint`; `weightedmean` pooling has no equivalent.
    """
    output_dir = Path(output_dir)
    if grit_settings.get("pooling_method") == "weightedmean":
        raise ValueError("`pooling_method='weightedmean'` has no exact sentence-transformers equivalent.")
    convert_checkpoint(source, output_dir, dtype=dtype, revision=revision, **grit_settings)
    config_path = output_dir / "config.json"
    grit_config = json.loads(config_path.read_text(encoding="utf-8"))
    text_config = dict(grit_config["text_config"])
    stock = GritLMConfig.from_pretrained(output_dir).text_config
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    stock_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(stock)]
    text_config.update(architectures=[stock_class.__name__], is_causal=True)
    for key in ("dtype", "transformers_version"):
        if key in grit_config:
            text_config[key] = grit_config[key]
    text_config.pop("auto_map", None)
    config_path.write_text(json.dumps(text_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (output_dir / f"{SHIM_MODULE}.py").unlink(missing_ok=True)
    st_config_path = output_dir / "sentence_bert_config.json"
    st_config = json.loads(st_config_path.read_text(encoding="utf-8"))
    st_config["config_kwargs"] = {"is_causal": grit_config.get("embedding_attention", "bidirectional") == "causal"}
    st_config_path.write_text(json.dumps(st_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info(f"Wrote a stock-config GRIT export of {source} to {output_dir}")
    return output_dir
