"""Retrieval metrics as trec_eval/BEIR/MTEB compute them (nDCG@k with linear gains, recall@k, precision@k, MRR@k,
averaged over the queries that have a relevant document), and answer metrics as SQuAD computes them (token F1 and
exact match after normalisation)."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = ["DEFAULT_METRICS", "retrieval_metrics", "normalize_answer", "token_f1", "exact_match"]

DEFAULT_METRICS = ("ndcg@10", "recall@1", "recall@10", "mrr@10")


def retrieval_metrics(
    run: dict[str, Sequence[str]], qrels: dict[str, dict[str, int]], metrics: Iterable[str] = DEFAULT_METRICS
) -> dict[str, float]:
    """Average `ndcg@k`, `recall@k`, `mrr@k` and `precision@k` of ranked lists `run` (query id -> doc ids, best first)
    over the queries of `qrels` that have at least one relevant (relevance > 0) document. A query missing from `run`
    counts as retrieving nothing. nDCG uses linear gains (relevance), like trec_eval."""
    totals: dict[str, float] = {}
    parsed = []
    for metric in metrics:
        name, _, k = metric.partition("@")
        if name not in ("ndcg", "recall", "mrr", "precision") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"Invalid metric {metric!r}: use ndcg@k, recall@k, mrr@k or precision@k with k >= 1.")
        parsed.append((metric, name, int(k)))
        totals[metric] = 0.0
    judged = [qid for qid, docs in qrels.items() if any(score > 0 for score in docs.values())]
    if not judged:
        raise ValueError("`qrels` has no query with a relevant document.")
    for qid in judged:
        relevance = qrels[qid]
        ranked = list(run.get(qid, ()))
        n_relevant = sum(1 for score in relevance.values() if score > 0)
        ideal = sorted((score for score in relevance.values() if score > 0), reverse=True)
        for metric, name, k in parsed:
            gains = [max(relevance.get(doc, 0), 0) for doc in ranked[:k]]
            if name == "ndcg":
                dcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))
                idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal[:k]))
                totals[metric] += dcg / idcg
            elif name == "recall":
                totals[metric] += sum(1 for gain in gains if gain > 0) / n_relevant
            elif name == "precision":
                totals[metric] += sum(1 for gain in gains if gain > 0) / k
            else:
                totals[metric] += next((1.0 / (rank + 1) for rank, gain in enumerate(gains) if gain > 0), 0.0)
    return {metric: total / len(judged) for metric, total in totals.items()}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(char for char in text.lower() if char not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 of two answers (1.0 when both are empty after normalisation)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the two answers are equal after normalisation."""
    return float(normalize_answer(prediction) == normalize_answer(reference))
