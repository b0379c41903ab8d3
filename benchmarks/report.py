"""What every benchmark records next to its figures (date, machine, versions), and how it writes them."""

from __future__ import annotations

import datetime
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from pathlib import Path

__all__ = [
    "REPO",
    "command_line",
    "environment",
    "write_report",
    "data_folder",
    "tests_module",
    "evict_from_page_cache",
]

REPO = Path(__file__).resolve().parent.parent
"""The repository. Benchmarks run as scripts (`python benchmarks/NAME.py`), so this folder is on `sys.path` and they
import each other by name; grit-hf itself is the installed package (`scripts/install.sh`)."""


# Filler sentences of the synthetic documents and queries (rag_latency, serve_load).
SENTENCES = [
    "The Seine flows through Paris before it reaches the English Channel at Le Havre.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside chloroplasts.",
    "In 1889 the Eiffel Tower opened for the World's Fair and was the tallest structure on Earth.",
    "Berlin has more bridges than Venice, and many museums stand on an island in the Spree.",
    "A decoder language model predicts the next token from all the tokens before it.",
    "Glaciers carve U-shaped valleys as they slowly move downhill under their own weight.",
    "The Danube crosses ten countries on its way from the Black Forest to the Black Sea.",
    "Honey bees communicate the direction of flowers with a waggle dance inside the hive.",
]


def environment(*packages: str) -> dict:
    """The date, the machine (platform, CPU model and count, GPU) and the versions of python and `packages`."""
    import torch

    cpu = "?"
    if Path("/proc/cpuinfo").exists():
        cpu = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
        )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions.update({name: importlib.metadata.version(name) for name in packages})
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu},
        "versions": versions,
    }


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages, rounded (recorded at a run's start and end: a busy machine shows)."""
    return tuple(round(v, 2) for v in os.getloadavg())


def command_line(script: str, argv: list[str] | None = None) -> str:
    """How a benchmark was run, for its report: `python benchmarks/NAME.py ARGS`, quoted for a shell (`argv`, else
    the process's own arguments)."""
    return "python " + shlex.join([f"benchmarks/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])


def write_report(prefix: str | os.PathLike | None, report: dict, markdown: str) -> None:
    """Print `markdown`; with a `prefix`, also write `prefix.json` (the report) and `prefix.md`."""
    print(markdown)
    if prefix:
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{prefix}.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        Path(f"{prefix}.md").write_text(markdown)


def peak_memory_mib(cuda: bool) -> float:
    """Peak memory so far in MiB: `torch.cuda.max_memory_allocated` on CUDA, else the process's peak RSS."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def data_folder() -> Path:
    """The offline data (manpages/, lmtext/): `$GRIT_HF_DATA`, else `../shared/data` beside the repository."""
    return Path(os.environ.get("GRIT_HF_DATA") or REPO.parent / "shared" / "data")


def tests_module(name: str):
    """A helper module of the test suite (`tests/tiny.py`: tiny random checkpoints; `tests/test_gpu.py`: the 7B
    shape of the GPU tests; `tests/hub_cache.py`), imported the one way every benchmark does."""
    folder = str(REPO / "tests")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def evict_from_page_cache(path: Path) -> None:
    """Drop a file from the operating system's page cache, so that the next read comes from the disk (not timed)."""
    gc.collect()  # earlier memory maps of the file keep its pages
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
