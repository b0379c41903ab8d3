"""How far bf16 embeddings are from fp32 ones: grit-hf against the reference `gritlm` package on the same weights.

A fixed cosine threshold on random weights is the wrong oracle for a bf16 test (on random 7B weights bf16 against fp32
gives 0.998 for any implementation). The right question is whether grit-hf loses more to bf16 than the reference does.
For each attention implementation this script embeds the same texts four ways: the reference in fp32 (the anchor),
the reference in bf16, grit-hf in fp32 and grit-hf in bf16; it reports 1 - cosine to the anchor per text and the ratio
of grit-hf's largest bf16 error to the reference's. `tests/test_gpu.py` asserts that ratio on a 7B-shaped Mistral.

CPU, the default model (SmolLM2-135M-Instruct):

    python benchmarks/bf16_error.py --output benchmarks/results/bf16_error_cpu

H100, a Mistral-7B-shaped model with random bf16 weights (CUDA only):

    python benchmarks/bf16_error.py --model mistral-7b-random --device cuda --output benchmarks/results/bf16_error_h100
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import torch
from report import command_line, environment, write_report

__all__ = ["bf16_errors", "TEXTS", "INSTRUCTION", "main"]
TEXTS = [
    "The capital of France is Paris.",
    "Photosynthesis happens in chloroplasts. " * 20,
    "short",
    "ls lists directory contents; cp copies files; mv moves them. " * 60,
]
INSTRUCTION = "Retrieve the passage"


def _embed(load, texts: list[str], **kwargs) -> torch.Tensor:
    model = load()
    try:
        return torch.as_tensor(model.encode(texts, max_length=2048, **kwargs), dtype=torch.float32).cpu()
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def bf16_errors(
    stock_path: str | Path, attn: str, device: str = "cpu", texts: list[str] = TEXTS, instruction: str = INSTRUCTION
) -> dict[str, list[float]]:
    """1 - cosine to the reference's fp32 embeddings of `texts` (queries with `instruction`), per text, for
    `reference_bf16`, `grit_hf_bf16` and `grit_hf_fp32`. `stock_path` is a stock causal-LM checkpoint."""
    import gritlm

    from grit_hf import GritLMForCausalLM
    from grit_hf.folders.sentence_transformers import grit_prompt
    from grit_hf.modeling_gritlm import load_grit_config

    def reference(dtype):
        return lambda: gritlm.GritLM(
            str(stock_path), attn="bbcc", device=device, dtype=dtype, attn_implementation=attn
        )

    def ours(dtype):
        return lambda: GritLMForCausalLM.from_pretrained(stock_path, dtype=dtype, attn_implementation=attn).to(device)

    prompt = grit_prompt(load_grit_config(stock_path), instruction)
    anchor = _embed(reference(torch.float32), texts, instruction=prompt)
    embeddings = {
        "reference_bf16": _embed(reference(torch.bfloat16), texts, instruction=prompt),
        "grit_hf_bf16": _embed(ours(torch.bfloat16), texts, instruction=instruction),
        "grit_hf_fp32": _embed(ours(torch.float32), texts, instruction=instruction),
    }
    return {
        name: (1 - torch.nn.functional.cosine_similarity(value, anchor, dim=-1)).tolist()
        for name, value in embeddings.items()
    }


def error_ratio(errors: dict[str, list[float]]) -> float:
    """grit-hf's largest bf16 error over the reference's."""
    return max(errors["grit_hf_bf16"]) / max(max(errors["reference_bf16"]), 1e-12)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default', 'mistral-7b-random' or a stock checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    workdir = tempfile.TemporaryDirectory()
    if args.model == "default":
        from grit_hf.folders.default_model import default_base_path

        path = default_base_path()
    elif args.model == "mistral-7b-random":
        if not torch.cuda.is_available():
            print("mistral-7b-random needs CUDA; nothing measured.")
            return
        from encode_throughput import make_random_mistral_7b

        path = make_random_mistral_7b(Path(workdir.name) / "mistral-7b-random", torch.bfloat16, stock=True)
    else:
        path = Path(args.model)
    rows = {attn: bf16_errors(path, attn, args.device) for attn in args.attn}
    report = environment("transformers", "gritlm") | {
        "command": command_line(__file__, argv),
        "model": str(args.model),
        "device": args.device,
        "texts_chars": [len(t) for t in TEXTS],
        "errors": rows,
        "ratios": {attn: error_ratio(errors) for attn, errors in rows.items()},
    }
    lines = [
        f"# bf16 against fp32 embeddings, grit-hf and the reference gritlm ({args.model}, {args.device})",
        "",
        f"{report['date']}; {report['machine']['cpu']} / {report['machine']['gpu']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        f"Command: `{report['command']}`",
        "",
        "1 - cosine to the reference's fp32 embedding, per text (queries with an instruction; text lengths "
        f"{report['texts_chars']} characters).",
        "",
        "| attention | reference bf16 | grit-hf bf16 | grit-hf fp32 | grit-hf / reference (largest bf16 error) |",
        "|---|---|---|---|---|",
    ]
    for attn, errors in rows.items():
        cells = [
            ", ".join(f"{e:.2e}" for e in errors[name]) for name in ("reference_bf16", "grit_hf_bf16", "grit_hf_fp32")
        ]
        lines.append(f"| {attn} | {cells[0]} | {cells[1]} | {cells[2]} | {report['ratios'][attn]:.2f} |")
    write_report(args.output, report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
