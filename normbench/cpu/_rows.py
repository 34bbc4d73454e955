"""The row-wise engine shared by layer norm, RMS norm and fused add + norm (cpu/layer.py, rms.py, fused.py).

Inputs are viewed as ``R`` rows of ``D`` contiguous values (flat 1-D arrays, so one compiled signature per
dtype serves every rank).  Options arrive as runtime integer codes.  Three schedules, chosen in Python:

* serial (``R * D < PARALLEL_MIN``): a parallel launch would cost more than the work;
* rows: ``prange`` over one contiguous chunk of rows per thread.  Each row is read once from memory for its
  statistics and once more from cache to write ``y`` (normalisation and affine folded into one multiply-add);
  the backward fills per-chunk dweight/dbias partial buffers in its dx loop, then reduces them;
* split (fewer rows than threads and ``D >= SPLIT_MIN``): every row is cut into one piece per thread; piece
  statistics are merged with Chan's formula (or summed), then the pieces are written in parallel.  Each piece
  owns its columns, so the parameter gradients need no partial buffers.  x is read twice from memory here.

Elementwise work is done in float64 (``x - mean`` with a float64 mean must not round: that is what keeps
offset rows accurate); ``accumulate`` selects the precision of the reductions.  With the default one-pass
statistics the row loops are software-pipelined (the loop writing a row sums the next one; the layer/RMS
backward works on two rows at a time where rows have at least PAIRS_MIN values, one at a time below), index the
arrays at unsigned row offsets rather than through per-row views, and write outputs of at least 16 MiB with
streaming stores where every row starts on a 64-byte line (:mod:`._stream`).  docs/cpu-rowwise.md has the
measurements behind each choice.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ..numerics import DEFAULT_ACCUMULATE
from ._moments import FAST, JIT, NAIVE, SHIFTED, chan_merge, row_stats, rstd_from_m2, shift3
from ._stream import PARTIAL_PAD, _put, aligned_empty, new_output, streamable

#: rows x D below this many values run serially
PARALLEL_MIN = 1 << 15
#: rows at least this long are split across threads when there are fewer rows than threads
SPLIT_MIN = 1 << 16

MODE_PLAIN, MODE_FUSED, MODE_FUSED_DH = 0, 1, 2
#: the layer/RMS backward takes rows two at a time (_backward_row_pairs) from this length on, shorter rows one at a
#: time (_backward_row_loop).  One core, ns per value, pairs vs one at a time, rows from L3 or memory: D = 128 1.32
#: vs 1.07, 256 1.56 vs 1.10, 512 1.68 vs 1.13, 768 1.25 vs 1.15, 1024 1.00 vs 1.23, 2048 0.98 vs 1.33, 8192 0.94
#: vs 1.44 (rows in L2 favour the pairs slightly at every length: 1024 x 128 0.68 vs 0.71)
PAIRS_MIN = 1024


# ----------------------------------------------------------------------------------------------- forward
@njit(**FAST)
def _write_y(x, r, alpha, fused, y, h, lo, hi, j0, mean, rstd, w, b, nt):
    """y = (v - mean) * rstd * w + b on x[lo:hi] (parameters from w[j0]); v = x, or x + alpha * r
    (then also stored to h), computed in float64; streaming stores when ``nt`` (a literal)."""
    # Every hot loop runs over views from index 0: LLVM then knows the indices are non-negative and drops
    # Numba's wraparound, which otherwise turns the loads into gathers (3-5x slower, measured).
    # b is None (RMS norm, no bias) only on the split schedule, whose rows are too long for a cached stand-in
    # of zeros: Numba compiles that case separately and prunes the ``b is None`` branches.
    n = hi - lo
    xs = x[lo:hi]
    ys = y[lo:hi]
    ws = w[j0:j0 + n]
    if fused:
        rs = r[lo:hi]
        hs = h[lo:hi]
        if b is None:
            for j in range(n):
                v = np.float64(xs[j]) + alpha * np.float64(rs[j])
                _put(hs, j, v, nt)
                _put(ys, j, (v - mean) * rstd * ws[j], nt)
        else:
            bs = b[j0:j0 + n]
            for j in range(n):
                v = np.float64(xs[j]) + alpha * np.float64(rs[j])
                _put(hs, j, v, nt)
                _put(ys, j, (v - mean) * rstd * ws[j] + bs[j], nt)
    elif b is None:
        for j in range(n):
            _put(ys, j, (np.float64(xs[j]) - mean) * rstd * ws[j], nt)
    else:
        bs = b[j0:j0 + n]
        for j in range(n):
            _put(ys, j, (np.float64(xs[j]) - mean) * rstd * ws[j] + bs[j], nt)


@njit(**FAST)
def _forward_rows(x, r, alpha, fused, y, h, w, b, mean, rstd, D, r0, r1, rms, algo, acc64, corr, eps, eps_code,
                  nt):
    if acc64 and (rms or algo == SHIFTED or algo == NAIVE):
        if nt:  # a literal each way: see _stream._put
            _forward_rows_pipelined(x, r, alpha, fused, y, h, w, b, mean, rstd, D, r0, r1, rms, algo, corr, eps,
                                    eps_code, True)
        else:
            _forward_rows_pipelined(x, r, alpha, fused, y, h, w, b, mean, rstd, D, r0, r1, rms, algo, corr, eps,
                                    eps_code, False)
        return
    for row in range(r0, r1):
        lo = row * D
        m, q = row_stats(x, r, alpha, lo, lo + D, rms, algo, acc64, fused)
        rs = rstd_from_m2(q, D, corr, eps, eps_code)
        mean[row] = m
        rstd[row] = rs
        _write_y(x, r, alpha, fused, y, h, lo, lo + D, 0, m, rs, w, b, False)


@njit(**FAST)
def _shift_of(x, r, alpha, fused, lo, D, rms, algo):
    """The shift of the one-pass sums (as range_moments'): the middle one of the row's first, middle and last
    values (shifted, :func:`shift3`), 0 (naive, RMS)."""
    if rms or algo == NAIVE:
        return 0.0
    if fused:
        return shift3(np.float64(x[lo]) + alpha * np.float64(r[lo]),
                      np.float64(x[lo + D // 2]) + alpha * np.float64(r[lo + D // 2]),
                      np.float64(x[lo + D - 1]) + alpha * np.float64(r[lo + D - 1]))
    return shift3(np.float64(x[lo]), np.float64(x[lo + D // 2]), np.float64(x[lo + D - 1]))


@njit(**FAST)
def _finish_sums(shift, s, s2, D, rms):
    """(mean, m2) from one-pass float64 sums around ``shift`` (m2 clamped at 0; NaN stays NaN)."""
    if rms:
        return 0.0, s2
    q = s2 - s * (s / D)
    if q < 0.0:
        q = 0.0
    return shift + s / D, q


@njit(**FAST)
def _forward_rows_pipelined(x, r, alpha, fused, y, h, w, b, mean, rstd, D, r0, r1, rms, algo, corr, eps,
                            eps_code, nt):
    """One-pass statistics (shifted, naive, RMS; float64 sums) software-pipelined: the loop that writes row i
    from cache also sums row i + 1 from memory, so reads and writes are in flight together (a two-phase
    row loop alternates read-only and write-only streams and reached 0.45-0.6 of a copy per core, this 0.6-0.8)."""
    ws = w[:D]
    bs = b[:D]
    shift = _shift_of(x, r, alpha, fused, r0 * D, D, rms, algo)
    s = 0.0
    s2 = 0.0
    xs = x[r0 * D:r0 * D + D]
    rr = r[r0 * D:r0 * D + D] if fused else xs
    for j in range(D):
        v = np.float64(xs[j]) + alpha * np.float64(rr[j]) if fused else np.float64(xs[j])
        d = v - shift
        s += d
        s2 += d * d
    m, q = _finish_sums(shift, s, s2, D, rms)
    n = np.uint64(D)
    for row in range(r0, r1):
        lo = row * D
        rs = rstd_from_m2(q, D, corr, eps, eps_code)
        mean[row] = m
        rstd[row] = rs
        if row + 1 == r1:
            # the last row of a chunk takes ordinary stores: one compiled variant of _write_y fewer (compile time)
            _write_y(x, r, alpha, fused, y, h, lo, lo + D, 0, m, rs, w, b, False)
            break
        shift = _shift_of(x, r, alpha, fused, lo + D, D, rms, algo)
        s = 0.0
        s2 = 0.0
        # unsigned offsets into the full arrays (row i at c, row i + 1 at c + n), not per-row views: views made
        # in this loop were reference-counted on every row (NRT calls: ~60 ns a row, half the time of a 128-value
        # row in the backward), and an unsigned index has no negative-index wraparound to stop vectorisation
        c = np.uint64(lo)
        if fused:
            for j in range(n):
                d = np.float64(x[c + n + j]) + alpha * np.float64(r[c + n + j]) - shift
                s += d
                s2 += d * d
                v = np.float64(x[c + j]) + alpha * np.float64(r[c + j])
                _put(h, c + j, v, nt)
                _put(y, c + j, (v - m) * rs * ws[j] + bs[j], nt)
        else:
            for j in range(n):
                d = np.float64(x[c + n + j]) - shift
                s += d
                s2 += d * d
                _put(y, c + j, (np.float64(x[c + j]) - m) * rs * ws[j] + bs[j], nt)
        m, q = _finish_sums(shift, s, s2, D, rms)


@njit(parallel=True, **FAST)
def _forward_par(x, r, alpha, fused, y, h, w, b, mean, rstd, D, T, rms, algo, acc64, corr, eps, eps_code, nt):
    R = mean.size
    nch = min(R, T)  # one contiguous chunk of rows per thread
    for c in prange(nch):
        _forward_rows(x, r, alpha, fused, y, h, w, b, mean, rstd, D, c * R // nch, (c + 1) * R // nch,
                      rms, algo, acc64, corr, eps, eps_code, nt)


@njit(**JIT)
def _piece(s, S, D):
    """Columns [j0, j1) of piece s of S of a split row: boundaries on multiples of 16 values, so every piece of
    an aligned array starts on a 64-byte line (streaming stores)."""
    j0 = (s * D // S) // 16 * 16
    j1 = D if s + 1 == S else ((s + 1) * D // S) // 16 * 16
    return j0, j1


@njit(parallel=True, **FAST)
def _forward_split(x, r, alpha, fused, y, h, w, b, mean, rstd, D, S, rms, algo, acc64, corr, eps, eps_code, nt):
    R = mean.size
    pm = np.empty((R, S))
    pq = np.empty((R, S))
    for s in prange(S):
        j0, j1 = _piece(s, S, D)
        for row in range(R):
            m, q = row_stats(x, r, alpha, row * D + j0, row * D + j1, rms, algo, acc64, fused)
            pm[row, s] = m
            pq[row, s] = q
    for row in range(R):
        n = 0
        m = 0.0
        q = 0.0
        for s in range(S):
            if rms:
                q += pq[row, s]
            else:
                j0, j1 = _piece(s, S, D)
                n, m, q = chan_merge(n, m, q, j1 - j0, pm[row, s], pq[row, s])
        mean[row] = m
        rstd[row] = rstd_from_m2(q, D, corr, eps, eps_code)
    for s in prange(S):
        j0, j1 = _piece(s, S, D)
        for row in range(R):
            lo = row * D
            if nt:  # a literal each way: see _stream._put
                _write_y(x, r, alpha, fused, y, h, lo + j0, lo + j1, j0, mean[row], rstd[row], w, b, True)
            else:
                _write_y(x, r, alpha, fused, y, h, lo + j0, lo + j1, j0, mean[row], rstd[row], w, b, False)


# ---------------------------------------------------------------------------------------------- backward
@njit(**FAST)
def _grad_sums(dy, x, w, lo, hi, j0, mean, acc64):
    """(sum(g), sum(g * (x - mean))) with g = dy * w over the range, in the accumulator, returned as float64."""
    n = hi - lo
    dys = dy[lo:hi]
    xs = x[lo:hi]
    ws = w[j0:j0 + n]
    if acc64:
        sa = 0.0
        sb = 0.0
        for j in range(n):
            g = np.float64(dys[j]) * np.float64(ws[j])
            sa += g
            sb += g * (np.float64(xs[j]) - mean)
        return sa, sb
    m32 = np.float32(mean)
    fa = np.float32(0.0)
    fb = np.float32(0.0)
    for j in range(n):
        g = np.float32(dys[j]) * np.float32(ws[j])
        fa += g
        fb += g * (np.float32(xs[j]) - m32)
    return np.float64(fa), np.float64(fb)


@njit(**JIT)
def _dx_coefficients(sa, sb, rs, D, corr, eps, eps_code, rms):
    """dx = rs * g + k * (x - mean) + c0: k from d rstd / d var (0 where it does not exist), c0 the mean term."""
    nc = np.float64(D - corr)
    if eps_code == 0:
        # the average first, then one factor of rs at a time: every partial product stays near the result's
        # magnitude (rs^3 alone underflows to 0 where std > 1e103, overflows where std < 1e-103 with eps = 0)
        k = -(sb / nc) * rs * rs * rs
    else:
        sd = 1.0 / rs - eps  # sqrt(var)
        # var = 0: the term is taken as 0, or NaN where rs = inf (eps = 0: the forward's xhat is 0 * inf = NaN)
        k = -(sb / (sd * nc)) * rs * rs if sd > 0 else 0.0 * rs
    c0 = 0.0 if rms else -rs * sa / np.float64(D)
    return k, c0


@njit(**FAST)
def _write_dx(dy, x, w, dx, dres, dh, mode, alpha, lo, hi, j0, mean, rs, k, c0, dwp, dbp, nt):
    """dx on the range (+ dh, and dresidual = alpha * dx for fused add + norm), through streaming stores when
    ``nt`` (a literal); adds the dweight and dbias terms to dwp/dbp (indexed from j0) in the same pass, unless
    they are None (the branches are then compiled out)."""
    n = np.uint64(hi - lo)
    a = np.uint64(lo)  # unsigned offsets: see _forward_rows_pipelined
    q = np.uint64(j0)
    if mode == MODE_PLAIN:
        for j in range(n):
            g = np.float64(dy[a + j])
            xc = np.float64(x[a + j]) - mean
            _put(dx, a + j, rs * w[q + j] * g + k * xc + c0, nt)
            if dwp is not None:
                dwp[q + j] += g * xc * rs
            if dbp is not None:
                dbp[q + j] += g
    else:
        dhs = dh if mode == MODE_FUSED_DH else dy  # dhf = 0: the term vanishes without a third loop
        dhf = 1.0 if mode == MODE_FUSED_DH else 0.0
        for j in range(n):
            g = np.float64(dy[a + j])
            xc = np.float64(x[a + j]) - mean
            v = rs * w[q + j] * g + k * xc + c0 + dhf * dhs[a + j]
            _put(dx, a + j, v, nt)
            _put(dres, a + j, alpha * v, nt)
            if dwp is not None:
                dwp[q + j] += g * xc * rs
            if dbp is not None:
                dbp[q + j] += g


@njit(**FAST)
def _backward_rows(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, D, r0, r1, rms, acc64, corr, eps, eps_code,
                   dwp, dbp, nt):
    if acc64 and mode == MODE_PLAIN:  # layer / RMS norm; nt a literal each way: see _stream._put
        if D >= PAIRS_MIN:
            if nt:
                _backward_row_pairs(dy, x, w, dx, mean, rstd, D, r0, r1, rms, corr, eps, eps_code, dwp, dbp, True)
            else:
                _backward_row_pairs(dy, x, w, dx, mean, rstd, D, r0, r1, rms, corr, eps, eps_code, dwp, dbp, False)
        elif nt:
            _backward_row_loop(dy, x, w, dx, mean, rstd, D, r0, r1, rms, corr, eps, eps_code, dwp, dbp, True)
        else:
            _backward_row_loop(dy, x, w, dx, mean, rstd, D, r0, r1, rms, corr, eps, eps_code, dwp, dbp, False)
        return
    if acc64:
        if nt:
            _backward_rows_pipelined(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, D, r0, r1, rms, corr, eps,
                                     eps_code, dwp, dbp, True)
        else:
            _backward_rows_pipelined(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, D, r0, r1, rms, corr, eps,
                                     eps_code, dwp, dbp, False)
        return
    for row in range(r0, r1):
        lo = row * D
        m = mean[row]
        rs = rstd[row]
        sa, sb = _grad_sums(dy, x, w, lo, lo + D, 0, m, acc64)
        k, c0 = _dx_coefficients(sa, sb, rs, D, corr, eps, eps_code, rms)
        _write_dx(dy, x, w, dx, dres, dh, mode, alpha, lo, lo + D, 0, m, rs, k, c0, dwp, dbp, False)


@njit(**FAST)
def _backward_row_loop(dy, x, w, dx, mean, rstd, D, r0, r1, rms, corr, eps, eps_code, dwp, dbp, nt):
    """The layer/RMS (not fused) float64 backward one row at a time: its sums, then dx from L1; for rows shorter
    than PAIRS_MIN, where from L3 or memory it beat the two-row kernel.  (Accumulator and mode are constants
    here, so the compiled loops carry no branch for the other cases.)"""
    for row in range(r0, r1):
        lo = row * D
        m = mean[row]
        rs = rstd[row]
        sa, sb = _grad_sums(dy, x, w, lo, lo + D, 0, m, True)
        k, c0 = _dx_coefficients(sa, sb, rs, D, corr, eps, eps_code, rms)
        _write_dx(dy, x, w, dx, dx, dx, MODE_PLAIN, 0.0, lo, lo + D, 0, m, rs, k, c0, dwp, dbp, nt)


@njit(**FAST)
def _backward_row_pairs(dy, x, w, dx, mean, rstd, D, r0, r1, rms, corr, eps, eps_code, dwp, dbp, nt):
    """The layer/RMS (not fused) float64 backward two rows at a time, pipelined as _backward_rows_pipelined: the
    loop writing dx of rows i and i + 1 also sums rows i + 2 and i + 3.  The dweight/dbias partials are loaded and
    stored once per two rows and the per-row work is shared (one core, from cache: 0.68 -> 0.54 ns per value at
    D = 2048, 0.66 -> 0.63 at D = 128)."""
    ws = w[:D]
    dwq = dwp[:D]
    dbq = dbp[:D]
    n = np.uint64(D)
    row = r0
    sa0, sb0 = _grad_sums(dy, x, w, row * D, row * D + D, 0, mean[row], True)
    sa1 = 0.0
    sb1 = 0.0
    if row + 1 < r1:
        sa1, sb1 = _grad_sums(dy, x, w, row * D + D, row * D + 2 * D, 0, mean[row + 1], True)
    while row + 3 < r1:
        m0 = mean[row]
        m1 = mean[row + 1]
        m2 = mean[row + 2]
        m3 = mean[row + 3]
        r0s = rstd[row]
        r1s = rstd[row + 1]
        k0, c0 = _dx_coefficients(sa0, sb0, r0s, D, corr, eps, eps_code, rms)
        k1, c1 = _dx_coefficients(sa1, sb1, r1s, D, corr, eps, eps_code, rms)
        a0 = np.uint64(row * D)  # unsigned offsets, not per-row views: see _forward_rows_pipelined
        a1 = a0 + n
        a2 = a1 + n
        a3 = a2 + n
        sa0 = 0.0
        sb0 = 0.0
        sa1 = 0.0
        sb1 = 0.0
        for j in range(n):
            wj = np.float64(ws[j])
            g2 = np.float64(dy[a2 + j]) * wj
            sa0 += g2
            sb0 += g2 * (np.float64(x[a2 + j]) - m2)
            g3 = np.float64(dy[a3 + j]) * wj
            sa1 += g3
            sb1 += g3 * (np.float64(x[a3 + j]) - m3)
            g0 = np.float64(dy[a0 + j])
            xc0 = np.float64(x[a0 + j]) - m0
            g1 = np.float64(dy[a1 + j])
            xc1 = np.float64(x[a1 + j]) - m1
            _put(dx, a0 + j, r0s * wj * g0 + k0 * xc0 + c0, nt)
            _put(dx, a1 + j, r1s * wj * g1 + k1 * xc1 + c1, nt)
            dwq[j] += g0 * xc0 * r0s + g1 * xc1 * r1s
            dbq[j] += g0 + g1
        row += 2
    for t in range(row, r1):  # the last one to three rows, one at a time
        if t == row:
            sa, sb = sa0, sb0
        elif t == row + 1:
            sa, sb = sa1, sb1
        else:
            sa, sb = _grad_sums(dy, x, w, t * D, t * D + D, 0, mean[t], True)
        k, c = _dx_coefficients(sa, sb, rstd[t], D, corr, eps, eps_code, rms)
        # ordinary stores for these rows: one compiled variant of _write_dx fewer (compile time)
        _write_dx(dy, x, w, dx, dx, dx, MODE_PLAIN, 0.0, t * D, t * D + D, 0, mean[t], rstd[t], k, c, dwp, dbp,
                  False)


@njit(**FAST)
def _backward_rows_pipelined(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, D, r0, r1, rms, corr, eps, eps_code,
                             dwp, dbp, nt):
    """The fused add + norm float64 backward (dx, dresidual = alpha * dx, plus dh) software-pipelined as the
    forward: the loop writing row i (from cache) also sums row i + 1 (from memory).  Layer and RMS norm take
    :func:`_backward_row_pairs`."""
    ws = w[:D]
    dwq = dwp[:D]
    dbq = dbp[:D]
    sa, sb = _grad_sums(dy, x, w, r0 * D, r0 * D + D, 0, mean[r0], True)
    n = np.uint64(D)
    for row in range(r0, r1):
        lo = row * D
        m = mean[row]
        rs = rstd[row]
        k, c0 = _dx_coefficients(sa, sb, rs, D, corr, eps, eps_code, rms)
        if row + 1 == r1:
            _write_dx(dy, x, w, dx, dres, dh, mode, alpha, lo, lo + D, 0, m, rs, k, c0, dwp, dbp, False)
            break
        mn = mean[row + 1]
        a = np.uint64(lo)  # unsigned offsets, not per-row views: see _forward_rows_pipelined
        b = a + n
        sa = 0.0
        sb = 0.0
        dhs = dh if mode == MODE_FUSED_DH else dy
        dhf = 1.0 if mode == MODE_FUSED_DH else 0.0
        for j in range(n):
            gn = np.float64(dy[b + j]) * np.float64(ws[j])
            sa += gn
            sb += gn * (np.float64(x[b + j]) - mn)
            g = np.float64(dy[a + j])
            xc = np.float64(x[a + j]) - m
            v = rs * ws[j] * g + k * xc + c0 + dhf * dhs[a + j]
            _put(dx, a + j, v, nt)
            _put(dres, a + j, alpha * v, nt)
            dwq[j] += g * xc * rs
            dbq[j] += g


@njit(parallel=True, **FAST)
def _backward_par(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, D, T, rms, acc64, corr, eps, eps_code, dw, db,
                  nt):
    R = mean.size
    nch = min(R, T)  # one contiguous chunk of rows, and one pair of partial buffers, per thread
    # updated on every row: one block, each buffer followed by padding (see _stream.PARTIAL_PAD)
    part = np.zeros((nch, 2, D + PARTIAL_PAD))
    for c in prange(nch):
        _backward_rows(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, D, c * R // nch, (c + 1) * R // nch,
                       rms, acc64, corr, eps, eps_code, part[c, 0, :D], part[c, 1, :D], nt)
    for j in range(D):
        dw[j] = 0.0
        db[j] = 0.0
    for c in range(nch):
        for j in range(D):
            dw[j] += part[c, 0, j]
            db[j] += part[c, 1, j]


@njit(**FAST)
def _piece_sums(dy, x, w, dw, db, lo, hi, j0, mean, rs, acc64, nt):
    """:func:`_grad_sums` on a piece of a split row that also *assigns* the row's dweight and dbias terms
    (g * xc * rs and g; None: not wanted) to dw/db from j0, through streaming stores when ``nt``.  The split
    backward runs it on the first row, so the fresh pages of dw/db (as long as the row) are written once, while
    x and dy are read for the sums, and never read first."""
    n = np.uint64(hi - lo)
    a = np.uint64(lo)
    q = np.uint64(j0)
    if acc64:
        sa = 0.0
        sb = 0.0
        for j in range(n):
            g = np.float64(dy[a + j])
            xc = np.float64(x[a + j]) - mean
            gw = g * np.float64(w[q + j])
            sa += gw
            sb += gw * xc
            if dw is not None:
                _put(dw, q + j, g * xc * rs, nt)
            if db is not None:
                _put(db, q + j, g, nt)
        return sa, sb
    m32 = np.float32(mean)
    fa = np.float32(0.0)
    fb = np.float32(0.0)
    for j in range(n):
        g = np.float64(dy[a + j])
        xc = np.float64(x[a + j]) - mean
        g32 = np.float32(dy[a + j]) * np.float32(w[q + j])
        fa += g32
        fb += g32 * (np.float32(x[a + j]) - m32)
        if dw is not None:
            _put(dw, q + j, g * xc * rs, nt)
        if db is not None:
            _put(db, q + j, g, nt)
    return np.float64(fa), np.float64(fb)


@njit(**FAST)
def _split_sums(dy, x, w, dw, db, mean, rstd, D, s, S, acc64, pa, pb, nt):
    """Pass 1 of the split backward on piece s: every row's sums; the first row's parameter terms."""
    j0, j1 = _piece(s, S, D)
    for row in range(mean.size):
        lo = row * D
        if row == 0:
            pa[row, s], pb[row, s] = _piece_sums(dy, x, w, dw, db, lo + j0, lo + j1, j0, mean[0], rstd[0], acc64,
                                                 nt)
        else:
            pa[row, s], pb[row, s] = _grad_sums(dy, x, w, lo + j0, lo + j1, j0, mean[row], acc64)


@njit(**FAST)
def _split_dx(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, ks, cs, D, s, S, dw, db, nt):
    """Pass 2 of the split backward on piece s: dx of every row; the parameter terms of rows after the first."""
    j0, j1 = _piece(s, S, D)
    for row in range(mean.size):
        lo = row * D
        if row == 0:
            _write_dx(dy, x, w, dx, dres, dh, mode, alpha, lo + j0, lo + j1, j0, mean[0], rstd[0], ks[0], cs[0],
                      None, None, nt)
        else:
            _write_dx(dy, x, w, dx, dres, dh, mode, alpha, lo + j0, lo + j1, j0, mean[row], rstd[row], ks[row],
                      cs[row], dw, db, nt)


@njit(parallel=True, **FAST)
def _backward_split(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, D, S, rms, acc64, corr, eps, eps_code,
                    dw, db, nt):
    """Few long rows: each row cut into S pieces (:func:`_piece`), one per thread.  dw/db (x's dtype, or None when
    not wanted) are fresh arrays: the first row assigns them in pass 1, later rows add to them in pass 2."""
    R = mean.size
    pa = np.empty((R, S))
    pb = np.empty((R, S))
    for s in prange(S):
        if nt:  # a literal each way: see _stream._put
            _split_sums(dy, x, w, dw, db, mean, rstd, D, s, S, acc64, pa, pb, True)
        else:
            _split_sums(dy, x, w, dw, db, mean, rstd, D, s, S, acc64, pa, pb, False)
    ks = np.empty(R)
    cs = np.empty(R)
    for row in range(R):
        ks[row], cs[row] = _dx_coefficients(pa[row].sum(), pb[row].sum(), rstd[row], D, corr, eps, eps_code, rms)
    for s in prange(S):
        if nt:
            _split_dx(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, ks, cs, D, s, S, dw, db, True)
        else:
            _split_dx(dy, x, w, dx, dres, dh, mode, alpha, mean, rstd, ks, cs, D, s, S, dw, db, False)


# ------------------------------------------------------------------------------------------ Python side
def _schedule(R, D):
    """"serial", "rows" or ("split", pieces)."""
    if R * D < PARALLEL_MIN and D < SPLIT_MIN:
        return "serial", 1  # before asking numba for its thread count: that takes a lock (~10 us)
    T = numba.get_num_threads()
    if D >= SPLIT_MIN and R < max(T, 2):
        return "split", max(T, 2)
    if R == 1:
        return "serial", 1
    return "rows", T


_CONST: dict = {}  # (D, dtype, fill) -> the read-only-by-convention stand-in for a weight or bias of None


def _flat_param(p, D, dtype, fill):
    if p is None:
        key = (D, dtype, fill)
        c = _CONST.get(key)
        if c is None:  # kernels never write parameters; small ones are kept (RMS has no bias: every call)
            c = np.full(D, fill, dtype)
            if D <= 1 << 16 and len(_CONST) < 64:
                _CONST[key] = c
        return c
    p = p if p.ndim == 1 else p.reshape(-1)
    return p if p.dtype == dtype else p.astype(dtype)


_F64 = np.dtype(np.float64)
# Shared zero-length stand-ins for the arrays a mode does not use (never written): saves an allocation per call.
_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32), _F64: np.empty(0, np.float64)}


_CODES: dict = {}  # (id(opts), dtype) -> (opts, variance code, acc64, correction, eps code)


def _codes(opts, dtype):
    """The kernels' integer option codes for ``opts`` and inputs of ``dtype``, memoised per Numerics object
    (small calls are overhead-bound; the entry holds opts itself, so an id is never reused while cached)."""
    c = _CODES.get((id(opts), dtype))
    if c is None or c[0] is not opts:
        acc64 = (opts.accumulate or DEFAULT_ACCUMULATE[dtype]) == "float64"
        c = (opts, opts.variance_code, acc64, opts.correction, opts.eps_code)
        if len(_CODES) > 256:
            _CODES.clear()
        _CODES[(id(opts), dtype)] = c
    return c


def _flat(a):
    return a if a.ndim == 1 else a.ravel()  # C-contiguous here: a view (ravel costs half of reshape(-1))


def _lead(a, lead):
    return a if len(lead) == 1 else a.reshape(lead)


def forward(x, normalized_shape, weight, bias, *, rms, eps, opts, out=None, residual=None, alpha=0.0,
            h_out=None):
    """Layer norm (``rms=False``) or RMS norm over the trailing ``normalized_shape``; with ``residual`` the
    input is ``h = x + alpha * residual`` (written to ``h``). Returns ``(y, h, mean, rstd)``, stats float64."""
    D = math.prod(normalized_shape)
    lead = x.shape[: x.ndim - len(normalized_shape)]
    R = x.size // D
    dtype = x.dtype
    fused = residual is not None
    y = out if out is not None else new_output(x.shape, dtype)
    h = (h_out if h_out is not None else new_output(x.shape, dtype)) if fused else None
    mean, rstd = np.empty((2, R))
    if R:
        xf = _flat(x)
        rf = _flat(residual) if fused else xf
        hf = _flat(h) if fused else _EMPTY[dtype]
        kind, S = _schedule(R, D)
        # Parameters go to the threaded kernels in float64 (one conversion per call instead of one per element
        # and row: the write loop is bound by float32 <-> float64 conversions when rows are in cache, 0.41 ->
        # 0.36 ns per value on one core).  Serial calls (few rows: the conversion would cost about what the
        # kernel does, 0.95 us of a 12 us (8, 768) call) and the split schedule (rows too long to copy) keep x's.
        pdtype = _F64 if kind == "rows" else dtype
        w = _flat_param(weight, D, pdtype, 1.0)
        b = None if bias is None and kind == "split" else _flat_param(bias, D, pdtype, 0.0)
        if kind == "serial":
            S = 0
        fn = _forward_split if kind == "split" else (_forward_par if kind == "rows" else _forward_rows)
        _, algo, acc64, corr, eps_code = _codes(opts, dtype)
        tail = (rms, algo, acc64, corr, float(eps), eps_code)
        nt = streamable(y, D, h) if fused else streamable(y, D)
        if S:  # split and rows: S pieces or threads
            fn(xf, rf, float(alpha), fused, _flat(y), hf, w, b, mean, rstd, D, S, *tail, nt)
        else:
            fn(xf, rf, float(alpha), fused, _flat(y), hf, w, b, mean, rstd, D, 0, R, *tail, nt)
    return y, h, _lead(mean, lead), _lead(rstd, lead)


def backward(dy, x, normalized_shape, mean, rstd, weight, *, rms, eps, opts, dx_out=None, fused=False,
             alpha=0.0, dh=None, dres_out=None, want_dw=True, want_db=True):
    """Gradients of :func:`forward` w.r.t. its normalised input (x, or h when ``fused``): returns
    ``(dx, dresidual|None, dweight, dbias)``, dweight/dbias in x's dtype (None where not wanted)."""
    D = math.prod(normalized_shape)
    R = x.size // D
    dtype = dy.dtype
    if x.dtype != dtype or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype)  # h may arrive float64 from the reference backend
    dx = dx_out if dx_out is not None else new_output(x.shape, dtype)
    dres = (dres_out if dres_out is not None else new_output(x.shape, dtype)) if fused else None
    kind, S = _schedule(R, D)
    nt = streamable(dx, D, dres) if fused else streamable(dx, D)
    if R and kind == "split":
        # (few, long rows) dw/db are written in place in x's dtype: fresh, aligned and never zeroed first
        dw = aligned_empty(D, dtype) if want_dw else None
        db = aligned_empty(D, dtype) if want_db else None
    else:
        # float64 partial sums over many rows
        dwb = np.zeros((2, D))
        dw, db = dwb[0], dwb[1]
    if R:
        mode = MODE_PLAIN if not fused else (MODE_FUSED if dh is None else MODE_FUSED_DH)
        dresf = _flat(dres) if fused else _EMPTY[dtype]
        dhf = _flat(dh) if dh is not None else _EMPTY[dtype]
        w = _flat_param(weight, D, dtype, 1.0)
        meanf = np.zeros(R) if mean is None else _flat(_stat64(mean))
        rstdf = _flat(_stat64(rstd))
        _, _, acc64, corr, eps_code = _codes(opts, dtype)
        tail = (rms, acc64, corr, float(eps), eps_code, dw, db, nt)
        head = (_flat(dy), _flat(x), w, _flat(dx), dresf, dhf, mode, float(alpha), meanf, rstdf, D)
        if kind == "split":
            _backward_split(*head, S, *tail)
        elif kind == "serial":
            _backward_rows(*head, 0, R, *tail)
        else:
            _backward_par(*head, S, *tail)
    shape = tuple(normalized_shape)
    return dx, dres, _param_grad(dw, want_dw, dtype, shape), _param_grad(db, want_db, dtype, shape)


def _param_grad(g, want, dtype, shape):
    if not want:
        return None
    g = g.astype(dtype, copy=False)
    return g if len(shape) == 1 else g.reshape(shape)


def _stat64(s):
    return s if s.dtype == _F64 and s.flags.c_contiguous else np.ascontiguousarray(s, np.float64)
