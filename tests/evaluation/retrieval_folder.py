"""A tiny retrieval folder (queries.jsonl, corpus.jsonl, qrels.tsv, task.json) for the evaluation tests and the
benchmark smoke tests."""

from __future__ import annotations

import json
from pathlib import Path

QUERIES = ["change group ownership", "list directory contents", "copy files and directories", "capital of France"]
DOCUMENTS = [
    "chgrp changes the group ownership of each file to the given group.",
    "ls lists information about the files in a directory, sorted alphabetically.",
    "cp copies files and directories from a source to a destination.",
    "Paris is the capital and largest city of France.",
    "The quick brown fox jumps over the lazy dog.",
]


def write_data(folder: Path, header: bool = True, task: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "queries.jsonl").open("w") as out:
        for i, text in enumerate(QUERIES):
            out.write(json.dumps({"id": f"q{i}", "text": text}) + "\n")
    with (folder / "corpus.jsonl").open("w") as out:
        for i, text in enumerate(DOCUMENTS):
            out.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    lines = (["query-id\tcorpus-id\tscore"] if header else []) + [f"q{i}\td{i}\t1" for i in range(len(QUERIES))]
    (folder / "qrels.tsv").write_text("\n".join(lines) + "\n")
    if task is not None:
        (folder / "task.json").write_text(json.dumps(task))
    return folder
