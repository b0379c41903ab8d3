"""A LlamaIndex `VectorStoreIndex` query engine with `Settings.embed_model = GritLMEmbedding(...)` and
`Settings.llm = GritLM(...)` on the same path: synthesis reuses the nodes' cached states (offline, no OpenAI)."""

from __future__ import annotations

import pytest
from llama_index.core import Document, Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.embeddings.gritlm import GritLMEmbedding
from llama_index.llms.gritlm import GritLM, GritLMCachedContext

from grit_hf.rag import document_id


class _LLMEnds(BaseEventHandler):
    """Collects the `additional_kwargs` of every LLM response LlamaIndex reports."""

    responses: list = []

    @classmethod
    def class_name(cls) -> str:
        return "_LLMEnds"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, (LLMChatEndEvent, LLMCompletionEndEvent)) and event.response is not None:
            self.responses.append(event.response.additional_kwargs)


@pytest.fixture
def settings(fresh_path):
    """Settings with the GRIT embedding and LLM on one path; restored afterwards."""
    saved = Settings._llm, Settings._embed_model
    Settings.embed_model = GritLMEmbedding(model=fresh_path)
    Settings.llm = GritLM(model=fresh_path, max_new_tokens=8)
    handler = _LLMEnds(responses=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    yield handler
    dispatcher.event_handlers.remove(handler)
    Settings._llm, Settings._embed_model = saved


def test_query_engine_reuses_node_states(settings, docs):
    index = VectorStoreIndex.from_documents([Document(text=text) for text in docs])
    response = index.as_query_engine(similarity_top_k=2).query("What is the capital of France?")
    assert isinstance(response.response, str)
    (usage,) = settings.responses
    assert usage["cache_read_tokens"] > 0
    node_texts = [node.node.get_content() for node in response.source_nodes]
    assert usage["cached_doc_ids"] and set(usage["cached_doc_ids"]) <= {document_id(text) for text in node_texts}


def test_directory_reader_and_streaming(settings, tmp_path, docs):
    for index, text in enumerate(docs):
        (tmp_path / f"doc{index}.txt").write_text(text + "\n", encoding="utf-8")
    documents = SimpleDirectoryReader(str(tmp_path)).load_data()
    engine = VectorStoreIndex.from_documents(documents).as_query_engine(similarity_top_k=1, streaming=True)
    response = engine.query("Where is Berlin?")
    text = "".join(response.response_gen)
    assert isinstance(text, str)
    assert settings.responses[-1]["cache_read_tokens"] > 0


def test_postprocessor_aligns_llm_text_with_embedded_text(settings, docs):
    """Metadata excluded from the LLM text but embedded: only `GritLMCachedContext` makes the prompt match."""
    documents = [
        Document(text=t, metadata={"topic": f"t{i}"}, excluded_llm_metadata_keys=["topic"]) for i, t in enumerate(docs)
    ]
    index = VectorStoreIndex.from_documents(documents)
    index.as_query_engine(similarity_top_k=1).query("What is the capital of France?")
    assert settings.responses[-1]["cache_read_tokens"] == 0
    engine = index.as_query_engine(similarity_top_k=1, node_postprocessors=[GritLMCachedContext()])
    response = engine.query("What is the capital of France?")
    assert settings.responses[-1]["cache_read_tokens"] > 0
    assert response.source_nodes[0].node.excluded_llm_metadata_keys == []
    stored = index.docstore.get_node(response.source_nodes[0].node.node_id)
    assert stored.excluded_llm_metadata_keys == ["topic"]  # the stored node is unchanged


async def test_async_query_engine(settings, docs):
    index = VectorStoreIndex.from_documents([Document(text=text) for text in docs])
    response = await index.as_query_engine(similarity_top_k=1).aquery("What turns light into sugar?")
    assert isinstance(response.response, str)
    assert settings.responses[-1]["cache_read_tokens"] > 0
