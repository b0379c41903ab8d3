"""KV stores: LRU eviction by bytes, exact disk round trips, fingerprint refusal, atomic writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from grit_hf.cache import (
    CacheEntryError,
    DiskKVStore,
    Fingerprint,
    FingerprintMismatchError,
    KVStates,
    MemoryKVStore,
    cache_from_layers,
    compute_fingerprint,
)

FINGERPRINT = Fingerprint("tiny", "c" * 64, "w" * 64, "t" * 64, "torch.float32", "<|embed|>\n", "bidirectional")


def _states(seq: int = 5, layers: int = 2, dtype=torch.float32, seed: int = 0, is_causal: bool = False) -> KVStates:
    generator = torch.Generator().manual_seed(seed)
    pairs = [
        (
            torch.randn(1, 2, seq, 8, generator=generator).to(dtype),
            torch.randn(1, 2, seq, 8, generator=generator).to(dtype),
        )
        for _ in range(layers)
    ]
    return KVStates(torch.arange(seq) + seed, cache_from_layers(pairs), is_causal)


def _assert_equal_states(a: KVStates, b: KVStates) -> None:
    assert torch.equal(a.input_ids, b.input_ids) and a.is_causal == b.is_causal
    assert len(a.layers()) == len(b.layers())
    for (ka, va), (kb, vb) in zip(a.layers(), b.layers()):
        assert ka.dtype == kb.dtype and torch.equal(ka, kb) and torch.equal(va, vb)


# -- memory ---------------------------------------------------------------------------------------------------------
def test_memory_lru_evicts_least_recently_used_by_bytes():
    size = _states().nbytes
    store = MemoryKVStore(max_bytes=2 * size, fingerprint=FINGERPRINT)
    store.put("a", _states(seed=1))
    store.put("b", _states(seed=2))
    assert store.get("a") is not None  # "a" is now the most recent
    store.put("c", _states(seed=3))
    assert store.keys() == ["a", "c"] and "b" not in store
    assert store.nbytes == 2 * size and store.evictions == 1
    store.put("d", _states(seq=10, seed=4))  # twice the size: evicts both others
    assert store.keys() == ["d"] and store.nbytes == 2 * size


def test_memory_entry_over_budget_is_not_kept_and_replacing_updates_bytes():
    store = MemoryKVStore(max_bytes=_states().nbytes - 1, fingerprint=FINGERPRINT)
    store.put("big", _states())
    assert len(store) == 0 and store.nbytes == 0
    unbounded = MemoryKVStore(fingerprint=FINGERPRINT)
    unbounded.put("x", _states(seq=3))
    unbounded.put("x", _states(seq=6))
    assert unbounded.nbytes == _states(seq=6).nbytes and unbounded.delete("x") and unbounded.nbytes == 0


def test_memory_store_checks_input():
    with pytest.raises(ValueError, match="`max_bytes`"):
        MemoryKVStore(max_bytes=-1)
    with pytest.raises(ValueError, match="no fingerprint"):
        MemoryKVStore().put("a", _states())
    store = MemoryKVStore(fingerprint=FINGERPRINT)
    with pytest.raises(TypeError, match="`doc_id`"):
        store.put("", _states())
    with pytest.raises(TypeError, match="`states`"):
        store.put("a", "not states")
    with pytest.raises(ValueError, match="causal attention"):
        store.put("a", _states(is_causal=True))


def test_memory_store_refuses_a_foreign_fingerprint():
    store = MemoryKVStore(fingerprint=FINGERPRINT)
    store.put("a", _states())
    store.bind(replace(FINGERPRINT, weights="x" * 64))
    with pytest.raises(FingerprintMismatchError, match="weights"):
        store.get("a")


# -- disk -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_disk_round_trip_is_exact(tmp_path, dtype):
    store = DiskKVStore(tmp_path, fingerprint=replace(FINGERPRINT, dtype=str(dtype)))
    states = _states(seq=7, layers=3, dtype=dtype)
    store.put("doc/1 ü", states)
    loaded = DiskKVStore(tmp_path, fingerprint=replace(FINGERPRINT, dtype=str(dtype))).get("doc/1 ü")
    _assert_equal_states(states, loaded)
    assert loaded.cache.get_seq_length() == 7
    assert store.keys() == ["doc/1 ü"] and "doc/1 ü" in store and len(store) == 1
    assert store.get("missing") is None
    assert store.delete("doc/1 ü") and not store.delete("doc/1 ü") and len(store) == 0


def test_disk_files_are_plain_safetensors_with_metadata(tmp_path):
    store = DiskKVStore(tmp_path, fingerprint=FINGERPRINT)
    store.put("a", _states())
    (path,) = tmp_path.glob("*.safetensors")
    assert path == store.path_for("a")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        assert sorted(handle.keys())[:2] == ["input_ids", "layers.0.keys"]
    assert metadata["doc_id"] == "a" and metadata["format"] == "grit_hf.kv/2"
    assert Fingerprint.from_json(metadata["fingerprint"]) == replace(
        FINGERPRINT, storage="dense"
    )  # records its format
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle


def test_disk_memory_front_serves_repeated_reads(tmp_path):
    store = DiskKVStore(tmp_path, memory_bytes=10**6, fingerprint=FINGERPRINT)
    store.put("a", _states())
    first = store.get("a")
    store.path_for("a").unlink()  # served from memory now
    assert store.get("a") is first


def test_disk_store_refuses_a_foreign_fingerprint(tmp_path):
    DiskKVStore(tmp_path, fingerprint=FINGERPRINT).put("a", _states())
    other = DiskKVStore(tmp_path, fingerprint=replace(FINGERPRINT, attention="causal", template="X"))
    with pytest.raises(FingerprintMismatchError, match="attention: stored 'bidirectional' != expected 'causal'"):
        other.get("a")
    with pytest.raises(FingerprintMismatchError, match="template"):
        other.get("a")
    # only the model name differs: still accepted (a moved checkpoint keeps its states)
    assert DiskKVStore(tmp_path, fingerprint=replace(FINGERPRINT, model="elsewhere")).get("a") is not None


def test_compute_fingerprint_tracks_weights_tokenizer_attention_and_dtype(stock_checkpoint):
    from grit_hf import GritLMForCausalLM

    model = GritLMForCausalLM.from_pretrained(stock_checkpoint("llama"))
    base = compute_fingerprint(model, is_causal=False)
    assert base == compute_fingerprint(model, is_causal=False)
    assert compute_fingerprint(model, is_causal=True).differences(base) == [
        "attention: stored 'bidirectional' != expected 'causal'"
    ]
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0  # inside the strided sample
    assert compute_fingerprint(model, is_causal=False).weights != base.weights
    assert compute_fingerprint(model, is_causal=False, weights_hash="full").weights != base.weights
    assert compute_fingerprint(model.to(torch.bfloat16), is_causal=False).dtype == "torch.bfloat16"
    other = GritLMForCausalLM.from_pretrained(stock_checkpoint("qwen2"))
    assert {"config", "weights"} <= {
        line.split(":")[0] for line in compute_fingerprint(other, False).differences(base)
    }
    with pytest.raises(ValueError, match="`weights_hash`"):
        compute_fingerprint(model, False, weights_hash="none")


# -- atomicity --------------------------------------------------------------------------------------------------------
def test_failed_write_keeps_the_old_entry_and_leaves_no_temporary(tmp_path, monkeypatch):
    import grit_hf.cache.disk as disk_module

    store = DiskKVStore(tmp_path, fingerprint=FINGERPRINT)
    old = _states(seed=1)
    store.put("a", old)

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"__meta')  # a truncated header
        raise OSError("disk full")

    monkeypatch.setattr(disk_module, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        store.put("a", _states(seed=2))
    with pytest.raises(OSError, match="disk full"):
        store.put("b", _states(seed=3))
    _assert_equal_states(old, store.get("a"))
    assert store.get("b") is None and "b" not in store
    assert [p.name for p in tmp_path.iterdir()] == [store.path_for("a").name]


def test_crash_mid_write_never_leaves_a_half_written_entry(tmp_path):
    """A process killed (os._exit) halfway through writing: the old entry is intact, the new one absent."""
    store = DiskKVStore(tmp_path, fingerprint=FINGERPRINT)
    old = _states(seed=1)
    store.put("a", old)
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torch
        import grit_hf.cache.disk as disk_module
        from test_store import FINGERPRINT, _states

        real_save = disk_module.save_file

        def crash(tensors, filename, metadata=None):
            real_save(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            os._exit(3)  # killed before the entry is moved into place

        disk_module.save_file = crash
        store = disk_module.DiskKVStore({str(tmp_path)!r}, fingerprint=FINGERPRINT)
        store.put("a", _states(seed=2))
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 3, completed.stderr
    leftovers = list(tmp_path.glob(".tmp-*"))
    assert len(leftovers) == 1  # the half-written temporary file
    _assert_equal_states(old, store.get("a"))
    assert store.keys() == ["a"]
    assert store.cleanup() == 1 and not list(tmp_path.glob(".tmp-*"))


def test_disk_store_rejects_a_file_of_another_id(tmp_path):
    store = DiskKVStore(tmp_path, fingerprint=FINGERPRINT)
    store.put("a", _states())
    store.path_for("a").rename(store.path_for("b"))
    with pytest.raises(CacheEntryError, match="of 'b' names another document, 'a'"):
        store.get("b")
