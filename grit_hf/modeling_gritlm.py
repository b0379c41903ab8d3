"""GRIT models: one decoder that embeds (bidirectional attention, pooled text tokens) and generates (causal)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    GenerationMixin,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

from .attention import ATTENTION_NAME
from .cache.states import KVStates, split_batch_cache
from .configuration_gritlm import GritLMConfig
from .folders.resolve import known_grit_checkpoint, resolve_checkpoint
from .folders.sentence_transformers import write_checkpoint_files
from .formatting import EmbeddingInputs, length_sorted_batches, pad_right, pad_token_id, tokenize_with_prefix
from .locking import model_lock
from .pooling import pool, text_token_mask
from .quantization import finish_quantized_loading, prepare_quantized_loading
from .validation import check_positive_int, check_text, check_texts

logger = logging.get_logger(__name__)

__all__ = ["GritLMPreTrainedModel", "GritLMModel", "GritLMForCausalLM", "load_grit_config"]


def load_grit_config(path: str | os.PathLike, **kwargs) -> GritLMConfig:
    """Read the config of a GRIT checkpoint, or wrap the config of a stock decoder checkpoint into a `GritLMConfig`.

    Only `config.json` is read: no code from `path` is run, and an `auto_map` (e.g. GritLM/GritLM-7B's) is ignored.
    """
    config_dict, _ = PreTrainedConfig.get_config_dict(str(path), **kwargs)
    model_type = config_dict.get("model_type")
    if model_type == GritLMConfig.model_type:
        return GritLMConfig.from_pretrained(str(path), **kwargs)
    if model_type is None:
        raise ValueError(f"{path}/config.json has no `model_type`; cannot tell which decoder it holds.")
    if os.path.isdir(path) and (reason := known_grit_checkpoint(path)):
        logger.info(
            f"{path} is a GRIT model ({reason}): loading it with GRIT semantics (bidirectional embedding attention, "
            "mean over the text tokens, GritLM-7B's templates); its remote code is not run."
        )
    config_dict = {k: v for k, v in config_dict.items() if k not in ("auto_map", "architectures", "model_type")}
    try:
        text_config = AutoConfig.for_model(model_type, **config_dict)
    except ValueError as error:
        raise ValueError(f"{path} holds a `{model_type}` model, which transformers does not know: {error}") from None
    return GritLMConfig(text_config=text_config)


def stock_key_mapping(text_config: PreTrainedConfig) -> dict[str, str]:
    """How the weight names of the family's stock `*ForCausalLM` map onto GRIT's (`model.*`, `lm_head.*`): empty for
    families that already use them (Llama, Mistral, Qwen, Gemma, ...), e.g. `gpt_neox.*` -> `model.*` and
    `embed_out.*` -> `lm_head.*` for GPT-NeoX. Found from the stock class itself (built on the meta device).
    transformers applies it when loading and reverses it when saving, so GRIT checkpoints keep the stock names."""
    stock_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(text_config), None)
    if stock_class is None:
        return {}
    with torch.device("meta"):
        stock = stock_class(text_config)
    head = stock.get_output_embeddings()
    head_name = next((name for name, module in stock.named_modules() if module is head), "lm_head")
    mapping = {}
    if stock_class.base_model_prefix != "model":
        mapping[rf"^{stock_class.base_model_prefix}\."] = "model."
    if head_name != "lm_head":
        mapping[rf"^{head_name}\."] = "lm_head."
    return mapping


class GritLMPreTrainedModel(PreTrainedModel):
    """A decoder plus its LM head, with `encode()`. Weights keep the stock layout (`model.*`, `lm_head.*`), so the
    same files load into the base architecture's own `*ForCausalLM`."""

    config: GritLMConfig
    config_class = GritLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def __init__(self, config: GritLMConfig):
        super().__init__(config)
        self.model = AutoModel.from_config(config.text_config)
        self._no_split_modules = list(getattr(self.model, "_no_split_modules", None) or [])
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self._tied_weights_keys = {"lm_head.weight": f"model.{self._input_embeddings_name()}.weight"}
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.post_init()

    def _input_embeddings_name(self) -> str:
        """The decoder's name for its input embeddings, found through `get_input_embeddings` (e.g. `embed_tokens`,
        `wte`), so tied LM heads work for any family."""
        embeddings = self.model.get_input_embeddings()
        return next(name for name, module in self.model.named_modules() if module is embeddings)

    @property
    def forward_lock(self):
        """The re-entrant lock held around every forward pass of this model (`grit_hf.locking`)."""
        return model_lock(self)

    @property
    def max_positions(self) -> int | None:
        """The decoder's maximum number of positions, if its config says."""
        return getattr(self.config.get_text_config(), "max_position_embeddings", None)

    def _init_weights(self, module: nn.Module) -> None:
        self.model._init_weights(module)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load a GRIT checkpoint, or a stock decoder checkpoint of any family as a GRIT model (no remote code).

        `pretrained_model_name_or_path` is a folder, a Hugging Face Hub name (e.g. `"GritLM/GritLM-7B"`, read from
        the local HF cache when offline), `"default"` (the offline default model) or `"default-base"`.
        """
        name = pretrained_model_name_or_path
        if name is not None and not (isinstance(name, (str, os.PathLike)) and os.path.isdir(name)):
            pretrained_model_name_or_path = resolve_checkpoint(name, revision=kwargs.pop("revision", None))
        if config is None and pretrained_model_name_or_path is not None:
            config_kwargs = {k: kwargs[k] for k in ("subfolder", "cache_dir", "token") if k in kwargs}
            config = load_grit_config(pretrained_model_name_or_path, **config_kwargs)
        if config is not None and "key_mapping" not in kwargs:
            kwargs["key_mapping"] = stock_key_mapping(config.text_config) or None
        if getattr(config, "quantization_config", None) is not None or "quantization_config" in kwargs:
            prepare_quantized_loading()
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        if getattr(model.config, "quantization_config", None) is not None:
            finish_quantized_loading(model)
        if model.config.get_text_config()._attn_implementation == "sdpa":
            model.set_attn_implementation(ATTENTION_NAME)  # sdpa, with a fast path for prefills after a cache
        return model

    def save_pretrained(self, save_directory, *args, tokenizer: PreTrainedTokenizerBase | None = None, **kwargs):
        """`PreTrainedModel.save_pretrained`, then (main process only) the files every GRIT checkpoint carries:
        sentence-transformers files, the remote-code shim and a generation config (`write_checkpoint_files`).

        `tokenizer` is the checkpoint's tokenizer, used to check the prompts of the sentence-transformers files
        (default: the one this model embeds with, if it has one; the tokenizer itself is saved by its own
        `save_pretrained`, or by `grit_hf.save_grit_checkpoint`)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            tokenizer = tokenizer if tokenizer is not None else self._tokenizer
            write_checkpoint_files(save_directory, self.config, tokenizer=tokenizer)
        return result

    # -- tokenizer ---------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer saved with the checkpoint, loaded on first use (or set one with `model.tokenizer = tok`)."""
        if self._tokenizer is None:
            if not self.name_or_path:
                raise ValueError("This model was not loaded from a folder: set `model.tokenizer = tokenizer` first.")
            self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(f"`tokenizer` must be a transformers tokenizer, got {type(tokenizer).__name__}.")
        self._tokenizer = tokenizer

    # -- embedding ---------------------------------------------------------------------------------------------------
    def embedding_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, is_causal: bool | None = None, **kwargs
    ) -> BaseModelOutputWithPast:
        """Run the decoder in embedding mode (bidirectional unless the config or `is_causal` says causal), under
        `forward_lock` (the per-call `is_causal` writes the decoder config's flag while the pass runs)."""
        if is_causal is None:
            is_causal = self.config.is_causal_embedding
        with self.forward_lock:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, is_causal=is_causal, **kwargs)

    def pool(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, prefix_lengths, normalize: bool | None = None
    ) -> torch.Tensor:
        """Pool (fp32) over the text tokens and L2-normalise as the config says (or as `normalize` says): the one
        pooling of `encode`, the trainer and sentence-transformers' checks."""
        embeddings = pool(hidden_states, text_token_mask(attention_mask, prefix_lengths), self.config.pooling_method)
        if self.config.normalize if normalize is None else normalize:
            embeddings = nn.functional.normalize(embeddings, dim=-1)
        return embeddings

    def tokenize_for_embedding(
        self, texts: list[str], instruction: str = "", max_length: int = 512, warn: bool = True
    ) -> EmbeddingInputs:
        """Tokenize `texts` as `encode` does: the checkpoint's query template with `instruction` (or its document
        template when `instruction` is empty) before each text, special tokens added, truncated to `max_length`
        (clamped to the model's position limit; truncation is logged unless `warn=False`). Texts are not
        type-checked here."""
        check_text(instruction, "instruction")
        check_positive_int(max_length, "max_length")
        if self.max_positions is not None and max_length > self.max_positions:
            max_length = self.max_positions
        prefix = self.config.format_query_prefix(instruction)
        return tokenize_with_prefix(self.tokenizer, prefix, texts, max_length, warn=warn)

    @torch.inference_mode()
    def embed_inputs(
        self,
        inputs: EmbeddingInputs,
        batch_size: int = 32,
        normalize: bool | None = None,
        show_progress_bar: bool | None = None,
        return_states: bool = False,
        is_causal: bool | None = None,
    ) -> tuple[torch.Tensor, list[KVStates] | None]:
        """Embed tokenized texts (`tokenize_for_embedding`): `((n, dim) float32 tensor on the model's device, states)`
        where `states` is one `KVStates` per text if `return_states`, else `None`. See `encode`."""
        check_positive_int(batch_size, "batch_size")
        normalize = self.config.normalize if normalize is None else normalize
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        token_ids = inputs.token_ids
        embeddings = torch.empty((len(token_ids), self.config.text_config.hidden_size), device=self.device)
        states: list[KVStates | None] = [None] * len(token_ids)
        pad_id = pad_token_id(self.tokenizer)
        causal = self.config.is_causal_embedding if is_causal is None else is_causal
        batches = length_sorted_batches([len(ids) for ids in token_ids], batch_size)
        for rows in tqdm(batches, desc="Embedding", unit="batch", disable=not show_progress_bar):
            input_ids, attention_mask = pad_right([token_ids[i] for i in rows], pad_id, self.device)
            outputs = self.embedding_forward(input_ids, attention_mask, is_causal=causal, use_cache=return_states)
            embeddings[rows] = self.pool(outputs.last_hidden_state, attention_mask, inputs.prefix_length, normalize)
            if return_states:
                lengths = [len(token_ids[i]) for i in rows]
                for row, kv in zip(rows, split_batch_cache(outputs.cache, input_ids, lengths, causal)):
                    states[row] = kv
        return embeddings, (states if return_states else None)

    def encode(
        self,
        sentences: str | Sequence[str],
        instruction: str = "",
        batch_size: int = 32,
        max_length: int = 512,
        normalize: bool | None = None,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        return_states: bool = False,
        is_causal: bool | None = None,
    ) -> np.ndarray | torch.Tensor | tuple[np.ndarray | torch.Tensor, list[KVStates]]:
        """Embed texts the GRIT way.

        Each text is formatted with the checkpoint's template (`query_template` with `instruction`, or
        `document_template` when `instruction` is empty), run through the decoder with bidirectional attention, and
        mean-pooled in fp32 over its text tokens only (BOS, format and instruction tokens excluded), then L2-normalised.
        Safe to call from several threads (forward passes are serialised per model).

        Args:
            sentences: a text or a list of texts.
            instruction: the plain task instruction, e.g. "Given a question, retrieve passages that answer it".
            batch_size: most texts per forward pass (batches hold texts of similar length, longest first, so
                that little padding is computed; the output keeps the input order).
            max_length: tokens per text, prefix included, at most the model's position limit; longer texts are
                truncated (with a warning).
            normalize: L2-normalise (defaults to the config's `normalize`).
            convert_to_tensor: return a float32 `torch.Tensor` on the model's device instead of a numpy array.
            show_progress_bar: show a tqdm bar; `None` shows it when the logger is at INFO or DEBUG.
            return_states: also return one `KVStates` per text (its key/value states from this same pass).
            is_causal: override the config's embedding attention for this call.

        Returns:
            `(n, dim)` float32 embeddings (`(dim,)` for a single string), and the list of `KVStates` if
            `return_states`. The empty text has no text tokens and embeds as the zero vector.

        Example:

        ```python
        >>> model.encode(["The capital of France is Paris."], instruction="Retrieve relevant facts").shape
        (1, 576)
        ```
        """
        texts, single = check_texts(sentences)
        inputs = self.tokenize_for_embedding(texts, instruction, max_length)
        embeddings, states = self.embed_inputs(
            inputs, batch_size, normalize, show_progress_bar, return_states=return_states, is_causal=is_causal
        )
        result = embeddings if convert_to_tensor else embeddings.cpu().numpy()
        if single:
            result = result[0]
        if return_states:
            return result, (states[0] if single else states)
        return result


class GritLMModel(GritLMPreTrainedModel):
    """The embedding-first entry point (`AutoModel`): `forward` runs the decoder with the embedding attention
    (bidirectional by default) and returns fp32 hidden states, ready for fp32 pooling (e.g. sentence-transformers'
    `Pooling`). The LM head is kept, so saving this model keeps a checkpoint that still generates."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        kwargs.pop("token_type_ids", None)
        outputs = self.embedding_forward(input_ids, attention_mask, is_causal=is_causal, **kwargs)
        outputs.last_hidden_state = outputs.last_hidden_state.float()
        return outputs


class GritLMForCausalLM(GritLMPreTrainedModel, GenerationMixin):
    """The generative entry point (`AutoModelForCausalLM`): `forward` is the base decoder's causal LM forward, so
    `generate()` matches the base model token for token; `encode()` embeds with the same weights."""

    # transformers' own models take the cache's former name too (and drop it, with a warning, next to `cache=None`).
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        is_causal: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`causal_lm_forward` under `forward_lock` (see `grit_hf.locking`)."""
        with self.forward_lock:
            return self.causal_lm_forward(
                input_ids, attention_mask, position_ids, cache, inputs_embeds, labels, use_cache, logits_to_keep,
                is_causal, **kwargs,
            )  # fmt: skip

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def causal_lm_forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        is_causal: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """The LM forward without the lock (what a compiled decode step traces; callers hold `forward_lock`)."""
        if is_causal is not None:
            kwargs["is_causal"] = is_causal
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
