"""`VectorIndex` and the table's ranking through it: FAISS's flat index ranks exactly as the torch matrix product of
today's table (the reference), on small corpora and on the default kinds; IVF and HNSW find the exact neighbours on
clustered data; an index saved and opened again searches the same."""

from __future__ import annotations

import pytest
import torch

from grit_hf.rag.documents import DocumentTable
from grit_hf.rag.vectors import FLAT_MAX, VectorIndex, choose_kind

pytest.importorskip("faiss")


def _normalised(count: int, dim: int = 32, seed: int = 0, clusters: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(count, dim, generator=generator)
    if clusters:  # points around a few centres, as embeddings of related documents are
        centres = torch.randn(clusters, dim, generator=generator) * 4
        vectors = centres[torch.arange(count) % clusters] + vectors
    return torch.nn.functional.normalize(vectors, dim=-1)


def _table(embeddings: torch.Tensor, backend: str) -> DocumentTable:
    table = DocumentTable(embeddings.shape[1])
    table.vector_backend = backend
    new = {f"d{i}": f"document number {i}" for i in range(len(embeddings))}
    table.update(new, embeddings, [False] * len(new))
    return table


@pytest.mark.parametrize("count", [1, 7, 300])
def test_the_table_ranks_with_faiss_exactly_as_with_torch(count):
    embeddings, queries = _normalised(count, seed=count), _normalised(20, seed=99)
    exact, faiss_table = _table(embeddings, "torch"), _table(embeddings, "faiss")
    assert DocumentTable.vector_backend == "auto"
    for query in queries:
        reference, found = exact.rank(query, 10), faiss_table.rank(query, 10)
        assert [doc_id for doc_id, _ in found] == [doc_id for doc_id, _ in reference]
        torch.testing.assert_close([s for _, s in found], [s for _, s in reference], rtol=0, atol=1e-6)
    faiss_table.remove(["d0"])  # a change rebuilds the index at the next search
    assert "d0" not in [doc_id for doc_id, _ in faiss_table.rank(embeddings[0], count)]


def test_ivf_and_hnsw_find_the_exact_neighbours_on_clustered_data(tmp_path):
    embeddings, queries = _normalised(4000, clusters=20), _normalised(30, seed=5, clusters=20)
    exact = VectorIndex.build(embeddings, "flat", backend="torch")
    for kind in ("ivf", "hnsw"):
        index = VectorIndex.build(embeddings, kind)
        assert index.kind == kind and len(index) == 4000
        recall = sum(
            len({r for r, _ in index.search(q, 10)} & {r for r, _ in exact.search(q, 10)}) for q in queries
        ) / (10 * len(queries))
        assert recall >= 0.9, (kind, recall)
        index.save(tmp_path / f"{kind}.faiss")
        opened = VectorIndex.load(tmp_path / f"{kind}.faiss")
        assert opened.kind == kind and all(opened.search(q, 10) == index.search(q, 10) for q in queries)


def test_a_flat_index_saved_and_opened_searches_the_same(tmp_path):
    embeddings = _normalised(50)
    for backend in ("torch", "faiss"):
        VectorIndex.build(embeddings, "flat", backend=backend).save(tmp_path / f"{backend}.faiss")
    exact = VectorIndex.build(embeddings, "flat", backend="torch")
    for backend in ("torch", "faiss"):
        opened = VectorIndex.load(tmp_path / f"{backend}.faiss")
        assert opened.kind == "flat"
        for query in _normalised(5, seed=1):
            assert [r for r, _ in opened.search(query, 8)] == [r for r, _ in exact.search(query, 8)]
    assert VectorIndex.build(embeddings, "flat").search(embeddings[0], 0) == []


def test_kinds_are_chosen_by_size_and_checked():
    assert choose_kind(FLAT_MAX) == "flat" and choose_kind(FLAT_MAX + 1) == "ivf" and choose_kind(5, "hnsw") == "hnsw"
    with pytest.raises(ValueError, match="Invalid `vector_index`: 'annoy'"):
        choose_kind(5, "annoy")
    with pytest.raises(ValueError, match="`backend='torch'` searches exactly"):
        VectorIndex.build(_normalised(5), "ivf", backend="torch")
    with pytest.raises(ValueError, match="Invalid `backend`"):
        VectorIndex.build(_normalised(5), "flat", backend="numpy")
