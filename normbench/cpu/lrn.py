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

Float64 inputs with windows of at most DIRECT_MAX_SIZE channels take direct window sums (``direct``): a
sliding float64 sum of float64 terms keeps the rounding of every term it ever held, up to RATIO times the
window's own (LRN with k = 0, C = 256, size 2: up to 900 float64 units in y and 9300 in dx, where a direct sum
of ``size`` terms stays within a few).  A direct sum costs ``size`` terms a value, so wider windows keep the
sliding sums (size 64: 5x slower forward direct).  Float32 terms are exact in float64, so their sliding sums
lose nothing the output can show.
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
#: float64 windows up to this many channels are summed directly (see the module docstring): 1.2-1.4x the sliding
#: sums' time at size 5, 1.7-2.1x at 15
DIRECT_MAX_SIZE = 16
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
def _window(src, n, s0, m, lo, hi, C, S, ws, wa, kind, aux1, aux2):
    """Direct window sums at spatial positions s0..s0+m: ws[:m] = sum over channels lo..hi (clipped) of term(c'),
    wa[:m] = the sum of |term(c')|.  kind 0: x**2 (src = x); kind 1: dy * y / scale (src = dy, aux1 = y, aux2 =
    scale).  For blocks whose sliding sums went non-finite, and lanes whose sliding sum lost its precision."""
    for s in range(m):
        ws[s] = 0.0
        wa[s] = 0.0
    for cc in range(max(lo, 0), min(hi, C - 1) + 1):
        base = (n * C + cc) * S + s0
        a = src[base:base + m]
        b1 = aux1[base:base + m]
        b2 = aux2[base:base + m]
        for s in range(m):
            if kind == 0:
                v = np.float64(a[s])
                t = v * v
            else:
                t = np.float64(a[s]) * np.float64(b1[s]) / np.float64(b2[s])
            ws[s] += t
            wa[s] += abs(t)


@njit(**FAST)
def _resum_lost(src, n, s0, m, lo, hi, C, S, ws, wa, level, pk, lost, kind, aux1, aux2):
    """Sums again directly (into ws and wa) the lanes whose ``level`` (the sum of |terms|: ws in the forward, wa
    in the backward) fell below 1/RATIO of its peak pk, ``lost`` of the m, and restarts their peaks: the whole
    channel in one vectorised pass when many are lost (all-zero windows after a ReLU), else lane by lane."""
    if lost * 8.0 > m:
        _window(src, n, s0, m, lo, hi, C, S, ws, wa, kind, aux1, aux2)
        for s in range(m):
            pk[s] = wa[s]
        return
    for s in range(m):
        if pk[s] > RATIO * level[s]:
            _window(src, n, s0 + s, 1, lo, hi, C, S, ws[s:], wa[s:], kind, aux1, aux2)
            pk[s] = wa[s]


@njit(**FAST)
def _forward_units(x, y, scale, N, C, S, size, alpha, beta, k, u0, u1, ws, pw, pk, direct):
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
            if direct:
                _window(x, n, s0, m, c - before, c + after, C, S, ws, pw, 0, x, x)
            elif c + after < C:
                b_in = (n * C + c + after) * S + s0
                xi = x[b_in:b_in + m]
                for s in range(m):
                    v = np.float64(xi[s])
                    t = ws[s] + v * v
                    ws[s] = t
                    pk[s] = max(pk[s], t)
            if c - before - 1 >= 0 and not direct:
                b_out = (n * C + c - before - 1) * S + s0
                xo = x[b_out:b_out + m]
                lost = 0.0
                for s in range(m):
                    v = np.float64(xo[s])
                    t = ws[s] - v * v
                    ws[s] = t
                    lost += 1.0 if pk[s] > RATIO * t else 0.0
                if lost > 0.0:  # lanes whose sum fell far below its peak are summed again (pw: scratch here)
                    _resum_lost(x, n, s0, m, c - before, c + after, C, S, ws, pw, ws, pk, lost, 0, x, x)
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
                _window(x, n, s0, m, c - before, c + after, C, S, ws, pw, 0, x, x)
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
def _backward_units(dy, x, y, scale, dx, N, C, S, size, alpha, beta, u0, u1, ws, pw, wa, pk, direct):
    # dx[c] = dy[c] * scale[c]**-beta - 2 alpha beta / size * x[c] * sum over the channels c' whose window
    # holds c, [c - (size-1)//2, c + size//2], of dy[c'] * y[c'] / scale[c'] (= dy x scale**(-beta-1)).
    before = (size - 1) // 2
    after = size // 2
    coef = 2.0 * alpha * beta / size
    nb = (S + SBLOCK - 1) // SBLOCK
    over = 0.0  # positions whose stored scale is inf (returned: see local_response_norm_backward)
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
            if direct:
                _window(dy, n, s0, m, c - before, c + after, C, S, ws, wa, 1, y, scale)
            elif c + after < C:
                _add_t(dy, y, scale, (n * C + c + after) * S + s0, m, ws, wa, pk, 1.0)
            if c - before - 1 >= 0 and not direct:
                lost = _add_t(dy, y, scale, (n * C + c - before - 1) * S + s0, m, ws, wa, pk, -1.0)
                if lost > 0.0:  # see _forward_units
                    _resum_lost(dy, n, s0, m, c - before, c + after, C, S, ws, wa, wa, pk, lost, 1, y, scale)
            dyc = dy[base:base + m]
            sca = scale[base:base + m]
            xc = x[base:base + m]
            dxc = dx[base:base + m]
            for s in range(m):
                pw[s] = sca[s]
            _neg_pow(pw, m, beta)
            for s in range(m):
                t = ws[s]
                bad += (t + sca[s]) * 0.0  # NaN for a non-finite window sum, or an inf scale (float32 overflow)
                dxc[s] = np.float64(dyc[s]) * pw[s] - coef * np.float64(xc[s]) * t
        if bad != 0.0:
            for c in range(C):
                base = (n * C + c) * S + s0
                for s in range(m):
                    over += 1.0 if scale[base + s] == np.inf else 0.0
                _window(dy, n, s0, m, c - before, c + after, C, S, ws, wa, 1, y, scale)
                for s in range(m):
                    sc = np.float64(scale[base + s])
                    dx[base + s] = np.float64(dy[base + s]) * sc ** (-beta) - coef * np.float64(x[base + s]) * ws[s]
    return over


@njit(parallel=True, **JIT)
def _forward_par(x, y, scale, N, C, S, size, alpha, beta, k, direct, T):
    U = N * ((S + SBLOCK - 1) // SBLOCK)
    nch = min(U, T)
    for c in prange(nch):
        ws = np.empty(SBLOCK)
        pw = np.empty(SBLOCK)
        pk = np.empty(SBLOCK)
        _forward_units(x, y, scale, N, C, S, size, alpha, beta, k, c * U // nch, (c + 1) * U // nch, ws, pw, pk,
                       direct)


@njit(parallel=True, **JIT)
def _backward_par(dy, x, y, scale, dx, N, C, S, size, alpha, beta, direct, T):
    U = N * ((S + SBLOCK - 1) // SBLOCK)
    nch = min(U, T)
    over = np.zeros(nch)
    for c in prange(nch):
        ws = np.empty(SBLOCK)
        pw = np.empty(SBLOCK)
        wa = np.empty(SBLOCK)
        pk = np.empty(SBLOCK)
        over[c] = _backward_units(dy, x, y, scale, dx, N, C, S, size, alpha, beta, c * U // nch, (c + 1) * U // nch,
                                  ws, pw, wa, pk, direct)
    return over.sum()


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
        direct = x.dtype == np.float64 and size <= DIRECT_MAX_SIZE  # module docstring
        if T == 1:
            _forward_units(*args, 0, N * ((S + SBLOCK - 1) // SBLOCK), *np.empty((3, SBLOCK)), direct)
        else:
            _forward_par(*args, direct, T)
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
        direct = x.dtype == np.float64 and size <= DIRECT_MAX_SIZE  # module docstring
        if T == 1:
            over = _backward_units(*args, 0, N * ((S + SBLOCK - 1) // SBLOCK), *np.empty((4, SBLOCK)), direct)
        else:
            over = _backward_par(*args, direct, T)
        if over and x.dtype == np.float32:
            # a float32 scale overflowed (alpha/size * sum(x**2) > 3.4e38, |x| ~ 1e21): its scale**-beta terms came
            # out 0. The whole call again in float64 from x, where the scale is finite, rounded once into dx.
            x64 = x.astype(np.float64)
            y64, scale64 = local_response_norm_forward(x64, size, alpha=alpha, beta=beta, k=k)
            dx[...] = local_response_norm_backward(dy.astype(np.float64), x64, y64, scale64, size, alpha=alpha,
                                                   beta=beta, k=k)
    return dx
