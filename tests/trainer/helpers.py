"""Shared data of the trainer tests: tiny embedding and generative records."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["TOPICS", "INSTRUCTION", "write_jsonl", "embedding_records", "generative_records"]

TOPICS = [
    "The capital of France is Paris, a city on the Seine.",
    "Berlin is the capital of Germany and has many museums.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "The quick brown fox jumps over the lazy dog.",
    "cp copies files and directories to a destination.",
    "ls lists the contents of a directory.",
    "chgrp changes the group ownership of files.",
    "Mount attaches a filesystem to the directory tree.",
]
INSTRUCTION = "Given a summary, retrieve the passage"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def embedding_records(n: int = 16) -> list[dict]:
    records = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        records.append(
            {
                "query": [INSTRUCTION, f"{topic.split()[0]} {i}"],
                "pos": [topic],
                "neg": [TOPICS[(i + 3) % len(TOPICS)], TOPICS[(i + 5) % len(TOPICS)]],
                "source": "a" if i % 2 else "b",
            }
        )
    return records


def generative_records(n: int = 16) -> list[dict]:
    records = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        if i % 3 == 0:
            records.append({"text": [f"Tell me about {topic.split()[1]}", topic]})
        elif i % 3 == 1:
            records.append(
                {
                    "messages": [
                        {"role": "user", "content": "Say it"},
                        {"role": "assistant", "content": topic * (1 + i % 2)},
                    ]
                }
            )
        else:
            records.append({"prompt": f"Topic {i}?", "completion": topic})
    return records
