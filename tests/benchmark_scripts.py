"""Loading a benchmark script (`benchmarks/NAME.py`) as a module in the tests, the way it runs as a script: with the
benchmarks folder on `sys.path`, so that it finds its shared modules (`report`, ...) by name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """The module of `benchmarks/{name}.py` (executed once per call, registered under `name`)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
