"""GRIT checkpoint folders, below the model classes: where a name leads (`resolve`), the offline default model's folder
(`default_model`), the files every checkpoint carries for sentence-transformers and remote code
(`sentence_transformers`), building a folder once (`build`) and merging a PEFT adapter into one (`adapters`).

Nothing here builds a GRIT model class, so `GritLMPreTrainedModel.from_pretrained` can resolve names through it;
loading, saving and converting models is `grit_hf.checkpoint`, one floor above the model classes.
"""

from __future__ import annotations

from .default_model import default_base_path, default_model_path
from .resolve import resolve_checkpoint

__all__ = ["resolve_checkpoint", "default_model_path", "default_base_path"]
