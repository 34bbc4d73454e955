"""Group norm and instance norm (both layouts), numba.cuda kernels; twin of normbench/cpu/group.py (the channel
engine in _channels.py).  Instance norm is group norm with G = C plus PyTorch's optional running statistics."""
from __future__ import annotations

import numpy as np

from . import _channels as ch
from ._arrays import flat, launch, on_host, to_device, write_back
from ._rows import host_or_device


def _dev(a, name, dtype=None):
    return flat(to_device(a, name, dtype)) if a is not None else None


def group_norm_forward(x, num_groups, weight, bias, *, eps, axis, opts, out=None):
    host = on_host(x)
    ks = ch.kernels(opts.accumulator(x.dtype).name)
    g = ch.geometry(x.shape, axis, num_groups)
    xd = _dev(x, "x")
    wd, bd = _dev(weight, "weight"), _dev(bias, "bias")  # checked before any launch
    y = ch.out_array(out, x, host)
    mean, rstd, _ = ch.moments(ks, xd, g, opts, eps)
    ch.normalize(ks, xd, flat(y), g, mean, rstd, wd, bd)
    shape = (g.N, num_groups)
    return host_or_device(y, host, x.shape, out=out), host_or_device(mean, host, shape), host_or_device(
        rstd, host, shape)


def _backward(dy, x, G, mean, rstd, weight, bias, training, eps, axis, opts, dx_out):
    host = on_host(dy)
    # float64 whatever ``accumulate`` says, as the CPU's channel backward (docs/cpu-channel.md): the option
    # governs the forward's statistics; with float32 sums cuda's dx differed from cpu's by 7e-6 on float64 data
    ks = ch.kernels("float64")
    g = ch.geometry(x.shape, axis, G)
    dx = ch.out_array(dx_out, dy, host, "dx_out")
    dw, db = ch.backward(ks, _dev(dy, "dy"), _dev(x, "x"), g, _dev(mean, "mean", np.float64),
                         _dev(rstd, "rstd", np.float64), _dev(weight, "weight"), weight is not None,
                         bias is not None, training, opts, eps, flat(dx))
    return (host_or_device(dx, host, dy.shape, out=dx_out), host_or_device(dw, host, (g.C,), dy.dtype),
            host_or_device(db, host, (g.C,), dy.dtype))


def group_norm_backward(dy, x, num_groups, mean, rstd, weight, bias, *, eps, axis, opts, dx_out=None):
    return _backward(dy, x, num_groups, mean, rstd, weight, bias, True, eps, axis, opts, dx_out)


def instance_norm_forward(x, weight, bias, running_mean, running_var, *, use_input_stats, momentum, eps, axis, opts,
                          out=None):
    host = on_host(x)
    ks = ch.kernels(opts.accumulator(x.dtype).name)
    C = x.shape[1] if axis == 1 else x.shape[x.ndim - 1]  # not [-1]: see _channels.geometry
    g = ch.geometry(x.shape, axis, C)
    xd = _dev(x, "x")
    wd, bd = _dev(weight, "weight"), _dev(bias, "bias")  # checked before any launch: the running statistics
    y = ch.out_array(out, x, host)  # are written before y
    if use_input_stats:
        rm, rv = _dev(running_mean, "running_mean"), _dev(running_var, "running_var")
        mean, rstd, m2 = ch.moments(ks, xd, g, opts, eps)
        if running_mean is not None:
            launch(ks, "instance_running", *ch._grid(C), mean, m2, g.N, C, g.S, rm, rv, float(momentum))
            write_back(rm, running_mean)
            write_back(rv, running_var)
    else:
        mean, rstd = ch.empty(g.Q, np.float64), ch.empty(g.Q, np.float64)
        launch(ks, "eval_stats", *ch._grid(g.Q), _dev(running_mean, "running_mean"),
               _dev(running_var, "running_var"), float(eps), opts.eps_code, g.Q, mean, rstd)
    ch.normalize(ks, xd, flat(y), g, mean, rstd, wd, bd)
    shape = (g.N, C)
    return host_or_device(y, host, x.shape, out=out), host_or_device(mean, host, shape), host_or_device(
        rstd, host, shape)


def instance_norm_backward(dy, x, mean, rstd, weight, bias, *, use_input_stats, eps, axis, opts, dx_out=None):
    C = x.shape[1] if axis == 1 else x.shape[x.ndim - 1]
    return _backward(dy, x, C, mean, rstd, weight, bias, use_input_stats, eps, axis, opts, dx_out)
