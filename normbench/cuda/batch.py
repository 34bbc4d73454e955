"""Batch norm (train/eval, both layouts), frozen batch norm and per-channel moments, numba.cuda kernels;
twin of normbench/cpu/batch.py (the channel engine in _channels.py)."""
from __future__ import annotations

import numpy as np

from .. import numerics
from . import _channels as ch
from ._arrays import flat, launch, on_host, to_device, write_back
from ._rows import host_or_device


def _params(x, **named):
    return {k: (flat(to_device(a, k)) if a is not None else None) for k, a in named.items()}


def batch_norm_forward(x, weight, bias, running_mean, running_var, *, training, momentum, eps, axis, opts, out=None):
    host = on_host(x)
    ks = ch.kernels(opts.accumulator(x.dtype).name)
    g = ch.geometry(x.shape, axis)
    xd = flat(to_device(x, "x"))
    p = _params(x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    y = ch.out_array(out, x, host)
    if training:
        mean, rstd, _ = ch.moments(ks, xd, g, opts, eps, p["running_mean"], p["running_var"], momentum)
        write_back(p["running_mean"], running_mean)
        write_back(p["running_var"], running_var)
    else:
        mean, rstd = ch.empty(g.C, np.float64), ch.empty(g.C, np.float64)
        launch(ks, "eval_stats", *ch._grid(g.C), p["running_mean"], p["running_var"], float(eps), opts.eps_code, g.C,
               mean, rstd)
    ch.normalize(ks, xd, flat(y), g, mean, rstd, p["weight"], p["bias"])
    return host_or_device(y, host, x.shape, out=out), host_or_device(mean, host, (g.C,)), host_or_device(
        rstd, host, (g.C,))


def batch_norm_backward(dy, x, weight, bias, save_mean, save_invstd, *, training, eps, axis, opts, dx_out=None):
    host = on_host(dy)
    # float64 whatever ``accumulate`` says, as the CPU's channel backward (docs/cpu-channel.md): the option
    # governs the forward's statistics; with float32 sums cuda's dx differed from cpu's by 7e-6 on float64 data
    ks = ch.kernels("float64")
    g = ch.geometry(x.shape, axis)
    dx = ch.out_array(dx_out, dy, host, "dx_out")
    dw, db = ch.backward(ks, flat(to_device(dy, "dy")), flat(to_device(x, "x")), g,
                         flat(to_device(save_mean, "save_mean", np.float64)),
                         flat(to_device(save_invstd, "save_invstd", np.float64)),
                         flat(to_device(weight, "weight")) if weight is not None else None,
                         weight is not None, bias is not None, training, opts, eps, flat(dx))
    return (host_or_device(dx, host, dy.shape, out=dx_out), host_or_device(dw, host, (g.C,), dy.dtype),
            host_or_device(db, host, (g.C,), dy.dtype))


def channel_moments(x, axis):
    """Per-channel (count, mean, M2) as float64 NumPy arrays (PreciseBN/SyncBN merge them on the host), computed
    with the default numerics (shifted one-pass, float64 accumulator)."""
    opts = numerics.DEFAULT
    ks = ch.kernels(opts.accumulator(x.dtype).name)
    g = ch.geometry(x.shape, axis)
    # eps=1 (as the CPU twin): the rstd is unused, and eps=0 divides by zero on a constant channel (the simulator
    # raises ZeroDivisionError)
    mean, _, m2 = ch.moments(ks, flat(to_device(x, "x")), g, opts, 1.0)
    return g.seg[3], mean.copy_to_host(), m2.copy_to_host()


def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, *, eps, axis, out=None):
    host = on_host(x)
    ks = ch.kernels("float64")
    g = ch.geometry(x.shape, axis)
    p = _params(x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    y = ch.out_array(out, x, host)
    xd = flat(to_device(x, "x"))
    if x.size:
        grid, block, contig_c = ch.elementwise_shape(g)
        launch(ks, "frozen_forward", grid, block, xd, p["weight"], p["bias"], p["running_mean"], p["running_var"],
               float(eps), g.N, g.C, g.S, contig_c, flat(y))
    return host_or_device(y, host, x.shape, out=out)


def frozen_batch_norm_backward(dy, weight, running_var, *, eps, axis, dx_out=None):
    host = on_host(dy)
    ks = ch.kernels("float64")
    g = ch.geometry(dy.shape, axis)
    p = _params(dy, weight=weight, running_var=running_var)
    dx = ch.out_array(dx_out, dy, host, "dx_out")
    dyd = flat(to_device(dy, "dy"))
    if dy.size:
        grid, block, contig_c = ch.elementwise_shape(g)
        launch(ks, "frozen_backward", grid, block, dyd, p["weight"], p["running_var"], float(eps), g.N, g.C, g.S,
               contig_c, flat(dx))
    return host_or_device(dx, host, dy.shape, out=dx_out)


