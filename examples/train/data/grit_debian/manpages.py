"""Man pages: rendering with groff, sections and tagged items (options), and the man_summary/man_option pairs."""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .sources import MAN_PACKAGES
from .tasks import Builder
from .text import (
    alpha_ratio,
    clean_chars,
    indent,
    log,
    n_words,
    norm_ws,
    read_maybe_gz,
    stable_hash,
    truncate_words,
)

_SKIP_MAN_SECTIONS = {
    "NAME",
    "SYNOPSIS",
    "SEE ALSO",
    "AUTHOR",
    "AUTHORS",
    "COPYRIGHT",
    "REPORTING BUGS",
    "COLOPHON",
    "BUGS",
    "HISTORY",
    "AVAILABILITY",
    "LICENSE",
    "COPYING",
    "VERSIONS",
    "ATTRIBUTES",
    "STANDARDS",
    "CONFORMING TO",
    "RESOURCES",
    "MAINTAINERS",
    "THANKS",
    "ACKNOWLEDGEMENTS",
    "ACKNOWLEDGMENTS",
    "TRADEMARKS",
    "LICENSING",
    "FILES",
    "SUPPORT",
    "WWW",
    "CREDITS",
}


def man_files(root: Path) -> list[Path]:
    """The man page files of an unpacked package (symlinks left out)."""
    out = []
    for base in [root / "usr/share/man", *sorted((root / "usr/share/postgresql").glob("*/man"))]:
        if not base.is_dir():
            continue
        for d in sorted(base.glob("man*")):
            for f in sorted(d.iterdir()):
                if f.is_file() and not f.is_symlink():
                    out.append(f)
    return out


def page_name(path: Path) -> tuple[str, str]:
    """("ls.1", "ls") for .../man1/ls.1.gz."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    base, _, sect = name.rpartition(".")
    return name, base


def render_man(path_str: str) -> dict | None:
    """Render one man page with groff (no adjustment, no hyphenation) and parse sections and tagged items."""
    path = Path(path_str)
    try:
        src = read_maybe_gz(path)
    except OSError:
        return None
    body = [ln for ln in src.splitlines() if ln.strip() and not ln.startswith(('.\\"', "'\\\"", '.\\\\"'))]
    if len(body) <= 3 and any(ln.startswith(".so ") for ln in body):
        return None  # alias page
    src = re.sub(r"^(\.(TH|Dt)\b.*)$", r"\1\n.na\n.nh", src, count=1, flags=re.M)
    try:
        r = subprocess.run(
            ["groff", "-t", "-mandoc", "-Tutf8", "-rHY=0", "-rLL=100n", "-P-cbou"],
            input=src.encode("utf-8"),
            capture_output=True,
            timeout=60,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
        )
    except subprocess.TimeoutExpired:
        return None
    text = clean_chars(r.stdout.decode("utf-8", errors="replace"))
    lines = [ln.rstrip() for ln in text.splitlines()]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 5:
        return None
    lines = lines[1:-1]  # header and footer
    sections: list[tuple[str, list[str]]] = []
    for ln in lines:
        if ln and not ln[0].isspace():
            sections.append((norm_ws(ln).upper(), []))
        elif sections:
            sections[-1][1].append(ln)
    if not sections or sections[0][0] != "NAME":
        return None
    name_line = norm_ws(" ".join(sections[0][1]))
    m = re.match(r"^(.*?)\s+(?:-|--|\u2014|\\-)\s+(.*)$", name_line)
    if not m:
        return None
    names, summary = m.group(1).strip(), m.group(2).strip()
    secs = []
    for title, body_lines in sections[1:]:
        secs.append({"title": title, "paras": man_paragraphs(body_lines), "items": man_items(body_lines)})
    name, base = page_name(path)
    return {"page": name, "base": base, "names": names, "summary": summary, "sections": secs}


def man_paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs, whitespace-joined."""
    paras, cur = [], []
    for ln in lines + [""]:
        if ln.strip():
            cur.append(ln.strip())
        elif cur:
            paras.append(norm_ws(" ".join(cur)))
            cur = []
    return paras


_OPT_SAME_LINE = re.compile(r"^( +)([-+][^ ]*(?:,? [-+]?[^ ]+)*?)( {2,})(\S.*)$")


def man_items(lines: list[str]) -> list[tuple[str, str]]:
    """Tagged paragraphs (.TP/.IP style): a short tag line followed by a more deeply indented description."""
    items = []
    n = len(lines)
    i = 0
    while i < n:
        ln = lines[i]
        if not ln.strip():
            i += 1
            continue
        ind = indent(ln)
        tag, desc_start, desc_ind, first = None, None, None, None
        nxt = lines[i + 1] if i + 1 < n else ""
        stripped = ln.strip()
        if ind <= 21 and nxt.strip() and ind + 3 <= indent(nxt) <= ind + 16 and len(stripped) <= 80:
            if not re.search(r"[.:;,]$", stripped) and len(stripped.split()) <= 10 and "  " not in stripped:
                tag, desc_start, desc_ind = stripped, i + 1, indent(nxt)
        if tag is None:
            m = _OPT_SAME_LINE.match(ln)
            if m and ind <= 21 and "  " not in m.group(2):
                col = len(m.group(1)) + len(m.group(2)) + len(m.group(3))
                if not nxt.strip() or indent(nxt) == col:
                    tag, first, desc_start, desc_ind = m.group(2), m.group(4), i + 1, col
        if tag is None:
            i += 1
            continue
        desc_lines = [first] if first else []
        j = desc_start
        while j < n:
            lj = lines[j]
            if not lj.strip():
                if j + 1 < n and lines[j + 1].strip() and indent(lines[j + 1]) >= desc_ind:
                    desc_lines.append("")
                    j += 1
                    continue
                break
            if indent(lj) < desc_ind:
                break
            desc_lines.append(lj.strip())
            j += 1
        desc = "\n\n".join(" ".join(p.split("\n")) for p in "\n".join(desc_lines).split("\n\n") if p.strip())
        if n_words(desc) >= 6 and alpha_ratio(desc) >= 0.5:
            items.append((tag, desc))
        i = i + 1  # nested items are found too
    return items


def man_command(page: dict) -> str:
    """The first name on the NAME line (`tar` for "tar - an archiving utility")."""
    return page["names"].split(",")[0].strip()


def man_section(page: dict) -> str:
    """The page's section, from its file name (`1` for tar.1)."""
    return page["page"].rsplit(".", 1)[-1]


def man_description(page: dict, max_words: int) -> str:
    """The first `max_words` words of DESCRIPTION (else the first non-skipped section), whitespace-joined."""
    secs = page["sections"]
    cand = [s for s in secs if s["title"] == "DESCRIPTION"] or [
        s
        for s in secs
        if s["title"] not in _SKIP_MAN_SECTIONS and s["title"] not in {"OPTIONS", "EXAMPLES", "EXAMPLE"}
    ]
    if not cand:
        return ""
    words = " ".join(cand[0]["paras"]).split()
    return " ".join(words[:max_words])


def collect_man(b: Builder, pkgs: dict[str, dict]) -> None:
    """man_summary and man_option pairs, generative units and the man pools; held-out pages skipped."""
    jobs = []
    for name in MAN_PACKAGES:
        if name not in pkgs:
            continue
        files = man_files(Path(pkgs[name]["root"]))
        keep = []
        for f in files:
            page, base = page_name(f)
            if b.heldout.excludes_page(name, page, base):
                continue
            keep.append(f)
        keep.sort(key=lambda f: stable_hash(name, f.name))
        cap = b.args.man_pages_per_package
        keep = sorted(keep[:cap])
        jobs += [(name, str(f)) for f in keep]
    log(f"man: rendering {len(jobs)} pages from {len({j[0] for j in jobs})} packages")
    with ProcessPoolExecutor(b.args.workers) as ex:
        pages = list(ex.map(render_man, [j[1] for j in jobs], chunksize=16))
    summaries = Counter()
    parsed = []
    for (pkg, _), page in zip(jobs, pages):
        if page is None:
            continue
        page["package"] = pkg
        # a page whose NAME lists an eval name is skipped too
        if b.heldout.excludes_names(page["names"]):
            continue
        parsed.append(page)
        summaries[norm_ws(page["summary"]).lower()] += 1
    b.stats["sources"]["man_pages_rendered"] = len(parsed)
    b.man_pages = parsed
    by_pkg_items = []
    for page in parsed:
        pkg, summ = page["package"], norm_ws(page["summary"])
        desc150 = man_description(page, 150)
        cmd = man_command(page)
        in_train = b.heldout.in_train(pkg, page["page"], page["base"])
        # man_summary
        if (
            not in_train
            and summaries[summ.lower()] == 1
            and 2 <= n_words(summ) <= 30
            and n_words(desc150) >= 15
            and summ.lower() not in b.filter.eval_queries
            and summ.lower() not in b.heldout.train_queries
        ):
            b.add_pair("man_summary", summ, desc150, key=f"{pkg}/{page['page']}")
        # items
        items = []
        for sec in page["sections"]:
            if sec["title"] in _SKIP_MAN_SECTIONS:
                continue
            for tag, desc in sec["items"]:
                items.append((sec["title"], tag, desc))
        seen_tags = {}
        for st, tag, desc in items:
            k = norm_ws(tag)
            if k not in seen_tags or n_words(desc) > n_words(seen_tags[k][2]):
                seen_tags[k] = (st, tag, desc)
        items = list(seen_tags.values())
        by_pkg_items.append((page, cmd, items))
        # generative units: every section with prose
        for sec in page["sections"]:
            if sec["title"] in _SKIP_MAN_SECTIONS or sec["title"] in ("OPTIONS",):
                continue
            paras = [p for p in sec["paras"] if alpha_ratio(p) >= 0.55]
            if paras:
                b.add_gen_unit(f"man:{pkg}", f"{cmd}({man_section(page)}): {sec['title'].title()}", paras)
    # man_option with hard negatives from the same page; descriptions that occur twice are ambiguous: dropped
    desc_count = Counter(norm_ws(d).lower() for _, _, its in by_pkg_items for _, _, d in its)
    for page, cmd, items in by_pkg_items:
        good = [(st, tag, d) for st, tag, d in items if desc_count[norm_ws(d).lower()] == 1]
        if len(good) > b.args.items_per_page:
            good.sort(key=lambda x: stable_hash(page["page"], x[1]))
            good = good[: b.args.items_per_page]
        for st, tag, desc in good:
            doc = truncate_words(desc, 300)
            others = [truncate_words(d, 300) for _, t, d in good if t != tag]
            others.sort(key=lambda d: stable_hash(page["page"], tag, d))
            query = f"{cmd} {tag}"
            b.add_pair("man_option", query, doc, others[:3], key=f"{page['package']}/{page['page']}/{tag}")
            b.man_item_pool.append({"page": page, "cmd": cmd, "section": st, "tag": tag, "desc": desc, "items": good})
