"""Held-out data: which man pages and queries are excluded, and the 8-word-shingle overlap filter.

The held-out folder (`--heldout-data`, default `$GRIT_HF_DATA` or `../shared/data` next to the repository) holds
`manpages/eval` (never used: its pages by name in any package, its queries, and its documents by overlap),
`manpages/train` (its pages and queries are not reused for man_summary) and `lmtext/passages.jsonl` (no overlap).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .text import log, norm_ws

HELDOUT_PARTS = ("manpages/eval", "manpages/train", "lmtext/passages.jsonl")
_WORD = re.compile(r"[a-z0-9]+")


def shingles(text: str, n: int = 8) -> set[str]:
    """The `n`-word shingles of `text` (lower-cased alphanumeric words)."""
    words = _WORD.findall(text.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


class OverlapFilter:
    """Drop texts that share an 8-word shingle with held-out text (lmtext passages, eval man-page documents)."""

    def __init__(self) -> None:
        self.blocked: dict[str, set[str]] = {}
        self.eval_queries: set[str] = set()
        self.dropped: Counter[str] = Counter()

    def add(self, name: str, texts: Iterable[str]) -> None:
        s = self.blocked.setdefault(name, set())
        for t in texts:
            s |= shingles(t)

    def hit(self, *texts: str) -> str | None:
        """The name of the first held-out set that one of `texts` overlaps, else None."""
        for t in texts:
            sh = shingles(t)
            for name, blocked in self.blocked.items():
                if not sh.isdisjoint(blocked):
                    return name
        return None

    def ok(self, kind: str, *texts: str) -> bool:
        """True when no text overlaps; else the drop is counted under `kind:set`."""
        name = self.hit(*texts)
        if name:
            self.dropped[f"{kind}:{name}"] += 1
            return False
        return True


@dataclass
class HeldOut:
    """Man pages (by (package, page) and by name) and queries of the held-out man-page sets."""

    eval_pages: set[tuple[str, str]] = field(default_factory=set)
    eval_names: set[str] = field(default_factory=set)
    train_pages: set[tuple[str, str]] = field(default_factory=set)
    train_names: set[str] = field(default_factory=set)
    train_queries: set[str] = field(default_factory=set)

    def excludes_page(self, package: str, page: str, base: str) -> bool:
        """True for an eval page, or any page with the name of an eval page."""
        return (package, page) in self.eval_pages or base.lower() in self.eval_names

    def excludes_names(self, names: str) -> bool:
        """True when a name of a NAME line ("a, b") is the name of an eval page."""
        return any(nm.strip().lower() in self.eval_names for nm in names.split(","))

    def in_train(self, package: str, page: str, base: str) -> bool:
        """True for a manpages/train page, or any page with its name."""
        return (package, page) in self.train_pages or base.lower() in self.train_names


def heldout_problem(data_dir: Path) -> str | None:
    """Why `data_dir` cannot be the held-out folder (missing, or none of its parts in it), else None."""
    if any((data_dir / part).exists() for part in HELDOUT_PARTS):
        return None
    what = "has none of" if data_dir.is_dir() else "not found; it should hold"
    return f"held-out data folder {data_dir} {what} {', '.join(HELDOUT_PARTS)} (kept out of the training data)"


def _jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def load_heldout(data_dir: Path, overlap: OverlapFilter) -> HeldOut:
    """Read the held-out sets under `data_dir` and register their texts with `overlap` (eval first, then lmtext)."""
    eval_dir, train_dir, lmtext = (data_dir / part for part in HELDOUT_PARTS)
    held = HeldOut()
    eval_texts = []
    if eval_dir.exists():
        for m in _jsonl(eval_dir / "meta.jsonl"):
            held.eval_pages.add((m["package"], m["page"]))
            held.eval_names.add(m["page"].rsplit(".", 1)[0].lower())
            for nm in m["names"].split(","):
                held.eval_names.add(nm.strip().lower())
        for fname in ("corpus.jsonl", "queries.jsonl"):
            eval_texts += [m["text"] for m in _jsonl(eval_dir / fname)]
        overlap.eval_queries = {norm_ws(m["text"]).lower() for m in _jsonl(eval_dir / "queries.jsonl")}
    else:
        log(f"WARNING: {eval_dir} not found: no eval exclusion")
    if train_dir.exists():
        for m in _jsonl(train_dir / "meta.jsonl"):
            held.train_pages.add((m["package"], m["page"]))
            held.train_names.add(m["page"].rsplit(".", 1)[0].lower())
        held.train_queries = {norm_ws(m["text"]).lower() for m in _jsonl(train_dir / "queries.jsonl")}
    else:
        log(f"WARNING: {train_dir} not found: manpages/train pages may be reused for man_summary")
    overlap.add("eval-manpages", eval_texts)
    if lmtext.exists():
        overlap.add("lmtext", [m["text"] for m in _jsonl(lmtext)])
    else:
        log(f"WARNING: {lmtext} not found: no lmtext exclusion")
    return held
