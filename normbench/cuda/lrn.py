"""Local response norm across channels (PyTorch semantics), numba.cuda kernels; twin of normbench/cpu/lrn.py.
The channel norms' elementwise launch (_channels.lanes: positions along x threads and channels along y, or
channels along x where there is one position, samples along z; no per-element index division); the channel
window is summed from global memory (neighbouring threads read neighbouring addresses of the same channels, so
the window's re-reads hit the cache)."""
from __future__ import annotations

import functools
import math
from types import SimpleNamespace

from numba import cuda, float32, float64

from ._arrays import flat, launch, on_host, output, to_device
from ._channels import elementwise_shape, geometry, lanes
from ._rows import host_or_device


@functools.cache
def kernels(acc_name: str):
    acc = float32 if acc_name == "float32" else float64

    @cuda.jit(device=True, inline=True)
    def window_scale(x, base, c, C, S, size, alpha, k):
        """k + alpha/size * sum of x**2 over channel c's window, in the accumulator's precision."""
        s = acc(0.0)
        for j in range(max(0, c - size // 2), min(C, c + (size - 1) // 2 + 1)):
            v = acc(x[base + j * S])
            s += v * v
        return acc(k) + acc(alpha) / acc(size) * s

    @cuda.jit(device=True, inline=True)
    def stored_scale(scale, x, o, base, c, C, S, size, alpha, k):
        """scale[o] (channel c of the position whose channel 0 is at ``base``), or where it overflowed x's dtype
        (float32 data, |x| ~ 1e21) the window's scale again."""
        sc = acc(scale[o])
        if math.isinf(sc):
            sc = window_scale(x, base, c, C, S, size, alpha, k)
        return sc

    @cuda.jit(cache=True)
    def forward(x, N, C, S, contig_c, size, alpha, beta, k, y, scale):
        c0, cstep, s0, sstep, cstr, sstr = lanes(contig_c, C, S)
        n = cuda.blockIdx.z
        while n < N:
            c = c0
            while c < C:
                s = s0
                while s < S:
                    base = n * C * S + s  # channel 0 of this position
                    i = base + c * S
                    sc = window_scale(x, base, c, C, S, size, alpha, k)
                    scale[i] = sc
                    y[i] = acc(x[i]) * math.pow(sc, -acc(beta))
                    s += sstep
                c += cstep
            n += cuda.gridDim.z

    @cuda.jit(cache=True)
    def backward(dy, x, y, scale, N, C, S, contig_c, size, alpha, beta, k, dx):
        """dx = dy * scale^-beta - 2 alpha beta / size * x * sum over the channels whose window holds c of
        dy * y / scale (= dy * x * scale^(-beta-1))."""
        before = (size - 1) // 2  # the transposed window
        after = size // 2
        c0, cstep, s0, sstep, cstr, sstr = lanes(contig_c, C, S)
        n = cuda.blockIdx.z
        while n < N:
            c = c0
            while c < C:
                s = s0
                while s < S:
                    base = n * C * S + s
                    i = base + c * S
                    t = acc(0.0)
                    for j in range(max(0, c - before), min(C, c + after + 1)):
                        o = base + j * S
                        t += acc(dy[o]) * acc(y[o]) / stored_scale(scale, x, o, base, j, C, S, size, alpha, k)
                    dx[i] = (acc(dy[i]) * math.pow(stored_scale(scale, x, i, base, c, C, S, size, alpha, k),
                                                   -acc(beta))
                             - acc(2.0) * acc(alpha) * acc(beta) / acc(size) * acc(x[i]) * t)
                    s += sstep
                c += cstep
            n += cuda.gridDim.z

    return SimpleNamespace(module=__name__, acc=acc_name, forward=forward, backward=backward)


def _geometry(x):
    """(N, C, S) with channels first: LRN's channels are axis 1 (its launch is the channel norms' elementwise one)."""
    return geometry(x.shape, 1)


def local_response_norm_forward(x, size, *, alpha, beta, k, opts, out=None):
    host = on_host(x)
    ks = kernels(opts.accumulator(x.dtype).name)
    y = output(out, x.shape, x.dtype, host)
    scale = output(None, x.shape, x.dtype, host)
    g = _geometry(x)
    xd = flat(to_device(x, "x"))
    if x.size:
        grid, block, contig_c = elementwise_shape(g)
        launch(ks, "forward", grid, block, xd, g.N, g.C, g.S, contig_c, size, float(alpha), float(beta), float(k),
               flat(y), flat(scale))
    return host_or_device(y, host, x.shape, out=out), host_or_device(scale, host, x.shape)


def local_response_norm_backward(dy, x, y, scale, size, *, alpha, beta, k, opts, dx_out=None):
    host = on_host(dy)
    ks = kernels(opts.accumulator(dy.dtype).name)
    dx = output(dx_out, dy.shape, dy.dtype, host, "dx_out")
    g = _geometry(dy)
    if dy.size:  # y and scale may arrive float64 from the reference backend: cast to the computing dtype
        grid, block, contig_c = elementwise_shape(g)
        launch(ks, "backward", grid, block, flat(to_device(dy, "dy")), flat(to_device(x, "x", dy.dtype)),
               flat(to_device(y, "y", dy.dtype)), flat(to_device(scale, "scale", dy.dtype)), g.N, g.C, g.S,
               contig_c, size, float(alpha), float(beta), float(k), flat(dx))
    return host_or_device(dx, host, dy.shape, out=dx_out)
