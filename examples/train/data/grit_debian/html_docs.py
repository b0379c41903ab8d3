"""HTML manuals: python_section, python_api and doc_section pairs, generative units and FAQ candidates."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .html_parser import parse_html_file
from .sources import HTML_SOURCES, SMOKE_PY_PAGES
from .tasks import Builder
from .text import alpha_ratio, clean_heading, is_question, log, n_words, norm_ws, section_text, stable_hash

# headings that say nothing alone: the page title is prefixed to them in queries
_GENERIC_HEADINGS = {
    "description",
    "examples",
    "example",
    "notes",
    "note",
    "see also",
    "synopsis",
    "parameters",
    "compatibility",
    "introduction",
    "overview",
    "usage",
    "options",
    "return value",
    "outline",
    "summary",
    "details",
    "background",
    "configuration",
    "syntax",
    "arguments",
    "bugs",
    "history",
    "limitations",
    "caveats",
    "footnotes",
    "references",
    "name",
    "purpose",
    "availability",
    "api",
    "functions",
    "classes",
    "exceptions",
    "constants",
    "attributes",
    "methods",
    "installation",
    "requirements",
    "discussion",
    "related",
    "context",
    "module contents",
    "general",
    "basics",
    "getting started",
    "other",
    "miscellaneous",
    "errors",
    "return values",
    "security",
    "performance",
    "implementation",
    "defaults",
    "default",
    "directives",
    "content",
    "conclusion",
    "restrictions",
    "variables",
    "inputs",
    "outputs",
    "format",
    "files",
    "environment",
    "diagnostics",
    "authors",
    "author",
    "see also:",
    "table of contents",
    "contents",
    "preface",
    "topics",
    "tips",
    "troubleshooting",
    "further reading",
}


def collect_html(b: Builder, pkgs: dict[str, dict]) -> None:
    """Section pairs, generative units, FAQ candidates and (Python docs) API pairs from the HTML manuals."""
    jobs, labels = [], []
    for label, pkg, root, inc, exc in HTML_SOURCES:
        if pkg not in pkgs:
            continue
        base = Path(pkgs[pkg]["root"]) / root
        files = sorted(p for p in base.rglob("*.html") if p.is_file())
        for f in files:
            rel = f.relative_to(base).as_posix()
            if re.search(inc, rel) and not (exc and re.search(exc, rel)):
                if b.smoke and label == "python-docs" and not (rel.startswith("faq/") or rel in SMOKE_PY_PAGES):
                    continue
                jobs.append((str(f), rel))
                labels.append(label)
    log(f"html: parsing {len(jobs)} pages")
    with ProcessPoolExecutor(b.args.workers) as ex:
        docs = list(ex.map(parse_html_file, jobs, chunksize=8))
    per_label = defaultdict(list)
    for label, d in zip(labels, docs):
        per_label[label].append(d)
    for label, pages in per_label.items():
        b.stats["sources"][f"html:{label}"] = len(pages)
        secs = []
        for d in pages:
            page_title = clean_heading(re.sub(r"\s*[\u00b6#]\s*$", "", d["title"]))
            for s in d["sections"]:
                h = clean_heading(s["heading"])
                paras = s["paras"]
                if not h or not paras:
                    continue
                secs.append({"page": d["rel"], "title": page_title, "heading": h, "paras": paras})
            if label == "python-docs":
                _python_api(b, d, page_title)
        heading_count = Counter(s["heading"].lower() for s in secs)
        task = "python_section" if label == "python-docs" else "doc_section"
        by_page = defaultdict(list)
        for s in secs:
            s["text"] = section_text(s["paras"], 300)
            by_page[s["page"]].append(s)
        for s in secs:
            prose = [p for p in s["paras"] if alpha_ratio(p) >= 0.55]
            if prose:
                b.add_gen_unit(f"html:{label}", s["heading"], s["paras"])
            if is_question(s["heading"]):
                if n_words(s["text"]) >= 15:
                    b.faq_candidates.append(
                        {"source": label, "q": s["heading"], "a": s["text"], "group": f"{label}/{s['page']}"}
                    )
                continue
            if n_words(s["text"]) < 30 or alpha_ratio(s["text"]) < 0.5:
                continue
            h = s["heading"]
            if (h.lower() in _GENERIC_HEADINGS or heading_count[h.lower()] > 1 or n_words(h) <= 1) and s["title"]:
                if s["title"].lower() == h.lower():
                    continue
                q = f"{s['title']} — {h}"
            else:
                q = h
            if n_words(q) > 40:
                continue
            sib = [o["text"] for o in by_page[s["page"]] if o is not s and n_words(o["text"]) >= 30]
            sib.sort(key=lambda t: stable_hash(q, t))
            if b.add_pair(task, q, s["text"], sib[:1], key=f"{label}/{s['page']}/{h}"):
                b.html_sections.append({"label": label, "title": s["title"], "heading": h, "text": s["text"]})


def _python_api(b: Builder, d: dict, page_title: str) -> None:
    """python_api pairs (signature -> documentation) of one page; negatives from the same page."""
    entries = []
    for e in d["api"]:
        sig = e["sig"]
        body = section_text(e["paras"], 300)
        if n_words(body) < 8:
            continue
        ident = e["id"]
        m = re.match(r"^((?:[a-z]+ )*)(.*)$", sig)  # prefixes such as "class ", "abstractmethod "
        prefix, rest = m.group(1), m.group(2)
        head = re.split(r"[(\[]", rest)[0].strip()
        if ident and "." in ident and not head.startswith(ident.rsplit(".", 1)[0]) and ident.endswith(head):
            rest = ident[: len(ident) - len(head)] + rest
        sig = norm_ws(prefix + rest)
        if len(sig) > 200:
            continue
        entries.append(
            {
                "sig": sig,
                "id": ident or head,
                "body": body,
                "type": e["type"],
                "page": d["rel"],
                "title": page_title,
            }
        )
    for i, e in enumerate(entries):
        sib = [o["body"] for o in entries if o is not e]
        sib.sort(key=lambda t: stable_hash(e["sig"], t))
        if b.add_pair("python_api", e["sig"], e["body"], sib[:2], key=f"{d['rel']}/{e['id']}"):
            b.py_api_pool.append({**e, "siblings": [o for o in entries[max(0, i - 3) : i + 4] if o is not e]})
