"""Python docstrings read with `ast` (nothing is imported) into python_docstring pairs."""

from __future__ import annotations

import ast
import re
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .sources import DOCSTRING_SOURCES, SMOKE_PY_MODULES
from .tasks import Builder
from .text import alpha_ratio, clean_chars, indent, n_words, norm_ws, section_text, stable_hash

_STDLIB_SKIP = re.compile(
    r"(^|/)(test|tests|idle_test|idlelib|lib2to3|turtledemo|__phello__|site-packages|"
    r"dist-packages|ensurepip|pydoc_data|config-3[^/]*|encodings|msilib|testing|benchmarks|_[^/]*)/|"
    r"(^|/)(conftest|setup|test_[^/]*)\.py$|"
    r"(^|/)_(?!_init__\.py$)[^/]*\.py$"
)


def docstrings_of(args: tuple[str, str]) -> list[dict]:
    """Docstrings of a module (file path, module name) and of its public classes and functions."""
    path, module = args
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []

    def visit(node: ast.AST, qual: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name.startswith("_"):
                    continue
                q = f"{qual}.{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    args_txt = ""
                    if kind == "function":
                        try:
                            args_txt = ast.unparse(child.args)
                        except Exception:  # noqa: BLE001
                            args_txt = ""
                    out.append({"name": q, "kind": kind, "args": args_txt, "doc": doc})
                if isinstance(child, ast.ClassDef):
                    visit(child, q)

    mdoc = ast.get_docstring(tree, clean=True)
    if mdoc:
        out.append({"name": module, "kind": "module", "args": "", "doc": mdoc})
    visit(tree, module)
    return out


def clean_rst(text: str) -> str:
    """Sphinx roles (:class:`~a.B`, :meth:`x <y>`) -> their text."""
    text = re.sub(r":(?:[a-z]+:)?[a-z]+:`~?!?([^`<]*?)(?:\s*<[^>`]*>)?`", lambda m: m.group(1).lstrip(".~"), text)
    return text


def collect_docstrings(b: Builder, pkgs: dict[str, dict]) -> None:
    """python_docstring pairs (summary -> body) from the docstring sources; a sample of modules per package."""
    files = {}
    for pkg, root in DOCSTRING_SOURCES:
        if pkg not in pkgs:
            continue
        base = Path(pkgs[pkg]["root"]) / root
        for f in base.rglob("*.py"):
            if f.is_file() and not f.is_symlink():
                files[f.relative_to(base).as_posix()] = f
    per_top = defaultdict(list)
    for rel in sorted(files):
        per_top[rel.split("/")[0] if "/" in rel else rel].append(rel)
    chosen = []
    for rels in per_top.values():  # big packages (sympy, pandas, ...): a fixed sample of their modules
        if len(rels) > b.args.modules_per_package:
            rels = sorted(sorted(rels, key=lambda x: stable_hash("mod", x))[: b.args.modules_per_package])
        chosen += rels
    jobs = []
    for rel in sorted(chosen):
        f = files[rel]
        if _STDLIB_SKIP.search(rel):
            continue
        if b.smoke and not rel.startswith(SMOKE_PY_MODULES):
            continue
        mod = rel[:-3].replace("/", ".")
        if mod.endswith(".__init__"):
            mod = mod[: -len(".__init__")]
        jobs.append((str(f), mod))
    with ProcessPoolExecutor(b.args.workers) as ex:
        results = list(ex.map(docstrings_of, jobs, chunksize=8))
    allds = [d for r in results for d in r]
    b.stats["sources"]["python_modules_for_docstrings"] = len(jobs)
    summaries = []
    for d in allds:
        doc = clean_rst(clean_chars(d["doc"]))
        parts = re.split(r"\n\s*\n", doc, maxsplit=1)
        if len(parts) < 2:
            continue
        summ, body = norm_ws(parts[0]), parts[1].strip()
        if not (3 <= n_words(summ) <= 40) or n_words(body) < 12:
            continue
        lines = body.splitlines()
        if sum(1 for ln in lines if ln.strip().startswith((">>>", "..."))) > 0.4 * max(1, len(lines)):
            continue
        # paragraphs: reflow prose, keep indented blocks
        paras = []
        for p in re.split(r"\n\s*\n", body):
            pl = p.split("\n")
            if (
                any(indent(x) >= 2 for x in pl)
                or alpha_ratio(p) < 0.45
                or re.search(r"^\s*[-=~^]{3,}\s*$", p, re.M)
                or re.search(r"^\s*[-*:]\s", p, re.M)
            ):
                paras.append(p.rstrip())
            else:
                paras.append(norm_ws(p))
        body_t = section_text(paras, 300)
        summaries.append({**d, "summary": summ, "body": body_t})
    cnt = Counter(s["summary"].lower() for s in summaries)
    by_mod = defaultdict(list)
    for s in summaries:
        if cnt[s["summary"].lower()] == 1:
            by_mod[s["name"].split(".")[0]].append(s)
    for items in by_mod.values():
        if len(items) > b.args.docstrings_per_package:
            items = sorted(items, key=lambda x: stable_hash("ds", x["name"]))[: b.args.docstrings_per_package]
        for s in items:
            negs = [o["body"] for o in items if o is not s]
            negs.sort(key=lambda t: stable_hash(s["name"], t))
            if b.add_pair("python_docstring", s["summary"], s["body"], negs[:1], key=s["name"]):
                b.doc_pool.append(s)
