"""Real uvicorn servers on 127.0.0.1 (random free ports) serving tiny random models, started once per session in
threads of the test process and stopped at the end; clients talk to them over TCP like any other client.

- `server`: built by `grit-hf serve`'s own argument parser from a checkpoint folder, with an API key and small limits.
- `open_server`: no API key, one generation slot and a short request timeout (429, disconnects and timeouts).

Network: the clients only ever reach 127.0.0.1 (`_loopback_only`; `HF_HUB_OFFLINE`; no tiktoken: `OpenAIEmbeddings` runs with
`check_embedding_ctx_length=False`).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from serve_helpers import ...`

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

from serve_helpers import API_KEY, SMALL_LIMITS, start_server  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def server(grit_checkpoint):
    path = grit_checkpoint("llama")
    running = start_server(["--model", str(path), "--api-key", API_KEY, "--served-model-name", "tiny", *SMALL_LIMITS])
    yield running
    running.stop()
    from grit_hf.rag import release_shared

    release_shared(running.state.rag.model)


@pytest.fixture(scope="session")
def open_server(grit_checkpoint):
    from grit_hf import GritLMForCausalLM

    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()
    argv = ["--served-model-name", "tiny", "--max-concurrent-generations", "1", "--max-tokens", "1800"]
    argv += ["--request-timeout", "2", "--max-queued-inputs", "16", "--max-documents", "4", "--max-inputs", "4"]
    running = start_server(argv, model=model)
    yield running
    running.stop()
    from grit_hf.rag import release_shared

    release_shared(model)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Any attempt to resolve a host other than the loopback fails the test (clients must stay offline)."""
    real = socket.getaddrinfo
    attempts = []

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1", None):
            attempts.append(host)
            raise socket.gaierror(f"blocked: the serve tests must not reach {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield
    assert not attempts, f"tried to reach {attempts}"


@pytest.fixture
def client(server):
    return server.openai()


@pytest.fixture
def metrics(server):
    """`metrics()` -> {sample name with labels: value} scraped from the server's /metrics."""
    import httpx

    def scrape(target=None) -> dict[str, float]:
        target = target or server
        text = httpx.get(target.base_url + "/metrics", headers=target.headers()).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    return scrape
