"""Layer norm, numba.cuda kernels (the row-wise engine in _rows.py); twin of normbench/cpu/layer.py."""
from __future__ import annotations

import math

from ._arrays import on_host
from ._rows import host_or_device, rows_backward, rows_forward


def layer_norm_forward(x, normalized_shape, weight, bias, *, eps, opts, out=None):
    D = math.prod(normalized_shape)
    lead = tuple(x.shape[:x.ndim - len(normalized_shape)])
    host = on_host(x)
    y, _, mean, rstd = rows_forward(x, D, weight, bias, eps=eps, opts=opts, center=True, out=out)
    return (host_or_device(y, host, x.shape, out=out), host_or_device(mean, host, lead),
            host_or_device(rstd, host, lead))


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight, bias, *, eps, opts, dx_out=None):
    D = math.prod(normalized_shape)
    shape = tuple(normalized_shape)
    host = on_host(dy)
    dx, _, dw, db = rows_backward(dy, x, D, mean, rstd, weight, bias is not None, eps=eps, opts=opts, center=True,
                                  dx_out=dx_out)
    return (host_or_device(dx, host, dy.shape, out=dx_out), host_or_device(dw, host, shape, dy.dtype),
            host_or_device(db, host, shape, dy.dtype))
