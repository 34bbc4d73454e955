"""The channel engine shared by batch.py and group.py (batch, frozen, group and instance norm), both layouts.

A *segment* is the set of values one statistic covers: a channel (batch norm), a (sample, group) (group
norm), a (sample, channel) (instance norm).  Segment ``q`` starts at ``(q // qin) * qout + (q % qin) * qst``
and its value ``j`` lies at ``base + (j // inner) * outer + j % inner`` (see _reduce.cursor), which covers
channels-first (N, C, S) and channels-last (N, S, C) without copies.

Statistics are a two-stage reduction: blocks of (BX segments x BY lanes) reduce a chunk of SPLIT_ELEMENTS
values of each segment to (count, mean, M2) partials; a second kernel merges a segment's partials in order
with Chan's formula (deterministic), derives rstd and updates running statistics on the device; an
elementwise kernel normalises.  Channels-last segments whose values are C apart put consecutive segments along
x (coalesced), the others spread one segment over the whole block.  The backward reduces (sum dy,
sum dy*(x - mean)) per channel (batch) or per (sample, channel) (group, instance) the same way, combines them
into per-segment coefficients and per-channel dweight/dbias, then an elementwise kernel writes dx.
"""
from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda, float32, float64

from . import config
from ._arrays import dummy, empty, flat, launch, output, scratch, to_device
from ._reduce import (advance, chan, cursor, drstd_factor, effective_shift, group_moments, group_sum2, rstd_from_m2,
                      seg_shift, thread_moments32, thread_moments64)
from .config import MAX_THREADS


@cuda.jit(device=True, inline=True)
def lanes(contig_c, C, S):
    """A thread's start and step over channels and over positions, and their element strides, in the elementwise
    kernels' launch (:func:`elementwise_shape`): x threads run along the contiguous dimension (channels when
    ``contig_c``, else positions), y threads along the other, z blocks over samples.  Channel-dependent values are
    read once per (sample, channel) and no element's index is divided (64-bit divisions per element made these
    kernels compute-bound on an H100: about 320 instructions a value)."""
    tx = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    ty = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    nx = cuda.gridDim.x * cuda.blockDim.x
    ny = cuda.gridDim.y * cuda.blockDim.y
    if contig_c:
        return tx, nx, ty, ny, 1, C
    return ty, ny, tx, nx, S, 1


@functools.cache
def kernels(acc_name: str):
    acc = float32 if acc_name == "float32" else float64
    acc64 = acc_name == "float64"  # a closure constant: picks the moments function at compile time

    @cuda.jit(cache=True)
    def seg_moments(x, Q, qin, qout, qst, cnt, inner, outer, chunk, algo, part):
        sn = cuda.shared.array(MAX_THREADS, float64)
        sm = cuda.shared.array(MAX_THREADS, float64)
        sq = cuda.shared.array(MAX_THREADS, float64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        q = cuda.blockIdx.x * cuda.blockDim.x + tx
        k = cuda.blockIdx.y
        lo = k * chunk
        hi = min(lo + chunk, cnt)
        n = float64(0.0)
        m = float64(0.0)
        m2 = float64(0.0)
        k0 = float64(0.0)
        if q < Q:
            base = (q // qin) * qout + (q % qin) * qst
            k0 = effective_shift(algo, float64(acc(seg_shift(x, base, inner, outer, cnt))))
            if acc64:
                n, m, m2 = thread_moments64(x, base, inner, outer, lo + ty, hi, cuda.blockDim.y, algo, k0)
            else:
                n, m, m2 = thread_moments32(x, base, inner, outer, lo + ty, hi, cuda.blockDim.y, algo, k0)
        n, m, m2 = group_moments(sn, sm, sq, tx, cuda.blockDim.y, ty, n, m, m2)
        if ty == 0 and q < Q:  # the mean relative to the segment's k0, stored beside it for seg_finish
            o = (k * Q + q) * 4
            part[o] = n
            part[o + 1] = m
            part[o + 2] = m2
            part[o + 3] = k0

    @cuda.jit(cache=True)
    def seg_finish(part, nsplit, Q, cnt, corr, eps, eps_code, mean, rstd, m2_out, rm, rv, has_running, momentum):
        """Merge a segment's partials (x threads: segments; y lanes: lane l merges splits l, l + lanes, ... in
        order, then the lanes' tree: a fixed order); rstd; the running-statistics update (batch norm).  One
        thread merging all 256 splits in turn took 163 us on an H100."""
        sn = cuda.shared.array(MAX_THREADS, float64)
        sm = cuda.shared.array(MAX_THREADS, float64)
        sq = cuda.shared.array(MAX_THREADS, float64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        q0 = cuda.blockIdx.x * cuda.blockDim.x
        while q0 < Q:  # uniform across the block: group_moments synchronises
            q = q0 + tx
            n = float64(0.0)
            m = float64(0.0)
            m2 = float64(0.0)
            if q < Q:
                k = ty
                while k < nsplit:
                    o = (k * Q + q) * 4
                    n, m, m2 = chan(n, m, m2, part[o], part[o + 1], part[o + 2])
                    k += cuda.blockDim.y
            n, m, m2 = group_moments(sn, sm, sq, tx, cuda.blockDim.y, ty, n, m, m2)
            if ty == 0 and q < Q:
                m = part[q * 4 + 3] + m  # the segment's k0 (every split stored the same) + the relative mean
                mean[q] = m
                m2_out[q] = m2
                rstd[q] = rstd_from_m2(m2, cnt, corr, eps, eps_code)
                if has_running:
                    rm[q] = (1.0 - momentum) * float64(rm[q]) + momentum * m
                    rv[q] = (1.0 - momentum) * float64(rv[q]) + momentum * (m2 / float64(cnt - 1))
            q0 += cuda.gridDim.x * cuda.blockDim.x

    @cuda.jit(cache=True)
    def instance_running(mean, m2, N, C, S, rm, rv, momentum):
        """PyTorch's instance-norm running update: batch averages of the per-instance mean and unbiased var."""
        for c in range(cuda.grid(1), C, cuda.gridsize(1)):
            sm = float64(0.0)
            sv = float64(0.0)
            for n in range(N):
                sm += mean[n * C + c]
                sv += m2[n * C + c] / float64(S - 1)
            rm[c] = (1.0 - momentum) * float64(rm[c]) + momentum * (sm / N)
            rv[c] = (1.0 - momentum) * float64(rv[c]) + momentum * (sv / N)

    @cuda.jit(cache=True)
    def eval_stats(rm, rv, eps, eps_code, total, mean, rstd):
        """Running statistics as constants: mean/rstd per channel, repeated over samples (``total`` = N*C)."""
        C = rm.size
        for i in range(cuda.grid(1), total, cuda.gridsize(1)):
            c = i % C
            mean[i] = float64(rm[c])
            rstd[i] = rstd_from_m2(float64(rv[c]), 1, 0, eps, eps_code)

    @cuda.jit(cache=True)
    def normalize(x, y, mean, rstd, w, has_w, b, has_b, N, C, S, contig_c, qn, Cg):
        c0, cstep, s0, sstep, cstr, sstr = lanes(contig_c, C, S)
        n = cuda.blockIdx.z
        while n < N:
            c = c0
            while c < C:
                q = n * qn + c // Cg
                ma = acc(mean[q])
                ra = acc(rstd[q])
                wa = acc(w[c]) if has_w else acc(1.0)
                ba = acc(b[c]) if has_b else acc(0.0)
                base = n * C * S + c * cstr
                s = s0
                while s < S:
                    i = base + s * sstr
                    v = (acc(x[i]) - ma) * ra
                    if has_w:
                        v *= wa
                    if has_b:
                        v += ba
                    y[i] = v
                    s += sstep
                c += cstep
            n += cuda.gridDim.z

    @cuda.jit(cache=True)
    def seg_sums(dy, x, mean, P, qin, qout, qst, cnt, inner, outer, chunk, C, qn, Cg, part):
        """Per sum-segment p (a channel, or a (sample, channel)): partial sum dy and sum dy*(x - mean)."""
        sa = cuda.shared.array(MAX_THREADS, float64)
        sb = cuda.shared.array(MAX_THREADS, float64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        p = cuda.blockIdx.x * cuda.blockDim.x + tx
        k = cuda.blockIdx.y
        lo = k * chunk
        hi = min(lo + chunk, cnt)
        a = acc(0.0)
        s = acc(0.0)
        if p < P:
            base = (p // qin) * qout + (p % qin) * qst
            m = acc(mean[(p // C) * qn + (p % C) // Cg])
            step = cuda.blockDim.y
            ra, rb, da, db = cursor(lo + ty, inner, step)
            j = lo + ty
            while j < hi:
                i = base + ra * outer + rb
                ra, rb = advance(ra, rb, da, db, inner)
                j += step
                g = acc(dy[i])
                a += g
                s += g * (acc(x[i]) - m)
        A, S = group_sum2(sa, sb, tx, cuda.blockDim.y, ty, float64(a), float64(s))
        if ty == 0 and p < P:
            o = (k * P + p) * 2
            part[o] = A
            part[o + 1] = S

    @cuda.jit(cache=True)
    def sums_finish(part, nsplit, P, db, ds):
        """A sum-segment's partial sums, in the fixed order of seg_finish."""
        sa = cuda.shared.array(MAX_THREADS, float64)
        sb = cuda.shared.array(MAX_THREADS, float64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        p0 = cuda.blockIdx.x * cuda.blockDim.x
        while p0 < P:
            p = p0 + tx
            a = float64(0.0)
            s = float64(0.0)
            if p < P:
                k = ty
                while k < nsplit:
                    a += part[(k * P + p) * 2]
                    s += part[(k * P + p) * 2 + 1]
                    k += cuda.blockDim.y
            a, s = group_sum2(sa, sb, tx, cuda.blockDim.y, ty, a, s)
            if ty == 0 and p < P:
                db[p] = a
                ds[p] = s
            p0 += cuda.gridDim.x * cuda.blockDim.x

    @cuda.jit(cache=True)
    def seg_coef(db, ds, w, has_w, rstd, Q, C, G, Cg, nseg, training, corr, eps, eps_code, mg, kq):
        """Per statistics segment q = n*G + g: mean of g = dy*w and the coefficient of xc in dx."""
        for q in range(cuda.grid(1), Q, cuda.gridsize(1)):
            A = float64(0.0)
            B = float64(0.0)
            p0 = (q // G) * C + (q % G) * Cg
            for i in range(Cg):
                wc = float64(w[(q % G) * Cg + i]) if has_w else float64(1.0)
                A += wc * db[p0 + i]
                B += wc * ds[p0 + i]
            if training:
                mg[q] = A / float64(nseg)
                kq[q] = drstd_factor(rstd[q], B, nseg, corr, eps, eps_code)
            else:
                mg[q] = 0.0
                kq[q] = 0.0

    @cuda.jit(cache=True)
    def chan_grads(db, ds, rstd, N, C, qn, Cg, dw, want_w, dbias, want_b):
        for c in range(cuda.grid(1), C, cuda.gridsize(1)):
            a = float64(0.0)
            s = float64(0.0)
            for n in range(N):
                a += db[n * C + c]
                s += ds[n * C + c] * rstd[n * qn + c // Cg]
            if want_w:
                dw[c] = s
            if want_b:
                dbias[c] = a

    @cuda.jit(cache=True)
    def dx_kernel(dy, x, mean, rstd, mg, kq, w, has_w, N, C, S, contig_c, qn, Cg, training, dx):
        """Training: rstd*(g - mean g) + kq*(x - mean).  Evaluation: rstd*g only, x and mean never read (a NaN
        or Inf there must not reach dx through 0 * NaN)."""
        c0, cstep, s0, sstep, cstr, sstr = lanes(contig_c, C, S)
        n = cuda.blockIdx.z
        while n < N:
            c = c0
            while c < C:
                q = n * qn + c // Cg
                ra = acc(rstd[q])
                wa = acc(w[c]) if has_w else acc(1.0)
                ma = acc(mean[q]) if training else acc(0.0)
                ga = acc(mg[q]) if training else acc(0.0)
                ka = acc(kq[q]) if training else acc(0.0)
                base = n * C * S + c * cstr
                s = s0
                while s < S:
                    i = base + s * sstr
                    g = acc(dy[i])
                    if has_w:
                        g *= wa
                    if training:
                        dx[i] = ra * (g - ga) + ka * (acc(x[i]) - ma)
                    else:
                        dx[i] = ra * g
                    s += sstep
                c += cstep
            n += cuda.gridDim.z

    @cuda.jit(cache=True)
    def frozen_forward(x, w, b, rm, rv, eps, N, C, S, contig_c, y):
        c0, cstep, s0, sstep, cstr, sstr = lanes(contig_c, C, S)
        n = cuda.blockIdx.z
        while n < N:
            c = c0
            while c < C:
                scale = float64(w[c]) / math.sqrt(float64(rv[c]) + eps)
                center = float64(rm[c])
                shift = float64(b[c])
                base = n * C * S + c * cstr
                s = s0
                while s < S:
                    i = base + s * sstr
                    # not folded: float64 data near rm lose log10(offset/spread) digits in x*scale + (b - rm*scale);
                    # the CPU folds float32 data only (exact enough there) for speed; this is bandwidth-bound here
                    y[i] = (float64(x[i]) - center) * scale + shift
                    s += sstep
                c += cstep
            n += cuda.gridDim.z

    @cuda.jit(cache=True)
    def frozen_backward(dy, w, rv, eps, N, C, S, contig_c, dx):
        c0, cstep, s0, sstep, cstr, sstr = lanes(contig_c, C, S)
        n = cuda.blockIdx.z
        while n < N:
            c = c0
            while c < C:
                scale = float64(w[c]) / math.sqrt(float64(rv[c]) + eps)
                base = n * C * S + c * cstr
                s = s0
                while s < S:
                    i = base + s * sstr
                    dx[i] = float64(dy[i]) * scale
                    s += sstep
                c += cstep
            n += cuda.gridDim.z

    launched = {k: v for k, v in locals().items() if hasattr(v, "py_func")}
    return SimpleNamespace(module=__name__, acc=acc_name, **launched)


# ------------------------------------------------------------------------------------------- geometry
class Geometry(SimpleNamespace):
    """x as (N, C, S) (axis=1) or (N, S, C) (axis=-1), and G statistic groups of Cg channels per sample
    (batch norm: one segment per channel across the batch)."""


def geometry(shape, axis, G=None):
    N = shape[0]
    # not shape[-1]: the simulator's device array shapes refuse negative indices
    C = shape[1] if axis == 1 else shape[len(shape) - 1]
    S = math.prod(shape) // (N * C) if N * C else 0
    g = Geometry(N=N, C=C, S=S, axis=axis)
    if G is None:  # batch norm: segment c over (n, s)
        g.G, g.Cg, g.qn, g.Q = C, 1, 0, C
        if axis == 1:
            g.seg = (C, 0, S, N * S, S, C * S)
        else:
            g.seg = (C, 0, 1, N * S, 1, C)
        g.sums, g.P, g.Nsum = g.seg, C, 1
    else:
        Cg = C // G
        g.G, g.Cg, g.qn, g.Q = G, Cg, G, N * G
        if axis == 1:
            g.seg = (g.Q, 0, Cg * S, Cg * S, Cg * S, 0)
            g.sums = (N * C, 0, S, S, S, 0)
        else:
            g.seg = (G, S * C, Cg, S * Cg, Cg, C)
            g.sums = (C, S * C, 1, S, 1, C)
        g.P, g.Nsum = N * C, N
    return g


def _launch_shape(Q, seg):
    """(grid, block, nsplit, chunk) of a two-stage reduction over Q segments of ``seg``'s count."""
    qin, qout, qst, cnt, inner, outer = seg
    tpb = config.THREADS_PER_BLOCK
    if tpb > config.MAX_THREADS:
        raise ValueError(f"config.THREADS_PER_BLOCK={tpb} exceeds config.MAX_THREADS={config.MAX_THREADS}")
    bx = max(1, min(config.CHANNEL_TILE, Q, tpb)) if inner == 1 and outer > 1 else 1
    by = max(1, tpb // bx)
    gx = -(-Q // bx)
    # enough splits to fill the GPU: channels-last batch norm on (64, 128, 56, 56) had 4 x 13 blocks (277 us on an
    # H100 against 79 us for channels-first's 128 x 13)
    nsplit = max(1, min(65535, cnt, max(-(-cnt // config.SPLIT_ELEMENTS), -(-config.MIN_REDUCTION_BLOCKS // gx))))
    chunk = -(-cnt // nsplit)
    nsplit = -(-cnt // chunk) if cnt else 1  # no empty trailing split
    return (gx, nsplit), (bx, by), nsplit, chunk


def _grid(n):
    tpb = config.THREADS_PER_BLOCK
    return max(1, min(config.MAX_GRID, -(-n // tpb))), tpb


def _finish_shape(Q, nsplit):
    """(grid, block) of seg_finish/sums_finish: up to a block's worth of lanes per segment along y."""
    tpb = config.THREADS_PER_BLOCK
    by = max(1, min(tpb, nsplit))
    bx = max(1, tpb // by)
    return max(1, min(config.MAX_GRID, -(-Q // bx))), (bx, by)


def elementwise_shape(g):
    """(grid, block, contig_c) of the elementwise kernels (see :func:`lanes`): the contiguous dimension (channels
    for channels-last, or when there is one position per channel; else positions) on x threads, the other on y,
    samples on z blocks, and ``ELEMENTWISE_ITEMS`` positions per thread."""
    contig_c = g.axis != 1 or g.S == 1
    tpb = config.THREADS_PER_BLOCK
    inner = g.C if contig_c else g.S
    # not rounded up to a warp: with bx = inner the block's threads still cover consecutive addresses (y rows are
    # inner apart), so a short contiguous dimension (3 channels-last channels, 3 x 3 positions) keeps every lane
    bx = max(1, min(tpb, inner))
    by = max(1, tpb // bx)
    items = config.ELEMENTWISE_ITEMS
    if contig_c:
        gx, gy = -(-g.C // bx), -(-g.S // (by * items))
    else:
        gx, gy = -(-g.S // (bx * items)), -(-g.C // by)
    grid = tuple(max(1, min(config.MAX_GRID, v)) for v in (gx, gy, g.N))
    return grid, (bx, by), contig_c



def _opt(a, dtype):
    return (flat(a), True) if a is not None else (dummy(dtype), False)


def moments(ks, xd, g, opts, eps, rm=None, rv=None, momentum=0.0):
    """(mean, rstd, m2) float64 device arrays of the Q segments; running statistics updated when given."""
    if xd.size == 0:  # empty segments: NaN statistics (as the reference), nothing to launch
        nan = np.full(g.Q, np.nan)
        return to_device(nan), to_device(nan), to_device(nan)
    grid, block, nsplit, chunk = _launch_shape(g.Q, g.seg)
    part = scratch("moment_partials", nsplit * g.Q * 4, np.float64)  # (count, mean - k0, M2, k0) per split and segment
    qin, qout, qst, cnt, inner, outer = g.seg
    launch(ks, "seg_moments", grid, block, xd, g.Q, qin, qout, qst, cnt, inner, outer, chunk, opts.variance_code,
           part)
    mean, rstd, m2 = empty(g.Q, np.float64), empty(g.Q, np.float64), empty(g.Q, np.float64)
    has_running = rm is not None and g.qn == 0
    launch(ks, "seg_finish", *_finish_shape(g.Q, nsplit), part, nsplit, g.Q, cnt, opts.correction, float(eps),
           opts.eps_code, mean, rstd, m2, rm if has_running else dummy(np.float64),
           rv if has_running else dummy(np.float64), has_running, float(momentum) if has_running else 0.0)
    return mean, rstd, m2


def normalize(ks, xd, y, g, mean, rstd, weight, bias):
    if xd.size == 0:
        return
    w, has_w = _opt(weight, xd.dtype)
    b, has_b = _opt(bias, xd.dtype)
    grid, block, contig_c = elementwise_shape(g)
    launch(ks, "normalize", grid, block, xd, y, mean, rstd, w, has_w, b, has_b, g.N, g.C, g.S, contig_c, g.qn, g.Cg)


def backward(ks, dyd, xd, g, mean, rstd, weight, want_w, want_b, training, opts, eps, dx):
    """dx written into ``dx``; returns (dweight, dbias) device arrays of dy's dtype (or None)."""
    if xd.size == 0:
        zero = np.zeros(g.C, dyd.dtype)
        return (to_device(zero) if want_w else None), (to_device(zero) if want_b else None)
    grid, block, nsplit, chunk = _launch_shape(g.P, g.sums)
    part = scratch("sum_partials", nsplit * g.P * 2, np.float64)
    qin, qout, qst, cnt, inner, outer = g.sums
    launch(ks, "seg_sums", grid, block, dyd, xd, mean, g.P, qin, qout, qst, cnt, inner, outer, chunk, g.C, g.qn,
           g.Cg, part)
    db, ds = scratch("db", g.P, np.float64), scratch("ds", g.P, np.float64)
    launch(ks, "sums_finish", *_finish_shape(g.P, nsplit), part, nsplit, g.P, db, ds)
    w, has_w = _opt(weight, dyd.dtype)
    mg, kq = scratch("mg", g.Q, np.float64), scratch("kq", g.Q, np.float64)
    nseg = g.seg[3]
    launch(ks, "seg_coef", *_grid(g.Q), db, ds, w, has_w, rstd, g.Q, g.C, g.G, g.Cg, nseg, bool(training),
           opts.correction, float(eps), opts.eps_code, mg, kq)
    dw = empty(g.C, dyd.dtype) if want_w else None  # summed in float64, stored in the input dtype
    dbias = empty(g.C, dyd.dtype) if want_b else None
    none = dummy(dyd.dtype)
    launch(ks, "chan_grads", *_grid(g.C), db, ds, rstd, g.Nsum, g.C, g.qn, g.Cg, dw if want_w else none, want_w,
           dbias if want_b else none, want_b)
    grid, block, contig_c = elementwise_shape(g)
    launch(ks, "dx_kernel", grid, block, dyd, xd, mean, rstd, mg, kq, w, has_w, g.N, g.C, g.S, contig_c, g.qn, g.Cg,
           bool(training), dx)
    return dw, dbias


def out_array(out, x, host, name="out"):
    return output(out, x.shape, x.dtype, host, name)
