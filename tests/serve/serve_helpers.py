"""Helpers of the server tests (a module with a unique name, so test files can import it; see conftest.py)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "API_KEY",
    "SMALL_LIMITS",
    "RunningServer",
    "free_port",
    "start_server",
    "slow_generation",
    "slowed",
    "log_records",
]

API_KEY = "test-key"


@dataclass
class RunningServer:
    """A server running in a thread of this process."""

    server: Any
    thread: threading.Thread
    port: int
    api_key: str | None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self):
        """The app's `ServerState` (its model, index, metrics)."""
        return self.server.config.app.state.grit

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def openai(self, **kwargs):
        import openai

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("api_key", self.api_key or "unused")
        return openai.OpenAI(base_url=self.base_url + "/v1", **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(argv: list[str], model=None) -> RunningServer:
    """Parse `grit-hf serve` arguments, build the server as the command does and run it in a thread."""
    from grit_hf.cli import make_parser
    from grit_hf.cli.serve import build_server

    port = free_port()
    args = make_parser().parse_args(["serve", "--port", str(port), "--log-level", "warning", *argv])
    server = build_server(args, model=model)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("The server did not start.")
        time.sleep(0.02)
    return RunningServer(server, thread, port, args.api_key)


SMALL_LIMITS = [
    "--max-body-bytes", "65536",
    "--max-inputs", "8",
    "--max-input-tokens", "64",
    "--max-tokens", "512",
    "--max-prompt-tokens", "512",
    "--max-concurrent-generations", "4",
    "--max-documents", "64",
    "--request-timeout", "60",
]  # fmt: skip


def slowed(generate, delay: float, closed: threading.Event | None = None):
    """`generate` (`GritRAG.generate_from_plan`, bound or not, through which the server generates) whose streams take
    `delay` more seconds per text piece; `closed` is set when a stream is closed."""
    from grit_hf.generation.engine import GenerationStream

    def slow(*args, **kwargs):
        stream = generate(*args, **kwargs)

        def pieces():
            try:
                for piece in stream:
                    time.sleep(delay)
                    yield piece
            finally:
                stream.close()
                if closed is not None:
                    closed.set()

        return GenerationStream(pieces(), stream.result)

    return slow


def slow_generation(monkeypatch, running: RunningServer, delay: float) -> threading.Event:
    """Make every text piece of the server's generations take `delay` more seconds (for limits, timeouts and
    disconnects that must not depend on the machine's speed); returns an event set when a stream is closed."""
    rag = running.state.rag
    closed = threading.Event()
    monkeypatch.setattr(rag, "generate_from_plan", slowed(rag.generate_from_plan, delay, closed))
    return closed


SERVER_LOGGERS = ("grit_hf", "grit_hf.serve", "uvicorn", "uvicorn.error")


@contextlib.contextmanager
def log_records(level: int = logging.WARNING, names=SERVER_LOGGERS):
    """The records of `level` and above that the server's loggers emit meanwhile (a list, filled as they come)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
