"""Turning texts into model inputs: input checks, the embedding prefixes, tokenization, padding and chat prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from .validation import check_positive_int, check_text

logger = logging.get_logger(__name__)

__all__ = [
    "EmbeddingInputs",
    "count_prefix_tokens",
    "tokenize_with_prefix",
    "count_suffix_tokens",
    "special_tokens_around_text",
    "truncate_ids",
    "pad_right",
    "length_sorted_batches",
    "pad_token_id",
    "check_messages",
    "apply_chat_template",
]


def count_prefix_tokens(tokenizer: PreTrainedTokenizerBase, prefix: str) -> int:
    """How many leading tokens of `prefix + text` belong to the prefix (BOS included), as the reference counts them:
    the length of the prefix tokenized alone with the tokenizer's special tokens, less a trailing EOS."""
    ids = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    if ids and prefix and ids[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id != tokenizer.bos_token_id:
        ids = ids[:-1]
    return len(ids)


@dataclass
class EmbeddingInputs:
    """Texts tokenized for the embedding pass: `prefix + text` per text, special tokens added.

    Attributes:
        token_ids: the token ids of each text (prefix included, no padding).
        prefix_length: how many leading tokens of every row are prefix (BOS, format, instruction): excluded from
            pooling.
        truncated: whether each text was cut to fit `max_length`.
    """

    token_ids: list[list[int]]
    prefix_length: int
    truncated: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.token_ids)


def tokenize_with_prefix(
    tokenizer: PreTrainedTokenizerBase, prefix: str, texts: list[str], max_length: int, warn: bool = True
) -> EmbeddingInputs:
    """Tokenize `prefix + text` for each text (special tokens added, truncated to `max_length`).

    Raises `ValueError` if the prefix leaves no room for text; logs a warning (every call, unless `warn=False`, for
    callers that truncate by design, such as training batches) naming how many texts were truncated, so that no text
    is cut silently.
    """
    check_positive_int(max_length, "max_length")
    prefix_length = count_prefix_tokens(tokenizer, prefix)
    if prefix_length >= max_length:
        raise ValueError(
            f"The instruction and format take {prefix_length} tokens, leaving no room for text within "
            f"`max_length`={max_length}. Shorten the instruction or raise `max_length`."
        )
    if not texts:
        return EmbeddingInputs([], prefix_length, [])
    ids = tokenizer([prefix + text for text in texts], add_special_tokens=True)["input_ids"]
    truncated = [len(row) > max_length for row in ids]
    if any(truncated):
        too_long = [i for i, cut in enumerate(truncated) if cut]
        (logger.warning if warn else logger.debug)(
            f"{len(too_long)} of {len(texts)} text(s) are longer than `max_length`={max_length} tokens and were "
            "truncated."
        )
        suffix = count_suffix_tokens(tokenizer)
        for i in too_long:
            ids[i] = truncate_ids(ids[i], max_length, suffix)
    return EmbeddingInputs(ids, prefix_length, truncated)


def special_tokens_around_text(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after any text (e.g. `([BOS], [])` for Llama,
    `([BOS], [EOS])` for tokenizers that also append EOS, `([], [])` for GPT-2), found around a probe text."""
    probe = "grit"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    # the special tokens change the text's own tokens (rare): count leading ones as the reference counts a prefix
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return ids[: count_prefix_tokens(tokenizer, "")], []


def count_suffix_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """How many special tokens the tokenizer appends after any text (e.g. 1 for a trailing `[EOS]`)."""
    return len(special_tokens_around_text(tokenizer)[1])


def truncate_ids(ids: list[int], max_length: int, suffix: int) -> list[int]:
    """`ids` cut to `max_length` as a right-truncating tokenizer cuts them with `truncation=True`: the trailing
    `suffix` special tokens are kept and the end of the text before them is cut (never the instruction prefix).

    Why by hand: a fast tokenizer's `truncation=True` switches truncation on in the shared Rust backend for the call
    and a later call switches it off, so two threads tokenizing at once (the server, async integrations) could cut a
    text that was not meant to be cut, or fail with "Already borrowed". Cutting the ids here leaves the backend alone.
    """
    if len(ids) <= max_length:
        return ids
    return ids[: max_length - suffix] + ids[len(ids) - suffix :]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id: the tokenizer's pad token, else its EOS token, else 0 (padding is always masked out)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_padding: float = 0.1, min_padding_tokens: int = 16
) -> list[list[int]]:
    """Group the indices of `lengths` into batches of at most `batch_size`, longest first (stable), for right padding
    with little waste: a batch also ends before a text shorter than its first by more than `max_padding` of that
    length and by more than `min_padding_tokens` tokens, so long texts pad by about 10% at most while short texts
    still share batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current:
            longest = lengths[current[0]]
            gap = longest - lengths[index]
            if len(current) >= batch_size or (gap > max_padding * longest and gap > min_padding_tokens):
                batches.append(current)
                current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def pad_right(
    rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into `(input_ids, attention_mask)` tensors."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids.to(device), attention_mask.to(device)


def check_messages(messages: Any, name: str = "messages") -> list[dict[str, str]]:
    """Return chat `messages` as a list of `{"role", "content"}` dicts of str (a str is one user message); raise
    `TypeError`/`ValueError` naming the bad message otherwise."""
    if isinstance(messages, str):
        return [{"role": "user", "content": check_text(messages, name)}]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError(
            f"`{name}` must be a str or a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}."
        )
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(f"`{name}[{index}]` must be a dict with 'role' and 'content', got {message!r:.80}.")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"`{name}[{index}]` has no {key!r}: every message needs 'role' and 'content'.")
            check_text(message[key], f"{name}[{index}][{key!r}]")
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


def apply_chat_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    fallback_template: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """Render chat `messages` (`{"role", "content"}` dicts, as `check_messages` returns them: the public entries check
    them) with the tokenizer's chat template, or `fallback_template` when the tokenizer has none."""
    template = tokenizer.chat_template or fallback_template
    if template is None:
        raise ValueError("The tokenizer has no chat template and the config sets no `chat_template`.")
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
