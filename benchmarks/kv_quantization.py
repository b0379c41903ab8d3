"""Quantized cached states (issue 13, item 2): int8 states against dense ones on the default model, on CPU.

Part 1, answers and bytes. Man-page questions (`--data`, questions `--first` to `--first + --questions`, "What does
the X command do?" with X's page as the document) are answered greedily in `doc` mode (`--new-tokens` tokens) from the
dense states (fp32, as computed) and from int8 states (`MemoryKVStore(quantize="int8")`), with causal and with
bidirectional cached states. Reported per attention: the share of int8 answers identical to the dense ones (token ids),
SQuAD token F1 of the others against the dense answer, the RMS change of the next-token logits and the KL divergence
(dense || int8) along the dense answer, and bytes per cached token: int8, fp32 (dense) and bf16 (2 bytes an element).

An int8 answer is identical to the dense one exactly when, fed the dense answer (teacher forcing), the int8 states
predict each of its tokens (and the end token where the dense answer ended) as the most likely one: that is how
greedy decoding picks them. So the int8 states are checked that way (one forward pass), and int8 answers are generated
where the check fails (for their F1) and, as a control, for the first `--verify` questions of each attention (they
must then equal the dense answers; the report counts disagreements, expected 0).

Part 2, cold disk against recompute. Sample A of `rag_latency.py` (a 1-token query, an N-token document, causal
states, `--latency-new-tokens` tokens, end token ignored), per N and round-robin over: plain RAG re-reading the
document (`rag_doc_query`: recompute), the doc-cached answer with the states in memory (dense, int8), and the
doc-cached answer read from a cold disk (`DiskKVStore`, dense and int8 files): each cold run opens a new store (so the
file's checksums are verified, as in a fresh process) after `posix_fadvise(DONTNEED)` dropped the file from the page
cache. Medians of `--runs` runs after one warm-up round.

    python benchmarks/kv_quantization.py --output benchmarks/results/kv_quantization_cpu
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from rag_latency import text_of_tokens, time_mode
from report import command_line, data_folder, environment, evict_from_page_cache, write_report

DATA = data_folder() / "manpages" / "eval"


# -- part 1: answers and bytes -------------------------------------------------------------------------------------
def _greedy_agrees(logits: torch.Tensor, answer, eos_ids: set[int]) -> bool:
    """Whether greedy decoding from these logits reproduces `answer` (its tokens, then its end token if it ended)."""
    picked = logits.argmax(-1).tolist()
    n = len(answer.token_ids)
    if picked[:n] != answer.token_ids:
        return False
    return answer.finish_reason != "stop" or picked[n] in eos_ids


def fidelity(model, attention: str, examples, args) -> dict:
    from grit_hf.cache import KVStates, MemoryKVStore, cache_from_layers, quantize_states
    from grit_hf.evaluation.metrics import token_f1
    from grit_hf.rag import GritRAG

    rag = GritRAG(model, cache_attention=attention, store=MemoryKVStore())
    started = time.perf_counter()
    doc_ids = rag.add_documents([example.documents[0] for example in examples])
    embed_s = time.perf_counter() - started
    dense_store = rag.store
    int8_store = MemoryKVStore(fingerprint=rag.fingerprint, quantize="int8")
    tokens = fp32_bytes = int8_bytes = int8_of_bf16_bytes = 0
    for doc_id in doc_ids:
        states = dense_store.get(doc_id)
        int8_store.put(doc_id, states)
        tokens += states.num_tokens
        fp32_bytes += states.nbytes
        int8_bytes += int8_store.get(doc_id).nbytes
        bf16 = [(k.bfloat16(), v.bfloat16()) for k, v in states.layers()]
        int8_of_bf16_bytes += quantize_states(KVStates(states.input_ids, cache_from_layers(bf16), True)).nbytes
    eos_ids = rag.generator.eos_ids
    rows, started = [], time.perf_counter()
    for index, (example, doc_id) in enumerate(zip(examples, doc_ids)):
        rag.store = dense_store
        dense = rag.answer(example.question, mode="doc", doc_ids=[doc_id], max_new_tokens=args.new_tokens)
        plan = rag.build_plan(example.question, "doc", [doc_id])
        reference = rag.generator.continuation_logits(rag.resolve(plan), dense.token_ids)[0].float()
        rag.store = int8_store
        logits = rag.generator.continuation_logits(rag.resolve(plan), dense.token_ids)[0].float()
        keep = len(dense.token_ids) + (dense.finish_reason == "stop")
        reference, logits = reference[:keep], logits[:keep]
        identical = _greedy_agrees(logits, dense, eos_ids)
        row = {
            "question": example.question,
            "doc_tokens": dense_store.get(doc_id).num_tokens,
            "identical": identical,
            "dense": dense.text,
            "rms_logit_change": float((logits - reference).pow(2).mean().sqrt()),
            "kl": float(
                torch.nn.functional.kl_div(
                    logits.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="none"
                )
                .sum(-1)
                .clamp(min=0)
                .mean()
            ),
        }
        if not identical or index < args.verify:
            int8 = rag.answer(example.question, mode="doc", doc_ids=[doc_id], max_new_tokens=args.new_tokens)
            row["int8"] = int8.text
            row["generated_identical"] = int8.token_ids == dense.token_ids
            row["token_f1"] = token_f1(int8.text, dense.text)
        rows.append(row)
        print(
            f"{attention} {index + 1}/{len(examples)} identical={identical} rms={row['rms_logit_change']:.4f}",
            flush=True,
        )
    rag.store = dense_store
    differing = [row for row in rows if not row["identical"]]
    generated = [row for row in rows if "generated_identical" in row]
    return {
        "attention": attention,
        "questions": len(rows),
        "identical": sum(row["identical"] for row in rows),
        "identical_rate": sum(row["identical"] for row in rows) / len(rows),
        "token_f1_of_the_rest": [row["token_f1"] for row in differing],
        "mean_token_f1_of_the_rest": statistics.fmean(row["token_f1"] for row in differing) if differing else None,
        "mean_token_f1_all": statistics.fmean(row.get("token_f1", 1.0) for row in rows),
        "mean_rms_logit_change": statistics.fmean(row["rms_logit_change"] for row in rows),
        "mean_kl": statistics.fmean(row["kl"] for row in rows),
        "generated_checks": len(generated),
        "generated_disagreements": sum(row["generated_identical"] != row["identical"] for row in generated),
        "tokens": tokens,
        "bytes_per_token": {
            "fp32": fp32_bytes / tokens,
            "bf16": fp32_bytes / 2 / tokens,
            "int8": int8_bytes / tokens,
            "int8_of_bf16_states": int8_of_bf16_bytes / tokens,
        },
        "embed_s": embed_s,
        "answer_s": time.perf_counter() - started,
        "rows": rows,
    }


# -- part 2: cold disk against recompute ---------------------------------------------------------------------------
def _answer(rag, store, query, doc_id, mode, args) -> tuple[float, float]:
    """`(seconds to the last token, to the first token)` of an answer with the document's states in `store`."""
    rag.store = store
    total, first, _ = time_mode(rag, query, doc_id, mode, None, args.latency_new_tokens, "cpu")
    return total, first


def _cold_answer(rag, path: Path, query, doc_id, args) -> tuple[float, float]:
    """The doc-cached answer with the states read from a cold disk by a new `DiskKVStore` (which verifies checksums
    on its first read, as a fresh process would); creating the store is timed too."""
    from grit_hf.cache import DiskKVStore

    evict_from_page_cache(path)
    started = time.perf_counter()
    store = DiskKVStore(path.parent, fingerprint=rag.fingerprint)
    opened = time.perf_counter() - started
    total, first = _answer(rag, store, query, doc_id, "doc", args)
    return total + opened, first + opened


def _open_cold(rag, path: Path, doc_id) -> tuple[float, float]:
    """Open the file (checksums verified) and read every state (int8: dequantized), from a cold page cache."""
    from grit_hf.cache import DiskKVStore

    evict_from_page_cache(path)
    started = time.perf_counter()
    loaded = DiskKVStore(path.parent, fingerprint=rag.fingerprint).get(doc_id)
    sum(float(k.sum()) + float(v.sum()) for k, v in loaded.layers())
    elapsed = time.perf_counter() - started
    return elapsed, elapsed


def latency(model, args) -> dict:
    from grit_hf.cache import DiskKVStore, MemoryKVStore
    from grit_hf.rag import GritRAG

    rag = GritRAG(
        model, cache_attention="causal", query_instruction="", max_length=max(args.lengths) + 64, batch_size=1
    )
    folder = Path(tempfile.mkdtemp(prefix="kv-quantization-"))
    query = text_of_tokens(rag.tokenizer, 1)
    results, warm = [], False
    for length in args.lengths:
        doc_id = f"A-{length}"
        rag.add_documents([text_of_tokens(rag.tokenizer, length)], ids=[doc_id])
        memory = {"dense": rag.store, "int8": MemoryKVStore(fingerprint=rag.fingerprint, quantize="int8")}
        states = rag.store.get(doc_id)
        memory["int8"].put(doc_id, states)
        paths = {}
        for storage, quantize in (("dense", None), ("int8", "int8")):
            store = DiskKVStore(folder / storage, fingerprint=rag.fingerprint, quantize=quantize)
            store.put(doc_id, states)
            paths[storage] = store.path_for(doc_id)

        variants = {
            "recompute (plain RAG)": partial(_answer, rag, memory["dense"], query, doc_id, "rag_doc_query", args),
            "dense, memory": partial(_answer, rag, memory["dense"], query, doc_id, "doc", args),
            "int8, memory": partial(_answer, rag, memory["int8"], query, doc_id, "doc", args),
            "dense, cold disk": partial(_cold_answer, rag, paths["dense"], query, doc_id, args),
            "int8, cold disk": partial(_cold_answer, rag, paths["int8"], query, doc_id, args),
            "open dense, cold": partial(_open_cold, rag, paths["dense"], doc_id),
            "open int8, cold": partial(_open_cold, rag, paths["int8"], doc_id),
        }
        if not warm:
            for run in variants.values():
                run()
            warm = True
        timings = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, run in variants.items():
                timings[name].append(run())
        rag.store = memory["dense"]
        row = {
            "n": length,
            "doc_tokens": states.num_tokens,
            "medians_s": {name: statistics.median(t for t, _ in values) for name, values in timings.items()},
            "ttft_medians_s": {name: statistics.median(f for _, f in values) for name, values in timings.items()},
            "runs_s": timings,
            "file_bytes": {storage: path.stat().st_size for storage, path in paths.items()},
            "memory_bytes": {"fp32": states.nbytes, "bf16": states.nbytes // 2, "int8": memory["int8"].nbytes},
        }
        results.append(row)
        print(f"N={length} {row['medians_s']} ttft {row['ttft_medians_s']} files {row['file_bytes']}", flush=True)
        rag.store.delete(doc_id)
        for storage in paths:
            paths[storage].unlink()
    shutil.rmtree(folder, ignore_errors=True)
    return {"rows": results}


# -- report --------------------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Quantized cached states (int8) against dense states, default model on CPU",
        "",
        f"- date: {env['date']}",
        f"- command: `{report['command']}`",
        f"- machine: {env['machine']['platform']}, {env['machine']['cpu']}, {env['machine']['cpu_count']} CPUs "
        f"(shared), torch threads {report['threads']}",
        "- versions: " + ", ".join(f"{name} {version}" for name, version in env["versions"].items()),
        f"- model: {report['model']} ({report['dtype']})",
        f"- total time: {report['total_s'] / 60:.1f} min",
        "",
    ]
    if report.get("fidelity"):
        first = report["args"]["first"]
        lines += [
            f"## Greedy answers from int8 states ({report['args']['new_tokens']} new tokens, `doc` mode)",
            "",
            f"Man-page questions {first}..{first + report['args']['questions'] - 1} of `{report['args']['data']}` "
            "(bidirectional: the first "
            f"{report['args']['bidirectional_questions']}); the format was chosen on questions 0..99.",
            "",
            "| cached states | questions | identical to dense | token F1 of the others (mean; each) | mean token F1, "
            "all | RMS logit change | KL (nats/token) | int8 bytes/token | bf16 | fp32 | int8 / bf16 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for result in report["fidelity"]:
            per_token = result["bytes_per_token"]
            rest = result["token_f1_of_the_rest"]
            rest_cell = (
                f"{result['mean_token_f1_of_the_rest']:.3f}; " + ", ".join(f"{f:.2f}" for f in rest) if rest else "-"
            )
            lines.append(
                f"| {result['attention']} | {result['questions']} | {result['identical']}/{result['questions']} "
                f"({result['identical_rate']:.1%}) | {rest_cell} | {result['mean_token_f1_all']:.3f} | "
                f"{result['mean_rms_logit_change']:.4f} | {result['mean_kl']:.2e} | {per_token['int8']:.0f} | "
                f"{per_token['bf16']:.0f} | {per_token['fp32']:.0f} | {per_token['int8'] / per_token['bf16']:.3f} |"
            )
        lines += [
            "",
            "Bytes per token are over the questions' documents (mean "
            f"{report['fidelity'][0]['tokens'] / report['fidelity'][0]['questions']:.0f} tokens), the fixed block "
            "per entry (scales, offsets, dense outlier rows) included. int8 states of bf16 states (a bf16 model) take "
            + ", ".join(
                f"{r['bytes_per_token']['int8_of_bf16_states'] / r['bytes_per_token']['bf16']:.3f}"
                for r in report["fidelity"][:1]
            )
            + " of bf16 here. Identity is checked by teacher forcing; generated controls: "
            + ", ".join(
                f"{r['attention']} {r['generated_checks']} generated, {r['generated_disagreements']} disagreeing"
                for r in report["fidelity"]
            )
            + ".",
            "",
        ]
        for result in report["fidelity"]:
            differing = [row for row in result["rows"] if not row["identical"]]
            if differing:
                lines += [f"Answers that differ ({result['attention']}):", ""]
                for row in differing:
                    lines += [
                        f"- {row['question']} (F1 {row['token_f1']:.2f})",
                        f"  - dense: {row['dense']!r}",
                        f"  - int8: {row['int8']!r}",
                    ]
                lines.append("")
    if report.get("latency"):
        rows = report["latency"]["rows"]
        names = list(rows[0]["medians_s"])
        lines += [
            f"## Cold disk against recompute (sample A: 1-token query, N-token document, causal states, "
            f"{report['args']['latency_new_tokens']} new tokens, medians of {report['args']['runs']} runs, seconds; in "
            "brackets the time to the first token)",
            "",
            "| | " + " | ".join(f"N={row['n']}" for row in rows) + " |",
            "|---|" + "---|" * len(rows),
        ]
        for name in names:
            lines.append(
                f"| {name} | "
                + " | ".join(f"{row['medians_s'][name]:.3f} ({row['ttft_medians_s'][name]:.3f})" for row in rows)
                + " |"
            )
        for storage in ("dense", "int8"):
            cells = []
            for row in rows:
                total, first = row["medians_s"], row["ttft_medians_s"]
                key = f"{storage}, cold disk"
                recompute = "recompute (plain RAG)"
                cells.append(f"{total[key] / total[recompute]:.3f} ({first[key] / first[recompute]:.3f})")
            lines.append(f"| cold {storage} / recompute | " + " | ".join(cells) + " |")
        lines.append(
            "| file MB, dense / int8 | "
            + " | ".join(
                f"{row['file_bytes']['dense'] / 1e6:.1f} / {row['file_bytes']['int8'] / 1e6:.1f}" for row in rows
            )
            + " |"
        )
        lines.append(
            "| in memory, int8 / bf16 | "
            + " | ".join(f"{row['memory_bytes']['int8'] / row['memory_bytes']['bf16']:.4f}" for row in rows)
            + " |"
        )
        lines.append("")
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="a checkpoint (default: the default model)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"], help="weights dtype")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--first", type=int, default=100, help="first question (0..99 chose the format)")
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--bidirectional-questions", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--verify", type=int, default=5, help="int8 answers generated as a control per attention")
    parser.add_argument("--lengths", type=int, nargs="+", default=[250, 1000, 2000, 4000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from grit_hf.checkpoint.loading import load_model
    from grit_hf.records.rag_examples import read_rag_examples

    started = time.perf_counter()
    model = load_model(args.model, device="cpu", dtype=args.dtype)
    report = {
        "command": command_line(__file__, argv),
        "environment": environment("transformers", "safetensors"),
        "threads": torch.get_num_threads(),
        "model": "default (SmolLM2-135M-Instruct as a GRIT checkpoint)" if args.model == "default" else args.model,
        "dtype": str(model.dtype),
        "args": vars(args),
    }
    if not args.skip_fidelity:
        examples = read_rag_examples(args.data, limit=args.first + args.questions)[args.first :]
        report["fidelity"] = [
            fidelity(model, "causal", examples, args),
            fidelity(model, "bidirectional", examples[: args.bidirectional_questions], args),
        ]
    if not args.skip_latency:
        report["latency"] = latency(model, args)
    report["total_s"] = time.perf_counter() - started
    write_report(args.output, report, markdown(report))


if __name__ == "__main__":
    main()
