"""Prefill attention on the CPU: torch's sdpa (its flash kernel, with the padding mask of an embedding pass or
causal) against a blocked attention built from matmuls (scores of a block of queries against all keys as one bf16
matmul, softmax in fp32, probabilities times values as a second matmul), on the default model's attention shapes.

The question (issue 29): sdpa's CPU flash kernel runs at a fraction of the bf16 matmul rate; would matmuls plus a
softmax do better? Reported per shape: ms of each (best of `--repeats`), GFLOP/s (4 x batch x heads x length^2 x
head size), the blocked version's largest |difference| to sdpa, and the time of its two matmuls alone.

    python benchmarks/prefill_attention.py --threads 1 --output benchmarks/results/prefill_attention_cpu
"""

from __future__ import annotations

import argparse
import time

import torch
from report import command_line, environment, load_average, write_report

__all__ = ["blocked_attention", "main"]

SHAPES = [(1, 256), (1, 512), (1, 1024), (4, 256), (16, 128), (32, 64)]  # (batch, length)


def blocked_attention(query, key, value, keep: torch.Tensor | None, causal: bool, block: int = 256):
    """Attention of `query` [batch, heads, length, dim] over `key`/`value` [batch, kv_heads, length, dim] (grouped
    heads share their key/value head), block by block of queries; `keep` [batch, length] marks the keys to attend
    to (padding mask), `causal` masks later keys."""
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    grouped = query.reshape(batch, key.shape[1], groups, length, dim)
    keys_t = (key * dim**-0.5).transpose(-1, -2)[:, :, None]
    bias = None if keep is None else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))[:, None, None, None]
    output = torch.empty_like(grouped)
    for start in range(0, length, block):
        stop = min(length, start + block)
        scores = torch.matmul(grouped[:, :, :, start:stop], keys_t).float()
        if bias is not None:
            scores += bias
        if causal:
            scores.masked_fill_(torch.ones(stop - start, length, dtype=torch.bool).triu(start + 1), float("-inf"))
        torch.matmul(scores.softmax(-1).to(query.dtype), value[:, :, None], out=output[:, :, :, start:stop])
    return output.reshape(batch, heads, length, dim)


def _best_ms(function, repeats: int) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def measure(batch: int, length: int, repeats: int, heads: int = 9, kv_heads: int = 3, dim: int = 64) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, length, dim, generator=generator).to(torch.bfloat16)
    k = torch.randn(batch, kv_heads, length, dim, generator=generator).to(torch.bfloat16)
    v = torch.randn(batch, kv_heads, length, dim, generator=generator).to(torch.bfloat16)
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[0, length * 3 // 4 :] = False  # one padded row, as in an embedding batch
    flops = 4 * batch * heads * length * length * dim
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rows = []
    for kind in ("bidirectional, padded", "causal"):
        causal = kind == "causal"
        mask = None if causal else keep[:, None, None, :]

        def reference(mask=mask, causal=causal):
            return sdpa(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)

        def blocked(causal=causal):
            return blocked_attention(q, k, v, None if causal else keep, causal)

        def matmuls_only():
            scores = torch.matmul(q.reshape(batch, kv_heads, -1, dim), k.transpose(-1, -2))
            return torch.matmul(scores, v)

        sdpa_ms, blocked_ms = _best_ms(reference, repeats), _best_ms(blocked, repeats)
        valid = keep[:, None, :, None] if not causal else torch.ones(1, dtype=torch.bool)  # rows of real queries
        difference = ((blocked() - reference()).float().abs() * valid).max().item()
        rows.append({
            "batch": batch, "length": length, "attention": kind, "sdpa_ms": round(sdpa_ms, 2),
            "blocked_ms": round(blocked_ms, 2), "matmuls_only_ms": round(_best_ms(matmuls_only, repeats), 2),
            "sdpa_gflops": round(flops / sdpa_ms / 1e6, 1), "blocked_gflops": round(flops / blocked_ms / 1e6, 1),
            "max_abs_diff": difference,
        })  # fmt: skip
    return rows


def _markdown(report: dict) -> str:
    lines = [
        "# Prefill attention on the CPU: sdpa (flash) against blocked matmul attention", "",
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- command: `{report['command']}`",
        f"- load average at start / end: {report['load_average']['start']} / {report['load_average']['end']} "
        "(a shared machine)", "",
        "bf16, 9 query heads over 3 key/value heads of 64 (the default model), one thread.", "",
        "| batch | length | attention | sdpa ms | blocked ms | blocked / sdpa | sdpa GFLOP/s | blocked GFLOP/s | "
        "its two matmuls alone ms | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in report["rows"]:
        lines.append(
            f"| {r['batch']} | {r['length']} | {r['attention']} | {r['sdpa_ms']} | {r['blocked_ms']} | "
            f"{r['blocked_ms'] / r['sdpa_ms']:.2f} | {r['sdpa_gflops']} | {r['blocked_gflops']} | "
            f"{r['matmuls_only_ms']} | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", default=[f"{b}x{n}" for b, n in SHAPES], help="BATCHxLENGTH")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start_load = load_average()
    rows = []
    for shape in args.shapes:
        batch, length = map(int, shape.split("x"))
        rows += measure(batch, length, args.repeats)
        print(rows[-2:], flush=True)
    report = {
        **environment(), "threads": args.threads, "rows": rows, "command": command_line(__file__, argv),
        "load_average": {"start": start_load, "end": load_average()},
    }  # fmt: skip
    write_report(args.output, report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
