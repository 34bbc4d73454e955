"""RMS norm, Numba CPU kernels: ``y = x * rstd * weight``, ``rstd = 1/sqrt(sum(x**2)/(D - correction) + eps)``
(the row-wise engine in _rows.py with a zero mean; ``variance`` does not apply, ``accumulate`` does)."""
from __future__ import annotations

from . import _rows


def rms_norm_forward(x, normalized_shape, weight, *, eps, opts, out=None):
    y, _, _, rstd = _rows.forward(x, normalized_shape, weight, None, rms=True, eps=eps, opts=opts, out=out)
    return y, rstd


def rms_norm_backward(dy, x, normalized_shape, rstd, weight, *, eps, opts, dx_out=None):
    dx, _, dw, _ = _rows.backward(dy, x, normalized_shape, None, rstd, weight, rms=True, eps=eps, opts=opts,
                                  dx_out=dx_out, want_dw=weight is not None, want_db=False)
    return dx, dw
