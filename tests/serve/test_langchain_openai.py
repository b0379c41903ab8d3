"""LangChain's own OpenAI classes (`OpenAIEmbeddings`, `ChatOpenAI`, package langchain-openai) pointed at the server,
running the standard RAG chain unchanged: the retrieved documents' cached states are reused, which LangChain reports
as `input_token_details.cache_read`."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

langchain_openai = pytest.importorskip("langchain_openai")

DOCS = [
    "Lyon sits where the Rhone meets the Saone, in the east of France.",
    "Hamburg is a port city on the Elbe in the north of Germany.",
    "Chlorophyll absorbs red and blue light and reflects the green.",
]
PROMPT = ChatPromptTemplate.from_template(
    "Answer the question using the context.\n\nContext:\n{context}\n\nQuestion: {question}"
)


def _format(documents: list[Document]) -> str:
    return "\n\n".join(document.page_content for document in documents)


def _chain(server, k: int = 2, **llm_kwargs):
    common = dict(model="tiny", base_url=server.base_url + "/v1", api_key=server.api_key, max_retries=0)
    embeddings = langchain_openai.OpenAIEmbeddings(check_embedding_ctx_length=False, **common)
    retriever = InMemoryVectorStore.from_texts(DOCS, embeddings).as_retriever(search_kwargs={"k": k})
    llm = langchain_openai.ChatOpenAI(temperature=0, max_tokens=8, **common, **llm_kwargs)
    chain = {"context": retriever | _format, "question": RunnablePassthrough()} | PROMPT | llm
    return chain, retriever, embeddings


def test_standard_rag_chain_reuses_the_retrieved_documents(server):
    chain, retriever, embeddings = _chain(server)
    question = "Where does the Rhone meet the Saone?"
    message = chain.invoke(question)
    usage = message.usage_metadata
    assert usage["input_token_details"]["cache_read"] > 0
    assert usage["input_tokens"] > usage["input_token_details"]["cache_read"]
    retrieved = {document.page_content for document in retriever.invoke(question)}
    assert len(retrieved) == 2 and retrieved <= set(DOCS)
    vectors = embeddings.embed_documents(DOCS)
    assert len(vectors) == 3 and len(vectors[0]) == server.state.dimension


def test_streamed_and_async_chains(server):
    chain, _, _ = _chain(server, k=1, stream_usage=True)
    question = "Which city is a port on the Elbe?"
    text = (chain | StrOutputParser()).invoke(question)
    chunks = list(chain.stream(question))
    assert "".join(chunk.content for chunk in chunks) == text
    usage = next(chunk.usage_metadata for chunk in chunks if chunk.usage_metadata)
    assert usage["input_token_details"]["cache_read"] > 0


async def test_async_chain_equals_the_sync_one(server):
    chain, _, _ = _chain(server, k=1)
    question = "What does chlorophyll absorb?"
    sync = chain.invoke(question)
    message = await chain.ainvoke(question)
    assert message.content == sync.content
    assert message.usage_metadata == sync.usage_metadata
