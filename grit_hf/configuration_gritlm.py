"""Configuration of a GRIT model: any decoder config (``text_config``) plus the GRIT embedding settings."""

from __future__ import annotations

from typing import Literal, get_args

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

logger = logging.get_logger(__name__)

PoolingMethod = Literal["mean", "weightedmean", "lasttoken"]
Attention = Literal["bidirectional", "causal"]

POOLING_METHODS: tuple[str, ...] = get_args(PoolingMethod)
ATTENTIONS: tuple[str, ...] = get_args(Attention)

# GritLM-7B's formats (plain text, not special tokens). See GRIT_SPEC.md.
GRITLM_QUERY_TEMPLATE = "<|user|>\n{instruction}\n<|embed|>\n"
GRITLM_DOCUMENT_TEMPLATE = "<|embed|>\n"
GRITLM_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)


@strict
class GritLMConfig(PreTrainedConfig):
    r"""
    Configuration of a GRIT model: one decoder that embeds (bidirectional attention, pooling over the text tokens) and
    generates (causal attention, LM head).

    > Parameters of the decoder

    text_config (`dict` or `PreTrainedConfig`):
        The config of the wrapped decoder, of any type `AutoConfig` knows (llama, mistral, mixtral, qwen2, qwen3,
        gemma, ...). Defaults to a Llama config.

    > Parameters of the embedding

    pooling_method (`str`, defaults to `"mean"`):
        One of `"mean"` (mean over the text tokens), `"weightedmean"` (position-weighted mean over the text tokens)
        or `"lasttoken"` (the last text token).
    normalize (`bool`, defaults to `True`):
        L2-normalise embeddings.
    embedding_attention (`str`, defaults to `"bidirectional"`):
        Attention used when embedding: `"bidirectional"` (GRIT) or `"causal"`.
    query_template (`str`):
        Prefix put before a text embedded with an instruction; must contain `{instruction}`. Its tokens are excluded
        from pooling. GritLM-7B: `"<|user|>\n{instruction}\n<|embed|>\n"`.
    document_template (`str`):
        Prefix put before a text embedded without an instruction. GritLM-7B: `"<|embed|>\n"`.
    default_query_instruction (`str`):
        The instruction used for queries when none is given (e.g. by sentence-transformers' `encode_query`).

    > Parameters of the generation

    chat_template (`str` or `None`):
        Jinja chat template used when the tokenizer has none. Defaults to GritLM-7B's Tülu-2 style format.
    cache_attention (`str`, defaults to `"causal"`):
        The key/value states RAG caches for a document by default: `"bidirectional"` (the embedding pass's own
        states, one pass per document; set by `GRITTrainer` when the checkpoint was trained with the cache loss) or
        `"causal"` (an extra causal pass per document; exact continuation for any model).
    cache_recompute (`str` or `None`, defaults to `None`):
        The selective recomputation RAG applies by default to bidirectional cached states, `"RULE:AMOUNT"` (e.g.
        `"deviation:0.15"`, `"head:8"`; `grit_hf.generation.recompute`): the setting a checkpoint was trained and
        measured with. `None` recomputes nothing.

    Invalid values raise a `ValueError` naming the field, the value and the valid choices (the choices are the
    fields' `Literal` types).

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from grit_hf import GritLMConfig
    >>> config = GritLMConfig(text_config=LlamaConfig(hidden_size=64, num_hidden_layers=2))
    >>> config.text_config.model_type
    'llama'
    ```
    """

    model_type = "gritlm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    pooling_method: PoolingMethod = "mean"
    normalize: bool = True
    embedding_attention: Attention = "bidirectional"
    query_template: str = GRITLM_QUERY_TEMPLATE
    document_template: str = GRITLM_DOCUMENT_TEMPLATE
    default_query_instruction: str = "Given a question, retrieve passages that answer the question"
    chat_template: str | None = GRITLM_CHAT_TEMPLATE
    cache_attention: Attention = "causal"
    cache_recompute: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # The wrapped decoder decides whether input and output embeddings are tied.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self._check_grit_settings()

    def _check_grit_settings(self) -> None:
        """Raise a `ValueError` naming the bad field, its value and the choices. (The `Literal` annotations are not
        enforced by the strict dataclass here: with postponed annotations it cannot resolve them.)"""
        for name, choices in (
            ("pooling_method", POOLING_METHODS),
            ("embedding_attention", ATTENTIONS),
            ("cache_attention", ATTENTIONS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"Invalid `{name}`: {getattr(self, name)!r}. Valid choices are: {choices}.")
        if self.cache_recompute is not None and not isinstance(self.cache_recompute, str):
            raise ValueError(f"`cache_recompute` must be a 'RULE:AMOUNT' str or None, got {self.cache_recompute!r}.")
        if "{instruction}" not in self.query_template:
            raise ValueError(f"`query_template` must contain '{{instruction}}', got {self.query_template!r}.")
        for name in ("query_template", "document_template"):
            if "{text}" in getattr(self, name):
                raise ValueError(
                    f"`{name}` is the prefix put before the text and must not contain '{{text}}', "
                    f"got {getattr(self, name)!r}."
                )

    @property
    def is_causal_embedding(self) -> bool:
        return self.embedding_attention == "causal"

    def format_query_prefix(self, instruction: str) -> str:
        """The prefix put before a text embedded with `instruction` (the document prefix when it is empty)."""
        if not instruction:
            return self.document_template
        return self.query_template.replace("{instruction}", instruction)


__all__ = ["GritLMConfig", "PoolingMethod", "Attention", "POOLING_METHODS", "ATTENTIONS"]
