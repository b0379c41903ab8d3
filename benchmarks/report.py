"""What every benchmark records next to its figures (date, machine, versions), and how it writes them."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path

__all__ = ["environment", "write_report", "data_folder"]


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


def write_report(prefix: str | os.PathLike | None, report: dict, markdown: str) -> None:
    """Print `markdown`; with a `prefix`, also write `prefix.json` (the report) and `prefix.md`."""
    print(markdown)
    if prefix:
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{prefix}.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        Path(f"{prefix}.md").write_text(markdown)


def data_folder() -> Path:
    """The offline data (manpages/, lmtext/): `$GRIT_HF_DATA`, else `../shared/data` beside the repository."""
    return Path(os.environ.get("GRIT_HF_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
