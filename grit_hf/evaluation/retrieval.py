"""Retrievers (a GRIT model, any sentence-transformers model, BM25) and the evaluator that runs one on a retrieval
set and computes its metrics.

Example:

```python
>>> from grit_hf.evaluation import GritRetriever, RetrievalEvaluator
>>> evaluator = RetrievalEvaluator("data/manpages/eval")
>>> evaluator(GritRetriever("default", max_length=256))["ndcg@10"]
0.30...
```

Command line: `grit-hf eval-retrieval --model default --data DIR [--bm25] [--causal] [--max-length 256]`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers.utils import logging

from ..checkpoint.loading import load_model
from ..configuration_gritlm import GritLMConfig
from ..folders.resolve import checkpoint_display_name, known_grit_checkpoint, resolve_checkpoint
from ..modeling_gritlm import GritLMPreTrainedModel
from ..records.retrieval import RetrievalData, load_retrieval_data
from ..validation import check_positive_int
from .metrics import DEFAULT_METRICS, retrieval_metrics

logger = logging.get_logger(__name__)

__all__ = ["Retriever", "GritRetriever", "SentenceTransformerRetriever", "BM25Retriever", "RetrievalEvaluator"]


class Retriever(Protocol):
    """Anything that ranks `documents` for each of `queries`: returns `(indices, scores)`, `[n_queries, top_k]`."""

    name: str

    def search(
        self,
        queries: list[str],
        documents: list[str],
        top_k: int,
        query_instruction: str = "",
        doc_instruction: str = "",
    ) -> tuple[np.ndarray, np.ndarray]: ...


def _dense_top_k(
    queries: torch.Tensor, documents: torch.Tensor, top_k: int, similarity=None, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Best `top_k` documents per query by `similarity` (default: dot product of normalised embeddings = cosine),
    `chunk_size` queries at a time; ties go to the document that comes first in the corpus."""
    top_k = min(top_k, documents.shape[0])
    indices, scores = [], []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = queries[start : start + chunk_size]
        chunk_scores = (chunk @ documents.T if similarity is None else similarity(chunk, documents)).float().cpu()
        order = torch.argsort(chunk_scores, dim=1, descending=True, stable=True)[:, :top_k]
        indices.append(order)
        scores.append(torch.gather(chunk_scores, 1, order))
    if not indices:
        return np.zeros((0, top_k), dtype=np.int64), np.zeros((0, top_k), dtype=np.float32)
    return torch.cat(indices).numpy(), torch.cat(scores).numpy()


class GritRetriever:
    """Dense retrieval with a GRIT model's `encode`: queries with the task instruction, documents with theirs (usually
    none), cosine similarity. `model` is a loaded GRIT model or a checkpoint name (folder, Hub name, `"default"`)."""

    def __init__(
        self,
        model: Any = "default",
        *,
        batch_size: int = 32,
        max_length: int = 512,
        is_causal: bool | None = None,
        device: str | None = None,
        dtype: str | torch.dtype = "auto",
        quantization: str | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, device=device, dtype=dtype, quantization=quantization)
        if not isinstance(model, GritLMPreTrainedModel):
            raise TypeError(f"`model` must be a GRIT model, a folder or 'default', got {type(model).__name__}.")
        self.model = model
        self.encode_kwargs = dict(
            batch_size=batch_size, max_length=max_length, is_causal=is_causal, show_progress_bar=show_progress_bar
        )
        attention = (
            "causal" if (is_causal if is_causal is not None else model.config.is_causal_embedding) else "bidirectional"
        )
        self.name = f"grit:{checkpoint_display_name(model.name_or_path or 'model')} ({attention})"

    def search(self, queries, documents, top_k, query_instruction="", doc_instruction=""):
        q = self.model.encode(
            queries, instruction=query_instruction, normalize=True, convert_to_tensor=True, **self.encode_kwargs
        )
        d = self.model.encode(
            documents, instruction=doc_instruction, normalize=True, convert_to_tensor=True, **self.encode_kwargs
        )
        return _dense_top_k(q, d, top_k)


def sentence_transformers_folder(name: str | os.PathLike) -> Path:
    """The folder to give `SentenceTransformer` for the checkpoint `name`: its own folder, except for a known GRIT
    model without sentence-transformers files (e.g. GritLM/GritLM-7B's layout), which a plain load would embed with
    causal attention and the wrong pooling; that one is converted once into grit-hf's cache (`grit_checkpoint_folder`)
    and its GRIT copy is used."""
    folder = resolve_checkpoint(name)
    reason = known_grit_checkpoint(folder)
    if reason is None or (folder / "modules.json").is_file():
        return folder
    from ..checkpoint.conversion import grit_checkpoint_folder

    logger.warning(
        f"{name} is a GRIT model ({reason}) without sentence-transformers files: using its grit-hf conversion, "
        "which has GRIT semantics (a plain SentenceTransformer load would be causal with other pooling)."
    )
    return grit_checkpoint_folder(folder)


class SentenceTransformerRetriever:
    """Dense retrieval with any sentence-transformers model (a folder or a loaded model). Queries get the task
    instruction as a prompt formatted by the model's `query_template` when it is a GRIT checkpoint; otherwise its own
    `query`/`document` prompts, if any. Scores use the model's similarity function."""

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        name = checkpoint_display_name(model) if isinstance(model, (str, os.PathLike)) else None
        if isinstance(model, (str, os.PathLike)):
            model = SentenceTransformer(str(sentence_transformers_folder(model)), device=device)
        if not isinstance(model, SentenceTransformer):
            raise TypeError(f"`model` must be a SentenceTransformer or a folder, got {type(model).__name__}.")
        if max_length is not None:
            model.max_seq_length = max_length
        self.model = model
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        name = name or checkpoint_display_name(model[0].auto_model.name_or_path or "model")
        self.name = f"sentence-transformers:{name}"

    def _encode(self, texts: list[str], instruction: str, prompt_name: str) -> torch.Tensor:
        config = getattr(self.model[0].auto_model, "config", None)
        kwargs: dict[str, Any] = dict(batch_size=self.batch_size, show_progress_bar=self.show_progress_bar)
        if isinstance(config, GritLMConfig):
            kwargs["prompt"] = config.format_query_prefix(instruction)
        elif prompt_name in self.model.prompts:
            kwargs["prompt_name"] = prompt_name
        return self.model.encode(texts, convert_to_tensor=True, **kwargs)

    def search(self, queries, documents, top_k, query_instruction="", doc_instruction=""):
        q = self._encode(queries, query_instruction, "query")
        d = self._encode(documents, doc_instruction, "document")
        return _dense_top_k(q, d, top_k, similarity=self.model.similarity)


class BM25Retriever:
    """Lexical retrieval with `bm25s` (Lucene BM25, k1=1.5, b=0.75, English stopwords). `stem=True` adds the English
    Snowball stemmer (needs `pip install PyStemmer`). `max_words` truncates documents to their first words
    (whitespace split) before indexing."""

    def __init__(
        self,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stem: bool = False,
        max_words: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        import bm25s  # noqa: F401  (fail early with a clear ImportError)

        if stem:
            try:
                import Stemmer  # noqa: F401
            except ImportError:
                raise ImportError("BM25 with `stem=True` needs PyStemmer: pip install PyStemmer") from None
        check_positive_int(max_words, "max_words", allow_none=True)
        self.k1, self.b, self.stem, self.max_words = k1, b, stem, max_words
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        self.show_progress_bar = show_progress_bar
        self.name = "bm25" + (" (stemmed)" if stem else "")

    def search(self, queries, documents, top_k, query_instruction="", doc_instruction=""):
        import bm25s

        stemmer = None
        if self.stem:
            import Stemmer

            stemmer = Stemmer.Stemmer("english")
        if self.max_words:
            documents = [" ".join(doc.split()[: self.max_words]) for doc in documents]
        show = self.show_progress_bar
        index = bm25s.BM25(k1=self.k1, b=self.b)
        index.index(bm25s.tokenize(documents, stopwords="en", stemmer=stemmer, show_progress=show), show_progress=show)
        query_tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=show)
        indices, scores = index.retrieve(query_tokens, k=min(top_k, len(documents)), show_progress=show)
        return np.asarray(indices), np.asarray(scores)


class RetrievalEvaluator:
    """Run a `Retriever` on a `RetrievalData` (or a data folder) and compute `metrics`. Each query retrieves `top_k`
    documents (at least the largest k of `metrics`)."""

    def __init__(
        self,
        data: RetrievalData | str | os.PathLike,
        *,
        metrics: Sequence[str] = DEFAULT_METRICS,
        top_k: int = 100,
        query_instruction: str | None = None,
    ) -> None:
        self.data = data if isinstance(data, RetrievalData) else load_retrieval_data(data)
        retrieval_metrics({}, {"q": {"d": 1}}, metrics)  # validate the metric names now
        check_positive_int(top_k, "top_k")
        self.metrics = tuple(metrics)
        self.top_k = max(top_k, *(int(metric.split("@")[1]) for metric in self.metrics))
        self.query_instruction = self.data.query_instruction if query_instruction is None else query_instruction

    @property
    def query_ids(self) -> list[str]:
        """The judged queries, in the order retrievers get them."""
        return [qid for qid in self.data.queries if qid in self.data.qrels]

    def search(self, retriever: Retriever) -> dict[str, list[str]]:
        """Ranked document ids per query id (`top_k` each)."""
        query_ids = self.query_ids
        indices, _ = retriever.search(
            [self.data.queries[qid] for qid in query_ids],
            [self.data.corpus[did] for did in self.data.corpus],
            self.top_k,
            query_instruction=self.query_instruction,
            doc_instruction=self.data.doc_instruction,
        )
        return self.rankings(indices)

    def rankings(self, indices) -> dict[str, list[str]]:
        """Document ids per query id from a `[queries, k]` array of corpus indices (in `query_ids` order)."""
        doc_ids = list(self.data.corpus)
        return {qid: [doc_ids[i] for i in row] for qid, row in zip(self.query_ids, indices)}

    def __call__(self, retriever: Retriever) -> dict[str, float]:
        return retrieval_metrics(self.search(retriever), self.data.qrels, self.metrics)
