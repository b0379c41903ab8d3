"""Caching fidelity: how close answers generated from cached states are to plain RAG's.

For each RAG example (a question, its documents, an optional gold answer) and each caching mode (`doc`, `query`,
`query_doc`, `doc_query`), the same prompt is answered twice with the same `GritRAG`: from cached states, and with every
cached part re-read as text (its plain-RAG counterpart: exactly the same token ids, all computed causally). Reported
per mode, as means over the examples:

- `token_f1` / `exact_match`: SQuAD token F1 and exact match between the two greedy answers;
- `kl`: the KL divergence from plain RAG's next-token distributions to the cached prompt's, along the plain-RAG answer
  (teacher forcing; nats per token);
- `gold_f1_cached` / `gold_f1_plain`: token F1 of each answer against the gold answer, where there is one;
- `hit@k` (with retrieval): how often a gold document is among the `k` retrieved from all examples' documents.

Command line: `grit-hf eval-rag --model default --data ../shared/data/manpages/eval --limit 50`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..rag.documents import document_id
from ..rag.gritrag import GritRAG
from ..rag.prompts import CACHING_MODES
from ..records.rag_examples import RAGExample
from ..validation import check_positive_int
from .metrics import exact_match, token_f1

logger = logging.get_logger(__name__)

__all__ = ["evaluate_rag_fidelity", "format_fidelity_table"]


@torch.inference_mode()
def _kl_along(rag: GritRAG, segments, answer_ids: list[int]) -> float:
    """Mean KL(plain || cached) of the next-token distributions predicting `answer_ids` (and the token after)."""
    cached = rag.generator.continuation_logits(rag.resolve(segments), answer_ids)[0].float()
    plain = rag.generator.continuation_logits(rag.resolve(segments, reuse_cache=False), answer_ids)[0]
    plain = plain.float().log_softmax(-1)
    kl = torch.nn.functional.kl_div(cached.log_softmax(-1), plain, log_target=True, reduction="none").sum(-1)
    return float(kl.clamp(min=0).mean())  # >= 0; rounding can leave -1e-9 where the two are equal


def evaluate_rag_fidelity(
    rag: GritRAG,
    examples: Sequence[RAGExample],
    modes: Sequence[str] = CACHING_MODES,
    max_new_tokens: int = 32,
    retrieve_top_k: int | None = None,
    show_progress_bar: bool | None = None,
) -> dict:
    """Compare every caching mode with its plain-RAG counterpart on `examples` (see the module docstring).

    Args:
        rag: the `GritRAG` to evaluate (its `cache_attention` decides which states are cached).
        examples: the RAG examples; their documents are added to `rag`.
        modes: caching modes to evaluate.
        max_new_tokens: tokens per greedy answer.
        retrieve_top_k: retrieve `k` documents per question from all examples' documents (default: answer from the
            example's own documents).
        show_progress_bar: a tqdm bar over the examples (`None`: when the logger is at INFO or DEBUG).

    Returns:
        `{"modes": {mode: metrics}, "examples": n, "retrieval": {...} or None, "answers": [...]}`.
    """
    check_positive_int(max_new_tokens, "max_new_tokens")
    check_positive_int(retrieve_top_k, "retrieve_top_k", allow_none=True)
    unknown = [mode for mode in modes if mode not in CACHING_MODES]
    if unknown or not modes:
        raise ValueError(f"Invalid `modes`: {list(modes)!r}. Valid caching modes are: {CACHING_MODES}.")
    if not examples:
        raise ValueError("`examples` is empty.")
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
    rag.add_documents(list(dict.fromkeys(d for example in examples for d in example.documents)))
    scores = {
        mode: {"token_f1": [], "exact_match": [], "kl": [], "gold_f1_cached": [], "gold_f1_plain": []}
        for mode in modes
    }
    hits, answers = [], []
    for example in tqdm(examples, desc="RAG fidelity", unit="example", disable=not show_progress_bar):
        gold_ids = [document_id(text) for text in example.documents]
        doc_ids = gold_ids
        if retrieve_top_k is not None:
            doc_ids = [doc_id for doc_id, _ in rag.search(example.question, top_k=retrieve_top_k)]
            hits.append(float(any(doc_id in doc_ids for doc_id in gold_ids)))
        row = {"question": example.question, "doc_ids": doc_ids}
        for mode in modes:
            segments = rag.build_segments(example.question, mode, doc_ids)
            cached = rag.generate_from_segments(segments, max_new_tokens=max_new_tokens)
            plain = rag.generate_from_segments(segments, reuse_cache=False, max_new_tokens=max_new_tokens)
            mode_scores = scores[mode]
            mode_scores["token_f1"].append(token_f1(cached.text, plain.text))
            mode_scores["exact_match"].append(exact_match(cached.text, plain.text))
            mode_scores["kl"].append(_kl_along(rag, segments, plain.token_ids))
            if example.answer:
                mode_scores["gold_f1_cached"].append(token_f1(cached.text, example.answer))
                mode_scores["gold_f1_plain"].append(token_f1(plain.text, example.answer))
            row[mode] = {"cached": cached.text, "plain": plain.text}
        answers.append(row)
    summary = {
        mode: {name: (statistics.fmean(values) if values else None) for name, values in mode_scores.items()}
        for mode, mode_scores in scores.items()
    }
    retrieval = None if retrieve_top_k is None else {f"hit@{retrieve_top_k}": statistics.fmean(hits)}
    return {
        "examples": len(examples),
        "cache_attention": rag.cache_attention,
        "max_new_tokens": max_new_tokens,
        "modes": summary,
        "retrieval": retrieval,
        "answers": answers,
    }


def format_fidelity_table(result: dict) -> str:
    """A Markdown table of `evaluate_rag_fidelity`'s per-mode figures."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"caching fidelity: {result['examples']} examples, {result['cache_attention']} cached states, "
        f"{result['max_new_tokens']} new tokens",
        "",
        "| mode | token F1 vs plain | exact match | KL (nats/token) | gold F1 cached | gold F1 plain |",
        "|---|---|---|---|---|---|",
    ]
    for mode, values in result["modes"].items():
        lines.append(
            f"| {mode} | {cell(values['token_f1'])} | {cell(values['exact_match'])} | {cell(values['kl'])} | "
            f"{cell(values['gold_f1_cached'])} | {cell(values['gold_f1_plain'])} |"
        )
    if result["retrieval"]:
        lines += ["", ", ".join(f"{name}: {value:.3f}" for name, value in result["retrieval"].items())]
    return "\n".join(lines)
