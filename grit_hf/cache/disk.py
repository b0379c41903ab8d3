"""`DiskKVStore`: key/value states as one safetensors file per document (never pickle), in a local or shared (NFS)
folder, or as one object per document under any fsspec URL (`s3://bucket/prefix`, ...: `grit_hf.cache.objects`).

Disk entries are written to a temporary file and moved into place with `os.replace`, so a crash never leaves a
half-written entry under a document's name. Every entry carries a CRC-32 of each tensor; a read checks the metadata,
the fingerprint (before any tensor is touched), the checksums (once per file and process) and the entry's structure
against the model, and fails with `CacheEntryError` naming the entry, never later inside torch. Only regular files are
read, so a FIFO or device under an entry's name cannot block a read; listing skips damaged files with a warning.

Formats: `grit_hf.kv/2` holds dense states (as computed); `grit_hf.kv/3` holds int8 states (`quantize="int8"`,
`grit_hf.cache.quantization`: int8 data, scales, offsets and the dense outlier rows with their positions) and the metadata
`storage: "int8"`. Every store reads both, whatever it writes. `grit_hf.kv/1` (dense, without checksums) is read
only when asked for (`read_unverified=True`), or after `grit_hf.cache.upgrade` (`grit-hf cache upgrade DIR`) has rewritten its
sound entries with checksums (it skips, and names, those a read refuses): otherwise rewriting an entry's format to version 1 would switch its checksums off.

Object stores: each entry is written with a single PUT of the same bytes a local file holds (`entry_bytes`, header
keys sorted), and read with one GET; checksums, fingerprints and structure are checked as for local files, on every
read (a downloaded entry has no file identity to remember). A missing bucket or refused credentials fail when the
store is opened, naming the URL.

Threat model: the checksums catch damage (a torn write, flipped bits on disk), not an attacker. Whoever can write the
directory can write a consistent entry with its own states (and checksums), which the model then attends to: keep the
directory writable only by the user running grit-hf, as for the model's own weights. Nothing in an entry is ever
executed (safetensors, no pickle), and a file cannot make the store read outside its directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers.utils import logging

from .entries import CacheEntryError, check_states, checksum
from .fingerprint import Fingerprint, FingerprintMismatchError
from .objects import BytesEntry, entry_bytes, is_url, open_location, read_object, save_file, write_object
from .quantization import Quantization, QuantizedKVStates, QuantizedTensor, parse_dtype
from .states import KVStates, cache_from_layers
from .store import KVStore, MemoryKVStore, check_doc_id, valid_doc_id

logger = logging.get_logger(__name__)

__all__ = ["DiskKVStore", "FORMAT_VERSION", "INT8_FORMAT_VERSION", "UNVERIFIED_FORMAT"]

FORMAT_VERSION = "grit_hf.kv/2"  # dense states
INT8_FORMAT_VERSION = "grit_hf.kv/3"  # int8 states with their scales, offsets and dense rows
UNVERIFIED_FORMAT = "grit_hf.kv/1"  # dense states without checksums: read only with `read_unverified=True`
READABLE_FORMATS = (UNVERIFIED_FORMAT, FORMAT_VERSION, INT8_FORMAT_VERSION)
# an int8 entry's tensors per layer and kind (keys, values), in `QuantizedTensor.tensors()` order:
# `layers.{i}.keys_dense`, `layers.{i}.keys` (the int8 data), `layers.{i}.keys_scale`, `layers.{i}.keys_offset`,
# `layers.{i}.keys_positions` (of the dense rows)
_INT8_PARTS = ("_dense", "", "_scale", "_offset", "_positions")


class DiskKVStore(KVStore):
    """States kept as one safetensors file per document in `directory`, optionally fronted by an in-memory LRU.

    Files are named by the sha256 of the document id and hold `input_ids`, `layers.{i}.keys`, `layers.{i}.values`
    (int8 entries: the int8 data, with `layers.{i}.keys_scale`, `_offset`, `_dense`, `_positions` and the same for values) plus
    metadata (format version, document id, attention mode, fingerprint with the storage format, checksums of every
    tensor). Writes go to a temporary
    file in the same folder, are fsynced, and replace the entry atomically; a failed write (e.g. a full disk) raises
    `OSError` and leaves the old entry. Reads memory-map the file (`safe_open`). Under a URL, each entry is one
    object, put in a single request and read in one (see the module docstring).

    Args:
        directory: the folder (created if missing; not `""`), or an fsspec URL such as `"s3://bucket/prefix"` (its
            bucket must exist).
        memory_bytes: byte budget of an in-memory LRU in front of the disk (0: none).
        fingerprint: the setup entries belong to (GritRAG binds it).
        device: device the loaded states are put on (`"cpu"` keeps them memory-mapped).
        verify: check every file's checksums the first time this process reads it (one pass over its bytes).
        quantize: `"int8"` writes new entries in 8 bits (half the bytes of bf16 per token; see
            `grit_hf.cache.quantization`); `None` writes states as computed. Both formats are read either way.
        read_unverified: also read entries of the old format `grit_hf.kv/1`, which has no checksums (prefer
            `upgrade()` once, on a directory you trust).
        storage_options: options of the URL's fsspec filesystem (e.g. `{"endpoint_url": ..., "key": ...}` for S3);
            by default fsspec reads them from the environment.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        memory_bytes: int = 0,
        fingerprint: Fingerprint | None = None,
        device: str | torch.device = "cpu",
        verify: bool = True,
        quantize: Quantization | None = None,
        read_unverified: bool = False,
        storage_options: dict[str, Any] | None = None,
    ):
        super().__init__(fingerprint, quantize)
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"`directory` must be a path or URL, got {type(directory).__name__}.")
        if not str(directory).strip():
            raise ValueError("`directory` must name a folder for the store, got an empty path.")
        self._fs = None  # the fsspec filesystem of a URL; None: a local folder
        if is_url(directory):
            self.url = str(directory).rstrip("/")
            self._fs, root = open_location(self.url, storage_options)
            self.directory = PurePosixPath(root)
        else:
            self.directory = Path(str(directory).removeprefix("file://"))
            self.directory.mkdir(parents=True, exist_ok=True)
            self.url = str(self.directory)
        self.device = torch.device(device)
        self.verify = verify
        self.read_unverified = read_unverified
        self._memory = MemoryKVStore(max_bytes=memory_bytes, fingerprint=fingerprint) if memory_bytes else None
        self._verified: dict[Path, tuple[int, int, int]] = {}

    def bind(self, fingerprint: Fingerprint) -> None:
        super().bind(fingerprint)
        if self._memory is not None:
            self._memory.bind(fingerprint)

    def path_for(self, doc_id: str) -> Path | PurePosixPath:
        """The file of `doc_id` (whether or not it exists)."""
        check_doc_id(doc_id)
        return self.directory / f"{hashlib.sha256(doc_id.encode()).hexdigest()[:40]}.safetensors"

    # -- writing -----------------------------------------------------------------------------------------------------
    def put(self, doc_id: str, states: KVStates) -> None:
        states, fingerprint = self._prepare(doc_id, states)
        tensors = {"input_ids": states.input_ids.detach().to("cpu", torch.long).contiguous()}
        if isinstance(states, QuantizedKVStates):
            for index, pair in enumerate(states.quantized):
                for kind, part in zip(("keys", "values"), pair):
                    for suffix, tensor in zip(_INT8_PARTS, part.tensors()):
                        tensors[f"layers.{index}.{kind}{suffix}"] = tensor.detach().cpu().contiguous()
            num_layers, version = len(states.quantized), INT8_FORMAT_VERSION
        else:
            layers = states.layers()
            for index, (keys, values) in enumerate(layers):
                tensors[f"layers.{index}.keys"] = keys.detach().cpu().contiguous()
                tensors[f"layers.{index}.values"] = values.detach().cpu().contiguous()
            num_layers, version = len(layers), FORMAT_VERSION
        metadata = {
            "format": version,
            "doc_id": doc_id,
            "is_causal": "true" if states.is_causal else "false",
            "num_layers": str(num_layers),
            "fingerprint": fingerprint.to_json(),
            "checksums": json.dumps({name: checksum(tensor) for name, tensor in tensors.items()}, sort_keys=True),
        }
        if version == INT8_FORMAT_VERSION:
            metadata["storage"] = states.storage
        self._write(doc_id, tensors, metadata)
        if self._memory is not None:
            self._memory.put(doc_id, states)

    def size(self, doc_id: str) -> int | None:
        """The size in bytes of the entry of `doc_id` (its file or object), or `None` if there is none."""
        path = self.path_for(doc_id)
        try:
            return int(self._fs.size(str(path))) if self._fs is not None else os.path.getsize(path)
        except FileNotFoundError:
            return None

    def _write(self, doc_id: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Write an entry (one PUT under a URL; locally to a temporary file, fsynced, then moved over the entry
        atomically)."""
        target = self.path_for(doc_id)
        if self._fs is not None:
            write_object(self._fs, str(target), entry_bytes(tensors, metadata), self.url)
            return
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=self.directory)
        os.close(handle)
        try:
            try:
                save_file(tensors, temporary, metadata=metadata)
                with open(temporary, "rb") as written:
                    os.fsync(written.fileno())
            except SafetensorError as error:  # how safetensors reports I/O failures, e.g. a full disk
                raise OSError(f"Could not write the states of {doc_id!r} to {self.directory}: {error}") from error
            with self._lock:
                os.replace(temporary, target)
                self._verified.pop(target, None)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _open(self, path: Path | PurePosixPath, header_only: bool = False) -> tuple[Callable, Any] | None:
        """`(a function opening the entry: a context manager giving its safetensors handle, the file's identity for
        the checksum cache)`, or `None` if there is no entry. Under a URL, the object is downloaded (one GET; with `header_only`, only its
        header) and has no identity: its checksums are checked on every read."""
        if self._fs is None:
            info = self._regular_file(path)
            return None if info is None else (partial(safe_open, str(path), "pt", device=str(self.device)), info)
        data = read_object(self._fs, str(path), self.url, header_only)
        return None if data is None else (partial(BytesEntry, data, self.device), None)

    # -- reading -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _regular_file(path: Path) -> os.stat_result | None:
        """`lstat` of `path` if it is a regular file; `None` if it does not exist; `CacheEntryError` otherwise (a
        FIFO, device, folder or symlink is never opened: reading it could block or leave the store)."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            raise CacheEntryError(f"{path} is not a regular file; it is not a grit_hf KV entry.")
        return info

    def _metadata(self, path: Path, handle) -> dict[str, str]:
        metadata = handle.metadata() or {}
        missing = [
            key for key in ("format", "doc_id", "is_causal", "num_layers", "fingerprint") if key not in metadata
        ]
        if missing or metadata["format"] not in READABLE_FORMATS:
            raise CacheEntryError(f"{path} is not a grit_hf KV entry (metadata {metadata!r:.200}).")
        if metadata["format"] == UNVERIFIED_FORMAT and not self.read_unverified:
            raise CacheEntryError(
                f"{path} has the old format {UNVERIFIED_FORMAT}, which carries no checksums: read it with "
                f"DiskKVStore(..., read_unverified=True), or rewrite the directory once with `grit-hf cache upgrade "
                f"{self.directory}` if you trust it."
            )
        return metadata

    def get(self, doc_id: str) -> KVStates | None:
        """The states of `doc_id`, or `None` if absent. Raises `FingerprintMismatchError` for an entry of another
        setup and `CacheEntryError` for a damaged or malformed one."""
        if self._memory is not None:
            cached = self._memory.get(doc_id)
            if cached is not None:
                return cached
        path = self.path_for(doc_id)
        opened = self._open(path)  # OSError (e.g. refused credentials) is not a damaged entry: it is raised
        if opened is None:
            return None
        entry, info = opened
        where = f"The cache entry {path.name} of {doc_id!r}"
        try:
            with entry() as handle:
                metadata = self._metadata(path, handle)
                if metadata["doc_id"] != doc_id:
                    raise CacheEntryError(f"{where} names another document, {metadata['doc_id']!r}.")
                stored = Fingerprint.from_json(metadata["fingerprint"])
                self._refuse(doc_id, stored)
                int8 = metadata["format"] == INT8_FORMAT_VERSION
                storage = "int8" if int8 else "dense"
                if int8 and metadata.get("storage") != "int8":
                    raise CacheEntryError(f"{where} has the storage {metadata.get('storage')!r}, its format int8.")
                if stored.storage not in ("", storage):
                    raise CacheEntryError(f"{where} is {storage}, its fingerprint records {stored.storage!r}.")
                num_layers = int(metadata["num_layers"])
                if num_layers < 1:
                    raise CacheEntryError(f"{where} declares {num_layers} layers.")
                suffixes = _INT8_PARTS if int8 else ("",)
                names = ["input_ids"] + [
                    f"layers.{i}.{kind}{suffix}"
                    for i in range(num_layers)
                    for kind in ("keys", "values")
                    for suffix in suffixes
                ]
                tensors = {name: handle.get_tensor(name) for name in names}
        except (CacheEntryError, FingerprintMismatchError, FileNotFoundError):
            raise
        except Exception as error:  # SafetensorError, JSON errors, missing tensors: a damaged file
            raise CacheEntryError(f"{where} is damaged or malformed: {error}") from error
        if metadata["format"] != UNVERIFIED_FORMAT and self.verify:
            self._verify_checksums(path, info, where, metadata, tensors)
        is_causal = metadata["is_causal"] == "true"
        if int8:
            try:
                dtype = parse_dtype(stored.dtype)
            except ValueError as error:
                raise CacheEntryError(f"{where} records no dtype to dequantize to: {error}") from None
            quantized = [
                tuple(
                    QuantizedTensor(*(tensors[f"layers.{i}.{kind}{suffix}"] for suffix in _INT8_PARTS))
                    for kind in ("keys", "values")
                )
                for i in range(num_layers)
            ]
            states = QuantizedKVStates(tensors["input_ids"], quantized, is_causal, dtype)
        else:
            layers = [(tensors[f"layers.{i}.keys"], tensors[f"layers.{i}.values"]) for i in range(num_layers)]
            states = KVStates(tensors["input_ids"], cache_from_layers(layers), is_causal)
        if states.is_causal != (self.fingerprint is None or self.fingerprint.attention == "causal"):
            raise CacheEntryError(f"{where} holds states of another attention than its fingerprint says.")
        if self.fingerprint is not None:
            check_states(where, states, self.fingerprint.layout, self.fingerprint.dtype)
        if self._memory is not None:
            self._memory.put(doc_id, states)
        return states

    def _verify_checksums(self, path: Path, info: os.stat_result | None, where: str, metadata: dict, tensors: dict):
        identity = None if info is None else (info.st_ino, info.st_mtime_ns, info.st_size)
        if identity is not None and self._verified.get(path) == identity:
            return
        try:
            expected = json.loads(metadata["checksums"])
        except (KeyError, ValueError) as error:
            raise CacheEntryError(f"{where} has no readable checksums: {error}") from None
        if not isinstance(expected, dict) or set(expected) != set(tensors):
            raise CacheEntryError(f"{where} has checksums for other tensors than it holds.")
        damaged = [name for name, tensor in tensors.items() if checksum(tensor.cpu()) != expected[name]]
        if damaged:
            raise CacheEntryError(f"{where} is damaged: the checksums of {damaged[:3]} do not match.")
        self._verified[path] = identity

    def delete(self, doc_id: str) -> bool:
        check_doc_id(doc_id)
        with self._lock:
            if self._memory is not None:
                self._memory.delete(doc_id)
            path = self.path_for(doc_id)
            self._verified.pop(path, None)
            if self._fs is not None:  # deleting a missing object succeeds in S3: ask first
                existed = doc_id in self
                self._fs.rm_file(str(path)) if existed else None
                return existed
            try:
                path.unlink()
                return True
            except FileNotFoundError:
                return False

    def _entries(self) -> Iterator[tuple[Path, dict[str, str]]]:
        """`(path, metadata)` of every entry whose metadata is readable and names the document its file is named
        after; a damaged, foreign or misplaced file is skipped with a warning."""
        if self._fs is not None:
            self._fs.invalidate_cache(str(self.directory))  # see entries other processes wrote meanwhile
            paths = [PurePosixPath(name) for name in sorted(self._fs.glob(f"{self.directory}/*.safetensors"))]
        else:
            paths = sorted(self.directory.glob("*.safetensors"))
        for path in paths:
            if path.name.startswith(".tmp-"):
                continue
            try:
                opened = self._open(path, header_only=True)
                if opened is None:
                    continue
                with opened[0]() as handle:
                    metadata = self._metadata(path, handle)
                if not valid_doc_id(metadata["doc_id"]) or self.path_for(metadata["doc_id"]) != path:
                    raise CacheEntryError(
                        f"it names the document {metadata['doc_id']!r:.80}, whose entry is another file"
                    )
                yield path, metadata
            except Exception as error:  # one bad file must not hide the others
                logger.warning(f"Skipping {path.name} in the KV store {self.directory}: {error}")

    def keys(self) -> list[str]:
        """The ids of the readable entries; a damaged, foreign or misplaced file is skipped with a warning."""
        return [metadata["doc_id"] for _, metadata in self._entries()]

    def __contains__(self, doc_id: object) -> bool:
        if not valid_doc_id(doc_id):
            return False
        if self._fs is not None:
            path = str(self.path_for(doc_id))
            self._fs.invalidate_cache(path)
            return self._fs.exists(path)
        try:
            return self._regular_file(self.path_for(doc_id)) is not None
        except CacheEntryError:
            return False

    def cleanup(self) -> int:
        """Remove temporary files left by writes that crashed; return how many were removed (none under a URL: an
        object is put in one request)."""
        removed = 0
        if self._fs is not None:
            return removed
        for path in self.directory.glob(".tmp-*.safetensors"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed
