"""MTEB encoder for GRIT models, following mteb's `EncoderProtocol` (mteb >= 2).

Instructions are chosen as mteb's own GritLM wrapper does (`mteb/models/model_implementations/gritlm_models.py`:
`InstructSentenceTransformerModel` + `gritlm_instruction`): the task's instruction from its metadata (or a
`prompts_dict` entry for the task name, task type or prompt type, in mteb's priority order) goes to queries and to
both sides of symmetric tasks; documents of asymmetric tasks (`prompt_type="document"`: retrieval, reranking) get no
instruction unless the task defines a document prompt. The instruction is then formatted by the checkpoint's own
`query_template` (`document_template` when empty), which for GritLM-7B-style checkpoints is exactly mteb's
`gritlm_instruction`: `"<|user|>\\n{instruction}\\n<|embed|>\\n"` / `"<|embed|>\\n"`.

Example:

```python
>>> import mteb
>>> from grit_hf.mteb import GritMTEBEncoder
>>> encoder = GritMTEBEncoder("default")
>>> result = mteb.evaluate(encoder, mteb.get_tasks(tasks=["SciFact"]), cache=None)
```
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers.utils import logging

try:
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType
except ImportError as error:  # pragma: no cover - exercised only without mteb
    raise ImportError("grit_hf.mteb needs mteb: pip install 'mteb>=2.20'") from error

from .checkpoint.loading import load_model
from .folders.resolve import checkpoint_display_name, resolve_checkpoint
from .modeling_gritlm import GritLMPreTrainedModel
from .validation import check_positive_int

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

logger = logging.get_logger(__name__)

__all__ = ["GritMTEBEncoder", "grit_model_meta"]


def grit_model_meta(model: GritLMPreTrainedModel, path: str | os.PathLike | None = None) -> ModelMeta:
    """An mteb `ModelMeta` describing a loaded GRIT model; `meta.load_model()` reloads it from `path`."""
    if not isinstance(model, GritLMPreTrainedModel):
        raise TypeError(f"`model` must be a GRIT model, got {type(model).__name__}.")
    text_config = model.config.text_config
    source = str(path or model.name_or_path or "")
    return ModelMeta(
        loader=GritMTEBEncoder,
        loader_kwargs={"model_path": source} if source else {},
        name=f"grit-hf/{checkpoint_display_name(source).split('/')[-1] if source else 'model'}",
        revision=None,
        release_date=None,
        languages=None,
        n_parameters=sum(p.numel() for p in model.parameters()),
        memory_usage_mb=None,
        max_tokens=getattr(text_config, "max_position_embeddings", None),
        embed_dim=text_config.hidden_size,
        license=None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch", "GritLM"],
        similarity_fn_name=ScoringFunction.COSINE,
        use_instructions=True,
        training_datasets=None,
        modalities=["text"],
        model_type=["dense"],
    )


class GritMTEBEncoder(AbsEncoder):
    """MTEB encoder (`mteb.models.EncoderProtocol`) over a GRIT model's `encode`.

    Args:
        model_name: a GRIT checkpoint folder, a stock decoder folder, `"default"`, or a loaded GRIT model.
        revision: the Hub revision when `model_name` is a Hub name (part of mteb's loader signature).
        device: torch device (default: cuda if available, else cpu).
        model_path: folder to load instead of `model_name` (used by `grit_model_meta(...).load_model()`).
        dtype: weights dtype when loading (pooling is fp32 in any case).
        batch_size: default texts per forward pass (mteb's `encode_kwargs["batch_size"]` overrides it).
        max_length: tokens per text, format prefix included.
        is_causal: override the checkpoint's embedding attention.
        prompts_dict: instructions by task name, task type or prompt type, as in mteb's wrappers.
    """

    def __init__(
        self,
        model_name: str | os.PathLike | GritLMPreTrainedModel = "default",
        revision: str | None = None,
        *,
        device: str | None = None,
        model_path: str | os.PathLike | None = None,
        dtype: str | torch.dtype = "auto",
        batch_size: int = 32,
        max_length: int = 512,
        is_causal: bool | None = None,
        prompts_dict: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            logger.info(f"GritMTEBEncoder ignores the arguments {sorted(kwargs)}.")
        source = model_path if model_path is not None else model_name
        if isinstance(source, (str, os.PathLike)):
            path = resolve_checkpoint(source, revision=revision)
            model = load_model(path, device=device, dtype=dtype)
        elif isinstance(source, GritLMPreTrainedModel):
            model, path = source, None
        else:
            raise TypeError(f"`model_name` must be a folder, 'default' or a GRIT model, got {type(source).__name__}.")
        check_positive_int(batch_size, "batch_size")
        self.model = model
        self.batch_size, self.max_length, self.is_causal = batch_size, max_length, is_causal
        self.prompts_dict = self.validate_task_to_prompt_name(prompts_dict) if prompts_dict else None
        self.mteb_model_meta = grit_model_meta(model, path)

    def _has_custom_prompt(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> bool:
        keys = (task_metadata.name, task_metadata.type, prompt_type.value if prompt_type else None)
        return bool(self.prompts_dict) and any(key in self.prompts_dict for key in keys if key)

    def get_instruction(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str:
        """The plain instruction for these inputs: none for documents of asymmetric tasks (unless the task or
        `prompts_dict` defines one), otherwise mteb's own choice (`AbsEncoder.get_instruction`)."""
        if prompt_type == PromptType.document and not self._has_custom_prompt(task_metadata, prompt_type):
            task_prompt = task_metadata.prompt
            if not (isinstance(task_prompt, dict) and task_prompt.get(PromptType.document.value)):
                return ""
        return super().get_instruction(task_metadata, prompt_type)

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed the texts of `inputs` (mteb's `DataLoader[BatchedInput]`) with the task's instruction."""
        instruction = self.get_instruction(task_metadata, prompt_type)
        texts = [text for batch in inputs for text in batch["text"]]
        logger.info(f"{task_metadata.name} ({prompt_type}): {len(texts)} texts, instruction {instruction!r}")
        return self.model.encode(
            texts,
            instruction=instruction,
            batch_size=kwargs.get("batch_size") or self.batch_size,
            max_length=self.max_length,
            show_progress_bar=kwargs.get("show_progress_bar"),
            is_causal=self.is_causal,
        )
