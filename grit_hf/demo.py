"""`grit-hf demo`: the offline RAG demo on the default model (embed, retrieve, answer), with timings."""

from __future__ import annotations

import time
from importlib import resources

import torch
from transformers.utils import logging

from .records.files import read_records

logger = logging.get_logger(__name__)

__all__ = ["run_demo", "load_demo_documents"]

DEFAULT_QUESTION = "How tall is the Eiffel Tower?"
INSTRUCTION = "Given a question, retrieve a passage that answers the question"


def load_demo_documents() -> list[dict[str, str]]:
    """The small document set bundled with grit-hf (`{"id", "text"}` records)."""
    with resources.as_file(resources.files("grit_hf").joinpath("data/demo_docs.jsonl")) as path:
        return [record for _, record, _ in read_records(path, "demo")]


def _step(name: str, started: float) -> float:
    now = time.perf_counter()
    print(f"  [{now - started:6.2f}s] {name}")
    return now


def run_demo(
    model: str = "default",
    question: str | None = None,
    cache_attention: str | None = None,
    show_progress_bar: bool = True,
    dtype: str = "auto",
    quantization: str | None = None,
    recompute: str | None = None,
) -> int:
    """Embed the bundled documents, retrieve the best one for `question` and answer it twice: re-reading the document
    text (plain RAG) and reusing its cached key/value states (doc caching). Prints each step and its time.

    `cache_attention=None` follows the checkpoint (`config.cache_attention`): a checkpoint trained with the cache loss
    answers from the embedding pass's own states (bidirectional: one pass per document); any other caches causal
    states (exact, one extra pass while indexing). `dtype` and `quantization` as `grit_hf.load_model` takes them
    (`"auto"`: bfloat16 on a CPU with native bf16; `None`: the weights as saved). `recompute`: the selective
    recomputation of bidirectional cached states (`GritRAG`'s; `None`: the checkpoint's `cache_recompute`).
    """
    from .checkpoint.loading import load_model
    from .folders.resolve import resolve_checkpoint
    from .rag import GritRAG

    question = question or DEFAULT_QUESTION
    total = time.perf_counter()
    print("grit-hf demo: one model embeds, retrieves and answers (offline).")
    started = time.perf_counter()
    path = resolve_checkpoint(model)
    started = _step(f"model checkpoint ready at {path}", started)
    grit = load_model(path, device="cpu", dtype=dtype, quantization=quantization)
    started = _step(
        f"loaded {grit.config.text_config.model_type} model ({grit.num_parameters() / 1e6:.0f}M params, {grit.dtype})",
        started,
    )

    documents = load_demo_documents()
    rag = GritRAG(grit, query_instruction=INSTRUCTION, cache_attention=cache_attention, recompute=recompute)
    cache_attention = rag.cache_attention
    rag.add_documents(
        [d["text"] for d in documents], ids=[d["id"] for d in documents], show_progress_bar=show_progress_bar
    )
    if cache_attention == "bidirectional":
        cached_how = "kept the key/value states of that same pass (no second pass over the documents)"
    else:
        cached_how = "cached causal key/value states (a second, causal pass over each document)"
    started = _step(
        f"embedded {len(documents)} documents (bidirectional attention, mean pooling) and {cached_how}", started
    )

    hits = rag.search(question, top_k=3)
    started = _step(f"retrieved for {question!r}: " + ", ".join(f"{i} ({s:.3f})" for i, s in hits), started)

    plain = rag.answer(question, mode="rag_doc_query", top_k=1, max_new_tokens=48)
    started = _step(f"answered with plain RAG (document text re-read): {plain.text!r}", started)
    cached = rag.answer(question, mode="doc", top_k=1, max_new_tokens=48)
    source = "the embedding pass's own states" if cache_attention == "bidirectional" else "causal cached states"
    recomputed = ""
    if cached.recomputed_tokens:
        recomputed = f", {cached.recomputed_tokens} recomputed causally (selective recomputation {rag.recompute})"
    started = _step(
        f"answered with doc caching from {source} ({cached.cache_read_tokens} cached states reused{recomputed}, the "
        f"document not re-read): {cached.text!r}",
        started,
    )
    if cached.text != plain.text and cache_attention != "bidirectional" and grit.dtype != torch.float32:
        print(
            f"  (causal cached states continue plain RAG exactly in float32; in {str(grit.dtype).removeprefix('torch.')}"
            " the two passes round differently and a close call between tokens can go the other way: --dtype float32)"
        )
    print(f"done in {time.perf_counter() - total:.1f}s")
    return 0
