"""Prompt formats of GRIT RAG: the reference's formats (ContextualAI/gritlm, paper section 4), with the chat markers
adapted to the checkpoint's own chat format.

The reference writes every RAG prompt in GritLM-7B's Tülu format: a cached or re-read part (`<|embed|>\\n{text}`)
followed by a user turn and the assistant opener, e.g. for doc caching

    "<|embed|>\\n{doc}" + "\\n<|user|>\\n{query}\\n\\nAnswer the prior query while optionally using the context prior to
    it\\n<|assistant|>\\n"

`RAGPrompts` keeps those texts with two placeholders for the markers, `{user}` (what opens a user turn) and
`{assistant}` (what closes it and opens the answer). `RAGPrompts.for_model` fills them from the checkpoint's chat
template by rendering a placeholder conversation: `{assistant}` is what the template puts after the last user
message (with the generation prompt), `{user}` is the longest common ending of what precedes the first and the
second user message. For GritLM-7B's template that gives back the reference's markers exactly; for ChatML (the
default SmolLM2 model) `{user}` is `"<|im_end|>\\n<|im_start|>user\\n"` (it also closes the cached part, which has
no turn of its own) and `{assistant}` is `"<|im_end|>\\n<|im_start|>assistant\\n"`. Any field can be overridden.

The modes of `GritRAG.answer` and their layouts:

| mode | prompt | cached |
|---|---|---|
| `none` | the query in the chat template | - |
| `rag_query_doc` | query part (query template + query) + `query_cached` suffix with the documents' text | - |
| `rag_doc_query` | document part(s) (document template + text) + `doc_cached` suffix with the query | - |
| `query` | as `rag_query_doc` | the query part (states of its embedding pass) |
| `doc` | as `rag_doc_query` | the document part(s) (states stored by `add_documents`) |
| `query_doc` | query part + document part(s) + `query_doc_cached` suffix | both |
| `doc_query` | document part(s) + query part + `doc_query_cached` suffix | both |

`RAGPrompts.plan` is the one slot filler: `GritRAG.answer` and the trainer's cache loss both build their prompts with
it (`grit_hf.generation.plan.PromptPlan`). A plain RAG mode is its caching mode's plan resolved with
`reuse_cache=False` (the cached parts read as their exact token ids).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from transformers.utils import logging

from ..cache.states import KVStates
from ..generation.plan import Cached, PlanItem, PromptPlan, Text, Tokens
from ..generation.recompute import Recompute

logger = logging.get_logger(__name__)

__all__ = [
    "RAGMode",
    "RAG_MODES",
    "CACHING_MODES",
    "PLAIN_MODES",
    "QUERY_PART_MODES",
    "CACHED_QUERY_MODES",
    "RAGPrompts",
    "fill",
    "placeholder",
    "plan_chat",
    "chat_markers",
    "check_mode",
]

RAGMode = Literal["none", "rag_query_doc", "rag_doc_query", "query", "doc", "query_doc", "doc_query"]
RAG_MODES = ("none", "rag_query_doc", "rag_doc_query", "query", "doc", "query_doc", "doc_query")
CACHING_MODES = ("query", "doc", "query_doc", "doc_query")
PLAIN_MODES = ("none", "rag_query_doc", "rag_doc_query")
QUERY_PART_MODES = ("query", "rag_query_doc", "query_doc", "doc_query")
CACHED_QUERY_MODES = ("query", "query_doc", "doc_query")

_PLACEHOLDER = re.compile(r"\{(query|doc|user|assistant)\}")
_TULU_USER, _TULU_ASSISTANT = "<|user|>\n", "\n<|assistant|>\n"


def fill(template: str, **values: str) -> str:
    """Substitute `{query}`, `{doc}`, `{user}`, `{assistant}` in one pass (inserted text is never re-scanned, so
    braces inside documents or queries are safe). Unknown names are left as they are."""
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)


@dataclass
class RAGPrompts:
    """The texts that follow the cached (or re-read) part of each RAG mode.

    Fields:
        user (`str`, defaults to `"<|user|>\\n"`): opens a user turn (the `{user}` placeholder).
        assistant (`str`, defaults to `"\\n<|assistant|>\\n"`): closes the user turn and opens the answer.
        query_cached (`str`): after the query part (`query`, `rag_query_doc`); `{doc}` is the documents' text.
        doc_cached (`str`): after the document part (`doc`, `rag_doc_query`); `{query}` is the query.
        query_doc_cached (`str`): after query then documents, both cached (`query_doc`).
        doc_query_cached (`str`): after documents then query, both cached (`doc_query`).
        doc_separator (`str`, defaults to `"\\n\\n"`): joins several documents written as text into `{doc}`.
        response_prefix (`str`, defaults to `""`): appended after every prompt (the reference's evaluation used
            `"The answer is"`).

    The `none` mode renders the query with the chat template instead.
    """

    user: str = _TULU_USER
    assistant: str = _TULU_ASSISTANT
    query_cached: str = field(
        default="\n{user}{doc}\n\nOptionally using the prior context answer the query prior to it{assistant}"
    )
    doc_cached: str = field(
        default="\n{user}{query}\n\nAnswer the prior query while optionally using the context prior to it{assistant}"
    )
    query_doc_cached: str = "\n{user}Optionally using the prior context answer the query prior to it{assistant}"
    doc_query_cached: str = "\n{user}Answer the prior query while optionally using the context prior to it{assistant}"
    doc_separator: str = "\n\n"
    response_prefix: str = ""

    def __post_init__(self):
        for name in (
            "user",
            "assistant",
            "query_cached",
            "doc_cached",
            "query_doc_cached",
            "doc_query_cached",
            "doc_separator",
            "response_prefix",
        ):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"`{name}` must be a str, got {type(getattr(self, name)).__name__}.")
        if "{doc}" not in self.query_cached:
            raise ValueError(f"`query_cached` must contain '{{doc}}', got {self.query_cached!r}.")
        if "{query}" not in self.doc_cached:
            raise ValueError(f"`doc_cached` must contain '{{query}}', got {self.doc_cached!r}.")

    @classmethod
    def reference(cls) -> RAGPrompts:
        """The reference's prompts, verbatim (GritLM-7B's Tülu markers)."""
        return cls()

    @classmethod
    def for_model(cls, model, **overrides) -> RAGPrompts:
        """The reference's prompts with `{user}`/`{assistant}` taken from `model`'s chat template (the tokenizer's,
        else `config.chat_template`); falls back to the Tülu markers if the template cannot be read."""
        tokenizer = model.tokenizer
        template = tokenizer.chat_template or getattr(model.config, "chat_template", None)
        markers = chat_markers(tokenizer, template) if template else None
        if markers is None:
            logger.warning("Could not derive chat markers from the chat template; using GritLM-7B's Tülu markers.")
            markers = (_TULU_USER, _TULU_ASSISTANT)
        return replace(cls(user=markers[0], assistant=markers[1]), **overrides)

    def suffix(self, mode: str, query: str = "", doc: str = "") -> str:
        """The text that follows the first part(s) of `mode` (`query`/`rag_query_doc`, `doc`/`rag_doc_query`,
        `query_doc`, `doc_query`), markers and values filled in, plus `response_prefix`."""
        templates = {
            "query": self.query_cached,
            "rag_query_doc": self.query_cached,
            "doc": self.doc_cached,
            "rag_doc_query": self.doc_cached,
            "query_doc": self.query_doc_cached,
            "doc_query": self.doc_query_cached,
        }
        if mode not in templates:
            raise ValueError(f"Invalid `mode`: {mode!r}. Valid modes with a suffix are: {tuple(templates)}.")
        return fill(templates[mode], user=self.user, assistant=self.assistant, query=query, doc=doc) + (
            self.response_prefix
        )

    def plan(
        self,
        mode: str,
        query: str,
        doc_texts: list[str],
        documents: Sequence[str | PlanItem],
        query_part: KVStates | list[int] | PlanItem | None = None,
        recompute: Recompute | None = None,
        chat_prompt: str | None = None,
    ) -> PromptPlan:
        """The prompt of `mode`: the query part and each document's part where the mode puts them, and the mode's text
        around them (the table in the module docstring).

        Args:
            mode: the RAG mode.
            query: the query's text (written into the suffix of document-first modes).
            doc_texts: the documents' texts (written into the suffix of query-first modes).
            documents: what stands for each document: a stored document's id (`Cached(doc_id)`) or a plan item (e.g.
                `Cached(states=...)`, the trainer's).
            query_part: what stands for the query part (template + query) in modes that have one: its `KVStates`,
                the token ids of its embedding input, or a plan item.
            recompute: the plan's selective-recomputation setting.
            chat_prompt: mode `none` only: the query rendered with the chat template.
        """
        if mode not in RAG_MODES:
            raise ValueError(f"Invalid `mode`: {mode!r}. Valid modes are: {RAG_MODES}.")
        if mode == "none":
            if chat_prompt is None:
                raise ValueError("Mode 'none' is the query in the chat template: give `chat_prompt`.")
            return PromptPlan([Text(chat_prompt + self.response_prefix)])
        if len(documents) != len(doc_texts):
            raise ValueError(
                f"`documents` must hold one part per text: {len(doc_texts)} texts, {len(documents)} parts."
            )
        if mode in QUERY_PART_MODES and query_part is None:
            raise ValueError(f"Mode {mode!r} puts the query part in the prompt: give `query_part`.")
        documents = [Cached(item) if isinstance(item, str) else item for item in documents]
        if isinstance(query_part, KVStates):
            query_part = Cached(states=query_part)
        elif isinstance(query_part, list):
            query_part = Tokens(query_part, embedding_input=True)
        if mode in ("query", "rag_query_doc"):
            items = [query_part, Text(self.suffix(mode, doc=self.doc_separator.join(doc_texts)))]
        elif mode in ("doc", "rag_doc_query"):
            items = [*documents, Text(self.suffix(mode, query=query))]
        elif mode == "query_doc":
            items = [query_part, *documents, Text(self.suffix(mode))]
        else:
            items = [*documents, query_part, Text(self.suffix(mode))]
        return PromptPlan(items, recompute)


def chat_markers(tokenizer, template: str) -> tuple[str, str] | None:
    """`(user_opener, assistant_opener)` read from `template` by rendering placeholder messages, or `None`."""
    marks = ["\x00GRITA\x00", "\x00GRITB\x00", "\x00GRITC\x00"]
    messages = [
        {"role": "user", "content": marks[0]},
        {"role": "assistant", "content": marks[1]},
        {"role": "user", "content": marks[2]},
    ]
    try:
        rendered = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except Exception as error:  # a template may reject the conversation; fall back to the reference markers
        logger.info(f"Rendering the chat template failed: {error}")
        return None
    if not isinstance(rendered, str) or any(rendered.count(mark) != 1 for mark in marks):
        return None
    before_first, rest = rendered.split(marks[0])
    _, rest = rest.split(marks[1])
    between, assistant = rest.split(marks[2])
    common = 0
    while common < min(len(before_first), len(between)) and before_first[-1 - common] == between[-1 - common]:
        common += 1
    user = before_first[len(before_first) - common :]
    if not user or not assistant:
        return None
    return user, assistant


_PLACEHOLDER_MARK = "\x00grit-hf item {}\x00"


def placeholder(index: int) -> str:
    """A mark to write into a chat message where `plan_chat` puts plan items (its `inserts[index]`)."""
    return _PLACEHOLDER_MARK.format(index)


def plan_chat(rag, messages: list[dict[str, str]], inserts: list[list[PlanItem]], find_documents: bool = True):
    """The plan items of `messages` rendered with the chat template (`rag.render_chat`), where each
    `placeholder(i)` written into a message becomes the items `inserts[i]` (e.g. documents by id, cached), and the
    text around them is planned by `rag.plan_prompt` (indexed texts found in it; `find_documents=False`: as text).

    Raises `ValueError` if the template dropped a placeholder (then it dropped the message around it)."""
    rendered = rag.render_chat(messages)
    pieces = []
    for index in range(len(inserts)):
        before, mark, rendered = rendered.partition(placeholder(index))
        if not mark:
            raise ValueError("The chat template dropped a message that holds inserted items: cannot place them.")
        pieces.append(before)
    items: list[PlanItem] = []
    for text, insert in zip([*pieces, rendered], [*inserts, []]):
        items += rag.plan_prompt(text).items if find_documents and text else [Text(text)] if text else []
        items += insert
    return items


def check_mode(mode: str) -> None:
    """`ValueError` unless `mode` is one of `RAG_MODES`."""
    if mode not in RAG_MODES:
        raise ValueError(f"Invalid `mode`: {mode!r}. Valid modes are: {RAG_MODES}.")
