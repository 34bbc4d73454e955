"""numba.cuda kernels, module by module the twins of normbench/cpu/.

Importing this package does not touch the GPU; :func:`require` is called before any kernel is used.
"""
from __future__ import annotations

import os


def simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def require() -> None:
    """Raise a clear error when neither a GPU nor the CUDA simulator is available."""
    if simulator():
        return
    try:
        from numba import cuda

        ok = cuda.is_available()
    except Exception:  # a broken driver is as good as none
        ok = False
    if not ok:
        raise RuntimeError("backend='cuda' needs a CUDA GPU (none found) or the CUDA simulator "
                           "(set NUMBA_ENABLE_CUDASIM=1 before importing numba)")
