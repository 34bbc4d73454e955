"""Where one core's time goes in the channels-last group-norm forward's sweep (docs/cpu-channel.md, "Not met"):
``NUMBA_NUM_THREADS=1 .venv/bin/python tools/channel_cl_per_core.py [C]`` (default C = 128: (64, 56, 56, 128)).

One thread, x of 64 * 3136 rows of C float32 values (from memory: 100 MiB), outputs with streaming stores, as the
kernel runs them on this size.  Per sweep over all blocks, best of 5 (milliseconds of CPU time):
- ``normalise``: y from x only (one read, one write: the floor of any forward);
- ``sums``: the shifted column sums only (one read);
- ``one pass``: the kernel's loop summing the very block it writes (wrong statistics, but x read once: the
  bound of a pipelined sweep that needed no second read);
- ``pipelined``: the kernel's loop as it runs (writes block b from cache, sums block b + 1 from memory),
  for blocks of 1/2x, 1x and 2x a sample's rows.
Calls the kernel's internal loops (``cpu._channel``), not the public API: it separates their parts.
"""
import sys

import numpy as np

from _timing import tmin
from normbench.cpu import _channel as ch
from normbench.cpu._stream import aligned_empty

C = int(sys.argv[1]) if len(sys.argv) > 1 else 128
ROWS = 64 * 3136
K = ch._tile_rows(C, ch.TILE)
tt, ss, ss2 = (np.empty(K * C) for _ in range(3))
mc, sc, sh = np.zeros(C), np.ones(C), np.zeros(C)
tm, ts, th = ch._tiled(mc, K), ch._tiled(sc, K), ch._tiled(sh, K)
x = aligned_empty((ROWS * C,), np.float32)
x[:] = np.random.default_rng(0).standard_normal(x.size, dtype=np.float32)
y = aligned_empty(x.shape, np.float32)
y[:] = 0


def blocks(R):
    return x.reshape(-1, R, C), y.reshape(-1, R, C)


def normalise(R):
    x3, y3 = blocks(R)
    for b in range(x3.shape[0]):
        ch._normalize_rows(x3[b], y3[b], 0, R, mc, sc, sh, True, int(ch.WIDE_L1D), 1)


def sums(R):
    x3, _ = blocks(R)
    for b in range(x3.shape[0]):
        ch._tiled_sums(x3[b], K, tt, ss, ss2)


def one_pass(R):
    x3, y3 = blocks(R)
    for b in range(x3.shape[0]):
        ch._normalize_and_sum(x3[b], y3[b], x3[b], K, tm, ts, th, tt, ss, ss2, True, 1)


def pipelined(R):
    x3, y3 = blocks(R)
    for b in range(x3.shape[0] - 1):
        ch._normalize_and_sum(x3[b], y3[b], x3[b + 1], K, tm, ts, th, tt, ss, ss2, True, 1)


R = 3136
for _ in range(2):
    row = {f.__name__: tmin(lambda: f(R)) * 1e3 for f in (normalise, sums, one_pass)}
    row.update({f"pipelined R={r}": tmin(lambda: pipelined(r)) * 1e3 for r in (R // 2, R, 2 * R)})
    print("  ".join(f"{k} {v:.2f}" for k, v in row.items()), "ms")
