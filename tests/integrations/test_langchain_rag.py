"""The standard LangChain RAG chain, unchanged, over `InMemoryVectorStore.from_texts(docs, GritLMEmbeddings)` and
`ChatGritLM` on the same path: the retrieved documents' cached states are reused."""

from __future__ import annotations

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_gritlm import ChatGritLM, GritLMEmbeddings

from grit_hf.rag import document_id

PROMPT = ChatPromptTemplate.from_template(
    "Answer the question using the context.\n\nContext:\n{context}\n\nQuestion: {question}"
)


def format_docs(documents: list[Document]) -> str:
    return "\n\n".join(document.page_content for document in documents)


def build_chain(path: str, docs: list[str], k: int = 2, **llm_kwargs):
    embeddings = GritLMEmbeddings(model=path)
    retriever = InMemoryVectorStore.from_texts(docs, embeddings).as_retriever(search_kwargs={"k": k})
    llm = ChatGritLM(model=path, max_tokens=8, **llm_kwargs)
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | llm
    return chain, retriever, llm


def test_standard_chain_reuses_retrieved_documents(fresh_path, docs):
    chain, retriever, llm = build_chain(fresh_path, docs)
    question = "What is the capital of France?"
    message = chain.invoke(question)

    retrieved = [d.page_content for d in retriever.invoke(question)]
    usage = message.usage_metadata
    assert usage["input_token_details"]["cache_read"] > 0
    assert usage["input_tokens"] > usage["input_token_details"]["cache_read"]
    assert message.response_metadata["cached_doc_ids"] == [document_id(text) for text in retrieved]
    assert message.response_metadata["cache_read_tokens"] == usage["input_token_details"]["cache_read"]

    plain_llm = llm.bind(reuse_cache=False)
    plain = ({"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | plain_llm).invoke(
        question
    )
    assert plain.usage_metadata["input_token_details"]["cache_read"] == 0
    assert plain.response_metadata["cached_doc_ids"] == []


def test_chain_with_output_parser_and_streaming(fresh_path, docs):
    chain, _, llm = build_chain(fresh_path, docs, k=1)
    text = (chain | StrOutputParser()).invoke("Where is Berlin?")
    assert isinstance(text, str)
    chunks = list(chain.stream("Where is Berlin?"))
    assert "".join(chunk.content for chunk in chunks) == text
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata["input_token_details"]["cache_read"] > 0


async def test_chain_async(fresh_path, docs):
    chain, _, _ = build_chain(fresh_path, docs, k=1)
    sync = chain.invoke("What turns light into sugar?")
    message = await chain.ainvoke("What turns light into sugar?")
    assert message.content == sync.content
    assert message.usage_metadata == sync.usage_metadata


def test_documents_embedded_elsewhere_are_not_spliced(fresh_path, docs):
    """Without embedding the documents first nothing is cached, and the same prompt reads everything as text."""
    llm = ChatGritLM(model=fresh_path, max_tokens=4)
    message = llm.invoke(f"Context:\n{docs[0]}\n\nQuestion: what is the capital of France?")
    assert message.usage_metadata["input_token_details"]["cache_read"] == 0
