"""Run a command whose processes may leave its process group and session, and end every one of them.

`accelerate launch` and `torchrun` start each worker with `start_new_session=True`, so killing the launcher's group
misses the workers, and a worker that outlives its launcher is reparented to init. Every process of a launch here
carries a marker in its environment instead (inherited by every descendant), and is found by it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["MARKER", "Launch", "describe", "marked_processes", "run_to_end"]

MARKER = "GRIT_HF_TEST_LAUNCH"


@dataclass
class Launch:
    """A command started with a unique marker in its environment (see `processes`)."""

    command: list[str]
    env: dict[str, str]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    process: subprocess.Popen | None = None

    def start(self, **popen_kwargs) -> Launch:
        """Start the command (in a new session) with `MARKER=<token>` added to `env`."""
        env = {**self.env, MARKER: self.token}
        self.process = subprocess.Popen(self.command, env=env, start_new_session=True, **popen_kwargs)
        return self

    def processes(self) -> list[psutil.Process]:
        """Every live process of this launch, the launcher and each descendant, wherever it was reparented."""
        return marked_processes(self.token)

    def end(self, first: signal.Signals = signal.SIGABRT, grace: float = 30) -> list[psutil.Process]:
        """Send `first` to every process of the launch (SIGABRT: each prints its stack with `PYTHONFAULTHANDLER`),
        SIGKILL those still alive after `grace` seconds, reap the launcher; return the processes that were found."""
        found = self.processes()
        for process in found:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(first)
        _, alive = psutil.wait_procs(found, timeout=grace)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=grace)
        if self.process is not None:
            self.process.wait(timeout=grace)
        return found


def marked_processes(token: str | None = None) -> list[psutil.Process]:
    """The live processes with `MARKER` in their environment (with a `token`: those of that launch only)."""
    found = []
    for process in psutil.process_iter():
        try:
            value = process.environ().get(MARKER)
            if process.pid != os.getpid() and value is not None and token in (None, value):
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def describe(process: psutil.Process) -> str:
    """`pid: command line` (the pid alone if the process is gone)."""
    try:
        return f"{process.pid}: {' '.join(process.cmdline())}"
    except psutil.Error:
        return str(process.pid)


def run_to_end(launch: Launch, log: Path, timeout: float) -> tuple[int | str, list[str]]:
    """Run `launch` with its output in `log` (a file, not a pipe: a full pipe must never block a worker).

    Returns the exit code ("timeout" if it ran past `timeout` seconds: then every process of the launch is aborted,
    then killed) and the command lines of the processes that outlived the launcher (killed too)."""
    with open(log, "w") as stream:
        launch.start(stdout=stream, stderr=subprocess.STDOUT)
        try:
            code: int | str = launch.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            launch.end()
            return "timeout", []
    left = [describe(process) for process in launch.processes()]
    launch.end(first=signal.SIGKILL)
    return code, left
