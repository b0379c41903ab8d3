"""Cached states in 8 bits (`quantize="int8"`): the round trip and its error bound, bytes per token, the memory and
disk stores, the format in the fingerprint, old dense entries in a quantizing store, validation of int8 entries, and
answers composed from int8 states (keys re-rotated after dequantization)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from grit_hf.cache import (
    CacheEntryError,
    DiskKVStore,
    Fingerprint,
    FingerprintMismatchError,
    KVStates,
    MemoryKVStore,
    QuantizedKVStates,
    cache_from_layers,
    quantize_states,
)
from grit_hf.cache.entries import checksum
from grit_hf.cache.quantization import DENSE_FRACTION, QuantizedTensor, dense_row_count, quantize_tensor

HEADS, HEAD_DIM = 2, 8
SEQ = 40  # 9 dense rows per head (`dense_row_count`), 31 int8 only
LAYOUT = f"layers=2;kv_heads={HEADS};head_dim={HEAD_DIM};vocab=100"
FINGERPRINT = Fingerprint("tiny", "c", "w", "t", "torch.float32", "<|embed|>\n", "bidirectional", LAYOUT)


def _states(seq: int = SEQ, seed: int = 0, dtype=torch.float32, layers: int = 2) -> KVStates:
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(layers):
        keys = torch.randn(1, HEADS, seq, HEAD_DIM, generator=generator)
        keys[..., 3] *= 20  # an outlier channel, as keys have
        pairs.append((keys.to(dtype), torch.randn(1, HEADS, seq, HEAD_DIM, generator=generator).to(dtype)))
    return KVStates((torch.arange(seq) + seed) % 100, cache_from_layers(pairs), False)


def _fingerprint(dtype) -> Fingerprint:
    return replace(FINGERPRINT, dtype=str(dtype))


# -- the format --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_keeps_shape_and_dtype_and_the_error_is_bounded_by_half_a_step(dtype):
    states = _states(seq=33, dtype=dtype)
    quantized = quantize_states(states)
    assert isinstance(quantized, QuantizedKVStates) and quantized.storage == "int8" and states.storage == "dense"
    assert quantized.dtype == dtype and quantized.num_tokens == 33 and quantized.is_causal is False
    assert quantized.input_ids is states.input_ids
    for (keys, values), (k8, v8), pair in zip(states.layers(), quantized.layers(), quantized.quantized):
        for original, restored, part in zip((keys, values), (k8, v8), pair):
            assert restored.shape == original.shape and restored.dtype == dtype and part.data.dtype == torch.int8
            assert part.positions.shape == (1, HEADS, dense_row_count(33)) and (part.positions[..., 0] == 0).all()
            kept = torch.zeros(1, HEADS, 33, dtype=torch.bool).scatter_(-1, part.positions.long(), True)[..., None]
            # the dense rows (the first position, the attention sink, and the outliers) are kept exactly
            assert torch.equal(restored.masked_fill(~kept, 0), original.masked_fill(~kept, 0))
            rest = original.float()
            low = rest.masked_fill(kept, float("inf")).amin(dim=-2, keepdim=True)  # per head and channel
            high = rest.masked_fill(kept, float("-inf")).amax(dim=-2, keepdim=True)
            scale = (high - low) / 255
            assert torch.allclose(part.scale, scale)
            error = (restored.float() - rest).abs().masked_fill(kept, 0)
            rounding = 0 if dtype == torch.float32 else rest.abs() * 2.0**-7  # the model dtype's own rounding
            assert (error <= scale / 2 * (1 + 1e-5) + rounding + 1e-7).all()
    # per-channel scales: the outlier channel does not cost the others their precision
    keys, k8 = states.layers()[0][0].float(), quantized.layers()[0][0].float()
    assert (k8 - keys)[..., 0].abs().max() < (k8 - keys)[..., 3].abs().max() / 5


def test_an_outlier_token_is_kept_dense_and_does_not_widen_the_ranges():
    values = torch.randn(1, HEADS, 200, HEAD_DIM, generator=torch.Generator().manual_seed(1))
    values[:, 1, 117] *= 50  # one token far out in head 1
    part = quantize_tensor(values)
    assert 117 in part.positions[0, 1].tolist()
    assert part.scale[:, 1].max() < 10 / 255  # the range of the other tokens, not of the outlier
    assert torch.equal(part.dequantize()[:, 1, 117], values[:, 1, 117])
    alone = quantize_tensor(values, dense_rows=1)  # only the first position dense: the outlier sets the range
    assert alone.scale[:, 1].max() > 3 * part.scale[:, 1].max()
    assert (alone.dequantize() - values).abs().max() > 3 * (part.dequantize() - values).abs().max()


def test_zero_channels_single_positions_and_requantizing():
    constant = torch.full((1, HEADS, 4, HEAD_DIM), 2.5)
    constant[..., 1] = 0.0
    flat = quantize_tensor(constant)
    assert torch.equal(flat.scale, torch.zeros(1, HEADS, 1, HEAD_DIM)) and torch.equal(flat.dequantize(), constant)
    skewed = torch.rand(1, HEADS, 50, HEAD_DIM, generator=torch.Generator().manual_seed(0)) + 10  # all in [10, 11]
    error = (quantize_tensor(skewed).dequantize() - skewed).abs().max()
    assert error <= 1 / 255 / 2 * 1.01  # the offset spends all 256 levels on the channel's range
    one = _states(seq=1)
    quantized = quantize_states(one)  # the dense position is all there is
    assert quantized.quantized[0][0].dense.shape == (1, HEADS, 1, HEAD_DIM)
    assert torch.equal(quantized.layers()[0][0], one.layers()[0][0])
    assert quantize_states(quantized) is quantized  # already 8 bits
    none_dense = quantize_states(_states(), dense_rows=0)
    assert none_dense.quantized[0][0].dense.shape[-2] == 0 and none_dense.layers()[0][0].shape[-2] == SEQ
    with pytest.raises(ValueError, match="`quantize`"):
        quantize_states(one, "int4")
    with pytest.raises(ValueError, match="`dense_rows`"):
        quantize_states(one, dense_rows=-1)


def test_layers_are_new_tensors_and_cache_holds_them():
    quantized = quantize_states(_states())
    first, second = quantized.layers(), quantized.layers()
    assert first[0][0] is not second[0][0] and torch.equal(first[0][0], second[0][0])
    assert quantized.cache.get_seq_length() == SEQ and torch.equal(quantized.cache.layers[1].values, first[1][1])
    assert "storage='int8'" in repr(quantized)


@pytest.mark.parametrize("dtype, dense_token", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_each_further_token_takes_half_the_bytes_of_bf16_plus_its_share_of_outlier_rows(dtype, dense_token):
    """Per token: 1 byte per element (bf16: 2), plus the dense rows (`dense_token` bytes per element and an int32
    position per head) of 1% of the tokens. Per entry: the scales and offsets (float32 per head and channel, keys and
    values) and `DENSE_ROWS` dense rows."""
    elements_per_token = 2 * 2 * HEADS * HEAD_DIM  # layers x (keys, values) x heads x head_dim
    bf16 = elements_per_token * 2
    row = elements_per_token * dense_token + elements_per_token // HEAD_DIM * 4  # a dense row and its positions
    sizes = {seq: quantize_states(_states(seq=seq, dtype=dtype)).nbytes for seq in (100, 1100)}
    for seq, size in sizes.items():
        assert size == elements_per_token * (seq + 4 + 4) + dense_row_count(seq) * row
    per_token = (sizes[1100] - sizes[100]) / 1000
    assert per_token == 0.5 * bf16 + (dense_row_count(1100) - dense_row_count(100)) / 1000 * row
    assert per_token <= 0.5 * bf16 + DENSE_FRACTION * row  # bf16: 0.51x, float32 states: 0.52x of bf16
    assert _states(seq=100, dtype=torch.bfloat16).nbytes == 100 * bf16


# -- memory store -----------------------------------------------------------------------------------------------------
def test_memory_store_keeps_int8_and_counts_its_bytes():
    store = MemoryKVStore(fingerprint=FINGERPRINT, quantize="int8")
    states = _states(seq=100)
    store.put("a", states)
    kept = store.get("a")
    assert isinstance(kept, QuantizedKVStates) and store.nbytes == kept.nbytes == quantize_states(states).nbytes
    assert kept.nbytes < states.nbytes * 0.38  # fp32 states: int8 is a quarter, plus 9 dense rows of 100
    for (keys, values), (k8, v8) in zip(states.layers(), kept.layers()):
        assert (keys - k8).abs().max() < keys.abs().max() / 200 and (
            values - v8
        ).abs().max() < values.abs().max() / 200
    budget = MemoryKVStore(max_bytes=2 * kept.nbytes, fingerprint=FINGERPRINT, quantize="int8")
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        budget.put(name, _states(seq=100, seed=seed))
    assert budget.keys() == ["b", "c"] and budget.nbytes == 2 * kept.nbytes  # LRU over int8 bytes
    with pytest.raises(ValueError, match="`quantize`"):
        MemoryKVStore(quantize="int4")


def test_int8_states_are_kept_as_they_are_by_any_store_and_checked():
    quantized = quantize_states(_states())
    dense_store = MemoryKVStore(fingerprint=FINGERPRINT)
    dense_store.put("a", quantized)
    assert dense_store.get("a") is quantized
    assert MemoryKVStore(fingerprint=_fingerprint(torch.bfloat16)).fingerprint.dtype == "torch.bfloat16"
    with pytest.raises(CacheEntryError, match="dequantize to torch.float32, the model computes torch.bfloat16"):
        MemoryKVStore(fingerprint=_fingerprint(torch.bfloat16)).put("a", quantized)
    bad = quantize_states(_states())
    keys, values = bad.quantized[0]
    nan_scale = QuantizedTensor(keys.dense, keys.data, keys.scale.fill_(float("nan")), keys.offset, keys.positions)
    bad.quantized[0] = (nan_scale, values)
    with pytest.raises(CacheEntryError, match="layer 0 keys scales hold negative, NaN or infinite"):
        MemoryKVStore(fingerprint=FINGERPRINT).put("a", bad)
    with pytest.raises(CacheEntryError, match="layer 0 keys hold NaN"):  # NaN never reaches a scale
        poisoned = _states()
        poisoned.cache.layers[0].keys[0, 0, 4, 0] = float("nan")
        MemoryKVStore(fingerprint=FINGERPRINT, quantize="int8").put("a", poisoned)


# -- disk store -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_disk_round_trip_of_int8_entries(tmp_path, dtype):
    fingerprint = _fingerprint(dtype)
    store = DiskKVStore(tmp_path, fingerprint=fingerprint, quantize="int8")
    states = _states(seq=40, dtype=dtype)
    store.put("doc/ü", states)
    expected = quantize_states(states)
    loaded = DiskKVStore(tmp_path, fingerprint=fingerprint).get("doc/ü")  # a store that does not quantize reads it
    assert isinstance(loaded, QuantizedKVStates) and loaded.dtype == dtype
    assert torch.equal(loaded.input_ids, states.input_ids) and loaded.nbytes == expected.nbytes
    for (a_keys, a_values), (b_keys, b_values) in zip(loaded.quantized, expected.quantized):
        for a, b in ((a_keys, b_keys), (a_values, b_values)):
            assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
    for (k1, v1), (k2, v2) in zip(loaded.layers(), expected.layers()):
        assert k1.dtype == dtype and torch.equal(k1, k2) and torch.equal(v1, v2)
    assert store.keys() == ["doc/ü"] and "doc/ü" in store and store.delete("doc/ü") and "doc/ü" not in store


def test_int8_files_record_their_format_and_are_about_half_the_size_of_bf16(tmp_path):
    fingerprint = _fingerprint(torch.bfloat16)
    states = _states(seq=2000, dtype=torch.bfloat16)
    dense, int8 = (
        DiskKVStore(tmp_path / "dense", fingerprint=fingerprint),
        DiskKVStore(tmp_path / "int8", fingerprint=fingerprint, quantize="int8"),
    )
    dense.put("a", states)
    int8.put("a", states)
    with safe_open(str(int8.path_for("a")), framework="pt") as handle:
        metadata = handle.metadata()
        names = set(handle.keys())
    assert metadata["format"] == "grit_hf.kv/3" and metadata["storage"] == "int8"
    assert Fingerprint.from_json(metadata["fingerprint"]) == replace(fingerprint, storage="int8")
    parts = ("", "_scale", "_offset", "_dense", "_positions")
    assert {f"layers.1.values{part}" for part in parts} <= names
    assert set(json.loads(metadata["checksums"])) == names  # the checksums cover the scales too
    with safe_open(str(dense.path_for("a")), framework="pt") as handle:
        assert handle.metadata()["format"] == "grit_hf.kv/2"
        assert Fingerprint.from_json(handle.metadata()["fingerprint"]).storage == "dense"

    def state_bytes(path) -> int:  # tensor data without the header (u64 length + JSON) and the int64 input ids
        return path.stat().st_size - 8 - int.from_bytes(path.read_bytes()[:8], "little") - 8 * 2000

    elements_per_token = 2 * 2 * HEADS * HEAD_DIM
    assert state_bytes(dense.path_for("a")) == 2000 * elements_per_token * 2
    # per token half of bf16; float32 scales and offsets per entry; the bf16 dense rows with their int32 positions
    row = elements_per_token * 2 + elements_per_token // HEAD_DIM * 4
    assert state_bytes(int8.path_for("a")) == elements_per_token * (2000 + 4 + 4) + dense_row_count(2000) * row
    assert state_bytes(int8.path_for("a")) / state_bytes(dense.path_for("a")) < 0.52


def test_old_dense_entries_load_exactly_in_a_quantizing_store(tmp_path):
    states = _states()
    DiskKVStore(tmp_path, fingerprint=FINGERPRINT).put("new", states)
    tensors = {"input_ids": states.input_ids}
    for index, (keys, values) in enumerate(states.layers()):
        tensors[f"layers.{index}.keys"], tensors[f"layers.{index}.values"] = keys.contiguous(), values.contiguous()
    store = DiskKVStore(tmp_path, fingerprint=FINGERPRINT, quantize="int8", memory_bytes=10**6, read_unverified=True)
    old = replace(FINGERPRINT, storage="")  # written before the format was recorded
    for version, name in (("grit_hf.kv/1", "v1"), ("grit_hf.kv/2", "v2")):
        metadata = {
            "format": version,
            "doc_id": name,
            "is_causal": "false",
            "num_layers": "2",
            "fingerprint": json.dumps({k: v for k, v in json.loads(old.to_json()).items() if k != "storage"}),
            "checksums": json.dumps({n: checksum(t) for n, t in tensors.items()}) if version.endswith("2") else "",
        }
        save_file(tensors, str(store.path_for(name)), metadata=metadata)
    for name in ("new", "v1", "v2"):
        loaded = store.get(name)
        assert type(loaded) is KVStates, name
        for (k1, v1), (k2, v2) in zip(loaded.layers(), states.layers()):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)
    assert sorted(store.keys()) == ["new", "v1", "v2"]


def test_int8_entries_of_another_setup_are_refused(tmp_path):
    DiskKVStore(tmp_path, fingerprint=FINGERPRINT, quantize="int8").put("a", _states())
    with pytest.raises(FingerprintMismatchError, match="weights"):
        DiskKVStore(tmp_path, fingerprint=replace(FINGERPRINT, weights="other")).get("a")
    with pytest.raises(FingerprintMismatchError, match="dtype"):
        DiskKVStore(tmp_path, fingerprint=_fingerprint(torch.bfloat16)).get("a")


def test_the_memory_front_of_a_disk_store_keeps_int8(tmp_path):
    store = DiskKVStore(tmp_path, fingerprint=FINGERPRINT, quantize="int8", memory_bytes=10**6)
    store.put("a", _states())
    assert isinstance(store._memory.get("a"), QuantizedKVStates)
    assert store._memory.nbytes == quantize_states(_states()).nbytes


# -- damaged and malformed int8 entries ---------------------------------------------------------------------------------
def _int8_tensors(seq: int = SEQ, dense_rows: int | None = None) -> dict[str, torch.Tensor]:
    tensors = {"input_ids": torch.arange(seq)}
    for index, pair in enumerate(quantize_states(_states(seq=seq), dense_rows=dense_rows).quantized):
        for kind, part in zip(("keys", "values"), pair):
            tensors[f"layers.{index}.{kind}"] = part.data
            tensors[f"layers.{index}.{kind}_scale"] = part.scale
            tensors[f"layers.{index}.{kind}_offset"] = part.offset
            tensors[f"layers.{index}.{kind}_dense"] = part.dense
            tensors[f"layers.{index}.{kind}_positions"] = part.positions
    return tensors


def _write_int8(store: DiskKVStore, doc_id: str, tensors: dict, **metadata) -> None:
    """An int8 entry written by hand, with valid checksums: only the structure checks can catch what is wrong."""
    base = {
        "format": "grit_hf.kv/3",
        "storage": "int8",
        "doc_id": doc_id,
        "is_causal": "false",
        "num_layers": "2",
        "fingerprint": replace(FINGERPRINT, storage="int8").to_json(),
        "checksums": json.dumps({name: checksum(tensor) for name, tensor in tensors.items()}),
    }
    base.update(metadata)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(store.path_for(doc_id)), metadata=base)


def _changed(name: str, make) -> dict:
    tensors = _int8_tensors()
    tensors[name] = make(tensors[name])
    return tensors


@pytest.mark.parametrize(
    "tensors, message",
    [
        (_changed("layers.0.keys_scale", lambda t: t[..., :4]), r"keys scales are torch.float32 \(1, 2, 1, 4\)"),
        (_changed("layers.1.values_scale", lambda t: t.expand(1, 2, 3, 8)), r"values scales are .* \(1, 2, 3, 8\)"),
        (_changed("layers.0.keys_scale", lambda t: t.reshape(2, 8)), r"scales are torch.float32 \(2, 8\)"),
        (_changed("layers.0.keys_scale", lambda t: t.half()), "scales are torch.float16"),
        (_changed("layers.0.values_scale", lambda t: -t), "scales hold negative"),
        (_changed("layers.0.values_scale", lambda t: t / 0), "scales hold negative, NaN or infinite"),
        (_changed("layers.1.keys_offset", lambda t: t[:, :1]), r"keys offsets are torch.float32 \(1, 1, 1, 8\)"),
        (_changed("layers.1.keys_offset", lambda t: t * float("nan")), "offsets hold NaN or infinite"),
        (_changed("layers.0.keys", lambda t: t.float()), "keys are torch.float32, int8 states hold int8"),
        (
            _changed("layers.0.keys", lambda t: t[:, :, :5]),
            r"shape \(1, 2, 5, 8\), expected \(1, heads, 40, head_dim\)",
        ),
        (_changed("layers.1.keys", lambda t: torch.cat([t, t], 1)), "4 heads of 8, the model 2 of 8"),
        (_changed("layers.0.values_dense", lambda t: t.half()), "the dense part is torch.float16"),
        (_changed("layers.0.values_dense", lambda t: t * float("inf")), "hold NaN or infinite"),
        (
            _changed("layers.0.keys_dense", lambda t: t[..., :0, :]),
            r"dense rows \(1, 2, 0, 8\) at positions \(1, 2, 9\)",
        ),
        (_changed("layers.0.keys_positions", lambda t: t.long()), "positions are torch.int64, expected int32"),
        (_changed("layers.1.values_positions", lambda t: t.flip(-1)), "positions are not increasing in"),
        (_changed("layers.1.values_positions", lambda t: t + 39), r"positions are not increasing in \[0, 40\)"),
        (_changed("layers.1.values_positions", lambda t: t - 1), "positions are not increasing in"),
    ],
)
def test_int8_entries_that_do_not_fit_are_refused(tmp_path, tensors, message):
    store = DiskKVStore(tmp_path, fingerprint=FINGERPRINT)
    _write_int8(store, "a", tensors)
    with pytest.raises(CacheEntryError, match=message):
        store.get("a")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"storage": "int4"}, "has the storage 'int4', its format int8"),
        ({"fingerprint": replace(FINGERPRINT, storage="dense").to_json()}, "is int8, its fingerprint records 'dense'"),
        (
            {"fingerprint": replace(FINGERPRINT, dtype="torch.int8", storage="int8").to_json()},
            "no dtype to dequantize",
        ),
    ],
)
def test_int8_entries_with_inconsistent_metadata_are_refused(tmp_path, change, message):
    store = DiskKVStore(tmp_path)  # no fingerprint: nothing to compare the dtype with
    _write_int8(store, "a", _int8_tensors(), **change)
    with pytest.raises(CacheEntryError, match=message):
        store.get("a")


def test_missing_scales_and_flipped_scale_bytes_are_caught(tmp_path):
    store = DiskKVStore(tmp_path, fingerprint=FINGERPRINT)
    tensors = _int8_tensors()
    del tensors["layers.1.keys_scale"]
    _write_int8(store, "a", tensors)
    with pytest.raises(CacheEntryError, match="damaged or malformed"):
        store.get("a")
    DiskKVStore(tmp_path, fingerprint=FINGERPRINT, quantize="int8").put("b", _states())
    path = store.path_for("b")
    with safe_open(str(path), framework="pt") as handle:
        scale = handle.get_tensor("layers.0.values_scale")
    data = bytearray(path.read_bytes())
    at = bytes(data).index(scale.contiguous().view(torch.uint8).numpy().tobytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CacheEntryError, match=r"checksums of \['layers.0.values_scale'\]"):
        store.get("b")


def test_a_dense_format_file_holding_int8_tensors_is_refused(tmp_path):
    """A version-2 (dense) entry whose keys are int8 is not read as int8 states: the format decides."""
    store = DiskKVStore(tmp_path, fingerprint=FINGERPRINT)
    tensors = {
        name: tensor
        for name, tensor in _int8_tensors(dense_rows=0).items()
        if not name.endswith(("_scale", "_offset", "_dense", "_positions"))
    }
    _write_int8(store, "a", tensors, format="grit_hf.kv/2", fingerprint=FINGERPRINT.to_json())
    with pytest.raises(CacheEntryError, match="are torch.int8, the model computes torch.float32"):
        store.get("a")


# -- answers from int8 states -------------------------------------------------------------------------------------------
DOCS = [
    "The capital of France is Paris. Paris is a city on the Seine.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
]
QUERY = "What is the capital of France?"
GEN = dict(max_new_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_model(stock_checkpoint):
    from grit_hf import GritLMForCausalLM

    return GritLMForCausalLM.from_pretrained(stock_checkpoint("llama")).eval()


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_answers_compose_the_dequantized_states_at_their_offsets(tiny_model, tmp_path, attention):
    """An int8 store answers exactly as a dense store holding the dequantized states (keys re-rotated after
    dequantization to each document's offset, top_k=2), from memory and from disk after a restart."""
    from grit_hf.rag import GritRAG

    int8 = GritRAG(tiny_model, cache_attention=attention, store=MemoryKVStore(quantize="int8"))
    ids = int8.add_documents(DOCS)
    assert all(isinstance(int8.store.get(doc_id), QuantizedKVStates) for doc_id in ids)
    assert int8.store.fingerprint == int8.fingerprint  # the store's own fingerprint is the setup's
    reference = GritRAG(tiny_model, cache_attention=attention)
    reference.add_documents(DOCS)
    for doc_id in ids:  # the same index, its states replaced by the dequantized int8 states
        quantized = int8.store.get(doc_id)
        dequantized = cache_from_layers(quantized.layers())
        reference.store.put(doc_id, KVStates(quantized.input_ids, dequantized, quantized.is_causal))
    expected = reference.answer(QUERY, mode="doc", top_k=2, **GEN)
    answer = int8.answer(QUERY, mode="doc", top_k=2, **GEN)
    assert answer.token_ids == expected.token_ids and answer.doc_ids == expected.doc_ids
    assert answer.cache_read_tokens == expected.cache_read_tokens > 0

    disk = GritRAG(tiny_model, cache_attention=attention, store=DiskKVStore(tmp_path, quantize="int8"))
    disk.add_documents(DOCS)
    disk.store = DiskKVStore(tmp_path, fingerprint=disk.fingerprint)  # after a restart, a store that does not quantize
    assert all(isinstance(disk.store.get(doc_id), QuantizedKVStates) for doc_id in ids)
    assert disk.answer(QUERY, mode="doc", top_k=2, **GEN).token_ids == expected.token_ids


def test_int8_answers_stay_close_to_dense_ones(tiny_model):
    """The next-token distributions along an answer barely move (KL per token), for causal states."""
    from grit_hf.generation.compose import continuation_logits
    from grit_hf.rag import GritRAG

    dense = GritRAG(tiny_model, cache_attention="causal")
    dense.add_documents(DOCS, ids=["paris", "berlin", "photo"])
    answer = dense.answer(QUERY, mode="doc", doc_ids=["paris", "berlin"], **GEN)
    plan = dense.build_plan(QUERY, "doc", ["paris", "berlin"])
    rotary = dense.generator.rotary_emb
    with torch.inference_mode():
        reference = continuation_logits(tiny_model, dense.resolve(plan), answer.token_ids, rotary, "cpu")
        dense.store = MemoryKVStore(fingerprint=dense.fingerprint, quantize="int8")
        for doc_id in ("paris", "berlin"):
            dense.index.document_states(doc_id)  # not stored any more: recomputed and kept in 8 bits
        assert isinstance(dense.store.get("paris"), QuantizedKVStates)
        logits = continuation_logits(tiny_model, dense.resolve(plan), answer.token_ids, rotary, "cpu")
    kl = torch.nn.functional.kl_div(
        logits.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="none"
    ).sum(-1)
    assert float(kl.max()) < 1e-3, kl
