"""Argument checks shared by every public entry point, so that bad input fails the same way everywhere: a
`TypeError` or `ValueError` that names the argument and says what was expected (never an error from deep inside
torch or a tokenizer)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "check_positive_int",
    "check_non_negative_number",
    "check_probability",
    "check_seed",
    "check_text",
    "check_texts",
    "check_str_list",
]


def check_positive_int(value: Any, name: str, allow_none: bool = False) -> int | None:
    """Return `value` if it is an int >= 1 (or `None` when `allow_none`); raise `ValueError` naming `name`."""
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        expected = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.")
    return value


def check_non_negative_number(value: Any, name: str, allow_none: bool = False) -> float | None:
    """Return `value` as a float if it is a finite number >= 0 (or `None` when `allow_none`)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        expected = "a finite number >= 0" + (" or None" if allow_none else "")
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.")
    return float(value)


def check_probability(value: Any, name: str) -> float:
    """Return `value` as a float if it is a number in (0, 1]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise ValueError(f"`{name}` must be a number in (0, 1], got {value!r}.")
    return float(value)


def check_seed(value: Any, name: str = "seed") -> int | None:
    """Return `value` if it is `None` or an int a torch generator accepts (0 <= seed < 2**63)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int or None, got {type(value).__name__}.")
    if not 0 <= value < 2**63:
        raise ValueError(f"`{name}` must be in [0, 2**63), got {value!r}.")
    return value


def check_text(text: Any, name: str) -> str:
    """Return `text` if it is a str of valid Unicode; a lone surrogate (e.g. from a bad JSON escape) is refused."""
    if not isinstance(text, str):
        raise TypeError(f"`{name}` must be a str, got {type(text).__name__}: {text!r:.50}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"`{name}` contains a lone surrogate ({text[error.start]!r} at index {error.start}), which is not valid "
            "Unicode text; decode it properly or replace it before passing it."
        ) from None
    return text


def check_texts(sentences: Any, name: str = "sentences") -> tuple[list[str], bool]:
    """Return `(texts, was_single_string)` for a str or a sequence of str; every item is checked with `check_text`."""
    if isinstance(sentences, str):
        return [check_text(sentences, name)], True
    if not isinstance(sentences, Sequence) or isinstance(sentences, (bytes, bytearray)):
        raise TypeError(f"`{name}` must be a str or a list of str, got {type(sentences).__name__}.")
    return [check_text(text, f"{name}[{index}]") for index, text in enumerate(sentences)], False


def check_str_list(values: Any, name: str, allow_empty_items: bool = False) -> list[str]:
    """Return `values` as a list if it is a list/tuple of str (not a single str, which would split into letters)."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of str, got {type(values).__name__}: {values!r:.80}.")
    for index, value in enumerate(values):
        check_text(value, f"{name}[{index}]")
        if not value and not allow_empty_items:
            raise ValueError(f"`{name}[{index}]` must be a non-empty str.")
    return list(values)
