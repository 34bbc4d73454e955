"""Group norm and instance norm, float64 reference.

Group norm: statistics per (sample, group of C/G consecutive channels) over those channels and all spatial
positions.  Instance norm is group norm with G = C (statistics per (sample, channel)), plus PyTorch's optional
running statistics: the batch average of the per-instance mean and unbiased variance.
"""
from __future__ import annotations

import numpy as np

from ._stats import centered_backward, finish, moments, rstd, wide
from .batch import update_running


def _grouped(a, G, axis):
    """View as (N, G, C/G, S) for axis=1 or (N, S, G, C/G) for axis=-1; returns (view, stat axes, G axis)."""
    N = a.shape[0]
    if axis == 1:
        C = a.shape[1]
        return a.reshape(N, G, C // G, -1), (2, 3)
    C = a.shape[-1]
    return a.reshape(N, -1, G, C // G), (1, 3)


def _stat_shape(v, axes):
    """(N, G) from a keepdims statistic."""
    return v.reshape(v.shape[0], -1)


def _param_view(p, G, axis):
    if p is None:
        return None
    p = wide(p)
    return p.reshape(1, G, -1, 1) if axis == 1 else p.reshape(1, 1, G, -1)


def _keep(s, axis):
    return s[:, :, None, None] if axis == 1 else s[:, None, :, None]


def group_norm_forward(x, num_groups, weight, bias, *, eps, axis, opts, out=None):
    xg, axes = _grouped(wide(x), num_groups, axis)
    mean, var = moments(xg, axes, opts.correction)
    r = rstd(var, eps, opts.eps_placement)
    y = (xg - mean) * r
    w, b = _param_view(weight, num_groups, axis), _param_view(bias, num_groups, axis)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return (finish(y.reshape(x.shape), out), _stat_shape(mean, axes).astype(np.float64),
            _stat_shape(r, axes).astype(np.float64))


def group_norm_backward(dy, x, num_groups, mean, rstd_, weight, bias, *, eps, axis, opts, dx_out=None):
    xg, axes = _grouped(wide(x), num_groups, axis)
    dyg, _ = _grouped(wide(dy), num_groups, axis)
    xc = xg - _keep(wide(mean), axis)
    r = _keep(wide(rstd_), axis)
    w = _param_view(weight, num_groups, axis)
    dxhat = dyg * w if w is not None else dyg
    dx = centered_backward(dxhat, xc, r, axes, opts.correction, eps, opts.eps_placement)
    sum_axes = (0, 3) if axis == 1 else (0, 1)  # everything but the (G, C/G) channel axes
    dweight = None if weight is None else (dyg * xc * r).sum(axis=sum_axes).reshape(-1).astype(np.float64)
    dbias = None if bias is None else dyg.sum(axis=sum_axes).reshape(-1).astype(np.float64)
    return finish(dx.reshape(x.shape), dx_out), dweight, dbias


def instance_norm_forward(x, weight, bias, running_mean, running_var, *, use_input_stats, momentum, eps, axis, opts,
                          out=None):
    N = x.shape[0]
    C = x.shape[1] if axis == 1 else x.shape[-1]
    if use_input_stats:
        y, mean, r = group_norm_forward(x, C, weight, bias, eps=eps, axis=axis, opts=opts, out=out)
        if running_mean is not None:
            S = x.size // (N * C)
            xg, axes = _grouped(wide(x), C, axis)
            _, var_unbiased = moments(xg, axes, 1)
            update_running(running_mean, running_var, mean.mean(axis=0),
                           _stat_shape(var_unbiased, axes).astype(np.float64).mean(axis=0), momentum)
        return y, mean, r
    # running statistics as constants, one per channel
    bshape = (1, C) + (1,) * (x.ndim - 2) if axis == 1 else (1,) * (x.ndim - 1) + (C,)
    mean = wide(running_mean)
    r = rstd(wide(running_var), eps, opts.eps_placement)
    y = (wide(x) - mean.reshape(bshape)) * r.reshape(bshape)
    if weight is not None:
        y = y * wide(weight).reshape(bshape)
    if bias is not None:
        y = y + wide(bias).reshape(bshape)
    return (finish(y, out), np.broadcast_to(mean.astype(np.float64), (N, C)).copy(),
            np.broadcast_to(r.astype(np.float64), (N, C)).copy())


def instance_norm_backward(dy, x, mean, rstd_, weight, bias, *, use_input_stats, eps, axis, opts, dx_out=None):
    C = x.shape[1] if axis == 1 else x.shape[-1]
    if use_input_stats:
        return group_norm_backward(dy, x, C, mean, rstd_, weight, bias, eps=eps, axis=axis, opts=opts, dx_out=dx_out)
    xg, _ = _grouped(wide(x), C, axis)
    dyg, _ = _grouped(wide(dy), C, axis)
    xc = xg - _keep(wide(mean), axis)
    r = _keep(wide(rstd_), axis)
    w = _param_view(weight, C, axis)
    dx = dyg * r * w if w is not None else dyg * r
    sum_axes = (0, 3) if axis == 1 else (0, 1)
    dweight = None if weight is None else (dyg * xc * r).sum(axis=sum_axes).reshape(-1).astype(np.float64)
    dbias = None if bias is None else dyg.sum(axis=sum_axes).reshape(-1).astype(np.float64)
    return finish(dx.reshape(x.shape), dx_out), dweight, dbias
