"""What bf16 costs against fp32 on the CPU, on the same texts and model (the default dtype of grit-hf's loaders on a CPU
with native bf16, `grit_hf.checkpoint.loading`):

- embeddings of manpages/eval (every query with its instruction, every document without), each dtype: cosine of the
  bf16 embeddings to the fp32 ones (mean and minimum over all texts) and nDCG@10 / recall@10 of both;
- greedy RAG answers: the same questions (the first `--questions` RAG examples of manpages/eval, one document each,
  doc-cached and plain RAG) answered in both dtypes; the share of identical answers, and token F1 where they differ;
- parity with the reference `gritlm` in bf16: the largest |difference| and the cosine between grit-hf's and the
  reference's bf16 embeddings of a sample, next to each one's distance to the fp32 embeddings.

    python benchmarks/dtype_quality.py --threads 1 --output benchmarks/results/dtype_quality_cpu
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from grit_finetune_smollm2 import retrieval_data
from report import command_line, data_folder, environment, write_report

__all__ = ["main"]


class _RecordingRetriever:
    """`GritRetriever`, keeping the embeddings it computed (queries then documents)."""

    def __init__(self, model, max_length: int):
        from grit_hf.evaluation import GritRetriever

        self.inner = GritRetriever(model, max_length=max_length, batch_size=32, show_progress_bar=False)
        self.embeddings = None

    def search(self, queries, documents, top_k, query_instruction="", doc_instruction=""):
        encode = dict(normalize=True, convert_to_tensor=True, **self.inner.encode_kwargs)
        q = self.inner.model.encode(queries, instruction=query_instruction, **encode)
        d = self.inner.model.encode(documents, instruction=doc_instruction, **encode)
        self.embeddings = torch.cat([q, d]).float()
        from grit_hf.evaluation.retrieval import _dense_top_k

        return _dense_top_k(q, d, top_k)


def _retrieval(model, data, max_length: int) -> tuple[dict, torch.Tensor, float]:
    from grit_hf.evaluation import RetrievalEvaluator

    retriever = _RecordingRetriever(model, max_length)
    start = time.perf_counter()
    metrics = RetrievalEvaluator(data)(retriever)
    return {k: round(v, 4) for k, v in metrics.items()}, retriever.embeddings, time.perf_counter() - start


def greedy_answers(model, examples, new_tokens: int) -> dict[str, list[str]]:
    """Greedy doc-cached and plain RAG answers to each example's question (causal caches, its first document)."""
    from grit_hf import GritRAG

    rag = GritRAG(model, cache_attention="causal", verify_positions=False)
    answers = {"doc": [], "rag_doc_query": []}
    for example in examples:
        ids = rag.add_documents(list(example.documents)[:1])
        for mode in answers:
            answers[mode].append(rag.answer(example.question, mode=mode, doc_ids=ids, max_new_tokens=new_tokens).text)
    return answers


def _reference_parity(path: Path, texts: list[str], max_length: int) -> dict:
    from gritlm import GritLM

    from grit_hf import load_model
    from grit_hf.folders.sentence_transformers import grit_prompt

    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = load_model(path, device="cpu", dtype=dtype)
        ours = model.encode(texts, max_length=max_length, show_progress_bar=False)
        reference = GritLM(str(path), attn="bbcc", device="cpu", dtype=dtype)
        theirs = reference.encode(texts, instruction=grit_prompt(model), max_length=max_length)
        out[name] = (np.asarray(ours, np.float32), np.asarray(theirs, np.float32))
    fp32 = out["float32"][0]

    def cosine(a, b):
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    ours, theirs = out["bfloat16"]
    return {
        "texts": len(texts),
        "fp32_max_abs_diff_grit_hf_vs_reference": float(np.abs(out["float32"][0] - out["float32"][1]).max()),
        "bf16_max_abs_diff_grit_hf_vs_reference": float(np.abs(ours - theirs).max()),
        "bf16_cosine_grit_hf_vs_reference_min": float(cosine(ours, theirs).min()),
        "bf16_max_abs_error_vs_fp32_grit_hf": float(np.abs(ours - fp32).max()),
        "bf16_max_abs_error_vs_fp32_reference": float(np.abs(theirs - fp32).max()),
        "bf16_cosine_to_fp32_min_grit_hf": float(cosine(ours, fp32).min()),
        "bf16_cosine_to_fp32_min_reference": float(cosine(theirs, fp32).min()),
    }


def _markdown(report: dict) -> str:
    r, a, p = report["retrieval"], report["answers"], report["reference_parity"]
    lines = [
        "# bf16 against fp32 on the CPU (default model)", "",
        f"- date: {report['date']}", f"- machine: {report['machine']}", f"- versions: {report['versions']}",
        f"- command: `{report['command']}`", f"- load average at start: {report['load_average']}", "",
        "| | fp32 | bf16 |", "|---|---:|---:|",
        f"| manpages/eval nDCG@10 | {r['float32']['ndcg@10']} | {r['bfloat16']['ndcg@10']} |",
        f"| manpages/eval recall@10 | {r['float32']['recall@10']} | {r['bfloat16']['recall@10']} |",
        f"| retrieval time (s, {report['threads']} thread) | {r['float32']['seconds']} | {r['bfloat16']['seconds']} |",
        "", f"Embeddings of {r['texts']} texts (queries and documents): cosine of bf16 to fp32 mean "
        f"{r['cosine_mean']}, minimum {r['cosine_min']}.", "",
        f"Greedy RAG answers ({a['questions']} questions, {a['new_tokens']} new tokens, causal caches): identical in bf16 "
        f"and fp32: doc caching {a['identical']['doc']}, plain RAG {a['identical']['rag_doc_query']} "
        f"(token F1 of the others: {a['f1_of_different']}).", "",
        f"Parity with the reference `gritlm` ({p['texts']} documents): fp32 max |diff| {p['fp32_max_abs_diff_grit_hf_vs_reference']:.1e}; "
        f"bf16 max |diff| {p['bf16_max_abs_diff_grit_hf_vs_reference']:.1e} (cosine min "
        f"{p['bf16_cosine_grit_hf_vs_reference_min']:.5f}); bf16 error against fp32: grit-hf "
        f"{p['bf16_max_abs_error_vs_fp32_grit_hf']:.1e} (cosine min {p['bf16_cosine_to_fp32_min_grit_hf']:.5f}), "
        f"reference {p['bf16_max_abs_error_vs_fp32_reference']:.1e} (cosine min "
        f"{p['bf16_cosine_to_fp32_min_reference']:.5f}).",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--parity-texts", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="evaluation subsets (figures only show that it runs)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    from grit_hf import load_model
    from grit_hf.evaluation.metrics import token_f1
    from grit_hf.folders.resolve import resolve_checkpoint
    from grit_hf.records.rag_examples import read_rag_examples

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    path = resolve_checkpoint(args.model)
    data = retrieval_data(*((20, 40) if args.smoke else (None, None)), seed=0)
    examples = read_rag_examples(data_folder() / "manpages" / "eval", limit=args.questions)
    retrieval, embeddings, answers = {}, {}, {}
    for name in ("float32", "bfloat16"):
        model = load_model(path, device="cpu", dtype=name)
        metrics, embeddings[name], seconds = _retrieval(model, data, args.max_length)
        retrieval[name] = {**metrics, "seconds": round(seconds, 1)}
        answers[name] = greedy_answers(model, examples, args.new_tokens)
    cosine = torch.nn.functional.cosine_similarity(embeddings["float32"], embeddings["bfloat16"])
    retrieval.update(
        texts=len(cosine), cosine_mean=round(float(cosine.mean()), 6), cosine_min=round(float(cosine.min()), 6)
    )
    identical, different = {}, []
    for mode in answers["float32"]:
        pairs = list(zip(answers["float32"][mode], answers["bfloat16"][mode]))
        identical[mode] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
        different += [round(token_f1(b, a), 3) for a, b in pairs if a != b]
    texts = list(data.corpus.values())[: args.parity_texts]
    report = {
        **environment("transformers"), "threads": args.threads, "load_average": load,
        "command": command_line(__file__, argv),
        "retrieval": retrieval,
        "answers": {"questions": len(examples), "new_tokens": args.new_tokens, "identical": identical,
                    "f1_of_different": different, "texts": answers},
        "reference_parity": _reference_parity(path, texts, args.max_length),
    }  # fmt: skip
    write_report(args.output, report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
