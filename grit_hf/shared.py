"""One model, one `GritRAG` and one key/value store per process for each checkpoint path or model object.

The LangChain and LlamaIndex integrations both go through `get_shared`, so an embeddings object and a chat model built
on the same path (or the same loaded model) share the weights and, above all, the cache of document states: documents
embedded by one are reused when the other generates.

Example:

```python
>>> from grit_hf.shared import get_shared
>>> shared = get_shared("default")
>>> get_shared("default") is shared, get_shared(shared.model) is shared
(True, True)
```
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from transformers.utils import logging

from .formatting import apply_chat_template, check_texts
from .rag import CachedSegment, GenerationResult, GenerationStream, GritRAG, Segment

if TYPE_CHECKING:
    from .modeling_gritlm import GritLMForCausalLM

logger = logging.get_logger(__name__)

__all__ = [
    "SharedGrit",
    "SharedGeneration",
    "SharedStream",
    "MIN_CACHED_CHARS",
    "document_id",
    "aiter_in_thread",
    "UsesSharedGrit",
    "get_shared",
    "release_shared",
    "clear_shared",
    "list_shared",
    "check_model_argument",
    "model_display_name",
]


MIN_CACHED_CHARS = 16
"""Documents shorter than this (in characters) are never spliced from the cache: they are cheap to recompute and
likely to match a prompt by accident."""

T = TypeVar("T")


def document_id(text: str) -> str:
    """The id under which the integrations index a document: the first 16 hex digits of the sha256 of its text (the
    default of `GritRAG.add_documents`), so embedding the same text twice indexes it once."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SharedGeneration(GenerationResult):
    """A `GenerationResult` plus `doc_ids`: the cached documents whose states were spliced into the prompt."""

    doc_ids: list[str] = field(default_factory=list)


class SharedStream:
    """Text deltas of one generation. `cache_read_tokens`, `prompt_tokens` and `doc_ids` are known from the start;
    `result` (a `SharedGeneration`) is complete once the stream is exhausted. `close()` stops early."""

    def __init__(self, stream: GenerationStream, doc_ids: list[str]):
        self._stream = stream
        self.doc_ids = doc_ids

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._stream)

    def close(self) -> None:
        self._stream.close()

    @property
    def cache_read_tokens(self) -> int:
        return self._stream.result.cache_read_tokens

    @property
    def result(self) -> SharedGeneration:
        return SharedGeneration(**asdict(self._stream.result), doc_ids=list(self.doc_ids))

    def usage_so_far(self) -> dict[str, Any]:
        """Token counts so far: `cache_read_tokens`, `prompt_tokens`, `completion_tokens`."""
        result = self._stream.result
        return {
            "cache_read_tokens": result.cache_read_tokens,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }


@dataclass
class SharedGrit:
    """The process-wide instance behind one checkpoint path or one model object.

    Attributes:
        model: the loaded `GritLMForCausalLM` (in eval mode).
        rag: the `GritRAG` over `model`; its key/value store holds the states of every document embedded through it.
        name: a readable name for traces and metadata (the checkpoint folder's name, or the model's `name_or_path`).
        key: the registry key (`"path:<resolved folder>"` or `"object:<id>"`).
        load_kwargs: the keyword arguments the model was loaded with (empty for a model given as an object).
        rag_kwargs: the keyword arguments `rag` was built with.

    All methods are thread-safe: every forward pass runs under `rag.lock`.
    """

    model: GritLMForCausalLM
    rag: GritRAG
    name: str
    key: str
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    rag_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def lock(self) -> threading.RLock:
        """The lock held around every forward pass of `model` (`rag.lock`)."""
        return self.rag.lock

    @property
    def max_positions(self) -> int | None:
        """The decoder's maximum number of positions, if its config says."""
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    # -- embedding ---------------------------------------------------------------------------------------------------
    def embed_documents(self, texts: Sequence[str], cache: bool = True) -> np.ndarray:
        """Embed documents (no instruction): `(n, dim)` float32.

        With `cache`, each text is indexed in `rag` under `document_id(text)`, so its key/value states are stored
        (texts indexed already are not recomputed). A text longer than `rag.max_length` tokens is embedded truncated
        but not cached: its states would not cover the whole text where it appears in a prompt.
        """
        texts, _ = check_texts(texts, "texts")
        if not texts:
            return np.zeros((0, self.model.config.text_config.hidden_size), dtype=np.float32)
        fits = self._fits(texts) if cache else [False] * len(texts)
        ids = [document_id(text) for text in texts]
        vectors = np.zeros((len(texts), self.model.config.text_config.hidden_size), dtype=np.float32)
        with self.lock:
            known = set(self.rag.doc_ids)
            new: dict[str, str] = {}
            for doc_id, text, fit in zip(ids, texts, fits):
                if fit and doc_id not in new and (doc_id not in known or self.rag.get_text(doc_id) != text):
                    new[doc_id] = text
            if new:
                self.rag.add_documents(list(new.values()), ids=list(new))
            cached = [i for i, fit in enumerate(fits) if fit]
            if cached:
                vectors[cached] = self.rag.get_embeddings([ids[i] for i in cached]).numpy()
            plain = [i for i, fit in enumerate(fits) if not fit]
            if plain:
                vectors[plain] = self.rag.embed([texts[i] for i in plain], instruction="").numpy()
        return vectors

    def _fits(self, texts: list[str]) -> list[bool]:
        """Whether `document_template + text` fits in `rag.max_length` tokens, for each text."""
        template = self.model.config.document_template
        lengths = [len(ids) for ids in self.model.tokenizer([template + t for t in texts])["input_ids"]]
        too_long = sum(length > self.rag.max_length for length in lengths)
        if too_long:
            logger.warning(
                f"{too_long} document(s) are longer than `max_length`={self.rag.max_length} tokens: they are embedded "
                "truncated and their states are not cached."
            )
        return [length <= self.rag.max_length for length in lengths]

    def embed_queries(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Embed queries with `instruction` (default: the rag's query instruction): `(n, dim)` float32."""
        texts, _ = check_texts(texts, "texts")
        return self.rag.embed(texts, instruction=instruction).numpy()

    # -- generation --------------------------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """Render `{"role", "content"}` messages with the checkpoint's chat template (generation prompt added)."""
        return apply_chat_template(self.model.tokenizer, messages, self.model.config.chat_template)

    def segments(self, prompt: str, reuse_cache: bool = True) -> list[Segment]:
        """`rag.split_prompt(prompt)` over the indexed documents of at least `MIN_CACHED_CHARS` characters."""
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a str, got {type(prompt).__name__}.")
        if not reuse_cache:
            return [prompt]
        candidates = [d for d in self.rag.doc_ids if len(self.rag.get_text(d)) >= MIN_CACHED_CHARS]
        return self.rag.split_prompt(prompt, doc_ids=candidates) if candidates else [prompt]

    def _start(
        self,
        prompt: str,
        max_new_tokens: int,
        stop: Sequence[str] | None,
        temperature: float | None,
        reuse_cache: bool,
    ) -> SharedStream:
        segments = self.segments(prompt, reuse_cache)
        doc_ids = list(dict.fromkeys(s.doc_id for s in segments if isinstance(s, CachedSegment)))
        stream = self.rag.stream_from_segments(
            segments, max_new_tokens=max_new_tokens, stop=list(stop) if stop else None, temperature=temperature or 0.0
        )
        return SharedStream(stream, doc_ids)

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 256,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        reuse_cache: bool = True,
    ) -> SharedGeneration:
        """Answer a rendered prompt, splicing in the cached states of every indexed document found in it verbatim.

        Args:
            prompt: the full prompt (e.g. `render_chat(messages)`).
            max_new_tokens: the most tokens to generate.
            stop: stop strings; the text ends before the first one.
            temperature: `None`/`0` decodes greedily; above 0 samples.
            reuse_cache: `False` reads the whole prompt as text.

        Returns:
            A `SharedGeneration`: `text`, `prompt_tokens` (cached ones included), `cache_read_tokens`,
            `completion_tokens`, `finish_reason` and the spliced `doc_ids`.
        """
        stream = self._start(prompt, max_new_tokens, stop, temperature, reuse_cache)
        for _ in stream:
            pass
        return stream.result

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 256,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        reuse_cache: bool = True,
    ) -> SharedStream:
        """Like `generate`, but returns a `SharedStream` of text deltas (the prompt is composed before it returns)."""
        return self._start(prompt, max_new_tokens, stop, temperature, reuse_cache)


class UsesSharedGrit:
    """Mixin of the LangChain and LlamaIndex classes. The class has a `model` field (a path, `"default"` or a loaded
    model) and a `_shared` private attribute (initially `None`); optional `rag_kwargs` and `cache_attention` fields
    are its `GritRAG` preferences (`None` means none)."""

    def _shared_rag_kwargs(self) -> dict[str, Any]:
        kwargs = dict(getattr(self, "rag_kwargs", None) or {})
        if getattr(self, "cache_attention", None) is not None:
            kwargs["cache_attention"] = self.cache_attention
        return kwargs

    @property
    def shared(self) -> SharedGrit:
        """The process-wide model, `GritRAG` and key/value store behind `model` (loaded on first use)."""
        if self._shared is None:
            self._shared = get_shared(self.model, rag_kwargs=self._shared_rag_kwargs())
        return self._shared

    @property
    def shared_name(self) -> str:
        """A readable name of `model` (the checkpoint folder's name), without loading it."""
        return self._shared.name if self._shared is not None else model_display_name(self.model)


async def aiter_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Iterate `make_iterator()` in one worker thread and yield its items in the event loop as they come (the
    iterator is created, advanced and closed in that same thread; it is closed early if the consumer stops)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            iterator = make_iterator()
            try:
                for item in iterator:
                    loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
                    if stop.is_set():
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))
        except BaseException as error:  # handed to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, ("error", error))

    worker = threading.Thread(target=produce, name="grit-hf-aiter", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = await queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()


_registry: dict[str, SharedGrit] = {}
_registry_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}


def _is_model_object(model: Any) -> bool:
    from .modeling_gritlm import GritLMPreTrainedModel

    return isinstance(model, GritLMPreTrainedModel)


def check_model_argument(model: Any, name: str = "model") -> Any:
    """Return `model` if it is a checkpoint path (`str`/`os.PathLike`, `"default"` allowed) or a grit-hf model;
    raise `TypeError`/`ValueError` naming the argument otherwise. Cheap: nothing is loaded."""
    if _is_model_object(model):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"`{name}` must be a checkpoint path (str or os.PathLike), 'default' or a GritLMForCausalLM, "
            f"got {type(model).__name__}."
        )
    if not str(model).strip():
        raise ValueError(f"`{name}` must be a checkpoint folder or 'default', got {model!r}.")
    return model


def model_display_name(model: Any) -> str:
    """A readable name for `model` (a path, `"default"` or a loaded model) without loading anything."""
    from .default_model import DEFAULT_MODEL_NAME

    if _is_model_object(model):
        return Path(str(model.name_or_path)).name if model.name_or_path else type(model).__name__
    if str(model) == "default":
        return DEFAULT_MODEL_NAME
    return Path(str(model)).name or str(model)


def _path_key(model: str | os.PathLike) -> tuple[str, str]:
    """`(key, folder)` for a path; `"default"` resolves to the default model's folder (converting it once)."""
    from .default_model import resolve_model_path

    folder = resolve_model_path(model)
    return f"path:{os.path.realpath(folder)}", folder


_MISSING = object()


def _check_same(shared: SharedGrit, load_kwargs: dict[str, Any], rag_kwargs: dict[str, Any]) -> None:
    """Raise if a later caller asks for other explicit settings than the shared instance has."""
    requested = [
        ("loading argument", key, value, shared.load_kwargs.get(key, _MISSING)) for key, value in load_kwargs.items()
    ]
    requested += [
        ("GritRAG argument", key, value, getattr(shared.rag, key, shared.rag_kwargs.get(key, _MISSING)))
        for key, value in rag_kwargs.items()
    ]
    for what, key, value, actual in requested:
        if actual is not value and actual != value:
            have = "without it" if actual is _MISSING else f"with `{key}`={actual!r}"
            raise ValueError(
                f"The shared instance of {shared.name!r} was built {have}, but {what} `{key}`={value!r} was "
                "requested. One path or model object means one shared instance: use the same settings, or call "
                "`release_shared(...)` first."
            )


def get_shared(
    model: str | os.PathLike | GritLMForCausalLM,
    *,
    load_kwargs: dict[str, Any] | None = None,
    rag_kwargs: dict[str, Any] | None = None,
) -> SharedGrit:
    """Return the process-wide `SharedGrit` for `model`, creating it on first use (thread-safe).

    Args:
        model: a checkpoint folder (`"default"` means the default model) or a loaded `GritLMForCausalLM`. The same
            resolved folder, or the same model object (including `get_shared(path).model`), always gives the same
            instance.
        load_kwargs: keyword arguments for `GritLMForCausalLM.from_pretrained` (e.g. `{"dtype": torch.bfloat16}`),
            used only when a path is loaded for the first time.
        rag_kwargs: keyword arguments for `GritRAG` (e.g. `{"cache_attention": "causal"}`), used only when the
            instance is created. Values of `None` mean "no preference".

    Returns:
        The shared instance. It stays alive (with its key/value store) until `release_shared(model)` or
        `clear_shared()`.

    Raises:
        TypeError: if `model` is neither a path nor a grit-hf model.
        ValueError: if the instance exists already with different explicit `load_kwargs` or `rag_kwargs`.
    """
    if load_kwargs is not None and not isinstance(load_kwargs, dict):
        raise TypeError(f"`load_kwargs` must be a dict or None, got {type(load_kwargs).__name__}.")
    if rag_kwargs is not None and not isinstance(rag_kwargs, dict):
        raise TypeError(f"`rag_kwargs` must be a dict or None, got {type(rag_kwargs).__name__}.")
    load_kwargs = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    rag_kwargs = {k: v for k, v in (rag_kwargs or {}).items() if v is not None}

    check_model_argument(model)
    if _is_model_object(model):
        key, folder = f"object:{id(model)}", None
        if load_kwargs:
            raise ValueError(f"`load_kwargs` only applies to a path, but `model` is a loaded model: {load_kwargs!r}.")
    else:
        key, folder = _path_key(model)

    with _registry_lock:
        shared = _registry.get(key)
        key_lock = _key_locks.setdefault(key, threading.Lock())
    if shared is None:
        with key_lock:  # one loader per key; other keys load in parallel
            with _registry_lock:
                shared = _registry.get(key)
            if shared is None:
                shared = _create(model, key, folder, load_kwargs, rag_kwargs)
                with _registry_lock:
                    _registry[key] = shared
                    _registry[f"object:{id(shared.model)}"] = shared
                return shared
    _check_same(shared, load_kwargs, rag_kwargs)
    return shared


def _create(
    model: Any, key: str, folder: str | None, load_kwargs: dict[str, Any], rag_kwargs: dict[str, Any]
) -> SharedGrit:
    from .modeling_gritlm import GritLMForCausalLM

    if folder is not None:
        logger.info(f"Loading the shared GRIT model from {folder}.")
        model = GritLMForCausalLM.from_pretrained(folder, **load_kwargs).eval()
    name = model_display_name(model)
    rag = GritRAG(model, **rag_kwargs)
    return SharedGrit(model=model, rag=rag, name=name, key=key, load_kwargs=load_kwargs, rag_kwargs=rag_kwargs)


def _keys_of(model: str | os.PathLike | GritLMForCausalLM) -> list[str]:
    with _registry_lock:
        if _is_model_object(model):
            shared = _registry.get(f"object:{id(model)}")
        else:
            shared = next((s for s in _registry.values() if s.key == _path_key(model)[0]), None)
        if shared is None:
            return []
        return [k for k, s in _registry.items() if s is shared]


def release_shared(model: str | os.PathLike | GritLMForCausalLM) -> bool:
    """Forget the shared instance of `model` (its path or object); returns whether one existed. Objects built on it
    keep working with the instance they already hold."""
    keys = _keys_of(model)
    with _registry_lock:
        for key in keys:
            _registry.pop(key, None)
    return bool(keys)


def clear_shared() -> None:
    """Forget every shared instance (frees their models and key/value stores once nothing else holds them)."""
    with _registry_lock:
        _registry.clear()


def list_shared() -> list[SharedGrit]:
    """The distinct shared instances alive in this process."""
    with _registry_lock:
        unique = {id(s): s for s in _registry.values()}
    return list(unique.values())
