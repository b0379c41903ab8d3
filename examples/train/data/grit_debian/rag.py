"""RAG / cache-loss examples: documents, question and (where the documents give it) an answer."""

from __future__ import annotations

import random

from .manpages import man_command, man_description, man_section
from .tasks import Builder
from .text import first_sentences, n_words, stable_hash, truncate_words


def _man_window(it: dict) -> str:
    """The man page around one option: page header, section, the option and its neighbours (~260 words)."""
    items = it["items"]
    idx = next(i for i, x in enumerate(items) if x[1] == it["tag"])
    order = [idx] + [j for d in range(1, len(items)) for j in (idx - d, idx + d) if 0 <= j < len(items)]
    chosen, words = [], 0
    for j in order:
        w = n_words(items[j][2]) + n_words(items[j][1])
        if chosen and words + w > 260:
            break
        chosen.append(j)
        words += w
    chosen.sort()
    page = it["page"]
    head = f"{man_command(page)}({man_section(page)}) — {page['summary']}\n{it['section']}"
    body = "\n\n".join(f"{items[j][1]}\n    {truncate_words(items[j][2], 200)}" for j in chosen)
    return truncate_words(f"{head}\n\n{body}", 320, 100)


def build_rag(b: Builder) -> list[dict]:
    """RAG records: 1-3 documents (the relevant one among distractors), a question and, for some kinds, an answer."""
    r = random.Random(b.args.seed + 2)
    recs: list[dict] = []

    def distractors(pool_docs: list[str], relevant: str, k: int) -> list[str]:
        out = []
        tries = 0
        while len(out) < k and pool_docs and tries < 20:
            d = pool_docs[r.randrange(len(pool_docs))]
            tries += 1
            if d != relevant and d not in out:
                out.append(d)
        return out

    def add(
        source: str, relevant: str, question: str, answer: str | None, pool: list[str], hard: list[str] | None = None
    ) -> None:
        n_extra = r.choice([0, 1, 2])
        extra = list(hard or [])[:n_extra]
        if len(extra) < n_extra:
            extra += distractors(pool, relevant, n_extra - len(extra))
        docs = extra + [relevant]
        r.shuffle(docs)
        rec = {"documents": docs, "question": question}
        if answer is not None:
            rec["answer"] = answer
        rec["source"] = source
        recs.append(rec)

    n = b.args.rag_per_kind
    # man options (answer = the option's description)
    items = sorted(b.man_item_pool, key=lambda x: stable_hash("rag", x["cmd"], x["tag"]))[:n]
    windows = [_man_window(it) for it in items]
    for it, win in zip(items, windows):
        tag = it["tag"]
        first_alias = tag.split(",")[0].strip()
        if tag.startswith(("-", "+")):
            q = r.choice(
                [
                    f"What does the {first_alias} option of {it['cmd']} do?",
                    f"What is the effect of passing {first_alias} to {it['cmd']}?",
                ]
            )
        else:
            q = f"According to the manual page of {it['cmd']}, what is {first_alias}?"
        add("man_option", win, q, first_sentences(it["desc"], 120), windows)
    # man summaries (answer from the NAME line + description)
    pages = sorted(b.man_pages, key=lambda p: stable_hash("rag", p["page"]))
    page_docs = []
    for p in pages:
        desc = man_description(p, 220)
        if n_words(desc) < 30:
            continue
        cmd = man_command(p)
        doc = f"{p['names']} - {p['summary']}\n\n{desc}"
        page_docs.append((p, cmd, doc))
    all_page_docs = [d for _, _, d in page_docs]
    for p, cmd, doc in page_docs[: n // 2]:
        q = r.choice([f"What is {cmd} used for?", f"What does {cmd} do?"])
        add("man_summary", doc, q, f"{cmd}: {p['summary']}.", all_page_docs)
    # python API (hard distractors: neighbouring entries of the same page)
    api = sorted(b.py_api_pool, key=lambda e: stable_hash("rag", e["sig"]))[:n]
    api_docs = [f"{e['sig']}\n\n{e['body']}" for e in api]
    for e, doc in zip(api, api_docs):
        hard = [f"{o['sig']}\n\n{o['body']}" for o in e["siblings"]]
        hard.sort(key=lambda t: stable_hash(e["sig"], t))
        name = e["id"]
        if r.random() < 0.75:
            q = r.choice([f"What does {name} do?", f"What is {name} in Python?", f"Describe {name} briefly."])
            add("python_api", doc, q, first_sentences(e["body"], 80), api_docs, hard)
        else:
            q = f"How would I use {name}? Answer from the documentation."
            add("python_api", doc, q, None, api_docs, hard)
    # FAQ
    faq_docs = [f"{c['q']}\n\n{c['a']}" for c in b.faq_pool]
    for c, doc in zip(b.faq_pool, faq_docs):
        ans = c["a"] if n_words(c["a"]) <= 150 else None
        add("faq", doc, c["q"], ans, faq_docs)
    # docstrings
    ds = sorted(b.doc_pool, key=lambda e: stable_hash("rag", e["name"]))[: n // 2]
    ds_docs = [
        f"{e['name']}({e['args']})\n    {e['summary']}\n\n{e['body']}"
        if e["kind"] == "function"
        else f"{e['kind']} {e['name']}\n    {e['summary']}\n\n{e['body']}"
        for e in ds
    ]
    for e, doc in zip(ds, ds_docs):
        add("python_docstring", doc, f"What does {e['name']} do?", e["summary"], ds_docs)
    # sections and info nodes: questions without answers (the trainer makes a teacher answer)
    secs = sorted(b.html_sections, key=lambda s: stable_hash("rag", s["label"], s["heading"]))[:n]
    sec_docs = [f"{s['heading']}\n\n{s['text']}" for s in secs]
    for s, doc in zip(secs, sec_docs):
        q = r.choice(
            [
                f"What does the documentation say about {s['heading']}?",
                f'Summarize the section "{s["heading"]}" of {s["title"] or "the manual"}.',
                f"Explain {s['heading']} in a few sentences, using the documentation.",
            ]
        )
        add("doc_section", doc, q, None, sec_docs)
    nodes = sorted(b.info_docs, key=lambda s: stable_hash("rag", s["manual"], s["node"]))[:n]
    node_docs = [f"{s['manual']}: {s['node']}\n\n{s['text']}" for s in nodes]
    for s, doc in zip(nodes, node_docs):
        q = r.choice(
            [
                f'What does the {s["manual"]} manual explain in "{s["node"]}"?',
                f"Using the manual, explain {s['node']} ({s['manual']}).",
                f'Summarize the node "{s["node"]}" of {s["manual"]}.',
            ]
        )
        add("info_node", doc, q, None, node_docs)
    out = []
    for rec in recs:
        texts = rec["documents"] + [rec["question"]] + ([rec["answer"]] if "answer" in rec else [])
        if b.filter.ok("rag", *texts):
            out.append(rec)
    out.sort(key=lambda x: stable_hash("ragorder", x["question"], x["documents"][0][:100]))
    return out
