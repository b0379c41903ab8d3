"""Where a decode step's time goes on the CPU: the time inside torch's operators (the kernels: matmuls, attention,
norms, copies) against the whole step, whose rest is Python (transformers' and grit-hf's code around them), for one
stream and for batched streams (`grit_hf.generation.batched`), per dtype.

Each point decodes `--steps` tokens after a prompt of `--prompt-tokens` tokens, batched over `--batch` streams
(left-padded as the server's batch is), under `torch.profiler`; reported per step: wall time, operator self time (the
sum of the operators' own time, nested calls not counted twice), the share of the rest, and the top operators.

    python benchmarks/decode_profile.py --threads 1 --output benchmarks/results/decode_profile_cpu
"""

from __future__ import annotations

import argparse
import time

import torch
from report import command_line, environment, write_report

__all__ = ["main"]


def profile_point(model, batch: int, prompt_tokens: int, steps: int) -> dict:
    from grit_hf.cache.buffers import new_cache

    vocab = min(1000, model.config.get_text_config(decoder=True).vocab_size)
    ids = torch.randint(3, vocab, (batch, prompt_tokens))
    with torch.inference_mode():  # the decode cache of the engine (and of the server's batch): a preallocated buffer
        cache = new_cache("preallocated", model.config.get_text_config(decoder=True), prompt_tokens + steps + 2)
        model.causal_lm_forward(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        token = torch.randint(3, vocab, (batch, 1))
        mask = torch.ones(batch, prompt_tokens, dtype=torch.long)

        def step(position: int):
            nonlocal mask
            mask = torch.cat([mask, mask.new_ones(batch, 1)], 1)
            positions = torch.full((batch, 1), position)
            return model.causal_lm_forward(
                input_ids=token, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip

        step(prompt_tokens)  # warm-up
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities) as profiler:
            start = time.perf_counter()
            for index in range(steps):
                step(prompt_tokens + 1 + index)
            wall = time.perf_counter() - start
    events = [e for e in profiler.key_averages() if e.key.startswith("aten::")]
    kernel = sum(e.self_cpu_time_total for e in events) / 1e6
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    return {
        "batch": batch, "prompt_tokens": prompt_tokens, "step_ms": round(1000 * wall / steps, 2),
        "operators_ms": round(1000 * kernel / steps, 2), "rest_share": round(1 - kernel / wall, 3),
        "tokens_per_s": round(batch * steps / wall, 1),
        "top": [(e.key, round(e.self_cpu_time_total / 1000 / steps, 2)) for e in top],
    }  # fmt: skip


def _markdown(report: dict) -> str:
    lines = [
        "# A decode step on the CPU: operators against the rest (Python)", "",
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- command: `{report['command']}`", "",
        "| dtype | streams | step ms | in operators ms | rest (Python) | tokens/s | top operators (ms per step) |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in report["points"]:
        top = ", ".join(f"{name.removeprefix('aten::')} {ms}" for name, ms in row["top"][:4])
        lines.append(
            f"| {row['dtype']} | {row['batch']} | {row['step_ms']} | {row['operators_ms']} | {row['rest_share']:.0%} | "
            f"{row['tokens_per_s']} | {top} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    from grit_hf import load_model

    torch.set_num_threads(args.threads)
    points = []
    for dtype in args.dtypes:
        model = load_model(args.model, device="cpu", dtype=dtype)
        for batch in args.batches:
            points.append({"dtype": dtype, **profile_point(model, batch, args.prompt_tokens, args.steps)})
    report = {
        **environment("transformers"), "threads": args.threads, "points": points,
        "command": command_line(__file__, argv),
    }  # fmt: skip
    write_report(args.output, report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
