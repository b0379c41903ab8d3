"""`GritLMRerank`: a LangChain document compressor that reranks retrieved documents with the same GRIT model that
embedded them, reading each from the key/value states its embedding pass cached (`grit_hf.rag.rerank`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from langchain_core.callbacks import Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from pydantic import Field

from grit_hf.rag.integration import UsesSharedGrit
from grit_hf.rag.rerank import Reranker
from grit_hf.validation import check_text

__all__ = ["GritLMRerank"]


class GritLMRerank(UsesSharedGrit, BaseDocumentCompressor):
    """Rerank documents for a query with a GRIT model (the paper's cross-encoder use of the generative model).

    Documents that `GritLMEmbeddings` on the same `model` embedded are scored from their cached states (only the
    instruction and the query are run); any other text is read as text. The kept documents carry the score in
    `metadata["relevance_score"]`, best first.

    Args:
        model, cache_attention, rag_kwargs: the shared model and its key/value store (`UsesSharedGrit`).
        top_n: how many documents to keep.
        method: `"likelihood"` (log P(query | document), SGPT's cross-encoder) or `"permutation"` (the paper's
            RankGPT listwise prompt).
        window, step: the permutation's sliding window.

    Example:

    ```python
    >>> from langchain_classic.retrievers import ContextualCompressionRetriever
    >>> retriever = ContextualCompressionRetriever(
    ...     base_compressor=GritLMRerank(model="default", top_n=3), base_retriever=store.as_retriever(k=10)
    ... )
    ```
    """

    top_n: int = Field(default=3, gt=0, description="Documents kept.")
    method: Literal["likelihood", "permutation"] = Field(default="likelihood", description="Reranking method.")
    window: int = Field(default=10, gt=0, description="Candidates per permutation prompt.")
    step: int = Field(default=5, gt=0, description="How far the permutation window moves.")

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The `top_n` most relevant `documents` for `query`, best first, each with `metadata["relevance_score"]`."""
        check_text(query, "query")
        documents = list(documents)
        if not documents:
            return []
        reranker = Reranker(self.method, window=self.window, step=self.step)
        scores = self.shared.rerank(query, texts=[document.page_content for document in documents], method=reranker)
        order = sorted(range(len(documents)), key=lambda index: -scores[index])[: self.top_n]
        return [
            Document(
                page_content=documents[index].page_content,
                metadata={**documents[index].metadata, "relevance_score": scores[index]},
                id=documents[index].id,
            )
            for index in order
        ]
