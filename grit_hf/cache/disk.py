"""`DiskKVStore`: key/value states as one safetensors file per document (never pickle).

Disk entries are written to a temporary file and moved into place with `os.replace`, so a crash never leaves a
half-written entry under a document's name, and read lazily: `safe_open` memory-maps the file and the fingerprint is
checked before any tensor is touched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import logging

from .fingerprint import Fingerprint
from .states import KVStates, cache_from_layers
from .store import KVStore, MemoryKVStore, _check_states

logger = logging.get_logger(__name__)

__all__ = ["DiskKVStore", "FORMAT_VERSION"]

FORMAT_VERSION = "grit_hf.kv/1"


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
        return self.directory / f"{hashlib.sha256(doc_id.encode()).hexdigest()[:40]}.safetensors"

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
