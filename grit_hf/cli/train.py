"""`grit-hf train`: GRIT fine-tuning from a YAML recipe (TRL style), on one process or many.

```bash
# one process
grit-hf train --config examples/train/smollm2_manpages.yaml
# CLI flags override the recipe (names as in `trl sft`: model_name_or_path, output_dir, max_steps, learning_rate)
grit-hf train --config examples/train/smollm2_manpages.yaml --max_steps 10 --output_dir runs/try
# several processes (DDP; FSDP and DeepSpeed ZeRO-3 configs are in examples/train/)
accelerate launch --config_file examples/train/accelerate_ddp.yaml -m grit_hf.train --config recipe.yaml
# LoRA / QLoRA through TRL's ModelConfig flags
grit-hf train --config recipe.yaml --use_peft --lora_r 16 [--load_in_4bit]
```

The recipe holds the fields of `GRITConfig` (every `SFTConfig`/`TrainingArguments` field, plus the GRIT objective and
data) and of TRL's `ModelConfig` (`model_name_or_path`, `dtype`, `use_peft`, `lora_*`, `load_in_4bit`, ...), and an
optional `env:` block. `model_name_or_path: default` is the offline default model (SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

__all__ = ["main", "make_parser", "train", "add_parser"]


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The `TrlParser` over `(GRITConfig, ModelConfig)` (or a `train` subparser of a `TrlParser` subparsers action)."""
    from trl import ModelConfig, TrlParser

    from ..trainer import GRITConfig

    dataclass_types = (GRITConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("train", help="GRIT fine-tuning.", dataclass_types=dataclass_types)
    description = (
        "GRIT fine-tuning. Give a YAML recipe with --config recipe.yaml (GRITConfig and ModelConfig fields, optional "
        "env: block); the flags below override it."
    )
    return TrlParser(dataclass_types, prog=prog, description=description)


def _resume_value(value: str | None) -> str | bool | None:
    if isinstance(value, str) and value.lower() in ("true", "last"):
        return True
    return None if value in (None, "", "false", "False") else value


def train(training_args, model_args):
    """Load the model named by `model_args`, train it with `GRITTrainer` and save the result in `output_dir`."""
    import torch
    from transformers import AutoTokenizer
    from trl import get_peft_config, get_quantization_config

    from ..folders.resolve import resolve_checkpoint
    from ..modeling_gritlm import GritLMForCausalLM
    from ..trainer import GRITTrainer

    if not model_args.model_name_or_path:
        raise ValueError(
            "Set `model_name_or_path` (a GRIT or stock decoder checkpoint folder, a Hub name, or 'default')."
        )
    path = resolve_checkpoint(model_args.model_name_or_path, revision=model_args.model_revision)
    dtype = model_args.dtype
    model_kwargs = dict(
        attn_implementation=model_args.attn_implementation,
        dtype=dtype if dtype in ("auto", None) else getattr(torch, dtype),
    )
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:  # QLoRA: bitsandbytes on CUDA, each process on its own GPU
        from accelerate import PartialState

        model_kwargs.update(
            quantization_config=quantization_config, device_map={"": PartialState().local_process_index}
        )
    model_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = None
    model = GritLMForCausalLM.from_pretrained(path, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    peft_config = get_peft_config(model_args)
    if training_args.init_adapter:  # continue an earlier run's adapter (its own LoRA settings win)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, training_args.init_adapter, is_trainable=True)
        peft_config = None
    trainer = GRITTrainer(model, args=training_args, processing_class=tokenizer, peft_config=peft_config)
    trainer.train(resume_from_checkpoint=_resume_value(training_args.resume_from_checkpoint))
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        print(f"Saved the GRIT model to {training_args.output_dir}", file=sys.stderr)
    trainer.end()  # the distributed state ends here, in order, not in destructors at exit (see trainer/teardown.py)
    return trainer


def main(argv: list[str] | None = None) -> int:
    """Parse `--config recipe.yaml` plus CLI overrides (TrlParser) and train."""
    parser = make_parser(prog="grit-hf train")
    training_args, model_args = parser.parse_args_and_config(argv)
    train(training_args, model_args)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    return main(list(args.unknown_args))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `grit-hf train`; every argument (and `--help`) is handed to the TrlParser."""
    parser = subparsers.add_parser(
        "train",
        help="GRIT fine-tuning from a YAML recipe (--config recipe.yaml; see --help for every field).",
        add_help=False,
    )
    parser.set_defaults(func=_cmd_train, accepts_unknown_args=True)


if __name__ == "__main__":
    raise SystemExit(main())
