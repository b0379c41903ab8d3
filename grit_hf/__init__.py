"""grit-hf: GRIT (Generative Representational Instruction Tuning) for the Hugging Face stack.

`import grit_hf` registers the model type `gritlm` with `AutoConfig`, `AutoModel` and `AutoModelForCausalLM`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import KVStates
from .configuration_gritlm import GritLMConfig
from .modeling_gritlm import GritLMForCausalLM, GritLMModel, GritLMPreTrainedModel, load_grit_config

__version__ = "0.1.0"

AutoConfig.register(GritLMConfig.model_type, GritLMConfig, exist_ok=True)
AutoModel.register(GritLMConfig, GritLMModel, exist_ok=True)
AutoModelForCausalLM.register(GritLMConfig, GritLMForCausalLM, exist_ok=True)

from . import sentence_transformers as _sentence_transformers  # noqa: E402,F401  (writes ST files on every save)

__all__ = [
    "GritLMConfig",
    "GritLMModel",
    "GritLMForCausalLM",
    "GritLMPreTrainedModel",
    "KVStates",
    "load_grit_config",
    "__version__",
]
