from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from tiny import FAMILIES, PARITY
from torch.testing import assert_close
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from grit_hf import GritLMConfig, GritLMForCausalLM, GritLMModel

TEXTS = [
    "The capital of France is Paris.",
    "Berlin",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen, mostly in the leaves of plants.",
    "list directory contents",
]
INSTRUCTION = "Given a question, retrieve passages that answer the question"


def test_registration(grit_checkpoint):
    path = grit_checkpoint("llama")
    assert isinstance(AutoConfig.from_pretrained(path), GritLMConfig)
    assert type(AutoModel.from_pretrained(path)) is GritLMModel
    assert type(AutoModelForCausalLM.from_pretrained(path)) is GritLMForCausalLM


# The reference cannot load GPT-NeoX (it looks for Llama's attribute names): grit-hf is checked by hand there.
REFERENCE_FAMILIES = [family for family in FAMILIES if family != "gpt_neox"]


@pytest.mark.parametrize("family", REFERENCE_FAMILIES)
def test_matches_reference_gritlm(family, stock_checkpoint, grit_checkpoint):
    """encode() equals the reference package `gritlm` (bidirectional 'bbcc'), queries and documents."""
    gritlm = pytest.importorskip("gritlm")
    reference = gritlm.GritLM(str(stock_checkpoint(family)), attn="bbcc", device="cpu")
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint(family))
    queries = model.encode(TEXTS, instruction=INSTRUCTION)
    documents = model.encode(TEXTS)
    ref_queries = reference.encode(TEXTS, instruction="<|user|>\n" + INSTRUCTION + "\n<|embed|>\n")
    ref_documents = reference.encode(TEXTS, instruction="<|embed|>\n")
    assert np.abs(queries - ref_queries).max() <= PARITY
    assert np.abs(documents - ref_documents).max() <= PARITY
    assert np.abs(queries - documents).max() > 1e-3  # the instruction matters


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_bidirectional_differs_from_causal_and_matches_hand_computation(family, stock_checkpoint):
    """Mean pooling over text tokens of the base decoder run with is_causal=False, computed by hand."""
    path = stock_checkpoint(family)
    model = GritLMForCausalLM.from_pretrained(path)
    base = AutoModel.from_pretrained(path)  # the stock decoder (LlamaModel, GPTNeoXModel)
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = TEXTS[2]
    prefix = "<|embed|>\n"
    ids = tokenizer(prefix + text, return_tensors="pt")
    n_prefix = len(tokenizer(prefix)["input_ids"])
    with torch.no_grad():
        hidden = base(**ids, is_causal=False).last_hidden_state[0, n_prefix:]
        hidden_causal = base(**ids).last_hidden_state[0, n_prefix:]
    expected = torch.nn.functional.normalize(hidden.mean(0), dim=-1)
    ours = model.encode(text, convert_to_tensor=True)
    assert_close(ours, expected, rtol=0, atol=1e-6)
    causal = model.encode(text, convert_to_tensor=True, is_causal=True)
    assert_close(causal, torch.nn.functional.normalize(hidden_causal.mean(0), dim=-1), rtol=0, atol=1e-6)
    assert (ours - causal).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama", "qwen2", "mixtral", "gemma", "gpt_neox"])
def test_generation_is_the_base_model(family, stock_checkpoint, grit_checkpoint):
    stock = AutoModelForCausalLM.from_pretrained(stock_checkpoint(family)).eval()
    grit = AutoModelForCausalLM.from_pretrained(grit_checkpoint(family)).eval()
    ids = grit.tokenizer("The capital of France", return_tensors="pt")
    with torch.no_grad():
        assert_close(grit(**ids).logits, stock(**ids).logits, rtol=0, atol=0)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=grit.tokenizer.pad_token_id)
    assert torch.equal(grit.generate(**ids, **kwargs), stock.generate(**ids, **kwargs))


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_continuing_from_a_cache_is_the_base_model(name, stock_checkpoint, grit_checkpoint):
    """A prompt continued from a cache, under the cache argument's new name and its former one (which transformers'
    own models still take): the logits of the base model continuing the same way."""
    stock = AutoModelForCausalLM.from_pretrained(stock_checkpoint("llama")).eval()
    grit = AutoModelForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()
    ids = grit.tokenizer("The capital of France is a city on the Seine", return_tensors="pt").input_ids
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        logits = {}
        for label, model in (("stock", stock), ("grit", grit)):
            cache = DynamicCache(config=model.config)
            model(ids[:, :4], **{name: cache})
            logits[label] = model(ids[:, 4:], **{name: cache}).logits
        full = stock(ids).logits[:, 4:]
    # (grit_sdpa attends from new tokens to cached ones without a mask: the same numbers up to rounding)
    assert_close(logits["grit"], logits["stock"], rtol=1e-5, atol=1e-5)
    assert_close(logits["grit"], full, rtol=1e-5, atol=1e-5)


def test_family_with_other_weight_names_loads_ties_and_reloads(stock_checkpoint, tmp_path):
    """GPT-NeoX names its decoder `gpt_neox`, its embeddings `embed_in` and its head `embed_out`: the stock weights
    are mapped onto GRIT's names, the tied head follows `get_input_embeddings`, and a saved copy reloads equal."""
    stock_path = stock_checkpoint("gpt_neox")
    model = GritLMForCausalLM.from_pretrained(stock_path)
    stock = AutoModelForCausalLM.from_pretrained(stock_path)
    assert model._tied_weights_keys == {"lm_head.weight": "model.embed_in.weight"}
    assert model.lm_head.weight is model.model.embed_in.weight
    assert_close(model.model.embed_in.weight, stock.gpt_neox.embed_in.weight, rtol=0, atol=0)
    model.save_pretrained(tmp_path / "saved")
    model.tokenizer.save_pretrained(tmp_path / "saved")
    again = GritLMForCausalLM.from_pretrained(tmp_path / "saved")
    for (name, weight), (_, reloaded) in zip(model.state_dict().items(), again.state_dict().items()):
        assert_close(reloaded, weight, rtol=0, atol=0, msg=name)


def test_auto_model_forward_is_bidirectional_and_fp32(stock_checkpoint, grit_checkpoint):
    model = AutoModel.from_pretrained(grit_checkpoint("llama"), dtype=torch.bfloat16)
    base = AutoModel.from_pretrained(stock_checkpoint("llama"), dtype=torch.bfloat16)
    ids = model.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**ids).last_hidden_state
        expected = base(**ids, is_causal=False).last_hidden_state
    assert out.dtype == torch.float32
    assert_close(out, expected.float(), rtol=0, atol=0)


def test_batched_equals_single_and_order_is_kept(grit_checkpoint):
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("mistral"))
    batched = model.encode(TEXTS, instruction=INSTRUCTION, batch_size=3)
    single = np.stack([model.encode(t, instruction=INSTRUCTION) for t in TEXTS])
    assert batched.shape == (4, 64) and batched.dtype == np.float32
    assert np.abs(batched - single).max() <= PARITY
    reversed_ = model.encode(TEXTS[::-1], instruction=INSTRUCTION)
    assert np.abs(reversed_[::-1] - batched).max() <= PARITY
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_output_types(grit_checkpoint):
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"))
    single = model.encode("hello")
    assert single.shape == (64,)
    tensor = model.encode(["a", "b"], convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.shape == (2, 64)
    raw = model.encode(["hello world"], normalize=False)
    assert abs(np.linalg.norm(raw) - 1) > 1e-3


@pytest.mark.parametrize("pooling", ["weightedmean", "lasttoken"])
def test_other_pooling_methods_match_reference(pooling, stock_checkpoint, tmp_path):
    gritlm = pytest.importorskip("gritlm")
    from grit_hf import convert_checkpoint

    path = convert_checkpoint(stock_checkpoint("llama"), tmp_path / "grit", pooling_method=pooling)
    model = GritLMForCausalLM.from_pretrained(path)
    reference = gritlm.GritLM(str(stock_checkpoint("llama")), attn="bbcc", device="cpu", pooling_method=pooling)
    ours = model.encode(TEXTS, instruction=INSTRUCTION)
    ref = reference.encode(TEXTS, instruction="<|user|>\n" + INSTRUCTION + "\n<|embed|>\n")
    assert np.abs(ours - ref).max() <= PARITY


def test_return_states_are_the_texts_own(grit_checkpoint):
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"))
    embeddings, states = model.encode(TEXTS, return_states=True, batch_size=4)
    assert len(states) == len(TEXTS)
    for text, state, embedding in zip(TEXTS, states, embeddings):
        alone, (single_state,) = model.encode([text], return_states=True)
        assert np.abs(alone[0] - embedding).max() <= PARITY
        assert torch.equal(state.input_ids, single_state.input_ids)
        assert (
            state.cache.get_seq_length() == state.num_tokens == len(model.tokenizer("<|embed|>\n" + text)["input_ids"])
        )
        for (k, v), (k1, v1) in zip(state.layers(), single_state.layers()):
            assert k.shape == k1.shape and k.shape[0] == 1
            assert_close(k, k1, rtol=0, atol=1e-5)
            assert_close(v, v1, rtol=0, atol=1e-5)
        assert not state.is_causal


def test_eager_and_sdpa_agree(grit_checkpoint):
    path = grit_checkpoint("qwen2")
    sdpa = GritLMForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    eager = GritLMForCausalLM.from_pretrained(path, attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    assert (
        np.abs(sdpa.encode(TEXTS, instruction=INSTRUCTION) - eager.encode(TEXTS, instruction=INSTRUCTION)).max()
        <= PARITY
    )


def test_bf16_pools_in_fp32(grit_checkpoint):
    path = grit_checkpoint("llama")
    fp32 = GritLMForCausalLM.from_pretrained(path).encode(TEXTS)
    bf16_model = GritLMForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    bf16 = bf16_model.encode(TEXTS)
    assert bf16.dtype == np.float32
    cosine = (fp32 * bf16).sum(axis=1)
    assert cosine.min() >= 0.99


# -- bad input ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(grit_checkpoint):
    return GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"))


def test_empty_list_gives_empty_array(llama):
    out = llama.encode([])
    assert out.shape == (0, 64) and out.dtype == np.float32


@pytest.mark.parametrize("bad, kind", [(None, "NoneType"), (3, "int"), (b"bytes", "bytes")])
def test_non_strings_are_type_errors_naming_index(llama, bad, kind):
    with pytest.raises(TypeError, match=rf"`sentences\[1\]` must be a str, got {kind}"):
        llama.encode(["fine", bad])


def test_non_sequence_is_a_type_error(llama):
    with pytest.raises(TypeError, match="`sentences` must be a str or a list of str"):
        llama.encode(42)
    with pytest.raises(TypeError, match="`instruction` must be a str"):
        llama.encode(["a"], instruction=None)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_batch_size_and_max_length(llama, bad):
    with pytest.raises(ValueError, match="`batch_size`"):
        llama.encode(["a"], batch_size=bad)
    with pytest.raises(ValueError, match="`max_length`"):
        llama.encode(["a"], max_length=bad)


def test_long_text_is_truncated_with_a_warning_per_call(llama, caplog):
    long_text = "word " * 400
    with caplog.at_level(logging.WARNING, logger="grit_hf.formatting"):
        out = llama.encode([long_text, long_text + "more", "short"], max_length=32)
        llama.encode([long_text], max_length=32)
    warnings = [r.message for r in caplog.records if "truncated" in r.message]
    assert len(warnings) == 2 and "2 of 3 text(s)" in warnings[0] and "1 of 1 text(s)" in warnings[1]
    assert np.isfinite(out).all()
    # truncation keeps the first tokens: same as encoding the text cut to 32 tokens
    ids = llama.tokenizer("<|embed|>\n" + long_text)["input_ids"][:32]
    cut = llama.tokenizer.decode(ids[len(llama.tokenizer("<|embed|>\n")["input_ids"]) :])
    assert np.abs(out[0] - llama.encode(cut, max_length=32)).max() <= PARITY


def test_instruction_leaving_no_room_is_a_value_error(llama):
    with pytest.raises(ValueError, match="leaving no room for text"):
        llama.encode(["a"], instruction="word " * 50, max_length=16)


def test_empty_string_is_the_zero_vector(llama):
    out = llama.encode(["", "text"])
    assert np.array_equal(out[0], np.zeros(64, dtype=np.float32))
    assert abs(np.linalg.norm(out[1]) - 1) < 1e-5


def test_progress_bar_can_be_shown_and_hidden(llama, capsys):
    llama.encode(TEXTS, batch_size=1, show_progress_bar=True)
    assert "Embedding" in capsys.readouterr().err
    llama.encode(TEXTS, batch_size=1, show_progress_bar=False)
    assert "Embedding" not in capsys.readouterr().err


def test_model_without_folder_needs_a_tokenizer():
    from transformers import LlamaConfig

    model = GritLMForCausalLM(
        GritLMConfig(
            text_config=LlamaConfig(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50
            )
        )
    )
    with pytest.raises(ValueError, match="set `model.tokenizer"):
        model.encode("a")
    with pytest.raises(TypeError, match="`tokenizer` must be"):
        model.tokenizer = "not a tokenizer"
