"""grit-hf: GRIT (Generative Representational Instruction Tuning) for the Hugging Face stack.

`import grit_hf` registers the model type `gritlm` with `AutoConfig`, `AutoModel` and `AutoModelForCausalLM` and the
`grit_sdpa` attention (`grit_hf.attention`) with transformers' attention interfaces, and exports the public entry
points.
"""

from __future__ import annotations

from .import_noise import quiet_optional_backend_imports

quiet_optional_backend_imports()  # before transformers imports torchao

from transformers import AttentionInterface, AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface

from .attention import ATTENTION_NAME, offset_causal_sdpa_attention, offset_causal_sdpa_mask
from .cache import KVStates
from .checkpoint.conversion import (
    convert_checkpoint,
    export_stock_sentence_transformer,
    grit_checkpoint_folder,
    sentence_transformer,
)
from .checkpoint.loading import load_model
from .checkpoint.saving import save_grit_checkpoint
from .configuration_gritlm import GritLMConfig
from .folders.default_model import default_base_path, default_model_path
from .folders.resolve import resolve_checkpoint
from .generation.chat import chat
from .modeling_gritlm import GritLMForCausalLM, GritLMModel, GritLMPreTrainedModel, load_grit_config
from .rag import GritRAG

__version__ = "0.2.0"

AttentionInterface.register(ATTENTION_NAME, offset_causal_sdpa_attention)
AttentionMaskInterface.register(ATTENTION_NAME, offset_causal_sdpa_mask)
AutoConfig.register(GritLMConfig.model_type, GritLMConfig, exist_ok=True)
AutoModel.register(GritLMConfig, GritLMModel, exist_ok=True)
AutoModelForCausalLM.register(GritLMConfig, GritLMForCausalLM, exist_ok=True)

__all__ = [
    "GritLMConfig",
    "GritLMModel",
    "GritLMForCausalLM",
    "GritLMPreTrainedModel",
    "KVStates",
    "GritRAG",
    "chat",
    "load_grit_config",
    "load_model",
    "resolve_checkpoint",
    "convert_checkpoint",
    "export_stock_sentence_transformer",
    "save_grit_checkpoint",
    "grit_checkpoint_folder",
    "sentence_transformer",
    "default_model_path",
    "default_base_path",
    "__version__",
]
