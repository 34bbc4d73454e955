"""Layer norm, float64 reference: statistics over the trailing ``normalized_shape`` of each row."""
from __future__ import annotations

import numpy as np

from ._stats import centered_backward, finish, moments, rstd, wide


def _axes(x, normalized_shape):
    return tuple(range(x.ndim - len(normalized_shape), x.ndim))


def layer_norm_forward(x, normalized_shape, weight, bias, *, eps, opts, out=None):
    xw = wide(x)
    axes = _axes(x, normalized_shape)
    mean, var = moments(xw, axes, opts.correction)
    r = rstd(var, eps, opts.eps_placement)
    y = (xw - mean) * r
    if weight is not None:
        y = y * wide(weight)
    if bias is not None:
        y = y + wide(bias)
    lead = x.shape[: x.ndim - len(normalized_shape)]
    return finish(y, out), mean.reshape(lead).astype(np.float64), r.reshape(lead).astype(np.float64)


def layer_norm_backward(dy, x, normalized_shape, mean, rstd_, weight, bias, *, eps, opts, dx_out=None):
    xw, dyw = wide(x), wide(dy)
    axes = _axes(x, normalized_shape)
    keep = tuple(x.shape[: x.ndim - len(normalized_shape)]) + (1,) * len(normalized_shape)
    xc = xw - wide(mean).reshape(keep)
    r = wide(rstd_).reshape(keep)
    xhat = xc * r
    dxhat = dyw * wide(weight) if weight is not None else dyw
    dx = centered_backward(dxhat, xc, r, axes, opts.correction, eps, opts.eps_placement)
    lead_axes = tuple(range(x.ndim - len(normalized_shape)))
    dweight = None if weight is None else (dyw * xhat).sum(axis=lead_axes).astype(np.float64)
    dbias = None if bias is None else dyw.sum(axis=lead_axes).astype(np.float64)
    return finish(dx, dx_out), dweight, dbias
