"""Reranking with the same GRIT model that retrieved (the paper's "Reranking with GRITLM", Table 3): the embedding
retrieval is the bi-encoder, the generative model reranks its own top candidates as a cross-encoder.

Methods:

- `"permutation"` (the paper's; RankGPT, Sun et al. 2023): the candidates are listed as numbered passages in one
  chat prompt and the model generates their order (`[2] > [1] > ...`), window by window from the end of the list
  (`window`, `step`) as RankGPT slides. A malformed or partial order is repaired: identifiers out of range and
  repeats are dropped, and the candidates it leaves out keep their first-stage order. It never raises.
- `"likelihood"` (SGPT's cross-encoder): the mean log-probability of the query's tokens after the document and a short
  instruction, `log P(query | document)`; the relevance score is its exponential (the per-token geometric mean
  probability, in (0, 1]).

Both read each indexed candidate from its cached states (a `Cached` item of a prompt plan: only the instruction and the
query run, `k x |query|` tokens instead of `k x (|document| + |query|)`); a text that is not indexed is read as its
tokens. The same plan resolved with `reuse_cache=False` reads every candidate as text: exactly the same token ids. With
causal caches the scores from states equal the scores from text (fp32); with bidirectional caches they approximate
them, as caching does for answers (and the checkpoint's selective recomputation applies).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..generation.plan import Cached, PlanItem, PromptPlan, Text, Tokens
from ..validation import check_positive_int, check_texts
from .prompts import fill, placeholder, plan_chat

__all__ = ["RERANK_METHODS", "Reranker", "candidate_items", "repair_permutation", "rerank_ranked"]

RERANK_METHODS = ("likelihood", "permutation")

PERMUTATION_PROMPT = (
    "I will provide you with {num} passages, each indicated by a numerical identifier []. Rank the passages based on "
    "their relevance to the search query: {query}.\n\n{passages}\n\nSearch Query: {query}.\nRank the {num} passages "
    "above based on their relevance to the search query. All the passages should be included and listed using "
    "identifiers, in descending order of relevance. The output format should be [] > [], e.g., [2] > [1]. Only "
    "respond with the ranking results, do not say any word or explain."
)
"""The single-turn RankGPT prompt (as rank_llm writes it), sent as the user message of the checkpoint's chat
template; `{passages}` is `[1] <passage>\\n[2] <passage>...`."""

LIKELIHOOD_PROMPT = "\n{user}Write a search query that the passage above answers.{assistant}"
"""What follows a candidate in the likelihood method; the query is scored as the answer."""

_IDENTIFIER = re.compile(r"\[(\d+)\]")


def repair_permutation(text: str, count: int) -> list[int]:
    """The order (0-based indices, all `count` of them) a generated ranking `text` gives: its identifiers `[i]` in
    order, repeats and those outside `1..count` dropped, then the missing ones in their first-stage order."""
    order = []
    for match in _IDENTIFIER.finditer(text):
        index = int(match.group(1)) - 1
        if 0 <= index < count and index not in order:
            order.append(index)
    return order + [index for index in range(count) if index not in order]


@dataclass(frozen=True)
class Reranker:
    """How to rerank (see the module docstring).

    Attributes:
        method: `"likelihood"` or `"permutation"`.
        window: candidates per permutation prompt (RankGPT's 20; the paper reranks a top 10 in one window).
        step: how far the permutation window moves towards the top each time.
        max_new_tokens: tokens of a generated permutation (default: enough for `window` identifiers).
    """

    method: str = "likelihood"
    window: int = 10
    step: int = 5
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.method not in RERANK_METHODS:
            raise ValueError(f"Invalid rerank `method`: {self.method!r}. Valid methods are: {RERANK_METHODS}.")
        check_positive_int(self.window, "window")
        check_positive_int(self.step, "step")
        check_positive_int(self.max_new_tokens, "max_new_tokens", allow_none=True)

    def scores(self, rag, query: str, candidates: Sequence[PlanItem], reuse_cache: bool = True) -> list[float]:
        """A relevance score per candidate (higher is more relevant) for `query`. Candidates are plan items standing
        for each document's embedding input: `Cached(doc_id)` for an indexed document, `Tokens(ids,
        embedding_input=True)` for a text. `reuse_cache=False` reads the cached ones as text."""
        if not candidates:
            return []
        if self.method == "likelihood":
            return [self._likelihood(rag, query, item, reuse_cache) for item in candidates]
        order = self._permutation(rag, query, list(candidates), reuse_cache)
        ranks = {index: rank for rank, index in enumerate(order)}
        return [1.0 - ranks[index] / len(candidates) for index in range(len(candidates))]

    @torch.inference_mode()
    def _likelihood(self, rag, query: str, item: PlanItem, reuse_cache: bool) -> float:
        suffix = fill(LIKELIHOOD_PROMPT, user=rag.prompts.user, assistant=rag.prompts.assistant)
        plan = rag.resolve(PromptPlan([item, Text(suffix)], rag.recompute), reuse_cache)
        query_ids = rag.tokenizer(query, add_special_tokens=False)["input_ids"]
        logits = rag.generator.continuation_logits(plan, query_ids)[0, : len(query_ids)].float()
        log_probs = logits.log_softmax(-1).gather(-1, torch.tensor(query_ids)[:, None].to(logits.device))
        return math.exp(float(log_probs.mean()))

    def _permutation(self, rag, query: str, candidates: list[PlanItem], reuse_cache: bool) -> list[int]:
        """The candidates' indices in their reranked order: RankGPT's window, from the end of the list towards its
        top by `step` (one pass). The last window is clamped to the top of the list, where RankGPT's loop stops
        short of it when a step overshoots."""
        order = list(range(len(candidates)))
        end = len(order)
        start = max(0, end - self.window)
        while True:
            window = order[start:end]
            ranked = self._rank_window(rag, query, [candidates[i] for i in window], reuse_cache)
            order[start:end] = [window[i] for i in ranked]
            if start == 0:
                return order
            end, start = end - self.step, max(0, start - self.step)

    def _rank_window(self, rag, query: str, window: list[PlanItem], reuse_cache: bool) -> list[int]:
        passages = "\n".join(f"[{number}] {placeholder(number - 1)}" for number in range(1, len(window) + 1))
        content = PERMUTATION_PROMPT.format(num=len(window), query=query, passages=passages)
        items = plan_chat(rag, [{"role": "user", "content": content}], [[item] for item in window], False)
        tokens = self.max_new_tokens or 4 * len(window) + 8
        result = rag.generate_from_plan(
            PromptPlan(items, rag.recompute), reuse_cache=reuse_cache, max_new_tokens=tokens
        )
        return repair_permutation(result.text, len(window))


def candidate_items(rag, doc_ids: Sequence[str] | None, texts: Sequence[str] | None) -> list[PlanItem]:
    """Plan items for rerank candidates: indexed documents by id (their cached states), or texts (a text that is
    indexed is read from its states, any other as its embedding input's token ids)."""
    if (doc_ids is None) == (texts is None):
        raise TypeError("Give the rerank candidates as `doc_ids` or as `texts`, not both.")
    if doc_ids is not None:
        return [Cached(doc_id) for doc_id in rag.documents.check_known(doc_ids)]
    texts, _ = check_texts(texts, "texts")
    items: list[PlanItem] = []
    for text in texts:
        doc_id = rag.documents.id_of(text)
        items.append(Tokens(rag.embedding_pass.input_ids(text, ""), True) if doc_id is None else Cached(doc_id))
    return items


def rerank_ranked(
    rag, query: str, ranked: list[tuple[str, float]], top_k: int, rerank: str | Reranker | None, rerank_top_k: int
) -> list[tuple[str, float]]:
    """A first-stage ranking `[(doc_id, score), ...]` cut to `top_k`, after its first `rerank_top_k` are reranked
    with `rerank` (a method name or a `Reranker`; `None`: not reranked). Ties keep the first-stage order."""
    if rerank is None:
        return ranked[:top_k]
    check_positive_int(rerank_top_k, "rerank_top_k")
    reranker = rerank if isinstance(rerank, Reranker) else Reranker(rerank)
    head = [doc_id for doc_id, _ in ranked[: max(top_k, rerank_top_k)]]
    scores = reranker.scores(rag, query, candidate_items(rag, head, None))
    order = sorted(range(len(head)), key=lambda i: -scores[i])
    return [(head[i], scores[i]) for i in order][:top_k]
