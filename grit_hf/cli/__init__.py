"""The `grit-hf` command line. Each command lives in the module of its group and adds its parser with
`add_parser(subparsers)`; heavy imports happen inside the command functions so that `grit-hf --help` stays fast.

| command | module |
|---|---|
| `convert`, `embed`, `generate`, `demo` | `grit_hf.cli.model_commands` |
| `eval-retrieval`, `eval-rag` | `grit_hf.cli.evaluate` |
| `train` | `grit_hf.cli.train` (a TRL-style script; `accelerate launch -m grit_hf.train` launches it) |
| `serve` | `grit_hf.cli.serve` (the OpenAI-compatible server of `grit_hf.serve`) |
| `cache upgrade` | `grit_hf.cli.cache_commands` (disk key/value stores) |
| `index` | `grit_hf.cli.index_command` (an index directory for `serve --index`; data-parallel under accelerate) |
"""

from __future__ import annotations

import argparse
import sys
import time

from . import cache_commands, evaluate, index_command, model_commands, serve, train

__all__ = ["main", "make_parser"]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grit-hf", description="GRIT models: embed, generate, RAG with caching.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_commands.add_parsers(subparsers)
    evaluate.add_parsers(subparsers)
    train.add_parser(subparsers)
    serve.add_parser(subparsers)
    cache_commands.add_parsers(subparsers)
    index_command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_unknown_args", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown_args = unknown
    start = time.perf_counter()
    try:
        code = args.func(args)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:  # a path given on the command line
        raise SystemExit(f"grit-hf {args.command}: {error.strerror}: {error.filename}") from None
    if args.command not in ("demo", "serve"):
        print(f"[grit-hf {args.command}] done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
