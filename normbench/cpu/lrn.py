"""Local response norm across channels, Numba CPU kernels (PyTorch semantics, see reference/lrn.py).

The input is viewed as (N, C, S) with S the flattened spatial size.  Work units are (sample, block of
``SBLOCK`` spatial positions), one contiguous range of units per thread.  Within a unit the channel window
sum of squares is a sliding window over c, vectorised over the spatial block, in float64: one value enters
and one leaves per channel instead of ``size`` values summed.  A sliding sum cannot drop a NaN or Inf once
it entered (Inf - Inf), and rounding can leave a tiny negative remainder: a block whose sums went
non-finite is recomputed with direct window sums (so a NaN reaches exactly the windows that contain it,
as the math says), and remainders are clamped at 0.  Nor does it keep the small terms added next to a huge
one (1e40 + 1 - 1e40 = 0): its rounding error is bounded by that of the largest sum it held, so each lane
tracks that peak (of the sums of absolute terms in the backward) and is summed again directly, restarting
its peak, when its sum falls below ``1/RATIO`` of it.  ``accumulate`` does not apply: sums are float64.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._moments import FAST, JIT

SBLOCK = 256  # spatial positions per work unit (float64 scratch per thread: SBLOCK values)
#: a lane's sliding sum is recomputed directly when its peak (see the module docstring) exceeds RATIO times it,
#: which bounds its relative rounding error by ~2 * C * RATIO * 2**-53 (2.3e-10 at C = 4096)
RATIO = 256.0
PARALLEL_MIN = 1 << 15


@njit(**FAST)
def _neg_pow(p, m, beta):
    """p[:m] = p[:m] ** -beta; the common betas through sqrt/division, which vectorise (a general pow is a
    scalar libm call per value and made LRN compute-bound: 0.4 GB/s)."""
    if beta == 0.75:
        for s in range(m):
            r = np.sqrt(p[s])
            p[s] = 1.0 / (r * np.sqrt(r))
    elif beta == 0.5:
        for s in range(m):
            p[s] = 1.0 / np.sqrt(p[s])
    elif beta == 1.0:
        for s in range(m):
            p[s] = 1.0 / p[s]
    else:
        for s in range(m):
            p[s] = p[s] ** (-beta)


@njit(**FAST)
def _window(src, n, c, s0, m, lo, hi, C, S, ws, kind, aux1, aux2):
    """ws[:m] = sum over channels lo..hi (clipped) of term(c') at spatial s0.. (direct, for non-finite blocks).
    kind 0: x**2 (src = x); kind 1: dy * y / scale (src = dy, aux1 = y, aux2 = scale)."""
    for s in range(m):
        ws[s] = 0.0
    for cc in range(max(lo, 0), min(hi, C - 1) + 1):
        base = (n * C + cc) * S + s0
        a = src[base:base + m]
        if kind == 0:
            for s in range(m):
                v = np.float64(a[s])
                ws[s] += v * v
        else:
            b1 = aux1[base:base + m]
            b2 = aux2[base:base + m]
            for s in range(m):
                ws[s] += np.float64(a[s]) * np.float64(b1[s]) / np.float64(b2[s])


@njit(**FAST)
def _lane_window(src, n, c, s, lo, hi, C, S, kind, aux1, aux2):
    """(sum, sum of absolute values) over channels lo..hi (clipped) of term(c') at spatial position s (the
    direct sum of one lane; kinds as :func:`_window`)."""
    t = 0.0
    a = 0.0
    for cc in range(max(lo, 0), min(hi, C - 1) + 1):
        i = (n * C + cc) * S + s
        if kind == 0:
            v = np.float64(src[i])
            v = v * v
        else:
            v = np.float64(src[i]) * np.float64(aux1[i]) / np.float64(aux2[i])
        t += v
        a += abs(v)
    return t, a


@njit(**FAST)
def _forward_units(x, y, scale, N, C, S, size, alpha, beta, k, u0, u1, ws, pw, pk):
    before = size // 2
    after = (size - 1) // 2
    coef = alpha / size
    nb = (S + SBLOCK - 1) // SBLOCK
    for u in range(u0, u1):
        n = u // nb
        s0 = (u % nb) * SBLOCK
        m = min(SBLOCK, S - s0)
        for s in range(m):
            ws[s] = 0.0
        for cc in range(0, min(after, C)):  # channels entering before c = 0: [0, after - 1]
            base = (n * C + cc) * S + s0
            xi = x[base:base + m]
            for s in range(m):
                v = np.float64(xi[s])
                ws[s] += v * v
        for s in range(m):
            pk[s] = ws[s]
        bad = 0.0
        for c in range(C):
            base = (n * C + c) * S + s0
            if c + after < C:
                b_in = (n * C + c + after) * S + s0
                xi = x[b_in:b_in + m]
                for s in range(m):
                    v = np.float64(xi[s])
                    t = ws[s] + v * v
                    ws[s] = t
                    pk[s] = max(pk[s], t)
            if c - before - 1 >= 0:
                b_out = (n * C + c - before - 1) * S + s0
                xo = x[b_out:b_out + m]
                lost = 0.0
                for s in range(m):
                    v = np.float64(xo[s])
                    t = ws[s] - v * v
                    ws[s] = t
                    lost += 1.0 if pk[s] > RATIO * t else 0.0
                if lost > 0.0:  # rare: lanes whose sum fell far below its peak are summed again
                    for s in range(m):
                        if pk[s] > RATIO * ws[s]:
                            ws[s], pk[s] = _lane_window(x, n, c, s0 + s, c - before, c + after, C, S, 0, x, x)
            xc = x[base:base + m]
            sca = scale[base:base + m]
            yc = y[base:base + m]
            for s in range(m):
                t = ws[s]
                bad += t * 0.0  # NaN once any sum is non-finite
                if t < 0.0:
                    t = 0.0
                sc = k + coef * t
                sca[s] = sc
                pw[s] = sc
            _neg_pow(pw, m, beta)
            for s in range(m):
                yc[s] = np.float64(xc[s]) * pw[s]
        if bad != 0.0:  # NaN: redo the block with direct sums
            for c in range(C):
                base = (n * C + c) * S + s0
                _window(x, n, c, s0, m, c - before, c + after, C, S, ws, 0, x, x)
                for s in range(m):
                    sc = k + coef * ws[s]
                    scale[base + s] = sc
                    y[base + s] = np.float64(x[base + s]) * sc ** (-beta)  # rare path: plain indexing


@njit(**FAST)
def _add_t(dy, y, scale, base, m, ws, wa, pk, sign):
    """ws[:m] += sign * t and wa[:m] += sign * |t|, t = dy * y / scale on the m values from ``base`` (views:
    indices from 0 vectorise); adding, the peaks pk of wa follow; returns the count of lanes whose |t| sum fell
    below 1/RATIO of its peak."""
    a = dy[base:base + m]
    b = y[base:base + m]
    c = scale[base:base + m]
    lost = 0.0
    for s in range(m):
        t = np.float64(a[s]) * np.float64(b[s]) / np.float64(c[s])
        ws[s] += sign * t
        q = wa[s] + sign * abs(t)
        wa[s] = q
        if sign > 0.0:
            pk[s] = max(pk[s], q)
        else:
            lost += 1.0 if pk[s] > RATIO * q else 0.0
    return lost


@njit(**FAST)
def _backward_units(dy, x, y, scale, dx, N, C, S, size, alpha, beta, u0, u1, ws, pw, wa, pk):
    # dx[c] = dy[c] * scale[c]**-beta - 2 alpha beta / size * x[c] * sum over the channels c' whose window
    # holds c, [c - (size-1)//2, c + size//2], of dy[c'] * y[c'] / scale[c'] (= dy x scale**(-beta-1)).
    before = (size - 1) // 2
    after = size // 2
    coef = 2.0 * alpha * beta / size
    nb = (S + SBLOCK - 1) // SBLOCK
    for u in range(u0, u1):
        n = u // nb
        s0 = (u % nb) * SBLOCK
        m = min(SBLOCK, S - s0)
        for s in range(m):
            ws[s] = 0.0
            wa[s] = 0.0
            pk[s] = 0.0
        for cc in range(0, min(after, C)):
            base = (n * C + cc) * S + s0
            _add_t(dy, y, scale, base, m, ws, wa, pk, 1.0)
        bad = 0.0
        for c in range(C):
            base = (n * C + c) * S + s0
            if c + after < C:
                _add_t(dy, y, scale, (n * C + c + after) * S + s0, m, ws, wa, pk, 1.0)
            if c - before - 1 >= 0:
                if _add_t(dy, y, scale, (n * C + c - before - 1) * S + s0, m, ws, wa, pk, -1.0) > 0.0:
                    for s in range(m):  # rare: lanes summed again (see _forward_units)
                        if pk[s] > RATIO * wa[s]:
                            ws[s], wa[s] = _lane_window(dy, n, c, s0 + s, c - before, c + after, C, S, 1, y,
                                                        scale)
                            pk[s] = wa[s]
            dyc = dy[base:base + m]
            sca = scale[base:base + m]
            xc = x[base:base + m]
            dxc = dx[base:base + m]
            for s in range(m):
                pw[s] = sca[s]
            _neg_pow(pw, m, beta)
            for s in range(m):
                t = ws[s]
                bad += t * 0.0
                dxc[s] = np.float64(dyc[s]) * pw[s] - coef * np.float64(xc[s]) * t
        if bad != 0.0:
            for c in range(C):
                base = (n * C + c) * S + s0
                _window(dy, n, c, s0, m, c - before, c + after, C, S, ws, 1, y, scale)
                for s in range(m):
                    sc = np.float64(scale[base + s])
                    dx[base + s] = np.float64(dy[base + s]) * sc ** (-beta) - coef * np.float64(x[base + s]) * ws[s]


@njit(parallel=True, **JIT)
def _forward_par(x, y, scale, N, C, S, size, alpha, beta, k, T):
    U = N * ((S + SBLOCK - 1) // SBLOCK)
    nch = min(U, T)
    for c in prange(nch):
        ws = np.empty(SBLOCK)
        pw = np.empty(SBLOCK)
        pk = np.empty(SBLOCK)
        _forward_units(x, y, scale, N, C, S, size, alpha, beta, k, c * U // nch, (c + 1) * U // nch, ws, pw, pk)


@njit(parallel=True, **JIT)
def _backward_par(dy, x, y, scale, dx, N, C, S, size, alpha, beta, T):
    U = N * ((S + SBLOCK - 1) // SBLOCK)
    nch = min(U, T)
    for c in prange(nch):
        ws = np.empty(SBLOCK)
        pw = np.empty(SBLOCK)
        wa = np.empty(SBLOCK)
        pk = np.empty(SBLOCK)
        _backward_units(dy, x, y, scale, dx, N, C, S, size, alpha, beta, c * U // nch, (c + 1) * U // nch, ws,
                        pw, wa, pk)


def _dims(x):
    N, C = x.shape[0], x.shape[1]
    return N, C, (x.size // (N * C) if N * C else 0)


def _threads(x):
    return 1 if x.size < PARALLEL_MIN else numba.get_num_threads()  # (asking takes a lock: only when large)


def local_response_norm_forward(x, size, *, alpha, beta, k, opts=None, out=None):
    y = out if out is not None else np.empty(x.shape, x.dtype)
    scale = np.empty(x.shape, x.dtype)
    N, C, S = _dims(x)
    if x.size:
        T = _threads(x)
        args = (x.reshape(-1), y.reshape(-1), scale.reshape(-1), N, C, S, int(size), float(alpha), float(beta),
                float(k))
        if T == 1:
            _forward_units(*args, 0, N * ((S + SBLOCK - 1) // SBLOCK), *np.empty((3, SBLOCK)))
        else:
            _forward_par(*args, T)
    return y, scale


def local_response_norm_backward(dy, x, y, scale, size, *, alpha, beta, k, opts=None, dx_out=None):
    dx = dx_out if dx_out is not None else np.empty(x.shape, x.dtype)
    N, C, S = _dims(x)
    if x.size:
        y = np.ascontiguousarray(y, x.dtype)  # may arrive float64 from the reference backend
        scale = np.ascontiguousarray(scale, x.dtype)
        T = _threads(x)
        args = (dy.reshape(-1), x.reshape(-1), y.reshape(-1), scale.reshape(-1), dx.reshape(-1), N, C, S,
                int(size), float(alpha), float(beta))
        if T == 1:
            _backward_units(*args, 0, N * ((S + SBLOCK - 1) // SBLOCK), *np.empty((4, SBLOCK)))
        else:
            _backward_par(*args, T)
    return dx
