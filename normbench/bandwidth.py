"""The physical limit: the copy baseline of the performance method (docs/benchmarking.md).

``copy_seconds(nbytes)`` times the faster of ``np.copyto`` (single-threaded) and a ``prange`` copy on all
Numba threads, on a working set of the same size as the kernel's, so a cache-resident case is compared with a
cache-resident copy.  Effective bandwidth of a kernel = bytes it must move / time; its *fraction of the limit*
is that bandwidth over the copy's, divided by the pass's factor where x must be read twice:
:data:`TWO_READ_FORWARD` (2/3) and :data:`TWO_READ_BACKWARD` (3/5).

The copy pays a read of every destination line before writing it (read-for-ownership).  Kernels that write large
outputs with streaming stores (:mod:`normbench.cpu._stream`) skip that read, so they can exceed 100% of the
limit; :func:`streaming_copy_gbps` (a copy with streaming stores, about twice the copy here) shows that headroom.
It is reported by ``normbench bandwidth``, not used as the limit: the limit is the plain copy (docs/benchmarking.md).

Peers allocate a fresh output on every call while normbench's timed calls write into preallocated ``out=``
buffers.  :func:`reuse_freed_memory` makes the two comparable: without it, glibc serves every allocation of 32 MiB
or more with fresh pages from the kernel, which zeroes them on first touch (a 128 MiB output: ~12 ms a call here,
as long as normbench's whole layer-norm forward on it) — time that is the allocator's, not the kernel's.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import time

import numba
import numpy as np
from numba import njit, prange

from .cpu._stream import aligned_empty, stream

TWO_READ_FORWARD = 2 / 3
TWO_READ_BACKWARD = 3 / 5

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (glibc's malloc.h)
_reusing = None


def reuse_freed_memory() -> bool:
    """For the rest of the process, let glibc's malloc hand freed memory back to later allocations instead of
    returning it to the OS: no allocation is served by a fresh mmap (``M_MMAP_MAX = 0``) and the heap is never
    trimmed.  A fresh output then lands on pages that an earlier call touched, so an implementation that
    allocates its outputs (PyTorch, NumPy) is timed doing its kernel's work, as normbench is with preallocated
    ``out=``.  The process keeps its peak memory until it exits.  Returns False (and changes nothing) where the
    C library is not glibc; timings then charge fresh outputs' page faults to the peers (see
    ``machine_info()["freed_memory_reused"]``)."""
    global _reusing
    if _reusing is None:
        _reusing = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        # mallopt returns 1 on success
        _reusing = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _reusing


def freed_memory_reused() -> bool:
    """Whether :func:`reuse_freed_memory` is in effect in this process."""
    return bool(_reusing)


@njit(parallel=True, cache=True)
def _parallel_copy(dst, src):
    for i in prange(src.size):
        dst[i] = src[i]


@njit(parallel=True, cache=True)
def _streaming_copy(dst, src, parts):
    """The prange copy with streaming stores: ``dst`` 64-byte aligned, each of ``parts`` parts a whole number
    of 64-byte lines (the last part's tail takes ordinary stores)."""
    n = src.size
    for p in prange(parts):
        lo = p * n // parts // 16 * 16
        hi = (p + 1) * n // parts // 16 * 16 if p + 1 < parts else n
        s = src[lo:hi]
        d = dst[lo:hi]
        m = (hi - lo) // 16 * 16
        for j in range(m):
            stream(d, j, s[j])
        for j in range(m, hi - lo):
            d[j] = s[j]


def median_seconds(fn, repeats=7, warmup=1, min_time=0.0):
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def copy_seconds(nbytes, repeats=7):
    """Median time of the faster copy of a working set of ``nbytes`` (read nbytes/2, write nbytes/2)."""
    n = max(1, int(nbytes) // 2 // 4)
    src = np.ones(n, np.float32)
    dst = np.zeros_like(src)  # touched: no first-touch page faults in the timing
    t_np = median_seconds(lambda: np.copyto(dst, src), repeats)
    t_par = median_seconds(lambda: _parallel_copy(dst, src), repeats)
    return min(t_np, t_par)


def paired_seconds(fn, nbytes, repeats=7, peers=None, peer_budget=1.0, copies=None):
    """Median times of ``fn()``, of the best copy of an ``nbytes`` working set and of each callable in ``peers``
    (name -> callable), measured in the same rounds so that the kernel, its limit and the peers see the same
    machine load (shared machines drift within a run: a peer timed in a block of its own measured 0.6x one minute
    and 1.6x the next).  Kernel and copies are interleaved call by call.  Each round starts the kernel, and each
    peer, with an untimed call: NumPy/Numba's and PyTorch's OpenMP pools spin after a parallel region, and a call
    timed right after the other library's would share the cores with its spinning threads.  A slow peer (the
    textbook NumPy code can be 100x slower) is timed in fewer rounds (at least 3), spread over the run, to fit
    ``peer_budget`` seconds.  ``fn`` and the peers must already be warm.  ``copies``: the copy callables to time
    instead of the host's (the CUDA backend's limit is a device copy, :func:`normbench.cuda.timing.device_copies`);
    the fastest is the limit.  Returns ``(t_fn, t_copy, {name: t_peer})``."""
    if copies is None:
        n = max(1, int(nbytes) // 2 // 4)
        src = np.ones(n, np.float32)
        dst = np.zeros_like(src)
        copies = (lambda: np.copyto(dst, src), lambda: _parallel_copy(dst, src))
    copies = tuple(copies)
    for call in (*copies, fn):
        call()
    peers = dict(peers or {})
    rounds = {}
    for name, peer in peers.items():
        t0 = time.perf_counter()
        peer()
        # at least 3 rounds (a median of one is no median), at most every round
        k = max(min(3, repeats), min(repeats, int(peer_budget / 2 / max(time.perf_counter() - t0, 1e-9))))
        rounds[name] = {i * repeats // k for i in range(k)}  # k rounds, evenly spread
    times = tuple([] for _ in range(1 + len(copies)))
    peer_times = {name: [] for name in peers}
    for r in range(repeats):
        fn()
        for call, bucket in zip((fn, *copies), times):
            t0 = time.perf_counter()
            call()
            bucket.append(time.perf_counter() - t0)
        for name, peer in peers.items():
            if r in rounds[name]:
                peer()
                t0 = time.perf_counter()
                peer()
                peer_times[name].append(time.perf_counter() - t0)
    t_fn, *t_copies = (float(np.median(b)) for b in times)
    return t_fn, min(t_copies), {name: float(np.median(b)) for name, b in peer_times.items()}


def copy_gbps(nbytes, repeats=7):
    """Bandwidth (GB/s, bytes read + written) of the best copy of an ``nbytes`` working set."""
    moved = 2 * (max(1, int(nbytes) // 2 // 4) * 4)
    return moved / copy_seconds(nbytes, repeats) / 1e9


def streaming_copy_gbps(nbytes, repeats=7):
    """Bandwidth (GB/s, bytes read + written) of a copy with streaming stores of an ``nbytes`` working set."""
    n = max(16, int(nbytes) // 2 // 4)
    src = np.ones(n, np.float32)
    dst = aligned_empty(n, np.float32)
    dst.fill(0)  # touched: no first-touch page faults in the timing
    return 2 * n * 4 / median_seconds(lambda: _streaming_copy(dst, src, numba.get_num_threads()), repeats) / 1e9
