"""Local response norm across channels (axis 1), float64 reference with PyTorch's semantics.

``scale[c] = k + alpha/size * sum(x[j]**2 for j in [c - size//2, c + (size-1)//2], clipped)``,
``y = x * scale**(-beta)``.
"""
from __future__ import annotations

import numpy as np

from ._stats import finish, wide


def _window_sum(a, size, reverse=False):
    """Sum over channel windows [c - size//2, c + (size-1)//2]; ``reverse`` gives the transposed window
    [c - (size-1)//2, c + size//2] (the channels whose window contains c), used by the backward.  Each window
    is summed directly (``size`` shifted slices of the zero-padded input): a cumulative sum's differences lose
    small terms next to a huge one and carry a NaN or Inf into every later channel."""
    before, after = (size // 2, (size - 1) // 2)
    if reverse:
        before, after = after, before
    C = a.shape[1]
    pad = [(0, 0)] * a.ndim
    pad[1] = (before, after)
    p = np.pad(a, pad)
    total = np.zeros_like(a)
    for i in range(before + after + 1):
        total += p[:, i:i + C]
    return total


def local_response_norm_forward(x, size, *, alpha, beta, k, opts=None, out=None):
    xw = wide(x)
    scale = k + alpha / size * _window_sum(xw * xw, size)
    y = xw * scale ** (-beta)
    return finish(y, out), scale.astype(np.float64)


def local_response_norm_backward(dy, x, y, scale, size, *, alpha, beta, k, opts=None, dx_out=None):
    xw, dyw = wide(x), wide(dy)
    s = k + alpha / size * _window_sum(xw * xw, size)  # recomputed exactly: the oracle trusts only x
    t = dyw * xw * s ** (-beta - 1)
    dx = dyw * s ** (-beta) - (2 * alpha * beta / size) * xw * _window_sum(t, size, reverse=True)
    return finish(dx, dx_out)
