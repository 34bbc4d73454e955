"""RMS norm, numba.cuda kernels (the row-wise engine in _rows.py); twin of normbench/cpu/rms.py."""
from __future__ import annotations

import math

from ._arrays import on_host
from ._rows import host_or_device, rows_backward, rows_forward


def rms_norm_forward(x, normalized_shape, weight, *, eps, opts, out=None):
    D = math.prod(normalized_shape)
    lead = tuple(x.shape[:x.ndim - len(normalized_shape)])
    host = on_host(x)
    y, _, _, rstd = rows_forward(x, D, weight, None, eps=eps, opts=opts, center=False, out=out)
    return host_or_device(y, host, x.shape, out=out), host_or_device(rstd, host, lead)


def rms_norm_backward(dy, x, normalized_shape, rstd, weight, *, eps, opts, dx_out=None):
    D = math.prod(normalized_shape)
    host = on_host(dy)
    dx, _, dw, _ = rows_backward(dy, x, D, None, rstd, weight, False, eps=eps, opts=opts, center=False,
                                 dx_out=dx_out)
    return host_or_device(dx, host, dy.shape, out=dx_out), host_or_device(dw, host, tuple(normalized_shape), dy.dtype)
