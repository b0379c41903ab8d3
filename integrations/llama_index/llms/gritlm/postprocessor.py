"""`GritLMCachedContext`: a node postprocessor so the LLM prompt contains each node exactly as it was embedded."""

from __future__ import annotations

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

__all__ = ["GritLMCachedContext"]


class GritLMCachedContext(BaseNodePostprocessor):
    """Make each retrieved node's LLM text equal to its embedded text, so `GritLM` finds it verbatim in the prompt
    and reuses the key/value states cached when `GritLMEmbedding` embedded it.

    LlamaIndex embeds `node.get_content(MetadataMode.EMBED)` but puts `node.get_content(MetadataMode.LLM)` in the
    prompt; the two differ when a node's `excluded_embed_metadata_keys` and `excluded_llm_metadata_keys` differ. This
    postprocessor copies the embedding exclusions onto a copy of each node (the stored nodes are not changed).
    Nodes whose two texts already match (e.g. from `SimpleDirectoryReader`) pass through unchanged.

    Example:

    ```python
    >>> engine = index.as_query_engine(node_postprocessors=[GritLMCachedContext()])
    ```
    """

    @classmethod
    def class_name(cls) -> str:
        return "GritLMCachedContext"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        aligned = []
        for item in nodes:
            node = item.node
            if list(node.excluded_llm_metadata_keys) != list(node.excluded_embed_metadata_keys):
                node = node.model_copy(deep=False)
                node.excluded_llm_metadata_keys = list(node.excluded_embed_metadata_keys)
                item = NodeWithScore(node=node, score=item.score)
            aligned.append(item)
        return aligned
