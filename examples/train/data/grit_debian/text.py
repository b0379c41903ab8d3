"""Text helpers shared by all sources: character clean-up, word counts, truncation, stable hashing, logging."""

from __future__ import annotations

import gzip
import hashlib
import re
import time
from pathlib import Path

_CHAR_MAP = {
    0x2010: "-",
    0x2011: "-",
    0x2012: "-",
    0x2013: "-",
    0x2212: "-",
    0x2018: "'",
    0x2019: "'",
    0x201C: '"',
    0x201D: '"',
    0x00A0: " ",
    0x00AD: "",
    0x200B: "",
    0x2002: " ",
    0x2003: " ",
    0x2009: " ",
    0x202F: " ",
    0xFEFF: "",
    0x00B6: "",
    0x2022: "*",
    0x27E8: "<",
    0x27E9: ">",
}


def clean_chars(text: str) -> str:
    return text.translate(_CHAR_MAP)


def norm_ws(text: str) -> str:
    return " ".join(text.split())


def n_words(text: str) -> int:
    return len(text.split())


def stable_hash(*parts: str) -> int:
    """A 64-bit hash of `parts` that does not change between runs (SHA-1)."""
    return int.from_bytes(hashlib.sha1("\x1f".join(parts).encode("utf-8")).digest()[:8], "big")


def truncate_words(text: str, max_words: int, min_keep: int | None = None) -> str:
    """At most `max_words` words (paragraph breaks kept), cut back to a sentence end when one is near."""
    out, count = [], 0
    for para in text.split("\n\n"):
        words = para.split()
        if not words:
            continue
        if count + len(words) <= max_words:
            out.append(" ".join(words) if "\n" not in para else para.strip("\n"))
            count += len(words)
            continue
        rest = max_words - count
        if rest > 0:
            out.append(" ".join(words[:rest]))
        break
    text = "\n\n".join(out)
    if count >= max_words or n_words(text) >= max_words:
        floor = min_keep if min_keep is not None else max_words // 2
        cut = max(text.rfind(". "), text.rfind(".\n"))
        if cut > 0 and n_words(text[: cut + 1]) >= floor:
            text = text[: cut + 1]
    return text.strip()


def first_sentences(text: str, max_words: int) -> str:
    """The leading whole sentences of `text` within `max_words` words."""
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(`\"'])", norm_ws(text))
    out = []
    for s in sentences:
        if out and n_words(" ".join(out + [s])) > max_words:
            break
        out.append(s)
    res = " ".join(out)
    return res if n_words(res) <= max_words else truncate_words(res, max_words)


def alpha_ratio(text: str) -> float:
    """Share of tokens that are ordinary words (a prose vs. code/table measure)."""
    tokens = text.split()
    if not tokens:
        return 0.0
    return sum(1 for t in tokens if re.fullmatch(r"[A-Za-z][a-z]*[,.;:!?)]?|\(?[a-z]+", t)) / len(tokens)


def indent(ln: str) -> int:
    """Number of leading spaces."""
    return len(ln) - len(ln.lstrip(" "))


def read_maybe_gz(path: Path) -> str:
    """Text of a possibly gzipped file (UTF-8, else Latin-1)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def section_text(paras: list[str], max_words: int = 300) -> str:
    """Non-empty paragraphs joined, truncated to `max_words` words."""
    return truncate_words("\n\n".join(p for p in paras if p.strip()), max_words)


def clean_heading(h: str) -> str:
    """A heading without its chapter/section number."""
    h = re.sub(r"^(Chapter|Appendix|Section)\s+[0-9A-Z]+(\.[0-9]+)*\.?\s*", "", h)
    h = re.sub(r"^([0-9]+|[A-Z])(\.[0-9]+)*\.?\s+", "", h)
    return norm_ws(h).strip(" :")


def is_question(h: str) -> bool:
    return h.endswith("?") and h[:1].isalnum() and 3 <= n_words(h) <= 40


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
