"""Peak memory of one GRIT embedding step (InfoNCE forward + backward) with and without GradCache chunking.

For each embedding batch size (queries; each with one positive passage, in-batch negatives) the step runs once
unchunked and once with `--chunk-size`, each in a fresh process so peak figures do not leak between runs. On CUDA the
figure is `torch.cuda.max_memory_allocated` during the step; on CPU it is the growth of the process's peak RSS
(`ru_maxrss`) over its RSS after loading the model and a warm-up step. It also checks that the chunked gradient equals
the unchunked one on the smallest batch.

    python benchmarks/gradcache_memory.py --output benchmarks/results/gradcache_memory_cpu
    python benchmarks/gradcache_memory.py --model default --query-length 64 --passage-length 256 \\
        --batch-sizes 64 256 1024 4096 --output benchmarks/results/gradcache_memory_h100   # on a GPU

The model is a random Llama (`--hidden-size`, `--layers`) unless `--model` names a checkpoint ("default" is
SmolLM2-135M-Instruct). Inputs are random token ids of fixed lengths (memory depends on shapes, not on the text).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from report import command_line, environment, write_report

__all__ = ["main"]


def _build_model(args):
    import torch
    from transformers import LlamaConfig

    from grit_hf import GritLMConfig, GritLMForCausalLM
    from grit_hf.folders.resolve import resolve_checkpoint

    torch.manual_seed(0)
    if args.model:
        model = GritLMForCausalLM.from_pretrained(resolve_checkpoint(args.model), dtype=torch.float32)
    else:
        text_config = LlamaConfig(
            vocab_size=8192, hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
            num_hidden_layers=args.layers, num_attention_heads=max(args.hidden_size // 64, 1),
            num_key_value_heads=max(args.hidden_size // 64, 1), max_position_embeddings=4096,
        )  # fmt: skip
        model = GritLMForCausalLM(GritLMConfig(text_config=text_config))
    return model.to(args.device).train()


def _features(batch: int, length: int, vocab: int, device: str, seed: int):
    import torch

    from grit_hf.trainer.collators import EmbeddingFeatures

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch, length), generator=generator)
    mask = torch.ones_like(input_ids)
    return EmbeddingFeatures(input_ids, mask, torch.full((batch,), 4)).to(device)


def _step(model, batch: int, chunk_size: int | None, args) -> float:
    import torch

    from grit_hf.trainer.grad_cache import representation_backward

    vocab = model.config.text_config.vocab_size
    queries = _features(batch, args.query_length, vocab, args.device, 1)
    passages = _features(batch, args.passage_length, vocab, args.device, 2)

    def embed(f):
        return model(input_ids=f.input_ids, attention_mask=f.attention_mask, prefix_lengths=f.prefix_lengths,
                     grit_embed=True)  # fmt: skip

    model.zero_grad(set_to_none=True)
    loss, _ = representation_backward(
        embed, queries, passages, torch.arange(batch, device=args.device), 0.02, 1.0, chunk_size=chunk_size
    )
    return float(loss)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(args) -> dict:
    """One configuration in this process (called in a fresh subprocess by `main`)."""
    import torch

    from grit_hf.trainer import add_embedding_forward

    torch.set_num_threads(args.threads)
    model = _build_model(args)
    add_embedding_forward(model)
    _step(model, 2, None, args)  # warm-up: allocator pools, gradient buffers
    chunk = None if args.chunk == 0 else args.chunk
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mb()
    start = time.perf_counter()
    loss = _step(model, args.batch, chunk, args)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "batch": args.batch, "chunk_size": chunk, "seconds": round(time.perf_counter() - start, 2),
        "baseline_mb": round(base, 1), "peak_mb": round(peak, 1), "step_peak_mb": round(peak - base, 1),
        "loss": round(loss, 6),
    }  # fmt: skip


def check_gradients(args) -> float:
    """Largest |chunked - unchunked| gradient difference relative to the largest gradient, on the smallest batch."""

    from grit_hf.trainer import add_embedding_forward

    model = _build_model(args)
    add_embedding_forward(model)
    grads = []
    for chunk in (None, args.chunk_size):
        _step(model, min(args.batch_sizes), chunk, args)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    scale = max(g.abs().max().item() for g in grads[0].values())
    return max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) / scale


def _markdown(report: dict) -> str:
    lines = [
        "# GradCache memory benchmark (one embedding step: InfoNCE forward + backward)",
        "",
        f"- date: {report['date']}",
        f"- machine: {report['machine']}",
        f"- versions: {report['versions']}",
        f"- command: `{report['command']}`",
        f"- model: {report['model']}; query/passage tokens: {report['query_length']}/{report['passage_length']}",
        f"- memory: {report['memory_measure']}",
        f"- chunked vs unchunked gradient (batch {report['gradient_check']['batch']}): max relative difference "
        f"{report['gradient_check']['max_rel_diff']:.1e}",
        "",
        "| embedding batch | chunk size | step peak (MiB) | process peak (MiB) | seconds | loss |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        chunk = row["chunk_size"] if row["chunk_size"] else "none"
        lines.append(
            f"| {row['batch']} | {chunk} | {row['step_peak_mb']} | {row['peak_mb']} | {row['seconds']} | "
            f"{row['loss']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--query-length", type=int, default=16)
    parser.add_argument("--passage-length", type=int, default=64)
    parser.add_argument("--model", default=None, help="checkpoint folder or 'default'; a random Llama if unset")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    parser.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args._one:
        print(json.dumps(run_one(args)))
        return 0
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--output"]
    if args.output:
        forwarded = [a for i, a in enumerate(forwarded) if not (i > 0 and forwarded[i - 1] == "--output")]
        forwarded = [a for a in forwarded if a != args.output]
    results = []
    for batch in args.batch_sizes:
        for chunk in (0, args.chunk_size):
            command = [sys.executable, __file__, *forwarded, "--_one", "--batch", str(batch), "--chunk", str(chunk)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    model = args.model or f"random Llama (hidden {args.hidden_size}, {args.layers} layers, vocab 8192)"
    on_cuda = args.device.startswith("cuda")
    report = {
        **environment("transformers", "trl", "accelerate"),
        "command": command_line(__file__, argv),
        "model": model, "query_length": args.query_length, "passage_length": args.passage_length,
        "memory_measure": "torch.cuda.max_memory_allocated during the step" if on_cuda else
        "CPU: growth of peak RSS (ru_maxrss) over the RSS after model load + warm-up, fresh process per row",
        "gradient_check": {"batch": min(args.batch_sizes), "max_rel_diff": check_gradients(args)},
        "results": results,
    }  # fmt: skip
    write_report(args.output, report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
