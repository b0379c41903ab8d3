from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import yaml
from trl import ModelConfig, TrlParser

from grit_hf.trainer import GRITConfig

GRIT_FIELDS = (
    "mode", "lambda_rep", "lambda_gen", "temperature", "gen_loss_aggregation", "gen_sub_batch_size",
    "embedding_dataset", "generative_dataset", "emb_batch_size", "emb_chunk_size", "num_hard_negatives",
    "query_max_length", "passage_max_length", "negatives_cross_device", "same_dataset_negatives",
)  # fmt: skip


def _config(tmp_path, **kwargs) -> GRITConfig:
    return GRITConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "both"}, "Invalid `mode`: 'both'"),
        ({"gen_loss_aggregation": "tokens"}, "Invalid `gen_loss_aggregation`: 'tokens'"),
        ({"temperature": 0.0}, "`temperature` must be positive"),
        ({"lambda_rep": -1.0}, "`lambda_rep` must be a finite number >= 0"),
        ({"emb_batch_size": 0}, "`emb_batch_size` must be a positive int"),
        ({"emb_chunk_size": 0}, "`emb_chunk_size` must be a positive int or None"),
        ({"num_hard_negatives": -1}, "`num_hard_negatives` must be >= 0"),
        ({"loss_type": "dft"}, "`loss_type` must be 'nll'"),
        ({"lambda_rep": 0.0, "lambda_gen": 0.0}, "nothing to train"),
        ({"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": True}}, "reentrant"),
    ],
)
def test_invalid_values_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(tmp_path, **kwargs)


def test_defaults(tmp_path):
    config = _config(tmp_path)
    assert (config.mode, config.temperature, config.gen_loss_aggregation) == ("unified", 0.02, "mixed")
    assert config.emb_chunk_size is None and config.negatives_cross_device is False


def test_round_trip(tmp_path):
    config = _config(tmp_path, mode="embedding", temperature=0.05, emb_chunk_size=16, gen_sub_batch_size=4)
    init = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    rebuilt = GRITConfig(**init)
    assert {k: getattr(rebuilt, k) for k in GRIT_FIELDS} == {k: getattr(config, k) for k in GRIT_FIELDS}
    torch.save(config, tmp_path / "training_args.bin")  # what every checkpoint holds
    loaded = torch.load(tmp_path / "training_args.bin", weights_only=False)
    assert {k: getattr(loaded, k) for k in GRIT_FIELDS} == {k: getattr(config, k) for k in GRIT_FIELDS}


def test_trl_parser_yaml_cli_overrides_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("GRIT_TEST_ENV", raising=False)
    recipe = {
        "model_name_or_path": "default",
        "output_dir": str(tmp_path / "out"),
        "max_steps": 7,
        "learning_rate": 1e-4,
        "emb_batch_size": 32,
        "mode": "embedding",
        "use_cpu": True,
        "env": {"GRIT_TEST_ENV": "on"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    parser = TrlParser((GRITConfig, ModelConfig))
    args, model_args = parser.parse_args_and_config(
        ["--config", str(tmp_path / "recipe.yaml"), "--max_steps", "3", "--emb_chunk_size", "8", "--use_peft"]
    )
    assert (args.max_steps, args.learning_rate, args.emb_batch_size, args.emb_chunk_size) == (3, 1e-4, 32, 8)
    assert args.mode == "embedding" and model_args.model_name_or_path == "default" and model_args.use_peft
    assert os.environ["GRIT_TEST_ENV"] == "on"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"output_dir": str(tmp_path), "emb_batchsize": 3}))
    with pytest.raises(ValueError, match="emb_batchsize"):
        parser.parse_args_and_config(["--config", str(tmp_path / "bad.yaml")])


def test_gradcache_is_refused_with_deepspeed(make_args):
    """DeepSpeed runs one backward per step: GradCache's several backwards are refused when the config is built."""
    with pytest.raises(ValueError, match="`emb_chunk_size` \\(GradCache\\).*DeepSpeed"):
        make_args(deepspeed={"zero_optimization": {"stage": 2}}, emb_chunk_size=4)
    assert make_args(emb_chunk_size=4).emb_chunk_size == 4
