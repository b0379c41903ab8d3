"""Indexing beyond one process (issue 27): the default model over the man-page corpus on CPU, and the paper's index
(Table 6: 2,681,468 documents, GritLM-7B) on paper.

Stages (`--stages`; each adds its section to the report, so the timed ones can run in their own quiet window):
- build: `grit-hf index` in one process, then `accelerate launch` (2 gloo processes) of the same command: the same
  rows, embeddings (max abs diff) and states (sha256 of every entry); documents/s and tokens/s of each.
- search: the FAISS flat top-10 of every query against today's table (torch exact search) over the same embeddings,
  and against a table of `GritRAG.embed` over the corpus (the embeddings `add_documents` computes, in its batches).
- resume: a one-process build SIGKILLed once half its chunks are complete, then rerun: every document once, and the
  bytes of the uninterrupted build.
- latency: a doc-cached answer (`doc` mode, 16 new tokens) with its states read from the local disk (dropped from
  the page cache first), from a moto S3 server on 127.0.0.1, and recomputed (no stored states); plain RAG beside them.
- paper: processes, time and storage for the paper's index from the H100 encode rate (`../shared/gpu/README.md`),
  in bf16 and int8 states.

    python benchmarks/index_scale.py --stages build search resume latency paper --output benchmarks/results/index_scale_cpu
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from report import command_line, data_folder, environment, evict_from_page_cache, tests_module, write_report

CORPUS = data_folder() / "manpages" / "eval"
H100_TOKENS_PER_S, H100_TEXTS_PER_S = 28_812, 305  # ../shared/gpu/README.md: 7B, bf16, max 512 tokens, batch 64
PAPER_DOCUMENTS, PAPER_BYTES_PER_SAMPLE, PAPER_TOTAL_TB = 2_681_468, 12.5e6, 30
GRITLM_7B = {"layers": 32, "kv_heads": 8, "head_dim": 128, "hidden": 4096}  # Mistral-7B


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _index_command(out: Path, args, processes: int = 1) -> list[str]:
    command = ["-m", "grit_hf.cli", "index", str(args.documents), "--model", args.model, "--out", str(out),
               "--id-field", "id", "--no-progress"]  # fmt: skip
    if processes == 1:
        return [sys.executable, *command]
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]  # fmt: skip
    return [sys.executable, *launch, *command]


def _run(command: list[str], timeout: float = 1800) -> tuple[float, str]:
    """`(wall seconds, output)` of a command run in its own session (killed whole on a timeout)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{output[-4000:]}")
    return time.perf_counter() - start, output


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*"))}


def _parts(out: Path) -> dict[str, float]:
    """Seconds spent embedding and storing chunks, per process (from the parts' metadata)."""
    from safetensors import safe_open

    seconds: dict[str, float] = {}
    for path in (out / "parts").glob("chunk-*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
        seconds[metadata["rank"]] = seconds.get(metadata["rank"], 0.0) + float(metadata["seconds"])
    return seconds


def _build_figures(out: Path, wall: float, output: str) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    build = float(re.search(r"([\d.]+) s on (\d+) process", output).group(1))
    chunks = _parts(out)
    return {"wall_s": round(wall, 1), "build_s": build, "chunk_s_per_process": {k: round(v, 1) for k, v in chunks.items()},
            "documents": manifest["documents"], "tokens": manifest["tokens"], "state_bytes": manifest["state_bytes"],
            "documents_per_s": round(manifest["documents"] / build, 2), "tokens_per_s": round(manifest["tokens"] / build, 1)}  # fmt: skip


def stage_build(args) -> dict:
    figures, commands = {}, {}
    for name, processes in (("one", 1), ("two", 2)):
        out = args.work / name
        shutil.rmtree(out, ignore_errors=True)
        command = _index_command(out, args, processes)
        wall, output = _run(command)
        figures[name], commands[name] = _build_figures(out, wall, output), " ".join(command)
    one, two = args.work / "one", args.work / "two"
    a, b = np.load(one / "embeddings.npy"), np.load(two / "embeddings.npy")
    first, second = _digests(one / "states"), _digests(two / "states")
    return {
        "runs": figures, "commands": commands, "speedup": round(figures["one"]["build_s"] / figures["two"]["build_s"], 2),
        "embeddings_max_abs_diff": float(np.abs(a - b).max()), "rows_identical": (one / "documents.jsonl").read_bytes() == (two / "documents.jsonl").read_bytes(),
        "state_entries": len(first), "state_entries_identical": sum(first.get(k) == v for k, v in second.items()),
    }  # fmt: skip


def stage_search(args) -> dict:
    import torch

    from grit_hf.rag import GritRAG
    from grit_hf.rag.documents import DocumentTable

    rag = GritRAG.from_index(args.work / "one")
    base = rag.documents.base
    queries = [json.loads(line)["text"] for line in (args.corpus / "queries.jsonl").read_text().splitlines()]
    task = json.loads((args.corpus / "task.json").read_text()) if (args.corpus / "task.json").exists() else {}
    vectors = rag.embed(queries, task.get("query_instruction") or rag.query_instruction)

    def table(embeddings: torch.Tensor) -> DocumentTable:
        exact = DocumentTable(embeddings.shape[1])
        exact.vector_backend = "torch"  # today's table: the matrix product
        exact.update({d: base.texts[d] for d in base.ids}, embeddings, [False] * len(base.ids))
        return exact

    faiss = [base.rank(v, 10) for v in vectors]
    same = [table(base.embeddings.clone()).rank(v, 10) for v in vectors]
    start = time.perf_counter()
    embedded = rag.embed([base.texts[d] for d in base.ids], "")
    embed_s = time.perf_counter() - start
    today = [table(embedded).rank(v, 10) for v in vectors]
    ids = lambda ranked: [d for d, _ in ranked]  # noqa: E731
    return {
        "queries": len(queries),
        "faiss_vs_table_same_embeddings_identical_top10": sum(ids(f) == ids(t) for f, t in zip(faiss, same)),
        "faiss_vs_table_max_score_diff": max(abs(x[1] - y[1]) for f, t in zip(faiss, same) for x, y in zip(f, t)),
        "faiss_vs_gritrag_embed_identical_top10": sum(ids(f) == ids(t) for f, t in zip(faiss, today)),
        "faiss_vs_gritrag_embed_mean_overlap_at_10": statistics.mean(len(set(ids(f)) & set(ids(t))) / 10 for f, t in zip(faiss, today)),
        "index_vs_gritrag_embed_max_abs_diff": float((embedded - base.embeddings).abs().max()),
        "gritrag_embed_corpus_s": round(embed_s, 1), "dtype": str(rag.model.dtype),
    }  # fmt: skip


def stage_resume(args) -> dict:
    out, reference = args.work / "resumed", args.work / "one"
    shutil.rmtree(out, ignore_errors=True)
    command = _index_command(out, args)
    chunks = math.ceil(json.loads((reference / "manifest.json").read_text())["documents"] / 64)
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    while len(list((out / "parts").glob("chunk-*.safetensors"))) < math.ceil(chunks / 2):
        if process.poll() is not None:
            raise RuntimeError("the build ended before it was killed")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    at_kill = {"parts": len(list((out / "parts").glob("chunk-*"))), "chunks": chunks,
               "state_entries": len(list((out / "states").glob("[!.]*"))), "manifest": (out / "manifest.json").exists()}  # fmt: skip
    wall, output = _run(command)
    computed, skipped = map(int, re.search(r"\((\d+) embedded now, (\d+) complete before\)", output).groups())
    rows = [json.loads(line)["id"] for line in (out / "documents.jsonl").read_text().splitlines()]
    resumed, uninterrupted = _digests(out / "states"), _digests(reference / "states")
    return {
        "command": " ".join(command), "at_kill": at_kill, "rerun_wall_s": round(wall, 1), "rerun_computed": computed,
        "rerun_skipped": skipped, "rows": len(rows), "distinct_rows": len(set(rows)),
        "rows_identical": (out / "documents.jsonl").read_bytes() == (reference / "documents.jsonl").read_bytes(),
        "embeddings_max_abs_diff": float(np.abs(np.load(out / "embeddings.npy") - np.load(reference / "embeddings.npy")).max()),
        "state_entries": len(resumed), "state_entries_identical": sum(uninterrupted.get(k) == v for k, v in resumed.items()),
        "temporary_files_left": len(list(out.rglob(".tmp-*"))),
    }  # fmt: skip


def stage_latency(args) -> dict:
    from grit_hf import load_model
    from grit_hf.rag import GritRAG, build_index

    pairs = [line.split("\t")[:2] for line in (args.corpus / "qrels.tsv").read_text().splitlines()[: args.questions]]
    queries = {json.loads(line)["id"]: json.loads(line)["text"] for line in (args.corpus / "queries.jsonl").open()}
    corpus = {json.loads(line)["id"]: json.loads(line)["text"] for line in (args.corpus / "corpus.jsonl").open()}
    records = [{"id": doc, "text": corpus[doc]} for _, doc in pairs]
    model = load_model(args.model)
    moto = tests_module("moto_server").start_moto()
    try:
        moto.client().create_bucket(Bucket="bench")
        options = moto.storage_options()
        folders = {name: args.work / f"latency-{name}" for name in ("local", "s3", "recompute")}
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        build_index(records, folders["local"], model=model, id_field="id")
        build_index(
            records, folders["s3"], model=model, id_field="id", states="s3://bench/states", storage_options=options
        )
        shutil.copytree(folders["local"], folders["recompute"], ignore=shutil.ignore_patterns("*.safetensors"))
        rags = {name: GritRAG.from_index(folder, model=model, storage_options=options if name == "s3" else None)
                for name, folder in folders.items()}  # fmt: skip
        variants = {"local disk (page cache dropped)": ("local", "doc"), "moto S3 (127.0.0.1)": ("s3", "doc"),
                    "recomputed (no stored states)": ("recompute", "doc"), "plain RAG (rag_doc_query)": ("local", "rag_doc_query")}  # fmt: skip
        times = {name: {"answer": [], "first_token": [], "states": []} for name in variants}

        def prepare(kind: str, doc: str) -> None:
            rag = rags[kind]
            if kind == "local":
                evict_from_page_cache(rag.store.base.path_for(doc))
                rag.store.base._verified.clear()  # its checksums are checked again, as in a fresh process
            rag.store.overlay.delete(doc)  # recomputed states are kept there: drop them for the next run

        for run in range(args.runs + 1):
            for (query_id, doc), name in ((pair, name) for pair in pairs for name in variants):
                kind, mode = variants[name]
                rag = rags[kind]
                prepare(kind, doc)
                start = time.perf_counter()
                if mode == "doc":
                    rag.index.document_states(doc)
                load = time.perf_counter() - start
                prepare(kind, doc)
                start = time.perf_counter()
                stream = rag.answer(queries[query_id], mode=mode, doc_ids=[doc], max_new_tokens=16, ignore_eos=True,
                                    stream=True)  # fmt: skip
                next(stream)  # the first text piece: the prompt composed and its first token decoded
                first = time.perf_counter() - start
                stream.consume()
                if run:  # the first round warms up
                    times[name]["answer"].append(time.perf_counter() - start)
                    times[name]["first_token"].append(first)
                    if mode == "doc":
                        times[name]["states"].append(load)
        entry_mb = statistics.mean((rags["local"].store.base.size(doc) or 0) for _, doc in pairs) / 1e6
    finally:
        moto.stop()
    return {
        "questions": len(pairs), "runs": args.runs, "new_tokens": 16, "dtype": str(model.dtype), "entry_mb": round(entry_mb, 2),
        "median_s": {name: {k: round(statistics.median(v), 4) for k, v in t.items() if v} for name, t in times.items()},
    }  # fmt: skip


def stage_paper(args) -> dict:
    from grit_hf.cache import KVStates, cache_from_layers, quantize_states
    from grit_hf.cache.disk import DiskKVStore
    from grit_hf.cache.fingerprint import Fingerprint

    bytes_per_token = GRITLM_7B["layers"] * GRITLM_7B["kv_heads"] * GRITLM_7B["head_dim"] * 2 * 2  # K and V, bf16
    tokens_per_doc = PAPER_BYTES_PER_SAMPLE / bytes_per_token  # the paper's ~12.5 MB loaded per sample
    tokens = PAPER_DOCUMENTS * tokens_per_doc
    manifest = json.loads((args.work / "one" / "manifest.json").read_text())
    store = DiskKVStore(args.work / "one" / "states", fingerprint=Fingerprint.from_json(manifest["fingerprint"]))
    ratios = []
    for doc in store.keys()[: args.int8_sample]:
        states = store.get(doc)
        dense = KVStates(
            states.input_ids,
            cache_from_layers([(k.bfloat16(), v.bfloat16()) for k, v in states.layers()]),
            states.is_causal,
        )
        ratios.append(quantize_states(dense, "int8").nbytes / dense.nbytes)
    int8 = statistics.mean(ratios)
    gpu_hours = tokens / H100_TOKENS_PER_S / 3600
    rows = [{"processes": p, "hours": round(gpu_hours / p, 2), "write_GB_s_bf16": round(p * H100_TOKENS_PER_S * bytes_per_token / 1e9, 1),
             "write_GB_s_int8": round(p * H100_TOKENS_PER_S * bytes_per_token * int8 / 1e9, 1)} for p in (1, 8, 32, 64)]  # fmt: skip
    vectors = PAPER_DOCUMENTS * GRITLM_7B["hidden"] * 4
    return {
        "documents": PAPER_DOCUMENTS, "bytes_per_token_bf16": bytes_per_token, "tokens_per_document": round(tokens_per_doc, 1),
        "tokens": round(tokens), "states_TB_bf16": round(tokens * bytes_per_token / 1e12, 1), "paper_states_TB": PAPER_TOTAL_TB,
        "int8_over_bf16": round(int8, 3), "int8_sample_entries": len(ratios), "states_TB_int8": round(tokens * bytes_per_token * int8 / 1e12, 1),
        "h100_gpu_hours": round(gpu_hours, 2), "by_processes": rows, "embeddings_GB": round(vectors / 1e9, 1),
        "faiss_flat_GB": round(vectors / 1e9, 1), "per_answer_MB_bf16": PAPER_BYTES_PER_SAMPLE / 1e6,
        "per_answer_MB_int8": round(PAPER_BYTES_PER_SAMPLE * int8 / 1e6, 1),
    }  # fmt: skip


STAGES = {"build": stage_build, "search": stage_search, "resume": stage_resume, "latency": stage_latency,
          "paper": stage_paper}  # fmt: skip


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(map(str, r)) + " |" for r in rows
    ]


def _summary(stage: str, f: dict) -> list[str]:
    """The stage's headline figures as a table (the full figures follow as JSON)."""
    if stage == "build":
        rows = [[name, r["documents"], r["tokens"], r["build_s"], r["documents_per_s"], r["tokens_per_s"], r["wall_s"]]
                for name, r in (("1 process", f["runs"]["one"]), ("2 processes", f["runs"]["two"]))]  # fmt: skip
        return _table(["run", "documents", "tokens", "build s", "documents/s", "tokens/s", "wall s (with start-up)"], rows) + [
            "", f"2 processes / 1: **{f['speedup']}x**; embeddings max abs diff **{f['embeddings_max_abs_diff']}**; "
            f"state entries with identical sha256: **{f['state_entries_identical']}/{f['state_entries']}**; rows identical: {f['rows_identical']}"]  # fmt: skip
    if stage == "search":
        return [f"- FAISS flat top-10 = today's table (torch exact search) over the same embeddings: **{f['faiss_vs_table_same_embeddings_identical_top10']}/{f['queries']}** queries (max score diff {f['faiss_vs_table_max_score_diff']:.2e})",
                f"- FAISS flat top-10 over the index = a table of `GritRAG.embed` over the corpus (other batches, {f['dtype']}, max abs embedding diff {f['index_vs_gritrag_embed_max_abs_diff']:.2e}): {f['faiss_vs_gritrag_embed_identical_top10']}/{f['queries']} identical lists, overlap@10 {f['faiss_vs_gritrag_embed_mean_overlap_at_10']:.4f}"]  # fmt: skip
    if stage == "resume":
        k = f["at_kill"]
        return [f"- SIGKILL with {k['parts']}/{k['chunks']} chunks complete ({k['state_entries']} state entries written, manifest: {k['manifest']}); the rerun skipped {f['rerun_skipped']} documents and embedded {f['rerun_computed']}",
                f"- rows {f['rows']} ({f['distinct_rows']} distinct), identical to the uninterrupted build: {f['rows_identical']}; embeddings max abs diff {f['embeddings_max_abs_diff']}; state entries identical: {f['state_entries_identical']}/{f['state_entries']}; temporary files left: {f['temporary_files_left']}"]  # fmt: skip
    if stage == "latency":
        rows = [[name, t["answer"], t["first_token"], t.get("states", "-")] for name, t in f["median_s"].items()]
        return [f"{f['questions']} man-page questions, each with its page ({f['entry_mb']} MB of {f['dtype']} states on average), {f['new_tokens']} new tokens, medians of {f['runs']} runs after a warm-up round, round-robin:", ""] + _table(
            ["states", "answer s", "first token s", "states ready s"], rows)  # fmt: skip
    if stage == "paper":
        rows = [[r["processes"], r["hours"], r["write_GB_s_bf16"], r["write_GB_s_int8"]] for r in f["by_processes"]]
        return [f"- {f['documents']:,} documents x {f['tokens_per_document']} tokens (the paper's ~12.5 MB per sample at {f['bytes_per_token_bf16']:,} B/token, GritLM-7B bf16 K+V) = {f['tokens']:,} tokens",
                f"- states: **{f['states_TB_bf16']} TB bf16** (paper: ~{f['paper_states_TB']} TB), **{f['states_TB_int8']} TB int8** (int8/bf16 = {f['int8_over_bf16']}, measured on {f['int8_sample_entries']} man-page entries); per answer {f['per_answer_MB_bf16']} / {f['per_answer_MB_int8']} MB",
                f"- vectors: embeddings.npy {f['embeddings_GB']} GB + FAISS flat {f['faiss_flat_GB']} GB (float32, 4096-d); one H100 embeds it all in **{f['h100_gpu_hours']} h** at 28,812 tokens/s",
                f"- the hours count encoding alone: they hold while the states location takes the write rates below (at 10 GB/s, writing {f['states_TB_bf16']} TB of bf16 states alone takes {f['states_TB_bf16'] * 1e12 / 10e9 / 3600:.2f} h)", ""] + _table(
            ["processes (H100s)", "hours", "states written GB/s, bf16", "int8"], rows)  # fmt: skip
    return []


def markdown(report: dict) -> str:
    lines = [
        "# Indexing beyond one process: the default model over the man-page corpus (CPU), the paper's index on paper",
        "",
    ]
    lines += [f"- machine: {report['machine']}", f"- versions: {report['versions']}", "- commands and dates: per stage",
              f"- corpus: `{report['corpus']}`; model: `{report['model']}`; one torch thread per process", ""]  # fmt: skip
    for stage, result in report["stages"].items():
        lines += [f"## {stage}", "", f"- date: {result['date']}; load average at start: {result['load_average']}; "
                  f"command: `{result['command']}`", f"- documents: `{result.get('documents', report['corpus'])}`",
                  f"- other work on the machine: {result['other_work']}", ""]  # fmt: skip
        lines += _summary(stage.split()[0], result["figures"]) + [
            "",
            "```json",
            json.dumps(result["figures"], indent=2),
            "```",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--model", default="default")
    parser.add_argument("--work", type=Path, default=Path("/tmp/grit-index-scale"))
    parser.add_argument("--questions", type=int, default=10, help="latency: questions (the first qrels pairs)")
    parser.add_argument("--runs", type=int, default=3, help="latency: timed runs per question and variant")
    parser.add_argument(
        "--int8-sample", type=int, default=50, help="paper: stored entries quantized for the int8 ratio"
    )
    parser.add_argument("--limit", type=int, default=None, help="build, resume: index only the first N documents")
    parser.add_argument("--label", default="", help="stored with the stage's name (e.g. a quiet re-run)")
    parser.add_argument("--other-work", default="the default model's training was paused; other sessions' jobs ran")
    parser.add_argument("--output", default=None, help="prefix of the .json / .md report (updated stage by stage)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.documents = args.corpus
    if args.limit:
        args.documents = args.work / f"corpus-{args.limit}.jsonl"
        lines = (args.corpus / "corpus.jsonl").read_text().splitlines(keepends=True)[: args.limit]
        args.documents.write_text("".join(lines))
    previous = (
        json.loads(Path(f"{args.output}.json").read_text())
        if args.output and Path(f"{args.output}.json").exists()
        else {}
    )
    report = {**environment("transformers", "accelerate", "faiss-cpu", "s3fs", "moto"), "corpus": str(args.corpus),
              "model": args.model, "stages": previous.get("stages", {})}  # fmt: skip
    for stage in args.stages:
        load = os.getloadavg()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        figures = STAGES[stage](args)
        report["stages"][f"{stage} {args.label}".strip()] = {"date": started, "load_average": [round(x, 2) for x in load],
                                   "other_work": args.other_work, "command": command_line(__file__), "documents": str(args.documents),
                  "figures": figures}  # fmt: skip
        write_report(args.output, report, markdown(report))


if __name__ == "__main__":
    main()
