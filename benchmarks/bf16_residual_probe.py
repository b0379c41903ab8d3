"""Where bf16's answer flips come from: greedy RAG answers in fp32, in bf16, and with bf16 matmuls over an fp32
residual stream (a probe, not a grit-hf mode).

`dtype_quality.py` found that bf16 and fp32 give identical greedy answers (32 new tokens) on only ~65% of the
manpages/eval questions, where issue 20 asked for 95%. This probe runs the same questions three ways on the same
checkpoint: fp32; bf16 (grit-hf's CPU default: weights, activations and the residual stream in bf16); and "bf16
matmuls": every decoder `nn.Linear` multiplies a bf16 copy of its weight with its input rounded to bf16 and returns
fp32, so that norms, residual additions, rotary embeddings, attention and the LM head stay fp32. It reports the share
of answers identical to fp32 and the time of each. It patches `nn.Linear` modules in place, by hand, because no
library offers "bf16 weights, fp32 activations" as a dtype: torch's autocast would cast the fp32 weights again at
every call.

    python benchmarks/bf16_residual_probe.py --questions 40 --output benchmarks/results/bf16_residual_probe_cpu
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from dtype_quality import greedy_answers
from report import command_line, data_folder, environment, write_report

__all__ = ["main"]


class Bf16MatmulLinear(torch.nn.Module):
    """`linear`'s result from a bf16 weight and the input rounded to bf16, returned in fp32."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = linear.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output = torch.nn.functional.linear(hidden.to(torch.bfloat16), self.weight).float()
        return output if self.bias is None else output + self.bias


def bf16_matmuls(model: torch.nn.Module) -> torch.nn.Module:
    """`model` (fp32) with every decoder `nn.Linear` replaced by a `Bf16MatmulLinear` (the LM head stays fp32)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not model.get_output_embeddings():
                setattr(module, name, Bf16MatmulLinear(child))
    return model


def answers(model, examples, new_tokens: int) -> tuple[list[str], float]:
    """`dtype_quality.greedy_answers`, doc-cached then plain RAG for each question, and the seconds they took."""
    start = time.perf_counter()
    by_mode = greedy_answers(model, examples, new_tokens)
    return [
        text for pair in zip(by_mode["doc"], by_mode["rag_doc_query"]) for text in pair
    ], time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    from grit_hf import load_model
    from grit_hf.folders.resolve import resolve_checkpoint
    from grit_hf.records.rag_examples import read_rag_examples

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    path = resolve_checkpoint(args.model)
    examples = read_rag_examples(data_folder() / "manpages" / "eval", limit=args.questions)
    variants = {
        "float32": lambda: load_model(path, device="cpu", dtype="float32"),
        "bfloat16": lambda: load_model(path, device="cpu", dtype="bfloat16"),
        "bf16 matmuls, fp32 residual": lambda: bf16_matmuls(load_model(path, device="cpu", dtype="float32")),
    }
    rows, reference = [], None
    for name, load_variant in variants.items():
        texts, seconds = answers(load_variant(), examples, args.new_tokens)
        reference = reference or texts
        identical = sum(a == b for a, b in zip(reference, texts))
        rows.append({"variant": name, "identical_to_fp32": f"{identical}/{len(texts)}", "seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
    report = {
        **environment("transformers"), "threads": args.threads, "load_average": load,
        "command": command_line(__file__, argv),
        "questions": len(examples), "new_tokens": args.new_tokens, "rows": rows,
    }  # fmt: skip
    lines = [
        "# Greedy RAG answers identical to fp32: bf16 against bf16 matmuls over an fp32 residual stream", "",
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- command: `{report['command']}` (threads {args.threads}, load average {load})",
        f"- {len(examples)} manpages/eval questions x (doc-cached, plain RAG), {args.new_tokens} new tokens, greedy", "",
        "| variant | identical to fp32 | seconds (all answers) |", "|---|---:|---:|",
        *(f"| {r['variant']} | {r['identical_to_fp32']} | {r['seconds']} |" for r in rows),
    ]  # fmt: skip
    write_report(args.output, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
