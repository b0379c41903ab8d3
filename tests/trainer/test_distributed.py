"""Two real CPU processes (gloo): exact cross-device gradients, and a 2-process `accelerate launch` training run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    return env


def _run(command: list[str], log: Path, timeout: int = 240) -> None:
    with open(log, "w") as stream:  # a file, not a pipe: a full pipe must never block the workers
        try:
            code = subprocess.run(
                command, env=_env(), stdout=stream, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    assert code == 0, f"exit {code}:\n" + log.read_text()[-6000:]


def test_cross_device_negatives_give_the_single_process_gradient(tiny_grit, tmp_path):
    """DDP over 2 processes, 4 queries each, passages gathered with the autograd all-gather (plain and GradCache):
    the averaged gradient equals one process's gradient on all 8 queries."""
    output = tmp_path / "grads.json"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    worker = [str(HERE / "dist_grad_worker.py"), str(tiny_grit), str(output)]
    _run(torchrun + ["--master_port", str(_free_port())] + worker, tmp_path / "torchrun.log", timeout=60)
    results = json.loads(output.read_text())
    assert set(results) == {"None", "2"}
    for result in results.values():
        assert result["params"] > 10
        assert result["max_abs_diff"] <= 1e-5 * result["max_abs_grad"]


def test_two_process_training_run(tiny_grit, tiny_data, tmp_path):
    recipe = {
        "model_name_or_path": str(tiny_grit),
        "output_dir": str(tmp_path / "run"),
        "embedding_dataset": str(tiny_data["embedding"]),
        "generative_dataset": str(tiny_data["generative"]),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "emb_batch_size": 2,
        "emb_chunk_size": 1,
        "negatives_cross_device": True,
        "bf16": False,
        "activation_checkpointing": False,
        "logging_steps": 1,
        "save_steps": 2,
        "report_to": "none",
        "disable_tqdm": True,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
    ]  # fmt: skip
    _run(launch + ["-m", "grit_hf.train", "--config", str(tmp_path / "recipe.yaml")], tmp_path / "launch.log")
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    # 2 processes x 2 generative examples per step over 16 examples: a step is 1/4 epoch (1/8 with one process)
    assert logged[0]["epoch"] == pytest.approx(0.25)
    assert all(entry["loss_rep"] > 0 and entry["loss_gen"] > 0 for entry in logged)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_type"] == "gritlm"
