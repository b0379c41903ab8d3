"""The learning curve of the default model's training run: evaluate its checkpoints on a fixed schedule.

A training run (`grit-hf train --config examples/train/default_model_cpu.yaml`) saves a Trainer checkpoint every
`save_steps`; this script evaluates the base model (step 0) and every checkpoint whose step is a multiple of
`--every`, in a process of its own (so that a slow or failed evaluation never stops the training), and appends one
row per step to `PREFIX.json`, then rewrites `PREFIX.md` (a table) and `PREFIX.png` (a plot). Each point:

- manpages/eval nDCG@10 (1000 queries, 1000 documents truncated to 256 tokens; `GritRetriever`);
- held-out next-token loss on lmtext (200 passages; never trained on);
- doc caching from the embedding pass's own (bidirectional) states against plain RAG on held-out man pages
  (`--fidelity-examples`, the first N of manpages/eval; token F1, exact match, KL), 32 new tokens;
- the chat probe's answer.

    # beside a running training (one thread each), until it has written its final checkpoint:
    python benchmarks/default_model_curve.py --run runs/default_model_cpu/adapter --watch \\
        --results benchmarks/results/default_model_cpu_curve
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from grit_finetune_smollm2 import evaluate, retrieval_data
from report import command_line, data_folder, environment
from train_default_model import fidelity

__all__ = ["main"]

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def load_point(base_path: Path, checkpoint: Path | None, dtype, recompute: str | None = None):
    """The base model, or the base with the checkpoint's adapter merged in (and its GRIT settings), in `dtype`;
    `recompute` sets the selective recomputation its doc caching is measured with."""
    import torch
    from peft import PeftModel

    from grit_hf import GritLMForCausalLM

    model = GritLMForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if checkpoint is not None:
        settings = checkpoint / "grit_config.json"
        for key, value in (json.loads(settings.read_text()) if settings.is_file() else {}).items():
            setattr(model.config, key, value)
        model = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    if recompute is not None:
        model.config.cache_recompute = None if recompute == "none" else recompute
    return model.to(dtype).eval()


def evaluate_point(model, data, passages, examples) -> dict:
    result = {**evaluate(model, model.tokenizer, data, passages), "fidelity": fidelity(model, examples)}
    return {
        "ndcg@10": result["retrieval"]["ndcg@10"],
        "recall@10": result["retrieval"]["recall@10"],
        "heldout_loss": result["heldout_next_token"]["loss"],
        "fidelity_token_f1": result["fidelity"].get("token_f1"),
        "fidelity_exact_match": result["fidelity"].get("exact_match"),
        "fidelity_kl": result["fidelity"].get("kl"),
        "probe": result["probe"]["answer"],
        "seconds": result["seconds"],
    }


def pending_steps(run: Path, every: int, done: set[int]) -> list[tuple[int, Path | None]]:
    """`(step, checkpoint)` not yet evaluated: step 0 (the base, checkpoint `None`) and finished checkpoints whose step
    is a multiple of `every` (a checkpoint is finished once its `trainer_state.json` is written)."""
    found = [(0, None)]
    for folder in run.iterdir() if run.is_dir() else ():
        match = CHECKPOINT.match(folder.name)
        if match and int(match[1]) % every == 0 and (folder / "trainer_state.json").is_file():
            found.append((int(match[1]), folder))
    return sorted(point for point in found if point[0] not in done)


def training_losses(run: Path) -> dict[int, dict]:
    """The logged training losses by step, from the newest checkpoint's `trainer_state.json`."""
    states = sorted(run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return {}
    history = json.loads(states[-1].read_text())["log_history"]
    keys = ("loss", "loss_rep", "loss_gen", "loss_cache")
    return {e["step"]: {k: e[k] for k in keys if k in e} for e in history if "loss" in e}


def _markdown(report: dict) -> str:
    lines = [
        f"# Learning curve of the default model ({report['label']})", "",
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- training: `{report['training_command']}`", f"- evaluation: `{report['command']}` ({report['eval_set']})",
        "", "| step | nDCG@10 | recall@10 | held-out loss | doc caching token F1 | exact match | KL | probe | eval s |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]  # fmt: skip
    for p in report["points"]:
        lines.append(
            f"| {p['step']} | {p['ndcg@10']} | {p['recall@10']} | {p['heldout_loss']} | {p['fidelity_token_f1']} | "
            f"{p['fidelity_exact_match']} | {p['fidelity_kl']} | {p['probe'][:60]!r} | {p['seconds']} |"
        )
    losses = report.get("training_losses", {})
    if losses:
        lines += ["", "Training losses (step: loss, loss_rep, loss_gen, loss_cache):", ""]
        lines.append(", ".join(
            f"{step}: {v.get('loss')}/{v.get('loss_rep')}/{v.get('loss_gen')}/{v.get('loss_cache')}"
            for step, v in sorted(losses.items(), key=lambda item: int(item[0]))
        ))  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["points"]
    steps = [p["step"] for p in points]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    series = [
        ("manpages/eval nDCG@10", "ndcg@10", 0.80), ("held-out next-token loss (lmtext)", "heldout_loss", None),
        ("doc caching vs plain RAG, token F1", "fidelity_token_f1", 0.90),
    ]  # fmt: skip
    for axis, (title, key, goal) in zip(axes, series):
        axis.plot(steps, [p[key] for p in points], marker="o")
        if goal is not None:
            axis.axhline(goal, color="grey", linestyle="--", linewidth=1, label=f"goal {goal}")
        if key == "heldout_loss" and points and points[0]["step"] == 0:
            axis.axhline(points[0][key] * 1.05, color="grey", linestyle="--", linewidth=1, label="base + 5%")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="center right")  # the curves stay clear of it
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("training step")
    figure.suptitle(f"default model, {report['label']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="the training's output_dir (its checkpoint-N)")
    parser.add_argument("--results", required=True, help="PREFIX of PREFIX.json / .md / .png (appended to)")
    parser.add_argument("--every", type=int, default=50, help="evaluate the checkpoints of every N steps")
    parser.add_argument("--fidelity-examples", type=int, default=40)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--label", default="CPU run, bf16 evaluation")
    parser.add_argument("--training-command", default="grit-hf train --config examples/train/default_model_cpu.yaml")
    parser.add_argument("--watch", action="store_true", help="wait for new checkpoints until the run has finished")
    parser.add_argument("--max-steps", type=int, default=None, help="with --watch: stop after this step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--start-adapter",
        type=Path,
        default=None,
        help="step 0 is this adapter (a run that starts from one), not the base",
    )
    parser.add_argument(
        "--recompute", default=None, help="doc caching's selective recomputation at every point (default: as recorded)"
    )
    parser.add_argument("--smoke", action="store_true", help="evaluation subsets (figures only show that it runs)")
    args = parser.parse_args(argv)
    import torch

    from grit_hf.folders.resolve import resolve_checkpoint
    from grit_hf.records.rag_examples import read_rag_examples

    torch.set_num_threads(args.threads)
    shared = data_folder()
    data = retrieval_data(*((20, 40) if args.smoke else (None, None)), seed=0)
    passages = [json.loads(line)["text"] for line in open(shared / "lmtext" / "passages.jsonl")][
        : 8 if args.smoke else None
    ]
    examples = read_rag_examples(shared / "manpages" / "eval", limit=2 if args.smoke else args.fidelity_examples)
    json_path = Path(f"{args.results}.json")
    report = json.loads(json_path.read_text()) if json_path.is_file() else {"points": []}
    report.update(environment("transformers", "peft"))
    report.update({
        "label": args.label, "training_command": args.training_command, "start_adapter": str(args.start_adapter),
        "command": command_line(__file__, argv),
        "eval_set": f"manpages/eval {len(data.qrels)} queries / {len(data.corpus)} documents; lmtext {len(passages)} "
        f"passages; doc caching on the first {len(examples)} manpages/eval pages; {args.dtype}",
    })  # fmt: skip
    base_path = resolve_checkpoint("default-base")
    dtype = getattr(torch, args.dtype)
    while True:
        done = {point["step"] for point in report["points"]}
        todo = pending_steps(args.run, args.every, done)
        if args.max_steps is not None:
            todo = [point for point in todo if point[0] <= args.max_steps]
        for step, checkpoint in todo:
            checkpoint = args.start_adapter if checkpoint is None else checkpoint
            model = load_point(base_path, checkpoint, dtype, args.recompute)
            point = {"step": step, "recompute": model.config.cache_recompute or "none",
                     **evaluate_point(model, data, passages, examples)}  # fmt: skip
            print(json.dumps(point), flush=True)
            report["points"] = sorted([*report["points"], point], key=lambda p: p["step"])
            report["training_losses"] = training_losses(args.run)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
            Path(f"{args.results}.md").write_text(_markdown(report))
            _plot(report, Path(f"{args.results}.png"))
        finished = args.max_steps is not None and any(p["step"] >= args.max_steps for p in report["points"])
        if not args.watch or finished:
            return 0
        time.sleep(60)


if __name__ == "__main__":
    raise SystemExit(main())
