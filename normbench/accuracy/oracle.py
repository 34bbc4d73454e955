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

import inspect

import numpy as np

from .. import registry
from ..numerics import Numerics, resolve
from ..reference._stats import moments, rstd
from .layout import group_ids, group_rows

#: Per variant, what this module must know (docs/adding-a-variant.md, step 6): the names of the forward's and the
#: backward's outputs in the public functions' order (names that normbench.accuracy.metrics scales: X_SHAPED,
#: PARAMS, STATS; a parameter gradient is "dweight"/"dbias" whatever the argument is called), how to call the
#: reference implementation with wide outputs (FORWARD_CALLS, BACKWARD_CALLS) and how the saved statistics are
#: computed from a group's values (STATISTICS).  :func:`missing` lists the tables that lack a variant.
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
    """The public forward's default eps, read from its signature (``registry.VARIANTS[variant].forward_name`` in
    normbench.functional): ``eps=None`` means ``finfo(x.dtype).eps`` (RMS norm, as PyTorch); a front without an
    ``eps`` argument (LRN) gets 1e-5, which it never uses.  Fused add + norm's default 1e-5 holds for both norms."""
    from .. import functional

    front = getattr(functional, registry.VARIANTS[variant].forward_name)
    param = inspect.signature(front).parameters.get("eps")
    if param is None or param.default is inspect.Parameter.empty:
        return 1e-5
    if param.default is None:
        return float(np.finfo(inputs["x"].dtype).eps)
    return float(param.default)


def fresh(inputs: dict) -> dict:
    """A copy whose arrays can be written (running statistics are updated in place by training forwards)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}


def kernel_axis(inputs) -> int:
    return 1 if inputs.get("axis", 1) == 1 or inputs["x"].ndim == 2 else -1


def named(names, outputs) -> dict:
    return {n: o for n, o in zip(names, outputs) if o is not None}


def _stat_shape(variant, i):
    x = i["x"]
    if registry.is_row(i):  # one statistic per row
        return x.shape[: x.ndim - len(i["normalized_shape"])]
    if variant == "batch_norm":
        return (x.shape[1 if kernel_axis(i) == 1 else -1],)
    C = x.shape[1 if kernel_axis(i) == 1 else -1]
    return (x.shape[0], i["num_groups"] if variant == "group_norm" else C)


# ------------------------------------------------------------------------------------------ per-variant entries
# STATISTICS[variant](inputs, rows, opts) -> (mean or None, the variance term that rstd is taken of), from
# ``rows`` (groups, values per group) in wide precision; None: the forward saves no statistics the oracle
# recomputes (frozen batch norm, LRN).
def _moments(i, rows, opts):
    return moments(rows, (1,), opts.correction)


def _mean_square(i, rows, opts):
    return None, (rows * rows).sum(axis=1) / (rows.shape[1] - opts.correction)


STATISTICS = {
    "batch_norm": _moments,
    "layer_norm": _moments,
    "rms_norm": _mean_square,
    "group_norm": _moments,
    "instance_norm": _moments,
    "frozen_batch_norm": None,
    "local_response_norm": None,
    "fused_add_norm": lambda i, rows, opts: (_mean_square if i["norm"] == "rms" else _moments)(i, rows, opts),
}

# FORWARD_CALLS[variant](impl, inputs, eps, opts, out) calls the reference forward ``impl`` with the wide ``out``
# and returns a dict of further wide outputs by name, if any ("h" replaces x as the data the statistics are
# computed from); any other return value (the implementation's own) is ignored.  ``inputs`` is a fresh copy: running statistics may be written.
FORWARD_CALLS = {
    "batch_norm": lambda f, i, eps, opts, out: f(
        i["x"], i.get("weight"), i.get("bias"), i["running_mean"], i["running_var"], training=i["training"],
        momentum=0.1, eps=eps, axis=kernel_axis(i), opts=opts, out=out),
    "layer_norm": lambda f, i, eps, opts, out: f(
        i["x"], tuple(i["normalized_shape"]), i.get("weight"), i.get("bias"), eps=eps, opts=opts, out=out),
    "rms_norm": lambda f, i, eps, opts, out: f(
        i["x"], tuple(i["normalized_shape"]), i.get("weight"), eps=eps, opts=opts, out=out),
    "group_norm": lambda f, i, eps, opts, out: f(
        i["x"], i["num_groups"], i.get("weight"), i.get("bias"), eps=eps, axis=kernel_axis(i), opts=opts,
        out=out),
    "instance_norm": lambda f, i, eps, opts, out: f(
        i["x"], i.get("weight"), i.get("bias"), i["running_mean"], i["running_var"],
        use_input_stats=i.get("use_input_stats", True), momentum=0.1, eps=eps, axis=kernel_axis(i), opts=opts,
        out=out),
    "frozen_batch_norm": lambda f, i, eps, opts, out: f(
        i["x"], i.get("weight"), i.get("bias"), i["running_mean"], i["running_var"], eps=eps, axis=kernel_axis(i),
        out=out),
    # scale >= k: float64 is exact enough for its own metric
    "local_response_norm": lambda f, i, eps, opts, out: {
        "scale": f(i["x"], i["size"], opts=opts, out=out, **LRN_DEFAULTS)[1]},
    "fused_add_norm": lambda f, i, eps, opts, out: _fused_forward(f, i, eps, opts, out),
}


def _fused_forward(f, i, eps, opts, out):
    h = np.empty(i["x"].shape, out.dtype)
    f(i["x"], i["residual"], tuple(i["normalized_shape"]), i.get("weight"), i.get("bias"), alpha=i["alpha"],
      norm=i["norm"], eps=eps, opts=opts, out=out, h_out=h)
    return {"h": h}


# BACKWARD_CALLS[variant](impl, inputs, fwd, dy, eps, opts, dx) calls the reference backward ``impl`` with the
# wide ``dx`` and returns its outputs as a tuple, in BACKWARD_NAMES order (``fwd``: this module's forward).
BACKWARD_CALLS = {
    "batch_norm": lambda f, i, fwd, dy, eps, opts, dx: f(
        dy, i["x"], i.get("weight"), i.get("bias"), fwd.get("mean"), fwd.get("rstd"), training=i["training"],
        eps=eps, axis=kernel_axis(i), opts=opts, dx_out=dx),
    "layer_norm": lambda f, i, fwd, dy, eps, opts, dx: f(
        dy, i["x"], tuple(i["normalized_shape"]), fwd.get("mean"), fwd.get("rstd"), i.get("weight"), i.get("bias"),
        eps=eps, opts=opts, dx_out=dx),
    "rms_norm": lambda f, i, fwd, dy, eps, opts, dx: f(
        dy, i["x"], tuple(i["normalized_shape"]), fwd.get("rstd"), i.get("weight"), eps=eps, opts=opts, dx_out=dx),
    "group_norm": lambda f, i, fwd, dy, eps, opts, dx: f(
        dy, i["x"], i["num_groups"], fwd.get("mean"), fwd.get("rstd"), i.get("weight"), i.get("bias"), eps=eps,
        axis=kernel_axis(i), opts=opts, dx_out=dx),
    "instance_norm": lambda f, i, fwd, dy, eps, opts, dx: f(
        dy, i["x"], fwd.get("mean"), fwd.get("rstd"), i.get("weight"), i.get("bias"),
        use_input_stats=i.get("use_input_stats", True), eps=eps, axis=kernel_axis(i), opts=opts, dx_out=dx),
    "frozen_batch_norm": lambda f, i, fwd, dy, eps, opts, dx: (
        f(dy, i.get("weight"), i["running_var"], eps=eps, axis=kernel_axis(i), dx_out=dx),),
    "local_response_norm": lambda f, i, fwd, dy, eps, opts, dx: (
        f(dy, i["x"], fwd["y"], fwd["scale"], i["size"], opts=opts, dx_out=dx, **LRN_DEFAULTS),),
    "fused_add_norm": lambda f, i, fwd, dy, eps, opts, dx: f(
        dy, fwd["h"], tuple(i["normalized_shape"]), fwd.get("mean"), fwd.get("rstd"), i.get("weight"),
        i.get("bias"), alpha=i["alpha"], norm=i["norm"], dh=None, eps=eps, opts=opts, dx_out=dx),
}

#: the per-variant tables, by the name the docs and :func:`missing` use
TABLES = {"FORWARD_NAMES": FORWARD_NAMES, "BACKWARD_NAMES": BACKWARD_NAMES, "FORWARD_CALLS": FORWARD_CALLS,
          "BACKWARD_CALLS": BACKWARD_CALLS, "STATISTICS": STATISTICS}


def missing(variant: str) -> list[str]:
    """The tables of this module that have no entry for ``variant`` (empty: the oracle knows it)."""
    return [name for name, table in TABLES.items() if variant not in table]


def require(variant: str) -> None:
    """NotImplementedError naming the missing entries when the oracle does not know ``variant`` (the suites
    report that as "not available", as a backend that lacks a variant)."""
    gaps = missing(variant)
    if gaps:
        raise NotImplementedError(
            f"the accuracy oracle has no entry for variant {variant!r} in {', '.join(gaps)} "
            "(normbench/accuracy/oracle.py; see docs/adding-a-variant.md, step 6)")


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
    mean, var = STATISTICS[variant](i, rows, opts)
    return (None if mean is None else mean.reshape(shape)), rstd(var, eps, opts.eps_placement).reshape(shape)


def forward(variant: str, inputs: dict, *, eps=None, opts: Numerics | None = None, **numerics) -> dict:
    """Wide forward outputs by name: y (and h, scale) of x's shape, statistics (mean, rstd) wide."""
    require(variant)
    opts = opts or resolve(numerics)
    i = fresh(inputs)
    x = i["x"]
    impl = registry.implementation(variant, "reference", "forward")
    eps = default_eps(variant, i) if eps is None else float(eps)
    out = np.empty(x.shape, wide_dtype(x.dtype))
    extra = FORWARD_CALLS[variant](impl, i, eps, opts, out)
    res = {"y": out, **(extra if isinstance(extra, dict) else {})}
    if STATISTICS[variant] is not None:
        mean, r = _wide_stats(variant, i, res.get("h", x.astype(out.dtype)), eps, opts)
        res.update(mean=mean, rstd=r)
    return {k: v for k, v in res.items() if v is not None}


def backward(variant: str, inputs: dict, fwd: dict, dy, *, eps=None, opts: Numerics | None = None,
             **numerics) -> dict:
    """Wide gradients by name (dx, dresidual of x's shape; dweight, dbias float64 sums) of the exact forward
    ``fwd`` (this module's :func:`forward`)."""
    require(variant)
    opts = opts or resolve(numerics)
    x = inputs["x"]
    impl = registry.implementation(variant, "reference", "backward")
    eps = default_eps(variant, inputs) if eps is None else float(eps)
    dx = np.empty(x.shape, wide_dtype(x.dtype))
    return named(BACKWARD_NAMES[variant], BACKWARD_CALLS[variant](impl, inputs, fwd, dy, eps, opts, dx))
