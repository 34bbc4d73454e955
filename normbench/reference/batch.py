"""Batch norm (train/eval, running statistics), frozen batch norm and per-channel moments, float64 reference.

Layouts: ``axis=1`` is (N, C, *spatial), ``axis=-1`` is (N, *spatial, C); statistics per channel over
every other axis.
"""
from __future__ import annotations

import numpy as np

from ._stats import centered_backward, finish, moments, rstd, wide


def _layout(x, axis):
    cax = 1 if axis == 1 else x.ndim - 1
    axes = tuple(a for a in range(x.ndim) if a != cax)
    bshape = [1] * x.ndim
    bshape[cax] = x.shape[cax]
    return cax, axes, tuple(bshape)


def _affine(y, weight, bias, bshape):
    if weight is not None:
        y = y * wide(weight).reshape(bshape)
    if bias is not None:
        y = y + wide(bias).reshape(bshape)
    return y


def update_running(running_mean, running_var, mean, var_unbiased, momentum):
    """PyTorch momentum: ``running = (1 - momentum) * running + momentum * batch``, in the buffers' dtype."""
    m = np.float64(momentum)
    running_mean[...] = (1 - m) * running_mean.astype(np.float64) + m * np.asarray(mean, np.float64)
    running_var[...] = (1 - m) * running_var.astype(np.float64) + m * np.asarray(var_unbiased, np.float64)


def channel_moments(x, axis):
    """Per-channel (count, mean, M2) in float64 (exact two-pass): what PreciseBN and SyncBN merge."""
    cax, axes, _ = _layout(x, axis)
    xw = wide(x)
    mean, _ = moments(xw, axes, 0)
    m2 = ((xw - mean) ** 2).sum(axis=axes)
    return x.size // x.shape[cax], mean.reshape(-1).astype(np.float64), m2.astype(np.float64)


def batch_norm_forward(x, weight, bias, running_mean, running_var, *, training, momentum, eps, axis, opts, out=None):
    cax, axes, bshape = _layout(x, axis)
    xw = wide(x)
    n = x.size // x.shape[cax]
    if training:
        mean, var = moments(xw, axes, opts.correction)
        if running_mean is not None:
            var_unbiased = var * (n - opts.correction) / (n - 1)
            update_running(running_mean, running_var, mean.reshape(-1), var_unbiased.reshape(-1), momentum)
    else:
        mean = wide(running_mean).reshape(bshape)
        var = wide(running_var).reshape(bshape)
    r = rstd(var, eps, opts.eps_placement)
    y = _affine((xw - mean) * r, weight, bias, bshape)
    return finish(y, out), mean.reshape(-1).astype(np.float64), r.reshape(-1).astype(np.float64)


def batch_norm_backward(dy, x, weight, bias, save_mean, save_invstd, *, training, eps, axis, opts, dx_out=None):
    cax, axes, bshape = _layout(x, axis)
    xw, dyw = wide(x), wide(dy)
    xc = xw - wide(save_mean).reshape(bshape)
    r = wide(save_invstd).reshape(bshape)
    dxhat = dyw * wide(weight).reshape(bshape) if weight is not None else dyw
    if training:
        dx = centered_backward(dxhat, xc, r, axes, opts.correction, eps, opts.eps_placement)
    else:  # running statistics are constants
        dx = dxhat * r
    dweight = None if weight is None else (dyw * xc * r).sum(axis=axes).astype(np.float64)
    dbias = None if bias is None else dyw.sum(axis=axes).astype(np.float64)
    return finish(dx, dx_out), dweight, dbias


def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, *, eps, axis, out=None):
    _, _, bshape = _layout(x, axis)
    scale = wide(weight) / np.sqrt(wide(running_var) + eps)
    # (x - running_mean) first: the folded x*scale + (bias - running_mean*scale) loses log10(offset/spread) digits
    # of x near its running mean, even in extended precision (2**-64 * 1e6: ~120 float64 units at offset 1e6)
    xc = wide(x) - wide(running_mean).reshape(bshape)
    return finish(xc * scale.reshape(bshape) + wide(bias).reshape(bshape), out)


def frozen_batch_norm_backward(dy, weight, running_var, *, eps, axis, dx_out=None):
    _, _, bshape = _layout(dy, axis)
    scale = wide(weight) / np.sqrt(wide(running_var) + eps)
    return finish(wide(dy) * scale.reshape(bshape), dx_out)
