"""Layer norm, Numba CPU kernels (the row-wise engine in _rows.py; see its docstring for the schedules)."""
from __future__ import annotations

from . import _rows


def layer_norm_forward(x, normalized_shape, weight, bias, *, eps, opts, out=None):
    y, _, mean, rstd = _rows.forward(x, normalized_shape, weight, bias, rms=False, eps=eps, opts=opts, out=out)
    return y, mean, rstd


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight, bias, *, eps, opts, dx_out=None):
    dx, _, dw, db = _rows.backward(dy, x, normalized_shape, mean, rstd, weight, rms=False, eps=eps, opts=opts,
                                   dx_out=dx_out, want_dw=weight is not None, want_db=bias is not None)
    return dx, dw, db
