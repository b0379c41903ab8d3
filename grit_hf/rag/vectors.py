"""`VectorIndex`: search over document embeddings by inner product (the embeddings are normalised: cosine similarity),
with FAISS (`faiss-cpu` or `faiss-gpu`, the `index` extra) when it is installed, else exact search in torch.

Kinds (`kind=`):
- `"flat"`: exact (`faiss.IndexFlatIP`); the same ranking as a matrix product. The default up to `FLAT_MAX` vectors.
- `"ivf"`: inverted lists (`faiss.IndexIVFFlat`, `nlist` = 4·√n clusters, `nprobe` = √nlist of them searched per
  query, at least 8); the default above `FLAT_MAX`.
- `"hnsw"`: a graph (`faiss.IndexHNSWFlat`, `M`=32, `efSearch`).
- `"auto"`: flat or IVF by size.

Without FAISS only `"flat"` is possible (torch); the other kinds raise an `ImportError` saying what to install.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from importlib.util import find_spec

import numpy as np
import torch

__all__ = ["VectorIndex", "VECTOR_INDEX_KINDS", "FLAT_MAX", "is_faiss_available", "choose_kind"]

VECTOR_INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
FLAT_MAX = 100_000
"""Largest corpus `kind="auto"` searches exactly: a query then reads every vector (100k × 4096 floats = 1.6 GB)."""
HNSW_M = 32


@lru_cache
def is_faiss_available() -> bool:
    """Whether `faiss` (faiss-cpu or faiss-gpu) can be imported."""
    return find_spec("faiss") is not None


def check_kind(kind: object) -> str:
    if kind not in VECTOR_INDEX_KINDS:
        raise ValueError(f"Invalid `vector_index`: {kind!r}. Valid choices are: {VECTOR_INDEX_KINDS}.")
    return kind


def choose_kind(count: int, kind: str = "auto") -> str:
    """The kind `kind` stands for with `count` vectors: `"auto"` is `"flat"` up to `FLAT_MAX`, else `"ivf"`."""
    if check_kind(kind) != "auto":
        return kind
    return "flat" if count <= FLAT_MAX else "ivf"


def _nlist(count: int) -> int:
    """IVF clusters for `count` vectors: 4·√n (FAISS's guideline), at most one per 39 training vectors."""
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def _as_matrix(vectors) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1))


class VectorIndex:
    """Top-k search by inner product over a fixed set of vectors (rows `0..n-1`).

    Build one with `VectorIndex.build(embeddings, kind)`, save it with `save(path)`, open it with `load(path)`.

    Args:
        index: a FAISS index, or a `(n, dim)` float32 tensor searched exactly in torch.
        kind: `"flat"`, `"ivf"` or `"hnsw"`.
        nprobe: IVF lists searched per query (default: √nlist, at least 8).
        ef_search: HNSW candidates per query (default 128).
    """

    def __init__(self, index, kind: str, nprobe: int | None = None, ef_search: int | None = None):
        self.index, self.kind = index, kind
        if kind == "ivf":
            index.nprobe = nprobe or min(index.nlist, max(8, math.ceil(math.sqrt(index.nlist))))
        elif kind == "hnsw":
            index.hnsw.efSearch = ef_search or 128

    @classmethod
    def build(cls, embeddings, kind: str = "auto", backend: str = "auto", **search) -> VectorIndex:
        """An index of `embeddings` `(n, dim)` (rows in order). `backend`: `"faiss"`, `"torch"` (exact only) or
        `"auto"` (FAISS if installed). `search`: `nprobe`, `ef_search`."""
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"Invalid `backend`: {backend!r}. Valid choices are: ('auto', 'faiss', 'torch').")
        matrix = _as_matrix(embeddings)
        kind = choose_kind(len(matrix), kind)
        faiss_wanted = backend == "faiss" or (backend == "auto" and (is_faiss_available() or kind != "flat"))
        if not faiss_wanted:
            if kind != "flat":
                raise ValueError(f"`backend='torch'` searches exactly (kind 'flat'), not {kind!r}.")
            return cls(torch.from_numpy(matrix), "flat")
        faiss = _import_faiss()
        dim = matrix.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 200
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, _nlist(len(matrix)), faiss.METRIC_INNER_PRODUCT)
            index.train(matrix)
        index.add(matrix)
        return cls(index, kind, **search)

    @classmethod
    def load(cls, path: str | os.PathLike, **search) -> VectorIndex:
        """Open an index written by `save` (memory-mapped where FAISS can: flat and IVF indexes)."""
        faiss = _import_faiss()
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:  # an index type FAISS cannot memory-map
            index = faiss.read_index(str(path))
        kind = "hnsw" if hasattr(index, "hnsw") else "ivf" if hasattr(index, "nprobe") else "flat"
        return cls(index, kind, **search)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to `path` (FAISS's format); a torch index is written as a FAISS flat index."""
        faiss = _import_faiss()
        index = self.index
        if isinstance(index, torch.Tensor):
            index = faiss.IndexFlatIP(index.shape[1])
            index.add(self.index.numpy())
        faiss.write_index(index, str(path))

    def __len__(self) -> int:
        return self.index.shape[0] if isinstance(self.index, torch.Tensor) else self.index.ntotal

    def search(self, query, top_k: int) -> list[tuple[int, float]]:
        """The `top_k` rows by inner product with `query` `(dim,)`, best first: `[(row, score), ...]` (fewer when the
        index holds fewer, or an approximate index finds fewer)."""
        top_k = min(top_k, len(self))
        if top_k <= 0:
            return []
        query = torch.as_tensor(query).detach().float().cpu().reshape(1, -1)
        if isinstance(self.index, torch.Tensor):
            values, rows = (self.index @ query[0]).topk(top_k)
            return list(zip(rows.tolist(), values.tolist()))
        values, rows = self.index.search(np.ascontiguousarray(query.numpy()), top_k)
        return [(int(row), float(value)) for row, value in zip(rows[0], values[0]) if row >= 0]


def _import_faiss():
    if not is_faiss_available():
        raise ImportError(
            "This vector index needs FAISS: pip install 'grit-hf[index]' (faiss-cpu), or faiss-gpu on CUDA machines."
        )
    import faiss

    return faiss
