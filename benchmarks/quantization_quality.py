"""What quantized weights (`grit_hf.load_model(..., quantization=...)`) cost against the model's bf16, on the CPU:

- embeddings of manpages/eval (every query with its instruction, every document without): cosine of each setting's
  embeddings to bf16's (mean and minimum over all texts), nDCG@10 / recall@10 and the time to embed them;
- greedy RAG answers (the first `--questions` RAG examples of manpages/eval, the example's document, `--new-tokens`
  tokens): plain RAG and doc caching (the checkpoint's cached states) in each setting; the share identical to bf16's
  answers and their mean token F1 to them (identical answers count 1);
- doc-caching fidelity inside each setting (`grit_hf.evaluation.evaluate_rag_fidelity`: the doc-cached answer
  against plain RAG, token F1 and KL along plain RAG's answer): quantization must leave it unchanged within noise;
- whether the states' fingerprint tells each setting apart from bf16 (cached states are never mixed).

    python benchmarks/quantization_quality.py --threads 1 --output benchmarks/results/quantization_quality_cpu
"""

from __future__ import annotations

import argparse
import statistics

import torch
from decode_profile import SETTINGS
from dtype_quality import _retrieval
from grit_finetune_smollm2 import retrieval_data
from report import command_line, data_folder, environment, load_average, write_report

__all__ = ["main"]


def _answers(model, examples, new_tokens: int) -> dict:
    from grit_hf import GritRAG
    from grit_hf.evaluation.rag_fidelity import evaluate_rag_fidelity

    result = evaluate_rag_fidelity(GritRAG(model), examples, modes=["doc"], max_new_tokens=new_tokens)
    setting = result["runs"][0]["recompute"]  # the model's own recompute setting ("none" without one)
    return {
        "cache_attention": result["cache_attention"],
        "recompute": setting,
        "fidelity": {k: round(v, 4) for k, v in result["modes"]["doc"].items() if v is not None},
        "plain": [row["doc"]["plain"] for row in result["answers"]],
        "cached": [row["doc"][setting] for row in result["answers"]],
    }


def _agreement(reference: list[str], answers: list[str]) -> dict:
    from grit_hf.evaluation.metrics import token_f1

    return {
        "identical": f"{sum(a == b for a, b in zip(reference, answers))}/{len(answers)}",
        "token_f1": round(statistics.fmean(token_f1(b, a) for a, b in zip(reference, answers)), 3),
    }


def _markdown(report: dict) -> str:
    rows, reference = report["settings"], report["reference"]
    names = list(rows)
    lines = [
        f"# Quantized weights against {reference} on the CPU (default model)", "",
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- command: `{report['command']}`",
        f"- load average at start / end: {report['load_average']['start']} / {report['load_average']['end']} "
        "(a shared machine: times are indicative)", "",
        "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
    ]  # fmt: skip

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(str(cell(rows[name])) for name in names) + " |")

    row("weights MB (linear layers, head, norms)", lambda r: f"{r['weight_bytes'] / 1e6:.1f}")
    row("manpages/eval nDCG@10", lambda r: r["retrieval"]["ndcg@10"])
    row("manpages/eval recall@10", lambda r: r["retrieval"]["recall@10"])
    row(f"embedding cosine to {reference}: mean", lambda r: r.get("cosine_mean", "-"))
    row(f"embedding cosine to {reference}: min", lambda r: r.get("cosine_min", "-"))
    row(f"retrieval time (s, {report['threads']} thread)", lambda r: r["retrieval"]["seconds"])
    row(f"plain RAG answers identical to {reference}", lambda r: r.get("plain_vs_reference", {}).get("identical", "-"))
    row(f"plain RAG token F1 to {reference}", lambda r: r.get("plain_vs_reference", {}).get("token_f1", "-"))
    row(
        f"doc-cached answers identical to {reference}",
        lambda r: r.get("cached_vs_reference", {}).get("identical", "-"),
    )
    row(f"doc-cached token F1 to {reference}", lambda r: r.get("cached_vs_reference", {}).get("token_f1", "-"))
    row("fidelity: doc caching vs plain RAG, token F1", lambda r: r["answers"]["fidelity"]["token_f1"])
    row("fidelity: KL along plain RAG's answer (nats)", lambda r: r["answers"]["fidelity"]["kl"])
    row(f"states fingerprinted apart from {reference}", lambda r: r.get("fingerprint_differs", "-"))
    a = next(iter(rows.values()))["answers"]
    lines += [
        "",
        f"{report['questions']} RAG questions of manpages/eval, {report['new_tokens']} greedy tokens, cached states: "
        f"{a['cache_attention']} (the checkpoint's); {report['texts']} texts embedded (queries with their "
        f"instruction, documents without, at most {report['max_length']} tokens).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--settings", nargs="+", default=["bfloat16", "int8", "int4"], choices=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="evaluation subsets (figures only show that it runs)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    from grit_hf import load_model
    from grit_hf.cache.fingerprint import compute_fingerprint
    from grit_hf.folders.resolve import resolve_checkpoint
    from grit_hf.quantization import weight_bytes
    from grit_hf.records.rag_examples import read_rag_examples

    torch.set_num_threads(args.threads)
    start_load = load_average()
    path = resolve_checkpoint(args.model)
    data = retrieval_data(*((20, 40) if args.smoke else (None, None)), seed=0)
    examples = read_rag_examples(data_folder() / "manpages" / "eval", limit=args.questions)
    reference = args.settings[0]
    rows, embeddings, prints = {}, {}, {}
    for name in args.settings:
        model = load_model(path, device="cpu", **SETTINGS[name])
        metrics, embeddings[name], seconds = _retrieval(model, data, args.max_length)
        rows[name] = {
            "weight_bytes": weight_bytes(model),
            "retrieval": {**metrics, "seconds": round(seconds, 1)},
            "answers": _answers(model, examples, args.new_tokens),
        }
        prints[name] = compute_fingerprint(model, is_causal=False)
        print(name, rows[name]["retrieval"], rows[name]["answers"]["fidelity"], flush=True)
        del model
    for name in args.settings[1:]:
        cosine = torch.nn.functional.cosine_similarity(embeddings[reference], embeddings[name])
        rows[name].update(
            cosine_mean=round(float(cosine.mean()), 6),
            cosine_min=round(float(cosine.min()), 6),
            plain_vs_reference=_agreement(rows[reference]["answers"]["plain"], rows[name]["answers"]["plain"]),
            cached_vs_reference=_agreement(rows[reference]["answers"]["cached"], rows[name]["answers"]["cached"]),
            fingerprint_differs=not prints[name].matches(prints[reference]),
        )
    report = {
        **environment("transformers", "torchao"), "threads": args.threads, "reference": reference,
        "questions": len(examples), "new_tokens": args.new_tokens, "max_length": args.max_length,
        "texts": len(embeddings[reference]), "settings": rows,
        "load_average": {"start": start_load, "end": load_average()},
        "command": command_line(__file__, argv),
    }  # fmt: skip
    write_report(args.output, report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
