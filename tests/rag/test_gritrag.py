"""GritRAG: caching modes vs plain RAG (exact with causal caches), positions of several cached documents, prompt
plans, plan_prompt, streaming, stop strings, stores, thread-safety, and the default model."""

from __future__ import annotations

import threading

import pytest
import torch

from grit_hf import GritLMForCausalLM
from grit_hf.cache import DiskKVStore, FingerprintMismatchError
from grit_hf.cache.buffers import PreallocatedLayer, append_states, new_cache
from grit_hf.generation.compose import close_with_text, compose
from grit_hf.generation.engine import _pick
from grit_hf.rag import Cached, GenerationResult, GritRAG, PromptPlan, Text
from grit_hf.rag.prompts import RAG_MODES, RAGPrompts, chat_markers, fill

DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
]
QUERY = "What is the capital of France?"
GEN = dict(max_new_tokens=10, ignore_eos=True)


@pytest.fixture(
    scope="module", params=[("llama", True), ("qwen2", False), ("mistral", True), ("gpt_neox", True)], ids=str
)
def model(request, stock_checkpoint):
    family, add_bos = request.param
    return GritLMForCausalLM.from_pretrained(stock_checkpoint(family, add_bos=add_bos)).eval()


@pytest.fixture(scope="module")
def causal_rag(model):
    rag = GritRAG(model, cache_attention="causal")
    rag.add_documents(DOCS, ids=["paris", "berlin", "photo"])
    return rag


@pytest.fixture(scope="module")
def bidirectional_rag(model):
    rag = GritRAG(model, cache_attention="bidirectional")
    rag.add_documents(DOCS, ids=["paris", "berlin", "photo"])
    return rag


def _parts(rag, items, reuse_cache=True):
    return rag.resolve(PromptPlan.of(items), reuse_cache).items


def _compose(rag, items):
    """The composed cache of a prompt, as the engine builds it before decoding."""
    plan = PromptPlan(close_with_text(_parts(rag, items)))
    cache = new_cache("preallocated", rag.model.config.text_config, plan.num_tokens)
    with torch.inference_mode():
        return compose(rag.model, plan, cache, rag.generator.rotary_emb, rag.model.device)


def _reference_generate(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """Plain `model.generate` on the whole prompt (greedy, exactly `max_new_tokens`)."""
    input_ids = torch.tensor([ids])
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return output[0, len(ids) :].tolist()


# -- exactness -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [1, 2])
def test_causal_caches_equal_plain_rag_token_for_token(causal_rag, top_k):
    answers = {mode: causal_rag.answer(QUERY, mode=mode, top_k=top_k, **GEN) for mode in RAG_MODES}
    assert answers["query"].token_ids == answers["rag_query_doc"].token_ids
    assert answers["query"].doc_ids == answers["rag_query_doc"].doc_ids
    if top_k == 1:  # a second cached document never attended to the first: exact only for one
        assert answers["doc"].token_ids == answers["rag_doc_query"].token_ids
    for mode, answer in answers.items():
        assert isinstance(answer, GenerationResult) and answer.mode == mode and answer.completion_tokens == 10
        assert answer.finish_reason == "length" and len(answer.doc_ids) == (0 if mode == "none" else top_k)
        assert (answer.cache_read_tokens > 0) == (mode in ("query", "doc", "query_doc", "doc_query"))
    assert answers["doc"].prompt_tokens == answers["rag_doc_query"].prompt_tokens
    assert answers["query"].prompt_tokens == answers["rag_query_doc"].prompt_tokens


def test_plain_rag_and_decode_loop_match_model_generate(causal_rag):
    model = causal_rag.model
    for mode in ("rag_doc_query", "rag_query_doc", "none"):
        plan = causal_rag.build_plan(QUERY, mode, ["paris"])
        ids = [t for part in causal_rag.resolve(plan, reuse_cache=False).items for t in part.ids]
        answer = causal_rag.answer(QUERY, mode=mode, doc_ids=["paris"], **GEN)
        assert answer.prompt_tokens == len(ids)
        assert answer.token_ids == _reference_generate(model, ids, 10), mode


def test_bidirectional_caches_are_the_embedding_pass_states_continued(bidirectional_rag):
    """Doc caching from bidirectional states, by hand: the document run through the stock decoder with
    `is_causal=False` (the embedding pass), the rest of the prompt run causally on top; the composed prompt's logits
    equal that, and differ from plain RAG's (causal) ones."""
    model = bidirectional_rag.model
    plan = bidirectional_rag.resolve(bidirectional_rag.build_plan(QUERY, "doc", ["paris"]))
    document, suffix = plan.items
    doc_ids = document.as_tokens().ids
    with torch.inference_mode():
        states = model.model(input_ids=torch.tensor([doc_ids]), is_causal=False, use_cache=True).cache
        positions = torch.arange(len(doc_ids), len(doc_ids) + suffix.num_tokens)[None]
        expected = model(input_ids=torch.tensor([suffix.ids]), position_ids=positions, cache=states).logits[0, -1]
        plain = model(input_ids=torch.tensor([doc_ids + suffix.ids])).logits[0, -1]
    ours = bidirectional_rag.generator.continuation_logits(plan, [])[0, -1]
    torch.testing.assert_close(ours.float(), expected.float(), rtol=1e-4, atol=1e-4)
    assert (ours.float() - plain.float()).abs().max() > 1e-3  # an approximation of plain RAG, not plain RAG
    doc = bidirectional_rag.answer(QUERY, mode="doc", doc_ids=["paris"], **GEN)
    assert doc.cache_read_tokens == len(doc_ids) and bidirectional_rag.store.get("paris").is_causal is False


def test_search_ranks_by_cosine(bidirectional_rag):
    hits = bidirectional_rag.search(QUERY, top_k=3)
    assert sorted(doc_id for doc_id, _ in hits) == ["berlin", "paris", "photo"]
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)
    embedding = bidirectional_rag.model.encode(QUERY, instruction=bidirectional_rag.query_instruction)
    documents = bidirectional_rag.model.encode(DOCS)
    expected = {i: float(documents[n] @ embedding) for n, i in enumerate(["paris", "berlin", "photo"])}
    for doc_id, score in hits:
        assert score == pytest.approx(expected[doc_id], abs=1e-5)


# -- positions of several cached parts -------------------------------------------------------------------------------
def test_several_cached_documents_sit_at_their_offsets(causal_rag):
    """Layer-0 keys depend only on token and position: the composed cache must equal a full forward's layer 0."""
    items = [Cached("paris"), Cached("berlin"), Cached("photo"), "\nQ"]
    parts = _parts(causal_rag, items)
    composition = _compose(causal_rag, items)
    cache = composition.cache
    ids = [t for part in _parts(causal_rag, items, reuse_cache=False) for t in part.ids]
    assert composition.position == len(ids) and composition.cache_read == len(ids) - parts[-1].num_tokens
    with torch.inference_mode():
        full = causal_rag.model(input_ids=torch.tensor([ids]), use_cache=True).cache
    torch.testing.assert_close(cache.layers[0].keys, full.layers[0].keys, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cache.layers[0].values, full.layers[0].values, rtol=1e-5, atol=1e-5)


def test_generation_never_mutates_or_copies_stored_states(causal_rag):
    stored = causal_rag.store.get("paris")
    before = [(k.clone(), v.clone()) for k, v in stored.layers()]
    for mode in ("doc", "doc_query", "query_doc"):
        causal_rag.answer(QUERY, mode=mode, top_k=2, **GEN)
    causal_rag.generate_from_plan(["x", Cached("paris"), "y"], max_new_tokens=3)
    for (k, v), (k0, v0) in zip(stored.layers(), before):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    cache = _compose(causal_rag, [Cached("paris"), "?"]).cache
    assert cache.layers[0].keys.data_ptr() != stored.layers()[0][0].data_ptr()  # one copy into the decode buffer
    dynamic = new_cache("dynamic", causal_rag.model.config.text_config, 0)
    assert append_states(dynamic, stored.layers()).layers[0].keys is stored.layers()[0][0]  # "dynamic": no copy


# -- prompt plans and plan_prompt -----------------------------------------------------------------------------------
def test_plan_prompt_finds_documents_and_absorbs_the_template(causal_rag):
    template = causal_rag.model.config.document_template
    prompt = f"{template}{DOCS[0]}\nContext: {DOCS[1]} and again {DOCS[1]}\nQ: {QUERY}"
    plan = causal_rag.plan_prompt(prompt)
    assert plan.items == [
        Cached("paris"),
        Text("\nContext: "),
        Cached("berlin"),
        Text(" and again "),
        Cached("berlin"),
        Text(f"\nQ: {QUERY}"),
    ]
    assert plan.doc_ids == ["paris", "berlin"]
    assert causal_rag.plan_prompt("nothing here").items == [Text("nothing here")]
    assert causal_rag.plan_prompt(prompt, doc_ids=["photo"]).items == [Text(prompt)]
    with pytest.raises(TypeError, match="`prompt`"):
        causal_rag.plan_prompt(["x"])


def test_finding_documents_is_the_earliest_then_longest_match_as_str_find_gives():
    """`DocumentTable.find_in` (a dictionary of document starts) against a reference written with `str.find` over
    every document, on prompts with overlapping and nested documents."""
    import random

    from grit_hf.rag.documents import MIN_CACHED_CHARS, DocumentTable

    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    texts = {f"d{i}": " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for i in range(40)}
    texts["short"] = "alpha beta"  # under MIN_CACHED_CHARS: never spliced
    table = DocumentTable(4)
    table.update(texts, torch.zeros(len(texts), 4), [False] * len(texts))

    def reference(prompt):
        matches = sorted(
            (start, -len(text), doc_id)
            for doc_id, text in texts.items()
            if len(text) >= MIN_CACHED_CHARS
            for start in (i for i in range(len(prompt)) if prompt.startswith(text, i))
        )
        found, position = [], 0
        for start, negative, doc_id in matches:
            if start >= position:
                found.append((start, start - negative, texts[doc_id]))
                position = start - negative
        return found

    for _ in range(50):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
        ours = [(start, end, texts[doc_id]) for start, end, doc_id in table.find_in(prompt)]
        assert ours == reference(prompt)


def test_cached_document_first_in_a_prompt_is_exact(causal_rag):
    template = causal_rag.model.config.document_template
    prompt = f"{template}{DOCS[2]}\n<|user|>\nWhat does photosynthesis make?\n<|assistant|>\n"
    plan = causal_rag.plan_prompt(prompt)
    assert plan.items[0] == Cached("photo") and len(plan.items) == 2
    cached = causal_rag.generate_from_plan(plan, **GEN)
    uncached = causal_rag.generate_from_plan(plan, reuse_cache=False, **GEN)
    assert cached.token_ids == uncached.token_ids
    assert cached.cache_read_tokens == causal_rag.store.get("photo").num_tokens and uncached.cache_read_tokens == 0
    ids = (
        causal_rag.store.get("photo").input_ids.tolist()
        + causal_rag.tokenizer(plan.items[1].text, add_special_tokens=False)["input_ids"]
    )
    assert cached.prompt_tokens == len(ids)
    assert cached.token_ids == _reference_generate(causal_rag.model, ids, 10)


def test_cached_document_later_in_a_prompt_drops_its_bos(causal_rag):
    stored = causal_rag.store.get("berlin")
    bos = causal_rag.generator.special_prefix
    result = causal_rag.generate_from_plan(["Context: ", Cached("berlin"), "\nQ?"], max_new_tokens=4)
    before = len(causal_rag.tokenizer("Context: ", add_special_tokens=False)["input_ids"])
    after = len(causal_rag.tokenizer("\nQ?", add_special_tokens=False)["input_ids"])
    assert result.cache_read_tokens == stored.num_tokens - len(bos)
    assert result.prompt_tokens == before + stored.num_tokens - len(bos) + after
    plain = causal_rag.generate_from_plan(["Context: ", Cached("berlin"), "\nQ?"], reuse_cache=False, max_new_tokens=4)
    assert plain.prompt_tokens == result.prompt_tokens and plain.cache_read_tokens == 0


def test_prompt_ending_with_a_cached_document(causal_rag):
    cached = causal_rag.generate_from_plan([Cached("paris")], **GEN)
    uncached = causal_rag.generate_from_plan([Cached("paris")], reuse_cache=False, **GEN)
    assert cached.token_ids == uncached.token_ids
    assert cached.cache_read_tokens == causal_rag.store.get("paris").num_tokens - 1


# -- streaming, stop strings, sampling -------------------------------------------------------------------------------
def test_stream_yields_the_answer_text(causal_rag):
    full = causal_rag.answer(QUERY, mode="doc", **GEN)
    stream = causal_rag.answer(QUERY, mode="doc", stream=True, **GEN)
    pieces = list(stream)
    assert "".join(pieces) == full.text == stream.result.text
    assert stream.result.token_ids == full.token_ids and stream.result.doc_ids == full.doc_ids
    plan_stream = causal_rag.generate_from_plan([Cached("paris"), "?"], stream=True, **GEN)
    assert "".join(plan_stream) == plan_stream.result.text


def test_stop_strings_cut_the_text_in_both_paths(causal_rag):
    """The engine's text stage on a known token sequence: the text ends before the first stop string, in the result
    and in the streamed pieces, even when the stop string spans several tokens."""
    text = "alpha beta gamma delta"
    ids = causal_rag.tokenizer(text, add_special_tokens=False)["input_ids"]
    for stop, expected in ((["gamma"], "alpha beta "), (["a d", "\x00never"], "alpha beta gamm"), ([], text)):
        result = GenerationResult()
        pieces = list(causal_rag.generator._text((token for token in ids), stop, result))
        assert "".join(pieces) == result.text == expected
        assert result.finish_reason == ("stop" if stop else "length")
    full = causal_rag.answer(QUERY, mode="doc", max_new_tokens=24, ignore_eos=True)
    stop = full.text[len(full.text) // 2 :][:2] or "\x00never"
    cut = full.text[: full.text.find(stop)] if stop in full.text else full.text
    stopped = causal_rag.answer(QUERY, mode="doc", max_new_tokens=24, ignore_eos=True, stop=[stop, "\x00never"])
    assert stopped.text == cut
    stream = causal_rag.answer(QUERY, mode="doc", max_new_tokens=24, ignore_eos=True, stop=stop, stream=True)
    assert "".join(stream) == cut


def test_sampling_is_seeded_and_uses_temperature_and_top_p(causal_rag):
    sampled = dict(mode="doc", temperature=1.0, seed=3, **GEN)
    first = causal_rag.answer(QUERY, **sampled)
    assert causal_rag.answer(QUERY, **sampled).token_ids == first.token_ids
    greedy = causal_rag.answer(QUERY, mode="doc", **GEN).token_ids
    # top_p below the top token's probability keeps only that token: sampling becomes greedy
    assert causal_rag.answer(QUERY, mode="doc", temperature=1.0, top_p=1e-9, seed=3, **GEN).token_ids == greedy
    # the random model's next-token distribution is flat: sampled answers differ from the greedy one
    assert any(
        causal_rag.answer(QUERY, mode="doc", temperature=1.0, seed=s, **GEN).token_ids != greedy for s in range(3)
    )


def test_sampler_follows_the_softmax_of_logits_over_temperature():
    logits = torch.tensor([0.0, 1.0, 2.0])
    generator = torch.Generator().manual_seed(0)
    for temperature in (0.5, 2.0):
        counts = torch.bincount(
            torch.tensor([_pick(logits, temperature, 1.0, generator) for _ in range(4000)]), minlength=3
        )
        expected = torch.softmax(logits / temperature, -1)
        torch.testing.assert_close(counts / 4000, expected, atol=0.03, rtol=0)
    kept = {_pick(logits, 1.0, 0.6, generator) for _ in range(200)}  # the top token alone holds 0.665 > 0.6
    assert kept == {2}
    assert _pick(logits, 0.0, 1.0, None) == 2


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_decode_caches_agree(model, causal_rag, kind):
    other = GritRAG(model, cache_attention="causal", store=causal_rag.store, decode_cache=kind)
    other.documents = causal_rag.documents
    for mode in ("doc", "query_doc", "rag_doc_query"):
        assert (
            other.answer(QUERY, mode=mode, top_k=2, **GEN).token_ids
            == causal_rag.answer(QUERY, mode=mode, top_k=2, **GEN).token_ids
        )


def test_preallocated_layer_grows_and_crops():
    layer = PreallocatedLayer(capacity=2)
    keys = torch.arange(12.0).reshape(1, 1, 3, 4)
    layer.update(keys[:, :, :1], keys[:, :, :1])
    layer.update(keys[:, :, 1:], -keys[:, :, 1:])  # beyond the capacity: the buffer grows
    assert layer.get_seq_length() == 3 and torch.equal(layer.keys, keys) and layer.capacity == 2
    layer.crop(-1)
    assert torch.equal(layer.keys, keys[:, :, :2]) and torch.equal(layer.values[:, :, 1:], -keys[:, :, 1:2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_static_decode_on_cuda(stock_checkpoint):
    model = GritLMForCausalLM.from_pretrained(stock_checkpoint("llama")).cuda().eval()
    plain = GritRAG(model, cache_attention="causal")
    plain.add_documents(DOCS)
    compiled = GritRAG(model, cache_attention="causal", decode_cache="static", compile=True)
    compiled.add_documents(DOCS)
    for _ in range(2):
        assert compiled.answer(QUERY, mode="doc", **GEN).token_ids == plain.answer(QUERY, mode="doc", **GEN).token_ids


# -- stores, threads, errors -----------------------------------------------------------------------------------------
def test_disk_store_serves_the_same_answers_and_refuses_other_setups(model, causal_rag, tmp_path):
    disk = GritRAG(model, cache_attention="causal", store=DiskKVStore(tmp_path))
    disk.add_documents(DOCS, ids=["paris", "berlin", "photo"])
    assert (
        disk.answer(QUERY, mode="doc", top_k=2, **GEN).token_ids
        == causal_rag.answer(QUERY, mode="doc", top_k=2, **GEN).token_ids
    )
    other = GritRAG(model, cache_attention="bidirectional", store=DiskKVStore(tmp_path))
    other.documents = disk.documents
    with pytest.raises(FingerprintMismatchError, match="attention"):
        other.answer(QUERY, mode="doc", **GEN)


def test_evicted_states_are_recomputed(model):
    from grit_hf.cache import MemoryKVStore

    rag = GritRAG(model, cache_attention="causal", store=MemoryKVStore(max_bytes=1))
    rag.add_documents(DOCS[:1], ids=["paris"])
    assert len(rag.store) == 0
    answer = rag.answer(QUERY, mode="doc", **GEN)
    assert answer.doc_ids == ["paris"] and answer.cache_read_tokens > 0


def test_concurrent_answers_equal_sequential_ones(causal_rag, bidirectional_rag):
    jobs = [(causal_rag, "doc"), (bidirectional_rag, "query"), (causal_rag, "query_doc"), (bidirectional_rag, "none")]
    expected = [rag.answer(QUERY, mode=mode, **GEN).token_ids for rag, mode in jobs]
    results: list = [None] * len(jobs)

    def run(index):
        rag, mode = jobs[index]
        results[index] = rag.answer(QUERY, mode=mode, **GEN).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_add_documents_replaces_and_assigns_ids(model):
    rag = GritRAG(model, cache_attention="causal")
    ids = rag.add_documents(DOCS[:2])
    assert len(ids) == 2 and all(len(i) == 16 for i in ids) and rag.doc_ids == ids
    rag.add_documents(["new text"], ids=[ids[0]])
    assert rag.doc_ids == [ids[1], ids[0]] and rag.get_text(ids[0]) == "new text"
    assert len(rag.documents) == 2


def test_remove_documents_forgets_texts_embeddings_and_states(model):
    rag = GritRAG(model, cache_attention="causal")
    rag.add_documents(DOCS, ids=["paris", "berlin", "photo"])
    kept = rag.get_embeddings(["photo"])
    assert rag.remove_documents(["berlin", "nope", "berlin"]) == ["berlin"]
    assert rag.doc_ids == ["paris", "photo"] and "berlin" not in rag.store
    assert torch.equal(rag.get_embeddings(["photo"]), kept) and len(rag.documents) == 2
    assert rag.plan_prompt(f"Context: {DOCS[1]}").items == [Text(f"Context: {DOCS[1]}")]
    with pytest.raises(ValueError, match="Unknown document"):
        rag.get_text("berlin")
    assert rag.remove_documents([]) == []


def test_input_errors(causal_rag, model):
    with pytest.raises(ValueError, match="`cache_attention`"):
        GritRAG(model, cache_attention="sideways")
    with pytest.raises(TypeError, match="`model`"):
        GritRAG("model")
    with pytest.raises(ValueError, match="`mode`"):
        causal_rag.answer(QUERY, mode="fast")
    with pytest.raises(ValueError, match="`top_k`"):
        causal_rag.search(QUERY, top_k=0)
    with pytest.raises(ValueError, match="`max_new_tokens`"):
        causal_rag.answer(QUERY, max_new_tokens=0)
    with pytest.raises(TypeError, match="Prompt item 0"):
        causal_rag.generate_from_plan([3.5])
    with pytest.raises(ValueError, match="nope"):
        causal_rag.generate_from_plan([Cached("nope")])
    with pytest.raises(ValueError, match="two different texts"):
        causal_rag.add_documents(["a", "b"], ids=["x", "x"])
    with pytest.raises(TypeError, match="`stop`"):
        causal_rag.answer(QUERY, stop=[""])
    with pytest.raises(ValueError, match="`compile=True`"):
        GritRAG(model, compile=True, decode_cache="dynamic")


# -- prompts ---------------------------------------------------------------------------------------------------------
def test_prompts_reproduce_the_reference_and_adapt_to_chatml(causal_rag):
    reference = RAGPrompts.reference()
    assert reference.suffix("doc", query="Q") == (
        "\n<|user|>\nQ\n\nAnswer the prior query while optionally using the context prior to it\n<|assistant|>\n"
    )
    assert reference.suffix("query", doc="D") == (
        "\n<|user|>\nD\n\nOptionally using the prior context answer the query prior to it\n<|assistant|>\n"
    )
    assert reference.suffix("doc_query") == (
        "\n<|user|>\nAnswer the prior query while optionally using the context prior to it\n<|assistant|>\n"
    )
    assert causal_rag.prompts == reference  # the tiny checkpoints use GritLM-7B's chat template
    chatml = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    assert chat_markers(causal_rag.tokenizer, chatml) == ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")
    with_system = (  # like SmolLM2's: a default system turn when none is given
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe nice<|im_end|>\n' }}{% endif %}" + chatml
    )
    assert chat_markers(causal_rag.tokenizer, with_system)[0] == "<|im_end|>\n<|im_start|>user\n"
    assert fill("{query} {doc}", query="{doc}", doc="x") == "{doc} x"
    with pytest.raises(ValueError, match="`doc_cached`"):
        RAGPrompts(doc_cached="no placeholder")


# -- the default model -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_causal_caches_are_exact(default_model):
    rag = GritRAG(default_model, cache_attention="causal")
    rag.add_documents(["The Eiffel Tower is in Paris. It was built in 1889 for the World's Fair."], ids=["eiffel"])
    query, ids = "When was the Eiffel Tower built?", ["eiffel"]
    doc = rag.answer(query, mode="doc", doc_ids=ids, max_new_tokens=8)
    assert doc.token_ids == rag.answer(query, mode="rag_doc_query", doc_ids=ids, max_new_tokens=8).token_ids
    query_cached = rag.answer(query, mode="query", doc_ids=ids, max_new_tokens=8)
    assert query_cached.token_ids == rag.answer(query, mode="rag_query_doc", doc_ids=ids, max_new_tokens=8).token_ids
    assert doc.cache_read_tokens > 10 and query_cached.cache_read_tokens > 10 and "built in" in doc.text
