"""The embedding tasks (instructions) and the Builder: what the source readers collect, and the pair selection.

Each reader (manpages, info, html_docs, docstrings) adds embedding pairs, generative units and pools for the chat and
RAG builders to one Builder; every pair passes the held-out filters on the way in.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

from .filters import OverlapFilter, load_heldout
from .text import norm_ws, stable_hash

INSTRUCTIONS = {
    "man_summary": "Given a one-line summary from a Unix manual page, retrieve the manual page description that it "
    "summarizes",
    "man_option": "Given a command-line option, flag or keyword of a Unix command or library, retrieve the manual "
    "page text that describes it",
    "info_node": "Given the title of a node in a GNU Info manual, retrieve the text of that node",
    "python_section": "Given a section heading from the Python documentation, retrieve the section text",
    "python_api": "Given a function, class or attribute signature from the Python documentation, retrieve its "
    "documentation",
    "python_docstring": "Given the one-line summary of a Python docstring, retrieve the rest of the docstring",
    "doc_section": "Given a section heading from a technical manual, retrieve the text of that section",
    "faq": "Given a question from a FAQ or a manual, retrieve the answer",
}


class Builder:
    """State shared by the build stages: settings, held-out filters, collected pairs, text units and pools."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke: bool = args.smoke
        self.filter = OverlapFilter()
        self.heldout = load_heldout(args.heldout_data, self.filter)
        self.stats: dict = {"sources": {}}
        self.pairs: dict[str, list[dict]] = defaultdict(list)  # task -> [{"rec", "key"}]
        self.gen_units: list[dict] = []  # {"source", "heading", "paras"}
        self.faq_candidates: list[dict] = []  # {"source", "q", "a", "group"}, from HTML and Info headings
        # pools for the chat and RAG builders, filled by the readers
        self.man_pages: list[dict] = []
        self.man_item_pool: list[dict] = []
        self.info_docs: list[dict] = []
        self.html_sections: list[dict] = []
        self.py_api_pool: list[dict] = []
        self.faq_pool: list[dict] = []
        self.doc_pool: list[dict] = []

    def add_pair(self, task: str, query: str, pos: str, negs: list[str] | None = None, key: str = "") -> bool:
        """Add one pair (if it passes the held-out filters); `key` orders the sampling in `select_pairs`."""
        query, pos = query.strip(), pos.strip()
        if not query or not pos or query == pos:
            return False
        if norm_ws(query).lower() in self.filter.eval_queries:
            self.filter.dropped[f"emb/{task}:eval-query"] += 1
            return False
        if not self.filter.ok(f"emb/{task}", query, pos):
            return False
        rec = {"query": [INSTRUCTIONS[task], query], "pos": [["", pos]]}
        negs = [n for n in (negs or []) if n.strip() and n.strip() != pos][: self.args.max_negs]
        negs = [n for n in negs if self.filter.hit(n) is None]
        if negs:
            rec["neg"] = [["", n] for n in negs]
        rec["source"] = task
        self.pairs[task].append({"rec": rec, "key": key or query})
        return True

    def add_gen_unit(self, source: str, heading: str, paras: list[str]) -> None:
        self.gen_units.append({"source": source, "heading": heading, "paras": paras})

    def select_pairs(self) -> dict[str, list[dict]]:
        """Per task: duplicates and ambiguous queries dropped, then at most max_pairs_per_task, sampled by hash."""
        out = {}
        cap = self.args.max_pairs_per_task
        for task in INSTRUCTIONS:
            items = self.pairs.get(task, [])
            seen, uniq = set(), []
            for it in items:
                k = (it["rec"]["query"][1].lower(), it["rec"]["pos"][0][1][:200])
                if k in seen:
                    continue
                seen.add(k)
                uniq.append(it)
            # queries that map to two different documents are ambiguous: drop all of them
            qc = Counter(it["rec"]["query"][1].lower() for it in uniq)
            uniq = [it for it in uniq if qc[it["rec"]["query"][1].lower()] == 1]
            uniq.sort(key=lambda it: stable_hash(task, it["key"]))
            out[task] = [it["rec"] for it in uniq[:cap]]
        return out


def collect_faq(b: Builder) -> None:
    """FAQ pairs from the question headings gathered by the HTML and Info readers (first of each question kept)."""
    seen = set()
    by_group = defaultdict(list)
    for c in b.faq_candidates:
        k = c["q"].lower()
        if k in seen:
            continue
        seen.add(k)
        by_group[c["group"]].append(c)
    for group, cands in by_group.items():
        for c in cands:
            negs = [o["a"] for o in cands if o is not c]
            negs.sort(key=lambda t: stable_hash(c["q"], t))
            if b.add_pair("faq", c["q"], c["a"], negs[:1], key=f"{group}/{c['q']}"):
                b.faq_pool.append(c)
