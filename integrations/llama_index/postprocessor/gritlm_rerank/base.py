"""`GritLMRerank`: a LlamaIndex node postprocessor that reranks retrieved nodes with the same GRIT model that embedded
them, reading each from the key/value states its embedding pass cached (`grit_hf.rag.rerank`)."""

from __future__ import annotations

from typing import Literal

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import Field

from grit_hf.rag.integration import UsesSharedGrit
from grit_hf.rag.rerank import Reranker

__all__ = ["GritLMRerank"]


class GritLMRerank(UsesSharedGrit, BaseNodePostprocessor):
    """Rerank nodes for a query with a GRIT model (the paper's cross-encoder use of the generative model), like
    `SentenceTransformerRerank` or `RankGPTRerank`.

    Each node is scored by its embedded text (`MetadataMode.EMBED`), so nodes that `GritLMEmbedding` on the same
    `model` embedded are read from their cached states; the kept nodes get the reranker's score, best first.

    Args:
        model, cache_attention, rag_kwargs: the shared model and its key/value store (`UsesSharedGrit`).
        top_n: how many nodes to keep.
        method: `"likelihood"` (log P(query | node), SGPT's cross-encoder) or `"permutation"` (RankGPT, the paper's).
        window, step: the permutation's sliding window.

    Example:

    ```python
    >>> engine = index.as_query_engine(similarity_top_k=10, node_postprocessors=[GritLMRerank(top_n=3)])
    ```
    """

    top_n: int = Field(default=3, gt=0, description="Nodes kept.")
    method: Literal["likelihood", "permutation"] = Field(default="likelihood", description="Reranking method.")
    window: int = Field(default=10, gt=0, description="Candidates per permutation prompt.")
    step: int = Field(default=5, gt=0, description="How far the permutation window moves.")

    @classmethod
    def class_name(cls) -> str:
        return "GritLMRerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("`GritLMRerank` needs the query: call it with a `query_bundle` (or `query_str`).")
        if not nodes:
            return []
        texts = [item.node.get_content(metadata_mode=MetadataMode.EMBED) for item in nodes]
        reranker = Reranker(self.method, window=self.window, step=self.step)
        scores = self.shared.rerank(query_bundle.query_str, texts=texts, method=reranker)
        order = sorted(range(len(nodes)), key=lambda index: -scores[index])[: self.top_n]
        return [NodeWithScore(node=nodes[index].node, score=scores[index]) for index in order]
