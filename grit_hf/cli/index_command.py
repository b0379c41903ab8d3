"""`grit-hf index CORPUS --model M --out DIR [--states URL] [--quantize int8]`: embed a corpus and store its states,
data-parallel under `accelerate launch`, into an index directory that `grit-hf serve --index DIR` and
`GritRAG.from_index(DIR)` open (`grit_hf.rag.build`).

    grit-hf index ../shared/data/manpages/eval --out manpages-index
    accelerate launch --num_processes 2 -m grit_hf.cli index corpus.jsonl --out idx --states s3://bucket/idx-states

Rerun the same command after a crash: complete chunks are skipped.
"""

from __future__ import annotations

import argparse
import json
import os

__all__ = ["add_parser"]


def _storage_option(text: str) -> tuple[str, object]:
    """`KEY=VALUE` (a JSON value, else the string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _cmd_index(args: argparse.Namespace) -> int:
    from ..rag.build import build_index

    summary = build_index(
        args.corpus,
        args.out,
        model=args.model,
        states=args.states,
        quantize=args.quantize,
        vector_index=args.vector_index,
        text_field=args.text_field,
        id_field=args.id_field,
        split=args.split,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        max_length=args.max_length,
        cache_max_length=args.cache_max_length,
        cache_attention=args.cache_attention,
        device=args.device,
        dtype=args.dtype,
        storage_options=dict(args.storage_option) or None,
        show_progress_bar=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"grit-hf index: {summary}", flush=True)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `index` command."""
    parser = subparsers.add_parser(
        "index",
        help="Embed a corpus and store its states into an index directory (data-parallel under accelerate launch)",
        description="Build an index directory (manifest, FAISS index, id <-> row map, states location) that "
        "`grit-hf serve --index DIR` and GritRAG.from_index(DIR) open read-only. Under `accelerate launch` every "
        "process embeds its share; a rerun skips what is complete. Needs the 'index' extra.",
    )
    parser.add_argument("corpus", help="JSONL/JSON file or folder, retrieval folder, saved datasets folder or name")
    parser.add_argument("--out", required=True, help="the index directory (every process must be able to write it)")
    parser.add_argument("--model", default="default", help="GRIT checkpoint: a folder, a Hub name, or 'default'")
    parser.add_argument("--device", default=None, help="torch device (default: each process's own GPU, else CPU)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--states", default=None, help="where states go: a folder or an fsspec URL such as "
                        "s3://bucket/prefix (default: OUT/states)")  # fmt: skip
    parser.add_argument("--quantize", default=None, choices=["int8"], help="store states in 8 bits")
    parser.add_argument("--vector-index", default="auto", choices=["auto", "flat", "ivf", "hnsw"],
                        help="FAISS index (auto: flat up to 100,000 documents, else IVF)")  # fmt: skip
    parser.add_argument("--text-field", default="text", help="the records' text field")
    parser.add_argument("--id-field", default=None, help="the records' id field (default: content hashes)")
    parser.add_argument("--split", default="train", help="split of a dataset with several")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    parser.add_argument("--chunk-size", type=int, default=64, help="documents per unit of work (and of a resume)")
    parser.add_argument("--max-length", type=int, default=4096, help="most tokens embedded per text")
    parser.add_argument("--cache-max-length", type=int, default=None, help="most tokens of a document's states")
    parser.add_argument("--cache-attention", choices=["causal", "bidirectional"], default=None)
    parser.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE",
                        help="fsspec option of the --states URL (repeatable; default: from the environment)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_index)
    return parser
