"""When `torch.compile` of the decode step pays on the CPU (`Generator(compile=True)`): the time of the first compiled
step (compiling), cold (an empty inductor cache) and warm (a second process with the cache of the first), and the
step's time compiled against eager, interleaved, per weight setting.

Each measurement runs in its own process (`--worker`) with its own inductor cache folder, so that "cold" is cold.

    python benchmarks/decode_compile.py --settings int4 --threads 1 --output benchmarks/results/decode_compile_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from decode_profile import SETTINGS
from report import command_line, environment, load_average, write_report

__all__ = ["main"]


def _worker(args) -> dict:
    import torch

    from grit_hf import load_model
    from grit_hf.cache.buffers import new_cache

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu", **SETTINGS[args.setting])
    config = model.config.get_text_config(decoder=True)
    cache = new_cache("preallocated", config, args.prompt_tokens + 4 * args.steps + 8)
    ids = torch.randint(3, 1000, (args.batch, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model.causal_lm_forward(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    compiled = torch.compile(model.causal_lm_forward, dynamic=True)
    state = {"position": args.prompt_tokens, "mask": torch.ones(args.batch, args.prompt_tokens, dtype=torch.long)}
    token = torch.full((args.batch, 1), 5)

    def step(forward) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(args.batch, 1)], 1)
            forward(
                input_ids=token, attention_mask=state["mask"] if args.batch > 1 else None, cache=cache,
                position_ids=torch.full((args.batch, 1), state["position"]), use_cache=True, logits_to_keep=1,
            )  # fmt: skip
        state["position"] += 1
        return time.perf_counter() - start

    first = step(compiled)
    step(compiled)
    eager, fast = [], []
    for _ in range(args.steps):
        eager.append(step(model.causal_lm_forward))
        fast.append(step(compiled))
    return {
        "first_compiled_step_s": round(first, 1),
        "eager_ms": round(1000 * statistics.median(eager), 2),
        "compiled_ms": round(1000 * statistics.median(fast), 2),
    }


def _markdown(report: dict) -> str:
    lines = [
        "# torch.compile of the decode step on the CPU: compile time against step time", "",
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- command: `{report['command']}`",
        f"- load average at start / end: {report['load_average']['start']} / {report['load_average']['end']} "
        "(a shared machine: compile times grow with the load)", "",
        "| setting | streams | cache | first compiled step (compiling) s | eager step ms | compiled step ms | "
        "compiled / eager | steps to repay the compile |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in report["rows"]:
        saved = r["eager_ms"] - r["compiled_ms"]
        repay = f"{1000 * r['first_compiled_step_s'] / saved:,.0f}" if saved > 0 else "never"
        lines.append(
            f"| {r['setting']} | {r['batch']} | {r['cache']} | {r['first_compiled_step_s']} | {r['eager_ms']} | "
            f"{r['compiled_ms']} | {r['compiled_ms'] / r['eager_ms']:.2f} | {repay} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--settings", nargs="+", default=["int4"], choices=list(SETTINGS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    start_load = load_average()
    rows = []
    for setting in args.settings:
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache_dir:
            for cache in ("cold", "warm"):
                command = [sys.executable, __file__, "--worker", "--setting", setting, "--model", args.model]
                command += ["--batch", str(args.batch), "--prompt-tokens", str(args.prompt_tokens)]
                command += ["--steps", str(args.steps), "--threads", str(args.threads)]
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "OMP_NUM_THREADS": str(args.threads)}
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                row = {"setting": setting, "batch": args.batch, "cache": cache}
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                rows.append(row)
                print(row, flush=True)
    report = {
        **environment("transformers", "torchao"), "threads": args.threads, "rows": rows,
        "load_average": {"start": start_load, "end": load_average()},
        "command": command_line(__file__, argv),
    }  # fmt: skip
    write_report(args.output, report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
