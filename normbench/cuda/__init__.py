"""numba.cuda kernels, module by module the twins of normbench/cpu/.

Importing this package does not touch the GPU; :func:`require` is called before any kernel is used.
"""
from __future__ import annotations

import os


def simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


class CudaUnavailableError(RuntimeError, ValueError):
    """backend='cuda' with neither a GPU nor the simulator: a bad argument (ValueError, as docs/api.md lists bad arguments)
    and an environment problem (RuntimeError) at once, so either ``except`` catches it."""


_AVAILABLE = None  # cuda.is_available() probes the driver: asked once per process


def require() -> None:
    """Raise a clear error when neither a GPU nor the CUDA simulator is available."""
    if simulator():
        return
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            from numba import cuda

            _AVAILABLE = bool(cuda.is_available())
        except Exception:  # a broken driver is as good as none
            _AVAILABLE = False
    if not _AVAILABLE:
        raise CudaUnavailableError("backend='cuda' needs a CUDA GPU (none found) or the CUDA simulator "
                           "(set NUMBA_ENABLE_CUDASIM=1 before importing numba)")
