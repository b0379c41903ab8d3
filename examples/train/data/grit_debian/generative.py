"""Generative data: documentation prose chunks (`text`) and single-turn chats (`chat`)."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

from .manpages import man_command, man_description, man_section
from .tasks import Builder
from .text import alpha_ratio, n_words, norm_ws, stable_hash, truncate_words


def _family(source: str) -> str:
    """Source family for the per-family cap: `man`, `info`, or `html:<label>`."""
    return source.split(":")[0] + (":" + source.split(":")[1] if source.startswith("html:") else "")


def build_generative(b: Builder) -> list[dict]:
    """Text chunks of 100-450 words, de-duplicated and filtered, sampled to the byte budget with a family cap."""
    chunks = []
    for u in b.gen_units:
        cur, cur_words = [], 0
        pieces = []
        for p in u["paras"]:
            w = n_words(p)
            if w > 400:
                p = truncate_words(p, 400)
                w = n_words(p)
            if cur_words + w > 400 and cur:
                pieces.append(cur)
                cur, cur_words = [], 0
            cur.append(p)
            cur_words += w
        if cur:
            pieces.append(cur)
        for k, piece in enumerate(pieces):
            text = "\n\n".join(piece)
            if k == 0 and u["heading"]:
                text = f"{u['heading']}\n\n{text}"
            w = n_words(text)
            if w < 100 or w > 450 or alpha_ratio(text) < 0.6:
                continue
            chunks.append({"source": u["source"], "text": text})
    # de-duplicate, filter, then sample towards the byte budget with a per-family cap
    seen, uniq = set(), []
    for c in chunks:
        h = hashlib.sha1(norm_ws(c["text"]).lower().encode()).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        if b.filter.ok("generative", c["text"]):
            uniq.append(c)
    uniq.sort(key=lambda c: stable_hash("gen", c["text"][:300]))
    budget = b.args.gen_mb * 1_000_000
    fam_cap = budget * b.args.gen_family_share
    used, fam_used, out = 0, Counter(), []
    for c in uniq:
        size = len(c["text"].encode("utf-8"))
        f = _family(c["source"])
        if used + size > budget or fam_used[f] + size > fam_cap:
            continue
        used += size
        fam_used[f] += size
        out.append(c)
    out.sort(key=lambda c: stable_hash("genorder", c["text"][:300]))
    b.stats["generative_bytes_by_family"] = dict(sorted(fam_used.items()))
    b.stats["generative_candidates"] = len(uniq)
    return out


def build_chat(b: Builder) -> list[dict]:
    """Single-turn chats from FAQs, man-page options and summaries, Python API entries and docstrings."""
    r = random.Random(b.args.seed + 1)
    chats = []
    for c in b.faq_pool:
        chats.append(("faq", c["q"], c["a"]))
    items = sorted(b.man_item_pool, key=lambda x: stable_hash("chat", x["cmd"], x["tag"]))
    for it in items[: b.args.chat_per_kind]:
        tag = it["tag"]
        if tag.startswith(("-", "+")):
            q = f"What does the {tag} option of {it['cmd']} do?"
        else:
            q = f"In the manual page of {it['cmd']}, what does {tag} mean?"
        chats.append(("man_option", q, truncate_words(it["desc"], 250)))
    pages = sorted(b.man_pages, key=lambda p: stable_hash("chat", p["page"]))
    k = 0
    for p in pages:
        if k >= b.args.chat_per_kind // 2:
            break
        desc = man_description(p, 200)
        if n_words(desc) < 30 or not b.filter.ok("chat", desc):
            continue
        cmd, sect = man_command(p), man_section(p)
        q = r.choice([f"What is {cmd} used for?", f"What does {cmd} do?", f"Explain what {cmd}({sect}) is for."])
        chats.append(("man_summary", q, f"{cmd} — {p['summary']}.\n\n{truncate_words(desc, 200)}"))
        k += 1
    api = sorted(b.py_api_pool, key=lambda e: stable_hash("chat", e["sig"]))
    for e in api[: b.args.chat_per_kind]:
        name = e["id"]
        q = r.choice([f"What does {name} do in Python?", f"Explain `{e['sig']}`.", f"How does {name} work?"])
        chats.append(("python_api", q, truncate_words(e["body"], 250)))
    docs = sorted(b.doc_pool, key=lambda e: stable_hash("chat", e["name"]))
    for e in docs[: b.args.chat_per_kind // 2]:
        q = f"What does the Python {e['kind']} {e['name']} do?"
        chats.append(("python_docstring", q, f"{e['summary']}\n\n{e['body']}"))
    out = []
    for src, q, a in chats:
        if n_words(a) < 8 or not b.filter.ok("chat", q, a):
            continue
        out.append(
            {
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a.strip()}],
                "source": src,
            }
        )
    out.sort(key=lambda c: stable_hash("chatorder", c["messages"][0]["content"], c["messages"][1]["content"][:80]))
    return out
