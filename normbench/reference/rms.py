"""RMS norm, float64 reference: ``y = x / sqrt(sum(x**2)/(D - correction) + eps) * weight``."""
from __future__ import annotations

import numpy as np

from ._stats import finish, normalize_backward, rstd, wide


def _axes(x, normalized_shape):
    return tuple(range(x.ndim - len(normalized_shape), x.ndim))


def rms_norm_forward(x, normalized_shape, weight, *, eps, opts, out=None):
    xw = wide(x)
    axes = _axes(x, normalized_shape)
    n = int(np.prod(normalized_shape))
    ms = (xw * xw).sum(axis=axes, keepdims=True) / (n - opts.correction)
    r = rstd(ms, eps, opts.eps_placement)
    y = xw * r
    if weight is not None:
        y = y * wide(weight)
    lead = x.shape[: x.ndim - len(normalized_shape)]
    return finish(y, out), r.reshape(lead).astype(np.float64)


def rms_norm_backward(dy, x, normalized_shape, rstd_, weight, *, eps, opts, dx_out=None):
    xw, dyw = wide(x), wide(dy)
    axes = _axes(x, normalized_shape)
    keep = tuple(x.shape[: x.ndim - len(normalized_shape)]) + (1,) * len(normalized_shape)
    r = wide(rstd_).reshape(keep)
    dxhat = dyw * wide(weight) if weight is not None else dyw
    dx = normalize_backward(dxhat, xw, r, axes, opts.correction, eps, opts.eps_placement)
    lead_axes = tuple(range(x.ndim - len(normalized_shape)))
    dweight = None if weight is None else (dyw * xw * r).sum(axis=lead_axes).astype(np.float64)
    return finish(dx, dx_out), dweight
