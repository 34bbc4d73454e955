"""Fused residual add + layer/RMS norm (DeepNorm), numba.cuda kernels; twin of normbench/cpu/fused.py.
``h = x + alpha * residual`` is formed and written inside the norm kernel (one read of x and residual)."""
from __future__ import annotations

import math

from ._arrays import on_host
from ._rows import host_or_device, rows_backward, rows_forward


def fused_add_norm_forward(x, residual, normalized_shape, weight, bias, *, alpha, norm, eps, opts, out=None,
                           h_out=None):
    D = math.prod(normalized_shape)
    lead = tuple(x.shape[:x.ndim - len(normalized_shape)])
    host = on_host(x)
    center = norm == "layer"
    y, h, mean, rstd = rows_forward(x, D, weight, bias if center else None, eps=eps, opts=opts, center=center,
                                    out=out, residual=residual, alpha=alpha, h_out=h_out)
    return (host_or_device(y, host, x.shape, out=out), host_or_device(h, host, x.shape, out=h_out),
            host_or_device(mean, host, lead) if center else None, host_or_device(rstd, host, lead))


def fused_add_norm_backward(dy, h, normalized_shape, mean, rstd, weight, bias, *, alpha, norm, dh, eps, opts,
                            dx_out=None, dresidual_out=None):
    D = math.prod(normalized_shape)
    shape = tuple(normalized_shape)
    host = on_host(dy)
    center = norm == "layer"
    dx, dres, dw, db = rows_backward(dy, h, D, mean, rstd, weight, center and bias is not None, eps=eps, opts=opts,
                                     center=center, dx_out=dx_out, dh=dh, alpha=alpha, dresidual_out=dresidual_out)
    return (host_or_device(dx, host, dy.shape, out=dx_out), host_or_device(dres, host, dy.shape, out=dresidual_out),
            host_or_device(dw, host, shape, dy.dtype), host_or_device(db, host, shape, dy.dtype) if center else None)
