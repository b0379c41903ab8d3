"""Offline GRIT training data from Debian 12 "bookworm" (main) documentation packages; CLI: ../build_data.py.

Modules: sources (pinned packages, what is read), packages (download, unpack, licences), text (helpers), filters
(held-out data), tasks (instructions, Builder, pair selection), manpages, info, html_parser, html_docs, docstrings
(the readers), generative, rag (derived outputs), writers (JSONL, manifest), pipeline (the build).
"""
