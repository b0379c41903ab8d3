"""The directory of a built index (`grit-hf index`, `grit_hf.rag.build_index`) and its manifest.

    DIR/manifest.json     IndexManifest: the model and its fingerprint, the settings of the embedding pass, where the
                          states are, the vector index's kind, counts; written last (no manifest: not complete)
    DIR/documents.jsonl   one line per row, in row order: {"id", "text", "cached"} (the id <-> row map)
    DIR/embeddings.npy    (rows, dim) float32, memory-mapped when opened
    DIR/vectors.faiss     the FAISS index over those rows
    DIR/parts/            what each process computed, chunk by chunk (a rerun skips complete chunks)
    DIR/states/           the states, unless `--states URL` put them elsewhere (the manifest says where)

A later process opens the directory read-only (`GritRAG.from_index`), whatever machine it runs on: paths inside it
are relative, and a states URL carries no credentials.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from transformers.utils import logging

from ..cache.objects import is_url, write_atomically

logger = logging.get_logger(__name__)

__all__ = ["IndexManifest", "INDEX_FORMAT", "MANIFEST", "DOCUMENTS", "EMBEDDINGS", "VECTORS", "PARTS", "STATES"]

INDEX_FORMAT = "grit_hf.index/1"
MANIFEST, DOCUMENTS, EMBEDDINGS, VECTORS, PARTS, STATES = (
    "manifest.json",
    "documents.jsonl",
    "embeddings.npy",
    "vectors.faiss",
    "parts",
    "states",
)


@dataclass
class IndexManifest:
    """What a built index is and how to open it (`DIR/manifest.json`).

    Attributes:
        model: the checkpoint the index was built with (a name such as `"default"` or a folder), loaded when
            `from_index` is given no model.
        fingerprint: the JSON of its `Fingerprint` (weights, config, tokenizer, dtype, template, attention); a model
            whose fingerprint differs is refused.
        weights_hash: how the fingerprint covers the weights (`"full"`).
        cache_attention: the attention of the stored states.
        max_length: most tokens embedded per text (queries of the opened index too).
        cache_max_length: most tokens of a document whose states are stored.
        states: where the states are: a URL (`s3://bucket/prefix`), an absolute path, or a path relative to the
            index directory (default `"states"`).
        documents: rows of the index.
        dim: size of the embeddings.
        vector_index: the FAISS index kind (`"flat"`, `"ivf"`, `"hnsw"`).
        nprobe: IVF lists searched per query (IVF only).
        quantize: `"int8"` if the states were written in 8 bits, else `None`.
        tokens: tokens over all documents' embedding inputs.
        state_bytes: bytes of all stored entries.
        corpus_digest: sha256 over the ids and texts in row order (the same corpus gives the same digest).
        created: when it was written (UTC, ISO 8601).
        format: `grit_hf.index/1`.
    """

    model: str
    fingerprint: str
    cache_attention: str
    max_length: int
    cache_max_length: int
    states: str
    documents: int
    dim: int
    vector_index: str
    nprobe: int | None = None
    quantize: str | None = None
    weights_hash: str = "full"
    tokens: int = 0
    state_bytes: int = 0
    corpus_digest: str = ""
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    format: str = INDEX_FORMAT

    def states_location(self, directory: str | os.PathLike) -> str:
        """The states' URL or path, a relative path resolved against the index `directory`."""
        if is_url(self.states) or os.path.isabs(self.states):
            return self.states
        return str(Path(directory) / self.states)

    def save(self, directory: str | os.PathLike) -> None:
        """Write `DIR/manifest.json` atomically (JSON, `indent=2`, sorted keys)."""
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        write_atomically(Path(directory) / MANIFEST, text.encode("utf-8"))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> IndexManifest:
        """Read `DIR/manifest.json`; a missing or foreign manifest is a clear error (unknown keys are dropped with a
        warning, as written by a newer version)."""
        path = Path(directory) / MANIFEST
        if not Path(directory).is_dir():
            raise FileNotFoundError(2, "No such index directory", str(directory))
        if not path.is_file():
            raise ValueError(
                f"{directory} is not a complete grit-hf index: it has no {MANIFEST} (build it with `grit-hf index`, "
                "or rerun that command to finish an interrupted build)."
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} cannot be read: {error}") from None
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
            got = data.get("format") if isinstance(data, dict) else data
            raise ValueError(f"{path} has the format {got!r}; this grit-hf reads {INDEX_FORMAT!r}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning(f"{path}: ignoring unknown keys {unknown} (written by a newer grit-hf?).")
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError as error:
            raise ValueError(f"{path} is incomplete: {error}") from None
