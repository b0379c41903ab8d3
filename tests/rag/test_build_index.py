"""`build_index` / `grit-hf index` and `GritRAG.from_index`: an opened index searches and answers like a `GritRAG`
that indexed the same documents; two processes under `accelerate launch` build the index of one process (the same
bytes); a build killed halfway resumes without losing or duplicating a document; another model is refused; what a
process adds stays its own; a `datasets` corpus, a JSONL file and int8 states work through the command line."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grit_hf import GritRAG, load_model
from grit_hf.cache import FingerprintMismatchError, QuantizedKVStates
from grit_hf.cli import main as cli_main
from grit_hf.rag import build_index
from grit_hf.rag.documents import DocumentTable
from grit_hf.rag.manifest import IndexManifest

pytest.importorskip("faiss")
pytest.importorskip("accelerate")

REPO = Path(__file__).resolve().parents[2]
WORDS = "file group owner copy move list print network socket memory disk user mode link time size".split()
QUESTIONS = ["change the group of a file", "copy files", "network socket", "memory size of the disk"]


def _corpus(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"Page {i}: " + " ".join(rng.choice(WORDS) for _ in range(8 + i % 13)) + "." for i in range(count)]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "integrations"), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], log: Path, timeout: int = 240) -> None:
    """Run `command` in its own session; on a timeout, kill every process of it (the launcher and its workers)."""
    with open(log, "w") as stream:
        process = subprocess.Popen(
            command, env=_env(), stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            code = "timeout"
    assert code == 0, f"exit {code}:\n" + log.read_text()[-6000:]


def _index_cli(corpus: Path, out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["-m", "grit_hf.cli", "index", str(corpus), "--model", str(checkpoint), "--out", str(out),
            "--dtype", "float32", "--no-progress", *extra]  # fmt: skip


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "text": text}) + "\n" for i, text in enumerate(texts)))
    return path


def _state_files(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*"))}


@pytest.fixture(scope="module")
def checkpoint(grit_checkpoint) -> Path:
    return grit_checkpoint("llama")


@pytest.fixture(scope="module")
def built(checkpoint, tmp_path_factory) -> tuple[Path, list[str]]:
    """An index of 40 pages built in this process (float32, chunks of 4)."""
    texts = _corpus(40)
    out = tmp_path_factory.mktemp("index") / "one"
    build_index(texts, out, model=str(checkpoint), dtype="float32", chunk_size=4, show_progress_bar=False)
    return out, texts


def test_an_opened_index_searches_and_answers_like_gritrag(built, checkpoint):
    out, texts = built
    rag = GritRAG.from_index(out)
    reference = GritRAG(load_model(checkpoint, dtype="float32"))
    reference.add_documents(texts)
    assert rag.doc_ids == reference.doc_ids and len(rag.documents) == 40
    torch.testing.assert_close(
        rag.get_embeddings(rag.doc_ids), reference.get_embeddings(rag.doc_ids), rtol=0, atol=1e-5
    )
    exact = DocumentTable(64)
    exact.vector_backend = "torch"  # today's table over the index's own embeddings: the exact reference
    exact.update({d: rag.get_text(d) for d in rag.doc_ids}, rag.get_embeddings(rag.doc_ids), [False] * 40)
    for question in QUESTIONS:
        found = rag.search(question, top_k=10)
        assert [d for d, _ in found] == [d for d, _ in exact.rank(rag.embed([question])[0], 10)]
        assert [d for d, _ in found] == [d for d, _ in reference.search(question, top_k=10)]
        doc_ids = [found[0][0]]
        answer = rag.answer(question, doc_ids=doc_ids, max_new_tokens=8)
        assert answer.text == reference.answer(question, doc_ids=doc_ids, max_new_tokens=8).text
        assert answer.cache_read_tokens > 0
    states, expected = rag.store.get(rag.doc_ids[3]), reference.store.get(rag.doc_ids[3])
    torch.testing.assert_close(states.layers()[1][1], expected.layers()[1][1], rtol=0, atol=1e-5)
    manifest = IndexManifest.load(out)
    assert (manifest.documents, manifest.dim, manifest.states, manifest.vector_index) == (40, 64, "states", "flat")
    assert manifest.tokens == sum(len(rag.embedding_pass.input_ids(t, "")) for t in texts)


@pytest.mark.slow
def test_two_processes_under_accelerate_build_the_index_of_one(built, checkpoint, tmp_path):
    one, texts = built
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps(texts))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]  # fmt: skip
    two = tmp_path / "two"
    _run(launch + _index_cli(corpus, two, checkpoint, "--chunk-size", "4"), tmp_path / "launch.log")
    assert "40 documents (40 embedded now, 0 complete before)" in (tmp_path / "launch.log").read_text()
    ranks = set()
    for part in (two / "parts").glob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(part), "pt") as handle:
            ranks.add(handle.metadata()["rank"])
    assert ranks == {"0", "1"}  # both processes computed chunks
    assert np.array_equal(np.load(one / "embeddings.npy"), np.load(two / "embeddings.npy"))
    assert (one / "documents.jsonl").read_bytes() == (two / "documents.jsonl").read_bytes()
    assert _state_files(one / "states") == _state_files(two / "states") and len(_state_files(two / "states")) == 40
    first, second = GritRAG.from_index(one), GritRAG.from_index(two)
    for question in QUESTIONS:
        assert first.search(question, top_k=10) == second.search(question, top_k=10)


@pytest.mark.slow
def test_a_build_killed_halfway_resumes_without_losing_or_duplicating(checkpoint, tmp_path):
    texts = _corpus(120, seed=1)
    corpus = _write_jsonl(tmp_path / "corpus.jsonl", texts)
    out, reference = tmp_path / "resumed", tmp_path / "reference"
    command = [sys.executable, *_index_cli(corpus, out, checkpoint, "--chunk-size", "1", "--id-field", "id")]
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while len(list((out / "parts").glob("chunk-*.safetensors"))) < 60:
                assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the build did not reach half way"
                time.sleep(0.01)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    done_before = len(list((out / "parts").glob("chunk-*.safetensors")))
    assert 60 <= done_before < 120 and not (out / "manifest.json").exists()

    summary = build_index(corpus, out, model=str(checkpoint), dtype="float32", chunk_size=1, id_field="id")
    assert (summary.documents, summary.skipped, summary.computed) == (120, done_before, 120 - done_before)
    build_index(corpus, reference, model=str(checkpoint), dtype="float32", chunk_size=1, id_field="id")
    rows = [json.loads(line)["id"] for line in (out / "documents.jsonl").read_text().splitlines()]
    assert rows == [f"doc-{i}" for i in range(120)]  # every document, once, in corpus order
    assert np.array_equal(np.load(out / "embeddings.npy"), np.load(reference / "embeddings.npy"))
    assert _state_files(out / "states") == _state_files(reference / "states")  # one entry each, the same bytes
    assert len(list((out / "parts").glob("*"))) == 120 and not list(out.rglob(".tmp-*"))


def test_an_index_refuses_another_model_setup(built, checkpoint, stock_checkpoint, tmp_path):
    out, texts = built
    with pytest.raises(FingerprintMismatchError, match=r"was built by another model setup .*dtype: stored"):
        GritRAG.from_index(out, model=load_model(checkpoint, dtype="bfloat16"))
    from tiny import make_stock_checkpoint

    from grit_hf import convert_checkpoint

    other = convert_checkpoint(make_stock_checkpoint(tmp_path / "stock", seed=1), tmp_path / "other")
    with pytest.raises(FingerprintMismatchError, match="weights: stored"):
        GritRAG.from_index(out, model=str(other))
    with pytest.raises(ValueError, match="holds an index built by another model setup"):
        build_index(texts, out, model=str(other), dtype="float32", chunk_size=4)
    with pytest.raises(ValueError, match="not a complete grit-hf index"):
        GritRAG.from_index(tmp_path)


def test_what_a_process_adds_stays_its_own_and_the_shared_index_is_never_written(built, caplog):
    out, texts = built
    shared = _state_files(out / "states")
    first, second = GritRAG.from_index(out), GritRAG.from_index(out)
    (new,) = first.add_documents(["A page added at run time by the first process only."])
    assert new in first.doc_ids and new not in second.doc_ids and len(second.doc_ids) == 40
    assert first.documents.rank(first.get_embeddings([new])[0], 1)[0][0] == new  # the local table is searched too
    shared_id = first.doc_ids[0]
    assert first.add_documents([texts[0]], ids=[shared_id]) == [shared_id]  # the same text again: nothing to do
    with pytest.raises(ValueError, match="belongs to the shared index, which is read-only"):
        first.add_documents(["Another text."], ids=[shared_id])
    with pytest.raises(ValueError, match="read-only"):
        first.remove_documents([shared_id])
    assert first.remove_documents([new]) == [new] and new not in first.doc_ids

    damaged = first.store.base.path_for(shared_id)
    data = bytearray(damaged.read_bytes())
    data[-2] ^= 0x10
    damaged.write_bytes(bytes(data))
    expected = second.embedding_pass.run([texts[0]], "", states=True, embeddings=False)[1][0]
    recomputed = first.index.document_states(shared_id)  # refused, recomputed, kept in this process's store
    torch.testing.assert_close(recomputed.layers()[0][0], expected.layers()[0][0], rtol=0, atol=0)
    assert shared_id in first.store.overlay and damaged.read_bytes() == bytes(data)
    damaged.write_bytes(bytes(data[:-2]) + bytes([data[-2] ^ 0x10]) + bytes(data[-1:]))
    assert _state_files(out / "states") == shared


def test_a_datasets_corpus_a_jsonl_file_and_int8_states_through_the_command_line(built, checkpoint, tmp_path):
    datasets = pytest.importorskip("datasets")
    _, texts = built
    corpus = _write_jsonl(tmp_path / "corpus.jsonl", texts)
    args = ["--dtype", "float32", "--no-progress", "--chunk-size", "4", "--id-field", "id"]
    from_file, states = tmp_path / "from-file", tmp_path / "elsewhere" / "states"
    assert cli_main(["index", str(corpus), "--model", str(checkpoint), "--out", str(from_file), *args,
                     "--states", str(states), "--quantize", "int8", "--vector-index", "hnsw"]) == 0  # fmt: skip
    dataset = datasets.Dataset.from_dict({"id": [f"doc-{i}" for i in range(40)], "text": texts})
    from_dataset = tmp_path / "from-dataset"
    build_index(dataset, from_dataset, model=str(checkpoint), dtype="float32", chunk_size=4, id_field="id")
    assert np.array_equal(np.load(from_file / "embeddings.npy"), np.load(from_dataset / "embeddings.npy"))
    manifest = IndexManifest.load(from_file)
    assert (manifest.quantize, manifest.vector_index, manifest.states) == ("int8", "hnsw", str(states))
    rag = GritRAG.from_index(from_file)
    assert isinstance(rag.store.get("doc-3"), QuantizedKVStates) and len(list(states.glob("*"))) == 40
    assert rag.doc_ids[:2] == ["doc-0", "doc-1"] and rag.search(QUESTIONS[0], top_k=3)
    assert rag.answer(QUESTIONS[1], max_new_tokens=4).doc_ids


def test_an_index_with_states_in_s3_holds_the_bytes_of_local_states(built, checkpoint, moto_s3, tmp_path):
    out, texts = built
    moto_s3.client().create_bucket(Bucket="index-states")
    remote = tmp_path / "remote"
    options = moto_s3.storage_options()
    build_index(texts, remote, model=str(checkpoint), dtype="float32", chunk_size=4, states="s3://index-states/pages",
                storage_options=options)  # fmt: skip
    client = moto_s3.client()
    for name, digest in list(_state_files(out / "states").items())[:5]:
        body = client.get_object(Bucket="index-states", Key=f"pages/{name}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest
    local, s3 = GritRAG.from_index(out), GritRAG.from_index(remote, storage_options=options)
    for question in QUESTIONS:
        assert s3.answer(question, max_new_tokens=6).text == local.answer(question, max_new_tokens=6).text


def test_the_corpus_is_read_once_per_id_and_errors_name_the_records(tmp_path):
    from grit_hf.rag.corpus import read_corpus

    corpus = read_corpus(["a text", "b text", "a text"])
    assert len(corpus) == 2 and corpus.ids[0] == corpus.ids[0] and corpus.texts == ["a text", "b text"]
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "x", "text": "one"}\n{"id": "x", "text": "two"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl:2 and .*c.jsonl:1 give the id 'x' to two different texts"):
        read_corpus(path, id_field="id")
    with pytest.raises(ValueError, match="must be a text or an object with a string 'body'"):
        read_corpus(path, text_field="body")
    with pytest.raises(TypeError, match="`id_field` must be a non-empty str or None"):
        read_corpus(path, id_field="")
