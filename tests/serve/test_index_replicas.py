"""`grit-hf serve --index DIR`: two replicas over one index (one in this process, one a `grit-hf serve` process of
its own) answer a fixed set of questions identically; what one replica adds stays its own; the shared documents are
read-only (409); a replica started with another model is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import free_port, start_server

from grit_hf.cache import FingerprintMismatchError
from grit_hf.cli import make_parser
from grit_hf.cli.serve import build_app

pytest.importorskip("faiss")

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = ["How do I change the group of a file?", "Which command copies files?", "What is a socket?"]
PAGES = [
    "chgrp changes the group of each file to the group given; with --reference it copies the group of another file.",
    "cp copies files and directories; with -r it copies directories recursively and keeps going on errors.",
    "socket creates an endpoint for communication and returns a file descriptor that refers to it.",
    "ls lists the contents of directories, sorted by name unless another order is asked for.",
    "chmod changes the mode bits of each file: who may read, write or execute it.",
]


@pytest.fixture(scope="module")
def index(grit_checkpoint, tmp_path_factory) -> Path:
    from grit_hf.rag import build_index

    out = tmp_path_factory.mktemp("served") / "index"
    build_index(PAGES, out, model=str(grit_checkpoint("llama")), dtype="float32", chunk_size=2)
    return out


def _replica_process(index: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`grit-hf serve --index` in a process (and session) of its own; its base URL once it answers /health."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "integrations"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "grit_hf.cli", "serve", "--index", str(index), "--port", str(port),
               "--served-model-name", "tiny", "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError("the replica did not start:\n" + log.read_text()[-4000:])
        time.sleep(0.2)


def _chat(url: str, question: str, **extra) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": question}], "max_tokens": 8, "temperature": 0}
    response = httpx.post(url + "/v1/chat/completions", json={**body, **extra}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_two_replicas_over_one_index_answer_identically(index, tmp_path):
    local = start_server(["--index", str(index), "--served-model-name", "tiny"])
    process, remote = _replica_process(index, tmp_path / "replica.log")
    try:
        urls = [local.base_url, remote]
        listed = [httpx.get(url + "/v1/documents", params={"limit": 100}).json()["data"] for url in urls]
        assert listed[0] == listed[1] and [d["source"] for d in listed[0]] == ["index"] * len(PAGES)
        assert all(d["states_cached"] for d in listed[0])
        ids = [d["id"] for d in listed[0]]
        for number, question in enumerate(QUESTIONS):
            embeddings = [
                httpx.post(
                    url + "/v1/embeddings",
                    json={"model": "tiny", "input": [question], "instruction": "Find the manual page"},
                ).json()  # fmt: skip
                for url in urls
            ]
            assert embeddings[0]["data"] == embeddings[1]["data"]
            named = [_chat(url, question, documents=[ids[number]]) for url in urls]
            pasted = [_chat(url, f"{PAGES[number]}\n\n{question}") for url in urls]
            for answers in (named, pasted):
                assert answers[0]["choices"] == answers[1]["choices"]
                assert answers[0]["usage"] == answers[1]["usage"]
                assert answers[0]["cached_documents"] == answers[1]["cached_documents"] == [ids[number]]

        added = httpx.post(
            local.base_url + "/v1/documents", json={"documents": [{"id": "mine", "text": "Only here."}]}
        )
        assert added.status_code == 200, added.text
        assert httpx.get(local.base_url + "/v1/documents/mine").status_code == 200
        assert httpx.get(remote + "/v1/documents/mine").status_code == 404
        refused = httpx.delete(local.base_url + f"/v1/documents/{ids[0]}")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "document_read_only"
        replaced = httpx.post(local.base_url + "/v1/documents", json={"documents": [{"id": ids[0], "text": "New."}]})
        assert replaced.status_code == 409
        assert len(local.state.documents) == len(PAGES) + 1 and local.state.documents._local_count() == 1
    finally:
        local.stop()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_a_replica_with_another_model_is_refused(index, stock_checkpoint, tmp_path):
    from tiny import make_stock_checkpoint

    from grit_hf import convert_checkpoint

    other = convert_checkpoint(make_stock_checkpoint(tmp_path / "stock", seed=2), tmp_path / "other")
    args = make_parser().parse_args(["serve", "--index", str(index), "--model", str(other)])
    with pytest.raises(FingerprintMismatchError, match="was built by another model setup .*weights: stored"):
        build_app(args)
