"""Run by `accelerate launch` from test_distributed.py: `python -m grit_hf.train --config recipe.yaml` (the same parser
and `train`), then, with the returned trainer still alive, a record of what the run left of its distributed state.
Each rank writes it as JSON to `<output_dir>/teardown-<rank>.json`. `train` must end that state itself, in order
(see grit_hf/trainer/teardown.py), not leave it to destructors at exit."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from grit_hf.cli.train import make_parser, train


def distributed_state() -> dict:
    """The process group, the DDP models (each owns a `Reducer`) and gloo's threads still alive."""
    gc.collect()
    threads = [Path(f"/proc/self/task/{tid}/comm").read_text().strip() for tid in os.listdir("/proc/self/task")]
    return {
        "process_group": dist.is_initialized(),
        "ddp_models": sum(isinstance(obj, DistributedDataParallel) for obj in gc.get_objects()),
        "gloo_threads": threads.count("gloo_tcp_loop"),
    }


if __name__ == "__main__":
    training_args, model_args = make_parser().parse_args_and_config(sys.argv[1:])
    rank = os.environ["RANK"]
    trainer = train(training_args, model_args)
    state = distributed_state()
    Path(training_args.output_dir, f"teardown-{rank}.json").write_text(json.dumps(state))
