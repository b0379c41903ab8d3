"""Two real CPU processes (gloo): exact cross-device gradients, and a 2-process `accelerate launch` training run."""

from __future__ import annotations

import json
import os
import signal
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
    env = dict(
        os.environ, PYTHONFAULTHANDLER="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    return env


def _run(command: list[str], log: Path, timeout: int = 240) -> None:
    """Run `command` with its output in `log`; on a timeout, abort every process of the launch so that each prints
    where it was stuck (`PYTHONFAULTHANDLER`), and fail with the log's end."""
    with open(log, "w") as stream:  # a file, not a pipe: a full pipe must never block the workers
        process = subprocess.Popen(
            command, env=_env(), stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGABRT)
            process.wait(timeout=30)
            code = "timeout"
    assert code == 0, f"exit {code}:\n" + log.read_text()[-8000:]


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


FSDP_CPU = {
    "compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "num_machines": 1, "num_processes": 2,
    "machine_rank": 0, "mixed_precision": "no", "use_cpu": True, "rdzv_backend": "static", "same_network": True,
    "fsdp_config": {
        "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_cpu_ram_efficient_loading": False,
        "fsdp_offload_params": False, "fsdp_reshard_after_forward": True, "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_activation_checkpointing": False,
    },
}  # fmt: skip


def _train(tmp_path: Path, name: str, launcher: str, recipe: dict, per_device: int) -> tuple[list[dict], Path]:
    """Run `grit_hf.train` with `launcher` ("single", "ddp" or "fsdp"); return the logged steps and the output."""
    output = tmp_path / name
    recipe = {
        **recipe,
        "output_dir": str(output),
        "per_device_train_batch_size": per_device,
        "emb_batch_size": per_device,
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "grit_hf.train", "--config", str(tmp_path / f"{name}.yaml")]
    if launcher != "single":
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(_free_port())]
        if launcher == "fsdp":
            (tmp_path / "accelerate_fsdp.yaml").write_text(yaml.safe_dump(FSDP_CPU))
            launch += ["--config_file", str(tmp_path / "accelerate_fsdp.yaml")]
        else:
            launch += ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
            launch += ["--dynamo_backend", "no"]
        command = launch + command[1:]
    _run(command, tmp_path / f"{name}.log")
    state = json.loads((output / f"checkpoint-{recipe['max_steps']}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry], output


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_loss_curve(launcher, tiny_grit, tiny_data, tmp_path):
    """2 CPU processes (gloo; DDP, or FSDP2 sharding the weights) with 2 examples each give the loss curve and the
    weights of one process with 4: loss scaling across processes, cross-device negatives and sharded updates agree.
    Tolerance: 1e-5 relative on the losses, 1e-5 absolute on the weights (float summation order only). Plain SGD:
    its update is linear in the gradient, so a wrong loss scale shows in the weights, and summation-order noise stays
    ~lr x 1e-7 (Adam divides by the gradient's running size: it would hide a scale error and blow noise up in
    near-zero gradients, which failed the weights at 1.2e-5 on one CI machine)."""
    recipe = {
        "model_name_or_path": str(tiny_grit), "embedding_dataset": str(tiny_data["embedding"]),
        "generative_dataset": str(tiny_data["generative"]), "max_steps": 3, "learning_rate": 0.05, "optim": "sgd",
        "negatives_cross_device": True, "gen_loss_aggregation": "token", "bf16": False, "activation_checkpointing": False,
        "logging_steps": 1, "save_steps": 3, "report_to": "none", "disable_tqdm": True, "seed": 0,
    }  # fmt: skip
    single, single_out = _train(tmp_path, "single", "single", recipe, per_device=4)
    multi, multi_out = _train(tmp_path, launcher, launcher, recipe, per_device=2)
    assert [entry["step"] for entry in multi] == [1, 2, 3]
    for ours, reference in zip(multi, single):
        for key in ("loss", "loss_rep", "loss_gen", "grad_norm"):
            assert ours[key] == pytest.approx(reference[key], rel=1e-5), (key, ours, reference)
        assert ours["epoch"] == pytest.approx(reference["epoch"])
    from grit_hf import GritLMForCausalLM

    trained = GritLMForCausalLM.from_pretrained(multi_out).state_dict()
    for name, weight in GritLMForCausalLM.from_pretrained(single_out).state_dict().items():
        assert (trained[name] - weight).abs().max() <= 1e-5, name
    assert json.loads((multi_out / "config.json").read_text())["model_type"] == "gritlm"
