"""Stores of key/value states keyed by document id: in memory (LRU under a byte budget) and on disk (safetensors).

Every entry carries the `Fingerprint` of the setup that computed it (model weights, config, tokenizer, dtype,
document template, attention mode); a store refuses to hand back an entry whose fingerprint differs from its own
with `FingerprintMismatchError`. Disk entries are plain safetensors files (never pickle), written to a temporary file
and moved into place with `os.replace`, so a crash never leaves a half-written entry under a document's name, and
read lazily: `safe_open` memory-maps the file and the fingerprint is checked before any tensor is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.utils import logging

from .states import KVStates

logger = logging.get_logger(__name__)

__all__ = [
    "Fingerprint",
    "FingerprintMismatchError",
    "compute_fingerprint",
    "KVStore",
    "MemoryKVStore",
    "DiskKVStore",
    "cache_from_layers",
]

FORMAT_VERSION = "grit_hf.kv/1"


def cache_from_layers(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A `DynamicCache` whose layers hold the given tensors themselves (no copy, unlike `DynamicCache(layers)`).

    Safe to hand to generation: `DynamicLayer.update` concatenates into new tensors and `crop` slices, so the given
    tensors are never written to.
    """
    cache = DynamicCache()
    for keys, values in layers:
        layer = DynamicLayer()
        layer.dtype, layer.device = keys.dtype, keys.device
        layer.keys, layer.values = keys, values
        layer.is_initialized = True
        cache.layers.append(layer)
    return cache


class FingerprintMismatchError(ValueError):
    """Stored states were computed by a different model setup than the one asking for them."""


@dataclass(frozen=True)
class Fingerprint:
    """What a set of cached states depends on. Two setups may share states only if all fields are equal.

    Attributes:
        model: the model's name or path (informative; not compared, a moved checkpoint keeps its states).
        config: sha256 of the model config (JSON, sorted keys, `name_or_path` and transformers version removed).
        weights: sha256 of every parameter's name, shape, dtype and a strided sample of its values
            (`weights_hash="full"` in `compute_fingerprint` hashes all bytes).
        tokenizer: sha256 of the tokenizer's serialised vocabulary and special tokens.
        dtype: dtype of the states, e.g. `"torch.bfloat16"`.
        template: the document template the states were computed with.
        attention: `"bidirectional"` or `"causal"`.
    """

    model: str
    config: str
    weights: str
    tokenizer: str
    dtype: str
    template: str
    attention: str

    _compared = ("config", "weights", "tokenizer", "dtype", "template", "attention")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=None, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        data = json.loads(text)
        return cls(**{f.name: str(data.get(f.name, "")) for f in fields(cls)})

    def differences(self, other: Fingerprint) -> list[str]:
        """Human-readable `field: stored ... != expected ...` lines for the compared fields that differ."""
        lines = []
        for name in self._compared:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                lines.append(f"{name}: stored {theirs!r:.80} != expected {mine!r:.80}")
        return lines

    def matches(self, other: Fingerprint) -> bool:
        return not self.differences(other)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _weights_digest(model: torch.nn.Module, full: bool, sample: int = 4096) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        flat = tensor.detach().reshape(-1)
        if not full and flat.numel() > sample:
            flat = flat[:: max(1, flat.numel() // sample)][:sample]
        digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    payload += json.dumps(sorted(map(str, tokenizer.all_special_tokens)))
    return _sha256(payload.encode())


def compute_fingerprint(model, is_causal: bool, tokenizer=None, weights_hash: str = "sample") -> Fingerprint:
    """The `Fingerprint` of states computed for documents by `model` (a `GritLMForCausalLM`).

    Args:
        model: the GRIT model.
        is_causal: whether the states are computed with causal attention.
        tokenizer: defaults to `model.tokenizer`.
        weights_hash: `"sample"` (name, shape, dtype and a 4096-value sample of each parameter; fast even for 7B
            models) or `"full"` (every byte).
    """
    if weights_hash not in ("sample", "full"):
        raise ValueError(f"Invalid `weights_hash`: {weights_hash!r}. Valid choices are: ('sample', 'full').")
    tokenizer = model.tokenizer if tokenizer is None else tokenizer
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype"):
        config.pop(volatile, None)
    if isinstance(config.get("text_config"), dict):
        for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
            config["text_config"].pop(volatile, None)
    return Fingerprint(
        model=str(getattr(model, "name_or_path", "") or type(model).__name__),
        config=_sha256(json.dumps(config, sort_keys=True, default=str).encode()),
        weights=_weights_digest(model, full=weights_hash == "full"),
        tokenizer=_tokenizer_digest(tokenizer),
        dtype=str(model.dtype),
        template=model.config.document_template,
        attention="causal" if is_causal else "bidirectional",
    )


def _check_states(doc_id: str, states: KVStates, fingerprint: Fingerprint | None) -> Fingerprint:
    if not isinstance(doc_id, str) or not doc_id:
        raise TypeError(f"`doc_id` must be a non-empty str, got {doc_id!r}.")
    if not isinstance(states, KVStates):
        raise TypeError(f"`states` must be a KVStates, got {type(states).__name__}.")
    if fingerprint is None:
        raise ValueError("This store has no fingerprint yet: pass `fingerprint=` or call `store.bind(fingerprint)`.")
    mode = "causal" if states.is_causal else "bidirectional"
    if mode != fingerprint.attention:
        raise ValueError(
            f"States for {doc_id!r} were computed with {mode} attention, the store expects {fingerprint.attention}."
        )
    return fingerprint


class KVStore:
    """Base class of the stores: `put`, `get`, `delete`, `in`, `len`, `keys()`, all thread-safe.

    A store is bound to one `Fingerprint` (`fingerprint=` or `bind`); `get` refuses entries recorded under another.
    """

    def __init__(self, fingerprint: Fingerprint | None = None):
        self.fingerprint = fingerprint
        self._lock = threading.RLock()

    def bind(self, fingerprint: Fingerprint) -> None:
        """Set the fingerprint that new entries record and that entries read back must match."""
        if not isinstance(fingerprint, Fingerprint):
            raise TypeError(f"`fingerprint` must be a Fingerprint, got {type(fingerprint).__name__}.")
        self.fingerprint = fingerprint

    def _refuse(self, doc_id: str, stored: Fingerprint) -> None:
        if self.fingerprint is None or stored.matches(self.fingerprint):
            return
        lines = "; ".join(self.fingerprint.differences(stored))
        raise FingerprintMismatchError(
            f"The cached states of {doc_id!r} were computed by a different setup ({stored.model}) and cannot be "
            f"reused: {lines}. Delete the entry or re-add the document."
        )

    def put(self, doc_id: str, states: KVStates) -> None:
        raise NotImplementedError

    def get(self, doc_id: str) -> KVStates | None:
        """The states of `doc_id`, or `None` if absent. Raises `FingerprintMismatchError` for a foreign entry."""
        raise NotImplementedError

    def delete(self, doc_id: str) -> bool:
        raise NotImplementedError

    def keys(self) -> list[str]:
        raise NotImplementedError

    def __contains__(self, doc_id: object) -> bool:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


class MemoryKVStore(KVStore):
    """States kept in memory, evicting the least recently used entries once they take more than `max_bytes`.

    Args:
        max_bytes: byte budget over all entries (`None`: unbounded). An entry larger than the whole budget is not
            kept (a warning is logged).
        fingerprint: the setup entries belong to (GritRAG binds it).
    """

    def __init__(self, max_bytes: int | None = None, fingerprint: Fingerprint | None = None):
        super().__init__(fingerprint)
        if max_bytes is not None and (not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0):
            raise ValueError(f"`max_bytes` must be a non-negative int or None, got {max_bytes!r}.")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[KVStates, Fingerprint, int]] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    def put(self, doc_id: str, states: KVStates) -> None:
        fingerprint = _check_states(doc_id, states, self.fingerprint)
        size = states.nbytes
        with self._lock:
            self.delete(doc_id)
            if self.max_bytes is not None and size > self.max_bytes:
                logger.warning(f"States of {doc_id!r} ({size} bytes) exceed `max_bytes`={self.max_bytes}; not kept.")
                return
            self._entries[doc_id] = (states, fingerprint, size)
            self.nbytes += size
            while self.max_bytes is not None and self.nbytes > self.max_bytes:
                evicted, (_, _, evicted_size) = self._entries.popitem(last=False)
                self.nbytes -= evicted_size
                self.evictions += 1
                logger.debug(f"Evicted the states of {evicted!r} ({evicted_size} bytes).")

    def get(self, doc_id: str) -> KVStates | None:
        with self._lock:
            entry = self._entries.get(doc_id)
            if entry is None:
                return None
            self._refuse(doc_id, entry[1])
            self._entries.move_to_end(doc_id)
            return entry[0]

    def delete(self, doc_id: str) -> bool:
        with self._lock:
            entry = self._entries.pop(doc_id, None)
            if entry is not None:
                self.nbytes -= entry[2]
            return entry is not None

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def __contains__(self, doc_id: object) -> bool:
        with self._lock:
            return doc_id in self._entries


class DiskKVStore(KVStore):
    """States kept as one safetensors file per document in `directory`, optionally fronted by an in-memory LRU.

    Files are named by the sha256 of the document id and hold `input_ids`, `layers.{i}.keys`, `layers.{i}.values`
    plus metadata (format version, document id, attention mode, fingerprint). Writes go to a temporary file in the
    same folder, are fsynced, and replace the entry atomically. Reads memory-map the file (`safe_open`): tensors are
    paged in only when used.

    Args:
        directory: the folder (created if missing).
        memory_bytes: byte budget of an in-memory LRU in front of the disk (0: none).
        fingerprint: the setup entries belong to (GritRAG binds it).
        device: device the loaded states are put on (`"cpu"` keeps them memory-mapped).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        memory_bytes: int = 0,
        fingerprint: Fingerprint | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__(fingerprint)
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"`directory` must be a path, got {type(directory).__name__}.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self._memory = MemoryKVStore(max_bytes=memory_bytes, fingerprint=fingerprint) if memory_bytes else None

    def bind(self, fingerprint: Fingerprint) -> None:
        super().bind(fingerprint)
        if self._memory is not None:
            self._memory.bind(fingerprint)

    def path_for(self, doc_id: str) -> Path:
        """The file of `doc_id` (whether or not it exists)."""
        return self.directory / f"{_sha256(doc_id.encode())[:40]}.safetensors"

    def put(self, doc_id: str, states: KVStates) -> None:
        fingerprint = _check_states(doc_id, states, self.fingerprint)
        tensors = {"input_ids": states.input_ids.detach().to("cpu", torch.long).contiguous()}
        for index, (keys, values) in enumerate(states.layers()):
            tensors[f"layers.{index}.keys"] = keys.detach().cpu().contiguous()
            tensors[f"layers.{index}.values"] = values.detach().cpu().contiguous()
        metadata = {
            "format": FORMAT_VERSION,
            "doc_id": doc_id,
            "is_causal": "true" if states.is_causal else "false",
            "num_layers": str(len(states.cache.layers)),
            "fingerprint": fingerprint.to_json(),
        }
        target = self.path_for(doc_id)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=self.directory)
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata=metadata)
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
            with self._lock:
                os.replace(temporary, target)
                if self._memory is not None:
                    self._memory.put(doc_id, states)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _read_metadata(self, path: Path) -> dict[str, str]:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}

    def get(self, doc_id: str) -> KVStates | None:
        if self._memory is not None:
            cached = self._memory.get(doc_id)
            if cached is not None:
                return cached
        path = self.path_for(doc_id)
        try:
            handle = safe_open(str(path), framework="pt", device=str(self.device))
        except FileNotFoundError:
            return None
        with handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT_VERSION or metadata.get("doc_id") != doc_id:
                raise ValueError(f"{path} is not a grit_hf KV entry for {doc_id!r} (metadata: {metadata!r:.200}).")
            self._refuse(doc_id, Fingerprint.from_json(metadata["fingerprint"]))
            num_layers = int(metadata["num_layers"])
            layers = [
                (handle.get_tensor(f"layers.{i}.keys"), handle.get_tensor(f"layers.{i}.values"))
                for i in range(num_layers)
            ]
            input_ids = handle.get_tensor("input_ids")
        states = KVStates(input_ids, cache_from_layers(layers), metadata["is_causal"] == "true")
        if self._memory is not None:
            self._memory.put(doc_id, states)
        return states

    def delete(self, doc_id: str) -> bool:
        with self._lock:
            if self._memory is not None:
                self._memory.delete(doc_id)
            try:
                self.path_for(doc_id).unlink()
                return True
            except FileNotFoundError:
                return False

    def keys(self) -> list[str]:
        ids = []
        for path in sorted(self.directory.glob("*.safetensors")):
            if path.name.startswith(".tmp-"):
                continue
            try:
                doc_id = self._read_metadata(path).get("doc_id")
            except (OSError, ValueError, RuntimeError):  # a foreign or damaged file is not an entry
                continue
            if doc_id is not None:
                ids.append(doc_id)
        return ids

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and self.path_for(doc_id).is_file()

    def cleanup(self) -> int:
        """Remove temporary files left by writes that crashed; return how many were removed."""
        removed = 0
        for path in self.directory.glob(".tmp-*.safetensors"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed
