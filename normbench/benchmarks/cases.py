"""The ONE case matrix: asv (bench_*.py), pytest-benchmark (tests/benchmarks/) and ``normbench run`` all read it.

A case is a variant x logical shape x dtype x parameter combination, built from :data:`normbench.registry.VARIANTS`:

* the **full** matrix: the registry's default shapes for the variant plus :data:`EXTRA_SHAPES` (shapes from
  real models that the registry does not list: transformer rows tokens x 768 / 4096 / 8192, a single long row,
  ResNet activations from the stem (64 x 112 x 112) to the last stage (2048 x 7 x 7), 3-d volumes, 1-d batch
  norm), float32 and float64, every parameter combination of the registry's grid;
* the **quick** matrix (``make bench``): float32, the variant's smallest shape (latency-bound) and its first
  shape whose x and y together (float32) reach :data:`BIG_BYTES` (bandwidth-bound; the headline size), or
  its largest shape when none does.

Shapes are *logical*: ``(N, C, *spatial)`` for channel variants whatever the layout; the registry's input
makers lay them out for ``axis``.  Nothing here is listed twice: add a shape to the registry (or to
EXTRA_SHAPES when it is a benchmark-only size) and every suite picks it up.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from normbench import registry

try:
    from normbench.bandwidth import TWO_READ_BACKWARD, TWO_READ_FORWARD
except ImportError:  # asv pairs today's benchmarks with older installs of the project
    TWO_READ_FORWARD, TWO_READ_BACKWARD = 2 / 3, 3 / 5

#: headline targets are judged on working sets of at least 128 MiB (4x the L3 measured here)
BIG_BYTES = 128 * 2**20
#: a reduction slab (the values behind one statistic) larger than this is not assumed to stay in cache between
#: the statistics pass and the output pass: x must come from memory twice (a per-thread share of the 32 MiB L3)
SLAB_CACHE_BYTES = 8 * 2**20

PASSES = ("forward", "backward")
DTYPES_QUICK = ("float32",)
DTYPES_FULL = ("float32", "float64")

_ROWS_EXTRA = ((2048, 768), (32768, 768), (8192, 4096), (4096, 8192), (1, 2**24))
_IMAGES_EXTRA = ((32, 64, 112, 112), (128, 512, 28, 28), (128, 2048, 7, 7), (2, 32, 64, 64, 64))
#: benchmark-only shapes per family, on top of the registry's defaults
EXTRA_SHAPES = {
    "layer": _ROWS_EXTRA,
    "rms": _ROWS_EXTRA,
    "fused": _ROWS_EXTRA,
    "batch": _IMAGES_EXTRA + ((65536, 1024),),
    "group": _IMAGES_EXTRA,
    "lrn": ((128, 96, 55, 55),),
}


@dataclass(frozen=True)
class Case:
    variant: str
    shape: tuple  # logical shape
    dtype: str
    params: tuple = ()  # sorted (name, value) pairs

    # ------------------------------------------------------------------ naming
    @property
    def shape_str(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def params_str(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.params)

    @property
    def name(self) -> str:
        """Stable id, e.g. ``batch_norm/32x256x56x56/float32/axis=-1,training=True``."""
        return "/".join(p for p in (self.variant, self.shape_str, self.dtype, self.params_str) if p)

    @property
    def spec(self) -> registry.Variant:
        return registry.VARIANTS[self.variant]

    # ------------------------------------------------------------------ inputs and sizes
    def make_inputs(self, seed: int = 0) -> dict:
        return self.spec.make_inputs(self.shape, np.dtype(self.dtype), np.random.default_rng(seed),
                                     **dict(self.params))

    def nbytes(self, pass_: str, inputs: dict | None = None) -> int:
        """Bytes the pass must move (registry formula), computed on ``inputs`` (or fresh small stand-ins)."""
        inputs = inputs if inputs is not None else self.make_inputs()
        fn = self.spec.forward_bytes if pass_ == "forward" else self.spec.backward_bytes
        return int(fn(inputs))

    def x_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def slab_bytes(self) -> int:
        """Bytes of the values behind one statistic, as laid out in memory.  Channels-last and 2-D batch norm
        statistics gather from the whole tensor (interleaved), so their slab is all of x."""
        p = dict(self.params)
        item = np.dtype(self.dtype).itemsize
        family = self.spec.family
        N = self.shape[0]
        if family in ("layer", "rms", "fused"):
            return self.shape[-1] * item
        if family == "lrn":
            return 0  # no reduction beyond a few channels
        if self.variant == "frozen_batch_norm" or (self.variant == "batch_norm" and not p.get("training", True)):
            return 0  # statistics are given
        C = self.shape[1]
        S = math.prod(self.shape[2:]) if len(self.shape) > 2 else 1
        if self.variant == "batch_norm":
            if p.get("axis", 1) == -1 or len(self.shape) == 2:
                return self.x_bytes()
            return N * S * item
        # group / instance norm: one sample's slab in channels-last, a contiguous (C/G) x S block channels-first
        if p.get("axis", 1) == -1:
            return C * S * item
        G = C if self.variant == "instance_norm" else _num_groups(self.shape, p)
        return (C // G) * S * item

    def limit_factor(self, pass_: str) -> float:
        """1, or the two-read factor (2/3 forward, 3/5 backward) when the slab cannot stay in cache."""
        if self.slab_bytes() <= SLAB_CACHE_BYTES:
            return 1.0
        return TWO_READ_FORWARD if pass_ == "forward" else TWO_READ_BACKWARD

    def limit_name(self, pass_: str) -> str:
        f = self.limit_factor(pass_)
        return "copy" if f == 1.0 else ("2/3 copy" if pass_ == "forward" else "3/5 copy")


def _num_groups(shape, params):
    C = shape[1]
    g = min(params.get("num_groups", 32), C)
    return g if C % g == 0 else 1  # as registry.make_group


def _param_combos(spec: registry.Variant, shape: tuple):
    names = sorted(spec.params)
    for values in itertools.product(*(spec.params[n] for n in names)):
        p = dict(zip(names, values))
        if len(shape) == 2 and p.get("axis") == -1:
            continue  # a 2-D (N, C) input: both layouts are the same thing
        yield tuple(sorted(p.items()))


def variant_shapes(variant: str, full: bool) -> list[tuple]:
    spec = registry.VARIANTS[variant]
    shapes = list(dict.fromkeys(tuple(s) for s in spec.shapes))
    if full:
        shapes += [s for s in EXTRA_SHAPES.get(spec.family, ()) if s not in shapes]
        return sorted(shapes, key=math.prod)
    small = min(shapes, key=math.prod)
    big = next((s for s in shapes if 2 * math.prod(s) * 4 >= BIG_BYTES), max(shapes, key=math.prod))
    return [small] if big == small else [small, big]


def parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))  # "8x": an empty size, an error
    except ValueError:
        raise ValueError(f"shape={text!r}; expected sizes joined by 'x', e.g. 8192x4096") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"shape={text!r}; expected positive sizes joined by 'x', e.g. 8192x4096")
    return shape


def cases(full: bool = False, variants=None, dtypes=None, shapes=None, params=None) -> list[Case]:
    """The case matrix, optionally filtered.  ``shapes`` (logical shapes) replace the matrix's shapes for
    every selected variant; ``params`` is a dict of fixed values (e.g. ``{"axis": 1}``) applied where the
    variant has that parameter."""
    names = list(registry.VARIANTS) if not variants else list(variants)
    unknown = [v for v in names if v not in registry.VARIANTS]
    if unknown:
        raise ValueError(f"variant={unknown}; expected some of {list(registry.VARIANTS)}")
    dts = list(dtypes) if dtypes else list(DTYPES_FULL if full else DTYPES_QUICK)
    bad = [d for d in dts if d not in DTYPES_FULL]
    if bad:
        raise ValueError(f"dtype={bad}; expected some of {list(DTYPES_FULL)}")
    out = []
    for v in names:
        spec = registry.VARIANTS[v]
        for shape in ([tuple(s) for s in shapes] if shapes else variant_shapes(v, full)):
            for combo in _param_combos(spec, shape):
                if params and any(k in dict(combo) and dict(combo)[k] != val for k, val in params.items()):
                    continue
                for dt in dts:
                    out.append(Case(v, shape, dt, combo))
    return out


def by_name(name: str) -> Case:
    """The case whose :attr:`Case.name` is ``name`` (searched in the full matrix)."""
    for c in cases(full=True):
        if c.name == name:
            return c
    raise KeyError(f"no case named {name!r}")
