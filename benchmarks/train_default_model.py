"""Train the GRIT default model (issue: a GRIT-trained, RAG-ready default model) and measure it before and after.

1. before: the untrained base (`default-base`): nDCG@10 on manpages/eval (documents truncated to 256 tokens),
   held-out next-token loss on lmtext, doc-caching fidelity against plain RAG from the embedding pass's own
   (bidirectional) states on held-out man pages (`grit_hf.evaluation.rag_fidelity`), and a chat probe;
2. training with `examples/train/default_model.yaml` (LoRA, representation + generative + cache losses) on the data
   built by `examples/train/data/build_data.py`;
3. after: the same evaluations on the base with the adapter merged (what `--model default` loads);
4. with `--export-adapter DIR`, the adapter (+ its GRIT settings) is copied to DIR (e.g. `grit_hf/data/default_adapter`,
   where `default_model_path()` finds it).

    # the real run (one GPU):
    python examples/train/data/build_data.py --output data/grit_debian
    python benchmarks/train_default_model.py --data data/grit_debian --export-adapter grit_hf/data/default_adapter \\
        --results benchmarks/results/default_model_gpu
    # a CPU smoke run of the whole pipeline (a few steps, evaluation subsets; figures only show that it runs):
    python examples/train/data/build_data.py --output /tmp/grit_smoke --smoke --no-gzip
    python benchmarks/train_default_model.py --data /tmp/grit_smoke --smoke --results /tmp/default_model_smoke

Extra arguments are recipe overrides for the TrlParser (e.g. `--max_steps 600`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from grit_finetune_smollm2 import evaluate, retrieval_data, timed_train
from report import REPO, command_line, data_folder, environment, write_report

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "grit_config.json")


def fidelity(model, examples, latency: bool = False) -> dict:
    """Doc caching from the embedding pass's own states against plain RAG (token F1, KL, gold F1); with `latency`,
    also the time of the doc-cached answer against plain RAG's on the same questions (16 new tokens each, ignoring
    the end token, so both generate the same number of tokens; medians)."""
    import statistics
    import time

    from grit_hf import GritRAG
    from grit_hf.evaluation.rag_fidelity import evaluate_rag_fidelity

    rag = GritRAG(model, cache_attention="bidirectional", max_length=512, verify_positions=False)
    result = evaluate_rag_fidelity(rag, examples, modes=["doc"], max_new_tokens=32, show_progress_bar=False)
    out = {key: round(value, 4) for key, value in result["modes"]["doc"].items() if value is not None}
    if latency:
        seconds = {"doc": [], "rag_doc_query": []}
        for example in examples:
            ids = rag.add_documents(list(example.documents)[:1])
            for mode in seconds:
                start = time.perf_counter()
                rag.answer(example.question, mode=mode, doc_ids=ids, max_new_tokens=16, ignore_eos=True)
                seconds[mode].append(time.perf_counter() - start)
        cached, plain = statistics.median(seconds["doc"]), statistics.median(seconds["rag_doc_query"])
        out.update(
            cached_answer_s=round(cached, 3),
            plain_rag_answer_s=round(plain, 3),
            latency_ratio=round(cached / plain, 3),
        )
    return out


def export_adapter(adapter: Path, target: Path) -> None:
    """Copy the adapter's `ADAPTER_FILES` to `target`, recording its base as `default-base` (the name grit-hf
    resolves on any machine) instead of the training machine's folder."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy2(adapter / name, target / name)
    config_path = target / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "default-base"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _trainer_state(adapter: Path) -> dict:
    """The `trainer_state.json` saved with an adapter's Trainer checkpoint (`{}` without one)."""
    path = adapter / "trainer_state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _training_line(report: dict) -> str:
    train = report["training"]
    if train["seconds"] is None:  # --adapter: trained by another process (its steps and losses are in its checkpoint)
        return f"Training: {train['steps']} steps, trained elsewhere (`--adapter`); adapter {train['adapter_mb']} MB."
    return (
        f"Training: {train['steps']} steps in {train['seconds']} s, peak memory {train['peak_memory_mb']} MiB "
        f"({train['peak_memory_measure']}); adapter {train['adapter_mb']} MB."
    )


def _markdown(report: dict) -> str:
    before, after, train = report["before"], report["after"], report["training"]
    rows = [
        ("manpages/eval nDCG@10 (goal >= 0.80 on CPU, 0.85 on a GPU)", before["retrieval"]["ndcg@10"],
         after["retrieval"]["ndcg@10"]),
        ("held-out next-token loss (goal <= base + 5%)", before["heldout_next_token"]["loss"],
         after["heldout_next_token"]["loss"]),
        ("doc caching vs plain RAG, token F1 (goal >= 0.90)", before["fidelity"]["token_f1"],
         after["fidelity"]["token_f1"]),
        ("doc caching vs plain RAG, KL nats/token", before["fidelity"]["kl"], after["fidelity"]["kl"]),
        ("gold-answer token F1, doc-cached answer", before["fidelity"].get("gold_f1"),
         after["fidelity"].get("gold_f1")),
        ("gold-answer token F1, plain RAG answer", before["fidelity"].get("gold_f1_plain"),
         after["fidelity"].get("gold_f1_plain")),
        ("doc-cached answer / plain RAG answer, time (16 tokens, median)", before["fidelity"].get("latency_ratio"),
         after["fidelity"].get("latency_ratio")),
        ("  doc-cached answer, s", before["fidelity"].get("cached_answer_s"), after["fidelity"].get("cached_answer_s")),
        ("  plain RAG answer, s", before["fidelity"].get("plain_rag_answer_s"),
         after["fidelity"].get("plain_rag_answer_s")),
    ]  # fmt: skip
    lines = [f"# GRIT-trained default model ({report['label']})", ""]
    if report["smoke"]:
        lines += ["> **Smoke run**: a few steps on tiny data; the figures only show that the pipeline runs.", ""]
    lines += [
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- command: `{report['command']}`",
        f"- recipe: `{report['recipe']}`" + (f" + overrides `{report['overrides']}`" if report["overrides"] else ""),
        f"- evaluation: {report['eval_set']}", "", "| | base | trained |", "|---|---:|---:|",
        *(f"| {name} | {b} | {a} |" for name, b, a in rows), "",
        _training_line(report), "",
        f"Probe `{before['probe']['prompt']}`:", f"- base: {before['probe']['answer']!r}",
        f"- trained: {after['probe']['answer']!r}", "",
        "Loss curve (step, loss_rep, loss_gen, loss_cache): " + ", ".join(
            f"({e['step']}, {e.get('loss_rep')}, {e.get('loss_gen')}, {e.get('loss_cache')})"
            for e in train["log_history"]),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="output folder of examples/train/data/build_data.py")
    parser.add_argument("--recipe", default=str(REPO / "examples" / "train" / "default_model.yaml"))
    parser.add_argument("--output-dir", default="runs/default_model")
    parser.add_argument("--export-adapter", default=None, help="copy the trained adapter here")
    parser.add_argument(
        "--adapter", default=None, help="evaluate (and export) this trained adapter instead of training one"
    )
    parser.add_argument("--results", default=None, help="write RESULTS.json and RESULTS.md")
    parser.add_argument("--smoke", action="store_true", help="a few steps, evaluation on subsets")
    parser.add_argument("--fidelity-examples", type=int, default=None, help="held-out man pages (200; smoke 4)")
    parser.add_argument("--threads", type=int, default=None)
    args, overrides = parser.parse_known_args(argv)
    import torch

    from grit_hf import GritLMForCausalLM
    from grit_hf.folders.adapters import merge_adapter_checkpoint
    from grit_hf.folders.resolve import resolve_checkpoint
    from grit_hf.records.rag_examples import read_rag_examples

    cuda = torch.cuda.is_available()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    if args.smoke:
        overrides = [
            "--max_steps", "2", "--emb_batch_size", "4", "--emb_chunk_size", "2", "--per_device_train_batch_size",
            "2", "--cache_batch_size", "2", "--max_length", "128", "--passage_max_length", "96", "--logging_steps",
            "1", "--warmup_steps", "0", "--cache_answer_max_tokens", "8",
            *([] if cuda else ["--bf16", "false", "--use_cpu", "true", "--dataloader_pin_memory", "false"]),
            *overrides,
        ]  # fmt: skip
    shared = data_folder()
    eval_data = retrieval_data(*((20, 40) if args.smoke else (None, None)), seed=0)
    passages = [json.loads(line)["text"] for line in open(shared / "lmtext" / "passages.jsonl")][
        : 8 if args.smoke else 200
    ]
    examples = read_rag_examples(
        shared / "manpages" / "eval", limit=args.fidelity_examples or (4 if args.smoke else 200)
    )
    device = "cuda" if cuda else "cpu"

    base_path = resolve_checkpoint("default-base")
    base = GritLMForCausalLM.from_pretrained(base_path, dtype=torch.float32).to(device).eval()
    before = {**evaluate(base, base.tokenizer, eval_data, passages), "fidelity": fidelity(base, examples, True)}
    print(json.dumps({"before": before}), flush=True)
    del base

    output_dir = Path(args.output_dir)
    trl_args = ["--config", args.recipe, "--output_dir", str(output_dir / "adapter")]
    trl_args += ["--embedding_dataset", str(data / "embedding"), "--generative_dataset", str(data / "generative")]
    trl_args += ["--cache_dataset", str(data / "rag"), *overrides]
    if args.adapter:  # trained elsewhere (e.g. the CPU run of examples/train/default_model_cpu.yaml)
        adapter, trainer, seconds, peak = Path(args.adapter), None, None, None
    else:
        trainer, seconds, peak = timed_train(trl_args, cuda)
        adapter = output_dir / "adapter"
    merged = merge_adapter_checkpoint(base_path, adapter, output_dir / "merged")
    trained = GritLMForCausalLM.from_pretrained(merged, dtype=torch.float32).to(device).eval()
    after = {
        **evaluate(trained, trained.tokenizer, eval_data, passages),
        "fidelity": fidelity(trained, examples, True),
    }
    if args.export_adapter:
        export_adapter(adapter, Path(args.export_adapter))
    state = trainer.state if trainer is not None else _trainer_state(adapter)
    history = (
        [e for e in state.get("log_history", []) if "loss" in e]
        if isinstance(state, dict)
        else [e for e in state.log_history if "loss" in e]
    )
    report = {
        **environment("transformers", "trl", "peft", "accelerate"),
        "label": ("smoke run, " if args.smoke else "") + ("GPU" if cuda else "CPU"),
        "smoke": args.smoke,
        "command": command_line(__file__, argv),
        "recipe": os.path.relpath(args.recipe, REPO), "overrides": [] if args.adapter else overrides,
        "eval_set": f"manpages/eval: {len(eval_data.qrels)} queries, {len(eval_data.corpus)} documents; lmtext: "
        f"{len(passages)} passages; fidelity: {len(examples)} held-out man pages, doc mode, 32 new tokens",
        "before": before, "after": after,
        "training": {
            "steps": state["global_step"] if isinstance(state, dict) else state.global_step,
            "seconds": None if seconds is None else round(seconds, 1),
            "peak_memory_mb": None if peak is None else round(peak, 1),
            "peak_memory_measure": "torch.cuda.max_memory_allocated" if cuda else "process peak RSS (ru_maxrss)",
            "adapter_mb": round(sum((adapter / n).stat().st_size for n in ADAPTER_FILES) / 1e6, 2),
            "log_history": [
                {k: e[k] for k in ("step", "loss", "loss_rep", "loss_gen", "loss_cache") if k in e} for e in history
            ],
        },
    }  # fmt: skip
    write_report(args.results, report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
