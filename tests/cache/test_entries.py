"""Damaged, malformed and foreign cache entries: each is refused with `CacheEntryError` naming the entry (never a
torch error at generation, never a changed answer), listing skips them, reads never block, writes are atomic."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import grit_hf.cache.disk as disk_module
from grit_hf.cache import CacheEntryError, DiskKVStore, Fingerprint, KVStates, MemoryKVStore, cache_from_layers
from grit_hf.cache.entries import checksum
from grit_hf.cache.upgrade import upgrade_store
from grit_hf.cli import main as cli_main

LAYOUT = "layers=2;kv_heads=2;head_dim=8;vocab=100"
FINGERPRINT = Fingerprint("tiny", "c", "w", "t", "torch.float32", "<|embed|>\n", "bidirectional", LAYOUT)


def _states(seq: int = 5, seed: int = 0) -> KVStates:
    generator = torch.Generator().manual_seed(seed)
    pairs = [(torch.randn(1, 2, seq, 8, generator=generator), torch.randn(1, 2, seq, 8, generator=generator))]
    pairs.append((pairs[0][0] + 1, pairs[0][1] - 1))
    return KVStates(torch.arange(seq) + seed, cache_from_layers(pairs), False)


def _tensors(states: KVStates) -> dict[str, torch.Tensor]:
    tensors = {"input_ids": states.input_ids.clone()}
    for index, (keys, values) in enumerate(states.layers()):
        tensors[f"layers.{index}.keys"], tensors[f"layers.{index}.values"] = keys.clone(), values.clone()
    return tensors


def _write(store: DiskKVStore, doc_id: str, tensors: dict, **metadata) -> None:
    """An entry written by hand (valid checksums for `tensors` unless `checksums` is given)."""
    base = {
        "format": "grit_hf.kv/2",
        "doc_id": doc_id,
        "is_causal": "false",
        "num_layers": "2",
        "fingerprint": FINGERPRINT.to_json(),
        "checksums": json.dumps({name: checksum(tensor) for name, tensor in tensors.items()}),
    }
    base.update(metadata)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(store.path_for(doc_id)), metadata=base)


@pytest.fixture
def store(tmp_path):
    return DiskKVStore(tmp_path / "kv", fingerprint=FINGERPRINT)


def _flip_a_data_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_caught_by_the_checksum(store):
    store.put("a", _states())
    _flip_a_data_byte(store.path_for("a"))
    with pytest.raises(CacheEntryError, match=r"of 'a' is damaged: the checksums of \['layers.1.values'\]"):
        store.get("a")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_layers": "0"}, "declares 0 layers"),
        ({"num_layers": "-1"}, "declares -1 layers"),
        ({"num_layers": "three"}, "malformed"),
        ({"num_layers": "3"}, "malformed"),  # a layer the file does not hold
        ({"fingerprint": "{not json"}, "malformed"),
        ({"checksums": "[]"}, "checksums for other tensors"),
        ({"format": "grit_hf.kv/9"}, "not a grit_hf KV entry"),
        ({"is_causal": "true"}, "another attention"),
    ],
)
def test_malformed_metadata_is_refused(store, change, message):
    _write(store, "a", _tensors(_states()), **change)
    with pytest.raises(CacheEntryError, match=message):
        store.get("a")


def _reshaped(name: str, make) -> dict:
    tensors = _tensors(_states())
    tensors[name] = make(tensors[name])
    return tensors


@pytest.mark.parametrize(
    "tensors, message",
    [
        (_reshaped("layers.0.keys", lambda t: t[:, :, :4]), r"shape \(1, 2, 4, 8\), expected \(1, heads, 5"),
        (_reshaped("layers.1.values", lambda t: torch.cat([t, t], 3)), "2 heads of 16, the model 2 of 8"),
        (_reshaped("layers.0.keys", lambda t: torch.cat([t, t], 1)), "4 heads of 8, the model 2 of 8"),
        (_reshaped("layers.0.keys", lambda t: t.to(torch.bfloat16)), "are torch.bfloat16, the model computes"),
        (_reshaped("layers.0.keys", lambda t: t.index_fill(2, torch.tensor([1]), float("nan"))), "NaN or infinite"),
        (_reshaped("input_ids", lambda t: t[:0]), "non-empty 1-D int64"),
        (_reshaped("input_ids", lambda t: t + 1000), "outside the vocabulary of 100"),
        (_reshaped("input_ids", lambda t: t.float()), "non-empty 1-D int64"),
    ],
)
def test_entries_that_do_not_fit_the_model_are_refused(store, tensors, message):
    _write(store, "a", tensors)  # valid checksums: only the structure checks can catch these
    with pytest.raises(CacheEntryError, match=message):
        store.get("a")


def test_wrong_layer_count_against_the_model(store):
    tensors = _tensors(_states())
    tensors["layers.2.keys"], tensors["layers.2.values"] = tensors["layers.0.keys"] + 1, tensors["layers.0.values"] + 1
    _write(store, "a", tensors, num_layers="3")
    with pytest.raises(CacheEntryError, match="3 layers of states, the model has 2"):
        store.get("a")


def test_memory_and_disk_stores_refuse_bad_states_on_put(store):
    bad = _states()
    bad.cache.layers[0].keys = bad.cache.layers[0].keys.clone().fill_(float("inf"))
    for target in (MemoryKVStore(fingerprint=FINGERPRINT), store):
        with pytest.raises(CacheEntryError, match="The states of 'a': layer 0 keys hold NaN"):
            target.put("a", bad)
        assert "a" not in target


def test_listing_skips_damaged_and_foreign_files_with_a_warning(store, caplog):
    store.put("a", _states())
    store.put("b", _states(seed=1))
    (store.directory / "junk.safetensors").write_bytes(b"\x00not safetensors")
    truncated = store.path_for("b").read_bytes()[:40]
    store.path_for("b").write_bytes(truncated)
    os.mkfifo(store.directory / "fifo.safetensors")
    with caplog.at_level(logging.WARNING):
        assert store.keys() == ["a"]
    assert sum("Skipping" in r.message for r in caplog.records) == 3
    assert len(store) == 1 and list(store) == ["a"]
    with pytest.raises(CacheEntryError):
        store.get("b")


def test_a_fifo_under_an_entry_name_never_blocks(store):
    os.mkfifo(store.path_for("a"))
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(pytest.raises(CacheEntryError, store.get, "a")))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive() and outcome, "get() blocked on a FIFO"
    assert "a" not in store


def test_version_1_entries_without_checksums_are_read_only_when_asked_or_after_an_upgrade(store, tmp_path):
    tensors = _tensors(_states())
    _write(store, "a", tensors, format="grit_hf.kv/1", checksums="")
    with pytest.raises(CacheEntryError, match="old format grit_hf.kv/1.*read_unverified=True.*cache upgrade"):
        store.get("a")
    assert store.keys() == []  # not readable, so not listed
    trusting = DiskKVStore(store.directory, fingerprint=FINGERPRINT, read_unverified=True)
    assert torch.equal(trusting.get("a").layers()[1][0], tensors["layers.1.keys"]) and trusting.keys() == ["a"]
    assert upgrade_store(store).rewritten == ["a"] and upgrade_store(store).rewritten == []
    assert torch.equal(store.get("a").layers()[1][0], tensors["layers.1.keys"])  # now with checksums
    _flip_a_data_byte(store.path_for("a"))
    with pytest.raises(CacheEntryError, match="checksums"):
        DiskKVStore(store.directory, fingerprint=FINGERPRINT).get("a")


def test_the_cache_upgrade_command_rewrites_old_entries(store, tmp_path, capsys):
    tensors = _tensors(_states())
    _write(store, "a", tensors, format="grit_hf.kv/1", checksums="")
    assert cli_main(["cache", "upgrade", str(store.directory)]) == 0
    assert "1 entry rewritten with checksums" in capsys.readouterr().out
    assert torch.equal(store.get("a").layers()[1][0], tensors["layers.1.keys"])
    with pytest.raises(SystemExit, match="grit-hf cache: No such directory: .*missing"):
        cli_main(["cache", "upgrade", str(tmp_path / "missing")])


def _damaged(tensors: dict, damage: str) -> tuple[dict, dict]:
    """`tensors` of a sound entry with one kind of structural damage; returns (tensors, metadata changes)."""
    tensors = dict(tensors)
    if damage == "missing tensor":
        del tensors["layers.1.values"]
    elif damage == "extra tensor":
        tensors["layers.2.keys"] = tensors["layers.1.keys"].clone()
    elif damage == "keys and values differ":
        tensors["layers.0.values"] = tensors["layers.0.values"][:, :, :3]
    elif damage == "input ids too short":
        tensors["input_ids"] = tensors["input_ids"][:2]
    elif damage == "another dtype":
        tensors["layers.1.keys"] = tensors["layers.1.keys"].half()
    elif damage == "another layout":
        tensors["layers.0.keys"] = torch.cat([tensors["layers.0.keys"]] * 2, dim=1)
    elif damage == "not finite":
        tensors["layers.1.values"] = tensors["layers.1.values"].clone().fill_(float("nan"))
    changes = {"is_causal": "true"} if damage == "another attention" else {}
    changes.update({"num_layers": "0"} if damage == "no layers" else {})
    return tensors, changes


DAMAGES = [
    "missing tensor", "extra tensor", "keys and values differ", "input ids too short", "another dtype", "another layout",
    "not finite", "another attention", "no layers",
]  # fmt: skip


def test_upgrade_skips_and_names_structurally_damaged_old_entries(store, capsys):
    """Old-format entries that reads refuse are not rewritten with fresh checksums (which would vouch for them):
    each is left as it is and named in the report; the sound one is rewritten and reads back."""
    tensors = _tensors(_states())
    _write(store, "good", tensors, format="grit_hf.kv/1", checksums="")
    before = {}
    for damage in DAMAGES:
        broken, changes = _damaged(tensors, damage)
        _write(store, damage, broken, format="grit_hf.kv/1", checksums="", **changes)
        before[store.path_for(damage).name] = store.path_for(damage).read_bytes()
    assert cli_main(["cache", "upgrade", str(store.directory)]) == 0
    out = capsys.readouterr().out
    assert "1 entry rewritten with checksums" in out and f"{len(DAMAGES)} damaged entries of the old format" in out
    for name, data in before.items():
        assert store.path_for(next(d for d in DAMAGES if store.path_for(d).name == name)).read_bytes() == data
        assert f"  {name}: " in out
    assert torch.equal(store.get("good").layers()[1][0], tensors["layers.1.keys"])
    report = upgrade_store(store)  # nothing left to rewrite; the damaged ones are named again
    assert report.rewritten == [] and set(report.skipped) == set(before)


def test_rewriting_the_format_to_version_1_does_not_switch_the_checksums_off(store):
    """The downgrade attack: an entry's metadata set to the old format, and its data changed."""
    store.put("a", _states())
    path = store.path_for("a")
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    tensors["layers.1.values"] = tensors["layers.1.values"] + 1
    _write(store, "a", tensors, format="grit_hf.kv/1", checksums="")
    with pytest.raises(CacheEntryError, match="old format"):
        DiskKVStore(store.directory, fingerprint=FINGERPRINT).get("a")


def test_listing_checks_that_an_entry_names_the_document_of_its_file(store, caplog):
    """Entry b's file copied over entry a's: `keys()` does not list 'b' twice (nor 'a', whose file now says b)."""
    store.put("a", _states())
    store.put("b", _states(seed=1))
    store.path_for("a").write_bytes(store.path_for("b").read_bytes())
    with caplog.at_level(logging.WARNING, logger="grit_hf.cache.disk"):
        assert store.keys() == ["b"]
    assert "names the document 'b'" in caplog.text
    with pytest.raises(CacheEntryError, match="names another document"):
        store.get("a")


def test_checksums_are_verified_once_per_file(store, monkeypatch):
    store.put("a", _states())
    calls = []
    real = disk_module.checksum
    monkeypatch.setattr(disk_module, "checksum", lambda t: calls.append(1) or real(t))
    store.get("a")
    store.get("a")
    assert len(calls) == 5  # input_ids + 2 layers x (keys, values), once
    store.put("a", _states(seed=3))  # a new file is verified again
    calls.clear()
    store.get("a")
    assert len(calls) == 5


def test_empty_directory_is_refused():
    with pytest.raises(ValueError, match="`directory`"):
        DiskKVStore("")
    with pytest.raises(ValueError, match="`directory`"):
        DiskKVStore("   ")


def test_a_full_disk_raises_os_error_and_keeps_the_old_entry(store, monkeypatch):
    store.put("a", _states())

    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(disk_module, "save_file", full)
    with pytest.raises(OSError, match="No space left on device"):
        store.put("a", _states(seed=5))
    assert torch.equal(store.get("a").input_ids, _states().input_ids)
    assert not list(store.directory.glob(".tmp-*"))


def test_a_foreign_fingerprint_field_added_later_keeps_old_entries_comparable(store):
    """Fingerprints written before the `layout` field existed compare equal on the compared fields."""
    old = replace(FINGERPRINT, layout="")
    assert old.matches(FINGERPRINT)
