"""Numba kernels shared by the channel-statistics norms (batch, group, instance, frozen batch norm).

Two memory layouts cover every case, so each pass is written once:

* **Units of runs** (channels-first). Statistic unit ``u`` owns ``nr`` runs of ``L`` contiguous values, run ``k``
  starting at ``u*L + k*run_stride``; a run is ``Cg`` sub-runs of ``S`` values of channel ``(u % G)*Cg + j``.
  Batch norm ``(N, C, S)``: U=C, nr=N, L=S, run_stride=C*S, Cg=1, G=C.  Group norm ``(N, G, Cg, S)``: U=N*G,
  nr=1, L=Cg*S.  Instance norm: group norm with G=C.
  ``*_fused`` kernels run one unit per ``prange`` iteration: statistics, then the outputs while the unit's data
  is cache-resident (x and dy read from memory once); with the default statistics the forward, and always
  the backward, are software-pipelined (the next block's reduction runs in the sweep that writes this
  block, so memory reads and writes overlap as in a copy).  ``*_split`` kernels (fewer units than threads) spread
  the sub-runs over the threads, merge the per-sub-run moments/sums, then write the outputs.
* **Blocks of columns** (channels-last). ``x`` viewed as ``(B, R, C)``; statistics per (block, group of ``Cg``
  adjacent columns); per-column affine vectors. Batch norm ``(N, *sp, C)``: B=1, R=N*S, Cg=1.  Group norm:
  B=N, R=S, Cg=C/G.  Batch norm ``(N, C, S)`` with small S: B=1, R=N, C*S columns, Cg=S (slabs too short to
  be worth a range reduction each).  Vectorised over the columns with per-task partial buffers merged with
  Chan's formula; ``cl_forward_fused``/``*_pipelined``/``cl_backward_eval`` run whole blocks (B >= threads: one
  per iteration, or a run of them per thread, pipelined where WIDE_L1D), ``*_split`` cuts the rows of each
  block into ``P`` chunks (statistics, merge, then outputs: x is read twice, the 2/3 and 3/5 limits).

Some loop shapes were faster on one machine and slower on another (the Xeon they were tuned on, an EPYC Zen 4):
those choices are made per call from the cache sizes (WIDE_L1D, from_cache, FOURS in :mod:`._moments`).

Outputs are computed in float64 from float64 statistics ((x - mean) * scale + shift, never a folded
x*scale + shift in the storage dtype on training paths, which loses the offset-data accuracy; float32 data in the
channels-last write sweeps take it folded in float64: FOLD_NOTE).  Backward
reductions are float64 whatever ``accumulate`` says (``accumulate`` governs the statistics of the forward).
Large outputs (y, dx) are written with streaming stores (:mod:`._stream`) where every run (channels-first: S
values) or row (channels-last: ``cols`` values) starts on a 64-byte line, decided per call by :func:`_nt`; the
loops are then the same loops with another store instruction, so results do not depend on it.
Options arrive as runtime integer codes; kernels compile once per input dtype.  Inputs below ``PARALLEL_MIN``
values run serial twins of the kernels (no thread-pool wake-up).
"""
from __future__ import annotations

import types
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from .. import machine
from . import _stream
from ._moments import FAST, JIT, SHIFTED, chan_merge, column_moments, range_moments_about, rstd_from_m2, shift3
from ._stream import _put

_PAR = dict(FAST, parallel=True)
_SEQ = FAST


# ----------------------------------------------------------------------------------------------- helpers
@njit(**JIT)  # no fastmath: the order of the products below is what keeps them in range
def _coeffs(tdy, tdyxc, r, n, correction, eps, eps_code):
    """Training backward of one unit: ``(mean(dxhat), k)`` with ``dx = r*(dxhat - mean(dxhat)) + k*xc``,
    given ``tdy = sum(dxhat)`` and ``tdyxc = sum(dxhat*xc)``; k = r'(var) * 2/(n - c) * sum(dxhat*xc)."""
    mdx = tdy / n
    if eps_code == 0:
        k = -(tdyxc / (n - correction)) * r * r * r  # r^3 alone underflows where std > 1e103 (see _dx_coefficients)
    else:
        sd = 1.0 / r - eps  # sqrt(var); where var = 0 the derivative does not exist: the term is taken as 0
        k = -(tdyxc / (sd * (n - correction))) * r * r if sd > 0 else 0.0 * r  # NaN where r = inf (eps = 0)
    return mdx, k


# Output formulas, written once for both store kinds.  Loops that may stream store through ``_put(a, i, v, nt)``
# (:mod:`._stream`), with ``nt`` a compile-time literal: the kernels called from Python get it as a run-time
# int and pass it on as ``if nt: f(..., True) else: f(..., False)``, so each helper below is compiled once per
# store kind (a store chosen at run time inside a loop can be merged by LLVM into one store carrying the
# streaming store's alignment).  They stream only where every segment they write starts on a 64-byte boundary
# and runs from index 0 of a view starting there.
@njit(inline="always", **_SEQ)
def _yv(x, mean, scale, shift):
    return (x - mean) * scale + shift


@njit(inline="always", **_SEQ)
def _dxv(dy, x, w, r, mdx, k, mean):
    return r * (w * dy - mdx) + k * (x - mean)


# Loops index views re-based at a literal 0: LLVM then proves indices non-negative and drops Numba's
# negative-index wraparound, which otherwise blocks vectorisation (measured 5-7x slower).
@njit(**_SEQ)
def _normalize_range(xf, yf, lo, hi, mean, scale, shift, nt):
    """y = (x - mean) * scale + shift on ``lo:hi``; ``nt`` at run time (the literal dispatch is made here once)."""
    if nt:
        _normalize_loop(xf, yf, lo, hi, mean, scale, shift, True)
    else:
        _normalize_loop(xf, yf, lo, hi, mean, scale, shift, False)


@njit(**_SEQ)
def _normalize_loop(xf, yf, lo, hi, mean, scale, shift, nt):
    x = xf[lo:hi]
    y = yf[lo:hi]
    for i in range(0, hi - lo):
        _put(y, i, _yv(x[i], mean, scale, shift), nt)


@njit(**_SEQ)
def _sums_range(dyf, xf, lo, hi, mean):
    """(sum(dy), sum(dy*(x - mean))) over ``lo:hi``, float64."""
    x = xf[lo:hi]
    dy = dyf[lo:hi]
    a = 0.0
    c = 0.0
    for i in range(0, hi - lo):
        g = np.float64(dy[i])
        a += g
        c += g * (x[i] - mean)
    return a, c


@njit(**_SEQ)
def _dx_range(dyf, xf, dxf, lo, hi, w, r, mdx, k, mean, train, nt):
    """dx = r*(w*dy - mdx) + k*(x - mean) (training) or r*(w*dy) (running statistics are constants).
    dxhat - mean(dxhat) is formed before scaling by r: exact w*dy for float32 data, and exactly 0 where it
    should be (one value per group)."""
    x = xf[lo:hi]
    dy = dyf[lo:hi]
    dx = dxf[lo:hi]
    if train:
        for i in range(0, hi - lo):
            _put(dx, i, _dxv(dy[i], x[i], w, r, mdx, k, mean), nt)
    else:
        for i in range(0, hi - lo):
            _put(dx, i, r * (w * dy[i]), nt)


@njit(**_SEQ)
def _subrun(t, nr, L, run_stride, S, Cg):
    """(unit, sub-channel j, start) of sub-run task ``t`` (tasks ordered unit, run, sub-channel)."""
    per = nr * Cg
    u = t // per
    rem = t - u * per
    k = rem // Cg
    j = rem - k * Cg
    return u, j, u * L + k * run_stride + j * S


# ------------------------------------------------------------------------------- units of runs (channels-first)
@njit(inline="always", **_SEQ)
def _run_ref(xf, lo, n):
    """A unit's reference for its merges (MERGE_NOTE): the shift of the shifted sums over ``xf[lo:lo+n]``, as
    range_moments takes it (so a unit of one run merges nothing and keeps its digits as before); 0 if empty."""
    if n <= 0:
        return 0.0
    return shift3(np.float64(xf[lo]), np.float64(xf[lo + n // 2]), np.float64(xf[lo + n - 1]))


@njit(**_SEQ)
def _block_stats(xf, u0, u1, nr, L, run_stride, algo, acc64, n, correction, eps, eps_code, mean_out, m2_out,
                 rstd_out):
    """Statistics of units u0:u1, run by run (see :func:`cf_forward_fused`), merged relative to each unit's
    first run's shift (MERGE_NOTE)."""
    B = u1 - u0
    cnt = np.zeros(B, np.int64)
    mean = np.zeros(B)
    m2 = np.zeros(B)
    ref = np.zeros(B)
    for u in range(u0, u1):
        ref[u - u0] = _run_ref(xf, u * L, L) if nr > 0 else 0.0
    for k in range(nr):
        for u in range(u0, u1):
            lo = u * L + k * run_stride
            m, q = range_moments_about(xf, lo, lo + L, algo, acc64, ref[u - u0])
            c1, m1, q1 = chan_merge(cnt[u - u0], mean[u - u0], m2[u - u0], L, m, q)
            cnt[u - u0] = c1
            mean[u - u0] = m1
            m2[u - u0] = q1
    for u in range(u0, u1):
        mean_out[u] = ref[u - u0] + mean[u - u0]
        m2_out[u] = m2[u - u0]
        rstd_out[u] = rstd_from_m2(m2[u - u0], n, correction, eps, eps_code)


@njit(**_PAR)
def cf_forward_fused(xf, yf, U, nr, L, run_stride, S, Cg, G, w, b, algo, acc64, correction, eps, eps_code,
                     mean_out, m2_out, rstd_out, write_y, nt, CB):
    """One block of ``CB`` consecutive units per iteration, visited run by run (k outer) so that memory is
    read in streams of CB*L values (short strided runs starve the hardware prefetcher: measured 2x slower)."""
    n = nr * L
    for blk in prange((U + CB - 1) // CB):
        u0 = blk * CB
        u1 = min(u0 + CB, U)
        _block_stats(xf, u0, u1, nr, L, run_stride, algo, acc64, n, correction, eps, eps_code, mean_out, m2_out,
                     rstd_out)
        if write_y:  # the block's data is still in cache
            for k in range(nr):
                for u in range(u0, u1):
                    ch0 = (u % G) * Cg
                    r = rstd_out[u]
                    for j in range(Cg):
                        s0 = u * L + k * run_stride + j * S
                        sc = r * w[ch0 + j]
                        sh = np.float64(b[ch0 + j])
                        _normalize_range(xf, yf, s0, s0 + S, mean_out[u], sc, sh, nt)


@njit(**_SEQ)
def _shifted_normalize(xf, yf, nlo, clo, n, K, s, s2, mean, scale, shift, nt):
    """One sweep: the SHIFTED sums of ``_moments.range_moments`` (float64 accumulator) of ``x[nlo:nlo+n]``
    around ``K``, added to ``s``/``s2``, and ``y = (x - mean) * scale + shift`` on ``clo:clo+n``."""
    xn = xf[nlo:nlo + n]
    xc = xf[clo:clo + n]
    yc = yf[clo:clo + n]
    for i in range(0, n):
        d = np.float64(xn[i]) - K
        s += d
        s2 += d * d
        _put(yc, i, _yv(xc[i], mean, scale, shift), nt)
    return s, s2


@njit(**_PAR)
def cf_forward_pipelined(xf, yf, U, nr, L, run_stride, S, Cg, G, w, b, correction, eps, eps_code, mean_out, m2_out,
                         rstd_out, nt, CB, T):
    """:func:`cf_forward_fused` for the default statistics (SHIFTED, float64 accumulator), software-pipelined:
    each of ``T`` tasks owns a contiguous range of blocks of ``CB`` units and computes block b+1's statistics in
    the sweep that writes block b's outputs, so memory reads and writes overlap as in a copy (measured 79% ->
    ~100% of copy on group norm (64, 128, 56, 56) channels-first)."""
    n = nr * L
    nb = (U + CB - 1) // CB
    for t in prange(T):
        b0 = t * nb // T
        b1 = (t + 1) * nb // T
        if b1 > b0:
            _block_stats(xf, b0 * CB, min(b0 * CB + CB, U), nr, L, run_stride, SHIFTED, 1, n, correction, eps,
                         eps_code, mean_out, m2_out, rstd_out)
        cnt = np.zeros(CB, np.int64)
        mean = np.zeros(CB)
        m2 = np.zeros(CB)
        ref = np.zeros(CB)  # the next block's units' references: their first run's shift (MERGE_NOTE)
        for blk in range(b0, b1):
            u0 = blk * CB
            u1 = min(u0 + CB, U)
            v1 = min(u1 + CB, U) if blk + 1 < b1 else u1  # the next block's units: u1:v1 (none at the end)
            for i in range(CB):
                cnt[i] = 0
                mean[i] = 0.0
                m2[i] = 0.0
            for k in range(nr):
                for u in range(u0, u1):
                    ch0 = (u % G) * Cg
                    r = rstd_out[u]
                    mu = mean_out[u]
                    if u + CB < v1:
                        lo = u * L + k * run_stride
                        o = lo + CB * L  # the next block's run: its shift as range_moments takes it
                        K = shift3(np.float64(xf[o]), np.float64(xf[o + L // 2]), np.float64(xf[o + L - 1]))
                        if k == 0:
                            ref[u - u0] = K
                        s = 0.0
                        s2 = 0.0
                        for j in range(Cg):
                            s0 = lo + j * S
                            sc = r * w[ch0 + j]
                            sh = np.float64(b[ch0 + j])
                            if nt:  # a literal each way (see the note above _yv)
                                s, s2 = _shifted_normalize(xf, yf, s0 + CB * L, s0, S, K, s, s2, mu, sc, sh, True)
                            else:
                                s, s2 = _shifted_normalize(xf, yf, s0 + CB * L, s0, S, K, s, s2, mu, sc, sh, False)
                        q = s2 - s * (s / L)
                        if q < 0:  # NaN stays NaN
                            q = 0.0
                        c1, m1, q1 = chan_merge(cnt[u - u0], mean[u - u0], m2[u - u0], L,
                                                (K - ref[u - u0]) + s / L, q)
                        cnt[u - u0] = c1
                        mean[u - u0] = m1
                        m2[u - u0] = q1
                    else:
                        for j in range(Cg):
                            s0 = u * L + k * run_stride + j * S
                            sc = r * w[ch0 + j]
                            sh = np.float64(b[ch0 + j])
                            _normalize_range(xf, yf, s0, s0 + S, mu, sc, sh, nt)
            for v in range(u1, v1):
                mean_out[v] = ref[v - u1] + mean[v - u1]
                m2_out[v] = m2[v - u1]
                rstd_out[v] = rstd_from_m2(m2[v - u1], n, correction, eps, eps_code)


@njit(**_PAR)
def cf_forward_split(xf, yf, U, nr, L, run_stride, S, Cg, G, w, b, algo, acc64, correction, eps, eps_code,
                     mean_out, m2_out, rstd_out, write_y, nt):
    n = nr * L
    T = U * nr * Cg
    tm = np.empty(T)
    tq = np.empty(T)
    ref = np.empty(U)  # each unit's first sub-run's shift (MERGE_NOTE)
    for u in range(U):
        ref[u] = _run_ref(xf, u * L, S) if nr > 0 else 0.0
    for t in prange(T):
        u, j, s0 = _subrun(t, nr, L, run_stride, S, Cg)
        m, q = range_moments_about(xf, s0, s0 + S, algo, acc64, ref[u])
        tm[t] = m
        tq[t] = q
    for u in range(U):
        cnt = 0
        mean = 0.0
        m2 = 0.0
        for t in range(u * nr * Cg, (u + 1) * nr * Cg):
            cnt, mean, m2 = chan_merge(cnt, mean, m2, S, tm[t], tq[t])
        mean_out[u] = ref[u] + mean
        m2_out[u] = m2
        rstd_out[u] = rstd_from_m2(m2, n, correction, eps, eps_code)
    if write_y:
        for t in prange(T):
            u, j, s0 = _subrun(t, nr, L, run_stride, S, Cg)
            ch = (u % G) * Cg + j
            sc = rstd_out[u] * w[ch]
            sh = np.float64(b[ch])
            _normalize_range(xf, yf, s0, s0 + S, mean_out[u], sc, sh, nt)


@njit(**_SEQ)
def _block_sums(dyf, xf, u0, u1, nr, L, run_stride, S, Cg, mean, sdy, sdyxc):
    """Per (unit, sub-channel) sum(dy) and sum(dy*xc) of units u0:u1 into ``sdy``/``sdyxc``, run by run."""
    for u in range(u0, u1):
        for j in range(Cg):
            sdy[u, j] = 0.0
            sdyxc[u, j] = 0.0
    for k in range(nr):
        for u in range(u0, u1):
            for j in range(Cg):
                s0 = u * L + k * run_stride + j * S
                a1, c1 = _sums_range(dyf, xf, s0, s0 + S, mean[u])
                sdy[u, j] += a1
                sdyxc[u, j] += c1


@njit(**_SEQ)
def _sums_dx_range(dyf, xf, dxf, nlo, clo, n, nmean, w, r, mdx, k, mean, train, nt):
    """One sweep: :func:`_sums_range` of ``nlo:nlo+n`` (around ``nmean``) and :func:`_dx_range` of ``clo:clo+n``."""
    dyn = dyf[nlo:nlo + n]
    xn = xf[nlo:nlo + n]
    dyc = dyf[clo:clo + n]
    xc = xf[clo:clo + n]
    dx = dxf[clo:clo + n]
    a = 0.0
    c = 0.0
    if train:
        for i in range(0, n):
            g = np.float64(dyn[i])
            a += g
            c += g * (xn[i] - nmean)
            _put(dx, i, _dxv(dyc[i], xc[i], w, r, mdx, k, mean), nt)
    else:
        for i in range(0, n):
            g = np.float64(dyn[i])
            a += g
            c += g * (xn[i] - nmean)
            _put(dx, i, r * (w * dyc[i]), nt)
    return a, c


@njit(**_PAR)
def cf_backward_fused(dyf, xf, dxf, U, nr, L, run_stride, S, Cg, G, w, mean, rstd, train, correction, eps,
                      eps_code, sdy, sdyxc, nt, CB, T):
    """dx, and per (unit, sub-channel) sum(dy) and sum(dy*xc) into ``sdy``/``sdyxc`` (U, Cg) for dweight/dbias.
    Blocks of CB units, run by run, as :func:`cf_forward_fused`, software-pipelined as
    :func:`cf_forward_pipelined`: each of ``T`` tasks owns a contiguous range of blocks and sums block b+1 in
    the sweep that writes block b's dx."""
    n = nr * L
    nb = (U + CB - 1) // CB
    for t in prange(T):
        b0 = t * nb // T
        b1 = (t + 1) * nb // T
        if b1 > b0:
            _block_sums(dyf, xf, b0 * CB, min(b0 * CB + CB, U), nr, L, run_stride, S, Cg, mean, sdy, sdyxc)
        mdx = np.empty(CB)
        kk = np.empty(CB)
        for blk in range(b0, b1):
            u0 = blk * CB
            u1 = min(u0 + CB, U)
            v1 = min(u1 + CB, U) if blk + 1 < b1 else u1  # the next block's units: u1:v1 (none at the end)
            for u in range(u0, u1):
                ch0 = (u % G) * Cg
                tdy = 0.0
                tdyxc = 0.0
                for j in range(Cg):
                    tdy += w[ch0 + j] * sdy[u, j]
                    tdyxc += w[ch0 + j] * sdyxc[u, j]
                m1, k1 = _coeffs(tdy, tdyxc, rstd[u], n, correction, eps, eps_code)
                mdx[u - u0] = m1
                kk[u - u0] = k1
            for v in range(u1, v1):
                for j in range(Cg):
                    sdy[v, j] = 0.0
                    sdyxc[v, j] = 0.0
            for k in range(nr):
                for u in range(u0, u1):
                    ch0 = (u % G) * Cg
                    r = rstd[u]
                    m = mean[u]
                    md = mdx[u - u0]
                    ku = kk[u - u0]
                    for j in range(Cg):
                        s0 = u * L + k * run_stride + j * S
                        wj = w[ch0 + j]
                        if u + CB < v1:
                            nm = mean[u + CB]
                            if nt:  # a literal each way (see the note above _yv)
                                a1, c1 = _sums_dx_range(dyf, xf, dxf, s0 + CB * L, s0, S, nm, wj, r, md, ku, m, train,
                                                        True)
                            else:
                                a1, c1 = _sums_dx_range(dyf, xf, dxf, s0 + CB * L, s0, S, nm, wj, r, md, ku, m, train,
                                                        False)
                            sdy[u + CB, j] += a1
                            sdyxc[u + CB, j] += c1
                        elif nt:
                            _dx_range(dyf, xf, dxf, s0, s0 + S, wj, r, md, ku, m, train, True)
                        else:
                            _dx_range(dyf, xf, dxf, s0, s0 + S, wj, r, md, ku, m, train, False)


@njit(**_PAR)
def cf_backward_split(dyf, xf, dxf, U, nr, L, run_stride, S, Cg, G, w, mean, rstd, train, correction, eps,
                      eps_code, sdy, sdyxc, nt):
    n = nr * L
    T = U * nr * Cg
    ta = np.empty(T)
    tc = np.empty(T)
    for t in prange(T):
        u, j, s0 = _subrun(t, nr, L, run_stride, S, Cg)
        a1, c1 = _sums_range(dyf, xf, s0, s0 + S, mean[u])
        ta[t] = a1
        tc[t] = c1
    mdx = np.empty(U)
    kk = np.empty(U)
    for u in range(U):
        ch0 = (u % G) * Cg
        for j in range(Cg):
            sdy[u, j] = 0.0
            sdyxc[u, j] = 0.0
        for t in range(u * nr * Cg, (u + 1) * nr * Cg):
            j = (t - u * nr * Cg) % Cg
            sdy[u, j] += ta[t]
            sdyxc[u, j] += tc[t]
        tdy = 0.0
        tdyxc = 0.0
        for j in range(Cg):
            tdy += w[ch0 + j] * sdy[u, j]
            tdyxc += w[ch0 + j] * sdyxc[u, j]
        m1, k1 = _coeffs(tdy, tdyxc, rstd[u], n, correction, eps, eps_code)
        mdx[u] = m1
        kk[u] = k1
    for t in prange(T):
        u, j, s0 = _subrun(t, nr, L, run_stride, S, Cg)
        wj = w[(u % G) * Cg + j]
        if nt:  # a literal each way (see the note above _yv)
            _dx_range(dyf, xf, dxf, s0, s0 + S, wj, rstd[u], mdx[u], kk[u], mean[u], train, True)
        else:
            _dx_range(dyf, xf, dxf, s0, s0 + S, wj, rstd[u], mdx[u], kk[u], mean[u], train, False)


# --------------------------------------------------------------------------- blocks of columns (channels-last)
@njit(**_SEQ)
def _group_refs(x2, Cg, gref, cref):
    """Each group's reference for its merges (MERGE_NOTE): the shift of its first column over the block's rows, as
    column_moments takes it (a group of one column over one chunk merges nothing and keeps its digits as before),
    in ``gref``; repeated for each of the group's columns in ``cref``."""
    R = x2.shape[0]
    for g in range(gref.shape[0]):
        c = g * Cg
        gref[g] = 0.0 if R == 0 else shift3(np.float64(x2[0, c]), np.float64(x2[R // 2, c]), np.float64(x2[R - 1, c]))
    _expand(gref, Cg, cref)


@njit(**_SEQ)
def _group_stats(cm, cq, rows, Cg, correction, eps, eps_code, gref, gmean, gm2, grstd):
    """Merge per-column moments of ``rows`` rows, their means relative to their group's ``gref``, into per-group
    moments (groups of Cg adjacent columns; the reference added back once: MERGE_NOTE)."""
    n = rows * Cg
    for g in range(gmean.shape[0]):
        cnt = 0
        mean = 0.0
        m2 = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            cnt, mean, m2 = chan_merge(cnt, mean, m2, rows, cm[c], cq[c])
        gmean[g] = gref[g] + mean
        gm2[g] = m2
        grstd[g] = rstd_from_m2(m2, n, correction, eps, eps_code)


@njit(**_SEQ)
def _fold(gmean, grstd, gm2, Cg, w, b, mc, sc, sh, folded):
    """Per-column mean, scale and shift of ``y = (x - mean) * scale + shift``; ``folded`` (float32 data): the
    scale and shift of ``y = x * scale + shift`` instead (FOLD_NOTE)."""
    for c in range(mc.shape[0]):
        g = c // Cg
        mc[c] = gmean[g]
        sc[c] = grstd[g] * w[c]
        sh[c] = b[c]
        if folded:
            if gm2[g] == 0.0 and abs(sc[c]) < np.inf:  # a constant group: y = shift exactly (with an infinite
                sc[c] = 0.0                                # rstd, eps = 0, 0*inf stays NaN as unfolded)
            sh[c] = np.float64(b[c]) - gmean[g] * sc[c]


@njit(**_SEQ)
def _normalize_rows(x2, y2, r0, r1, mc, sc, sh, nt, gang, folded):
    """Rows r0:r1 of y, per-column coefficients (``folded``: see :func:`_yt`); ``nt`` at run time (the literal
    dispatch is made here once)."""
    if nt:
        _normalize_rows_loop(x2, y2, r0, r1, mc, sc, sh, True, gang, folded)
    else:
        _normalize_rows_loop(x2, y2, r0, r1, mc, sc, sh, False, gang, folded)


#: values per tile of rows in the channels-last output loops: per-column coefficient vectors are repeated this
#: long so that short rows (C = 64: 64 values) run as one long vectorised loop per tile instead of one short
#: loop per row (GN (8,56,56,64) forward's write sweep, one core: 53 -> 45 us a block; 10 to 20% on the
#: backward's); results are the same to the bit (the same formula per value).  The backward's loops, which read
#: five or more tiled float64 vectors, take half tiles (:data:`HALF_TILE`).
TILE = 1024
#: tiles of the loops reading five or more tiled vectors (dx: w, rstd, mean, mean(dxhat), k), which full tiles
#: (40 KiB and more) put out of a 32 KiB L1d: the EPYC's (Zen 4) dx sweep over (200704, 128) rows ran at 0.82 ns
#: a value from memory on one core with 8-row tiles, 0.46-0.53 with 2-4 rows (512 values: 4)
HALF_TILE = TILE // 2


@njit(**_SEQ)
def _tile_rows(C, tile):
    """Rows per tile of ``tile`` values for rows of C values: at least one."""
    return max(1, tile // C)


@njit(**_SEQ)
def _tiled(v, K):
    """``v`` repeated K times (the per-column coefficients of K consecutive rows, flattened)."""
    C = v.shape[0]
    t = np.empty(K * C)
    for r in range(K):
        for c in range(C):
            t[r * C + c] = v[c]
    return t


#: tiles of rows taken together by the channels-last forward's tiled loops (the pipelined kernel's shifted sums and
#: the loops writing y; the other statistics go through column_moments): each per-column vector (tiled coefficients,
#: shifts, accumulators) is loaded, and each accumulator stored, once for GANG tiles.  One core, a GN (8,56,56,64)
#: block (3136 x 64): the shifted sums 60 -> 41 us from cache and 130 -> 65 us from memory, the pipelined
#: write-and-sum sweep 158-180 -> 126-132 us and 290 -> 176-189 us (the accumulators' load/add/store bounded
#: them).  y is the same to the bit; the sums add four tiles' terms, then the accumulator.  (The backward's
#: gradient sums ganged the same way measured no faster on whole calls, so they keep one tile at a time.)
GANG = 4


@njit(inline="always", **_SEQ)
def _gang(a, o, m):
    """The GANG (= 4) consecutive length-m views of ``a`` from ``o``."""
    return a[o:o + m], a[o + m:o + 2 * m], a[o + 2 * m:o + 3 * m], a[o + 3 * m:o + 4 * m]


@njit(inline="always", **_SEQ)
def _put_y4(xs, ys, i, tm, ts, th, nt, folded):
    """Position i of four tiles of y (views in ``ys``) from the same positions of ``xs``, one set of coefficients."""
    x0, x1, x2, x3 = xs
    y0, y1, y2, y3 = ys
    _put(y0, i, _yt(x0[i], i, tm, ts, th, folded), nt)
    _put(y1, i, _yt(x1[i], i, tm, ts, th, folded), nt)
    _put(y2, i, _yt(x2[i], i, tm, ts, th, folded), nt)
    _put(y3, i, _yt(x3[i], i, tm, ts, th, folded), nt)


# FOLD_NOTE: float32 data take the folded ``y = x*scale + (shift - mean*scale)`` in the channels-last write sweeps,
# as evaluation does (apply_affine): in float64 its error is about offset/spread * 4e-9 float32 units (0.004 at an
# offset of 1e6 spreads), and it reads two tiled coefficient vectors a value instead of three: the EPYC's sweep over
# group norm (8, 56, 56, 64) from cache, two threads, 174 -> 137 us.  Float64 data keep the subtraction (the folded
# form loses log10(offset/spread) of their digits).  A constant group (m2 = 0) is folded to scale 0: its y is its
# shift exactly, as in the unfolded form (x*scale - mean*scale, contracted into one multiply-add, left the product's
# rounding error: 1e-13 where y is 0).
@njit(inline="always", **_SEQ)
def _yt(xv, i, tm, ts, th, folded):
    """y of the value ``xv`` at tile position i: ``(x - tm)*ts + th``, or ``x*ts + th`` when ``folded``."""
    if folded:
        return xv * ts[i] + th[i]
    return _yv(xv, tm[i], ts[i], th[i])


@njit(inline="always", **_SEQ)
def _add_sums4(vs, i, tt, ss, ss2):
    """Adds position i of four tiles (views in ``vs``), less the shift, to the shifted sums ss/ss2 at i."""
    v0, v1, v2, v3 = vs
    t = tt[i]
    d0 = np.float64(v0[i]) - t
    d1 = np.float64(v1[i]) - t
    d2 = np.float64(v2[i]) - t
    d3 = np.float64(v3[i]) - t
    ss[i] += (d0 + d1) + (d2 + d3)
    ss2[i] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)


@njit(inline="always", **_SEQ)
def _add_sums1(v, i, tt, ss, ss2):
    d = np.float64(v[i]) - tt[i]
    ss[i] += d
    ss2[i] += d * d


@njit(**_SEQ)
def _normalize_rows_loop(x2, y2, r0, r1, mc, sc, sh, nt, gang, folded):
    C = x2.shape[1]
    K = _tile_rows(C, TILE if gang else HALF_TILE)
    tm, ts, th = _tiled(mc, K), _tiled(sc, K), _tiled(sh, K)
    xf = x2[r0:r1].reshape(-1)
    yf = y2[r0:r1].reshape(-1)
    n = r1 - r0
    m = K * C
    g = n - n % (GANG * K) if gang else 0  # rows in whole gangs of tiles
    for r in range(0, g, GANG * K):  # 1-D views of K rows: 2-D indexing measured 10% slower writing to memory
        xs, ys = _gang(xf, r * C, m), _gang(yf, r * C, m)
        for i in range(0, m):
            _put_y4(xs, ys, i, tm, ts, th, nt, folded)
    for r in range(g, n, K):
        mr = min(K, n - r) * C
        x = xf[r * C:r * C + mr]
        y = yf[r * C:r * C + mr]
        for i in range(0, mr):
            _put(y, i, _yt(x[i], i, tm, ts, th, folded), nt)


@njit(**_PAR)
def cl_forward_fused(x3, y3, Cg, w, b, algo, acc64, fours, correction, eps, eps_code, gmean, gm2, grstd, write_y,
                     nt, gang, folded):
    B, R, C = x3.shape
    for bb in prange(B):
        cm = np.empty(C)
        cq = np.empty(C)
        gref = np.empty(gmean.shape[1])
        cref = np.empty(C)
        _group_refs(x3[bb], Cg, gref, cref)
        _column_stats(x3[bb], 0, R, algo, acc64, fours, cref, cm, cq)
        _group_stats(cm, cq, R, Cg, correction, eps, eps_code, gref, gmean[bb], gm2[bb], grstd[bb])
        if write_y:
            sc = np.empty(C)
            sh = np.empty(C)
            _fold(gmean[bb], grstd[bb], gm2[bb], Cg, w, b, cm, sc, sh, folded)
            _normalize_rows(x3[bb], y3[bb], 0, R, cm, sc, sh, nt, gang, folded)


@njit(**_SEQ)
def _start_sums(xn, K, tt, ss, ss2):
    """The shift (per column, as column_moments takes it: :func:`shift3` of the block's first, middle and last rows;
    repeated K times) and zeroed accumulators of :func:`_tiled_sums`."""
    R, C = xn.shape
    for c in range(C):  # once per column, then repeated: the median of three is branchy scalar work
        tt[c] = shift3(np.float64(xn[0, c]), np.float64(xn[R // 2, c]), np.float64(xn[R - 1, c]))
    for i in range(C, K * C):
        tt[i] = tt[i - C]
    for i in range(K * C):
        ss[i] = 0.0
        ss2[i] = 0.0


@njit(**_SEQ)
def _tiled_sums(xn, K, tt, ss, ss2):
    """Shifted column sums of the block ``xn`` (R x C) in K-row tiles of accumulators (as the output loops'
    tiles): ``tt`` the block's first row repeated K times (the shift), ``ss``/``ss2`` the sums of ``x - shift``
    and of its square over the rows r = k (mod K), position k*C + c (GANG tiles added at a time)."""
    R, C = xn.shape
    _start_sums(xn, K, tt, ss, ss2)
    xf = xn.reshape(-1)
    m = K * C
    g = R - R % (GANG * K)
    for r in range(0, g, GANG * K):
        vs = _gang(xf, r * C, m)
        for i in range(0, m):
            _add_sums4(vs, i, tt, ss, ss2)
    for r in range(g, R, K):
        mr = min(K, R - r) * C
        v = xf[r * C:r * C + mr]
        for i in range(0, mr):
            _add_sums1(v, i, tt, ss, ss2)


@njit(**_SEQ)
def _untile(ta, tc, sdy, sdyxc):
    """Per-column totals of K-row tiles of accumulators."""
    C = sdy.shape[0]
    for c in range(C):
        a = 0.0
        q = 0.0
        for i in range(c, ta.shape[0], C):
            a += ta[i]
            q += tc[i]
        sdy[c] = a
        sdyxc[c] = q


@njit(**_SEQ)
def _tiled_moments(tt, ss, ss2, R, cref, cm, cq):
    """Per-column (mean - cref, m2) of R rows from :func:`_tiled_sums`' accumulators (the shifted one-pass formula,
    m2 clamped at 0 as column_moments does; MERGE_NOTE)."""
    _untile(ss, ss2, cm, cq)  # the column totals, then the moments in place
    for c in range(cm.shape[0]):
        a = cm[c]
        q = cq[c] - a * (a / R)
        cm[c] = (tt[c] - cref[c]) + a / R
        cq[c] = 0.0 if q < 0.0 else q  # NaN stays NaN


@njit(**_SEQ)
def _normalize_and_sum(x2, y2, xn, K, tm, ts, th, tt, ss, ss2, nt, folded):
    """One sweep over two blocks: y2 from x2 (its rows from cache, per-column coefficients tiled as in
    :func:`_normalize_rows_loop`) and :func:`_tiled_sums` of the next block ``xn`` (from memory)."""
    R, C = x2.shape
    _start_sums(xn, K, tt, ss, ss2)
    xf = x2.reshape(-1)
    yf = y2.reshape(-1)
    nf = xn.reshape(-1)
    m = K * C
    g = R - R % (GANG * K)
    for r in range(0, g, GANG * K):
        xs, ys, vs = _gang(xf, r * C, m), _gang(yf, r * C, m), _gang(nf, r * C, m)
        for i in range(0, m):
            _put_y4(xs, ys, i, tm, ts, th, nt, folded)
            _add_sums4(vs, i, tt, ss, ss2)
    for r in range(g, R, K):
        mr = min(K, R - r) * C
        x = xf[r * C:r * C + mr]
        y = yf[r * C:r * C + mr]
        v = nf[r * C:r * C + mr]
        for i in range(0, mr):
            _put(y, i, _yt(x[i], i, tm, ts, th, folded), nt)
            _add_sums1(v, i, tt, ss, ss2)


@njit(**_PAR)
def cl_forward_pipelined(x3, y3, Cg, w, b, correction, eps, eps_code, gmean, gm2, grstd, nt, T, wide, folded):
    """:func:`cl_forward_fused` with the default statistics (shifted, float64 sums), each thread taking a run of
    blocks.  With ``wide`` (WIDE_L1D) software-pipelined as the channels-first and row kernels: the sweep that
    writes block bb (from cache) also sums block bb + 1 (from memory), so reads and writes are in flight together;
    without, a block's sums, then its y.  The sums run in K-row tiles of accumulators, in the same order for every
    block whatever the thread count, and the same either way."""
    B, R, C = x3.shape
    nch = min(B, T)
    K = _tile_rows(C, TILE)
    for t in prange(nch):
        b0 = t * B // nch
        b1 = (t + 1) * B // nch
        tt = np.empty(K * C)
        ss = np.empty(K * C)
        ss2 = np.empty(K * C)
        cm = np.empty(C)
        cq = np.empty(C)
        sc = np.empty(C)
        sh = np.empty(C)
        gref = np.empty(gmean.shape[1])
        cref = np.empty(C)
        _tiled_sums(x3[b0], K, tt, ss, ss2)
        for bb in range(b0, b1):
            if bb > b0 and not wide:
                _tiled_sums(x3[bb], K, tt, ss, ss2)
            _group_refs(x3[bb], Cg, gref, cref)
            _tiled_moments(tt, ss, ss2, R, cref, cm, cq)
            _group_stats(cm, cq, R, Cg, correction, eps, eps_code, gref, gmean[bb], gm2[bb], grstd[bb])
            _fold(gmean[bb], grstd[bb], gm2[bb], Cg, w, b, cm, sc, sh, folded)
            if bb + 1 == b1 or not wide:
                _normalize_rows(x3[bb], y3[bb], 0, R, cm, sc, sh, nt, wide, folded)
                continue
            tm, ts, th = _tiled(cm, K), _tiled(sc, K), _tiled(sh, K)
            if nt:  # a literal each way (see the note above _yv)
                _normalize_and_sum(x3[bb], y3[bb], x3[bb + 1], K, tm, ts, th, tt, ss, ss2, True, folded)
            else:
                _normalize_and_sum(x3[bb], y3[bb], x3[bb + 1], K, tm, ts, th, tt, ss, ss2, False, folded)


@njit(**_SEQ)
def _column_stats(x2, r0, r1, algo, acc64, fours, cref, cm, cq):
    C = x2.shape[1]
    work32 = np.empty((3, C), np.float32)
    work64 = np.empty((3, C), np.float64)
    column_moments(x2, r0, r1, algo, acc64, fours, cref, cm, cq, work32, work64)


@njit(**_PAR)
def cl_forward_split(x3, y3, Cg, w, b, P, algo, acc64, fours, correction, eps, eps_code, gmean, gm2, grstd,
                     write_y, nt, gang, folded):
    B, R, C = x3.shape
    pm = np.empty((B * P, C))
    pq = np.empty((B * P, C))
    gref = np.empty(gmean.shape)
    cref = np.empty((B, C))
    for bb in range(B):  # the chunks' means are taken relative to their group's reference (MERGE_NOTE)
        _group_refs(x3[bb], Cg, gref[bb], cref[bb])
    for t in prange(B * P):
        bb = t // P
        p = t - bb * P
        _column_stats(x3[bb], p * R // P, (p + 1) * R // P, algo, acc64, fours, cref[bb], pm[t], pq[t])
    cm = np.empty((B, C))
    cq = np.empty((B, C))
    for bb in range(B):
        for c in range(C):
            cnt = 0
            mean = 0.0
            m2 = 0.0
            for p in range(P):
                rows = (p + 1) * R // P - p * R // P
                cnt, mean, m2 = chan_merge(cnt, mean, m2, rows, pm[bb * P + p, c], pq[bb * P + p, c])
            cm[bb, c] = mean
            cq[bb, c] = m2
        _group_stats(cm[bb], cq[bb], R, Cg, correction, eps, eps_code, gref[bb], gmean[bb], gm2[bb], grstd[bb])
    if write_y:
        for t in prange(B * P):
            bb = t // P
            p = t - bb * P
            mc = np.empty(C)
            sc = np.empty(C)
            sh = np.empty(C)
            _fold(gmean[bb], grstd[bb], gm2[bb], Cg, w, b, mc, sc, sh, folded)
            _normalize_rows(x3[bb], y3[bb], p * R // P, (p + 1) * R // P, mc, sc, sh, nt, gang, folded)


# ROWS_NOTE: the backward's column sweeps (these sums, _column_sums_dx) take four rows per sweep (a quarter of the
# accumulator loads and stores) where WIDE_L1D and the data come from cache, as they were tuned on the Xeon, whose
# L3 held every working set (batch norm (8, 56, 56, 64) training backward 0.87x -> 1.1x PyTorch there); one row
# elsewhere.  On the EPYC (Zen 4, 32 MiB L3), two threads, fours read memory at half speed (batch norm (64, 128,
# 56, 56) channels-last: the training backward's sums over 196 MiB took 10.3 ms in fours, 4.7 ms in ones) and
# were no faster from cache (evaluation backward (8, 64, 56, 56) 1.65x faster in ones).  The forward's moments
# choose by cache alone (FOURS).
@njit(**_SEQ)
def _column_sums(dy2, x2, r0, r1, fours, mc, sdy, sdyxc):
    """Per-column sum(dy) and sum(dy*(x - mc)) over rows r0:r1, float64, written to sdy/sdyxc; four rows per
    sweep with ``fours`` (ROWS_NOTE)."""
    C = x2.shape[1]
    for c in range(C):
        sdy[c] = 0.0
        sdyxc[c] = 0.0
    dy2 = dy2[r0:r1]
    x2 = x2[r0:r1]
    n = r1 - r0
    r = 0
    while fours and r + 4 <= n:  # a quarter of the accumulator loads and stores
        for c in range(C):
            g0 = np.float64(dy2[r, c])
            g1 = np.float64(dy2[r + 1, c])
            g2 = np.float64(dy2[r + 2, c])
            g3 = np.float64(dy2[r + 3, c])
            m = mc[c]
            sdy[c] += (g0 + g1) + (g2 + g3)
            sdyxc[c] += (g0 * (x2[r, c] - m) + g1 * (x2[r + 1, c] - m)) + (g2 * (x2[r + 2, c] - m)
                                                                            + g3 * (x2[r + 3, c] - m))
        r += 4
    for r in range(r, n):
        for c in range(C):
            g = np.float64(dy2[r, c])
            sdy[c] += g
            sdyxc[c] += g * (x2[r, c] - mc[c])


@njit(**_SEQ)
def _group_coeffs(sdy, sdyxc, gmean, grstd, Cg, w, rows, train, correction, eps, eps_code, mc, rc, mdxc, k):
    """Per-column mean, rstd, mean(dxhat) and k of ``dx = r*(w*dy - mdx) + k*(x - mc)`` for one block."""
    n = rows * Cg
    for g in range(gmean.shape[0]):
        tdy = 0.0
        tdyxc = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            tdy += w[c] * sdy[c]
            tdyxc += w[c] * sdyxc[c]
        r = grstd[g]
        mdx, kk = _coeffs(tdy, tdyxc, r, n, correction, eps, eps_code)
        for c in range(g * Cg, (g + 1) * Cg):
            mc[c] = gmean[g]
            rc[c] = r
            mdxc[c] = mdx
            k[c] = kk


@njit(**_SEQ)
def _dx_rows(dy2, x2, dx2, r0, r1, w, mc, rc, mdx, k, train, nt):
    """Rows r0:r1 of dx, as :func:`_dx_range` with per-column coefficients."""
    C = x2.shape[1]
    K = _tile_rows(C, HALF_TILE)  # tiles of K rows, as _normalize_rows_loop
    tw, tr, tm = _tiled(w, K), _tiled(rc, K), _tiled(mc, K)
    tmdx, tk = _tiled(mdx, K), _tiled(k, K)
    dyf = dy2[r0:r1].reshape(-1)
    xf = x2[r0:r1].reshape(-1)
    dxf = dx2[r0:r1].reshape(-1)
    n = r1 - r0
    for r in range(0, n, K):
        m = min(K, n - r) * C
        dy = dyf[r * C:r * C + m]
        x = xf[r * C:r * C + m]
        dx = dxf[r * C:r * C + m]
        if train:
            for i in range(0, m):
                _put(dx, i, _dxv(dy[i], x[i], tw[i], tr[i], tmdx[i], tk[i], tm[i]), nt)
        else:
            for i in range(0, m):
                _put(dx, i, tr[i] * (tw[i] * dy[i]), nt)


@njit(**_SEQ)
def _expand(gmean, Cg, mc):
    for c in range(mc.shape[0]):
        mc[c] = gmean[c // Cg]


@njit(**_SEQ)
def _column_sums_dx(dy2, x2, dx2, r0, r1, fours, w, mc, rc, sdy, sdyxc, nt):
    """:func:`_column_sums` and, in the same sweep, the evaluation-mode ``dx = r*(w*dy)`` (dx needs no sums
    there: dy is read once instead of twice)."""
    C = x2.shape[1]
    for c in range(C):
        sdy[c] = 0.0
        sdyxc[c] = 0.0
    dy2 = dy2[r0:r1]
    x2 = x2[r0:r1]
    dxf = dx2[r0:r1].reshape(-1)
    n = r1 - r0
    r = 0
    while fours and r + 4 <= n:  # as _column_sums; dx through 1-D row views (streamable)
        d0 = dxf[r * C:(r + 1) * C]
        d1 = dxf[(r + 1) * C:(r + 2) * C]
        d2 = dxf[(r + 2) * C:(r + 3) * C]
        d3 = dxf[(r + 3) * C:(r + 4) * C]
        for c in range(0, C):
            g0 = np.float64(dy2[r, c])
            g1 = np.float64(dy2[r + 1, c])
            g2 = np.float64(dy2[r + 2, c])
            g3 = np.float64(dy2[r + 3, c])
            m = mc[c]
            f = rc[c] * w[c]
            sdy[c] += (g0 + g1) + (g2 + g3)
            sdyxc[c] += (g0 * (x2[r, c] - m) + g1 * (x2[r + 1, c] - m)) + (g2 * (x2[r + 2, c] - m)
                                                                            + g3 * (x2[r + 3, c] - m))
            _put(d0, c, f * g0, nt)
            _put(d1, c, f * g1, nt)
            _put(d2, c, f * g2, nt)
            _put(d3, c, f * g3, nt)
        r += 4
    for r in range(r, n):
        d = dxf[r * C:(r + 1) * C]
        for c in range(0, C):
            g = np.float64(dy2[r, c])
            sdy[c] += g
            sdyxc[c] += g * (x2[r, c] - mc[c])
            _put(d, c, rc[c] * (w[c] * g), nt)


@njit(**_PAR)
def cl_backward_eval(dy3, x3, dx3, Cg, w, gmean, grstd, fours, sdy, sdyxc, nt):
    """The evaluation-mode backward (fixed statistics): dx and the column sums in one sweep, one block per
    iteration (the training backward is :func:`cl_backward_pipelined`)."""
    B, R, C = x3.shape
    for bb in prange(B):
        mc = np.empty(C)
        _expand(gmean[bb], Cg, mc)
        rc = np.empty(C)
        _expand(grstd[bb], Cg, rc)
        if nt:  # a literal each way (see the note above _yv)
            _column_sums_dx(dy3[bb], x3[bb], dx3[bb], 0, R, fours, w, mc, rc, sdy[bb], sdyxc[bb], True)
        else:
            _column_sums_dx(dy3[bb], x3[bb], dx3[bb], 0, R, fours, w, mc, rc, sdy[bb], sdyxc[bb], False)


@njit(**_SEQ)
def _tiled_grad_sums(dy2, x2, K, tmn, ta, tc):
    """Column sums of ``dy`` and ``dy * (x - mean)`` over the block (R x C) in K-row tiles of accumulators ta/tc
    (position k*C + c sums the rows r = k (mod K)); ``tmn`` the block's per-column mean, tiled."""
    R, C = x2.shape
    ta[:] = 0.0
    tc[:] = 0.0
    gf = dy2.reshape(-1)
    xf = x2.reshape(-1)
    for r in range(0, R, K):
        m = min(K, R - r) * C
        g = gf[r * C:r * C + m]
        v = xf[r * C:r * C + m]
        for i in range(0, m):
            gi = np.float64(g[i])
            ta[i] += gi
            tc[i] += gi * (v[i] - tmn[i])


@njit(**_SEQ)
def _dx_and_sums(dy2, x2, dx2, dyn, xn, K, tw, tr, tm, tmdx, tk, tmn, ta, tc, nt):
    """One sweep over two blocks: the training dx of (dy2, x2) from cache (tiled coefficients, as
    :func:`_dx_rows`) and :func:`_tiled_grad_sums` of the next block (dyn, xn) from memory."""
    R, C = x2.shape
    ta[:] = 0.0
    tc[:] = 0.0
    gf = dy2.reshape(-1)
    xf = x2.reshape(-1)
    df = dx2.reshape(-1)
    gnf = dyn.reshape(-1)
    xnf = xn.reshape(-1)
    for r in range(0, R, K):
        m = min(K, R - r) * C
        g = gf[r * C:r * C + m]
        v = xf[r * C:r * C + m]
        d = df[r * C:r * C + m]
        gn = gnf[r * C:r * C + m]
        vn = xnf[r * C:r * C + m]
        for i in range(0, m):
            _put(d, i, _dxv(g[i], v[i], tw[i], tr[i], tmdx[i], tk[i], tm[i]), nt)
            gi = np.float64(gn[i])
            ta[i] += gi
            tc[i] += gi * (vn[i] - tmn[i])


@njit(**_PAR)
def cl_backward_pipelined(dy3, x3, dx3, Cg, w, gmean, grstd, correction, eps, eps_code, sdy, sdyxc, nt, T, pipe):
    """The training backward (one block per group-norm sample), each thread taking a run of blocks.  With ``pipe``,
    software-pipelined as :func:`cl_forward_pipelined`: the sweep writing block bb's dx (from cache) also sums
    block bb + 1 (from memory); without, a block's sums, then its dx (WIDE_L1D).  The sums are the same
    either way (the same tiles, in the same order)."""
    B, R, C = x3.shape
    nch = min(B, T)
    K = _tile_rows(C, HALF_TILE)  # eight tiled vectors
    for t in prange(nch):
        b0 = t * B // nch
        b1 = (t + 1) * B // nch
        ta = np.empty(K * C)
        tc = np.empty(K * C)
        mc = np.empty(C)
        rc = np.empty(C)
        mdx = np.empty(C)
        k = np.empty(C)
        mn = np.empty(C)
        tw = _tiled(w, K)  # the same for every block
        _expand(gmean[b0], Cg, mn)
        _tiled_grad_sums(dy3[b0], x3[b0], K, _tiled(mn, K), ta, tc)
        for bb in range(b0, b1):
            if bb > b0 and not pipe:
                _expand(gmean[bb], Cg, mn)
                _tiled_grad_sums(dy3[bb], x3[bb], K, _tiled(mn, K), ta, tc)
            _untile(ta, tc, sdy[bb], sdyxc[bb])
            _group_coeffs(sdy[bb], sdyxc[bb], gmean[bb], grstd[bb], Cg, w, R, 1, correction, eps, eps_code,
                          mc, rc, mdx, k)
            if bb + 1 == b1 or not pipe:
                if nt:  # a literal each way (see the note above _yv)
                    _dx_rows(dy3[bb], x3[bb], dx3[bb], 0, R, w, mc, rc, mdx, k, 1, True)
                else:
                    _dx_rows(dy3[bb], x3[bb], dx3[bb], 0, R, w, mc, rc, mdx, k, 1, False)
                continue
            _expand(gmean[bb + 1], Cg, mn)
            tr, tm, tmdx, tk, tmn = _tiled(rc, K), _tiled(mc, K), _tiled(mdx, K), _tiled(k, K), _tiled(mn, K)
            if nt:
                _dx_and_sums(dy3[bb], x3[bb], dx3[bb], dy3[bb + 1], x3[bb + 1], K, tw, tr, tm, tmdx, tk, tmn,
                             ta, tc, True)
            else:
                _dx_and_sums(dy3[bb], x3[bb], dx3[bb], dy3[bb + 1], x3[bb + 1], K, tw, tr, tm, tmdx, tk, tmn,
                             ta, tc, False)


@njit(**_PAR)
def cl_backward_split(dy3, x3, dx3, Cg, w, gmean, grstd, fours, P, train, correction, eps, eps_code, sdy, sdyxc,
                      nt):
    B, R, C = x3.shape
    # per-task column sums, updated every few rows: one block, padded (see _stream.PARTIAL_PAD)
    part = np.empty((B * P, 2, C + _stream.PARTIAL_PAD))
    for t in prange(B * P):
        bb = t // P
        p = t - bb * P
        mc = np.empty(C)
        _expand(gmean[bb], Cg, mc)
        pa = part[t, 0, :C]
        pc = part[t, 1, :C]
        if train:
            _column_sums(dy3[bb], x3[bb], p * R // P, (p + 1) * R // P, fours, mc, pa, pc)
        else:
            rc = np.empty(C)
            _expand(grstd[bb], Cg, rc)
            r0 = p * R // P
            r1 = (p + 1) * R // P
            if nt:  # a literal each way (see the note above _yv)
                _column_sums_dx(dy3[bb], x3[bb], dx3[bb], r0, r1, fours, w, mc, rc, pa, pc, True)
            else:
                _column_sums_dx(dy3[bb], x3[bb], dx3[bb], r0, r1, fours, w, mc, rc, pa, pc, False)
    mc = np.empty((B, C))
    rc = np.empty((B, C))
    mdx = np.empty((B, C))
    k = np.empty((B, C))
    for bb in range(B):
        for c in range(C):
            s1 = 0.0
            s2 = 0.0
            for p in range(P):
                s1 += part[bb * P + p, 0, c]
                s2 += part[bb * P + p, 1, c]
            sdy[bb, c] = s1
            sdyxc[bb, c] = s2
        _group_coeffs(sdy[bb], sdyxc[bb], gmean[bb], grstd[bb], Cg, w, R, train, correction, eps, eps_code,
                      mc[bb], rc[bb], mdx[bb], k[bb])
    if train:
        for t in prange(B * P):
            bb = t // P
            p = t - bb * P
            r0 = p * R // P
            r1 = (p + 1) * R // P
            if nt:
                _dx_rows(dy3[bb], x3[bb], dx3[bb], r0, r1, w, mc[bb], rc[bb], mdx[bb], k[bb], 1, True)
            else:
                _dx_rows(dy3[bb], x3[bb], dx3[bb], r0, r1, w, mc[bb], rc[bb], mdx[bb], k[bb], 1, False)


# ------------------------------------------------------------------ per-channel constants (eval, frozen BN)
# y = (x - center)*scale + shift, the training outputs' formula (_yv) with the running mean as the center, for
# float64 data: the folded x*scale + (shift - center*scale) loses log10(offset/spread) digits of float64 data near
# its running mean.  Float32 data take the folded form (center None: compiled out), one multiply-add per element:
# in float64 its error is ~offset/spread * 2e-9 float32 units, and the subtraction cost the forward 20%.
@njit(**_SEQ)
def _affine_slab(xf, yf, lo, hi, ce, sc, sh, nt):
    x = xf[lo:hi]
    y = yf[lo:hi]
    if ce is None:
        for i in range(0, hi - lo):
            _put(y, i, x[i] * sc + sh, nt)
    else:
        for i in range(0, hi - lo):
            _put(y, i, _yv(x[i], ce, sc, sh), nt)


@njit(inline="always", **_SEQ)
def _at(v, i):
    """v[i], or None where v is None (the folded form's center)."""
    return None if v is None else v[i]


@njit(**_PAR)
def affine_cf(xf, yf, C, S, center, scale, shift, nt):
    """y = (x - center[c])*scale[c] + shift[c] (center None: x*scale[c] + shift[c]) on (N, C, S) flattened, one
    (n, c) slab per iteration."""
    for t in prange(xf.shape[0] // S):
        c = t % C
        if nt:  # a literal each way (see the note above _yv)
            _affine_slab(xf, yf, t * S, (t + 1) * S, _at(center, c), scale[c], shift[c], True)
        else:
            _affine_slab(xf, yf, t * S, (t + 1) * S, _at(center, c), scale[c], shift[c], False)


@njit(**_SEQ)
def _affine_rows(x2, y2, r0, r1, center, scale, shift, nt):
    C = x2.shape[1]
    K = _tile_rows(C, TILE)  # tiles of K rows, as _normalize_rows_loop
    ts, th = _tiled(scale, K), _tiled(shift, K)
    tc = None if center is None else _tiled(center, K)
    xf = x2[r0:r1].reshape(-1)
    yf = y2[r0:r1].reshape(-1)
    n = r1 - r0
    for r in range(0, n, K):
        m = min(K, n - r) * C
        x = xf[r * C:r * C + m]
        y = yf[r * C:r * C + m]
        if tc is None:
            for i in range(0, m):
                _put(y, i, x[i] * ts[i] + th[i], nt)
        else:
            for i in range(0, m):
                _put(y, i, _yv(x[i], tc[i], ts[i], th[i]), nt)


@njit(**_PAR)
def affine_cl(x2, y2, center, scale, shift, P, nt):
    """y = (x - center[c])*scale[c] + shift[c] (center None: x*scale[c] + shift[c]) on (R, C), rows cut into P
    chunks."""
    R = x2.shape[0]
    for p in prange(P):
        if nt:  # a literal each way (see the note above _yv)
            _affine_rows(x2, y2, p * R // P, (p + 1) * R // P, center, scale, shift, True)
        else:
            _affine_rows(x2, y2, p * R // P, (p + 1) * R // P, center, scale, shift, False)


# ------------------------------------------------------------------------------------- Python-side planning
def _serial_twin(f):
    """``f`` compiled without threads (prange runs as range), cached under its own name."""
    py = f.py_func
    g = types.FunctionType(py.__code__, py.__globals__, py.__name__ + "_serial", py.__defaults__, py.__closure__)
    g.__qualname__ = py.__qualname__ + "_serial"  # the cache file name: the parallel build is not reused
    return njit(**_SEQ)(g)


# (one thread: every layout runs its fused kernel, so the split ones need no twin)
_SERIAL = {f: _serial_twin(f) for f in (cf_forward_fused, cf_forward_pipelined, cf_backward_fused, cl_forward_fused,
                                        cl_forward_pipelined, cl_backward_pipelined,
                                        cl_backward_eval, affine_cf, affine_cl)}

#: inputs with fewer values run serially: waking the thread pool costs more than the work (measured
#: crossover on this machine; on a loaded machine a woken thread can also wait a whole scheduler slice)
PARALLEL_MIN = 1 << 13


def _threads(x):
    """(serial, thread count) for input ``x``."""
    if x.size < PARALLEL_MIN:
        return True, 1
    return False, numba.get_num_threads()


def _pick(f, serial):
    return _SERIAL[f] if serial else f


SMALL_S = 16  # channels-first batch norm with shorter slabs runs as columns (C*S of them, groups of S)


class Layout(NamedTuple):
    """How a family views x: "cf" (units of runs) or "cl" (blocks of columns); see the module docstring.
    ``rep`` repeats each per-channel parameter over that many adjacent columns ("cl" only)."""

    kind: str
    U: int = 0
    nr: int = 0
    L: int = 0
    run_stride: int = 0
    S: int = 0
    Cg: int = 1
    G: int = 1
    B: int = 0
    R: int = 0
    cols: int = 0
    rep: int = 1


def _nsc(x, axis):
    N = x.shape[0]
    C = x.shape[1] if axis == 1 else x.shape[-1]
    return N, C, x.size // (N * C)


def batch_layout(x, axis) -> Layout:
    """Statistics per channel."""
    N, C, S = _nsc(x, axis)
    if axis == -1 or S == 1:
        return Layout("cl", B=1, R=N * S, cols=C, Cg=1)
    if S < SMALL_S:
        return Layout("cl", B=1, R=N, cols=C * S, Cg=S, rep=S)
    return Layout("cf", U=C, nr=N, L=S, run_stride=C * S, S=S, Cg=1, G=C)


def group_layout(x, axis, G) -> Layout:
    """Statistics per (sample, group of C/G channels)."""
    N, C, S = _nsc(x, axis)
    if axis == 1:
        return Layout("cf", U=N * G, nr=1, L=(C // G) * S, run_stride=0, S=S, Cg=C // G, G=G)
    return Layout("cl", B=N, R=S, cols=C, Cg=C // G)


def _codes(opts, x):
    acc64 = int(opts.accumulator(x.dtype) == np.dtype(np.float64))
    return opts.variance_code, acc64, int(opts.correction), opts.eps_code


STREAM_BYTES = 1 << 17  # channels-first blocks read memory in streams of at least this many bytes (and
#                          a block, CB*N runs, stays within a share of the last-level cache)


PIPE_BYTES = 1 << 20  # pipelined blocks: re-read from cache one block after their statistics (a share of L2;
#                        longer blocks measured 65% -> 50% of copy on batch norm (64, 128, 56, 56))


def _pipe_block(lay, T, nbytes):
    """Units per block of the pipelined kernels (``nbytes`` per value read): one where units are contiguous slabs
    (nr == 1: measured 91% -> 99% of the limit against 10-unit blocks, group norm backward), else blocks of at
    most PIPE_BYTES."""
    if lay.nr == 1:
        return 1
    return max(1, min(PIPE_BYTES // (lay.nr * lay.L * nbytes), lay.U // T))


def _unit_block(lay, T, itemsize):
    """Units per block: streams of >= STREAM_BYTES where runs are strided (nr > 1), every thread busy."""
    if lay.nr == 1:
        return 1  # one contiguous slab per unit; consecutive units are adjacent anyway
    return max(1, min(-(-STREAM_BYTES // (lay.L * itemsize)), lay.U // T))


def _chunks(lay, T):
    """Row chunks per block for the split kernels: enough tasks for every thread."""
    return max(1, min(lay.R, -(-T // lay.B)))


#: WIDE_L1D: channels-last choices measured on the Xeon (48 KiB L1d) that ran slower on the EPYC (Zen 4, 32 KiB
#: L1d) are taken where the L1d holds at least 48 KiB (a proxy: only these two machines were measured), so that the
#: Xeon runs what was measured there:
#: * the training forward and backward software-pipelined (cl_forward_pipelined, cl_backward_pipelined): Xeon, 2
#:   threads, (128, 28, 28, 256) backward 28 -> 22 ms, instance norm forward 18.0 -> 10.6 ms; EPYC, one core, the
#:   backward's combined sweep (8 tiled vectors, 5 streams) 1.5-2.0 ns a value against 0.3-0.5 + 0.5 for a block's
#:   sums from memory, then its dx from cache (group norm (64, 128, 56, 56) backward 1.28x); block by block, the
#:   forwards of group and instance norm measured 1.08-1.29x (tools/ab_trees.py, 5 rounds, four cases);
#: * the forward's write sweep taking GANG tiles at a time (_normalize_rows_loop, see GANG): Xeon, one core,
#:   1.3-1.6x; EPYC, one core, streaming stores to four tiles at once 0.6-0.8 ns a value from cache, against 0.19
#:   one tile (of HALF_TILE values) at a time (batch norm (64, 128, 56, 56) channels-last forward 1.55x);
#: * the backward's column sums taking four rows per sweep from cache (ROWS_NOTE).
_CACHES = machine.caches()  # read once, at import
WIDE_L1D = _CACHES.get("l1d_kib", 32) >= 48


#: the last-level cache's bytes (sysfs: the L3, else the L2; 32 MiB where unknown)
LLC_BYTES = (_CACHES.get("l3_kib") or _CACHES.get("l2_kib") or 32 * 1024) * 1024


def from_cache(nbytes):
    """Whether a sweep reading ``nbytes`` (called on the same data again, as in training and benchmarks) finds them
    in cache: at most half the last-level cache.  Picks the column sweep's form (FOURS in :mod:`._moments`)."""
    return nbytes <= LLC_BYTES // 2


def _nt(out, lay):
    """Whether the sweep writing ``out`` takes streaming stores: every segment it writes (a channels-first run of S
    values, a channels-last row of ``cols``) starts on a 64-byte line (:func:`._stream.streamable`; read at call
    time)."""
    return int(_stream.streamable(out, lay.S if lay.kind == "cf" else lay.cols))


def _param(p, C, dtype, fill):
    return np.full(C, fill, dtype) if p is None else p


def forward_stats(x, y, lay, weight, bias, opts, eps, write_y=True):
    """Statistics (mean, m2, rstd), float64, one per unit ("cf": (U,)) or per (block, group) ("cl": (B, G));
    with ``write_y`` also ``y = (x - mean) * rstd * weight + bias``."""
    C = x.shape[1] if lay.kind == "cf" else lay.cols // lay.rep
    w = _param(weight, C, x.dtype, 1.0)
    b = _param(bias, C, x.dtype, 0.0)
    algo, acc64, corr, ec = _codes(opts, x)
    serial, T = _threads(x)
    nt = int(write_y and y is not None and y is not x and _nt(y, lay))
    if y is None:
        y = x  # not written
    if lay.kind == "cf":
        mean, m2, rstd = np.empty(lay.U), np.empty(lay.U), np.empty(lay.U)
        args = (x.reshape(-1), y.reshape(-1), lay.U, lay.nr, lay.L, lay.run_stride, lay.S, lay.Cg, lay.G, w, b,
                algo, acc64, corr, float(eps), ec, mean, m2, rstd, int(write_y), nt)
        if lay.U >= T and write_y and algo == SHIFTED and acc64:  # the defaults
            CB = _pipe_block(lay, T, x.itemsize)
            _pick(cf_forward_pipelined, serial)(*args[:11], corr, float(eps), ec, mean, m2, rstd, nt, CB, T)
        elif lay.U >= T:
            _pick(cf_forward_fused, serial)(*args, _unit_block(lay, T, x.itemsize))
        else:
            cf_forward_split(*args)
        return mean, m2, rstd
    if lay.rep > 1:
        w, b = np.repeat(w, lay.rep), np.repeat(b, lay.rep)
    x3, y3 = x.reshape(lay.B, lay.R, lay.cols), y.reshape(lay.B, lay.R, lay.cols)
    G = lay.cols // lay.Cg
    mean, m2, rstd = np.empty((lay.B, G)), np.empty((lay.B, G)), np.empty((lay.B, G))
    gang = int(WIDE_L1D)
    folded = int(x.dtype == np.float32)  # FOLD_NOTE
    if lay.B >= T and write_y and algo == SHIFTED and acc64:  # the defaults
        _pick(cl_forward_pipelined, serial)(x3, y3, lay.Cg, w, b, corr, float(eps), ec, mean, m2, rstd, nt, T, gang,
                                            folded)
        return mean, m2, rstd
    fours = int(from_cache(x.nbytes))
    if lay.B >= T:
        _pick(cl_forward_fused, serial)(x3, y3, lay.Cg, w, b, algo, acc64, fours, corr, float(eps), ec, mean, m2,
                                        rstd, int(write_y), nt, gang, folded)
    else:
        cl_forward_split(x3, y3, lay.Cg, w, b, _chunks(lay, T), algo, acc64, fours, corr, float(eps), ec, mean, m2,
                         rstd, int(write_y), nt, gang, folded)
    return mean, m2, rstd


def backward_sums(dy, x, dx, lay, weight, mean, rstd, train, opts, eps):
    """dx (written to ``dx``) and the float64 sums (sum(dy), sum(dy*xc)): "cf" (U, Cg), "cl" (B, cols).
    ``mean``/``rstd`` are float64, shaped like :func:`forward_stats` returns them."""
    C = x.shape[1] if lay.kind == "cf" else lay.cols // lay.rep
    w = _param(weight, C, np.float64, 1.0).astype(np.float64)  # w*dy exact in float64 for float32 data
    _, _, corr, ec = _codes(opts, x)
    serial, T = _threads(x)
    nt = _nt(dx, lay)
    mean = np.ascontiguousarray(mean, np.float64)
    rstd = np.ascontiguousarray(rstd, np.float64)
    if lay.kind == "cf":
        sdy, sdyxc = np.empty((lay.U, lay.Cg)), np.empty((lay.U, lay.Cg))
        args = (dy.reshape(-1), x.reshape(-1), dx.reshape(-1), lay.U, lay.nr, lay.L, lay.run_stride, lay.S, lay.Cg,
                lay.G, w, mean.reshape(-1), rstd.reshape(-1), int(train), corr, float(eps), ec, sdy, sdyxc)
        if lay.U >= T:
            CB = _pipe_block(lay, T, 2 * x.itemsize)  # dy and x
            _pick(cf_backward_fused, serial)(*args, nt, CB, T)
        else:
            cf_backward_split(*args, nt)
        return sdy, sdyxc
    if lay.rep > 1:
        w = np.repeat(w, lay.rep)
    shape = (lay.B, lay.R, lay.cols)
    G = lay.cols // lay.Cg
    mean, rstd = mean.reshape(lay.B, G), rstd.reshape(lay.B, G)
    sdy, sdyxc = np.empty((lay.B, lay.cols)), np.empty((lay.B, lay.cols))
    args = (dy.reshape(shape), x.reshape(shape), dx.reshape(shape), lay.Cg, w, mean, rstd)
    fours = int(WIDE_L1D and from_cache(dy.nbytes + x.nbytes))  # the sums' rows per sweep (ROWS_NOTE)
    if lay.B >= T and train:
        # pipelined: the sweep writing a block's dx also streams the next block in (2 threads: (128, 28, 28, 256)
        # 28 -> 22 ms; blocks too big for L2, re-read from L3, gain less: 3.2 MB ((64, 56, 56, 128)) and 6.4 MB)
        _pick(cl_backward_pipelined, serial)(*args, corr, float(eps), ec, sdy, sdyxc, nt, T, int(WIDE_L1D))
    elif lay.B >= T:
        _pick(cl_backward_eval, serial)(*args, fours, sdy, sdyxc, nt)
    else:
        cl_backward_split(*args, fours, _chunks(lay, T), int(train), corr, float(eps), ec, sdy, sdyxc, nt)
    return sdy, sdyxc


def apply_affine(x, y, axis, center, scale, shift):
    """``y = (x - center[c])*scale[c] + shift[c]`` with per-channel float64 vectors (evaluation, frozen batch
    norm: the running mean is the center; None: no center); float32 data as ``x*scale + (shift -
    center*scale)`` (see _affine_slab)."""
    if x.size == 0:
        return y
    N, C, S = _nsc(x, axis)
    scale, shift = (np.ascontiguousarray(v, np.float64) for v in (scale, shift))
    if center is not None and x.dtype == np.float32:
        center, shift = None, shift - np.asarray(center, np.float64) * scale
    elif center is not None:
        center = np.ascontiguousarray(center, np.float64)
    serial, T = _threads(x)
    # streaming stores where every slab (channels-first) or row (channels-last) starts on a line
    if axis == 1 and S >= SMALL_S:
        nt = int(y is not x and _stream.streamable(y, S))
        _pick(affine_cf, serial)(x.reshape(-1), y.reshape(-1), C, S, center, scale, shift, nt)
    elif axis == 1:  # short slabs: rows of C*S columns
        nt = int(y is not x and _stream.streamable(y, C * S))
        _pick(affine_cl, serial)(x.reshape(N, C * S), y.reshape(N, C * S), None if center is None else
                                 np.repeat(center, S), np.repeat(scale, S), np.repeat(shift, S), min(N, T), nt)
    else:
        nt = int(y is not x and _stream.streamable(y, C))
        _pick(affine_cl, serial)(x.reshape(-1, C), y.reshape(-1, C), center, scale, shift, min(N * S, T), nt)
    return y
