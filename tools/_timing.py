"""Shared by the per-core tools: CPU time of one thread (a shared machine cannot distort it much)."""
import sys
import time


def tmin(fn, n=5):
    """Best CPU time of ``fn()`` over ``n`` calls, after one warm-up call."""
    fn()
    best = 1e9
    for _ in range(n):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


def shape_arg():
    """The shape given as the first argument, e.g. 4096x2048."""
    return tuple(int(v) for v in sys.argv[1].split("x"))
