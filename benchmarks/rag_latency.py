"""RAG latency of every GritRAG mode, in the paper's setting (GRIT, section 4 / Table 5).

Sample A: a 1-token query and an N-token document; sample B: an N-token query and a 1-token document. Each answer
generates exactly `--new-tokens` tokens greedily (end token ignored). Timed: the answer after retrieval, i.e. from the
query text and the retrieved document's id to the last token (the query's retrieval pass is not timed; the caching
modes reuse its states, the plain modes re-read the text). Reported per mode and N: the median of `--runs` runs (after
one warm-up), the time to the first token, and for doc caching the time to open a document's states from disk
(`DiskKVStore`, memory-mapped; warm page cache and, after `posix_fadvise(DONTNEED)`, cold) and the answer time with
the states read from disk. Runs go round-robin over the modes, so a busy moment of a shared machine hits every mode alike; ratios are computed
from the medians of the same run.

CPU, the default model (SmolLM2-135M-Instruct, fp32, max 8192 positions):

    python benchmarks/rag_latency.py --lengths 250 1000 2000 4000 --runs 5

H100 (CUDA only), a 7B-shaped Mistral with random bf16 weights, static cache + torch.compile for decoding:

    python benchmarks/rag_latency.py --model mistral-7b-random --device cuda --lengths 250 1000 2000 4000 \\
        --runs 10 --decode-cache static --compile --output benchmarks/results/rag_latency_h100
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from models import load_benchmark_model
from report import REPO, command_line, evict_from_page_cache
from report import SENTENCES as REPORT_SENTENCES

MODES = ["none", "rag_query_doc", "rag_doc_query", "query", "doc", "query_doc", "doc_query"]
CACHING = ("query", "doc", "query_doc", "doc_query")
LABELS = {
    "none": "No RAG",
    "rag_query_doc": "RAG (query then doc)",
    "rag_doc_query": "RAG (doc then query)",
    "query": "Query caching",
    "doc": "Doc caching",
    "query_doc": "Query-Doc caching",
    "doc_query": "Doc-Query caching",
}
SENTENCES = REPORT_SENTENCES[:5]  # filler text of the N-token segments


def text_of_tokens(tokenizer, count: int) -> str:
    """A text of exactly `count` tokens (without special tokens), or as close as the tokenizer allows."""
    if count <= 1:
        for word in ("Paris", "France", "the", "a"):
            if len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1:
                return word
    text, index = "", 0
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < count + 8:
        text += SENTENCES[index % len(SENTENCES)] + " "
        index += 1
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:count]
    text = tokenizer.decode(ids)
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) > count:
        text = text[:-1]
    return text


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_mode(rag, query, doc_id, mode, query_states, new_tokens, device):
    """`(seconds to the last token, seconds to the first token, answer text)` of one answer."""
    plan = rag.build_plan(query, mode, [doc_id], query_states)
    sync(device)
    start = time.perf_counter()
    stream = rag.generate_from_plan(plan, stream=True, max_new_tokens=new_tokens, ignore_eos=True)
    first = None
    for _ in stream:
        if first is None:
            sync(device)
            first = time.perf_counter() - start
    sync(device)
    total = time.perf_counter() - start
    assert stream.result.completion_tokens == new_tokens, stream.result
    return total, first if first is not None else total, stream.result.text


def fidelity(rag, query, doc_id, mode, query_states, new_tokens, cached_text) -> dict:
    """Token F1 and exact match of a caching mode's answer against its plain-RAG counterpart: the same prompt with
    every cached part re-read as text (for `doc`/`query`, exactly `rag_doc_query`/`rag_query_doc`)."""
    from grit_hf.evaluation.metrics import exact_match, token_f1

    plan = rag.build_plan(query, mode, [doc_id], query_states)
    plain = rag.generate_from_plan(plan, reuse_cache=False, max_new_tokens=new_tokens, ignore_eos=True)
    return {"token_f1": token_f1(cached_text, plain.text), "exact_match": exact_match(cached_text, plain.text)}


def disk_timings(rag, doc_id, query, new_tokens, runs, device):
    """Time to open a doc's states from disk (warm/cold page cache) and the doc-cached answer read from disk."""
    from grit_hf.cache import DiskKVStore

    folder = tempfile.mkdtemp(prefix="rag-latency-")
    disk = DiskKVStore(folder, fingerprint=rag.fingerprint)
    disk.put(doc_id, rag.store.get(doc_id))
    path = disk.path_for(doc_id)
    warm, cold, answer_cold = [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        states = disk.get(doc_id)
        warm.append(time.perf_counter() - start)
        del states  # unmapped, so the page cache can drop the file
        evict_from_page_cache(path)
        start = time.perf_counter()
        states = disk.get(doc_id)
        sum(float(k.sum()) + float(v.sum()) for k, v in states.layers())  # read every byte
        cold.append(time.perf_counter() - start)
        del states
        gc.collect()
    memory, rag.store = rag.store, disk
    try:
        for _ in range(runs):
            evict_from_page_cache(path)
            answer_cold.append(time_mode(rag, query, doc_id, "doc", None, new_tokens, device)[0])
        size = path.stat().st_size
    finally:
        rag.store = memory
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "bytes": size,
        "open_warm_s": statistics.median(warm),
        "open_cold_touch_s": statistics.median(cold),
        "doc_answer_from_cold_disk_s": statistics.median(answer_cold),
    }


def run(args) -> dict:
    from grit_hf.rag import GritRAG

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_benchmark_model(args.model, args.device, args.dtype)
    rag = GritRAG(
        model,
        cache_attention=args.cache_attention,
        query_instruction="",
        max_length=max(args.lengths) + 64,
        decode_cache=args.decode_cache,
        compile=args.compile,
        batch_size=1,
    )
    tokenizer = rag.tokenizer
    results = {"rows": [], "disk": {}}
    for length in args.lengths:
        long_text, short_text = text_of_tokens(tokenizer, length), text_of_tokens(tokenizer, 1)
        for sample, (query, doc) in {"A": (short_text, long_text), "B": (long_text, short_text)}.items():
            doc_id = f"{sample}-{length}"
            rag.add_documents([doc], ids=[doc_id])
            query_states = rag.query_states(query)
            doc_tokens = rag.store.get(doc_id).num_tokens
            states = {
                mode: query_states if mode in ("query", "query_doc", "doc_query") else None for mode in args.modes
            }
            timings = {mode: [] for mode in args.modes}
            for mode in args.modes:  # warm-up
                time_mode(rag, query, doc_id, mode, states[mode], args.new_tokens, args.device)
            for _ in range(args.runs):  # round-robin, so a busy moment of the machine hits every mode alike
                for mode in args.modes:
                    timings[mode].append(
                        time_mode(rag, query, doc_id, mode, states[mode], args.new_tokens, args.device)
                    )
            for mode in args.modes:
                row = {
                    "sample": sample,
                    "n": length,
                    "mode": mode,
                    "query_tokens": query_states.num_tokens,
                    "doc_tokens": doc_tokens,
                    "median_s": statistics.median(t for t, _, _ in timings[mode]),
                    "ttft_s": statistics.median(f for _, f, _ in timings[mode]),
                    "runs_s": [t for t, _, _ in timings[mode]],
                    "cache_attention": rag.cache_attention if mode in CACHING else None,
                }
                if mode in CACHING:
                    answer = timings[mode][-1][2]
                    row.update(fidelity(rag, query, doc_id, mode, states[mode], args.new_tokens, answer))
                results["rows"].append(row)
                print(
                    f"{sample} N={length:5d} {LABELS[mode]:22s} {row['median_s']:8.3f} s  ttft {row['ttft_s']:.3f} s",
                    flush=True,
                )
            if sample == "A" and "doc" in args.modes and args.disk_runs:
                results["disk"][length] = disk_timings(
                    rag, doc_id, query, args.new_tokens, args.disk_runs, args.device
                )
                print(f"A N={length:5d} disk {results['disk'][length]}", flush=True)
            rag.store.delete(doc_id)
    return results


def ratios(rows: list[dict], length: int) -> dict[str, float]:
    get = {(r["sample"], r["mode"]): r["median_s"] for r in rows if r["n"] == length}
    out = {}
    for sample in ("A", "B"):
        pairs = {
            "doc / rag_doc_query": ("doc", "rag_doc_query"),
            "doc / rag_query_doc": ("doc", "rag_query_doc"),
            "query / rag_query_doc": ("query", "rag_query_doc"),
            "doc / none": ("doc", "none"),
            "query_doc / none": ("query_doc", "none"),
            "doc_query / none": ("doc_query", "none"),
        }
        for name, (a, b) in pairs.items():
            if (sample, a) in get and (sample, b) in get:
                out[f"{sample}: {name}"] = get[(sample, a)] / get[(sample, b)]
    return out


def write_outputs(args, results: dict, started: str, argv: list[str] | None = None) -> None:
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    import transformers

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "load_average_at_start": os.getloadavg(),
    }
    meta = {"date": started, "command": command_line(__file__, argv), "machine": machine, "args": vars(args)}
    Path(f"{output}.json").write_text(json.dumps({**meta, **results}, indent=2, sort_keys=True))
    attention = next((r["cache_attention"] for r in results["rows"] if r["cache_attention"]), args.cache_attention)
    lines = [
        f"# GritRAG latency ({args.model}, {machine['device']})",
        "",
        f"- date: {started}",
        f"- command: `{meta['command']}`",
        f"- machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch threads {machine['torch_threads']}, "
        f"load average at start {tuple(round(x, 2) for x in machine['load_average_at_start'])}",
        f"- versions: python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}",
        f"- setting: {args.new_tokens} new tokens, greedy, cache attention {attention} (the states the "
        f"caching modes reuse), decode cache {args.decode_cache}, median of {args.runs} runs (seconds); TTFT = time "
        "to first token; each caching mode's answer is compared with its plain-RAG counterpart (the same prompt, "
        "cached parts re-read as text): token F1 / exact match",
        "",
    ]
    for sample, title in (
        ("A", "Sample A: 1-token query, N-token document"),
        ("B", "Sample B: N-token query, 1-token document"),
    ):
        lines += [
            f"## {title}",
            "",
            "| mode | " + " | ".join(f"N={n}" for n in args.lengths) + f" | TTFT at N={max(args.lengths)} | "
            "answer vs plain RAG: token F1 / exact match (per N) |",
            "|---|" + "---|" * (len(args.lengths) + 2),
        ]
        for mode in args.modes:
            cells = [
                next(
                    (
                        f"{r['median_s']:.3f}"
                        for r in results["rows"]
                        if (r["sample"], r["n"], r["mode"]) == (sample, n, mode)
                    ),
                    "-",
                )
                for n in args.lengths
            ]
            ttft = next(
                (
                    f"{r['ttft_s']:.3f}"
                    for r in results["rows"]
                    if (r["sample"], r["n"], r["mode"]) == (sample, max(args.lengths), mode)
                ),
                "-",
            )
            agreement = [
                f"{r['token_f1']:.2f} / {r['exact_match']:.0f}"
                for n in args.lengths
                for r in results["rows"]
                if (r["sample"], r["n"], r["mode"]) == (sample, n, mode) and "token_f1" in r
            ]
            lines.append(
                f"| {LABELS[mode]} | " + " | ".join(cells) + f" | {ttft} | " + (", ".join(agreement) or "-") + " |"
            )
        lines.append("")
    top = max(args.lengths)
    lines += [f"## Ratios at N={top} (medians of this run)", ""]
    lines += [f"- {name}: {value:.3f}" for name, value in ratios(results["rows"], top).items()]
    if results["disk"]:
        lines += [
            "",
            "## Doc states from disk (sample A, DiskKVStore, safetensors memory-mapped)",
            "",
            "| N | file MB | open (warm, lazy) ms | open + read all (cold) ms | doc-cached answer, cold disk s |",
            "|---|---|---|---|---|",
        ]
        for n, d in results["disk"].items():
            lines.append(
                f"| {n} | {d['bytes'] / 1e6:.1f} | {d['open_warm_s'] * 1e3:.2f} | "
                f"{d['open_cold_touch_s'] * 1e3:.1f} | {d['doc_answer_from_cold_disk_s']:.3f} |"
            )
    Path(f"{output}.md").write_text("\n".join(lines) + "\n")
    plot(args, results, Path(f"{output}.png"))
    print("\n".join(lines))


def plot(args, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for axis, sample in zip(axes, ("A", "B")):
        for mode in args.modes:
            points = sorted(
                (r["n"], r["median_s"]) for r in results["rows"] if (r["sample"], r["mode"]) == (sample, mode)
            )
            if points:
                axis.plot(*zip(*points), marker="o", label=LABELS[mode])
        axis.set_title(
            f"Sample {sample}: " + ("1-token query, N-token doc" if sample == "A" else "N-token query, 1-token doc")
        )
        axis.set_xlabel("N (tokens)")
        axis.set_ylabel(f"seconds for {args.new_tokens} tokens (median)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"GritRAG latency, {args.model} on {args.device}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="'default', 'mistral-7b-random' (CUDA) or a checkpoint")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"], help="weights dtype")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[250, 1000, 2000, 4000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--disk-runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument(
        "--cache-attention", default=None, choices=["bidirectional", "causal"], help="default: the checkpoint's"
    )
    parser.add_argument("--decode-cache", default="preallocated", choices=["preallocated", "dynamic", "static"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA, static cache)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "rag_latency_cpu"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if args.runs < 5:
        print("note: the reported medians use fewer than 5 runs", file=sys.stderr)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    results = run(args)
    write_outputs(args, results, started, argv)


if __name__ == "__main__":
    main()
