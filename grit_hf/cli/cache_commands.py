"""`grit-hf cache upgrade DIR`: rewrite a disk key/value store's entries of the old format `grit_hf.kv/1` (no
checksums) in the current format, with checksums, so that the store reads them without `read_unverified=True`;
damaged ones (that reads refuse) are skipped and named."""

from __future__ import annotations

import argparse

__all__ = ["add_parsers"]


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cache.disk import DiskKVStore
    from ..cache.upgrade import upgrade_store

    directory = Path(args.directory)
    if not directory.is_dir():
        raise FileNotFoundError(2, "No such directory", str(directory))
    report = upgrade_store(DiskKVStore(directory))
    count = len(report.rewritten)
    print(f"grit-hf cache upgrade: {count} entr{'y' if count == 1 else 'ies'} rewritten with checksums in {directory}")
    if report.skipped:
        print(
            f"grit-hf cache upgrade: {len(report.skipped)} damaged entr{'y' if len(report.skipped) == 1 else 'ies'} "
            "of the old format skipped (left as they are; reads refuse them; delete them or recompute):"
        )
        for name, reason in report.skipped.items():
            print(f"  {name}: {reason}")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    cache = subparsers.add_parser("cache", help="Maintain a disk key/value store (--cache-dir, DiskKVStore).")
    commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    upgrade = commands.add_parser(
        "upgrade",
        help="Rewrite entries of the old format grit_hf.kv/1 (no checksums) with checksums. Run it once, on a "
        "directory you trust: whatever the entries hold now is what the checksums will vouch for.",
    )
    upgrade.add_argument("directory", help="the store's directory")
    upgrade.set_defaults(func=_cmd_upgrade)
