"""End a training run's distributed state in an order that cannot deadlock, so that a finished run always exits.

Left to destructors, a 2-process gloo run could hang at exit: the main thread freed the DDP `Reducer`, whose process
group was its last owner, and `~ProcessGroupGloo` waited for the group's lock while holding the GIL; a gloo worker
thread held that lock while freeing a finished collective (the last barrier, and through it an all-gather whose
tensors still had Python objects), and waited for the GIL.
"""

from __future__ import annotations

import gc
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["end_training"]


def end_training(trainer: Any) -> None:
    """Finish `trainer`'s trackers and end its distributed state, in this order:

    1. a barrier whose `Work` this thread keeps: every collective still in flight completes, and no gloo thread
       frees one of them (which needs the GIL) from then on;
    2. drop the wrapped model (a DDP `Reducer` owns the process group) and the accelerator's prepared objects;
    3. destroy the process group (its gloo threads stop and are joined) and finish the trackers;
    4. free the barrier's `Work` here, with the GIL, after the gloo threads are gone.

    Call it once, after everything that needs the other processes (`train`, `save_model`, ...). Without a process
    group only the trackers are finished.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        trainer.accelerator.end_training()
        return
    barrier = dist.barrier(async_op=True)
    barrier.wait()
    trainer.model_wrapped = trainer.model
    trainer.accelerator.free_memory()
    gc.collect()
    trainer.accelerator.end_training()
    gc.collect()
    del barrier
