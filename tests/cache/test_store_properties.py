"""Property-based checks (hypothesis) over document ids: the memory and the disk store accept and refuse the same ids,
with the same errors, and agree on `in`, `get`, `delete` and `keys()` for what they accept."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grit_hf.cache import DiskKVStore, Fingerprint, KVStates, MemoryKVStore, cache_from_layers

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
LAYOUT = "layers=1;kv_heads=1;head_dim=4;vocab=50"
FINGERPRINT = Fingerprint("tiny", "c", "w", "t", "torch.float32", "<|embed|>\n", "bidirectional", LAYOUT)
IDS = st.one_of(
    st.text(max_size=30),
    st.builds(lambda a, s: a + s, st.text(max_size=5), st.sampled_from(["\ud800", "\udfff"])),
    st.sampled_from(["", ".", "..", "/", "a/../b", "\x00", "con", " " * 3, "x" * 300]),
    st.one_of(st.none(), st.integers(), st.binary(max_size=5), st.lists(st.text(max_size=3), max_size=2)),
)


def _states() -> KVStates:
    keys = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    return KVStates(torch.tensor([1, 2, 3]), cache_from_layers([(keys, -keys)]), False)


def _outcome(call):
    try:
        return ("ok", call())
    except (TypeError, ValueError) as error:
        return (type(error).__name__, str(error))


@pytest.fixture(scope="module")
def folder():
    path = tempfile.mkdtemp(prefix="kv-properties-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@SETTINGS
@given(doc_id=IDS)
def test_both_stores_accept_and_refuse_the_same_ids(folder, doc_id):
    stores = [MemoryKVStore(fingerprint=FINGERPRINT), DiskKVStore(folder, fingerprint=FINGERPRINT)]
    states = _states()
    put = [_outcome(lambda s=s: s.put(doc_id, states)) for s in stores]
    assert put[0] == put[1], put
    contains = [doc_id in s for s in stores]
    assert contains[0] == contains[1] == (put[0][0] == "ok")
    got = [_outcome(lambda s=s: s.get(doc_id)) for s in stores]
    assert [kind for kind, _ in got] == [put[0][0]] * 2, got
    if put[0][0] == "ok":
        assert all(torch.equal(value.layers()[0][0], states.layers()[0][0]) for _, value in got)
        assert all(s.keys() == [doc_id] for s in stores)
    deleted = [_outcome(lambda s=s: s.delete(doc_id)) for s in stores]
    assert deleted[0] == deleted[1], deleted
    assert all(doc_id not in s for s in stores) and all(s.keys() == [] for s in stores)
