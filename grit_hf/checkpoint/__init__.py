"""Loading, saving and converting GRIT models (above the model classes; the folders and names below them are
`grit_hf.folders`).

- `loading.py`: `load_model` (resolve a name, load on a device in a dtype, eval mode);
- `saving.py`: `save_grit_checkpoint` (tokenizer, weights and the files every checkpoint carries);
- `conversion.py`: stock checkpoints into GRIT ones, `sentence_transformer`, the stock-config export;
- `adapters.py`: `load_adapter_model`, `merge_adapter` (PEFT adapters by name or folder).
"""

from __future__ import annotations

from .adapters import load_adapter_model, merge_adapter
from .conversion import (
    convert_checkpoint,
    export_stock_sentence_transformer,
    grit_checkpoint_folder,
    sentence_transformer,
)
from .loading import load_model
from .saving import save_grit_checkpoint

__all__ = [
    "load_model",
    "save_grit_checkpoint",
    "convert_checkpoint",
    "export_stock_sentence_transformer",
    "grit_checkpoint_folder",
    "sentence_transformer",
    "load_adapter_model",
    "merge_adapter",
]
