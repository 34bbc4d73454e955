"""The exact statistics and the generic normalise forward/backward that every reference variant uses.

Arithmetic is float64 for float32 inputs and ``np.longdouble`` (x87 extended precision where the platform
has it) for float64 inputs: the oracle must be more precise than what it judges.  Statistics are exact
two-pass moments; ``variance`` and ``accumulate`` options are ignored here by design.
"""
from __future__ import annotations

import numpy as np

from ..numerics import rstd_from_var


def wide(a):
    """The oracle's working precision for an input array (or None)."""
    if a is None:
        return None
    a = np.asarray(a)
    return a.astype(np.longdouble if a.dtype in (np.float64, np.longdouble) else np.float64)  # never narrows


def moments(x, axes, correction):
    """Exact two-pass (mean, var) over ``axes`` (keepdims), var divided by n - correction."""
    n = int(np.prod([x.shape[a] for a in axes]))
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).sum(axis=axes, keepdims=True) / (n - correction)
    return mean, var


def rstd(var, eps, eps_placement):
    return rstd_from_var(var, var.dtype.type(eps), eps_placement)


def normalize_backward(dxhat, xc, r, axes, correction, eps, eps_placement):
    """d/dx of ``xhat = xc * r(var)`` with ``xc = x - mean`` (or x itself for RMS norm, mean = 0) and
    ``var = sum(xc**2)/(n - correction)``, given the upstream gradient ``dxhat``:

        dx = r * (dxhat - mean(dxhat)) + xc * r'(var) * 2/(n - correction) * sum(dxhat * xc)

    (for RMS norm the ``mean(dxhat)`` term is absent: pass ``centered=False`` via xc is x and subtract nothing).
    r'(var) = -r**3/2 with eps inside the root, -r**2/(2 sqrt(var)) with eps outside; where var = 0 with eps
    outside the derivative does not exist and the limit with this term taken as 0 is returned (NaN where eps = 0
    too: r is then inf, and the forward's ``xc * r`` is already NaN).
    """
    n = int(np.prod([xc.shape[a] for a in axes]))
    s = (dxhat * xc).sum(axis=axes, keepdims=True)
    if eps_placement == "inside":
        k = -(r ** 3) * s / (n - correction)
    else:
        sd = 1 / r - r.dtype.type(eps)  # sqrt(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            # 0 * r: the term taken as 0, NaN where r = inf (eps = 0: the forward's xhat is 0 * inf = NaN too)
            k = np.where(sd > 0, -(r ** 2) * s / (np.where(sd > 0, sd, 1) * (n - correction)), 0 * r)
    return r * dxhat + k * xc


def centered_backward(dxhat, xc, r, axes, correction, eps, eps_placement):
    """Backward of mean-centred normalisation: the RMS-style term plus the mean-subtraction term."""
    dx = normalize_backward(dxhat, xc, r, axes, correction, eps, eps_placement)
    return dx - r * dxhat.mean(axis=axes, keepdims=True)


def finish(y, out):
    """Write into ``out`` when given (the reference returns float64)."""
    if out is None:
        return np.ascontiguousarray(y, dtype=np.float64)
    out[...] = y
    return out
