"""The variance algorithms shared by every CPU kernel: one implementation of each.

Every primitive returns per-range moments as ``(mean, m2)`` (m2 = sum of squared deviations) so that any
split of the data — a row over threads, a channel over the batch — merges exactly with Chan's formula
(:func:`chan_merge`).  Algorithms (runtime codes, see ``normbench.numerics.VARIANCE_CODE``):

* ``TWO_PASS``: mean, then the sum of squared deviations (reads the range twice; exact-ish, cache-friendly).
* ``WELFORD``: blocked Welford: the range is cut into blocks of ``BLOCK`` values whose (mean, m2) are computed
  in registers and merged into the running moments with Chan's formula (vectorisable, one pass).
* ``NAIVE``: sum and sum of squares, ``m2 = s2 - s1**2/n`` clamped at 0 (catastrophic cancellation on offset
  data: kept on purpose for the accuracy study).
* ``SHIFTED``: one pass of sums around ``K`` (:func:`shift3`: the middle of the range's first, middle and last
  values): ``m2 = sum((x-K)**2) - sum(x-K)**2/n`` (clamped at 0);
  with a float64 accumulator this is as accurate as two-pass on float32 data and as fast as one pass.

Each comes with a float32 and a float64 accumulator (``acc64``).  ``fastmath`` allows reassociation and
contraction only (vectorised sums); never ``nnan``/``ninf``, so NaN and Inf propagate as IEEE says.
"""
from __future__ import annotations

import numpy as np
from numba import njit

FASTMATH = {"reassoc", "contract"}
#: options of every CPU kernel: float division by zero gives inf/NaN as in NumPy (``error_model="numpy"``), not
#: Numba's default ZeroDivisionError, which aborted a call half-way through its outputs (eps=0 on a constant row)
JIT = dict(cache=True, error_model="numpy")
FAST = dict(JIT, fastmath=FASTMATH)  # plus reassociation and contraction: vectorised sums (never nnan/ninf)
TWO_PASS, WELFORD, NAIVE, SHIFTED = 0, 1, 2, 3
BLOCK = 64  # values per Welford block


@njit(inline="always", **JIT)
def median3(a, b, c):
    """The middle one of three values (a NaN among them may come out: :func:`finite_shift` then takes 0)."""
    return max(min(a, b), min(max(a, b), c))


@njit(inline="always", **JIT)
def shift3(first, middle, last):
    """The shift of one-pass shifted sums over a range: the middle one of its first, middle and last values,
    through :func:`finite_shift`.  Any value of the data keeps a constant range exact; the middle of three keeps
    an outlier from being the shift, whose distance from the mean the one-pass formula pays for without a wider
    accumulator (float64 data: Cauchy rows of 1024, layer norm y 734 -> 4 float64 units at worst over 4000)."""
    return finite_shift(median3(first, middle, last))


@njit(inline="always", **FAST)
def finite_shift(v):
    """The shift of one-pass shifted sums: ``v`` (a value of the data), or 0 where ``v`` is Inf or NaN: an infinite
    shift makes every deviation NaN (Inf - Inf), where the reference's mean of data holding an Inf is that Inf.
    Every shifted sum takes its shift through this rule."""
    return v if abs(v) < np.inf else 0.0


def _make_range_moments(acc, fused):
    """Compile the algorithms for accumulator type ``acc`` (np.float32 or np.float64).

    ``fused`` (a compile-time constant) makes every value ``x[i] + alpha * r[i]`` computed in ``acc``: the
    statistics of fused add + norm's ``h`` before it is rounded to the storage dtype.  Otherwise ``r`` and
    ``alpha`` are ignored (pass x and 0.0).
    """

    @njit(**FAST)
    def range_moments(x, r, alpha, lo, hi, algo):
        """(base, d, m2): the mean is base + d, kept apart so that a caller can take it relative to a reference
        before it is rounded at the data's magnitude (the shifted sums: base the shift, d their mean; the other
        algorithms: the mean, 0).  Callers add them in float64 whatever the accumulator (a float32 accumulator holds
        the sums, not the mean: the shift is a value of the data).  See MERGE_NOTE."""
        n = hi - lo
        zero = acc(0.0)
        a = acc(alpha)
        if n <= 0:
            return zero, zero, zero
        # Re-base on views that start at a literal 0: LLVM then proves every index non-negative and drops
        # Numba's negative-index wraparound, which otherwise blocks vectorisation (5-7x slower, measured).
        x = x[lo:hi]
        r = r[lo:hi]
        lo = 0
        hi = n
        if algo == TWO_PASS:
            s = zero
            for i in range(lo, hi):
                v = acc(x[i]) + a * acc(r[i]) if fused else acc(x[i])
                s += v
            mean = s / acc(n)
            q = zero
            for i in range(lo, hi):
                v = acc(x[i]) + a * acc(r[i]) if fused else acc(x[i])
                d = v - mean
                q += d * d
            return mean, zero, q
        if algo == WELFORD:
            count = zero
            mean = zero
            q = zero
            for b in range(lo, hi, BLOCK):
                e = min(b + BLOCK, hi)
                k = acc(e - b)
                s = zero
                for i in range(b, e):
                    v = acc(x[i]) + a * acc(r[i]) if fused else acc(x[i])
                    s += v
                bm = s / k
                bq = zero
                for i in range(b, e):
                    v = acc(x[i]) + a * acc(r[i]) if fused else acc(x[i])
                    d = v - bm
                    bq += d * d
                tot = count + k
                if abs(bm) < np.inf and abs(mean) < np.inf:
                    delta = bm - mean
                    mean += delta * (k / tot)
                    q += bq + delta * delta * (count * k / tot)
                else:  # an Inf or NaN mean: IEEE's sum, m2 NaN (chan_merge's rule)
                    mean = mean + bm
                    q = acc(np.nan)
                count = tot
            return mean, zero, q
        if algo == NAIVE:
            s = zero
            s2 = zero
            for i in range(lo, hi):
                v = acc(x[i]) + a * acc(r[i]) if fused else acc(x[i])
                s += v
                s2 += v * v
            mean = s / acc(n)
            q = s2 - s * mean
            if q < zero:  # cancellation can make it negative; NaN stays NaN
                q = zero
            return mean, zero, q
        # SHIFTED around the middle of the range's first, middle and last values
        if fused:
            shift = acc(shift3(acc(x[0]) + a * acc(r[0]), acc(x[n // 2]) + a * acc(r[n // 2]),
                               acc(x[n - 1]) + a * acc(r[n - 1])))
        else:
            shift = acc(shift3(acc(x[0]), acc(x[n // 2]), acc(x[n - 1])))
        s = zero
        s2 = zero
        for i in range(lo, hi):
            v = acc(x[i]) + a * acc(r[i]) if fused else acc(x[i])
            d = v - shift
            s += d
            s2 += d * d
        q = s2 - s * (s / acc(n))
        if q < zero:
            q = zero
        return shift, s / acc(n), q

    @njit(**FAST)
    def range_sumsq(x, r, alpha, lo, hi):
        a = acc(alpha)
        s2 = acc(0.0)
        x = x[lo:hi]  # re-based views, as above
        r = r[lo:hi]
        for i in range(hi - lo):
            v = acc(x[i]) + a * acc(r[i]) if fused else acc(x[i])
            s2 += v * v
        return s2

    return range_moments, range_sumsq


range_moments_acc32, range_sumsq_acc32 = _make_range_moments(np.float32, False)
range_moments_acc64, range_sumsq_acc64 = _make_range_moments(np.float64, False)
_fused_moments_acc32, _fused_sumsq_acc32 = _make_range_moments(np.float32, True)
_fused_moments_acc64, _fused_sumsq_acc64 = _make_range_moments(np.float64, True)


@njit(**FAST)
def range_moments(x, lo, hi, algo, acc64):
    """(mean, m2) in float64 of the contiguous 1-D range ``x[lo:hi]`` with algorithm ``algo``."""
    if acc64:
        m, d, q = range_moments_acc64(x, x, 0.0, lo, hi, algo)
        return np.float64(m) + np.float64(d), np.float64(q)
    m, d, q = range_moments_acc32(x, x, 0.0, lo, hi, algo)
    return np.float64(m) + np.float64(d), np.float64(q)


#: MERGE_NOTE: summaries that Chan's formula merges (a channel's runs or row chunks, a group's columns) carry their
#: mean relative to a reference, one data value of the unit (``ref``), and the reference is added back once, after
#: the merges.  A mean rounded at the data's magnitude first (``K + s/n``: an error of half an ulp of the offset) puts
#: that error into every merge's ``delta``, which the ``delta**2`` term turns into an error of m2 relative to the
#: spread: float64 batch norm at an offset of 1e6 spreads had rstd 1e4-2e5 float64 units off the oracle from a single
#: merge; taken relative to ``ref`` (``(K - ref) + s/n``, the shift and the reference both data values) about 1, as
#: the CUDA kernels (which merge relative to their segment's shift).
@njit(**FAST)
def range_moments_about(x, lo, hi, algo, acc64, ref):
    """(mean - ref, m2) in float64 of ``x[lo:hi]``, the mean relative to ``ref`` (MERGE_NOTE)."""
    if acc64:
        m, d, q = range_moments_acc64(x, x, 0.0, lo, hi, algo)
    else:
        m, d, q = range_moments_acc32(x, x, 0.0, lo, hi, algo)
    return (np.float64(m) - ref) + np.float64(d), np.float64(q)


@njit(**FAST)
def row_stats(x, r, alpha, lo, hi, rms, algo, acc64, fused):
    """Statistics of the range ``lo:hi`` of ``x`` (of ``x + alpha * r`` when ``fused``), in float64:
    ``(mean, m2)`` for layer norm, ``(0, sum of squares)`` for RMS norm (``rms``; ``algo`` unused)."""
    if rms:
        if fused:
            q = _fused_sumsq_acc64(x, r, alpha, lo, hi) if acc64 else _fused_sumsq_acc32(x, r, alpha, lo, hi)
        else:
            q = range_sumsq_acc64(x, x, 0.0, lo, hi) if acc64 else range_sumsq_acc32(x, x, 0.0, lo, hi)
        return 0.0, np.float64(q)
    if fused:
        if acc64:
            m, d, q = _fused_moments_acc64(x, r, alpha, lo, hi, algo)
        else:
            m, d, q = _fused_moments_acc32(x, r, alpha, lo, hi, algo)
        return np.float64(m) + np.float64(d), np.float64(q)
    return range_moments(x, lo, hi, algo, acc64)


@njit(**JIT)
def chan_merge(na, mean_a, m2_a, nb, mean_b, m2_b):
    """Chan et al.'s pairwise merge of two (count, mean, m2) summaries, in float64.  Where a mean is Inf or NaN the
    merged mean is their IEEE sum (Inf with finite: that Inf; Inf with -Inf or NaN: NaN) and m2 is NaN, as the
    float64 reference's sum and its deviations from an infinite mean give (delta's Inf - Inf made the mean NaN)."""
    n = na + nb
    if nb == 0:
        return na, mean_a, m2_a
    if na == 0:
        return nb, mean_b, m2_b
    if not (abs(mean_a) < np.inf and abs(mean_b) < np.inf):  # an Inf or NaN mean: IEEE's sum decides (below)
        return n, mean_a + mean_b, np.nan
    delta = mean_b - mean_a
    fa = np.float64(na)
    fb = np.float64(nb)
    mean = mean_a + delta * (fb / (fa + fb))
    m2 = m2_a + m2_b + delta * delta * (fa * fb / (fa + fb))
    return n, mean, m2


def _make_column_moments(acc):
    @njit(**FAST)
    def column_moments(x, r0, r1, algo, fours, ref, mean_out, m2_out, work):
        """Per-column (mean - ref, m2) of rows ``r0:r1`` of the 2-D C-contiguous ``x`` (rows x C), vectorised over
        C: written to ``mean_out``/``m2_out`` (float64, length C); ``ref`` (float64, length C) the columns'
        references (MERGE_NOTE). ``work`` is a (3, C) scratch of ``acc``."""
        C = x.shape[1]
        n = r1 - r0
        x = x[r0:r1]  # re-based at a literal 0 row (see range_moments: no wraparound checks)
        r0 = 0
        r1 = n
        s = work[0]
        s2 = work[1]
        t = work[2]
        for c in range(C):
            s[c] = 0.0
            s2[c] = 0.0
        if n <= 0:
            for c in range(C):
                mean_out[c] = 0.0  # (no rows: nothing to merge)
                m2_out[c] = 0.0
            return
        if algo == TWO_PASS:
            for r in range(r0, r1):
                for c in range(C):
                    s[c] += acc(x[r, c])
            for c in range(C):
                t[c] = s[c] / acc(n)
            for r in range(r0, r1):
                for c in range(C):
                    d = acc(x[r, c]) - t[c]
                    s2[c] += d * d
            for c in range(C):
                mean_out[c] = np.float64(t[c]) - ref[c]
                m2_out[c] = s2[c]
            return
        if algo == WELFORD:
            count = 0
            for c in range(C):
                mean_out[c] = 0.0
                m2_out[c] = 0.0
            for b in range(r0, r1, BLOCK):
                e = min(b + BLOCK, r1)
                k = e - b
                for c in range(C):
                    s[c] = 0.0
                    s2[c] = 0.0
                for r in range(b, e):
                    for c in range(C):
                        s[c] += acc(x[r, c])
                for c in range(C):
                    t[c] = s[c] / acc(k)
                for r in range(b, e):
                    for c in range(C):
                        d = acc(x[r, c]) - t[c]
                        s2[c] += d * d
                tot = count + k
                fa = np.float64(count) / tot
                fb = np.float64(k) / tot
                for c in range(C):
                    tc = np.float64(t[c])
                    if abs(tc) < np.inf and abs(mean_out[c]) < np.inf:
                        delta = tc - mean_out[c]
                        mean_out[c] += delta * fb
                        m2_out[c] += np.float64(s2[c]) + delta * delta * (fa * k)
                    else:  # an Inf or NaN mean: IEEE's sum, m2 NaN (chan_merge's rule)
                        mean_out[c] += tc
                        m2_out[c] = np.nan
                count = tot
            for c in range(C):
                mean_out[c] -= ref[c]
            return
        if algo == NAIVE:
            for r in range(r0, r1):
                for c in range(C):
                    v = acc(x[r, c])
                    s[c] += v
                    s2[c] += v * v
            for c in range(C):
                m = s[c] / acc(n)
                q = s2[c] - s[c] * m
                if q < 0:
                    q = 0
                mean_out[c] = np.float64(m) - ref[c]
                m2_out[c] = q
            return
        # SHIFTED around the middle of the first, middle and last rows' values (shift3)
        for c in range(C):
            t[c] = acc(shift3(acc(x[r0, c]), acc(x[r0 + n // 2, c]), acc(x[r1 - 1, c])))
        r = 0
        while fours and r + 4 <= n:  # four rows per sweep: a quarter of the accumulator loads and stores (FOURS)
            for c in range(C):
                d0 = acc(x[r, c]) - t[c]
                d1 = acc(x[r + 1, c]) - t[c]
                d2 = acc(x[r + 2, c]) - t[c]
                d3 = acc(x[r + 3, c]) - t[c]
                s[c] += (d0 + d1) + (d2 + d3)
                s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            r += 4
        for r in range(r, n):
            for c in range(C):
                d = acc(x[r, c]) - t[c]
                s[c] += d
                s2[c] += d * d
        for c in range(C):
            q = s2[c] - s[c] * (s[c] / acc(n))
            if q < 0:
                q = 0
            mean_out[c] = (np.float64(t[c]) - ref[c]) + np.float64(s[c] / acc(n))
            m2_out[c] = q

    return column_moments


column_moments_acc32 = _make_column_moments(np.float32)
column_moments_acc64 = _make_column_moments(np.float64)


#: FOURS: the shifted column sweep takes four rows at a time (``fours``) where its rows come from cache, one where
#: they stream from memory (:func:`normbench.cpu._channel.from_cache` decides).  One core pair of the EPYC (Zen 4),
#: ns a value: 6 MiB in L3, fours 0.074-0.080 against ones 0.110-0.130; 98 MiB from memory with C >= 96, fours
#: 0.23-0.36 against ones 0.19-0.21 (C = 64: 0.14 against 0.18).  The Xeon's L3 held every working set; fours were
#: chosen there.  The sums are the same sums in another order (last bits).


@njit(**FAST)
def column_moments(x, r0, r1, algo, acc64, fours, ref, mean_out, m2_out, work32, work64):
    """Per-column (mean - ref, m2) of rows ``r0:r1`` of ``x`` (MERGE_NOTE) with the accumulator chosen at run
    time: ``work32`` and ``work64`` are (3, C) float32 / float64 scratch arrays (only the chosen one is touched);
    ``fours``: see FOURS."""
    if acc64:
        column_moments_acc64(x, r0, r1, algo, fours, ref, mean_out, m2_out, work64)
    else:
        column_moments_acc32(x, r0, r1, algo, fours, ref, mean_out, m2_out, work32)


@njit(**JIT)
def rstd_from_m2(m2, n, correction, eps, eps_code):
    """1/sqrt(var + eps) (eps_code 0) or 1/(sqrt(var) + eps) (1), var = m2/(n - correction), in float64."""
    var = m2 / np.float64(n - correction)
    if eps_code == 0:
        return 1.0 / np.sqrt(var + eps)
    return 1.0 / (np.sqrt(var) + eps)
