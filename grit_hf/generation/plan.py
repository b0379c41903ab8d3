"""The prompt plan: what a prompt is made of, built once (from ids where ids are known), resolved once against the
document store, and handed to the one composer (`grit_hf.generation.compose`).

A `PromptPlan` is a sequence of items and a selective-recomputation setting:

- `Text(text)`: text to run (tokenized without special tokens when the plan is resolved, so a rendered chat prompt
  keeps its own);
- `Tokens(ids)`: token ids to run. `embedding_input=True` marks the ids of an embedding input (template + text with
  the tokenizer's special prefix, e.g. BOS): the prefix only belongs where the item opens the prompt;
- `Cached(...)`: states that stand in the prompt for the token ids they were computed from: a stored document (by
  `doc_id`, looked up when the plan is resolved) or given `KVStates` (a query's retrieval pass, the trainer's
  embedding pass). A cached document stands for its whole embedding input (`document_template + text`);
- `recompute`: the positions of cached items to compute again, causally, on top of the rest (`Recompute`: a rule and
  an amount; `grit_hf.generation.recompute` chooses the positions and `compose` computes them; a `Cached` item may
  name its own positions).

Who builds plans: `RAGPrompts.plan` (the one slot filler of `GritRAG.answer` and the trainer's cache loss), the
server's chat (documents named by id), and `GritRAG.plan_prompt` for free-text prompts in which indexed documents
are found (the LangChain and LlamaIndex adapters). Plain RAG is the same plan resolved with `reuse_cache=False`: every
cached item is read as its exact token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from ..cache.states import KVStates
from ..formatting import special_tokens_around_text

__all__ = [
    "Text", "Tokens", "Cached", "PlanItem", "PromptPlan", "DocumentSource", "Recompute", "RECOMPUTE_RULES",
    "special_prefix",
]  # fmt: skip


RECOMPUTE_RULES = ("deviation", "head", "tail", "ends", "random")


@dataclass(frozen=True)
class Recompute:
    """Which positions of each cached part to compute again (see the module docstring).

    Attributes:
        amount: a fraction of each part's positions (float in [0, 1]) or a count per part (int >= 0).
        rule: `"deviation"`, `"head"`, `"tail"`, `"ends"` (half at the head, half at the tail) or `"random"`.
        seed: the seed of `"random"`.
        layer: the layer whose values `"deviation"` compares.
    """

    amount: float | int
    rule: str = "deviation"
    seed: int = 0
    layer: int = 1

    def __post_init__(self) -> None:
        if self.rule not in RECOMPUTE_RULES:
            raise ValueError(f"Invalid recompute `rule`: {self.rule!r}. Valid rules are: {RECOMPUTE_RULES}.")
        amount = self.amount
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"Recompute `amount` must be a float in [0, 1] or an int >= 0, got {amount!r}.")
        if (isinstance(amount, float) and not 0 <= amount <= 1) or (isinstance(amount, int) and amount < 0):
            raise ValueError(f"Recompute `amount` must be a float in [0, 1] or an int >= 0, got {amount!r}.")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise ValueError(f"Recompute `layer` must be an int >= 0, got {self.layer!r}.")

    @classmethod
    def parse(cls, value: Recompute | str | float | int | None) -> Recompute | None:
        """A `Recompute` from itself, `"RULE:AMOUNT"` (`"deviation:0.15"`, `"head:8"`), a bare amount (rule
        `"deviation"`), or `None`/`0`/`"none"` (nothing recomputed: `None`)."""
        if value is None or isinstance(value, Recompute):
            return value if value is None or value.amount else None
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in ("", "none", "0"):
                return None
            rule, _, amount = text.rpartition(":")
            try:
                number = float(amount) if any(c in amount for c in ".eE") else int(amount)
            except ValueError:
                raise ValueError(
                    f"Invalid recompute setting {value!r}: write RULE:AMOUNT, e.g. 'deviation:0.15' or 'head:8' "
                    f"(rules: {RECOMPUTE_RULES})."
                ) from None
            value = cls(number, rule or "deviation")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = cls(value)
        else:
            raise TypeError(f"`recompute` must be a Recompute, 'RULE:AMOUNT', a number or None, got {value!r}.")
        return value if value.amount else None

    def __str__(self) -> str:
        return f"{self.rule}:{self.amount}"

    def count(self, length: int) -> int:
        """How many of a part's `length` positions are recomputed."""
        if isinstance(self.amount, float):
            return min(length, round(self.amount * length))
        return min(length, self.amount)

    def choose(self, length: int, batch: int, deviation: torch.Tensor | None = None) -> torch.Tensor:
        """The positions `[batch, k]` (sorted) of a part of `length` positions to recompute; `deviation` `[batch,
        length]` is needed by the `"deviation"` rule."""
        k = self.count(length)
        if self.rule == "head":
            chosen = torch.arange(k).expand(batch, -1)
        elif self.rule == "tail":
            chosen = torch.arange(length - k, length).expand(batch, -1)
        elif self.rule == "ends":
            head = (k + 1) // 2
            chosen = torch.cat([torch.arange(head), torch.arange(length - (k - head), length)]).expand(batch, -1)
        elif self.rule == "random":
            generator = torch.Generator().manual_seed(self.seed)
            chosen = torch.stack([torch.randperm(length, generator=generator)[:k] for _ in range(batch)])
        else:
            if deviation is None:
                raise ValueError("The 'deviation' rule needs the deviation of every position.")
            chosen = deviation.float().topk(k, dim=-1).indices.cpu()
        return chosen.sort(dim=-1).values


@dataclass(frozen=True)
class Text:
    """Text to run through the model (tokenized without special tokens)."""

    text: str


@dataclass(frozen=True)
class Tokens:
    """Token ids to run: a list, or a `[batch, n]` tensor in a batch of plans of the same shape (the cache loss).

    Attributes:
        ids: the token ids.
        embedding_input: the ids of an embedding input: its special prefix (BOS) is dropped unless it opens the prompt.
    """

    ids: list[int] | torch.Tensor
    embedding_input: bool = False

    @property
    def num_tokens(self) -> int:
        return self.ids.shape[-1] if isinstance(self.ids, torch.Tensor) else len(self.ids)


@dataclass
class Cached:
    """Cached states standing in the prompt for their token ids.

    Attributes:
        doc_id: the stored document these states belong to (looked up when the plan is resolved).
        states: the states (set once resolved); their `input_ids` are the ids they stand for.
        recompute: positions (indices into the ids, from `start`) to compute again causally; `None` leaves the choice
            to the plan's `recompute` setting.
        start: leading positions left out (a special prefix that only belongs at the start of a prompt).
        end: positions used up to here (exclusive); `None` for all.
    """

    doc_id: str | None = None
    states: KVStates | None = None
    recompute: Sequence[int] | None = None
    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        if self.doc_id is None and self.states is None:
            raise TypeError("A `Cached` item needs a `doc_id` or `states`.")

    @property
    def ids(self) -> list[int] | torch.Tensor:
        """The ids the states were computed from (`[batch, n]` for batched states)."""
        ids = self.states.input_ids
        return ids.tolist() if ids.dim() == 1 else ids

    @property
    def stop(self) -> int:
        return self.states.num_tokens if self.end is None else self.end

    @property
    def num_tokens(self) -> int:
        return self.stop - self.start

    def as_tokens(self) -> Tokens:
        """The same positions as token ids, to be run instead of read from the cache."""
        return Tokens(self.ids[..., self.start : self.stop] if isinstance(self.ids, torch.Tensor) else
                      self.ids[self.start : self.stop])  # fmt: skip


PlanItem = Text | Tokens | Cached


class DocumentSource(Protocol):
    """Where a plan's stored documents are looked up (`GritRAG`)."""

    def document_states(self, doc_id: str) -> KVStates | list[int]:
        """The stored states of a document, or the token ids of its embedding input when it has none."""

    def document_input_ids(self, doc_id: str) -> list[int]:
        """The token ids of a document's embedding input (template + text, special prefix included)."""


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before any text (e.g. `[BOS]`; `[]` for tokenizers that add none)."""
    return special_tokens_around_text(tokenizer)[0]


def _prefix_end(ids, prefix: list[int], first: bool) -> int:
    """How many leading ids to leave out: the special prefix of an item that does not open the prompt."""
    if first or not prefix:
        return 0
    head = ids[..., : len(prefix)] if isinstance(ids, torch.Tensor) else ids[: len(prefix)]
    if isinstance(head, torch.Tensor):
        return len(prefix) if head.shape[-1] == len(prefix) and bool((head == torch.tensor(prefix)).all()) else 0
    return len(prefix) if head == prefix else 0


@dataclass
class PromptPlan:
    """A prompt as text, token ids and cached states, with the selective-recomputation setting (module docstring).

    Attributes:
        items: the prompt, in order.
        recompute: which positions of cached items (those naming none themselves) are computed again; `None`: none.
    """

    items: list[PlanItem] = field(default_factory=list)
    recompute: Recompute | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.items, list) or not all(isinstance(i, (Text, Tokens, Cached)) for i in self.items):
            raise TypeError(f"`items` must be a list of Text, Tokens and Cached, got {self.items!r:.80}.")

    @classmethod
    def of(cls, items, recompute: Recompute | None = None) -> PromptPlan:
        """A plan from items or their shorthands: `str` (Text), a list of token ids (Tokens), `KVStates` (Cached)."""
        items = [items] if isinstance(items, (str, KVStates, Text, Tokens, Cached)) else items
        if not isinstance(items, (list, tuple)) or not items:
            raise TypeError(f"The prompt must be a non-empty list of items, got {items!r:.80}.")
        converted: list[PlanItem] = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                item = Text(item)
            elif isinstance(item, KVStates):
                item = Cached(states=item)
            elif isinstance(item, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in item):
                item = Tokens(list(item))
            elif not isinstance(item, (Text, Tokens, Cached)):
                raise TypeError(
                    f"Prompt item {index} must be Text, Tokens, Cached, a str, a list of token ids or KVStates, "
                    f"got {type(item).__name__}."
                )
            converted.append(item)
        return cls(converted, recompute)

    @property
    def doc_ids(self) -> list[str]:
        """The stored documents the plan uses, in order, each once."""
        return list(dict.fromkeys(i.doc_id for i in self.items if isinstance(i, Cached) and i.doc_id is not None))

    @property
    def num_tokens(self) -> int:
        """Positions of a resolved plan."""
        return sum(item.num_tokens for item in self.items)

    @property
    def is_cached(self) -> bool:
        """Whether some item is cached."""
        return any(isinstance(item, Cached) for item in self.items)

    @property
    def is_resolved(self) -> bool:
        """Whether the plan is ready to compose (`resolve` returns it as it is): token ids and states only."""
        return bool(self.items) and all(
            isinstance(item, Tokens)
            and not item.embedding_input
            or isinstance(item, Cached)
            and item.states is not None
            for item in self.items
        )

    def resolve(
        self,
        tokenizer: PreTrainedTokenizerBase,
        documents: DocumentSource | None = None,
        reuse_cache: bool = True,
        prefix: list[int] | None = None,
    ) -> PromptPlan:
        """The plan ready to compose: texts tokenized, stored documents looked up in `documents`, special prefixes
        left out where an item does not open the prompt, empty items dropped. `reuse_cache=False` reads every cached
        item as its token ids (the plain, no-cache reference: exactly the same ids).

        Raises:
            TypeError: a stored document and no `documents` to look it up in. ValueError: an empty prompt.
        """
        if self.is_resolved and (reuse_cache or not self.is_cached):
            return self
        prefix = special_prefix(tokenizer) if prefix is None else prefix
        resolved: list[PlanItem] = []
        for index, item in enumerate(self.items):
            first = not resolved
            if isinstance(item, Text):
                if item.text:
                    resolved.append(Tokens(tokenizer(item.text, add_special_tokens=False)["input_ids"]))
                continue
            if isinstance(item, Cached) and item.states is None:
                if documents is None:
                    raise TypeError(
                        f"Prompt item {index} is the stored document {item.doc_id!r}, but no store was given."
                    )
                if not reuse_cache:
                    item = Tokens(documents.document_input_ids(item.doc_id), embedding_input=True)
                else:
                    found = documents.document_states(item.doc_id)
                    item = Tokens(found, True) if isinstance(found, list) else replace(item, states=found)
            if isinstance(item, Cached):
                start = max(item.start, _prefix_end(item.ids, prefix, first))
                item = replace(item, start=start)
                if not reuse_cache:
                    item = item.as_tokens()
            elif item.embedding_input:
                item = Tokens(item.ids[..., _prefix_end(item.ids, prefix, first) :] if isinstance(item.ids, torch.Tensor)
                              else item.ids[_prefix_end(item.ids, prefix, first) :])  # fmt: skip
            if item.num_tokens:
                resolved.append(item)
        if not resolved:
            raise ValueError("The prompt holds no tokens: it is empty.")
        return PromptPlan(resolved, self.recompute if reuse_cache else None)

    def as_text(self) -> PromptPlan:
        """A resolved plan with every cached item read as its token ids (plain RAG)."""
        return PromptPlan([i.as_tokens() if isinstance(i, Cached) else i for i in self.items])
