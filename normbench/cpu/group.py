"""Group norm and instance norm (optional running statistics): Numba CPU kernels.

Channels-first: one (sample, group) slab of (C/G)*S contiguous values per thread iteration, reduced then
normalised while cache-resident.  Channels-last: one sample's (S, C) block per iteration, per-column moments
vectorised over C and merged per group with Chan's formula.  Instance norm is group norm with G = C; with
``use_input_stats=False`` it normalises with the per-channel running statistics (one multiply-add per element).
Kernels: :mod:`normbench.cpu._channel`.
"""
from __future__ import annotations

import numpy as np

from ..reference.batch import update_running
from ._channel import apply_affine, backward_sums, forward_stats, group_layout
from ._stream import aligned_empty
from .batch import fold_running


def _dims(x, axis):
    C = x.shape[1] if axis == 1 else x.shape[-1]
    return x.shape[0], C


def _group_forward(x, G, weight, bias, eps, axis, opts, out):
    N, C = _dims(x, axis)
    y = out if out is not None else aligned_empty(x.shape, x.dtype)
    if x.size == 0:
        nan = np.full((N, G), np.nan)
        return y, nan, nan.copy(), nan.copy()
    mean, m2, rstd = forward_stats(x, y, group_layout(x, axis, G), weight, bias, opts, eps)
    return y, mean.reshape(N, G), m2.reshape(N, G), rstd.reshape(N, G)


def _group_backward(dy, x, G, mean, rstd, weight, bias, eps, axis, opts, dx_out, train):
    N, C = _dims(x, axis)
    dx = dx_out if dx_out is not None else aligned_empty(x.shape, x.dtype)
    if x.size == 0:
        zeros = np.zeros(C, x.dtype)
        return dx, None if weight is None else zeros, None if bias is None else zeros.copy()
    sdy, sdyxc = backward_sums(dy, x, dx, group_layout(x, axis, G), weight, mean, rstd, train, opts, eps)
    dweight = dbias = None
    if weight is not None:
        r = np.repeat(np.asarray(rstd, np.float64).reshape(N, G), C // G, axis=1)
        dweight = (sdyxc.reshape(N, C) * r).sum(axis=0).astype(x.dtype)
    if bias is not None:
        dbias = sdy.reshape(N, C).sum(axis=0).astype(x.dtype)
    return dx, dweight, dbias


def group_norm_forward(x, num_groups, weight, bias, *, eps, axis, opts, out=None):
    y, mean, _, rstd = _group_forward(x, num_groups, weight, bias, eps, axis, opts, out)
    return y, mean, rstd


def group_norm_backward(dy, x, num_groups, mean, rstd, weight, bias, *, eps, axis, opts, dx_out=None):
    return _group_backward(dy, x, num_groups, mean, rstd, weight, bias, eps, axis, opts, dx_out, True)


def instance_norm_forward(x, weight, bias, running_mean, running_var, *, use_input_stats, momentum, eps, axis, opts,
                          out=None):
    N, C = _dims(x, axis)
    if use_input_stats:
        y, mean, m2, rstd = _group_forward(x, C, weight, bias, eps, axis, opts, out)
        if running_mean is not None:  # batch average of the per-instance mean and unbiased variance (PyTorch)
            S = x.size // (N * C)
            update_running(running_mean, running_var, mean.mean(axis=0), (m2 / (S - 1)).mean(axis=0), momentum)
        return y, mean, rstd
    y = out if out is not None else aligned_empty(x.shape, x.dtype)
    mean, rstd, scale, shift = fold_running(running_mean, running_var, weight, bias, eps, opts)
    apply_affine(x, y, axis, mean, scale, shift)
    return y, np.broadcast_to(mean, (N, C)).copy(), np.broadcast_to(rstd, (N, C)).copy()


def instance_norm_backward(dy, x, mean, rstd, weight, bias, *, use_input_stats, eps, axis, opts, dx_out=None):
    N, C = _dims(x, axis)
    return _group_backward(dy, x, C, mean, rstd, weight, bias, eps, axis, opts, dx_out, use_input_stats)
