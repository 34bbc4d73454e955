"""Fused residual add + layer/RMS norm (DeepNorm), Numba CPU kernels.

Forward: ``h = x + alpha * residual`` is formed in float64 in registers, its statistics taken and ``h`` and
``y`` written in the same pass over the row (y is normalised from the unrounded h).  Backward: the norm's
dx plus the incoming ``dh`` is written as ``dx`` and ``alpha`` times it as ``dresidual`` in one pass.
"""
from __future__ import annotations

from . import _rows


def fused_add_norm_forward(x, residual, normalized_shape, weight, bias, *, alpha, norm, eps, opts, out=None,
                           h_out=None):
    y, h, mean, rstd = _rows.forward(x, normalized_shape, weight, bias, rms=norm == "rms", eps=eps, opts=opts,
                                     out=out, residual=residual, alpha=alpha, h_out=h_out)
    return y, h, (None if norm == "rms" else mean), rstd


def fused_add_norm_backward(dy, h, normalized_shape, mean, rstd, weight, bias, *, alpha, norm, dh, eps, opts,
                            dx_out=None, dresidual_out=None):
    dx, dres, dw, db = _rows.backward(dy, h, normalized_shape, mean if norm == "layer" else None, rstd, weight,
                                      rms=norm == "rms", eps=eps, opts=opts, dx_out=dx_out, fused=True,
                                      dres_out=dresidual_out, alpha=alpha, dh=dh,
                                      want_dw=weight is not None, want_db=bias is not None)
    return dx, dres, dw, db
