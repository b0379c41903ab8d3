"""Run by `torchrun --nproc_per_node 2` from test_distributed.py: the L_rep gradient of a DDP model with negatives
gathered across the two processes (plain and GradCache-chunked) against the single-process gradient of the same
global batch. Rank 0 writes the largest differences as JSON to the path given as the second argument."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import grit_hf  # noqa: F401
from grit_hf import GritLMForCausalLM
from grit_hf.trainer import add_embedding_forward
from grit_hf.trainer.collators import tokenize_pairs
from grit_hf.trainer.grad_cache import representation_backward

TEXTS = [
    "Paris is the capital of France.", "Berlin has many museums.", "Photosynthesis makes sugar from light.",
    "The quick brown fox jumps.", "cp copies files.", "ls lists directories.", "chgrp changes group ownership.",
    "mount attaches a filesystem.",
]  # fmt: skip


def load(path):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = GritLMForCausalLM.from_pretrained(path).train()
    model.lm_head.requires_grad_(False)  # unused by L_rep (as the trainer does in embedding mode)
    add_embedding_forward(model)
    return model, AutoTokenizer.from_pretrained(path)


def features(tokenizer, config, rows):
    queries = tokenize_pairs(tokenizer, config, [("Find the passage", TEXTS[i][:12]) for i in rows], 96)
    positives = [("", TEXTS[i]) for i in rows]
    negatives = [("", TEXTS[(i + 3) % len(TEXTS)]) for i in rows]
    return queries, tokenize_pairs(tokenizer, config, positives + negatives, 96)


def gradients(model, call, queries, passages, chunk_size, cross_device, no_sync):
    model.zero_grad(set_to_none=True)

    def embed(f):
        return call(input_ids=f.input_ids, attention_mask=f.attention_mask, prefix_lengths=f.prefix_lengths,
                    grit_embed=True)  # fmt: skip

    representation_backward(
        embed, queries, passages, torch.arange(len(queries)), 0.05, 1.0, chunk_size=chunk_size,
        cross_device=cross_device, no_sync=no_sync,
    )  # fmt: skip
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def main(path: str, output: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    model, tokenizer = load(path)
    reference_model, _ = load(path)  # loaded by every rank: from_pretrained may talk to the process group
    ddp = DistributedDataParallel(model)
    local = range(rank * 4, rank * 4 + 4)
    queries, passages = features(tokenizer, model.config, local)
    results = {}
    for chunk_size in (None, 2):
        distributed = gradients(model, ddp, queries, passages, chunk_size, True, ddp.no_sync)
        if rank == 0:
            all_queries, all_passages = features(tokenizer, model.config, range(world * 4))
            reference = gradients(reference_model, reference_model, all_queries, all_passages, None, False, None)
            assert reference.keys() == distributed.keys()
            diff = max((distributed[n] - reference[n]).abs().max().item() for n in reference)
            scale = max(reference[n].abs().max().item() for n in reference)
            results[str(chunk_size)] = {"max_abs_diff": diff, "max_abs_grad": scale, "params": len(reference)}
    if rank == 0:
        with open(output, "w") as stream:
            json.dump(results, stream)
    dist.barrier()
    del ddp  # free the DDP reducer while the process group is still alive (else teardown can hang)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
