"""`open_index` (`GritRAG.from_index`): a `GritRAG` over an index built by `grit-hf index` (`grit_hf.rag.build`).

What is shared and what is not, between the processes (replicas) that open one index:

- shared, read-only: the documents (ids, texts), their embeddings and FAISS index (the index directory), and their
  states (the states location: a folder or an object store). Nothing opened here ever writes to them.
- per process: documents added at run time (`add_documents`, the server's `/v1/documents` and `/v1/embeddings`), with
  their states in the process's own store (`store=`, default in memory), and states recomputed here because a shared
  entry was damaged. Another replica does not see them.

The model must be the one the index was built with: its fingerprint (weights, config, tokenizer, dtype, document
template, cache attention) is compared with the manifest's, and any difference is refused.
"""

from __future__ import annotations

import os
from typing import Any

from ..cache.disk import DiskKVStore
from ..cache.fingerprint import Fingerprint, FingerprintMismatchError
from ..cache.layered import LayeredKVStore
from ..cache.store import KVStore, MemoryKVStore
from .layers import LayeredTable, StoredTable
from .manifest import IndexManifest

__all__ = ["open_index"]


def open_index(
    cls,
    directory: str | os.PathLike,
    model: Any = None,
    store: KVStore | None = None,
    storage_options: dict[str, Any] | None = None,
    nprobe: int | None = None,
    device: str | None = None,
    memory_bytes: int = 0,
    **kwargs,
):
    """Open the index in `directory` read-only (see `grit_hf.rag.opening` for what is shared).

    Args:
        directory: a directory written by `grit-hf index` / `build_index`.
        model: a loaded `GritLMForCausalLM`, a checkpoint name or folder, or `None`: the manifest's model, loaded
            in the dtype the index was built in (on `device`).
        store: this process's store, for documents added here and recomputed states (default: an unbounded
            `MemoryKVStore`).
        storage_options: fsspec options for the states location (default: from the environment).
        nprobe: IVF lists searched per query (default: the manifest's).
        device: where a model loaded here goes (default: CUDA if available).
        memory_bytes: byte budget of an LRU of shared states read by this process (0: every use reads them again).
        **kwargs: other `GritRAG` arguments (`decode_cache`, `batch_decoding`, `recompute`, ...). The embedding
            settings default to the manifest's (arguments of `None` are ignored).

    Raises:
        FingerprintMismatchError: the model is not the setup the index was built with.
        ValueError: `directory` holds no complete index.

    Example:

    ```python
    >>> rag = GritRAG.from_index("manpages-index")      # the model recorded in the manifest
    >>> rag.search("change the group of a file", top_k=1)
    [('...', 0.83)]
    ```
    """
    from ..checkpoint.loading import load_model

    manifest = IndexManifest.load(directory)
    stored = Fingerprint.from_json(manifest.fingerprint)
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_model(model or manifest.model, device=device, dtype=stored.dtype.removeprefix("torch."))
    location = manifest.states_location(directory)
    base = DiskKVStore(location, memory_bytes=memory_bytes, storage_options=storage_options)
    settings = dict(
        cache_attention=manifest.cache_attention,
        max_length=manifest.max_length,
        cache_max_length=manifest.cache_max_length,
        weights_hash=manifest.weights_hash,
    )
    settings.update({key: value for key, value in kwargs.items() if value is not None})
    rag = cls(model, store=LayeredKVStore(base, store if store is not None else MemoryKVStore()), **settings)
    if not stored.matches(rag.fingerprint):
        raise FingerprintMismatchError(
            f"The index {directory} was built by another model setup ({stored.model}) than the one given "
            f"({rag.fingerprint.model}): {'; '.join(rag.fingerprint.differences(stored))}. Open it with the model it "
            "was built with (leave `model` out to load it), or rebuild it with `grit-hf index`."
        )
    rag.documents = LayeredTable(StoredTable.open(directory, manifest, nprobe))
    return rag
