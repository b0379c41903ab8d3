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
    "expand_adapter_rank",
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
    if getattr(config, "quantization_config", None) is not None:
        raise ValueError(
            f"Merging an adapter needs dense weights, but {base} was saved quantized. Merge into its dense checkpoint, "
            "then quantize when loading the result (`quantization=...`)."
        )
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


def expand_adapter_rank(
    adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, rank: int, seed: int = 0
) -> Path:
    """Write a LoRA adapter of a higher `rank` that computes exactly what the adapter in `adapter_dir` computes, so a
    run can continue from it with more capacity (e.g. `GRITConfig.init_adapter`).

    Each `lora_A` gets `rank - r` new rows (peft's default initialisation, Kaiming-uniform) and each `lora_B` as many
    zero columns, so the added directions start at zero and train; `lora_alpha` grows with the rank so that the scale
    `lora_alpha / r` stays the same. peft has no such operation (`add_weighted_adapter(..., "cat")` sums adapters,
    it does not widen one), so it is written here. Other files of the folder (e.g. `grit_config.json`) are copied.
    """
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    old = int(config["r"])
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= old:
        raise ValueError(f"`rank` must be an int above the adapter's rank {old}, got {rank!r}.")
    if config.get("peft_type") != "LORA" or config.get("rank_pattern") or config.get("use_rslora"):
        raise ValueError(f"{adapter_dir} is not a plain LoRA adapter (one rank, no rsLoRA): cannot widen it.")
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, tensor in load_file(adapter_dir / "adapter_model.safetensors").items():
        if ".lora_A." in name:
            extra = torch.empty(rank - old, tensor.shape[1], dtype=torch.float32)
            bound = 1 / tensor.shape[1] ** 0.5  # kaiming_uniform_(a=sqrt(5)), as peft initialises lora_A
            extra.uniform_(-bound, bound, generator=generator)
            tensor = torch.cat([tensor, extra.to(tensor.dtype)])
        elif ".lora_B." in name:
            tensor = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], rank - old)], dim=1)
        weights[name] = tensor.contiguous()
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in adapter_dir.iterdir():
        if path.is_file() and path.name not in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(path, output_dir / path.name)
    config["lora_alpha"] = config["lora_alpha"] * rank / old
    config["r"] = rank
    (output_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(weights, output_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    return output_dir
