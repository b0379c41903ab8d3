"""`GritLMEmbeddings`: LangChain embeddings from a GRIT model that also cache the documents' key/value states."""

from __future__ import annotations

from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor

from grit_hf.rag.integration import UsesSharedGrit, embed_documents
from grit_hf.validation import check_str_list, check_text

__all__ = ["GritLMEmbeddings"]


class GritLMEmbeddings(UsesSharedGrit, Embeddings):
    """Embeddings from a GRIT model (one decoder that embeds and generates).

    Documents are embedded without an instruction and, by default, their key/value states are kept in the shared
    store of the model, so a `ChatGritLM` on the same `model` reuses them when their text appears in a prompt.
    Queries are embedded with `query_instruction` (the checkpoint's `default_query_instruction` when unset).

    Args:
        model, cache_attention, rag_kwargs: the shared model and its key/value store (`UsesSharedGrit`): a
            checkpoint folder, a Hub name such as `"GritLM/GritLM-7B"`, `"default"` or a loaded `GritLMForCausalLM`.
        query_instruction: instruction for queries; `None` uses the checkpoint's default.
        cache_documents: keep the key/value states of embedded documents for generation.

    Example:

    ```python
    >>> from langchain_core.vectorstores import InMemoryVectorStore
    >>> from langchain_gritlm import GritLMEmbeddings
    >>> embeddings = GritLMEmbeddings(model="default")
    >>> store = InMemoryVectorStore.from_texts(["Paris is the capital of France."], embeddings)
    >>> store.similarity_search("capital of France", k=1)[0].page_content
    'Paris is the capital of France.'
    ```
    """

    query_instruction: str | None = None
    cache_documents: bool = True

    @property
    def model_name(self) -> str:
        """A readable name of the model (the checkpoint folder's name)."""
        return self.shared_name

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (no instruction) and, with `cache_documents`, keep their key/value states."""
        texts = check_str_list(texts, "texts", allow_empty_items=True)
        if not texts:
            return []
        return embed_documents(self.shared, texts, cache=self.cache_documents).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a query with `query_instruction` (or the checkpoint's default query instruction)."""
        check_text(text, "text")
        return self.shared.embed([text], instruction=self.query_instruction)[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async `embed_documents` (runs in a worker thread; the shared lock serialises model use)."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async `embed_query` (runs in a worker thread)."""
        return await run_in_executor(None, self.embed_query, text)
