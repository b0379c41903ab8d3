"""`GritLMEmbedding` and `GritLM` (LlamaIndex): embeddings, completion, chat, streaming, async, stop sequences, the
reused-token count in every response, sharing with the embedding model, and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms import CustomLLM
from llama_index.embeddings.gritlm import GritLMEmbedding
from llama_index.llms.gritlm import GritLM

from grit_hf.rag import document_id

USAGE_KEYS = {"cache_read_tokens", "prompt_tokens", "completion_tokens"}


def test_embedding(fresh_path, docs):
    embed_model = GritLMEmbedding(model=fresh_path)
    assert isinstance(embed_model, BaseEmbedding) and embed_model.model_name == "tiny"
    vectors = np.array(embed_model.get_text_embedding_batch(docs))
    assert vectors.shape == (3, 64)
    rag = embed_model.shared
    assert rag.doc_ids == [document_id(text) for text in docs] and all(d in rag.store for d in rag.doc_ids)
    assert np.allclose(embed_model.get_text_embedding(docs[1]), vectors[1], atol=0)
    query = np.array(embed_model.get_query_embedding(docs[0]))
    assert np.allclose(query, embed_model.shared.model.encode(docs[0], instruction=rag.query_instruction), atol=1e-5)
    assert GritLM(model=fresh_path).shared is embed_model.shared
    assert GritLMEmbedding(model=fresh_path, cache_documents=False).get_text_embedding("not cached at all") != []
    assert len(rag.doc_ids) == 3


async def test_embedding_async(tiny_path, docs):
    embed_model = GritLMEmbedding(model=tiny_path, query_instruction="Find facts")
    assert np.allclose(await embed_model.aget_query_embedding("x"), embed_model.get_query_embedding("x"))
    batch = await embed_model.aget_text_embedding_batch(docs)
    assert np.allclose(batch, embed_model.get_text_embedding_batch(docs))


def test_complete_chat_and_stream(tiny_path):
    llm = GritLM(model=tiny_path, max_new_tokens=10)
    assert isinstance(llm, CustomLLM)
    metadata = llm.metadata
    assert metadata.is_chat_model and metadata.num_output == 10 and metadata.context_window == 2048

    completion = llm.complete("Hello")
    assert USAGE_KEYS <= set(completion.additional_kwargs) and completion.additional_kwargs["completion_tokens"] == 10
    chat = llm.chat([ChatMessage(role=MessageRole.USER, content="Hello")])
    assert chat.message.content == completion.text and chat.message.role == MessageRole.ASSISTANT
    assert chat.additional_kwargs == completion.additional_kwargs

    streamed = list(llm.stream_complete("Hello"))
    assert streamed[-1].text == completion.text == "".join(r.delta for r in streamed)
    assert all(USAGE_KEYS <= set(r.additional_kwargs) for r in streamed)
    chat_streamed = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content="Hello")]))
    assert chat_streamed[-1].message.content == completion.text
    assert all("cache_read_tokens" in r.additional_kwargs for r in chat_streamed)

    assert GritLM(model=tiny_path, context_window=512).metadata.context_window == 512

    formatted = llm.complete(llm.shared.render_chat([{"role": "user", "content": "Hello"}]), formatted=True)
    assert formatted.text == completion.text


def test_system_prompt_and_stop(tiny_path):
    llm = GritLM(model=tiny_path, max_new_tokens=16)
    full = llm.complete("Hello").text
    stop = full[2:4]
    cut = llm.complete("Hello", stop=[stop])
    assert cut.text == full[: full.index(stop)] and cut.additional_kwargs["finish_reason"] == "stop"
    assert GritLM(model=tiny_path, max_new_tokens=16, stop=[stop]).complete("Hello").text == cut.text
    with_system = GritLM(model=tiny_path, max_new_tokens=4, system_prompt="Be brief.").complete("Hello")
    assert with_system.additional_kwargs["prompt_tokens"] > llm.complete("Hello").additional_kwargs["prompt_tokens"]


async def test_async(tiny_path):
    llm = GritLM(model=tiny_path, max_new_tokens=8)
    expected = llm.complete("Hey")
    assert (await llm.acomplete("Hey")).text == expected.text
    responses = [r async for r in await llm.astream_complete("Hey")]
    assert responses[-1].text == expected.text and "cache_read_tokens" in responses[-1].additional_kwargs
    message = [ChatMessage(role=MessageRole.USER, content="Hey")]
    assert (await llm.achat(message)).message.content == expected.text
    chat_responses = [r async for r in await llm.astream_chat(message)]
    assert chat_responses[-1].message.content == expected.text


def test_cached_text_in_prompt_is_reused(fresh_path, docs):
    GritLMEmbedding(model=fresh_path).get_text_embedding_batch(docs)
    llm = GritLM(model=fresh_path, max_new_tokens=4)
    response = llm.complete(f"Context:\n{docs[2]}\n\nWhat does photosynthesis make?")
    assert response.additional_kwargs["cache_read_tokens"] > 0
    assert response.additional_kwargs["cached_doc_ids"] == [document_id(docs[2])]
    plain = llm.complete(f"Context:\n{docs[2]}\n\nWhat does photosynthesis make?", reuse_cache=False)
    assert plain.additional_kwargs["cache_read_tokens"] == 0


def test_bad_arguments(tiny_path):
    with pytest.raises(TypeError, match="`model`"):
        GritLM(model=1.5)
    with pytest.raises(TypeError, match="`model`"):
        GritLMEmbedding(model=None)
    llm = GritLM(model=tiny_path, max_new_tokens=2)
    with pytest.raises(ValueError, match="tool"):
        llm.chat([ChatMessage(role=MessageRole.TOOL, content="3")])
    with pytest.raises(TypeError, match="unexpected keyword"):
        llm.complete("hi", tools=[])
    with pytest.raises(ValueError, match="`max_new_tokens`"):
        llm.complete("hi", max_new_tokens=-1)
    with pytest.raises(TypeError, match="`prompt`"):
        llm.complete(["hi"])
