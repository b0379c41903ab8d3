"""Caching fidelity: how close answers generated from cached states are to plain RAG's, and to the gold answers.

For each RAG example (a question, its documents, an optional gold answer) and each mode, the same `GritRAG` answers
greedily. A caching mode (`doc`, `query`, `query_doc`, `doc_query`) answers twice: from cached states (under each
selective-recomputation setting asked for), and with every cached part re-read as text (its plain counterpart: exactly
the same token ids, all computed causally). A plain mode (`none`, `rag_query_doc`, `rag_doc_query`) answers once and
is compared with plain RAG (`rag_doc_query`). Reported per mode (and setting), as means over the examples:

- `token_f1` / `exact_match`: SQuAD token F1 and exact match against the plain counterpart's answer;
- `kl`: the KL divergence from the plain counterpart's next-token distributions to the mode's, along the plain
  answer (teacher forcing; nats per token; caching modes);
- `gold_f1` (and `gold_f1_plain`): token F1 of the mode's (and the counterpart's) answer against the gold answer;
- `first_token_s` / `answer_s` (and `_plain`): seconds to the first answer token (composing the prompt: what caching
  and recomputation change) and to the end of the answer;
- `recomputed` / `cache_read`: mean prompt positions recomputed and read from the cache;
- `hit@k` (with retrieval): how often a gold document is among the `k` retrieved from all examples' documents.

Command line: `grit-hf eval-rag --model default --data ../shared/data/manpages/eval --limit 50`
(`--modes` with every mode gives the paper's Table 6 layout; `--recompute` sweeps settings).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..generation.recompute import Recompute
from ..rag.documents import document_id
from ..rag.gritrag import GritRAG
from ..rag.prompts import CACHING_MODES, PLAIN_MODES, RAG_MODES
from ..records.rag_examples import RAGExample
from ..validation import check_positive_int
from .metrics import exact_match, token_f1

logger = logging.get_logger(__name__)

__all__ = ["evaluate_rag_fidelity", "format_fidelity_table"]

REFERENCE_MODE = "rag_doc_query"
"""What the plain modes are compared with: plain RAG, documents first."""


@torch.inference_mode()
def _kl_along(rag: GritRAG, plan, answer_ids: list[int]) -> float:
    """Mean KL(plain || cached) of the next-token distributions predicting `answer_ids` (and the token after)."""
    cached = rag.generator.continuation_logits(rag.resolve(plan), answer_ids)[0].float()
    plain = rag.generator.continuation_logits(rag.resolve(plan, reuse_cache=False), answer_ids)[0]
    plain = plain.float().log_softmax(-1)
    kl = torch.nn.functional.kl_div(cached.log_softmax(-1), plain, log_target=True, reduction="none").sum(-1)
    return float(kl.clamp(min=0).mean())  # >= 0; rounding can leave -1e-9 where the two are equal


def _timed(rag: GritRAG, plan, reuse_cache: bool, max_new_tokens: int):
    """`(result, seconds to the first piece of text, seconds to the end)` of one greedy answer."""
    started = time.perf_counter()
    stream = rag.generate_from_plan(plan, stream=True, reuse_cache=reuse_cache, max_new_tokens=max_new_tokens)
    first = None
    for _ in stream:
        first = time.perf_counter() - started if first is None else first
    total = time.perf_counter() - started
    return stream.result, total if first is None else first, total


def evaluate_rag_fidelity(
    rag: GritRAG,
    examples: Sequence[RAGExample],
    modes: Sequence[str] = CACHING_MODES,
    max_new_tokens: int = 32,
    retrieve_top_k: int | None = None,
    show_progress_bar: bool | None = None,
    recompute: Sequence[Recompute | str | float | int | None] | None = None,
) -> dict:
    """Compare every mode with its plain counterpart, and with the gold answers, on `examples` (module docstring).

    Args:
        rag: the `GritRAG` to evaluate (its `cache_attention` decides which states are cached).
        examples: the RAG examples; their documents are added to `rag`.
        modes: RAG modes to evaluate (`grit_hf.rag.prompts.RAG_MODES`).
        max_new_tokens: tokens per greedy answer.
        retrieve_top_k: retrieve `k` documents per question from all examples' documents (default: answer from the
            example's own documents).
        show_progress_bar: a tqdm bar over the examples (`None`: when the logger is at INFO or DEBUG).
        recompute: selective-recomputation settings the caching modes are answered with, each a run of its own
            (default: `rag.recompute` alone).

    Returns:
        `{"runs": [{"recompute": str, "modes": {mode: metrics}}, ...], "modes": <the first run's>, "examples": n,
        "retrieval": {...} or None, "answers": [...]}`.
    """
    check_positive_int(max_new_tokens, "max_new_tokens")
    check_positive_int(retrieve_top_k, "retrieve_top_k", allow_none=True)
    unknown = [mode for mode in modes if mode not in RAG_MODES]
    if unknown or not modes:
        raise ValueError(f"Invalid `modes`: {list(modes)!r}. Valid modes are: {RAG_MODES}.")
    if not examples:
        raise ValueError("`examples` is empty.")
    settings = [rag.recompute] if recompute is None else [Recompute.parse(setting) for setting in recompute]
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
    rag.add_documents(list(dict.fromkeys(d for example in examples for d in example.documents)))
    scores: dict[tuple[str, int], dict[str, list[float]]] = {}
    hits, answers = [], []
    for example in tqdm(examples, desc="RAG fidelity", unit="example", disable=not show_progress_bar):
        gold_ids = [document_id(text) for text in example.documents]
        doc_ids = gold_ids
        if retrieve_top_k is not None:
            doc_ids = [doc_id for doc_id, _ in rag.search(example.question, top_k=retrieve_top_k)]
            hits.append(float(any(doc_id in doc_ids for doc_id in gold_ids)))
        row = {"question": example.question, "doc_ids": doc_ids}
        reference = None
        if any(mode in PLAIN_MODES for mode in modes):
            reference = _timed(rag, rag.build_plan(example.question, REFERENCE_MODE, doc_ids), False, max_new_tokens)
        for mode in modes:
            plan = rag.build_plan(example.question, mode, doc_ids)
            if mode in PLAIN_MODES:
                result = reference if mode == REFERENCE_MODE else _timed(rag, plan, False, max_new_tokens)
                _score(scores.setdefault((mode, 0), {}), example, result, reference)
                row[mode] = result[0].text
                continue
            plain = _timed(rag, plan, False, max_new_tokens)
            row[mode] = {"plain": plain[0].text}
            for index, setting in enumerate(settings):
                plan.recompute = setting
                cached = _timed(rag, plan, True, max_new_tokens)
                mode_scores = scores.setdefault((mode, index), {})
                _score(mode_scores, example, cached, plain)
                mode_scores.setdefault("kl", []).append(_kl_along(rag, plan, plain[0].token_ids))
                row[mode][str(setting) if setting else "none"] = cached[0].text
        answers.append(row)
    runs = []
    for index, setting in enumerate(settings):
        summary = {}
        for mode in modes:
            values = scores[(mode, 0 if mode in PLAIN_MODES else index)]
            summary[mode] = {name: (statistics.fmean(v) if v else None) for name, v in values.items()}
        runs.append({"recompute": str(setting) if setting else "none", "modes": summary})
    retrieval = None if retrieve_top_k is None else {f"hit@{retrieve_top_k}": statistics.fmean(hits)}
    return {
        "examples": len(examples),
        "cache_attention": rag.cache_attention,
        "max_new_tokens": max_new_tokens,
        "runs": runs,
        "modes": runs[0]["modes"],
        "retrieval": retrieval,
        "answers": answers,
    }


def _score(scores: dict[str, list[float]], example: RAGExample, answer, reference) -> None:
    """Add one answer's figures (`answer`, `reference`: `_timed` outcomes) to a mode's lists."""
    result, first, total = answer
    for name, value in (("first_token_s", first), ("answer_s", total), ("recomputed", result.recomputed_tokens),
                        ("cache_read", result.cache_read_tokens)):  # fmt: skip
        scores.setdefault(name, []).append(float(value))
    if reference is not None:
        plain, plain_first, plain_total = reference
        scores.setdefault("token_f1", []).append(token_f1(result.text, plain.text))
        scores.setdefault("exact_match", []).append(exact_match(result.text, plain.text))
        scores.setdefault("first_token_s_plain", []).append(plain_first)
        scores.setdefault("answer_s_plain", []).append(plain_total)
        if example.answer:
            scores.setdefault("gold_f1_plain", []).append(token_f1(plain.text, example.answer))
    if example.answer:
        scores.setdefault("gold_f1", []).append(token_f1(result.text, example.answer))


def format_fidelity_table(result: dict) -> str:
    """A Markdown table of `evaluate_rag_fidelity`'s figures: one row per mode and recompute setting."""

    def cell(values: dict, name: str, digits: int = 3) -> str:
        value = values.get(name)
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"RAG fidelity: {result['examples']} examples, {result['cache_attention']} cached states, "
        f"{result['max_new_tokens']} new tokens",
        "",
        "| mode | recompute | token F1 vs plain | exact match | KL (nats/token) | gold F1 | gold F1 plain | "
        "first token s | plain first token s | recomputed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run_index, run in enumerate(result["runs"]):
        for mode, values in run["modes"].items():
            if mode in PLAIN_MODES and run_index:
                continue
            setting = "-" if mode in PLAIN_MODES else run["recompute"]
            lines.append(
                f"| {mode} | {setting} | {cell(values, 'token_f1')} | {cell(values, 'exact_match')} | "
                f"{cell(values, 'kl')} | {cell(values, 'gold_f1')} | {cell(values, 'gold_f1_plain')} | "
                f"{cell(values, 'first_token_s')} | {cell(values, 'first_token_s_plain')} | "
                f"{cell(values, 'recomputed', 1)} |"
            )
    if result["retrieval"]:
        lines += ["", ", ".join(f"{name}: {value:.3f}" for name, value in result["retrieval"].items())]
    return "\n".join(lines)
