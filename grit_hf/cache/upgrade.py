"""`grit-hf cache upgrade`: rewrite a disk store's entries of the old format `grit_hf.kv/1` (no checksums) in the
current format, with checksums of their tensors as they are now.

An entry that a read would refuse (missing or extra tensors, shapes, dtype or attention other than its own
fingerprint records, non-finite values) is left as it is and named in the report: checksums must never vouch for a
damaged entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.utils import logging

from .disk import FORMAT_VERSION, UNVERIFIED_FORMAT, DiskKVStore
from .entries import CacheEntryError, checksum
from .fingerprint import Fingerprint

logger = logging.get_logger(__name__)

__all__ = ["UpgradeReport", "upgrade_store"]


@dataclass(frozen=True)
class UpgradeReport:
    """What `DiskKVStore.upgrade` did.

    Attributes:
        rewritten: ids of the entries rewritten in the current format, with checksums.
        skipped: old-format entries left as they were because a read refuses them (file name -> why).
    """

    rewritten: list[str]
    skipped: dict[str, str]


def upgrade_store(store: DiskKVStore) -> UpgradeReport:
    """Upgrade the old-format entries of `store` (a local folder; see the module docstring)."""
    if store._fs is not None:
        raise ValueError(f"`upgrade` rewrites local folders only; {store.url} is a URL.")
    reader = DiskKVStore(store.directory, device="cpu", verify=False, read_unverified=True)
    rewritten, skipped = [], {}
    for path, metadata in list(reader._entries()):
        if metadata["format"] != UNVERIFIED_FORMAT:
            continue
        try:
            tensors = _structurally_sound(store, path, metadata)
        except Exception as error:  # what a read refuses; one bad file must not stop the others
            skipped[path.name] = str(error)
            logger.warning(f"Not upgrading {path.name} in the KV store {store.directory}: {error}")
            continue
        metadata = {**metadata, "format": FORMAT_VERSION}
        metadata["checksums"] = json.dumps({n: checksum(t) for n, t in tensors.items()}, sort_keys=True)
        store._write(metadata["doc_id"], tensors, metadata)
        rewritten.append(metadata["doc_id"])
    return UpgradeReport(rewritten, skipped)


def _structurally_sound(store: DiskKVStore, path: Path, metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """The tensors of an old-format entry, after the checks of a read by a store of the entry's own fingerprint
    (`CacheEntryError` if it would refuse it, or if the file holds tensors that a read would not take)."""
    doc_id = metadata["doc_id"]
    fingerprint = Fingerprint.from_json(metadata["fingerprint"])
    DiskKVStore(store.directory, fingerprint=fingerprint, verify=False, read_unverified=True).get(doc_id)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    layers = int(metadata["num_layers"])
    expected = {"input_ids"} | {f"layers.{i}.{kind}" for i in range(layers) for kind in ("keys", "values")}
    if set(tensors) != expected:
        raise CacheEntryError(
            f"{path.name} holds other tensors than its {layers} layers: {sorted(set(tensors) ^ expected)[:3]}."
        )
    return tensors
