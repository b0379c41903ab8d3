"""SIGTERM while requests outlast the grace period (`--shutdown-timeout`): a real server process and real HTTP clients.

The server runs in its own process (tests/serve/slow_serve.py: `grit-hf serve` whose generations take 50 ms more per
text piece, so that no request can finish in the grace period on any machine), with 6 streamed chats and 1 plain one
decoding when it gets SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import free_port

HERE = Path(__file__).resolve().parent
STREAMS = 6
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Count."}], "max_tokens": 1000, "ignore_eos": True}


def _start(checkpoint: Path, port: int, grace: float) -> subprocess.Popen:
    command = [sys.executable, str(HERE / "slow_serve.py"), "0.05", "--model", str(checkpoint), "--port", str(port)]
    command += ["--served-model-name", "tiny", "--shutdown-timeout", str(grace), "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    pytest.fail("the server did not start: " + process.communicate()[1].decode()[-2000:])


def _stream(base: str, results: dict, index: int, decoding: threading.Semaphore) -> None:
    """A streamed chat; `decoding` is released once its first text arrives. Records (status or the client's error,
    data lines)."""
    lines: list[str] = []
    try:
        with httpx.stream("POST", base + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=120) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
                    if len(lines) == 2:  # the role chunk, then the first text
                        decoding.release()
        results[index] = (reply.status_code, lines)
    except httpx.HTTPError as error:  # e.g. the body ended without its last chunk
        results[index] = (repr(error), lines)


def _plain(base: str, results: dict) -> None:
    """A plain chat. Records (status, content type, body text)."""
    try:
        reply = httpx.post(base + "/v1/chat/completions", json=CHAT, timeout=120)
        results["plain"] = (reply.status_code, reply.headers.get("content-type"), reply.text)
    except httpx.HTTPError as error:
        results["plain"] = (repr(error), None, "")


def _active_generations(base: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("grit_hf_active_generations "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_ends_requests_that_outlast_the_grace_period_in_openai_format(grit_checkpoint):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(grit_checkpoint("llama"), port, grace=1)
    results: dict = {}
    decoding = threading.Semaphore(0)
    try:
        threads = [threading.Thread(target=_stream, args=(base, results, i, decoding)) for i in range(STREAMS)]
        threads.append(threading.Thread(target=_plain, args=(base, results)))
        for thread in threads:
            thread.start()
        for _ in range(STREAMS):
            assert decoding.acquire(timeout=120), "a stream did not start"
        deadline = time.monotonic() + 120
        while _active_generations(base) < STREAMS + 1:
            assert time.monotonic() < deadline, "the plain chat did not start decoding"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=120)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = stderr.decode()
    assert process.returncode == 0, stderr
    for index in range(STREAMS):
        status, lines = results[index]
        assert status == 200 and lines and "[DONE]" not in lines, (index, status, lines[-3:])
        error = json.loads(lines[-1]).get("error")
        assert error is not None, (index, lines[-1])
        assert error["code"] == "server_shutting_down" and set(error) == {"message", "type", "param", "code"}
    status, content_type, text = results["plain"]
    assert (status, content_type) == (503, "application/json"), (status, content_type, text)
    body = json.loads(text)
    assert body["error"]["code"] == "server_shutting_down" and body["error"]["type"] == "server_error"
    logged = [line for line in stderr.splitlines() if line.strip()]
    assert [line for line in logged if "grace period" in line] == [
        next(line for line in logged if "Shutdown: 7 request(s) still open after the 1 s grace period" in line)
    ], stderr
    assert "Traceback" not in stderr and "Cancel" not in stderr and "Exception" not in stderr, stderr
    assert logged[-1] == "grit-hf serve: stopped by SIGTERM", stderr


@pytest.mark.parametrize("value", [-1, float("nan"), "10"])
def test_the_grace_period_must_be_a_number_of_seconds(value):
    from grit_hf.serve import ServerSettings

    with pytest.raises(ValueError, match="`shutdown_timeout` must be a finite number >= 0"):
        ServerSettings("tiny", shutdown_timeout=value)
