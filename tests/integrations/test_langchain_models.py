"""`GritLMEmbeddings` and `ChatGritLM` beyond the standard suites: sharing, caching, stop sequences, `max_tokens`,
streaming, async, concurrency and input checks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_gritlm import ChatGritLM, GritLMEmbeddings

from grit_hf import GritLMForCausalLM
from grit_hf.cache import DiskKVStore
from grit_hf.rag import document_id, get_shared


def test_same_path_or_object_shares_one_instance(fresh_path):
    embeddings = GritLMEmbeddings(model=fresh_path)
    llm = ChatGritLM(model=fresh_path)
    assert embeddings.shared is llm.shared is get_shared(fresh_path)
    assert ChatGritLM(model=embeddings.shared.model).shared is llm.shared
    assert embeddings.model_name == llm.model_name == "tiny"


def test_model_object_shares_one_instance(fresh_path):
    model = GritLMForCausalLM.from_pretrained(fresh_path)
    shared = GritLMEmbeddings(model=model).shared
    assert shared.model is model
    assert ChatGritLM(model=model).shared is shared
    assert shared is not get_shared(fresh_path)  # another object, another instance


def test_a_quantized_model_object_embeds_and_chats(fresh_path, docs):
    """Quantized weights reach the integrations as a loaded model (`grit_hf.load_model(..., quantization=...)`):
    embeddings and chat share it, and the answer is the model's own greedy answer."""
    pytest.importorskip("torchao")
    from grit_hf import load_model
    from grit_hf.quantization import model_quantization
    from grit_hf.rag import release_shared

    model = load_model(fresh_path, device="cpu", dtype="bfloat16", quantization="int4")
    try:
        embeddings, llm = GritLMEmbeddings(model=model), ChatGritLM(model=model, max_tokens=6)
        assert embeddings.shared is llm.shared and model_quantization(llm.shared.model) == "int4"
        vectors = np.array(embeddings.embed_documents(docs[:2]))
        np.testing.assert_allclose(vectors, model.encode(docs[:2]), rtol=0, atol=1e-6)
        message = llm.invoke("Where is Paris?")
        prompt = llm.shared.render_chat([{"role": "user", "content": "Where is Paris?"}])
        assert message.content == llm.shared.generate(prompt, max_new_tokens=6, reuse_cache=False).text
    finally:
        release_shared(model)


def test_embed_documents_caches_states(fresh_path, docs):
    embeddings = GritLMEmbeddings(model=fresh_path)
    vectors = np.array(embeddings.embed_documents(docs + docs[:1]))
    rag = embeddings.shared
    assert rag.doc_ids == [document_id(text) for text in docs]  # the repeated text is indexed once
    assert all(doc_id in rag.store for doc_id in rag.doc_ids)
    assert np.allclose(vectors[0], vectors[-1])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    again = np.array(embeddings.embed_documents(docs[:1]))  # read back, not recomputed
    np.testing.assert_allclose(again[0], vectors[0], rtol=0, atol=0)


def test_embed_without_caching_and_query_instruction(fresh_path, docs):
    embeddings = GritLMEmbeddings(model=fresh_path, cache_documents=False)
    vectors = np.array(embeddings.embed_documents(docs))
    assert embeddings.shared.doc_ids == []
    assert np.allclose(vectors, embeddings.shared.model.encode(docs), atol=1e-5)
    query = np.array(embeddings.embed_query(docs[0]))
    assert not np.allclose(query, vectors[0], atol=1e-4)  # queries get the instruction
    custom = np.array(GritLMEmbeddings(model=fresh_path, query_instruction="Find facts").embed_query(docs[0]))
    assert np.allclose(custom, embeddings.shared.model.encode(docs[0], instruction="Find facts"), atol=1e-5)
    assert embeddings.embed_documents([]) == []


def test_stop_sequences_and_max_tokens(tiny_path):
    llm = ChatGritLM(model=tiny_path, max_tokens=16)
    full = llm.invoke("Hello").content
    assert len(full) > 4
    stop = full[2:4]
    cut = llm.invoke("Hello", stop=[stop])
    assert cut.content == full[: full.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"
    assert ChatGritLM(model=tiny_path, max_tokens=16, stop=[stop]).invoke("Hello").content == cut.content
    streamed = "".join(chunk.content for chunk in llm.stream("Hello", stop=[stop]))
    assert streamed == cut.content

    short = llm.invoke("Hello", max_tokens=3)
    assert short.usage_metadata["output_tokens"] == 3
    assert short.response_metadata["finish_reason"] == "length"


def test_stream_matches_invoke_and_reports_usage_once(tiny_path):
    llm = ChatGritLM(model=tiny_path, max_tokens=10)
    messages = [SystemMessage("Be brief."), HumanMessage("Hello"), AIMessage("Hi"), HumanMessage("How are you?")]
    message = llm.invoke(messages)
    chunks = list(llm.stream(messages))
    assert "".join(chunk.content for chunk in chunks) == message.content
    assert [chunk.chunk_position for chunk in chunks].count("last") == 1 and chunks[-1].chunk_position == "last"
    assert [chunk.usage_metadata is not None for chunk in chunks].count(True) == 1
    assert chunks[-1].usage_metadata == message.usage_metadata


class _Tokens(BaseCallbackHandler):
    def __init__(self):
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)


@pytest.mark.parametrize("method", ["stream", "invoke_streaming"])
def test_callbacks_see_each_token_once(tiny_path, method):
    handler = _Tokens()
    if method == "stream":
        llm = ChatGritLM(model=tiny_path, max_tokens=6)
        text = "".join(chunk.content for chunk in llm.stream("Hello", config={"callbacks": [handler]}))
    else:
        llm = ChatGritLM(model=tiny_path, max_tokens=6, streaming=True)
        text = llm.invoke("Hello", config={"callbacks": [handler]}).content
    assert "".join(handler.tokens) == text and len([t for t in handler.tokens if t]) >= 1
    assert len(handler.tokens) <= 6 + 2  # one per delta, plus the final (empty) chunk(s)


async def test_async_matches_sync(tiny_path):
    llm = ChatGritLM(model=tiny_path, max_tokens=10)
    message = llm.invoke("Hey")
    assert (await llm.ainvoke("Hey")).content == message.content
    chunks = [chunk async for chunk in llm.astream("Hey")]
    assert "".join(chunk.content for chunk in chunks) == message.content
    assert chunks[-1].chunk_position == "last"
    embeddings = GritLMEmbeddings(model=tiny_path)
    assert np.allclose(await embeddings.aembed_query("Hey"), embeddings.embed_query("Hey"))


def test_concurrent_embedding_and_generation(fresh_path, docs):
    """Threads embedding and generating on one shared instance give the sequential results."""
    embeddings = GritLMEmbeddings(model=fresh_path)
    llm = ChatGritLM(model=fresh_path, max_tokens=8)
    prompts = [f"Context:\n{docs[i % 3]}\n\nQuestion {i}?" for i in range(4)]
    embeddings.embed_documents(docs)
    expected_answers = [llm.invoke(prompt) for prompt in prompts]
    expected_query = embeddings.embed_query("capital")
    jobs = [(llm.invoke, prompt) for prompt in prompts] + [(embeddings.embed_query, "capital")] * 2
    jobs.append((embeddings.embed_documents, docs[::-1]))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: job[0](job[1]), jobs))
    for got, want in zip(results[:4], expected_answers):
        assert got.content == want.content and got.usage_metadata == want.usage_metadata
        assert got.usage_metadata["input_token_details"]["cache_read"] > 0
    assert np.allclose(results[4], expected_query, atol=1e-5) and np.allclose(results[5], expected_query, atol=1e-5)
    assert len(embeddings.shared.doc_ids) == 3


def test_bad_arguments(tiny_path):
    with pytest.raises(TypeError, match="`model`"):
        ChatGritLM(model=3)
    with pytest.raises(TypeError, match="`model`"):
        GritLMEmbeddings(model=["x"])
    with pytest.raises(ValueError, match="`model`"):
        ChatGritLM(model="")
    llm = ChatGritLM(model=tiny_path, max_tokens=2)
    with pytest.raises(ValueError, match="tool"):
        llm.invoke([HumanMessage("hi"), ToolMessage("3", tool_call_id="x")])
    with pytest.raises(TypeError, match="unexpected keyword"):
        llm.invoke("hi", tools=[{}])
    with pytest.raises(ValueError, match="`max_tokens`"):
        llm.invoke("hi", max_tokens=0)
    with pytest.raises(TypeError, match="`texts`"):
        GritLMEmbeddings(model=tiny_path).embed_documents("just one string")
    with pytest.raises(TypeError, match="`text`"):
        GritLMEmbeddings(model=tiny_path).embed_query(["a"])
    with pytest.raises(ValueError, match="cache_attention"):
        GritLMEmbeddings(model=tiny_path, cache_attention="sideways")


def test_rag_kwargs_choose_the_store(fresh_path, tmp_path, docs):
    store = DiskKVStore(tmp_path / "kv")
    embeddings = GritLMEmbeddings(model=fresh_path, rag_kwargs={"store": store}, cache_attention="causal")
    embeddings.embed_documents(docs[:1])
    assert embeddings.shared.store is store and embeddings.shared.cache_attention == "causal"
    assert store.keys() == [document_id(docs[0])]
    message = ChatGritLM(model=fresh_path, max_tokens=2).invoke(f"About: {docs[0]}")
    assert message.usage_metadata["input_token_details"]["cache_read"] > 0


def test_conflicting_cache_attention_is_refused(fresh_path):
    # creates the shared instance with the checkpoint's setting (causal: not trained for cached generation)
    GritLMEmbeddings(model=fresh_path).embed_query("x")
    with pytest.raises(ValueError, match="cache_attention"):
        GritLMEmbeddings(model=fresh_path, cache_attention="bidirectional").embed_query("x")
    assert GritLMEmbeddings(model=fresh_path, cache_attention="causal").embed_query("x")
