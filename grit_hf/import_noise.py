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


class _DropKnownNoise(logging.Filter):
    def __init__(self, cuda_only_libraries: bool, enum_constants: bool) -> None:
        super().__init__()
        self.cuda_only_libraries = cuda_only_libraries
        self.enum_constants = enum_constants

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (
            self.cuda_only_libraries
            and message.startswith("Failed to load")
            and ("_C_mxfp8" in message or "cutlass" in message)
        ):
            import torch

            return torch.cuda.is_available()  # with CUDA a failed load is news
        if self.enum_constants and "is an Enum subclass" in message:
            enum = record.args[0] if isinstance(record.args, tuple) and record.args else None
            return not getattr(enum, "__module__", "").startswith("torchao")
        return True


def quiet_optional_backend_imports() -> None:
    """Install the filters (idempotent)."""
    for name, filter_ in (
        ("torchao", _DropKnownNoise(cuda_only_libraries=True, enum_constants=False)),
        ("torch.utils._pytree", _DropKnownNoise(cuda_only_libraries=False, enum_constants=True)),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(filter_)
