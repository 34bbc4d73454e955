"""A copy with streaming (non-temporal) stores vs ordinary stores and np.copyto, 128 MiB float32, 1 and 2
threads: the headroom above the benchmarks' copy limit that kernels with streaming stores can use (README,
docs/benchmarking.md). Run: .venv/bin/python tools/streaming_copy.py"""
import time

import numpy as np
from numba import njit, prange

from normbench.cpu._stream import aligned_empty, stream


@njit(parallel=True)
def scale_copy(dst, src, parts):
    n = src.size
    for p in prange(parts):
        lo, hi = p * n // parts // 16 * 16, (p + 1) * n // parts // 16 * 16 if p + 1 < parts else n
        s, d = src[lo:hi], dst[lo:hi]
        for j in range(hi - lo):
            d[j] = s[j] * np.float32(1.5)


@njit(parallel=True)
def scale_copy_streaming(dst, src, parts):
    n = src.size
    for p in prange(parts):
        lo, hi = p * n // parts // 16 * 16, (p + 1) * n // parts // 16 * 16 if p + 1 < parts else n
        s, d = src[lo:hi], dst[lo:hi]
        m = (hi - lo) // 16 * 16  # whole 64-byte lines: streamed; the tail (last part only) stored plainly
        for j in range(m):
            stream(d, j, s[j] * np.float32(1.5))
        for j in range(m, hi - lo):
            d[j] = s[j] * np.float32(1.5)


def best(fn, *args):
    fn(*args)
    t = 1e9
    for _ in range(9):
        t0 = time.perf_counter()
        fn(*args)
        t = min(t, time.perf_counter() - t0)
    return t


n = 32 << 20
src = np.ones(n, np.float32)
dst = aligned_empty(n, np.float32)
dst.fill(0)
gbs = lambda t: 2 * n * 4 / t / 1e9  # noqa: E731
for parts in (1, 2):
    print(f"{parts} thread(s): ordinary stores {gbs(best(scale_copy, dst, src, parts)):.1f} GB/s, streaming stores "
          f"{gbs(best(scale_copy_streaming, dst, src, parts)):.1f} GB/s, np.copyto {gbs(best(np.copyto, dst, src)):.1f} GB/s")
