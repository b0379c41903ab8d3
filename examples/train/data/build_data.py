#!/usr/bin/env python3
"""Build offline GRIT training data from Debian (bookworm, main) documentation packages.

Downloads pinned .deb packages with `apt-get download` (the only network access), unpacks them with `dpkg-deb -x`,
renders man pages with `groff`, reads GNU Info manuals, Sphinx/DocBook/other HTML manuals and Python docstrings
(with `ast`, nothing is imported), and writes:

- embedding/<task>.jsonl[.gz]  {"query": [instruction, text], "pos": [["", doc]], "neg": [["", doc], ...], "source"}
- generative/text.jsonl[.gz]   {"text": str}            documentation prose, 100-400 words a record
- generative/chat.jsonl[.gz]   {"messages": [user, assistant]}   Q/A built from FAQs, man pages and API docs
- rag/rag.jsonl[.gz]           {"documents": [str, ...], "question": str, "answer": str (optional), "source": str}
- manifest.json                packages (version, sha256, licence), counts, sizes, filters, settings

Held-out data (--heldout-data, default $GRIT_HF_DATA, else ../shared/data next to the repository) is respected:
every man page of manpages/eval (by page name, in any package) is skipped entirely; pages of manpages/train are not
reused for the summary -> description task; any record that shares an 8-word shingle with lmtext/passages.jsonl or
with the eval man-page documents is dropped (FOLDOC and WordNet are not used at all).

Standard library only (Python >= 3.11); needs apt-get, dpkg-deb and groff (groff-base) on the PATH, Debian bookworm
package lists (`apt-get update`). Deterministic: same packages + same flags -> byte-identical output. The code is in
the grit_debian package next to this file.

    python build_data.py --output OUT                 # full build (~10 min on 2 cores, ~180 MB download, cached)
    python build_data.py --output OUT --smoke         # tiny build (< 1 min) for tests
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # grit_debian, also when this file is imported

from grit_debian.filters import heldout_problem  # noqa: E402
from grit_debian.pipeline import run  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]


def default_heldout_data() -> Path:
    """$GRIT_HF_DATA, else ../shared/data relative to the repository root."""
    env = os.environ.get("GRIT_HF_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with the held-out folder checked and the --smoke / --limit caps applied."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("GRIT_DATA_CACHE", "/tmp/grit_traindata_cache")),
        help="where .deb files are downloaded and unpacked (reused across runs)",
    )
    ap.add_argument(
        "--heldout-data",
        type=Path,
        default=None,
        help="folder with manpages/eval, manpages/train and lmtext/passages.jsonl, kept out of the data "
        "(default: $GRIT_HF_DATA, else ../shared/data relative to the repository root)",
    )
    ap.add_argument("--smoke", action="store_true", help="a few small packages and small caps (< 1 min)")
    ap.add_argument("--limit", type=int, default=None, help="cap every task / output at this many records")
    ap.add_argument("--no-gzip", dest="gzip", action="store_false", help="write plain .jsonl instead of .jsonl.gz")
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-pairs-per-task", type=int, default=7000)
    ap.add_argument("--max-negs", type=int, default=2, help="hard negatives kept per embedding pair")
    ap.add_argument("--man-pages-per-package", type=int, default=450)
    ap.add_argument("--items-per-page", type=int, default=25)
    ap.add_argument(
        "--docstrings-per-package",
        type=int,
        default=1200,
        help="cap per top-level Python package (stdlib modules count one by one)",
    )
    ap.add_argument("--modules-per-package", type=int, default=250, help="Python modules read per top-level package")
    ap.add_argument("--gen-mb", type=float, default=12.0, help="generative text budget (uncompressed MB)")
    ap.add_argument("--gen-family-share", type=float, default=0.2, help="max share of one source family")
    ap.add_argument("--chat-per-kind", type=int, default=1500)
    ap.add_argument("--rag-per-kind", type=int, default=2600)
    args = ap.parse_args(argv)
    if args.heldout_data is None:
        args.heldout_data = default_heldout_data()
    problem = heldout_problem(args.heldout_data)
    if problem:
        ap.error(f"{problem}; pass --heldout-data DIR or set GRIT_HF_DATA")
    if args.smoke:
        args.man_pages_per_package = min(args.man_pages_per_package, 40)
        args.max_pairs_per_task = min(args.max_pairs_per_task, 150)
        args.gen_mb = min(args.gen_mb, 0.3)
        args.gen_family_share = 0.5
        args.chat_per_kind = min(args.chat_per_kind, 40)
        args.rag_per_kind = min(args.rag_per_kind, 60)
    if args.limit:
        args.max_pairs_per_task = min(args.max_pairs_per_task, args.limit)
        args.chat_per_kind = min(args.chat_per_kind, args.limit)
        args.rag_per_kind = min(args.rag_per_kind, args.limit)
    return args


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv), argv)


if __name__ == "__main__":
    main()
