"""The oracle: the float64 reference, run in float64 for float32 inputs and in extended precision
(``np.longdouble``, 64-bit significand on x86) for float64 inputs, with every output kept wide.

The public reference backend rounds its outputs to float64 and its saved statistics are float64 by contract;
that is exact enough to judge float32 kernels but not float64 ones (a float64 mean of data offset by 1e6 carries
an error of half an ulp of 1e6, which the backward would then treat as truth).  So the oracle calls the reference
implementations directly with wide ``out=`` arrays, and computes the statistics itself, wide, with the
reference's own :func:`~normbench.reference._stats.moments` over the groups of :mod:`.layout`.  The backward
oracle is the reference backward fed those wide statistics: the gradient of the exact forward, a function of
x and dy only, which is what a kernel's backward (fed its own forward's statistics) is judged against.

tests/test_accuracy.py checks the oracle against exact rational arithmetic (``fractions.Fraction``).
"""
from __future__ import annotations

import numpy as np

from .. import registry
from ..numerics import Numerics, resolve
from ..reference._stats import moments, rstd
from .layout import group_ids, group_rows

FORWARD_NAMES = {
    "batch_norm": ("y", "mean", "rstd"),
    "layer_norm": ("y", "mean", "rstd"),
    "rms_norm": ("y", "rstd"),
    "group_norm": ("y", "mean", "rstd"),
    "instance_norm": ("y", "mean", "rstd"),
    "frozen_batch_norm": ("y",),
    "local_response_norm": ("y", "scale"),
    "fused_add_norm": ("y", "h", "mean", "rstd"),
}
BACKWARD_NAMES = {
    "batch_norm": ("dx", "dweight", "dbias"),
    "layer_norm": ("dx", "dweight", "dbias"),
    "rms_norm": ("dx", "dweight"),
    "group_norm": ("dx", "dweight", "dbias"),
    "instance_norm": ("dx", "dweight", "dbias"),
    "frozen_batch_norm": ("dx",),
    "local_response_norm": ("dx",),
    "fused_add_norm": ("dx", "dresidual", "dweight", "dbias"),
}
LRN_DEFAULTS = dict(alpha=1e-4, beta=0.75, k=1.0)


def wide_dtype(dtype) -> np.dtype:
    return np.dtype(np.longdouble if np.dtype(dtype) == np.float64 else np.float64)


def default_eps(variant: str, inputs) -> float:
    """The public functions' default eps (RMS norm: finfo(x.dtype).eps; fused add + RMS takes 1e-5)."""
    if variant == "rms_norm":
        return float(np.finfo(inputs["x"].dtype).eps)
    return 1e-5


def fresh(inputs: dict) -> dict:
    """A copy whose arrays can be written (running statistics are updated in place by training forwards)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}


def kernel_axis(inputs) -> int:
    return 1 if inputs.get("axis", 1) == 1 or inputs["x"].ndim == 2 else -1


def named(names, outputs) -> dict:
    return {n: o for n, o in zip(names, outputs) if o is not None}


def _stat_shape(variant, i):
    x = i["x"]
    if variant in ("layer_norm", "rms_norm", "fused_add_norm"):
        return x.shape[: x.ndim - len(i["normalized_shape"])]
    if variant == "batch_norm":
        return (x.shape[1 if kernel_axis(i) == 1 else -1],)
    C = x.shape[1 if kernel_axis(i) == 1 else -1]
    return (x.shape[0], i["num_groups"] if variant == "group_norm" else C)


def _wide_stats(variant, i, xw, eps, opts):
    """(mean or None, rstd) of ``xw`` (x or h, wide) per group, in wide precision, shaped as saved statistics."""
    shape = _stat_shape(variant, i)
    mode_eval = (variant == "batch_norm" and not i["training"]) or (
        variant == "instance_norm" and not i.get("use_input_stats", True))
    if mode_eval:
        mean = i["running_mean"].astype(xw.dtype)
        r = rstd(i["running_var"].astype(xw.dtype), eps, opts.eps_placement)
        return np.broadcast_to(mean, shape).copy(), np.broadcast_to(r, shape).copy()
    ids, G = group_ids(variant, i)
    rows = group_rows(xw, ids, G)
    if variant == "rms_norm" or (variant == "fused_add_norm" and i["norm"] == "rms"):
        ms = (rows * rows).sum(axis=1) / (rows.shape[1] - opts.correction)
        return None, rstd(ms, eps, opts.eps_placement).reshape(shape)
    mean, var = moments(rows, (1,), opts.correction)
    return mean.reshape(shape), rstd(var, eps, opts.eps_placement).reshape(shape)


def forward(variant: str, inputs: dict, *, eps=None, opts: Numerics | None = None, **numerics) -> dict:
    """Wide forward outputs by name: y (and h, scale) of x's shape, statistics (mean, rstd) wide."""
    opts = opts or resolve(numerics)
    i = fresh(inputs)
    x = i["x"]
    W = wide_dtype(x.dtype)
    impl = registry.implementation(variant, "reference", "forward")
    eps = default_eps(variant, i) if eps is None else float(eps)
    out = np.empty(x.shape, W)
    ax = kernel_axis(i)
    w, b = i.get("weight"), i.get("bias")
    xw = x.astype(W)
    if variant == "batch_norm":
        impl(x, w, b, i["running_mean"], i["running_var"], training=i["training"], momentum=0.1, eps=eps, axis=ax,
             opts=opts, out=out)
    elif variant in ("layer_norm", "rms_norm"):
        args = (w, b) if variant == "layer_norm" else (w,)
        impl(x, tuple(i["normalized_shape"]), *args, eps=eps, opts=opts, out=out)
    elif variant == "group_norm":
        impl(x, i["num_groups"], w, b, eps=eps, axis=ax, opts=opts, out=out)
    elif variant == "instance_norm":
        impl(x, w, b, i["running_mean"], i["running_var"], use_input_stats=i.get("use_input_stats", True),
             momentum=0.1, eps=eps, axis=ax, opts=opts, out=out)
    elif variant == "frozen_batch_norm":
        impl(x, w, b, i["running_mean"], i["running_var"], eps=eps, axis=ax, out=out)
        return {"y": out}
    elif variant == "local_response_norm":
        _, scale = impl(x, i["size"], opts=opts, out=out, **LRN_DEFAULTS)
        return {"y": out, "scale": scale}  # scale >= k: float64 is exact enough for its own metric
    elif variant == "fused_add_norm":
        h = np.empty(x.shape, W)
        impl(x, i["residual"], tuple(i["normalized_shape"]), w, b, alpha=i["alpha"], norm=i["norm"], eps=eps,
             opts=opts, out=out, h_out=h)
        xw = h
    else:
        raise KeyError(variant)
    mean, r = _wide_stats(variant, i, xw, eps, opts)
    res = {"y": out, "mean": mean, "rstd": r}
    if variant == "fused_add_norm":
        res["h"] = xw
    return {k: v for k, v in res.items() if v is not None}


def backward(variant: str, inputs: dict, fwd: dict, dy, *, eps=None, opts: Numerics | None = None,
             **numerics) -> dict:
    """Wide gradients by name (dx, dresidual of x's shape; dweight, dbias float64 sums) of the exact forward
    ``fwd`` (this module's :func:`forward`)."""
    opts = opts or resolve(numerics)
    i = inputs
    x = i["x"]
    W = wide_dtype(x.dtype)
    impl = registry.implementation(variant, "reference", "backward")
    eps = default_eps(variant, i) if eps is None else float(eps)
    dx = np.empty(x.shape, W)
    ax = kernel_axis(i)
    w, b = i.get("weight"), i.get("bias")
    mean, r = fwd.get("mean"), fwd.get("rstd")
    if variant == "batch_norm":
        out = impl(dy, x, w, b, mean, r, training=i["training"], eps=eps, axis=ax, opts=opts, dx_out=dx)
    elif variant == "layer_norm":
        out = impl(dy, x, tuple(i["normalized_shape"]), mean, r, w, b, eps=eps, opts=opts, dx_out=dx)
    elif variant == "rms_norm":
        out = impl(dy, x, tuple(i["normalized_shape"]), r, w, eps=eps, opts=opts, dx_out=dx)
    elif variant == "group_norm":
        out = impl(dy, x, i["num_groups"], mean, r, w, b, eps=eps, axis=ax, opts=opts, dx_out=dx)
    elif variant == "instance_norm":
        out = impl(dy, x, mean, r, w, b, use_input_stats=i.get("use_input_stats", True), eps=eps, axis=ax,
                   opts=opts, dx_out=dx)
    elif variant == "frozen_batch_norm":
        out = (impl(dy, w, i["running_var"], eps=eps, axis=ax, dx_out=dx),)
    elif variant == "local_response_norm":
        out = (impl(dy, x, fwd["y"], fwd["scale"], i["size"], opts=opts, dx_out=dx, **LRN_DEFAULTS),)
    elif variant == "fused_add_norm":
        out = impl(dy, fwd["h"], tuple(i["normalized_shape"]), mean, r, w, b, alpha=i["alpha"], norm=i["norm"],
                   dh=None, eps=eps, opts=opts, dx_out=dx)
    else:
        raise KeyError(variant)
    return named(BACKWARD_NAMES[variant], out)
