"""Where a decode step's time goes on the CPU, per weight setting (dtype, quantization): the step's wall time, the time
inside torch's operators (the kernels: matmuls, attention, norms, copies) and the rest (Python: transformers' and
grit-hf's code around them), for one stream and for batched streams (`grit_hf.generation.batched`), against the
bytes a step must read (the weights once, plus each stream's key/value cache) divided by the machine's measured
memory bandwidth (a STREAM-style copy and triad, one and two threads).

Each point decodes `--steps` tokens after a prompt of `--prompt-tokens` tokens, batched over `--batch` streams
(left-padded as the server's batch is): first timed alone (the step ms: median of the steps), then again under
`torch.profiler` for the operators' share (the sum of their own time, nested calls not counted twice).

    python benchmarks/decode_profile.py --threads 1 --settings float32 bfloat16 int8 int4 --batches 1 2 4 8 \
        --output benchmarks/results/decode_profile_cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from report import command_line, environment, load_average, write_report

__all__ = ["main", "SETTINGS", "memory_bandwidth"]

SETTINGS = {  # name: grit_hf.load_model keyword arguments
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"dtype": "bfloat16", "quantization": "int8"},
    "int4": {"dtype": "bfloat16", "quantization": "int4"},
}


def memory_bandwidth(threads: int, mib: int = 256, repeats: int = 7) -> dict[str, float]:
    """GB/s of a STREAM-style copy (`a = b`: 2 arrays moved) and triad (`a = b + s*c`: 3 arrays) over float32 arrays
    of `mib` MiB each (far beyond the caches), best of `repeats`, on `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    n = mib * 2**20 // 4
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    kernels = {"copy": (lambda: a.copy_(b), 2), "triad": (lambda: torch.add(b, c, alpha=3.0, out=a), 3)}
    result = {}
    try:
        for name, (kernel, arrays) in kernels.items():
            kernel()
            best = min(_seconds(kernel) for _ in range(repeats))
            result[name] = round(arrays * n * 4 / best / 1e9, 2)
    finally:
        torch.set_num_threads(previous)
    return result


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def cache_bytes(model, batch: int, length: int) -> int:
    """Bytes of the key/value cache a step's attention reads: every layer's keys and values of `batch` streams of
    `length` positions."""
    config = model.config.get_text_config(decoder=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim
    return batch * length * per_position * torch.finfo(model.dtype).bits // 8


def _decoder(model, batch: int, prompt_tokens: int, steps: int):
    """A function running the next decode step of `batch` streams after a prompt (as `DecodeBatch` does)."""
    from grit_hf.cache.buffers import new_cache

    vocab = min(1000, model.config.get_text_config(decoder=True).vocab_size)
    ids = torch.randint(3, vocab, (batch, prompt_tokens))
    # the decode cache of the engine (and of the server's batch): a preallocated buffer
    cache = new_cache("preallocated", model.config.get_text_config(decoder=True), prompt_tokens + 2 * steps + 4)
    with torch.inference_mode():
        model.causal_lm_forward(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    token = torch.randint(3, vocab, (batch, 1))
    state = {"mask": torch.ones(batch, prompt_tokens, dtype=torch.long), "position": prompt_tokens}

    def step():
        with torch.inference_mode():
            state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(batch, 1)], 1)
            positions = torch.full((batch, 1), state["position"])
            state["position"] += 1
            return model.causal_lm_forward(
                input_ids=token, attention_mask=state["mask"], position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip

    return step


def profile_point(model, batch: int, prompt_tokens: int, steps: int) -> dict:
    step = _decoder(model, batch, prompt_tokens, steps)
    step()  # warm-up
    wall = [_seconds(step) for _ in range(steps)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    events = [e for e in profiler.key_averages() if e.key.startswith("aten::")]
    kernel = sum(e.self_cpu_time_total for e in events) / 1e6 / steps
    profiled = sum(wall)  # the profiler's own overhead inflates the profiled run: its share is of the timed run
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    median = statistics.median(wall)
    return {
        "batch": batch, "prompt_tokens": prompt_tokens, "step_ms": round(1000 * median, 2),
        "operators_ms": round(1000 * kernel, 2), "rest_share": round(max(0.0, 1 - kernel / median), 3),
        "tokens_per_s": round(batch / median, 1), "timed_s": round(profiled, 2),
        "top": [(e.key, round(e.self_cpu_time_total / 1000 / steps, 2)) for e in top],
    }  # fmt: skip


def _markdown(report: dict) -> str:
    bandwidth = report["bandwidth_gb_s"]
    reference = report["reference_gb_s"]
    lines = [
        "# A decode step on the CPU: operators, the rest (Python), and bytes over bandwidth", "",
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- command: `{report['command']}`",
        f"- load average at start / end: {report['load_average']['start']} / {report['load_average']['end']}",
        f"- memory bandwidth (GB/s, STREAM-style, float32 arrays of {report['bandwidth_mib']} MiB): 1 thread {bandwidth['1']}, "
        f"2 threads {bandwidth['2']}; the bound below uses {reference} GB/s (the best at {report['threads']} "
        "thread(s))",
        "",
        "| setting | streams | step ms | in operators ms | rest (Python) | tokens/s | MB read per step | bound ms "
        "(MB / bandwidth) | step / bound | top operators (ms per step) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in report["points"]:
        top = ", ".join(f"{name.removeprefix('aten::')} {ms}" for name, ms in row["top"][:4])
        lines.append(
            f"| {row['setting']} | {row['batch']} | {row['step_ms']} | {row['operators_ms']} | {row['rest_share']:.0%} "
            f"| {row['tokens_per_s']} | {row['bytes_read'] / 1e6:.1f} | {row['bound_ms']} | "
            f"{row['step_over_bound']} | {top} |"
        )
    lines += [
        "",
        "MB read per step: the weights a step multiplies by (every linear layer, the LM head and the norms, as "
        "stored: a quantized weight's values, scales and zero points; not the input embeddings, of which a step "
        "reads one row per stream) plus every stream's key/value cache at the prompt's length.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--settings", nargs="+", default=["float32", "bfloat16"], choices=list(SETTINGS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bandwidth-mib", type=int, default=256, help="MiB per array of the bandwidth measurement")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    from grit_hf import load_model
    from grit_hf.quantization import weight_bytes

    start_load = load_average()
    bandwidth = {str(threads): memory_bandwidth(threads, args.bandwidth_mib) for threads in (1, 2)}
    reference = max(bandwidth[str(min(args.threads, 2))].values())
    torch.set_num_threads(args.threads)
    points = []
    for setting in args.settings:
        model = load_model(args.model, device="cpu", **SETTINGS[setting])
        weights = weight_bytes(model)
        for batch in args.batches:
            point = profile_point(model, batch, args.prompt_tokens, args.steps)
            read = weights + cache_bytes(model, batch, args.prompt_tokens + args.steps)
            point.update(setting=setting, weight_bytes=weights, bytes_read=read)
            bound_ms = 1000 * read / (reference * 1e9)
            point.update(bound_ms=round(bound_ms, 3), step_over_bound=round(point["step_ms"] / bound_ms, 2))
            points.append(point)
            print(setting, {k: point[k] for k in ("batch", "step_ms", "operators_ms", "bound_ms")}, flush=True)
        del model
    report = {
        **environment("transformers", "torchao"), "threads": args.threads, "points": points,
        "bandwidth_gb_s": bandwidth, "reference_gb_s": reference, "bandwidth_mib": args.bandwidth_mib,
        "load_average": {"start": start_load, "end": load_average()},
        "command": command_line(__file__, argv),
    }  # fmt: skip
    write_report(args.output, report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
