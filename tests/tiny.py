"""Tiny random decoder checkpoints and tokenizers for tests (built from configs; nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

# The largest |difference| tolerated between fp32 GRIT embeddings computed two ways (grit-hf vs the reference `gritlm`,
# encode vs sentence-transformers, batched vs alone); the README states it. Measured: <= 6e-8 (rounding of fp32 sums).
PARITY = 2e-7

CORPUS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Given a question, retrieve passages that answer the question.",
    "<|user|>\n<|embed|>\n<|assistant|>\n",
    "change group ownership of files; list directory contents; copy files and directories",
    "The quick brown fox jumps over the lazy dog 0123456789 times!",
] * 4

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 4096}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
    "mixtral": (MixtralConfig, MixtralForCausalLM, {"num_local_experts": 4, "num_experts_per_tok": 2}),
    # tied embeddings, scaled inputs, GeGLU
    "gemma": (GemmaConfig, GemmaForCausalLM, {"head_dim": 16, "tie_word_embeddings": True}),
    # other weight names (gpt_neox.embed_in, embed_out), partial rotary, tied here to test tying through
    # get_input_embeddings
    "gpt_neox": (
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        {"rotary_pct": 0.5, "tie_word_embeddings": True, "num_key_value_heads": None},
    ),
}


def make_tokenizer(add_bos: bool = True) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer; with `add_bos` it prepends `<s>` like Llama/Mistral tokenizers."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_stock_checkpoint(path: str | Path, family: str = "llama", add_bos: bool = True, seed: int = 0, **overrides):
    """Save a tiny random stock `*ForCausalLM` of `family` with its tokenizer in `path`; return the path."""
    config_class, model_class, extra = FAMILIES[family]
    tokenizer = make_tokenizer(add_bos)
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    kwargs.update(extra)
    kwargs.update(overrides)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    torch.manual_seed(seed)
    model = model_class(config_class(**kwargs)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
