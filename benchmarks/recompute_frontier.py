"""The frontier of selective recomputation: how close doc caching from the embedding pass's own (bidirectional) states
comes to plain RAG, against what it costs, for every rule and amount (`grit_hf.generation.recompute`).

Fidelity (manpages/eval, held out): for each model and setting, `grit_hf.evaluation.rag_fidelity` answers the first
`--examples` questions greedily (`--new-tokens`) with doc caching and with plain RAG (`rag_doc_query`): token F1 and
exact match against plain RAG, the KL of the next-token distributions along plain RAG's answer, and gold-answer F1.
Amount 1.0 recomputes every position whatever the rule, so it is run once (rule "all").

Time: a synthetic document of each `--lengths` tokens and a short question; per dtype, the time to the first answer
token (composing the prompt: what recomputation costs) and to the last of `--time-new-tokens` tokens (end token
ignored), medians of `--runs` runs taken round-robin over the settings (a busy moment hits every setting alike),
against plain RAG and against no recomputation, from the same run.

    python benchmarks/recompute_frontier.py --models default default-base --examples 40 --threads 1 \\
        --results benchmarks/results/recompute_frontier_cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from rag_latency import text_of_tokens
from report import command_line, data_folder, environment, write_report

RULES = ("deviation", "head", "tail", "ends", "random")
AMOUNTS = (0.0, 0.05, 0.1, 0.15, 0.3, 0.5, 1.0)
QUERY = "What does the document say about the Seine?"


def settings(rules, amounts) -> list[str]:
    """`"none"`, every `rule:amount` with 0 < amount < 1, and `"head:1.0"` (labelled "all") once."""
    found = ["none"] if 0 in amounts else []
    found += [f"{rule}:{amount}" for rule in rules for amount in amounts if 0 < amount < 1]
    return found + (["head:1.0"] if 1.0 in amounts else [])


def label(setting: str) -> tuple[str, float]:
    """`(rule, amount)` for plotting: "none" is amount 0 and "head:1.0" is the rule "all"."""
    if setting == "none":
        return "none", 0.0
    rule, amount = setting.split(":")
    return ("all" if float(amount) == 1.0 else rule), float(amount)


def fidelity(model_name: str, args) -> dict:
    from grit_hf import GritRAG, load_model
    from grit_hf.evaluation.rag_fidelity import evaluate_rag_fidelity
    from grit_hf.records.rag_examples import read_rag_examples

    model = load_model(model_name, dtype=args.dtype)
    model.config.cache_recompute = None  # every setting is named; "none" is no recomputation
    examples = read_rag_examples(args.data or data_folder() / "manpages" / "eval", limit=args.examples)
    rag = GritRAG(model, cache_attention="bidirectional", max_length=512)
    started = time.perf_counter()
    result = evaluate_rag_fidelity(
        rag, examples, modes=["doc"], max_new_tokens=args.new_tokens, show_progress_bar=not args.no_progress,
        recompute=settings(args.rules, args.amounts),
    )  # fmt: skip
    rows = {run["recompute"]: run["modes"]["doc"] for run in result["runs"]}
    return {"dtype": str(model.dtype), "seconds": round(time.perf_counter() - started, 1), "settings": rows}


def timings(model_name: str, dtype: str, args) -> dict:
    """Per document length: the first-token and answer seconds (medians) of plain RAG and of every setting."""
    from grit_hf import GritRAG, load_model

    model = load_model(model_name, dtype=dtype)
    rag = GritRAG(model, cache_attention="bidirectional", max_length=max(args.lengths) + 64)
    out = {}
    for length in args.lengths:
        doc_id = rag.add_documents([text_of_tokens(rag.tokenizer, length)])[0]
        jobs = {"plain": ("rag_doc_query", None), **{s: ("doc", s) for s in settings(args.rules, args.amounts)}}
        seconds = {name: ([], []) for name in jobs}
        for run in range(args.runs + 1):  # the first run warms up
            for name, (mode, recompute) in jobs.items():
                plan = rag.build_plan(QUERY, mode, [doc_id], recompute=recompute)
                started = time.perf_counter()
                stream = rag.generate_from_plan(
                    plan, stream=True, reuse_cache=mode == "doc", max_new_tokens=args.time_new_tokens, ignore_eos=True
                )
                first = None
                for _ in stream:
                    first = time.perf_counter() - started if first is None else first
                if run:
                    seconds[name][0].append(first)
                    seconds[name][1].append(time.perf_counter() - started)
        out[str(length)] = {
            name: {"first_token_s": statistics.median(a), "answer_s": statistics.median(b)}
            for name, (a, b) in seconds.items()
        }
        rag.remove_documents([doc_id])
    return out


def markdown(report: dict) -> str:
    lines = [
        "# Selective recomputation: fidelity against time",
        "",
        f"{report['environment']['date']}, {report['environment']['machine']['cpu']}, "
        f"{report['threads']} thread(s); command: `{report['command']}`",
        "",
        f"Fidelity: the first {report['examples']} questions of manpages/eval, doc caching from the embedding pass's "
        f"own states against plain RAG, {report['new_tokens']} new tokens, greedy. Time: a synthetic document, a short "
        f"question, {report['time_new_tokens']} new tokens (end token ignored), medians of {report['runs']} runs; "
        "'first token' is composing the prompt plus one step, 'x plain' and 'x none' are ratios of it.",
    ]
    for model, entry in report["models"].items():
        fid = entry["fidelity"]["settings"]
        lines += [
            "",
            f"## {model} ({entry['fidelity']['dtype']} for fidelity; times of {next(iter(report['models']))})",
            "",
        ]
        header = "| setting | token F1 vs plain | exact | KL | gold F1 (plain) | recomputed / doc |"
        cols = []
        for dtype, by_length in report["time"].items():
            for length in by_length:
                cols.append((dtype, length))
                header += f" {dtype} {length} tok: first token s (x plain, x none) |"
        lines += [header, "|" + "---|" * (6 + len(cols))]
        for setting, values in fid.items():
            row = (
                f"| {setting} | {values['token_f1']:.3f} | {values['exact_match']:.3f} | {values['kl']:.3f} | "
                f"{values.get('gold_f1') or 0:.3f} ({values.get('gold_f1_plain') or 0:.3f}) | "
                f"{values['recomputed']:.0f} / {values['recomputed'] + values['cache_read']:.0f} |"
            )
            for dtype, length in cols:
                times = report["time"][dtype][length]
                if setting in times:
                    first = times[setting]["first_token_s"]
                    row += (
                        f" {first:.3f} ({first / times['plain']['first_token_s']:.2f}, "
                        f"{first / times['none']['first_token_s']:.2f}) |"
                    )
                else:
                    row += " - |"
            lines.append(row)
        for dtype, length in cols:
            plain = report["time"][dtype][length]["plain"]
            lines.append(f"\nplain RAG, {dtype}, {length} tokens: first token {plain['first_token_s']:.3f} s, "
                         f"answer {plain['answer_s']:.3f} s")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, model in zip(axes[0], models):
        entry = report["models"][model]
        dtype = next(iter(report["time"]))
        length = max(report["time"][dtype], key=int)
        times = report["time"][dtype][length]
        by_rule: dict[str, list] = {}
        for setting, values in entry["fidelity"]["settings"].items():
            rule, amount = label(setting)
            ratio = times[setting]["first_token_s"] / times["plain"]["first_token_s"]
            for name in [rule] if rule not in ("none", "all") else list(RULES):
                by_rule.setdefault(name, []).append((amount, ratio, values["token_f1"]))
        for rule, points in by_rule.items():
            points.sort()
            axis.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=rule)
        axis.axvline(0.5, color="grey", linestyle=":", label="goal: 0.5x plain RAG's time")
        axis.axhline(0.9, color="grey", linestyle="--", label="goal: token F1 0.90")
        axis.set_xlabel(f"time to first token / plain RAG's ({dtype}, {length}-token document)")
        axis.set_ylabel("token F1 against plain RAG (manpages/eval)")
        axis.set_title(model)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["default", "default-base"])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--amounts", nargs="+", type=float, default=list(AMOUNTS))
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="auto", help="dtype of the fidelity runs (auto: grit-hf's default)")
    parser.add_argument("--time-dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[250, 4000])
    parser.add_argument("--time-new-tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--data", default=None, help="RAG examples (default: the shared manpages/eval)")
    parser.add_argument("--results", default=None, help="write PREFIX.json, PREFIX.md and PREFIX.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {
        "environment": environment("transformers", "grit-hf"),
        "command": command_line(__file__, argv),
        "threads": args.threads,
        "examples": args.examples,
        "new_tokens": args.new_tokens,
        "time_new_tokens": args.time_new_tokens,
        "runs": args.runs,
        "models": {},
    }
    for model in args.models:
        report["models"][model] = {"fidelity": fidelity(model, args)}
    # the cost of a setting depends on the architecture, not the weights: timed once, on the first model
    report["time"] = {dtype: timings(args.models[0], dtype, args) for dtype in args.time_dtypes}
    write_report(args.results, report, markdown(report))
    if args.results:
        plot(report, Path(f"{args.results}.png"))


if __name__ == "__main__":
    main()
