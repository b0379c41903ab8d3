"""The edges found by trying the server as an attacker would: a lone surrogate in a document, a text that only fits
truncated, the name the server was started with, and Ctrl-C / SIGTERM."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
from serve_helpers import free_port, log_records, start_server

SURROGATE_BODY = b'{"documents": [{"text": "caf\\ud800"}]}'


def _error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def test_a_lone_surrogate_in_a_document_is_a_400(server):
    response = httpx.post(
        server.base_url + "/v1/documents",
        content=SURROGATE_BODY,
        headers={**server.headers(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert "surrogate" in _error(response, 400, param="documents[0].text")["message"]


@pytest.fixture(scope="module")
def long_server(grit_checkpoint, caplog_module, tmp_path_factory):
    """`--max-input-tokens` above the tiny model's 2048 positions (a copy of the checkpoint: its own shared model)."""
    path = tmp_path_factory.mktemp("long") / "grit"
    shutil.copytree(grit_checkpoint("llama"), path)
    running = start_server(["--model", str(path), "--served-model-name", "tiny-long", "--max-input-tokens", "4096"])
    yield running
    running.stop()
    from grit_hf.rag import release_shared

    release_shared(running.state.rag.model)


@pytest.fixture(scope="module")
def caplog_module():
    with log_records(logging.INFO, ("grit_hf.serve",)) as records:
        yield records


def _text_of(tokenizer, count: int) -> str:
    text = " ".join(["word"] * count)
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) > count:
        text = text[: text.rfind(" ")]
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < count:
        text += " a"
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == count
    return text


def test_nothing_that_fits_only_truncated_is_embedded(long_server, caplog_module):
    state = long_server.state
    model = state.rag.model
    fit = state.limits.max_input_tokens
    assert fit < model.max_positions  # lowered at start, and said so
    assert any("--max-input-tokens 4096 lowered to" in r.getMessage() for r in caplog_module)
    tokenizer = model.tokenizer
    url = long_server.base_url + "/v1/embeddings"
    at_positions = _text_of(tokenizer, model.max_positions)
    _error(httpx.post(url, json={"input": at_positions}, timeout=60), 400, param="input")
    fitting = _text_of(tokenizer, fit)
    response = httpx.post(url, json={"input": fitting, "cache": False}, timeout=60)
    assert response.status_code == 200, response.text
    expected = model.encode([fitting], max_length=model.max_positions)[0]
    got = response.json()["data"][0]["embedding"]
    assert max(abs(a - b) for a, b in zip(got, expected.tolist())) < 1e-2  # the whole text, not a truncated one
    long_instruction = "Given a question, retrieve the passage that answers it " * 8
    body = {"input": fitting, "instruction": long_instruction}
    _error(httpx.post(url, json=body, timeout=60), 400, code="context_length_exceeded", param="input")


def test_the_name_the_server_was_started_with_is_accepted(server):
    started_as = str(server.state.rag.model.name_or_path)
    names = [m["id"] for m in httpx.get(server.base_url + "/v1/models", headers=server.headers()).json()["data"]]
    assert names[0] == "tiny" and started_as in names and len(names) == len(set(names))
    client = server.openai()
    for name in names:
        assert len(client.embeddings.create(model=name, input="hello").data) == 1
        assert client.models.retrieve(name).id == name
    with pytest.raises(Exception, match="does not exist"):
        client.embeddings.create(model="another-model", input="hello")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_shut_down_cleanly(signal_name, grit_checkpoint, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "grit_hf.cli", "serve", "--model", str(grit_checkpoint("llama")), "--port"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [*command, str(port), "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("the server did not start: " + process.stderr.read().decode()[-2000:])
        process.send_signal(getattr(signal, signal_name))
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = stderr.decode()
    assert process.returncode == 0, stderr
    assert f"grit-hf serve: stopped by {signal_name}" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
