"""Two real CPU processes (gloo): exact cross-device gradients, and a 2-process `accelerate launch` training run."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import yaml
from process_tree import Launch, run_to_end

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
    """Run `command` with its output in `log`; fail with the log's end if it fails, runs past `timeout` (then every
    process of the launch, workers included, is aborted so that each prints where it was stuck, then killed), or
    leaves a process behind."""
    code, left = run_to_end(Launch(command, _env()), log, timeout)
    assert code == 0 and not left, f"exit {code}, left behind {left}:\n" + log.read_text()[-8000:]


def test_a_launch_that_runs_past_its_timeout_leaves_no_process_behind(tmp_path):
    """A launcher whose worker starts its own session (as torch elastic starts each worker) and both hang: on the
    timeout, the worker is ended too, not only the launcher's process group."""
    worker = "import time; print('worker', flush=True); time.sleep(600)"
    launcher = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {worker!r}], start_new_session=True)\n"
        "time.sleep(600)\n"
    )
    log = tmp_path / "launch.log"
    launch = Launch([sys.executable, "-c", launcher], _env())
    code, _ = run_to_end(launch, log, timeout=10)
    assert code == "timeout"
    assert "worker" in log.read_text()
    assert launch.processes() == []


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
    """Run a training with `launcher`: "single" (`python -m grit_hf.train`), "ddp" or "fsdp" (2 processes under
    `accelerate launch`, through dist_train_worker.py, which also records what the run left of its distributed state)
    or "grit-hf" (DDP, the `grit-hf train` command as users launch it); return the logged steps and the output."""
    output = tmp_path / name
    recipe = {
        **recipe,
        "output_dir": str(output),
        "per_device_train_batch_size": per_device,
        "emb_batch_size": per_device,
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    program = {
        "single": ["-m", "grit_hf.train"],
        "ddp": [str(HERE / "dist_train_worker.py")],
        "fsdp": [str(HERE / "dist_train_worker.py")],
        "grit-hf": [str(Path(sys.executable).with_name("grit-hf")), "train"],
    }[launcher]
    launch = [sys.executable]
    if launcher != "single":
        launch += ["-m", "accelerate.commands.launch", "--main_process_port", str(_free_port())]
        if launcher == "fsdp":
            (tmp_path / "accelerate_fsdp.yaml").write_text(yaml.safe_dump(FSDP_CPU))
            launch += ["--config_file", str(tmp_path / "accelerate_fsdp.yaml")]
        else:
            launch += ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
            launch += ["--dynamo_backend", "no"]
    _run(launch + program + ["--config", str(tmp_path / f"{name}.yaml")], tmp_path / f"{name}.log")
    state = json.loads((output / f"checkpoint-{recipe['max_steps']}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry], output


def _recipe(tiny_grit: Path, tiny_data: dict[str, Path], max_steps: int) -> dict:
    return {
        "model_name_or_path": str(tiny_grit), "embedding_dataset": str(tiny_data["embedding"]),
        "generative_dataset": str(tiny_data["generative"]), "max_steps": max_steps, "learning_rate": 0.05,
        "optim": "sgd", "negatives_cross_device": True, "gen_loss_aggregation": "token", "bf16": False,
        "activation_checkpointing": False, "logging_steps": 1, "save_steps": max_steps, "report_to": "none",
        "disable_tqdm": True, "seed": 0,
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_loss_curve(launcher, tiny_grit, tiny_data, tmp_path):
    """2 CPU processes (gloo; DDP, or FSDP2 sharding the weights) with 2 examples each give the loss curve and the
    weights of one process with 4: loss scaling across processes, cross-device negatives and sharded updates agree.
    Tolerance: 1e-5 relative on the losses, 1e-5 absolute on the weights (float summation order only). Plain SGD:
    its update is linear in the gradient, so a wrong loss scale shows in the weights, and summation-order noise stays
    ~lr x 1e-7 (Adam divides by the gradient's running size: it would hide a scale error and blow noise up in
    near-zero gradients, which failed the weights at 1.2e-5 on one CI machine)."""
    recipe = _recipe(tiny_grit, tiny_data, max_steps=3)
    single, single_out = _train(tmp_path, "single", "single", recipe, per_device=4)
    multi, multi_out = _train(tmp_path, launcher, launcher, recipe, per_device=2)
    assert [entry["step"] for entry in multi] == [1, 2, 3]
    for rank in (0, 1):  # `train` ended the distributed state itself, in order, before it returned
        left = json.loads((multi_out / f"teardown-{rank}.json").read_text())
        assert left == {"process_group": False, "ddp_models": 0, "gloo_threads": 0}, (rank, left)
    for ours, reference in zip(multi, single):
        for key in ("loss", "loss_rep", "loss_gen", "grad_norm"):
            assert ours[key] == pytest.approx(reference[key], rel=1e-5), (key, ours, reference)
        assert ours["epoch"] == pytest.approx(reference["epoch"])
    from grit_hf import GritLMForCausalLM

    trained = GritLMForCausalLM.from_pretrained(multi_out).state_dict()
    for name, weight in GritLMForCausalLM.from_pretrained(single_out).state_dict().items():
        assert (trained[name] - weight).abs().max() <= 1e-5, name
    assert json.loads((multi_out / "config.json").read_text())["model_type"] == "gritlm"


@pytest.mark.slow
def test_grit_hf_train_under_accelerate_launch_exits(tiny_grit, tiny_data, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 ... grit-hf train --config recipe.yaml`, as users run it:
    the finished run exits, and no process of it is left behind."""
    steps, _ = _train(tmp_path, "grit-hf", "grit-hf", _recipe(tiny_grit, tiny_data, max_steps=1), per_device=2)
    assert [entry["step"] for entry in steps] == [1]
