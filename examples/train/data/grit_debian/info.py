"""GNU Info manuals: nodes read from the .info files (indirect sub-files followed), and the info_node pairs."""

from __future__ import annotations

import re
from pathlib import Path

from .sources import INFO_PACKAGES
from .tasks import Builder
from .text import alpha_ratio, clean_chars, indent, is_question, n_words, norm_ws, read_maybe_gz, section_text

_INFO_SKIP_NODES = re.compile(
    r"(^Top$|index$|Index\b|^GNU Free Documentation License|^Copying|^GNU General Public|"
    r"^GPL$|^GFDL$|^Free Software|^Free Documentation|^Distrib|License$|^History$|"
    r"^Copyright|^Authors?$|^Contributors|^Acknowledg|^Thanks$)",
    re.I,
)


def info_manuals(root: Path) -> list[tuple[str, list[Path]]]:
    """The Info manuals of an unpacked package: (name, files), indirect sub-files in order."""
    d = root / "usr/share/info"
    if not d.is_dir():
        return []
    mains = sorted(p for p in d.iterdir() if re.search(r"\.info(\.gz)?$", p.name))
    out = []
    for main in mains:
        stem = re.sub(r"\.info(\.gz)?$", "", main.name)
        text = read_maybe_gz(main)
        files = [main]
        m = re.search(r"\x1f\nIndirect:\n(.*?)\x1f", text, re.S)
        if m:
            subs = []
            for line in m.group(1).splitlines():
                fname = line.split(":")[0].strip()
                cands = [d / fname, d / (fname + ".gz")]
                subs += [c for c in cands if c.exists()][:1]
            files = subs
        out.append((stem, files))
    return out


def parse_info(stem: str, files: list[Path]) -> dict:
    """A manual's title and nodes (menus, index markers and `*note` syntax removed)."""
    text = "".join(read_maybe_gz(f) for f in files)
    chunks = text.split("\x1f")
    nodes = []
    title = ""
    for ch in chunks:
        ch = ch.lstrip("\n")
        if not ch.startswith("File:"):
            continue
        header, _, body = ch.partition("\n")
        m = re.search(r"Node:\s*(.*?)(?:,\s+(?:Next|Prev|Up):|$)", header)
        if not m:
            continue
        node = m.group(1).strip()
        body = re.sub(r"\x00\x08\[[^\x00]*\x00\x08\]", "", body)
        body = body.replace("\x00", "").replace("\x08", "")
        menu = re.search(r"^\* Menu:", body, re.M)
        if menu:
            body = body[: menu.start()]
        body = re.sub(r"\*[Nn]ote\s+([^:]+?)::", r"\1", body)
        body = re.sub(r"\*[Nn]ote\s+([^:]+?):\s*(\([^)]*\))?[^.,:]*([.,])(\s*)(\S?)", _xref, body)
        body = clean_chars(body)
        sections = info_sections(body)
        if node == "Top":
            for h, _ in sections:
                if h:
                    title = h
                    break
        nodes.append({"node": node, "sections": sections})
    m = re.search(r"START-INFO-DIR-ENTRY\n\*\s*([^:\n]+):", text)
    dir_name = m.group(1).strip() if m else ""
    if (
        not title
        or re.fullmatch(
            r"(master menu|top|short contents|table of contents|contents|menu|overview|"
            r"introduction|preface)",
            title.strip().lower(),
        )
        or len(title) > 60
    ):
        title = dir_name or stem
    return {"manual": stem, "title": norm_ws(title), "nodes": nodes}


def _xref(m: re.Match) -> str:
    """`*note LABEL: NODE.` -> `LABEL`, keeping the period only where a sentence ends."""
    label, punct, space, nxt = norm_ws(m.group(1)), m.group(3), m.group(4), m.group(5)
    keep = punct if (not nxt or nxt.isupper() or "\n\n" in space) else ("," if punct == "," else "")
    return f"{label}{keep}{space}{nxt}"


def info_sections(body: str) -> list[tuple[str, list[str]]]:
    """Split an info node into (heading, paragraphs) using the underlines (===, ---, ***, ...)."""
    lines = body.split("\n")
    sections: list[tuple[str, list[str]]] = [("", [])]
    cur: list[str] = []

    def flush() -> None:
        if cur:
            para = "\n".join(cur)
            sections[-1][1].append(para)
            cur.clear()

    i = 0
    while i < len(lines):
        ln = lines[i].rstrip()
        nxt = lines[i + 1].rstrip() if i + 1 < len(lines) else ""
        if (
            ln.strip()
            and nxt
            and re.fullmatch(r"[=\-*.]+", nxt.strip())
            and abs(len(nxt.strip()) - len(ln.strip())) <= 2
        ):
            flush()
            heading = re.sub(r"^([0-9]+(\.[0-9]+)*\.?|[A-Z](\.[0-9]+)+\.?|[A-Z]\.)\s+", "", ln.strip())
            sections.append((heading, []))
            i += 2
            continue
        if not ln.strip():
            flush()
        else:
            cur.append(ln)
        i += 1
    flush()
    out = []
    for h, paras in sections:
        clean = []
        for p in paras:
            plines = p.split("\n")
            ind = min(indent(x) for x in plines if x.strip())
            if ind >= 5 or alpha_ratio(p) < 0.45:  # example / code block: keep its lines
                clean.append("\n".join(x[min(ind, indent(x)) :] for x in plines))
            else:
                clean.append(norm_ws(p))
        if h or clean:
            out.append((h, clean))
    return out


def collect_info(b: Builder, pkgs: dict[str, dict]) -> None:
    """info_node pairs, generative units and FAQ candidates from the Info manuals."""
    manuals = []
    for name in INFO_PACKAGES:
        if name not in pkgs:
            continue
        for stem, files in info_manuals(Path(pkgs[name]["root"])):
            if stem.startswith("python"):
                continue
            manuals.append(parse_info(stem, files))
    nodes_total = 0
    for man in manuals:
        title = man["title"]
        usable = []
        for nd in man["nodes"]:
            if _INFO_SKIP_NODES.search(nd["node"]):
                continue
            paras = [p for _, ps in nd["sections"] for p in ps]
            text = section_text(paras, 300)
            if n_words(text) < 40:
                continue
            usable.append((nd, text))
            for h, ps in nd["sections"]:
                hh = h or nd["node"]
                if ps:
                    b.add_gen_unit(f"info:{man['manual']}", f"{title}: {hh}", ps)
                if h and is_question(h):
                    ans = section_text(ps, 300)
                    if n_words(ans) >= 15:
                        b.faq_candidates.append(
                            {"source": f"info:{man['manual']}", "q": h, "a": ans, "group": f"info:{man['manual']}"}
                        )
        nodes_total += len(usable)
        for i, (nd, text) in enumerate(usable):
            negs = [usable[j][1] for j in (i - 1, i + 1) if 0 <= j < len(usable)]
            b.add_pair("info_node", f"{title}: {nd['node']}", text, negs[:1], key=f"{man['manual']}/{nd['node']}")
            b.info_docs.append({"manual": title, "node": nd["node"], "text": text})
    b.stats["sources"]["info_manuals"] = len(manuals)
    b.stats["sources"]["info_nodes_used"] = nodes_total
