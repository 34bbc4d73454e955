"""Batch norm (train/eval, running statistics), frozen batch norm and per-channel moments: Numba CPU kernels.

Channels-first ``(N, C, *spatial)`` runs one channel per thread iteration (its N slabs are reduced, then
normalised while cache-resident); channels-last ``(N, *spatial, C)`` and ``(N, C)`` run as rows x C vectorised
over C with per-thread partial moments (x read twice: the 2/3 forward and 3/5 backward limits).  Evaluation
and frozen batch norm fold everything into one multiply-add per element with per-channel float64 scale and
shift.  The kernels live in :mod:`normbench.cpu._channel`, shared with group and instance norm.
"""
from __future__ import annotations

import numpy as np

from ..numerics import DEFAULT, rstd_from_var
from ..reference.batch import update_running
from ._channel import apply_affine, backward_sums, batch_layout, forward_stats
from ._stream import aligned_empty


def _C(x, axis):
    return x.shape[1] if axis == 1 else x.shape[-1]


def channel_moments(x, axis):
    """Per-channel (count, mean, M2) in float64 with the default algorithm: what PreciseBN and SyncBN merge."""
    C = _C(x, axis)
    # eps=1: the rstd is unused here, and eps=0 divides by zero (ZeroDivisionError) on a constant channel
    mean, m2, _ = forward_stats(x, None, batch_layout(x, axis), None, None, DEFAULT, 1.0, write_y=False)
    return x.size // C, mean.reshape(C), m2.reshape(C)


def batch_norm_forward(x, weight, bias, running_mean, running_var, *, training, momentum, eps, axis, opts, out=None):
    C = _C(x, axis)
    y = out if out is not None else aligned_empty(x.shape, x.dtype)
    if training:
        mean, m2, rstd = forward_stats(x, y, batch_layout(x, axis), weight, bias, opts, eps)
        mean, m2, rstd = mean.reshape(C), m2.reshape(C), rstd.reshape(C)
        if running_mean is not None:  # only now that everything is computed
            update_running(running_mean, running_var, mean, m2 / (x.size // C - 1), momentum)
        return y, mean, rstd
    mean, rstd, scale, shift = fold_running(running_mean, running_var, weight, bias, eps, opts)
    apply_affine(x, y, axis, mean, scale, shift)
    return y, mean, rstd


def fold_running(running_mean, running_var, weight, bias, eps, opts):
    """(mean, rstd, scale, shift) in float64 for ``y = (x - mean)*scale + shift`` with running statistics."""
    mean = running_mean.astype(np.float64)
    rstd = rstd_from_var(running_var.astype(np.float64), eps, opts.eps_placement)
    scale = rstd if weight is None else rstd * weight
    shift = np.zeros_like(mean) if bias is None else bias.astype(np.float64)
    return mean, rstd, scale, shift


def batch_norm_backward(dy, x, weight, bias, save_mean, save_invstd, *, training, eps, axis, opts, dx_out=None):
    C = _C(x, axis)
    dx = dx_out if dx_out is not None else aligned_empty(x.shape, x.dtype)
    lay = batch_layout(x, axis)
    shape = (lay.U,) if lay.kind == "cf" else (1, C)
    sdy, sdyxc = backward_sums(dy, x, dx, lay, weight, save_mean.reshape(shape), save_invstd.reshape(shape),
                               training, opts, eps)
    dweight = None if weight is None else (sdyxc.reshape(C, -1).sum(axis=1) * save_invstd).astype(x.dtype)
    dbias = None if bias is None else sdy.reshape(C, -1).sum(axis=1).astype(x.dtype)
    return dx, dweight, dbias


def _frozen_scale(weight, running_var, eps):
    return weight / np.sqrt(running_var.astype(np.float64) + eps)


def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, *, eps, axis, out=None):
    y = out if out is not None else aligned_empty(x.shape, x.dtype)
    scale = _frozen_scale(weight, running_var, eps)
    return apply_affine(x, y, axis, running_mean, scale, bias)


def frozen_batch_norm_backward(dy, weight, running_var, *, eps, axis, dx_out=None):
    dx = dx_out if dx_out is not None else aligned_empty(dy.shape, dy.dtype)
    scale = _frozen_scale(weight, running_var, eps)
    return apply_affine(dy, dx, axis, None, scale, np.zeros_like(scale))
