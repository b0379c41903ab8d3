"""`build_index`: embed a corpus and store its states, data-parallel over the processes of `accelerate launch` (or
`torchrun`), then build its FAISS index: the directory that `GritRAG.from_index` and `grit-hf serve --index` open.

Every process reads the corpus, takes its chunks (`grit_hf.rag.corpus`), and for each one embeds it, writes each
document's states to the store (one entry per document id) and then the chunk's part file (its embeddings and
counts: the proof that the chunk is complete). When all processes are done (one barrier), the main process joins the
parts in corpus order, builds the vector index and writes the manifest last. A rerun after a crash or SIGKILL skips the
complete chunks and recomputes the others; entries are keyed by id, so nothing is stored twice.

The directory must be one that every process can write (one machine, or a shared filesystem across nodes); the
states may be anywhere `DiskKVStore` reaches (a local or NFS folder, `s3://...`).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers.utils import logging

from ..cache.disk import DiskKVStore
from ..cache.fingerprint import Fingerprint
from ..cache.objects import entry_bytes, is_url, write_atomically
from ..cache.quantization import check_quantize
from ..validation import check_positive_int
from .corpus import Chunk, Corpus, read_corpus
from .manifest import DOCUMENTS, EMBEDDINGS, MANIFEST, PARTS, STATES, VECTORS, IndexManifest
from .vectors import VectorIndex, check_kind, choose_kind

logger = logging.get_logger(__name__)

__all__ = ["build_index", "IndexSummary"]

PART_FORMAT = "grit_hf.index-part/1"


@dataclass
class IndexSummary:
    """What a build did. `computed` documents were embedded by this run, `skipped` were in chunks complete before."""

    directory: str
    states: str
    documents: int
    computed: int
    skipped: int
    tokens: int
    state_bytes: int
    seconds: float
    processes: int

    def __str__(self) -> str:
        rate = self.computed / self.seconds if self.seconds else 0.0
        return (
            f"{self.documents} documents ({self.computed} embedded now, {self.skipped} complete before), "
            f"{self.tokens} tokens, {self.state_bytes / 2**20:.1f} MiB of states ({self.states}), "
            f"{self.seconds:.1f} s on {self.processes} process(es) ({rate:.2f} documents/s) -> {self.directory}"
        )


def _process_state():
    """accelerate's `PartialState` (rank, world size, device, barrier), or `None` in a lone process without it."""
    if find_spec("accelerate") is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ImportError("Indexing with several processes needs accelerate: pip install 'grit-hf[index]'.")
        return None
    from accelerate import PartialState

    # a long barrier timeout: the main process waits there for the slowest process's last chunk
    return PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=24))


def _load(model: Any, device: str | None, dtype: str) -> tuple[Any, str]:
    """`(the model, the name the manifest records)`: a name or folder is loaded; a loaded model is used as it is."""
    if isinstance(model, (str, os.PathLike)):
        from ..checkpoint.loading import load_model

        name = os.path.abspath(model) if os.path.isdir(model) else str(model)
        return load_model(model, device=device, dtype=dtype), name
    if not hasattr(model, "encode") or not hasattr(model, "tokenizer"):
        raise TypeError(
            f"`model` must be a checkpoint name or folder, or a GritLMForCausalLM, got {type(model).__name__}."
        )
    return model, str(getattr(model, "name_or_path", "") or type(model).__name__)


def _part_path(directory: Path, chunk: Chunk) -> Path:
    return directory / PARTS / f"{chunk.name}.safetensors"


def _read_part(path: Path, corpus: Corpus, chunk: Chunk, fingerprint: Fingerprint, tensors: bool = False):
    """The part file of `chunk` (its metadata, and with `tensors` its tensors), or `None` if it is not written yet.
    A part of another model, or of other documents, is a `ValueError`: the directory belongs to another build."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
        if (
            metadata.get("format") != PART_FORMAT
            or json.loads(metadata["ids"]) != corpus.ids[chunk.start : chunk.stop]
        ):
            raise ValueError(f"{path} is not the part of these documents: remove it and rerun.")
        stored = Fingerprint.from_json(metadata["fingerprint"])
        if not stored.matches(fingerprint):
            raise ValueError(
                f"{path} was computed by another model setup ({'; '.join(fingerprint.differences(stored))}): index "
                "into another directory, or delete this one."
            )
        return {name: handle.get_tensor(name) for name in handle.keys()} if tensors else metadata


def _embed_chunk(rag, store: DiskKVStore, corpus: Corpus, chunk: Chunk, path: Path, rank: int) -> int:
    """Embed `chunk`, store each document's states, then write its part; returns its tokens."""
    start = time.perf_counter()
    ids, texts = corpus.ids[chunk.start : chunk.stop], corpus.texts[chunk.start : chunk.stop]
    embeddings, parts = rag.embedding_pass.run(texts, "", states=True, progress=False)
    tokens, sizes, cached = [], [], []
    for doc_id, part in zip(ids, parts):
        cached.append(not isinstance(part, list))  # a list: longer than cache_max_length, re-read as text
        if cached[-1]:
            store.put(doc_id, part)
        else:
            store.delete(doc_id)
        tokens.append(part.num_tokens if cached[-1] else len(part))
        sizes.append((store.size(doc_id) or 0) if cached[-1] else 0)
    tensors = {
        "embeddings": embeddings.float().cpu().contiguous(),
        "tokens": torch.tensor(tokens, dtype=torch.long),
        "state_bytes": torch.tensor(sizes, dtype=torch.long),
        "cached": torch.tensor(cached, dtype=torch.bool),
    }
    metadata = {
        "format": PART_FORMAT,
        "ids": json.dumps(ids),
        "fingerprint": rag.fingerprint.to_json(),
        "rank": str(rank),
        "seconds": f"{time.perf_counter() - start:.3f}",
    }
    write_atomically(path, entry_bytes(tensors, metadata))
    return sum(tokens)


def build_index(
    corpus: Any,
    output: str | os.PathLike,
    model: Any = "default",
    states: str | os.PathLike | None = None,
    quantize: str | None = None,
    vector_index: str = "auto",
    text_field: str = "text",
    id_field: str | None = None,
    split: str = "train",
    batch_size: int = 8,
    chunk_size: int = 64,
    max_length: int = 4096,
    cache_max_length: int | None = None,
    cache_attention: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
    storage_options: dict[str, Any] | None = None,
    show_progress_bar: bool | None = None,
) -> IndexSummary:
    """Build (or finish building) the index of `corpus` in the directory `output` (see the module docstring).

    Run it in every process of a launch (`accelerate launch -m grit_hf.cli index ...`, or a script calling it); alone,
    it is one process.

    Args:
        corpus: JSONL/JSON file or folder, retrieval folder, saved `datasets` folder, dataset name, `datasets.Dataset`,
            or a list of texts or records (`grit_hf.rag.corpus.read_corpus`).
        output: the index directory (created; written by every process).
        model: a checkpoint name or folder (loaded on this process's device), or a loaded `GritLMForCausalLM`.
        states: where the states go: a folder (relative to the current directory) or an fsspec URL
            (`s3://bucket/prefix`; its bucket must exist). Default: `output/states`, recorded relative to `output`.
        quantize: `"int8"` stores states in 8 bits (`grit_hf.cache.quantization`); `None` as computed.
        vector_index: FAISS index kind: `"auto"` (flat up to 100,000 documents, else IVF), `"flat"`, `"ivf"`, `"hnsw"`.
        text_field, id_field, split: how records are read (ids default to content hashes).
        batch_size: texts per forward pass. chunk_size: documents per unit of work (and of loss on a crash).
        max_length, cache_max_length, cache_attention: as for `GritRAG` (recorded; the opened index uses them).
        device, dtype: for loading `model` (under a launch on GPUs, each process's own GPU).
        storage_options: fsspec options of a `states` URL (default: from the environment).
        show_progress_bar: a tqdm bar per process; `None` shows them when the logger is at INFO or DEBUG.

    Returns:
        An `IndexSummary` (on every process, once the index is complete).

    Example:

    ```python
    >>> summary = build_index("../shared/data/manpages/eval", "manpages-index", id_field="id")
    >>> summary.documents, GritRAG.from_index("manpages-index").search("change file group", top_k=1)[0][0]
    (1000, 'eval-d00000')
    ```
    """
    from .gritrag import GritRAG

    started = time.perf_counter()
    quantize = check_quantize(quantize)
    check_kind(vector_index)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(chunk_size, "chunk_size")
    if not isinstance(output, (str, os.PathLike)) or not str(output).strip():
        raise TypeError(f"`output` must name a directory, got {output!r}.")
    state = _process_state()
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    if device is None and state is not None and state.num_processes > 1:
        device = "cpu" if state.device.type == "cpu" else str(state.device)
    directory = Path(output)
    (directory / PARTS).mkdir(parents=True, exist_ok=True)
    if states is None:
        states = STATES  # inside the index directory, recorded relative to it: the directory can move
        location = str(directory / STATES)
    else:  # a URL, or a path (relative to the current directory)
        states = str(states) if is_url(states) else os.path.abspath(str(states).removeprefix("file://"))
        location = states
    documents = read_corpus(corpus, text_field, id_field, split)
    model, model_name = _load(model, device, dtype)
    store = DiskKVStore(location, quantize=quantize, storage_options=storage_options)
    rag = GritRAG(
        model,
        cache_attention=cache_attention,
        store=store,
        max_length=max_length,
        cache_max_length=cache_max_length,
        batch_size=batch_size,
        weights_hash="full",
    )
    digest = documents.digest()
    done = _finished(directory, rag.fingerprint, digest, rank)
    if done is not None:
        return _summary(done, directory, 0, time.perf_counter() - started, world)

    chunks = documents.chunks(chunk_size)
    mine = chunks[rank::world]
    show = logger.getEffectiveLevel() <= 20 if show_progress_bar is None else show_progress_bar
    bar = tqdm(total=sum(c.stop - c.start for c in mine), desc=f"grit-hf index [{rank + 1}/{world}]", unit="doc",
               position=rank, disable=not show, dynamic_ncols=True)  # fmt: skip
    computed = tokens = 0
    for chunk in mine:
        path = _part_path(directory, chunk)
        if _read_part(path, documents, chunk, rag.fingerprint) is None:
            tokens += _embed_chunk(rag, store, documents, chunk, path, rank)
            computed += chunk.stop - chunk.start
        bar.update(chunk.stop - chunk.start)
    bar.close()
    elapsed = time.perf_counter() - started
    logger.info(f"Process {rank + 1}/{world}: {computed} documents, {tokens} tokens embedded in {elapsed:.1f} s.")
    computed_all = _all_sum(state, computed)
    if rank == 0:
        settings = dict(model=model_name, states=states, vector_index=vector_index, quantize=quantize)
        _assemble(directory, documents, chunks, rag, settings, digest)
        store.cleanup()  # temporary files of writes that a crash interrupted (every process is past its writes)
        for leftover in (directory / PARTS).glob(".tmp-*"):
            leftover.unlink(missing_ok=True)
    if state is not None:
        state.wait_for_everyone()
    return _summary(IndexManifest.load(directory), directory, computed_all, time.perf_counter() - started, world)


def _finished(directory: Path, fingerprint: Fingerprint, digest: str, rank: int) -> IndexManifest | None:
    """The manifest if `directory` already holds the index of this corpus by this setup; a stale manifest (another
    corpus) is removed by the main process, so that nothing opens the directory half rebuilt."""
    if not (directory / MANIFEST).is_file():
        return None
    manifest = IndexManifest.load(directory)
    stored = Fingerprint.from_json(manifest.fingerprint)
    if not stored.matches(fingerprint):
        raise ValueError(
            f"{directory} holds an index built by another model setup ({'; '.join(fingerprint.differences(stored))}): "
            "index into another directory, or delete this one."
        )
    if manifest.corpus_digest == digest:
        return manifest
    if rank == 0:
        (directory / MANIFEST).unlink(missing_ok=True)
    return None


def _all_sum(state, value: int) -> int:
    """The sum of `value` over the processes (a gather), or `value` alone."""
    if state is None or state.num_processes == 1:
        return value
    from accelerate.utils import gather_object

    return sum(gather_object([value]))


def _assemble(directory: Path, corpus: Corpus, chunks: list[Chunk], rag, settings: dict, digest: str) -> None:
    """Join the parts in corpus order into the index files, build the vector index, write the manifest last."""
    dim = rag.model.config.text_config.hidden_size
    embeddings_path = directory / f".tmp-{EMBEDDINGS}"
    embeddings = np.lib.format.open_memmap(embeddings_path, mode="w+", dtype=np.float32, shape=(len(corpus), dim))
    tokens = state_bytes = 0
    documents_path = directory / f".tmp-{DOCUMENTS}"
    with open(documents_path, "w", encoding="utf-8") as rows:
        for chunk in chunks:
            part = _read_part(_part_path(directory, chunk), corpus, chunk, rag.fingerprint, tensors=True)
            if part is None:
                raise RuntimeError(f"The chunk {chunk.name} was not computed: a process failed; rerun to finish.")
            embeddings[chunk.start : chunk.stop] = part["embeddings"].numpy()
            tokens += int(part["tokens"].sum())
            state_bytes += int(part["state_bytes"].sum())
            for offset, cached in enumerate(part["cached"].tolist()):
                row = chunk.start + offset
                rows.write(json.dumps({"id": corpus.ids[row], "text": corpus.texts[row], "cached": cached}) + "\n")
    embeddings.flush()
    kind = choose_kind(len(corpus), settings["vector_index"])
    vectors = VectorIndex.build(embeddings, kind, backend="faiss")
    vectors.save(directory / f".tmp-{VECTORS}")
    del embeddings
    for name in (DOCUMENTS, EMBEDDINGS, VECTORS):
        os.replace(directory / f".tmp-{name}", directory / name)
    embedding_pass = rag.embedding_pass
    IndexManifest(
        model=settings["model"],
        fingerprint=rag.fingerprint.to_json(),
        cache_attention=rag.cache_attention,
        max_length=embedding_pass.max_length,
        cache_max_length=embedding_pass.cache_max_length,
        states=settings["states"],
        documents=len(corpus),
        dim=dim,
        vector_index=kind,
        nprobe=getattr(vectors.index, "nprobe", None),
        quantize=settings["quantize"],
        tokens=tokens,
        state_bytes=state_bytes,
        corpus_digest=digest,
    ).save(directory)


def _summary(manifest: IndexManifest, directory: Path, computed: int, seconds: float, world: int) -> IndexSummary:
    return IndexSummary(
        directory=str(directory),
        states=manifest.states,
        documents=manifest.documents,
        computed=computed,
        skipped=manifest.documents - computed,
        tokens=manifest.tokens,
        state_bytes=manifest.state_bytes,
        seconds=seconds,
        processes=world,
    )
