"""How long a server chat request spends finding its documents in a large index: the prompt plan of
`grit_hf.serve.chat_request.ChatCall` (documents named by id, and documents a client pasted into its messages), over an index of
`--documents` documents, against the way it was done before the prompt plan (every named document pasted into the
user message, then a `str.find` of every cacheable document's text in the rendered prompt).

The index is filled directly (ids, texts, zero embeddings; no model pass: finding documents reads only ids and
texts); the chat template is the default model's. Medians of `--runs` requests.

    python benchmarks/document_finding.py --documents 100000 --results benchmarks/results/document_finding_cpu
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from report import command_line, environment, write_report

WORDS = "the of and to in is was for on that with as by at from it an are be this which or had not".split()


def _text(rng: random.Random, index: int) -> str:
    return f"Document {index}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) + "."


def _old_find(prompt: str, texts: dict[str, str]) -> list[tuple[int, str]]:
    """Before the prompt plan: a `str.find` per cacheable document (`split_on_texts`)."""
    return sorted((start, doc_id) for doc_id, text in texts.items() if (start := prompt.find(text)) >= 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--per-request", type=int, default=3, help="documents each chat request uses")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--model", default="default", help="whose tokenizer and chat template render the prompt")
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from grit_hf import GritRAG, load_model
    from grit_hf.serve.chat_request import ChatCall

    model = load_model(args.model, dtype="float32")
    rag = GritRAG(model, cache_attention="causal", verify_positions=False)
    rng = random.Random(0)
    texts = {f"doc-{index}": _text(rng, index) for index in range(args.documents)}
    started = time.perf_counter()
    dim = rag.documents.embeddings.shape[1]
    rag.documents.update(texts, torch.zeros(len(texts), dim), [False] * len(texts))
    fill_s = time.perf_counter() - started
    picks = [rng.sample(sorted(texts), args.per_request) for _ in range(args.runs)]
    question = "Which of these documents mention the word 'which'?"

    timings: dict[str, list[float]] = {
        "by id (plan)": [],
        "pasted texts (plan)": [],
        "pasted texts (str.find, before)": [],
    }
    for doc_ids in picks:
        messages = [{"role": "user", "content": question}]
        started = time.perf_counter()
        rag.documents.check_known(doc_ids)
        plan = ChatCall(messages, doc_ids, 0, {}, True)._plan(rag)
        timings["by id (plan)"].append(time.perf_counter() - started)
        assert plan.doc_ids == doc_ids

        pasted = [{"role": "user", "content": "\n\n".join([*(texts[d] for d in doc_ids), question])}]
        started = time.perf_counter()
        plan = ChatCall(pasted, [], None, {}, True)._plan(rag)
        timings["pasted texts (plan)"].append(time.perf_counter() - started)
        assert plan.doc_ids == doc_ids

        prompt = rag.render_chat(pasted)
        started = time.perf_counter()
        found = _old_find(prompt, texts)
        timings["pasted texts (str.find, before)"].append(time.perf_counter() - started)
        assert [doc_id for _, doc_id in found] == doc_ids

    rows = {name: 1000 * statistics.median(values) for name, values in timings.items()}
    report = {
        "environment": environment("transformers", "grit-hf"),
        "command": command_line(__file__, argv),
        "documents": args.documents,
        "per_request": args.per_request,
        "runs": args.runs,
        "index_fill_s": round(fill_s, 2),
        "median_ms": {name: round(value, 3) for name, value in rows.items()},
    }
    lines = [
        "# Finding a chat request's documents in a large index",
        "",
        f"{report['environment']['date']}, {report['environment']['machine']['cpu']}, one thread; command: "
        f"`{report['command']}`",
        "",
        f"{args.documents} indexed documents (40-120 words each), {args.per_request} documents per request, medians of "
        f"{args.runs} requests. 'plan' is the server's prompt plan (rendering the chat template included); 'before' is "
        "a `str.find` of every document's text in the rendered prompt, as the server did before.",
        "",
        "| how | ms per request |",
        "|---|---:|",
        *(f"| {name} | {value:.3f} |" for name, value in rows.items()),
    ]
    write_report(args.results, report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
