"""The build: fetch the packages, read every source into one Builder, select and write the outputs."""

from __future__ import annotations

import argparse
import time

from .docstrings import collect_docstrings
from .generative import build_chat, build_generative
from .html_docs import collect_html
from .info import collect_info
from .manpages import collect_man
from .packages import fetch_all
from .rag import build_rag
from .sources import PACKAGES, SMOKE_PACKAGES
from .tasks import Builder, collect_faq
from .text import log
from .writers import Outputs, write_manifest, write_outputs


def run(args: argparse.Namespace, argv: list[str] | None = None) -> None:
    """Build the data set into `args.output` (settings as parsed by build_data.py; `argv` goes to the manifest)."""
    t0 = time.time()
    pkgs = fetch_all(SMOKE_PACKAGES if args.smoke else list(PACKAGES), args.cache)
    log(f"fetched in {time.time() - t0:.0f}s")
    b = Builder(args)
    collect_man(b, pkgs)
    log(f"man done ({time.time() - t0:.0f}s)")
    collect_info(b, pkgs)
    log(f"info done ({time.time() - t0:.0f}s)")
    collect_html(b, pkgs)
    log(f"html done ({time.time() - t0:.0f}s)")
    collect_faq(b)
    collect_docstrings(b, pkgs)
    log(f"docstrings done ({time.time() - t0:.0f}s)")
    cap = args.limit or None  # --limit also caps the generative text, chats and RAG records
    outputs = Outputs(
        pairs=b.select_pairs(), text=build_generative(b)[:cap], chat=build_chat(b)[:cap], rag=build_rag(b)[:cap]
    )
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    files = write_outputs(out, outputs, args.gzip)
    write_manifest(out / "manifest.json", b, argv, pkgs, outputs, files, time.time() - t0)
    total = sum(f["bytes_on_disk"] for f in files.values())
    log(f"done in {time.time() - t0:.0f}s: {total / 1e6:.1f} MB on disk in {out}")
    for k, f in files.items():
        log(f"  {k}: {f['records']} records, {f['bytes'] / 1e6:.2f} MB ({f['bytes_on_disk'] / 1e6:.2f} MB on disk)")
