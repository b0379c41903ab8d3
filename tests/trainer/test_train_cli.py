"""`grit-hf train` (TrlParser recipes), the example recipes, and the stock `trl sft` CLI on a grit-hf checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from trl import ModelConfig, TrlParser

from grit_hf import cli
from grit_hf.trainer import GRITConfig

from .helpers import write_jsonl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "train"


def _recipe(path: Path, tiny_grit, tiny_data, **overrides) -> Path:
    recipe = {
        "model_name_or_path": str(tiny_grit),
        "output_dir": str(path.parent / "run"),
        "embedding_dataset": str(tiny_data["embedding"]),
        "generative_dataset": str(tiny_data["generative"]),
        "max_steps": 5,
        "per_device_train_batch_size": 2,
        "emb_batch_size": 4,
        "bf16": False,
        "use_cpu": True,
        "activation_checkpointing": False,
        "logging_steps": 1,
        "save_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
    }
    recipe.update(overrides)
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_grit_hf_train_with_cli_overrides(tiny_grit, tiny_data, tmp_path):
    recipe = _recipe(tmp_path / "recipe.yaml", tiny_grit, tiny_data)
    assert cli.main(["train", "--config", str(recipe), "--max_steps", "2", "--learning_rate", "0.003"]) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # max_steps override
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["log_history"][0]["learning_rate"] == pytest.approx(0.003)
    assert {"loss_rep", "loss_gen"} <= set(state["log_history"][0])
    assert json.loads((run / "config.json").read_text())["model_type"] == "gritlm"
    assert (run / "modules.json").is_file()  # the final model is a sentence-transformers folder too


def test_a_run_continues_from_an_adapter_with_a_fresh_optimizer(tiny_grit, tiny_data, tmp_path):
    """`init_adapter`: a new run (say on a new machine, its Trainer checkpoint gone) starts from a committed adapter."""
    from safetensors.torch import load_file

    lora = ["--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--max_steps", "2"]
    first = _recipe(tmp_path / "first.yaml", tiny_grit, tiny_data, output_dir=str(tmp_path / "first"))
    assert cli.main(["train", "--config", str(first), *lora, "--learning_rate", "0.01"]) == 0
    adapter = load_file(tmp_path / "first" / "adapter_model.safetensors")
    assert any(float(t.abs().max()) > 0 for name, t in adapter.items() if "lora_B" in name)  # trained
    second = _recipe(tmp_path / "second.yaml", tiny_grit, tiny_data, output_dir=str(tmp_path / "second"))
    argv = ["train", "--config", str(second), "--init_adapter", str(tmp_path / "first"), "--max_steps", "1"]
    assert cli.main([*argv, "--learning_rate", "0.0", "--warmup_steps", "0"]) == 0
    continued = load_file(tmp_path / "second" / "adapter_model.safetensors")
    assert continued.keys() == adapter.keys()
    assert all(bool((continued[name] == weight).all()) for name, weight in adapter.items())  # lr 0: unchanged
    state = json.loads((tmp_path / "second" / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1  # a fresh schedule


def test_grit_hf_train_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--emb_chunk_size", "--negatives_cross_device", "--model_name_or_path", "--use_peft"):
        assert flag in text


@pytest.mark.parametrize("name", ["smollm2_manpages.yaml", "lora.yaml"])
def test_example_recipes_parse(name):
    args, model_args = TrlParser((GRITConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(EXAMPLES / name), "--use_cpu", "true", "--bf16", "false"]
    )
    assert args.mode == "unified" and args.embedding_dataset and model_args.model_name_or_path == "default"


@pytest.mark.parametrize("name", ["accelerate_ddp.yaml", "accelerate_fsdp.yaml", "accelerate_deepspeed_zero3.yaml"])
def test_example_accelerate_configs_are_valid(name):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(EXAMPLES / name))
    assert config.num_processes == 8 and config.mixed_precision == "bf16"


def test_stock_trl_sft_fine_tunes_a_grit_checkpoint(tiny_grit, tmp_path):
    """`trl sft` (which never imports grit_hf) loads the checkpoint through its remote-code shim, fine-tunes it on
    chat data, and saves a grit-hf checkpoint again."""
    config = json.loads((Path(tiny_grit) / "config.json").read_text())
    assert "AutoModelForCausalLM" in config.get("auto_map", {}), "the checkpoint has no remote-code shim"
    data = tmp_path / "chat"
    data.mkdir()
    chats = [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello."}]}
             for i in range(8)]  # fmt: skip
    write_jsonl(data / "train.jsonl", chats)
    out = tmp_path / "sft"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", WANDB_DISABLED="true")
    command = [
        sys.executable, "-c", "import sys; from trl.cli import main; sys.exit(main())", "sft", "--model_name_or_path", str(tiny_grit), "--dataset_name", str(data),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--trust_remote_code",
        "--bf16", "false", "--use_cpu", "true", "--activation_checkpointing", "false", "--report_to", "none",
        "--save_strategy", "no", "--learning_rate", "1e-3",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "gritlm" and "AutoModel" in saved["auto_map"]

    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoModelForCausalLM

    from grit_hf import GritLMForCausalLM, GritLMModel

    tuned = AutoModelForCausalLM.from_pretrained(out)
    base = GritLMForCausalLM.from_pretrained(tiny_grit)
    assert isinstance(tuned, GritLMForCausalLM)
    assert not torch.equal(tuned.lm_head.weight, base.lm_head.weight)  # it was trained
    embedder = AutoModel.from_pretrained(out)
    assert isinstance(embedder, GritLMModel) and embedder.encode(["Hello."]).shape == (1, 64)
    assert SentenceTransformer(str(out), device="cpu").encode(["Hello."]).shape == (1, 64)
