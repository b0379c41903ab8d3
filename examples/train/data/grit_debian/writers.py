"""Output files: deterministic JSONL (gzip with mtime 0) and manifest.json."""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .tasks import INSTRUCTIONS, Builder
from .text import n_words

# settings that are paths on the building machine, not build parameters: left out of the manifest
_LOCAL_SETTINGS = ("output", "cache", "heldout_data")


@dataclass
class Outputs:
    """The selected records: embedding pairs per task, generative text and chats, RAG examples."""

    pairs: dict[str, list[dict]]
    text: list[dict]
    chat: list[dict]
    rag: list[dict]


def write_jsonl(path: Path, records: list[dict], gz: bool) -> dict:
    """Write `records` one JSON object a line (to `path` + `.gz` when `gz`); returns the manifest's file entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if gz:
        path = path.with_suffix(path.suffix + ".gz")
        with (
            open(path, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f,
        ):
            f.write(data)
    else:
        path.write_bytes(data)
    return {"file": path.name, "records": len(records), "bytes": len(data), "bytes_on_disk": path.stat().st_size}


def write_outputs(out: Path, o: Outputs, gz: bool) -> dict[str, dict]:
    """Write embedding/<task>, generative/{text,chat} and rag/rag under `out`; returns the manifest's file entries."""
    files = {}
    for task, recs in o.pairs.items():
        if recs:
            files[f"embedding/{task}"] = write_jsonl(out / "embedding" / f"{task}.jsonl", recs, gz)
    files["generative/text"] = write_jsonl(
        out / "generative" / "text.jsonl", [{"text": c["text"]} for c in o.text], gz
    )
    files["generative/chat"] = write_jsonl(out / "generative" / "chat.jsonl", o.chat, gz)
    files["rag/rag"] = write_jsonl(out / "rag" / "rag.jsonl", o.rag, gz)
    return files


def write_manifest(
    path: Path, b: Builder, argv: list[str] | None, pkgs: dict[str, dict], o: Outputs, files: dict, seconds: float
) -> None:
    """manifest.json: settings, packages (version, SHA-256, licences), counts, sources, filter drops and files."""
    args: argparse.Namespace = b.args
    manifest = {
        "built_with": {
            "python": sys.version.split()[0],
            "argv": sys.argv[1:] if argv is None else argv,
            "settings": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in _LOCAL_SETTINGS
            },
        },
        "packages": [{k: v for k, v in p.items() if k != "root"} for p in pkgs.values()],
        "instructions": INSTRUCTIONS,
        "counts": {
            "embedding": {t: len(r) for t, r in o.pairs.items()},
            "embedding_candidates": {t: len(v) for t, v in b.pairs.items()},
            "embedding_with_negatives": {t: sum(1 for x in r if "neg" in x) for t, r in o.pairs.items()},
            "generative_text": len(o.text),
            "generative_words": sum(n_words(c["text"]) for c in o.text),
            "chat": dict(Counter(c["source"] for c in o.chat)),
            "rag": dict(Counter(x["source"] for x in o.rag)),
            "rag_with_answer": sum(1 for x in o.rag if "answer" in x),
            "rag_documents_per_record": dict(Counter(len(x["documents"]) for x in o.rag)),
        },
        "sources": b.stats["sources"],
        "generative_bytes_by_family": b.stats.get("generative_bytes_by_family", {}),
        "dropped_by_overlap_filter": dict(sorted(b.filter.dropped.items())),
        "files": files,
        "seconds": round(seconds, 1),
    }
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
