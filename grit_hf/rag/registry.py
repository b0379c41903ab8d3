"""One model and one `GritRAG` (with its key/value store) per process for each checkpoint or model object.

The LangChain and LlamaIndex integrations and the server go through `get_shared`, so an embeddings object and a chat
model built on the same checkpoint (or the same loaded model) share the weights and, above all, the cache of document
states: documents embedded by one are reused when the other generates.

Example:

```python
>>> from grit_hf.rag import get_shared
>>> rag = get_shared("default")
>>> get_shared("default") is rag, get_shared(rag.model) is rag
(True, True)
```
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import logging

from ..checkpoint.loading import load_model
from ..folders.default_model import DEFAULT_MODEL_NAME
from ..folders.resolve import DEFAULT_NAMES, checkpoint_display_name, is_model_name, resolve_checkpoint
from ..generation.recompute import Recompute
from ..modeling_gritlm import GritLMPreTrainedModel
from .gritrag import GritRAG

logger = logging.get_logger(__name__)

__all__ = ["get_shared", "release_shared", "clear_shared", "list_shared", "check_model_argument", "model_display_name"]


@dataclass
class _Entry:
    rag: GritRAG
    keys: list[str]
    name: str
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    rag_kwargs: dict[str, Any] = field(default_factory=dict)


_registry: dict[str, _Entry] = {}
_registry_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}
_MISSING = object()


def check_model_argument(model: Any, name: str = "model") -> Any:
    """Return `model` if it is a checkpoint name (a folder, a Hub name, `"default"`) or a grit-hf model; raise
    `TypeError`/`ValueError` naming the argument otherwise. Cheap: nothing is loaded or resolved."""
    if isinstance(model, GritLMPreTrainedModel):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"`{name}` must be a checkpoint folder or Hub name (str or os.PathLike), 'default' or a "
            f"GritLMForCausalLM, got {type(model).__name__}."
        )
    if not is_model_name(model):
        raise ValueError(f"`{name}` must be a checkpoint folder, a Hub name or 'default', got {model!r}.")
    return model


def model_display_name(model: Any) -> str:
    """A readable name for `model` (a name, a folder or a loaded model) without loading anything."""
    if isinstance(model, GritLMPreTrainedModel):
        return checkpoint_display_name(model.name_or_path) if model.name_or_path else type(model).__name__
    if str(model) in DEFAULT_NAMES:
        return DEFAULT_MODEL_NAME + ("" if str(model) == "default" else "-base")
    return checkpoint_display_name(model)


def _check_same(entry: _Entry, load_kwargs: dict[str, Any], rag_kwargs: dict[str, Any]) -> None:
    """Raise if a later caller asks for other explicit settings than the shared instance has."""
    requested = [
        ("loading argument", k, v, entry.load_kwargs.get(k, _MISSING))
        for k, v in load_kwargs.items()
        if k != "revision"  # part of the key: the same resolved snapshot folder is the same checkpoint
    ]
    requested += [
        ("GritRAG argument", k, Recompute.parse(v) if k == "recompute" else v,
         getattr(entry.rag, k, entry.rag_kwargs.get(k, _MISSING)))
        for k, v in rag_kwargs.items()
    ]  # fmt: skip
    for what, key, value, actual in requested:
        if actual is not value and actual != value:
            have = "without it" if actual is _MISSING else f"with `{key}`={actual!r}"
            raise ValueError(
                f"The shared instance of {entry.name!r} was built {have}, but {what} `{key}`={value!r} was "
                "requested. One checkpoint or model object means one shared instance: use the same settings, or "
                "call `release_shared(...)` first."
            )


def _key(model: Any, revision: str | None = None) -> str:
    """The registry key: the model object's id, or the folder a name resolves to (a Hub name at `revision`: its
    snapshot folder in the HF cache, so `"ORG/NAME"` and that folder share one instance, and two revisions do not)."""
    if isinstance(model, GritLMPreTrainedModel):
        return f"object:{id(model)}"
    return f"path:{os.path.realpath(resolve_checkpoint(model, revision=revision))}"


def get_shared(
    model: str | os.PathLike | GritLMPreTrainedModel,
    *,
    load_kwargs: dict[str, Any] | None = None,
    rag_kwargs: dict[str, Any] | None = None,
) -> GritRAG:
    """Return the process-wide `GritRAG` for `model`, creating it on first use (thread-safe).

    Args:
        model: a checkpoint (folder, Hub name such as `"GritLM/GritLM-7B"`, `"default"`) or a loaded
            `GritLMForCausalLM`. The same resolved folder (for a Hub name: its snapshot folder in the HF cache, at
            `load_kwargs["revision"]`), or the same model object (including `get_shared(name).model`), always gives
            the same instance.
        load_kwargs: keyword arguments for `grit_hf.load_model` (e.g. `{"dtype": "bfloat16"}`), used only when a
            checkpoint is loaded for the first time.
        rag_kwargs: keyword arguments for `GritRAG` (e.g. `{"cache_attention": "causal"}`), used only when the
            instance is created. Values of `None` mean "no preference".

    Returns:
        The shared `GritRAG` (its `model` is the loaded model). It stays alive, with its key/value store, until
        `release_shared(model)` or `clear_shared()`.

    Raises:
        TypeError: if `model` is neither a checkpoint name nor a grit-hf model.
        ValueError: if the instance exists already with different explicit `load_kwargs` or `rag_kwargs`.
    """
    for label, value in (("load_kwargs", load_kwargs), ("rag_kwargs", rag_kwargs)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"`{label}` must be a dict or None, got {type(value).__name__}.")
    load_kwargs = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    rag_kwargs = {k: v for k, v in (rag_kwargs or {}).items() if v is not None}
    check_model_argument(model)
    if isinstance(model, GritLMPreTrainedModel) and load_kwargs:
        raise ValueError(
            f"`load_kwargs` only applies to a checkpoint name, but `model` is a loaded model: {load_kwargs!r}."
        )
    key = _key(model, load_kwargs.get("revision"))
    with _registry_lock:
        entry = _registry.get(key)
        key_lock = _key_locks.setdefault(key, threading.Lock())
    if entry is None:
        with key_lock:  # one loader per key; other keys load in parallel
            with _registry_lock:
                entry = _registry.get(key)
            if entry is None:
                if not isinstance(model, GritLMPreTrainedModel):
                    logger.info(f"Loading the shared GRIT model {model}.")
                loaded = model if isinstance(model, GritLMPreTrainedModel) else load_model(model, **load_kwargs)
                rag = GritRAG(loaded, **rag_kwargs)
                entry = _Entry(rag, [key, _key(loaded)], model_display_name(loaded), load_kwargs, rag_kwargs)
                with _registry_lock:
                    for entry_key in entry.keys:
                        _registry[entry_key] = entry
                return rag
    _check_same(entry, load_kwargs, rag_kwargs)
    return entry.rag


def release_shared(model: str | os.PathLike | GritLMPreTrainedModel, revision: str | None = None) -> bool:
    """Forget the shared instance of `model` (a Hub name at `revision`); returns whether one existed. Objects built on
    it keep working with the instance they already hold."""
    key = _key(check_model_argument(model), revision)
    with _registry_lock:
        entry = _registry.get(key)
        if entry is None:
            return False
        for entry_key in entry.keys:
            _registry.pop(entry_key, None)
    return True


def clear_shared() -> None:
    """Forget every shared instance (frees their models and key/value stores once nothing else holds them)."""
    with _registry_lock:
        _registry.clear()


def list_shared() -> list[GritRAG]:
    """The distinct shared instances alive in this process."""
    with _registry_lock:
        return list({id(entry.rag): entry.rag for entry in _registry.values()}.values())
