"""The rerankers in their frameworks' standard pipelines, written as a user writes them: LangChain's
`ContextualCompressionRetriever` with `GritLMRerank` over a vector store of `GritLMEmbeddings`, and a LlamaIndex
query engine with `GritLMRerank` as node postprocessor. The kept documents are the best by the same model's scores
computed from text (the reference path), and they are read from the states their embedding pass cached."""

from __future__ import annotations

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_gritlm import ChatGritLM, GritLMEmbeddings, GritLMRerank
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.embeddings.gritlm import GritLMEmbedding
from llama_index.llms.gritlm import GritLM
from llama_index.postprocessor.gritlm_rerank import GritLMRerank as LlamaIndexGritLMRerank

from grit_hf.rag import get_shared
from grit_hf.rag.index import DocumentIndex

QUESTION = "What is the capital of France?"


def _expected(path: str, texts: list[str], method: str, top_n: int) -> list[str]:
    """The best `top_n` texts by the model's scores read from text (no cached states)."""
    scores = get_shared(path).rerank(QUESTION, texts=texts, method=method, reuse_cache=False)
    return [texts[i] for i in sorted(range(len(texts)), key=lambda i: -scores[i])[:top_n]]


@pytest.fixture
def states_read(monkeypatch):
    """How often a document's stored states were looked up while a plan was resolved."""
    calls = []
    real = DocumentIndex.document_states

    def document_states(self, doc_id):
        calls.append(doc_id)
        return real(self, doc_id)

    monkeypatch.setattr(DocumentIndex, "document_states", document_states)
    return calls


@pytest.mark.parametrize("method", ["likelihood", "permutation"])
def test_langchain_compression_retriever_reranks_from_cached_states(fresh_path, docs, states_read, method):
    store = InMemoryVectorStore.from_texts(docs, GritLMEmbeddings(model=fresh_path))
    retriever = ContextualCompressionRetriever(
        base_compressor=GritLMRerank(model=fresh_path, top_n=2, method=method),
        base_retriever=store.as_retriever(search_kwargs={"k": 4}),
    )
    kept = retriever.invoke(QUESTION)
    candidates = [document.page_content for document in store.as_retriever(search_kwargs={"k": 4}).invoke(QUESTION)]
    assert [document.page_content for document in kept] == _expected(fresh_path, candidates, method, 2)
    assert kept[0].metadata["relevance_score"] >= kept[1].metadata["relevance_score"]
    assert len(states_read) >= len(candidates)  # every candidate was read from its cached states

    llm = ChatGritLM(model=fresh_path, max_tokens=6)
    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = (
        {
            "context": retriever | (lambda ds: "\n\n".join(d.page_content for d in ds)),
            "question": RunnablePassthrough(),
        }
        | prompt
        | llm
    )
    message = chain.invoke(QUESTION)
    assert message.usage_metadata["input_token_details"]["cache_read"] > 0  # the reranked documents' states again
    assert isinstance((chain | StrOutputParser()).invoke(QUESTION), str)


async def test_langchain_reranker_async_and_empty(fresh_path, docs):
    reranker = GritLMRerank(model=fresh_path, top_n=1)
    store = InMemoryVectorStore.from_texts(docs, GritLMEmbeddings(model=fresh_path))
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=store.as_retriever())
    assert [d.page_content for d in await retriever.ainvoke(QUESTION)] == [
        d.page_content for d in retriever.invoke(QUESTION)
    ]
    assert reranker.compress_documents([], QUESTION) == []
    with pytest.raises(ValueError, match="top_n"):
        GritLMRerank(model=fresh_path, top_n=0)


@pytest.fixture
def llama_settings(fresh_path):
    saved = Settings._llm, Settings._embed_model
    Settings.embed_model = GritLMEmbedding(model=fresh_path)
    Settings.llm = GritLM(model=fresh_path, max_new_tokens=6)
    yield
    Settings._llm, Settings._embed_model = saved


@pytest.mark.parametrize("method", ["likelihood", "permutation"])
def test_llamaindex_query_engine_reranks_from_cached_states(fresh_path, docs, llama_settings, states_read, method):
    index = VectorStoreIndex.from_documents([Document(text=text) for text in docs])
    reranker = LlamaIndexGritLMRerank(model=fresh_path, top_n=2, method=method)
    engine = index.as_query_engine(similarity_top_k=4, node_postprocessors=[reranker])
    response = engine.query(QUESTION)
    kept = [item.node.get_content() for item in response.source_nodes]
    candidates = [item.node.get_content() for item in index.as_retriever(similarity_top_k=4).retrieve(QUESTION)]
    assert kept == _expected(fresh_path, candidates, method, 2)
    assert response.source_nodes[0].score >= response.source_nodes[1].score
    assert len(states_read) >= len(candidates)
    with pytest.raises(ValueError, match="query"):
        reranker.postprocess_nodes(response.source_nodes)
