"""Faults while the server works: the store's disk fills up or turns read-only in the middle of a request, a cache
entry is damaged while it is served, a client disconnects mid-stream. Each affected request fails cleanly (OpenAI's
error format, one log line, no traceback) or recovers; the other requests go on; `/health` and `/metrics` stay right."""

from __future__ import annotations

import shutil
import threading

import httpx
import pytest
from safetensors import SafetensorError
from serve_helpers import log_records, start_server

import grit_hf.cache.disk as disk_module

DOC = "The Seine flows through Paris before it reaches the English Channel at Le Havre, far to the west."


@pytest.fixture(scope="module")
def disk_server(grit_checkpoint, tmp_path_factory):
    """A server whose states live on disk only (no memory store in front), on its own copy of the tiny model."""
    folder = tmp_path_factory.mktemp("faults")
    shutil.copytree(grit_checkpoint("llama"), folder / "grit")
    argv = ["--model", str(folder / "grit"), "--served-model-name", "tiny", "--cache-dir", str(folder / "kv")]
    running = start_server(
        [*argv, "--cache-bytes", "0", "--cache-attention", "causal", "--max-tokens", "64", "--dtype", "float32"]
    )
    yield running
    running.stop()
    from grit_hf.rag import release_shared

    release_shared(running.state.rag.model)


@pytest.fixture
def log_lines():
    with log_records() as records:
        yield records


def _chat(server, content: str, **extra) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 12, **extra}
    return httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60)


def _metric(server, name: str) -> float:
    for line in httpx.get(server.base_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def _documents(server) -> list[str]:
    return [d["id"] for d in httpx.get(server.base_url + "/v1/documents", timeout=10).json()["data"]]


@pytest.mark.parametrize(
    "failure, status, code",
    [
        (SafetensorError("No space left on device (os error 28)"), 507, "storage_full"),
        (PermissionError(13, "Permission denied"), 503, "storage_unavailable"),
    ],
)
def test_a_store_that_cannot_be_written_fails_the_request_cleanly(
    disk_server, monkeypatch, log_lines, failure, status, code
):
    before, text = _documents(disk_server), f"{DOC} ({code})"
    expected = _chat(disk_server, "What is two plus two?").json()["choices"][0]["message"]["content"]

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(disk_module, "save_file", broken)
    answers = []
    chatting = threading.Thread(target=lambda: answers.append(_chat(disk_server, "What is two plus two?")))
    chatting.start()
    response = httpx.post(disk_server.base_url + "/v1/documents", json={"documents": [{"text": text}]}, timeout=60)
    embedded = httpx.post(disk_server.base_url + "/v1/embeddings", json={"input": [text + " Again."]}, timeout=60)
    chatting.join(60)
    for failed in (response, embedded):
        assert failed.status_code == status, failed.text
        error = failed.json()["error"]
        assert error["code"] == code and "nothing was indexed" in error["message"]
    assert answers[0].status_code == 200 and answers[0].json()["choices"][0]["message"]["content"] == expected
    assert _documents(disk_server) == before  # all or nothing
    assert not [r for r in log_lines if r.exc_info or "Traceback" in r.getMessage()]
    assert httpx.get(disk_server.base_url + "/health", timeout=10).json()["status"] == "ok"
    assert _metric(disk_server, "grit_hf_indexed_documents") == len(before)
    assert _metric(disk_server, "grit_hf_active_generations") == 0
    monkeypatch.undo()
    retried = httpx.post(disk_server.base_url + "/v1/documents", json={"documents": [{"text": text}]}, timeout=60)
    assert retried.status_code == 200 and len(_documents(disk_server)) == len(before) + 1


def test_an_entry_damaged_while_served_is_recomputed(disk_server, log_lines):
    indexed = httpx.post(disk_server.base_url + "/v1/documents", json={"documents": [{"text": DOC, "id": "seine"}]})
    assert indexed.status_code == 200
    prompt = f"{DOC}\n\nWhere does the Seine reach the sea?"
    intact = _chat(disk_server, prompt).json()
    store = disk_server.state.rag.store
    path = store.path_for("seine")
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x20
    path.write_bytes(bytes(data))
    cached = _chat(disk_server, prompt)
    assert cached.status_code == 200, cached.text
    answer = cached.json()
    assert answer["usage"] == intact["usage"] and answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert answer["choices"][0]["message"]["content"] == intact["choices"][0]["message"]["content"]
    assert any("damaged" in r.getMessage() and "Recomputing" in r.getMessage() for r in log_lines)
    assert (
        disk_module.DiskKVStore(store.directory, fingerprint=store.fingerprint).get("seine") is not None
    )  # rewritten
    assert _metric(disk_server, "grit_hf_active_generations") == 0


def test_a_client_leaving_mid_stream_stops_only_its_own_generation(disk_server):
    expected = _chat(disk_server, "Name three rivers.").json()["choices"][0]["message"]["content"]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell a long story."}], "stream": True}
    answers = []
    other = threading.Thread(target=lambda: answers.append(_chat(disk_server, "Name three rivers.")))
    with httpx.stream(
        "POST", disk_server.base_url + "/v1/chat/completions", json={**body, "max_tokens": 64, "ignore_eos": True}
    ) as response:
        lines = response.iter_lines()
        next(lines)
        other.start()
        next(lines)
    other.join(60)
    assert answers[0].status_code == 200 and answers[0].json()["choices"][0]["message"]["content"] == expected
    deadline = 50
    while _metric(disk_server, "grit_hf_active_generations") and deadline:
        threading.Event().wait(0.1)
        deadline -= 1
    assert _metric(disk_server, "grit_hf_active_generations") == 0
    assert httpx.get(disk_server.base_url + "/health", timeout=10).json()["status"] == "ok"
