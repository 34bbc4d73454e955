"""Error metrics against the oracle, in units of the input dtype's machine epsilon.

For an output ``o`` and its oracle ``r`` (wide), element by element::

    err = |o - r| / (eps * scale)

where ``scale`` is the magnitude the output is judged against:

* x-shaped outputs (y, h, dx, dresidual, LRN scale): the max |r| over the element's normalisation group
  (row, channel, (sample, group)), so that a value near zero inside a row of O(1) values is judged by the row;
  a group whose exact result is all zero (the backward of a one-value group) by the max |r| over the whole
  output, since a scale of 0 would make any rounding an infinite error;
* parameter gradients (dweight, dbias): the max |r| over the whole vector;
* saved statistics: ``mean`` by ``|mean| + 1/rstd`` (about |mean| + std: the mean's natural error scale, also
  for zero-mean data), ``rstd`` by ``|rstd|`` (relative error).

``max_err`` is the max over elements, ``median_err`` the median.  ``max_ulp`` is the largest |o - r| in units of
the spacing of the dtype at r, over elements with |r| >= sqrt(eps) * scale (elsewhere an ulp is meaninglessly
small: such values come out of cancellation).  Elements where the oracle is finite and the output is NaN or Inf
are counted in ``n_fail`` (and left out of the error figures); elements where the oracle itself is not finite in
``n_ref_nonfinite``.  Float32 outputs are compared in float64, float64 outputs in extended precision, so the
comparison adds no rounding of its own.
"""
from __future__ import annotations

import numpy as np

from .layout import group_ids, group_rows

X_SHAPED = ("y", "h", "scale", "dx", "dresidual")
PARAMS = ("dweight", "dbias")
STATS = ("mean", "rstd")
COLUMNS = ("max_err", "median_err", "max_ulp", "n_fail", "n_ref_nonfinite", "n")


def wide(a, dtype):
    return np.asarray(a).astype(np.longdouble if np.dtype(dtype) == np.float64 else np.float64)


def error_stats(out, ref, scale, dtype) -> dict:
    """The metrics of ``out`` against ``ref`` with per-element magnitudes ``scale`` (broadcastable)."""
    dtype = np.dtype(dtype)
    eps = np.finfo(dtype).eps
    o, r = wide(out, dtype), wide(ref, dtype)
    s = np.broadcast_to(wide(scale, dtype), r.shape)
    ref_ok = np.isfinite(r)
    fail = ref_ok & ~np.isfinite(o)
    ok = ref_ok & ~fail
    d = np.abs(o[ok] - r[ok])
    sc = np.maximum(s[ok], np.finfo(dtype).tiny)
    e = d / (eps * sc)
    big = np.abs(r[ok]) >= np.sqrt(eps) * sc
    ulp = np.spacing(np.abs(r[ok][big]).astype(dtype)).astype(d.dtype)
    ulps = d[big] / np.where(ulp > 0, ulp, np.inf)
    return {
        "max_err": float(e.max()) if e.size else 0.0,
        "median_err": float(np.median(e)) if e.size else 0.0,
        "max_ulp": float(ulps.max()) if ulps.size else 0.0,
        "n_fail": int(fail.sum()),
        "n_ref_nonfinite": int((~ref_ok).sum()),
        "n": int(r.size),
    }


def group_scale(ref, ids, G) -> np.ndarray:
    """Per element: max |ref| over its group (finite values only); over the whole output where that is 0."""
    a = np.abs(np.asarray(ref))
    a = np.where(np.isfinite(a), a, 0)
    per_group = group_rows(a, ids, G).max(axis=1)
    return np.where(per_group > 0, per_group, per_group.max(initial=0))[ids]


def output_scale(name, ref, oracle_fwd, ids=None, G=None):
    """The magnitude each element of output ``name`` is judged against (see the module docstring)."""
    if name in X_SHAPED:
        return group_scale(ref, ids, G)
    if name in PARAMS:
        a = np.abs(np.asarray(ref))
        return np.max(np.where(np.isfinite(a), a, 0), initial=0)
    if name == "mean":
        return np.abs(ref) + 1 / np.abs(oracle_fwd["rstd"])
    if name == "rstd":
        return np.abs(ref)
    raise KeyError(name)


def compare(variant, inputs, outputs: dict, oracle_outputs: dict, oracle_fwd: dict) -> dict:
    """{output name: metrics} for every output present in both ``outputs`` and ``oracle_outputs``."""
    ids, G = group_ids(variant, inputs)
    dtype = inputs["x"].dtype
    res = {}
    for name, ref in oracle_outputs.items():
        out = outputs.get(name)
        if out is None:
            continue
        out = np.asarray(out)
        if out.shape != np.shape(ref):
            raise ValueError(f"{variant} output {name}: shape {out.shape}, oracle {np.shape(ref)}")
        res[name] = error_stats(out, ref, output_scale(name, ref, oracle_fwd, ids, G), dtype)
    return res
