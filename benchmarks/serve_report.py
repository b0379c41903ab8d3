"""The report of the serving load test (`serve_load.py`): the table of every point, the ratios to llama.cpp's server
and the latency plot."""

from __future__ import annotations

from pathlib import Path

__all__ = ["markdown", "ratios", "plot"]


def ratios(report: dict) -> list[str]:
    """Lines of a table: each grit-hf server's rate over llama.cpp's, per flow and N: completion tokens/s for chat
    (the two servers may stop at different lengths), requests/s for embeddings and RAG (grit-hf with cached states)."""
    rate = {"chat": "completion_tokens_per_s"}
    by_key = {
        (r["server"], r["flow"], r["concurrency"]): r[rate.get(r["flow"], "throughput_rps")] for r in report["results"]
    }
    grits = [name for name in dict.fromkeys(r["server"] for r in report["results"]) if name.startswith("grit-hf")]
    flows = {r["flow"] for r in report["results"] if r["server"] == "llama.cpp"}
    if not flows or not grits:
        return []
    lines = ["", "Rate over llama.cpp's (chat: completion tokens/s; embeddings and RAG: requests/s, RAG with cached "
             "states):", "", "| flow | N | " + " | ".join(grits) + " |", "|---|---|" + "---|" * len(grits)]  # fmt: skip
    for flow, ours in (("embeddings", "embeddings"), ("chat", "chat"), ("rag", "rag (cached)")):
        if flow not in flows:
            continue
        for n in report["config"]["concurrency"]:
            peer = by_key.get(("llama.cpp", flow, n))
            cells = [f"{by_key[(g, ours, n)] / peer:.2f}x" if peer and (g, ours, n) in by_key else "-" for g in grits]
            lines.append(f"| {flow} | {n} | " + " | ".join(cells) + " |")
    return lines


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def markdown(report: dict) -> str:
    env, config = report["environment"], report["config"]
    lines = [
        f"# Serving load: grit-hf serve vs llama.cpp ({config['label']})",
        "",
        f"- date: {env['date']}",
        f"- command: `{report['command']}`",
        f"- machine: {env['machine']['platform']}, {env['machine']['cpu']}, {env['machine']['cpu_count']} CPUs, "
        f"load average at start {report['load_average']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"- servers: {'; '.join(f'{s}: {m}' for s, m in config['models'].items())}; one CPU thread each",
        f"- load: N clients x M requests each (closed loop; N: M = {config['requests']}), chat max_tokens "
        f"{config['max_tokens']}"
        f" at temperature 0, {config['docs']} documents of ~{config['doc_tokens']} tokens for RAG",
        "",
        "| flow | server | N | requests (errors) | req/s | completion tok/s | p50 ms | p99 ms | prompt tok | cached tok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['flow']} | {row['server']} | {row['concurrency']} | {row['requests']} ({row['errors']}) | "
            f"{row['throughput_rps']:.2f} | {row['completion_tokens_per_s']:.1f} | {_ms(row['p50_ms'])} | "
            f"{_ms(row['p99_ms'])} | {_ms(row['mean_prompt_tokens'])} | {_ms(row['mean_cached_tokens'])} |"
        )
    lines += ["", "Setup (untimed in the flows): embedding the RAG documents once", ""]
    for info in report["setup"]:
        extra = ""
        if "embed_documents_without_states_s" in info:
            extra = f" (without keeping states: {info['embed_documents_without_states_s']:.2f} s)"
        lines.append(f"- {info['server']}: {info['index_documents_s']:.2f} s{extra}")
    if report.get("skipped"):
        lines += ["", f"Skipped (time budget): {', '.join(report['skipped'])}"]
    if report.get("memory_mib"):
        lines += ["", "Resident memory of each server process after the run (MiB, now / peak):", ""]
        lines += [f"- {name}: {m['rss']:.0f} / {m['peak']:.0f}" for name, m in report["memory_mib"].items()]
    lines += ratios(report)
    lines += [
        "",
        "Notes: grit-hf runs the checkpoint with PyTorch (fp32, bf16, or torchao's int8/int4 weights), llama.cpp a",
        "4-bit GGUF (Q4_1) with its own kernels; decoding on a CPU is bound by reading the weights, so per-token",
        "speed mostly reflects their size.",
        "grit-hf micro-batches embeddings; without batching its concurrent streams take turns token by token, with",
        "batching their decode steps run as one forward pass (prefills stay serialised). llama.cpp's Python server",
        "serialises whole requests. With 4 to 8 requests per point, p99 is close to the maximum. llama.cpp's",
        "embeddings are not normalised: the client normalises them.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"grit-hf fp32": "tab:cyan", "grit-hf bf16": "tab:blue", "grit-hf bf16+batching": "tab:green"}
    colors.update({"grit-hf int8+batching": "tab:olive", "grit-hf int4+batching": "tab:red"})
    colors["llama.cpp"] = "tab:orange"
    flows = list(dict.fromkeys(row["flow"] for row in report["results"]))
    groups = [["embeddings"], ["chat"], [f for f in flows if f.startswith("rag")]]
    groups = [[f for f in group if f in flows] for group in groups]
    groups = [group for group in groups if group]
    figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.2), squeeze=False)
    for axis, group in zip(axes[0], groups):
        for flow in group:
            for server in dict.fromkeys(row["server"] for row in report["results"]):
                rows = sorted(
                    (r for r in report["results"] if (r["flow"], r["server"]) == (flow, server) and r["p50_ms"]),
                    key=lambda r: r["concurrency"],
                )
                if not rows:
                    continue
                x = [r["concurrency"] for r in rows]
                color = "tab:purple" if flow == "rag (no cache)" else colors.get(server)
                label = f"{server}: {flow} p50"
                axis.plot(x, [r["p50_ms"] for r in rows], marker="o", color=color, label=label)
                axis.plot(x, [r["p99_ms"] for r in rows], ls="--", color=color, alpha=0.6)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel("latency (ms; solid p50, dashed p99)")
        axis.set_title(" / ".join(group))
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    figure.suptitle(f"OpenAI-style serving on {report['environment']['machine']['cpu_count']} CPUs, 1 thread each")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
