"""The row-wise engine shared by layer.py, rms.py and fused.py (the CUDA twins of cpu/layer.py, cpu/rms.py,
cpu/fused.py): one block per row (grid-stride over rows), threads stride over the row's columns.

Forward: optional fused residual add (``h = x + alpha * residual``, written once by ``residual_add``, which also
keeps the unrounded sum in float64 for the statistics and y), per-thread moments with the
chosen variance algorithm merged over the block with Chan's formula (layer norm) or a block sum of squares
(RMS norm), then one multiply-add per element.  Backward: the two row sums (sum g, sum g*xc) by block
reduction, dx in a second sweep of the row, and per-block dweight/dbias partial rows (each column owned by one
thread, so no atomics) that a second kernel sums in a fixed order: deterministic.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
from numba import cuda, float32, float64

from . import config
from ._arrays import dummy, empty, flat, launch, on_host, output, result, scratch, to_device
from ._reduce import (drstd_factor, effective_shift, group_moments, row_sum2, rstd_from_m2, seg_shift,
                      thread_moments32, thread_moments64)
from .config import MAX_THREADS, ROW_PARTIALS


@functools.cache
def kernels(acc_name: str):
    acc = float32 if acc_name == "float32" else float64
    acc64 = acc_name == "float64"  # a closure constant: picks the moments function at compile time

    @cuda.jit(cache=True)
    def residual_add(x, res, alpha, h, hw):
        """The fused add: ``h = x + alpha * residual`` rounded to h's dtype (the output), and unrounded in ``hw``
        (float64), from which the forward takes the statistics and y, as the CPU backend and the reference do
        (y from the rounded h was off by up to half an ulp of h times rstd: 1.7e5 float32 units at offset 1e6,
        measured on an H100).  In float64 whatever the accumulator: h is an output, not a statistic."""
        i = cuda.grid(1)
        while i < x.size:
            v = float64(x[i]) + float64(alpha) * float64(res[i])
            h[i] = v
            hw[i] = v
            i += cuda.gridsize(1)

    @cuda.jit(cache=True)
    def forward(src, w, has_w, b, has_b, D, center, algo, corr, eps, eps_code, y, mean_out, rstd_out):
        sn = cuda.shared.array(MAX_THREADS, float64)
        sm = cuda.shared.array(MAX_THREADS, float64)
        sq = cuda.shared.array(MAX_THREADS, float64)
        t = cuda.threadIdx.x
        L = cuda.blockDim.x
        row = cuda.blockIdx.x
        while row < rstd_out.size:
            base = row * D
            if center:
                k0 = effective_shift(algo, float64(acc(seg_shift(src, base, D, 0, D))))
                if acc64:
                    n, m, q = thread_moments64(src, base, D, 0, t, D, L, algo, k0)
                else:
                    n, m, q = thread_moments32(src, base, D, 0, t, D, L, algo, k0)
                n, mean, q = group_moments(sn, sm, sq, 0, L, t, n, m, q)  # the mean relative to k0
                mean = k0 + mean
            else:
                s = acc(0.0)
                j = t
                while j < D:
                    v = acc(src[base + j])
                    s += v * v
                    j += L
                q, _ = row_sum2(sn, sm, float64(s), float64(0.0))
                mean = float64(0.0)
            r = rstd_from_m2(q, D, corr, eps, eps_code)
            if t == 0:
                mean_out[row] = mean
                rstd_out[row] = r
            ma = acc(mean)
            ra = acc(r)
            j = t
            while j < D:
                v = (acc(src[base + j]) - ma) * ra
                if has_w:
                    v *= acc(w[j])
                if has_b:
                    v += acc(b[j])
                y[base + j] = v
                j += L
            row += cuda.gridDim.x

    @cuda.jit(cache=True)
    def backward(dy, x, D, mean, rstd, w, has_w, center, corr, eps, eps_code, dh, has_dh, alpha, has_res, dx,
                 dres, pw, want_w, pb, want_b):
        sa = cuda.shared.array(MAX_THREADS, float64)
        sb = cuda.shared.array(MAX_THREADS, float64)
        t = cuda.threadIdx.x
        L = cuda.blockDim.x
        blk = cuda.blockIdx.x
        # dweight/dbias partials of this thread's columns: in per-thread local arrays while they fit (short
        # rows), else read-modify-written in this block's partial row of pw/pb (column j owned by one thread)
        lw = cuda.local.array(ROW_PARTIALS, float64)
        lb = cuda.local.array(ROW_PARTIALS, float64)
        local = D <= L * ROW_PARTIALS
        for kk in range(ROW_PARTIALS):
            lw[kk] = 0.0
            lb[kk] = 0.0
        if not local:
            j = t
            while j < D:
                if want_w:
                    pw[blk * D + j] = 0.0
                if want_b:
                    pb[blk * D + j] = 0.0
                j += L
        row = blk
        while row < rstd.size:
            base = row * D
            m = acc(mean[row]) if center else acc(0.0)
            r = rstd[row]
            ra = acc(r)
            a = acc(0.0)
            c = acc(0.0)
            kk = 0
            j = t
            while j < D:
                xc = acc(x[base + j]) - m
                g = acc(dy[base + j])
                if want_w:
                    if local:
                        lw[kk] += float64(g * xc * ra)
                    else:
                        pw[blk * D + j] += float64(g * xc * ra)
                if want_b:
                    if local:
                        lb[kk] += float64(g)
                    else:
                        pb[blk * D + j] += float64(g)
                kk += 1
                if has_w:
                    g *= acc(w[j])
                a += g
                c += g * xc
                j += L
            A, S = row_sum2(sa, sb, float64(a), float64(c))
            k = acc(drstd_factor(r, S, D, corr, eps, eps_code))
            mg = acc(A / D) if center else acc(0.0)
            j = t
            while j < D:
                g = acc(dy[base + j])
                if has_w:
                    g *= acc(w[j])
                v = ra * (g - mg) + k * (acc(x[base + j]) - m)
                if has_dh:
                    v += acc(dh[base + j])
                dx[base + j] = v
                if has_res:
                    dres[base + j] = acc(alpha) * v
                j += L
            row += cuda.gridDim.x
        if local:
            kk = 0
            j = t
            while j < D:
                if want_w:
                    pw[blk * D + j] = lw[kk]
                if want_b:
                    pb[blk * D + j] = lb[kk]
                kk += 1
                j += L

    @cuda.jit(cache=True)
    def colsum(p, nblocks, D, out):
        """out[j] = sum over blocks k of p[k, j] in a fixed order (deterministic): lane y of a block sums the
        partial rows k = y, y + blockDim.y, ..., then lane 0 adds the blockDim.y sums in order.  (One thread per
        column summing all 264 rows serially was latency-bound: 82 us of a 16384 x 2048 backward on an H100.)"""
        sh = cuda.shared.array(MAX_THREADS, float64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        bx = cuda.blockDim.x
        by = cuda.blockDim.y
        for j0 in range(cuda.blockIdx.x * bx, D, cuda.gridDim.x * bx):  # uniform across the block: it syncs
            j = j0 + tx
            s = float64(0.0)
            if j < D:
                for k in range(ty, nblocks, by):
                    s += p[k * D + j]
            sh[ty * bx + tx] = s
            cuda.syncthreads()
            if ty == 0 and j < D:
                t = float64(0.0)
                for r in range(by):
                    t += sh[r * bx + tx]
                out[j] = t
            cuda.syncthreads()

    return SimpleNamespace(module=__name__, acc=acc_name, residual_add=residual_add, forward=forward,
                           backward=backward, colsum=colsum)


def _block(D=None):
    """Threads per row block: THREADS_PER_BLOCK, or fewer whole warps for a short row (idle threads cost)."""
    tpb = config.THREADS_PER_BLOCK
    if not tpb <= config.MAX_THREADS:
        raise ValueError(f"config.THREADS_PER_BLOCK={tpb} exceeds config.MAX_THREADS={config.MAX_THREADS}")
    from . import simulator

    warp = 1 if simulator() else 32
    if tpb % warp:
        raise ValueError(f"config.THREADS_PER_BLOCK={tpb}: must be a multiple of 32 on a GPU (warp shuffles)")
    if D is not None:
        tpb = min(tpb, -(-D // warp) * warp)
    return tpb


def rows_forward(x, D, weight, bias, *, eps, opts, center, out=None, residual=None, alpha=1.0, h_out=None):
    """(y, h|None, mean (R,), rstd (R,)) for x viewed as rows of D values; device arrays in, device arrays out."""
    host = on_host(x)
    xd = to_device(x, "x")
    R = x.size // D
    ks = kernels(opts.accumulator(x.dtype).name)
    y = output(out, x.shape, x.dtype, host)
    fused = residual is not None
    h = output(h_out, x.shape, x.dtype, host, "h_out") if fused else None
    mean, rstd = empty(R, np.float64), empty(R, np.float64)
    wd, bd = to_device(weight, "weight"), to_device(bias, "bias")
    none = dummy(x.dtype)
    if R:
        src = flat(xd)
        if fused:  # the forward below reads the unrounded sum (float64), not the stored h
            src = scratch("h64", x.size, np.float64)
            launch(ks, "residual_add", *_grid(x.size), flat(xd), flat(to_device(residual, "residual")),
                   float(alpha), flat(h), src)
        launch(ks, "forward", min(R, config.MAX_GRID), _block(D), src, flat(wd) if wd is not None else none,
               wd is not None, flat(bd) if bd is not None else none, bd is not None, D, center, opts.variance_code,
               opts.correction, float(eps), opts.eps_code, flat(y), mean, rstd)
    return y, h, mean, rstd


def rows_backward(dy, x, D, mean, rstd, weight, want_bias, *, eps, opts, center, dx_out=None, dh=None,
                  alpha=None, dresidual_out=None):
    """(dx, dresidual|None, dweight|None, dbias|None) as device arrays of dy's dtype (sums taken in float64);
    device ``dx_out``/``dresidual_out`` are written directly (checked before the launch)."""
    host = on_host(dy)
    dyd, xd = to_device(dy, "dy"), to_device(x, "x", dtype=dy.dtype)
    R = dy.size // D
    ks = kernels(opts.accumulator(dy.dtype).name)
    dx = output(dx_out, dy.shape, dy.dtype, host, "dx_out")
    fused = alpha is not None
    dres = output(dresidual_out, dy.shape, dy.dtype, host, "dresidual_out") if fused else None
    none = dummy(dy.dtype)
    wd = to_device(weight, "weight")
    rd = to_device(rstd, "rstd", dtype=np.float64)
    md = to_device(mean, "mean", dtype=np.float64) if center else rd
    nblk = max(1, min(R, config.BACKWARD_ROW_BLOCKS))
    want_w = weight is not None
    pw = scratch("pw", nblk * D, np.float64) if want_w else dummy(np.float64)
    pb = scratch("pb", nblk * D, np.float64) if want_bias else dummy(np.float64)
    if R:
        launch(ks, "backward", nblk, _block(D), flat(dyd), flat(xd), D, flat(md), flat(rd),
               flat(wd) if want_w else none, want_w, center, opts.correction, float(eps), opts.eps_code,
               flat(to_device(dh, "dh")) if dh is not None else none, dh is not None,
               float(alpha if fused else 0.0), fused, flat(dx), flat(dres) if fused else none,
               pw, want_w, pb, want_bias)
    grads = []
    for want, p in ((want_w, pw), (want_bias, pb)):
        if not want:
            grads.append(None)
            continue
        g = empty(D, dy.dtype)  # summed in float64, stored in the input dtype
        launch(ks, "colsum", *_colsum_shape(D), p, nblk if R else 0, D, g)
        grads.append(g)
    return dx, dres, grads[0], grads[1]


def _grid(n):
    tpb = _block()
    return max(1, min(config.MAX_GRID, (n + tpb - 1) // tpb)), tpb


def _colsum_shape(D):
    """(grid, block) of colsum: a warp's width of columns per block, the rest of the block along the partials."""
    tpb = _block()
    bx = min(32, tpb)
    return max(1, min(config.MAX_GRID, -(-D // bx))), (bx, max(1, tpb // bx))


def host_or_device(dev, host, shape, dtype=None, out=None):
    """Reshape a device result and bring it home when the caller passed NumPy arrays (casting param grads)."""
    if dev is None:
        return None
    if out is not None:
        return result(dev, host, out)
    if host:
        a = dev.copy_to_host().reshape(shape)
        return a.astype(dtype) if dtype is not None else a
    if dtype is not None and np.dtype(dev.dtype) != np.dtype(dtype):
        dev = to_device(dev.copy_to_host().astype(dtype))
    return dev.reshape(shape) if tuple(dev.shape) != tuple(shape) else dev
