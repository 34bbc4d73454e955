"""Stress families: ``family(shape, dtype, rng, variant="layer_norm", **params) -> inputs``.

Each returns the input dict of ``registry.VARIANTS[variant].make_inputs`` (weights, biases and running variances
as the registry makes them) with ``x`` (and fused add + norm's ``residual``) replaced by the family's data, and a
running mean where the inputs have one as training leaves it: each channel's data mean, off by a quarter of its
spread (:func:`trained_running_mean`; evaluation then meets the cancellation of ``x - running_mean`` that a real
model meets on offset data).
What each family claims (checked by tests/test_accuracy.py):

=================  ==================================================================================
standard           N(0, 1)
offset1e3/4/6      c + N(0, 1) with c = 1e3, 1e4, 1e6: mean offset c times the spread
tiny_var           sqrt(1e-3 * eps) * N(0, 1): variance 1e-3 of the variant's default eps
var_near_eps       sqrt(eps) * N(0, 1): variance about eps (where eps placement matters most)
constant           every normalisation group (row, channel, (sample, group)) constant: variance exactly 0
overflow32         1e20 * N(0, 1): x*x overflows float32 (max 3.4e38)
long_rows          1 + N(0, 1) with 2**20 values per normalisation group (the shape is the family's own)
cauchy             standard Cauchy: heavy tails, a few values 1e3-1e5 times the typical one
batch_n2           N(0, 1) with N = 2 samples (batch norm: 2 * spatial values per channel)
mixed_scale        N(0, 1) times 10**U(-3, 3) per channel (per feature for row norms)
=================  ==================================================================================

Fused add + norm draws ``x`` and ``residual`` from the family independently, so the claims hold for
``h = x + residual`` up to a factor 2 in offset and spread; ``constant`` makes both constant per row.
"""
from __future__ import annotations

import math

import numpy as np

from .. import registry
from . import layout
from .layout import channel_ids, group_ids
from .oracle import default_eps


class _Shapes(dict):
    """A per-variant shape table whose row variants (:func:`layout.row_variant`) not listed take the row
    default ``row``; any other variant not listed is a NotImplementedError naming the table."""

    def __init__(self, name, row, entries):
        super().__init__(entries)
        self.name, self.row = name, row

    def __missing__(self, variant):
        if variant in registry.VARIANTS and layout.row_variant(variant):
            return self.row
        raise NotImplementedError(f"no accuracy sweep shape for variant {variant!r}: add it to "
                                  f"normbench/accuracy/families.py {self.name} (see docs/adding-a-variant.md, step 6)")


#: small default shapes per variant for the sweep (group norm: num_groups=4); row variants default to (32, 1024)
SHAPES = _Shapes("SHAPES", (32, 1024), {
    "batch_norm": (8, 16, 8, 8),
    "frozen_batch_norm": (8, 16, 8, 8),
    "group_norm": (4, 16, 8, 8),
    "instance_norm": (4, 16, 8, 8),
    "local_response_norm": (4, 16, 8, 8),
    "layer_norm": (32, 1024),
    "rms_norm": (32, 1024),
    "fused_add_norm": (32, 1024),
})
#: the ``--quick`` shapes; row variants default to (8, 256)
QUICK_SHAPES = _Shapes("QUICK_SHAPES", (8, 256), {
    "batch_norm": (4, 8, 4, 4),
    "frozen_batch_norm": (4, 8, 4, 4),
    "group_norm": (2, 8, 4, 4),
    "instance_norm": (2, 8, 4, 4),
    "local_response_norm": (2, 8, 4, 4),
    "layer_norm": (8, 256),
    "rms_norm": (8, 256),
    "fused_add_norm": (8, 256),
})
LONG = 2 ** 20
#: long_rows shapes: 2**20 values per normalisation group; row variants default to (2, 2**20)
LONG_SHAPES = _Shapes("LONG_SHAPES", (2, LONG), {
    "batch_norm": (16, 2, 2 ** 16),
    "frozen_batch_norm": (16, 2, 2 ** 16),
    "group_norm": (1, 2, LONG),  # num_groups = 2: one channel per group
    "instance_norm": (1, 2, LONG),
    "local_response_norm": (1, 4, 2 ** 18),
    "layer_norm": (2, LONG),
    "rms_norm": (2, LONG),
    "fused_add_norm": (2, LONG),
})
DEFAULT_PARAMS = {"group_norm": {"num_groups": 4}}


def _params(variant, shape, params):
    p = dict(DEFAULT_PARAMS.get(variant, {}))
    p.update(params)
    if variant == "group_norm":
        C = shape[1]
        p["num_groups"] = math.gcd(p["num_groups"], C)
    return p


def _base(variant, shape, dtype, rng, params):
    spec = registry.VARIANTS[variant]
    return spec.make_inputs(tuple(shape), np.dtype(dtype), rng, **_params(variant, shape, params))


def _eps_of(variant, inputs):
    if variant == "fused_add_norm" and inputs.get("norm") == "rms":
        return 1e-5
    return default_eps(variant, inputs)


def _family(make_x, *, shape=None, variants=None):
    """Wrap ``make_x(inputs, variant, rng) -> float64 array of x's shape`` into a family."""

    def family(shape_, dtype, rng, variant="layer_norm", **params):
        if variants is not None and variant not in variants:
            raise ValueError(f"family {family.__name__!r} applies to {list(variants)}, not {variant!r}")
        if shape is not None:
            shape_ = shape(variant, shape_)
        inputs = _base(variant, shape_, dtype, rng, params)
        inputs["x"] = np.ascontiguousarray(make_x(inputs, variant, rng), dtype=dtype)
        if "residual" in inputs:
            inputs["residual"] = np.ascontiguousarray(make_x(inputs, variant, rng), dtype=dtype)
        if isinstance(inputs.get("running_mean"), np.ndarray):
            inputs["running_mean"] = trained_running_mean(inputs, rng)
        return inputs

    family.variants = variants
    return family


def trained_running_mean(inputs, rng) -> np.ndarray:
    """Each channel's mean of x plus 0.25 of its spread times N(0, 1), in the running mean's dtype."""
    x = inputs["x"].astype(np.float64)
    ax = layout.channel_axis(inputs)
    other = tuple(a for a in range(x.ndim) if a != ax)
    mean, spread = x.mean(axis=other), x.std(axis=other)
    return (mean + 0.25 * spread * rng.standard_normal(mean.shape)).astype(inputs["running_mean"].dtype)


def _normal(i, v, rng):
    return rng.standard_normal(i["x"].shape)


def _offset(c):
    return lambda i, v, rng: c + rng.standard_normal(i["x"].shape)


def _scaled_to_eps(ratio):
    return lambda i, v, rng: math.sqrt(ratio * _eps_of(v, i)) * rng.standard_normal(i["x"].shape)


def _constant(i, v, rng):
    ids, G = group_ids(v, i)
    return (2.0 + rng.standard_normal(G))[ids]


def _overflow(i, v, rng):
    return 1e20 * rng.standard_normal(i["x"].shape)


def _long(i, v, rng):
    return 1.0 + rng.standard_normal(i["x"].shape)


def _cauchy(i, v, rng):
    return rng.standard_cauchy(i["x"].shape)


def _mixed(i, v, rng):
    chan = channel_ids(v, i)
    scales = 10.0 ** rng.uniform(-3, 3, int(chan.max()) + 1)
    return scales[chan] * rng.standard_normal(i["x"].shape)


def _batch2(variant, shape):
    return (2,) + tuple(shape[1:])


def _long_shape(variant, shape):
    return LONG_SHAPES[variant]


def scaled_variance(ratio):
    """A family with variance ``ratio * eps`` (the eps-placement study sweeps the ratio)."""
    return _family(_scaled_to_eps(ratio))


def offset(c):
    """A family ``c + N(0, 1)`` (the offset study sweeps c)."""
    return _family(_offset(c))


FAMILIES = {
    "standard": _family(_normal),
    "offset1e3": _family(_offset(1e3)),
    "offset1e4": _family(_offset(1e4)),
    "offset1e6": _family(_offset(1e6)),
    "tiny_var": _family(_scaled_to_eps(1e-3)),
    "var_near_eps": _family(_scaled_to_eps(1.0)),
    "constant": _family(_constant),
    "overflow32": _family(_overflow),
    "long_rows": _family(_long, shape=_long_shape),
    "cauchy": _family(_cauchy),
    "batch_n2": _family(_normal, shape=_batch2, variants=("batch_norm",)),
    "mixed_scale": _family(_mixed),
}
for _name, _f in FAMILIES.items():
    _f.__name__ = _name

#: the mean offset of each family, in units of its spread (0 where centred): the x axis of the offset figure
OFFSETS = {"standard": 0.0, "offset1e3": 1e3, "offset1e4": 1e4, "offset1e6": 1e6}


def applies(family: str, variant: str) -> bool:
    f = FAMILIES[family]
    if f.variants is not None and variant not in f.variants:
        return False
    if family in ("tiny_var", "var_near_eps") and not registry.VARIANTS[variant].uses_numerics:
        return False  # no eps in the statistics (frozen batch norm, LRN)
    return True


def make(family: str, variant: str, dtype, rng, *, quick=False, shape=None, **params) -> dict:
    """The family's inputs for ``variant`` at the sweep's default (or ``quick``) shape."""
    if shape is None:
        shape = (QUICK_SHAPES if quick else SHAPES)[variant]
    return FAMILIES[family](shape, dtype, rng, variant=variant, **params)

