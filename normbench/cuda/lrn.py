"""Local response norm across channels (PyTorch semantics), numba.cuda kernels; twin of normbench/cpu/lrn.py.
One thread per element (grid-stride); the channel window is summed from global memory (neighbouring threads
read neighbouring addresses of the same channels, so the window's re-reads hit the cache)."""
from __future__ import annotations

import functools
import math
from types import SimpleNamespace

from numba import cuda, float32, float64

from . import config
from ._arrays import flat, launch, on_host, output, to_device
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
    def stored_scale(scale, x, o, C, S, size, alpha, k):
        """scale[o], or where it overflowed x's dtype (float32 data, |x| ~ 1e21) the window's scale again."""
        sc = acc(scale[o])
        if math.isinf(sc):
            c = (o // S) % C
            sc = window_scale(x, o - c * S, c, C, S, size, alpha, k)
        return sc

    @cuda.jit(cache=True)
    def forward(x, C, S, size, alpha, beta, k, y, scale):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            c = (i // S) % C
            sc = window_scale(x, i - c * S, c, C, S, size, alpha, k)
            scale[i] = sc
            y[i] = acc(x[i]) * math.pow(sc, -acc(beta))

    @cuda.jit(cache=True)
    def backward(dy, x, y, scale, C, S, size, alpha, beta, k, dx):
        """dx = dy * scale^-beta - 2 alpha beta / size * x * sum over the channels whose window holds c of
        dy * y / scale (= dy * x * scale^(-beta-1))."""
        before = (size - 1) // 2  # the transposed window
        after = size // 2
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            c = (i // S) % C
            base = i - c * S
            t = acc(0.0)
            for j in range(max(0, c - before), min(C, c + after + 1)):
                o = base + j * S
                t += acc(dy[o]) * acc(y[o]) / stored_scale(scale, x, o, C, S, size, alpha, k)
            dx[i] = (acc(dy[i]) * math.pow(stored_scale(scale, x, i, C, S, size, alpha, k), -acc(beta))
                     - acc(2.0) * acc(alpha) * acc(beta) / acc(size) * acc(x[i]) * t)

    return SimpleNamespace(module=__name__, acc=acc_name, forward=forward, backward=backward)


def _grid(n):
    tpb = config.THREADS_PER_BLOCK
    return max(1, min(config.MAX_GRID, -(-n // tpb))), tpb


def _cs(x):
    C = x.shape[1]
    return C, x.size // (x.shape[0] * C) if x.size else 1


def local_response_norm_forward(x, size, *, alpha, beta, k, opts, out=None):
    host = on_host(x)
    ks = kernels(opts.accumulator(x.dtype).name)
    y = output(out, x.shape, x.dtype, host)
    scale = output(None, x.shape, x.dtype, host)
    C, S = _cs(x)
    if x.size:
        launch(ks, "forward", *_grid(x.size), flat(to_device(x, "x")), C, S, size, float(alpha), float(beta),
               float(k), flat(y), flat(scale))
    return host_or_device(y, host, x.shape, out=out), host_or_device(scale, host, x.shape)


def local_response_norm_backward(dy, x, y, scale, size, *, alpha, beta, k, opts, dx_out=None):
    host = on_host(dy)
    ks = kernels(opts.accumulator(dy.dtype).name)
    dx = output(dx_out, dy.shape, dy.dtype, host, "dx_out")
    C, S = _cs(dy)
    if dy.size:  # y and scale may arrive float64 from the reference backend: cast to the computing dtype
        launch(ks, "backward", *_grid(dy.size), flat(to_device(dy, "dy")), flat(to_device(x, "x", dy.dtype)),
               flat(to_device(y, "y", dy.dtype)), flat(to_device(scale, "scale", dy.dtype)), C, S, size,
               float(alpha), float(beta), float(k), flat(dx))
    return host_or_device(dx, host, dy.shape, out=dx_out)
