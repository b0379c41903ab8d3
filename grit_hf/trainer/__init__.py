"""GRIT training: `GRITConfig` + `GRITTrainer` (a TRL `SFTTrainer` with the joint embedding + generative loss)."""

from __future__ import annotations

from transformers.utils import logging

from ..checkpoint.adapters import load_adapter_model, merge_adapter
from .data import load_embedding_dataset, load_generative_dataset
from .embedding_forward import add_embedding_forward
from .grit_config import GRIT_MODES, GRITConfig
from .grit_trainer import GRITTrainer
from .losses import aggregate_generative_loss, info_nce_loss

logger = logging.get_logger(__name__)

__all__ = [
    "GRITConfig",
    "GRITTrainer",
    "GRIT_MODES",
    "add_embedding_forward",
    "aggregate_generative_loss",
    "info_nce_loss",
    "load_adapter_model",
    "merge_adapter",
    "load_embedding_dataset",
    "load_generative_dataset",
]
