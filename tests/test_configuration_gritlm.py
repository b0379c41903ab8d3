from __future__ import annotations

import json

import pytest
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig

from grit_hf import GritLMConfig
from grit_hf.configuration_gritlm import ATTENTIONS, POOLING_METHODS


def tiny_llama() -> LlamaConfig:
    return LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50)


def test_defaults_are_gritlm_7b_formats():
    config = GritLMConfig(text_config=tiny_llama())
    assert config.pooling_method == "mean" and config.normalize and config.embedding_attention == "bidirectional"
    assert config.format_query_prefix("Retrieve X") == "<|user|>\nRetrieve X\n<|embed|>\n"
    assert config.format_query_prefix("") == "<|embed|>\n"


@pytest.mark.parametrize(
    "field, value",
    [("pooling_method", "cls"), ("embedding_attention", "sideways"), ("cache_attention", "both")],
)
def test_unknown_settings_are_value_errors(field, value):
    with pytest.raises(ValueError, match=rf"`{field}`: '{value}'. Valid choices are: \('"):
        GritLMConfig(text_config=tiny_llama(), **{field: value})


def test_templates_are_checked():
    with pytest.raises(ValueError, match="`query_template` must contain"):
        GritLMConfig(text_config=tiny_llama(), query_template="<|embed|>\n")
    with pytest.raises(ValueError, match="must not contain"):
        GritLMConfig(text_config=tiny_llama(), document_template="<|embed|>\n{text}")


@pytest.mark.parametrize("pooling", POOLING_METHODS)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_save_load_round_trip(tmp_path, pooling, attention):
    config = GritLMConfig(
        text_config=MistralConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        pooling_method=pooling,
        embedding_attention=attention,
        query_template="Q: {instruction}\n",
        normalize=False,
    )
    config.save_pretrained(tmp_path)
    loaded = GritLMConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.text_config.model_type == "mistral"
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gritlm"


def test_stock_config_class_still_reads_the_decoder(tmp_path):
    """LlamaForCausalLM.from_pretrained(grit_dir) works because the Llama config is found under text_config."""
    GritLMConfig(text_config=tiny_llama()).save_pretrained(tmp_path)
    assert LlamaForCausalLM.config_class.from_pretrained(tmp_path).hidden_size == 32


def test_tied_embeddings_follow_the_decoder():
    config = GritLMConfig(
        text_config=LlamaConfig(
            tie_word_embeddings=True, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    )
    assert config.tie_word_embeddings
