"""`import grit_hf` is quiet: the two lines torchao's import prints on a CPU-only machine are dropped, nothing else."""

import enum
import logging
import subprocess
import sys

import pytest


def test_importing_grit_hf_prints_neither_known_line():
    pytest.importorskip("torchao")  # the noise comes with the quant extra
    done = subprocess.run([sys.executable, "-c", "import grit_hf"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == ""
    assert "Failed to load" not in done.stderr and "is an Enum subclass" not in done.stderr, done.stderr


def _kept(logger_name: str, message: str, *args) -> bool:
    from grit_hf.import_noise import quiet_optional_backend_imports

    quiet_optional_backend_imports()
    logger = logging.getLogger(logger_name)
    record = logger.makeRecord(logger_name, logging.WARNING, __file__, 1, message, args, None)
    return bool(logger.filter(record))  # every filter of the logger, as logging applies them


def test_only_the_known_lines_are_dropped():
    import torch

    cuda_library = "Failed to load /x/torchao/_C_cutlass_90a.abi3.so: Could not load this library"
    assert _kept("torchao", cuda_library) == torch.cuda.is_available()
    assert _kept("torchao", "Failed to load /x/torchao/_C_cpu_kernels.so: undefined symbol")  # a CPU library: news
    assert _kept("torchao", "something else")

    class Mine(enum.Enum):
        A = 1

    class Theirs(enum.Enum):
        A = 1

    Theirs.__module__ = "torchao.quantization.quantize_.common"
    message = "%s is an Enum subclass and is now natively supported"
    assert not _kept("torch.utils._pytree", message, Theirs)
    assert _kept("torch.utils._pytree", message, Mine)
