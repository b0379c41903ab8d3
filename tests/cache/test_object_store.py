"""`DiskKVStore` on an object store: a real S3-compatible server (moto in server mode on 127.0.0.1, `moto_s3`)
reached through s3fs. An object holds the bytes of the local file of the same entry; each entry is one PUT and readers
only ever see whole entries; damaged objects are refused (and recomputed by the index); a missing bucket, wrong
credentials and read-only credentials are clear errors."""

from __future__ import annotations

import itertools
import json
import threading

import pytest
import torch

from grit_hf.cache import CacheEntryError, DiskKVStore, FingerprintMismatchError, MemoryKVStore

from .test_entries import FINGERPRINT, _states

_names = itertools.count()


@pytest.fixture
def bucket(moto_s3) -> str:
    """A new, empty bucket; the store's URL inside it."""
    name = f"states-{next(_names)}"
    moto_s3.client().create_bucket(Bucket=name)
    return f"s3://{name}/kv"


def _store(moto_s3, url: str, **kwargs) -> DiskKVStore:
    kwargs.setdefault("fingerprint", FINGERPRINT)
    return DiskKVStore(url, storage_options=moto_s3.storage_options(), **kwargs)


def _object(moto_s3, store: DiskKVStore, doc_id: str) -> tuple[str, str, bytes]:
    """`(bucket, key, bytes)` of the object of `doc_id`, read directly from the server (not through the store)."""
    bucket, key = str(store.path_for(doc_id)).split("/", 1)
    return bucket, key, moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _assert_same_states(a, b) -> None:
    assert torch.equal(a.input_ids, b.input_ids)
    for (ka, va), (kb, vb) in zip(a.layers(), b.layers()):
        assert torch.equal(ka, kb) and torch.equal(va, vb)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_an_object_holds_the_bytes_of_the_local_entry(moto_s3, bucket, tmp_path, quantize):
    local = DiskKVStore(tmp_path / "kv", fingerprint=FINGERPRINT, quantize=quantize)
    remote = _store(moto_s3, bucket, quantize=quantize)
    for store in (local, remote):
        store.put("a", _states(seq=7))
        store.put("b", _states(seed=3))
    _, _, data = _object(moto_s3, remote, "a")
    assert data == local.path_for("a").read_bytes()
    assert remote.size("a") == len(data) and remote.size("zzz") is None
    _assert_same_states(remote.get("a"), local.get("a"))
    assert sorted(remote.keys()) == sorted(local.keys()) == ["a", "b"]
    assert "a" in remote and "zzz" not in remote and remote.get("zzz") is None
    assert remote.delete("a") and not remote.delete("a")
    assert "a" not in remote and remote.keys() == ["b"] and remote.cleanup() == 0


def test_each_entry_is_one_put_and_readers_only_see_whole_entries(moto_s3, bucket):
    writer, reader = _store(moto_s3, bucket), _store(moto_s3, bucket)
    versions = [_states(seq=40, seed=1), _states(seq=40, seed=2)]
    real_pipe, puts = writer._fs.pipe_file, []
    writer._fs.pipe_file = lambda path, data, **kw: (puts.append(path), real_pipe(path, data, **kw))[1]
    writer.put("a", versions[0])
    stop, seen, errors = threading.Event(), [], []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(int(reader.get("a").input_ids[0]))
            except Exception as error:  # a torn or half-written entry would land here
                errors.append(error)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for round_ in range(12):
            writer.put("a", versions[round_ % 2])
    finally:
        stop.set()
        thread.join(60)
        writer._fs.pipe_file = real_pipe
    assert errors == [] and seen and set(seen) <= {1, 2}
    assert puts == [str(writer.path_for("a"))] * 13  # one request per write, to the entry's own object
    listed = moto_s3.client().list_objects_v2(Bucket=bucket.split("/")[2])["Contents"]
    assert [item["Key"] for item in listed] == [str(writer.path_for("a")).split("/", 1)[1]]


def test_a_damaged_or_truncated_object_is_refused(moto_s3, bucket):
    store = _store(moto_s3, bucket)
    store.put("a", _states())
    name, key, data = _object(moto_s3, store, "a")
    damaged = bytearray(data)
    damaged[-3] ^= 0x40  # a byte of the last tensor's data: only the checksum can tell
    moto_s3.client().put_object(Bucket=name, Key=key, Body=bytes(damaged))
    with pytest.raises(CacheEntryError, match="'a' is damaged: the checksums"):
        store.get("a")
    moto_s3.client().put_object(Bucket=name, Key=key, Body=data[:200])
    with pytest.raises(CacheEntryError, match="'a' is damaged or malformed"):
        store.get("a")
    moto_s3.client().put_object(Bucket=name, Key=key, Body=data)
    _assert_same_states(store.get("a"), _states())


def test_an_object_of_another_setup_is_refused(moto_s3, bucket):
    _store(moto_s3, bucket).put("a", _states())
    other = FINGERPRINT.__class__(**{**FINGERPRINT.__dict__, "weights": "other"})
    with pytest.raises(FingerprintMismatchError, match="weights"):
        _store(moto_s3, bucket, fingerprint=other).get("a")


def test_the_index_recomputes_a_damaged_object(moto_s3, bucket, grit_checkpoint):
    from grit_hf import GritLMForCausalLM, GritRAG

    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()
    reference = GritRAG(model, store=MemoryKVStore())
    rag = GritRAG(model, store=DiskKVStore(bucket, storage_options=moto_s3.storage_options()))
    text = "The capital of France is Paris. Paris is a city on the Seine."
    (doc_id,) = rag.add_documents([text])
    reference.add_documents([text])
    name, key, data = _object(moto_s3, rag.store, doc_id)
    moto_s3.client().put_object(Bucket=name, Key=key, Body=data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CacheEntryError):
        rag.store.get(doc_id)
    _assert_same_states(rag.index.document_states(doc_id), reference.store.get(doc_id))
    assert _object(moto_s3, rag.store, doc_id)[2] == data  # stored again, whole
    question = "What is the capital of France?"
    assert rag.answer(question, max_new_tokens=6).text == reference.answer(question, max_new_tokens=6).text


def test_a_missing_bucket_and_wrong_credentials_fail_when_the_store_opens(moto_s3):
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        _store(moto_s3, "s3://no-such-bucket/kv")
    moto_s3.client().create_bucket(Bucket="creds")
    wrong = moto_s3.storage_options(secret="not-the-secret")
    with pytest.raises(PermissionError, match="s3://creds/kv refused .* credentials"):
        DiskKVStore("s3://creds/kv", fingerprint=FINGERPRINT, storage_options=wrong)
    unknown = moto_s3.storage_options(key="AKIAUNKNOWN", secret="x")
    with pytest.raises(PermissionError, match="credentials"):
        DiskKVStore("s3://creds/kv", fingerprint=FINGERPRINT, storage_options=unknown)


def test_read_only_credentials_read_but_a_write_is_refused_and_keeps_the_entry(moto_s3, bucket):
    _store(moto_s3, bucket).put("a", _states())
    import boto3

    iam = boto3.client("iam", endpoint_url=moto_s3.url, region_name="us-east-1", aws_access_key_id=moto_s3.key,
                       aws_secret_access_key=moto_s3.secret)  # fmt: skip
    user = f"reader-{next(_names)}"
    iam.create_user(UserName=user)
    read = ["s3:Get*", "s3:List*", "s3:Head*"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": read, "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
    created = iam.create_access_key(UserName=user)["AccessKey"]
    options = moto_s3.storage_options(key=created["AccessKeyId"], secret=created["SecretAccessKey"])
    reader = DiskKVStore(bucket, fingerprint=FINGERPRINT, storage_options=options)
    _assert_same_states(reader.get("a"), _states())
    with pytest.raises(PermissionError, match=f"{bucket} refused writing"):
        reader.put("a", _states(seed=4))
    _assert_same_states(_store(moto_s3, bucket).get("a"), _states())
