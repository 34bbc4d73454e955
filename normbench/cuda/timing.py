"""GPU timing helpers for the suites (asv, pytest-benchmark, ``normbench run``).

Kernel launches are asynchronous: every timed region ends with ``cuda.synchronize()`` so that the time covers
the work, not the launch.  Without a GPU (or under the simulator, whose timings mean nothing) the helpers say
why through :func:`skip_reason`, which suites turn into a skip.
"""
from __future__ import annotations

import functools
import statistics
import time

from numba import cuda  # importing touches no GPU; a module global, so that the simulator swaps it in kernels

from . import simulator


def skip_reason() -> str | None:
    """None when GPU timings are meaningful here, else the reason to skip them."""
    if simulator():
        return "CUDA simulator active (NUMBA_ENABLE_CUDASIM=1): GPU timings would be meaningless"
    try:
        if cuda.is_available():
            return None
    except Exception as err:  # a broken driver install counts as no GPU
        return f"no usable CUDA GPU ({type(err).__name__}: {err})"
    return "no CUDA GPU on this machine (numba.cuda.is_available() is False)"


def available() -> bool:
    return skip_reason() is None


def gpu_name() -> str | None:
    """The GPU's name and compute capability for machine info, e.g. "NVIDIA H100 80GB HBM3 (sm_90)"; None
    without a GPU."""
    if not available():
        return None
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    major, minor = dev.compute_capability
    return f"{name} (sm_{major}{minor})"


def machine_info() -> dict:
    """Entries to merge into a suite's machine info (pytest-benchmark ``machine_info``, asv params)."""
    return {"gpu": gpu_name() or "none", "gpu_skip_reason": skip_reason() or ""}


def synchronize() -> None:
    cuda.synchronize()


def timed(fn, *args, **kwargs):
    """Run ``fn`` once and return (seconds, result), synchronising before the start and before the stop."""
    synchronize()
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    synchronize()
    return time.perf_counter() - t0, result


def median_seconds(fn, repeats: int = 20, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` synchronised calls, after ``warmup`` calls (which also
    absorb JIT compilation).  Raises RuntimeError with :func:`skip_reason` when there is no GPU."""
    reason = skip_reason()
    if reason:
        raise RuntimeError(reason)
    for _ in range(warmup):
        fn()
    synchronize()
    return statistics.median(timed(fn)[0] for _ in range(repeats))


def device_copies(nbytes: int) -> tuple:
    """Synchronised device-to-device copies of a working set of ``nbytes`` (read nbytes/2, write nbytes/2), ready to
    call: the limit the CUDA kernels are judged against is the fastest of them (as the host's is its best copy),
    sized and counted as :func:`normbench.bandwidth.copy_seconds`.  numba's ``copy_to_device`` alone was a poor
    limit: about 150 us of host time a call on an H100 (a 196 MiB working set at 869 GB/s against 2448 GB/s for
    PyTorch's ``copy_``).  The candidates: that memcpy, a numba grid-stride copy kernel moving 16-byte words, and
    PyTorch's ``copy_`` where a CUDA build of PyTorch is installed."""
    import numpy as np

    n = max(1, int(nbytes) // 2 // 4)
    a = cuda.to_device(np.ones(n, dtype=np.float32))
    b = cuda.device_array_like(a)
    whole = n % 4 == 0  # the kernel candidate moves 16-byte words: only when they cover the working set exactly
    aw, bw = (a.view(np.complex128), b.view(np.complex128)) if whole else (None, None)
    sms = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)  # the simulator has no count

    def memcpy():
        b.copy_to_device(a)
        synchronize()

    def kernel():
        _copy_kernel()[sms * 8, 256](aw, bw)
        synchronize()

    copies = [memcpy] + ([kernel] if whole else [])
    try:
        import torch

        if torch.cuda.is_available():
            at, bt = torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda")

            def torch_copy():
                bt.copy_(at)
                synchronize()

            copies.append(torch_copy)
    except ImportError:
        pass
    for copy in copies:
        copy()
    return tuple(copies)


def device_copy_gbps(nbytes: int = 1 << 28, repeats: int = 10) -> float:
    """Device-to-device bandwidth (read + write bytes / time) of the fastest of :func:`device_copies` on an
    ``nbytes`` working set: the roofline the CUDA kernels' effective bandwidth is judged against (H100 SXM HBM3:
    ~3.35 TB/s peak, ~3 TB/s copy)."""
    secs = min(median_seconds(copy, repeats=repeats) for copy in device_copies(nbytes))
    return 2 * (max(1, int(nbytes) // 2 // 4) * 4) / secs / 1e9


@functools.cache
def _copy_kernel():
    """A grid-stride copy kernel, compiled on first use."""
    @cuda.jit
    def copy(a, b):
        for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
            b[i] = a[i]

    return copy
