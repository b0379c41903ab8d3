"""Two warnings that `import transformers` prints when torchao (the `quant` extra) is installed on a CPU-only machine,
neither of which a grit-hf user can act on, dropped at their loggers (nothing else from those loggers is touched):

- torchao's "Failed to load .../_C_mxfp8...so" / "_C_cutlass_90a...": PyPI's torchao wheel ships CUDA-only kernel
  libraries, which cannot load without CUDA (the CPU kernels grit-hf's int4/int8 use are torch's own);
- torch's "<enum 'KernelPreference'> is an Enum subclass ... register_constant() ... deprecated": torchao 0.18's own
  call, deprecated by torch 2.13.

transformers imports torchao when it is installed (`transformers.quantizers.quantizer_torchao`), before grit-hf code
runs, and neither library offers a switch for these lines (torchao's `TORCHAO_FORCE_SKIP_LOADING_SO_FILES` skips
its CPU libraries too and prints a warning of its own), so a `logging.Filter` on the two loggers is what remains.
"""

from __future__ import annotations

import logging


def _not_a_cuda_only_library_failure(record: logging.LogRecord) -> bool:
    """torchao's "Failed to load" of a CUDA-only kernel library, dropped where there is no CUDA (with CUDA it is news)."""
    message = record.getMessage()
    if message.startswith("Failed to load") and ("_C_mxfp8" in message or "cutlass" in message):
        import torch

        return torch.cuda.is_available()
    return True


def _not_a_torchao_enum_constant(record: logging.LogRecord) -> bool:
    """torch's deprecation of `register_constant` on an Enum, dropped when the Enum is torchao's."""
    if "is an Enum subclass" not in record.getMessage():
        return True
    enum = record.args[0] if isinstance(record.args, tuple) and record.args else None
    return not getattr(enum, "__module__", "").startswith("torchao")


def quiet_optional_backend_imports() -> None:
    """Install the filters (idempotent)."""
    for name, filter_ in (
        ("torchao", _not_a_cuda_only_library_failure),
        ("torch.utils._pytree", _not_a_torchao_enum_constant),
    ):
        logger = logging.getLogger(name)
        if filter_ not in logger.filters:
            logger.addFilter(filter_)
