"""Fused residual add + layer/RMS norm (DeepNorm), float64 reference: ``h = x + alpha * residual``,
``y = Norm(h)``; backward ``dh_total = Norm_backward(dy) + dh``, ``dx = dh_total``,
``dresidual = alpha * dh_total``."""
from __future__ import annotations

from ._stats import finish, wide
from .layer import layer_norm_backward, layer_norm_forward
from .rms import rms_norm_backward, rms_norm_forward


def fused_add_norm_forward(x, residual, normalized_shape, weight, bias, *, alpha, norm, eps, opts, out=None,
                           h_out=None):
    h = finish(wide(x) + alpha * wide(residual), h_out)
    if norm == "rms":
        y, rstd = rms_norm_forward(h, normalized_shape, weight, eps=eps, opts=opts, out=out)
        return y, h, None, rstd
    y, mean, rstd = layer_norm_forward(h, normalized_shape, weight, bias, eps=eps, opts=opts, out=out)
    return y, h, mean, rstd


def fused_add_norm_backward(dy, h, normalized_shape, mean, rstd, weight, bias, *, alpha, norm, dh, eps, opts,
                            dx_out=None, dresidual_out=None):
    if norm == "rms":
        dh_total, dweight = rms_norm_backward(dy, h, normalized_shape, rstd, weight, eps=eps, opts=opts)
        dbias = None
    else:
        dh_total, dweight, dbias = layer_norm_backward(dy, h, normalized_shape, mean, rstd, weight, bias, eps=eps,
                                                       opts=opts)
    if dh is not None:
        dh_total = dh_total + wide(dh)
    dx = finish(dh_total, dx_out)
    return dx, finish(alpha * dh_total, dresidual_out), dweight, dbias  # float64 (dh_total is extended when dh is given)
