"""Stored entries as bytes, and the places they are kept beyond a local folder (any fsspec URL).

- `entry_bytes`: an entry's safetensors bytes with a canonical header (JSON keys sorted). safetensors writes its
  metadata from a hash map, in an order that changes from one call to the next; sorted, the same entry is the same
  bytes in every store, process and run (a local file and an S3 object can be compared byte for byte).
- `save_file`: those bytes into a local file (`DiskKVStore` writes a temporary file with it, then renames it).
- `open_location`: an fsspec filesystem for a URL (`s3://bucket/prefix`, `gs://...`, `memory://...`), checked once:
  a missing bucket or refused credentials fail here, with the URL and what to do, not at the first write.
- `read_object` / `write_object`: one GET / one PUT per entry. Object stores make an object visible whole or not at
  all (a single PUT, or a multipart upload completed in one request), so no reader ever sees half an entry.
- `BytesEntry`: a downloaded entry, read like a `safe_open` handle (`metadata()`, `keys()`, `get_tensor`).
- `write_atomically`: bytes into a local file, through a temporary file and a rename (the index's own files).

Credentials and endpoints come from fsspec's usual places: `storage_options`, the environment (`AWS_ACCESS_KEY_ID`,
`AWS_ENDPOINT_URL`, ...) or fsspec's configuration (`FSSPEC_S3_ENDPOINT_URL`, ...). They are never written anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

__all__ = [
    "entry_bytes",
    "save_file",
    "is_url",
    "open_location",
    "read_object",
    "write_object",
    "BytesEntry",
    "write_atomically",
]

LOCAL_PROTOCOLS = ("file", "local")


def entry_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors bytes of `tensors` and `metadata`, with the header's JSON keys sorted (the same entry always
    gives the same bytes). The tensor data is safetensors' own, in its own order."""
    data = save(tensors, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    canonical += b" " * (-len(canonical) % 8)  # safetensors aligns the data that follows to 8 bytes
    return len(canonical).to_bytes(8, "little") + canonical + data[8 + length :]


def save_file(tensors: dict[str, torch.Tensor], filename: str | os.PathLike, metadata: dict[str, str] | None = None):
    """Write `entry_bytes(tensors, metadata)` to `filename` (the signature of `safetensors.torch.save_file`)."""
    with open(filename, "wb") as stream:
        stream.write(entry_bytes(tensors, metadata))


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to the local file `path` through a temporary file beside it, fsynced and renamed over `path`: a
    reader (or a process killed meanwhile) sees the old file or the new one, never part of one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def is_url(location: object) -> bool:
    """Whether `location` is a URL of a non-local fsspec filesystem (`s3://...`; not a path, not `file://`)."""
    if not isinstance(location, str) or "://" not in location:
        return False
    return location.split("://", 1)[0] not in LOCAL_PROTOCOLS


def _explain(error: Exception, url: str, doing: str) -> OSError:
    """A clear `OSError` of the same kind (`PermissionError`, `FileNotFoundError`, ...) naming the URL."""
    if isinstance(error, PermissionError):
        hint = "check the credentials (storage_options, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ...)"
        return PermissionError(f"The states location {url} refused {doing}: {error}. {hint}.")
    kind = type(error) if isinstance(error, OSError) else OSError
    return kind(f"Could not {doing} at the states location {url}: {error}")


def open_location(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """`(filesystem, root path)` of `url` (fsspec), after checking that its bucket (the first part of the path)
    exists and can be read with the credentials at hand. `FileNotFoundError` for a missing bucket and
    `PermissionError` for refused credentials, each naming the URL; nothing is created."""
    import fsspec

    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(f"`storage_options` must be a dict or None, got {type(storage_options).__name__}.")
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as error:  # e.g. s3fs missing: fsspec says which package to install
        raise ValueError(f"Cannot open the states location {url!r}: {error}") from None
    root = root.rstrip("/")
    bucket = root.lstrip("/").split("/", 1)[0]
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if bucket and "memory" not in protocols:  # an in-memory filesystem has no buckets
        try:
            fs.info(bucket)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"The states location {url} cannot be used: its bucket {bucket!r} does not exist (or these "
                "credentials cannot see it). Create it first; grit-hf never creates buckets."
            ) from None
        except OSError as error:
            raise _explain(error, url, "access to its bucket") from None
    return fs, root


def read_object(fs: Any, path: str, url: str, header_only: bool = False) -> bytes | None:
    """The bytes of the object `path` (one GET; with `header_only`, the safetensors header only: two ranged GETs),
    or `None` if there is none. Other failures raise a clear `OSError` naming `url`."""
    try:
        if not header_only:
            return fs.cat_file(path)
        length = int.from_bytes(fs.cat_file(path, start=0, end=8), "little")
        return fs.cat_file(path, start=0, end=8 + min(length, 100_000_000))
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _explain(error, url, f"reading {path}") from None


def write_object(fs: Any, path: str, data: bytes, url: str) -> None:
    """Put `data` as the object `path` in one request (see the module docstring); a clear `OSError` naming `url`."""
    try:
        fs.pipe_file(path, data)
    except OSError as error:
        raise _explain(error, url, f"writing {path}") from None
    fs.invalidate_cache(path)


class BytesEntry:
    """A safetensors entry held as bytes, read like a `safe_open` handle (a context manager giving itself).

    Args:
        data: the entry's bytes (or only its header, for `metadata()`).
        device: where `get_tensor` puts tensors.
    """

    def __init__(self, data: bytes, device: str | torch.device = "cpu"):
        self.data = data
        self.device = torch.device(device)
        self._tensors: dict[str, torch.Tensor] | None = None

    def __enter__(self) -> BytesEntry:
        length = int.from_bytes(self.data[:8], "little")
        if len(self.data) < 8 + length:
            raise ValueError(f"the header takes {length} bytes, the entry has {len(self.data) - 8} after its length")
        self._header = json.loads(self.data[8 : 8 + length])
        if not isinstance(self._header, dict):
            raise ValueError("the header is not a JSON object")
        return self

    def __exit__(self, *exc_info) -> None:
        self._tensors = None

    def metadata(self) -> dict[str, str]:
        return self._header.get("__metadata__") or {}

    def keys(self) -> list[str]:
        return sorted(name for name in self._header if name != "__metadata__")

    def get_tensor(self, name: str) -> torch.Tensor:
        if self._tensors is None:
            self._tensors = load(self.data)
        return self._tensors[name].to(self.device)
