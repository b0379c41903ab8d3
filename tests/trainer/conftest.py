"""Fixtures of the trainer tests: tiny embedding/generative data files and test-friendly `GRITConfig`s."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import embedding_records, generative_records, write_jsonl


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("grit-data")
    return {
        "embedding": write_jsonl(folder / "emb.jsonl", embedding_records()),
        "generative": write_jsonl(folder / "gen.jsonl", generative_records()),
    }


@pytest.fixture(scope="session")
def tiny_grit(grit_checkpoint) -> Path:
    return grit_checkpoint("llama")


@pytest.fixture
def make_args(tmp_path, tiny_data):
    """`make_args(**overrides)` -> a `GRITConfig` for quick, deterministic CPU runs on the tiny data."""
    from grit_hf.trainer import GRITConfig

    def make(**overrides):
        kwargs = dict(
            output_dir=str(tmp_path / "out"),
            embedding_dataset=str(tiny_data["embedding"]),
            generative_dataset=str(tiny_data["generative"]),
            max_steps=3,
            per_device_train_batch_size=2,
            emb_batch_size=4,
            learning_rate=1e-3,
            bf16=False,
            activation_checkpointing=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=0,
        )
        kwargs.update(overrides)
        return GRITConfig(**kwargs)

    return make
