"""VARIANTS: one spec per normalization variant.

A spec names the family module (``normbench/<backend>/<family>.py`` holds the variant's forward and backward
for that backend, under the public function names), an input maker, how to call the public forward and
backward generically, the bytes a forward and a backward must move (for bandwidth figures), default benchmark
shapes and parameters, and the tolerance of a float32 kernel against the float64 reference.

Backends are found by convention, so adding a backend module needs no edit here: a backend "has" a variant
when its family module defines the function.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

BACKENDS = ("reference", "cpu", "cuda")


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    make_inputs: Callable  # (shape, dtype, rng, **params) -> dict of named inputs (arrays and scalars)
    run_forward: Callable  # (inputs, **kw) -> tuple of outputs (kw: backend=, numerics, out=)
    run_backward: Callable  # (inputs, forward outputs, dy, **kw) -> tuple of gradients
    forward_bytes: Callable  # (inputs) -> bytes a forward must move: read inputs once, write outputs once
    backward_bytes: Callable
    shapes: tuple  # default benchmark shapes, small to large
    params: dict = field(default_factory=dict)  # parameter grid, e.g. {"axis": (1, -1)}
    uses_numerics: bool = True
    rtol: dict = field(default_factory=lambda: {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12})

    @property
    def forward_name(self) -> str:
        return f"{self.name}_forward"

    @property
    def backward_name(self) -> str:
        return f"{self.name}_backward"


# ------------------------------------------------------------------------------------------- dispatch
_MODULES: dict = {}  # (backend, family) -> module or None: the lookup runs on every call, so it is cached


def _backend_module(backend: str, family: str):
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; expected None or one of {list(BACKENDS)}")
    if backend == "cuda":
        from . import cuda

        cuda.require()
    key = (backend, family)
    if key not in _MODULES:
        try:
            _MODULES[key] = importlib.import_module(f"normbench.{backend}.{family}")
        except ModuleNotFoundError as err:
            if err.name != f"normbench.{backend}.{family}":
                raise
            _MODULES[key] = None
    return _MODULES[key]


def has_backend(variant: str, backend: str) -> bool:
    spec = VARIANTS[variant]
    try:
        module = _backend_module(backend, spec.family)
    except (RuntimeError, ValueError):
        return False
    return module is not None and hasattr(module, spec.forward_name) and hasattr(module, spec.backward_name)


_IMPLEMENTATIONS: dict = {}  # (variant, backend, which) -> function, once found (every call asks)


def implementation(variant: str, backend: str, which: str):
    """The backend's function for ``variant``'s "forward" or "backward" pass."""
    fn = _IMPLEMENTATIONS.get((variant, backend, which))
    if fn is not None:
        return fn
    spec = VARIANTS[variant]
    name = spec.forward_name if which == "forward" else spec.backward_name
    module = _backend_module(backend, spec.family)
    fn = getattr(module, name, None) if module is not None else None
    if fn is None:
        raise NotImplementedError(f"backend {backend!r} does not implement {name}")
    _IMPLEMENTATIONS[variant, backend, which] = fn
    return fn


_DEFAULT_HOST_BACKEND: dict = {}  # variant -> "cpu" or "reference"


def _default_host_backend(variant: str) -> str:
    if variant not in _DEFAULT_HOST_BACKEND:
        _DEFAULT_HOST_BACKEND[variant] = "cpu" if has_backend(variant, "cpu") else "reference"
    return _DEFAULT_HOST_BACKEND[variant]


def pick_backend(x, backend, variant: str) -> str:
    """``backend=None``: "cuda" for arrays exposing ``__cuda_array_interface__``, otherwise "cpu" (or the
    reference while a variant has no CPU kernel)."""
    if backend is None:
        if type(x) is np.ndarray:
            return _default_host_backend(variant)
        from ._checks import is_device_array

        if is_device_array(x):
            return "cuda"
        return _default_host_backend(variant)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; expected None or one of {list(BACKENDS)}")
    if backend == "cuda":
        from . import cuda

        cuda.require()
    return backend


def output_dtype(backend: str, x) -> np.dtype:
    """The reference computes and returns float64; the kernels return x's dtype."""
    return np.dtype(np.float64) if backend == "reference" else np.dtype(x.dtype)


def available_backends(variant: str) -> list[str]:
    return [b for b in BACKENDS if has_backend(variant, b)]


# ------------------------------------------------------------------------------------------- inputs
def _affine(rng, shape, dtype):
    return (1.0 + 0.1 * rng.standard_normal(shape)).astype(dtype), (0.1 * rng.standard_normal(shape)).astype(dtype)


def _channels(shape, axis):
    """The logical shape (N, C, *spatial) laid out for ``axis``."""
    if len(shape) < 2:
        raise ValueError(f"shape {tuple(shape)}: expected (N, C, *spatial), rank >= 2")
    if axis == 1 or len(shape) == 2:
        return tuple(shape), shape[1]
    return (shape[0], *shape[2:], shape[1]), shape[1]


def _nbytes(*arrays):
    return int(sum(a.nbytes for a in arrays if isinstance(a, np.ndarray)))


def _stat_bytes(outputs):
    return _nbytes(*[o for o in outputs[1:] if isinstance(o, np.ndarray)])


def make_batch(shape, dtype, rng, axis=1, training=True, affine=True):
    phys, C = _channels(shape, axis)
    x = rng.standard_normal(phys).astype(dtype)
    w, b = _affine(rng, C, dtype) if affine else (None, None)
    rm = (0.1 * rng.standard_normal(C)).astype(dtype)
    rv = (1.0 + 0.1 * rng.random(C)).astype(dtype)
    return dict(x=x, weight=w, bias=b, running_mean=rm, running_var=rv, axis=axis, training=training)


def make_rows(shape, dtype, rng, affine=True, normalized_ndim=1):
    x = rng.standard_normal(shape).astype(dtype)
    nshape = tuple(shape[len(shape) - normalized_ndim:])
    w, b = _affine(rng, nshape, dtype) if affine else (None, None)
    return dict(x=x, normalized_shape=nshape, weight=w, bias=b)


def make_rms(shape, dtype, rng, affine=True, normalized_ndim=1):
    """make_rows without the bias, which RMS norm does not take (the same weights: the bias is still drawn)."""
    d = make_rows(shape, dtype, rng, affine=affine, normalized_ndim=normalized_ndim)
    d["bias"] = None
    return d


def make_group(shape, dtype, rng, num_groups=32, axis=1, affine=True):
    phys, C = _channels(shape, axis)
    x = rng.standard_normal(phys).astype(dtype)
    w, b = _affine(rng, C, dtype) if affine else (None, None)
    return dict(x=x, num_groups=min(num_groups, C) if C % min(num_groups, C) == 0 else 1, weight=w, bias=b,
                axis=axis)


def make_instance(shape, dtype, rng, axis=1, affine=True, running=False):
    d = make_batch(shape, dtype, rng, axis=axis, affine=affine)
    d.pop("training")
    if not running:
        d["running_mean"] = d["running_var"] = None
    return d


def make_frozen(shape, dtype, rng, axis=1):
    d = make_batch(shape, dtype, rng, axis=axis)
    d.pop("training")
    return d


def make_lrn(shape, dtype, rng, size=5):
    return dict(x=rng.standard_normal(shape).astype(dtype), size=size)


def make_fused(shape, dtype, rng, norm="layer", affine=True, alpha=1.0):
    d = make_rows(shape, dtype, rng, affine=affine)
    d["residual"] = rng.standard_normal(shape).astype(dtype)
    d.update(norm=norm, alpha=alpha)
    if norm == "rms":
        d["bias"] = None
    return d


# ------------------------------------------------------------------------------------------- runners
def _api():
    from . import functional

    return functional


def _fwd_batch(i, **kw):
    return _api().batch_norm_forward(i["x"], i["weight"], i["bias"], i["running_mean"], i["running_var"],
                                     training=i["training"], axis=i["axis"], **kw)


def _bwd_batch(i, o, dy, **kw):
    return _api().batch_norm_backward(dy, i["x"], i["weight"], i["bias"], o[1], o[2], training=i["training"],
                                      axis=i["axis"], **kw)


def _fwd_layer(i, **kw):
    return _api().layer_norm_forward(i["x"], i["normalized_shape"], i["weight"], i["bias"], **kw)


def _bwd_layer(i, o, dy, **kw):
    return _api().layer_norm_backward(dy, i["x"], i["normalized_shape"], o[1], o[2], i["weight"], i["bias"], **kw)


def _fwd_rms(i, **kw):
    return _api().rms_norm_forward(i["x"], i["normalized_shape"], i["weight"], **kw)


def _bwd_rms(i, o, dy, **kw):
    return _api().rms_norm_backward(dy, i["x"], i["normalized_shape"], o[1], i["weight"], **kw)


def _fwd_group(i, **kw):
    return _api().group_norm_forward(i["x"], i["num_groups"], i["weight"], i["bias"], axis=i["axis"], **kw)


def _bwd_group(i, o, dy, **kw):
    return _api().group_norm_backward(dy, i["x"], i["num_groups"], o[1], o[2], i["weight"], i["bias"],
                                      axis=i["axis"], **kw)


def _fwd_instance(i, **kw):
    return _api().instance_norm_forward(i["x"], i["weight"], i["bias"], i["running_mean"], i["running_var"],
                                        axis=i["axis"], **kw)


def _bwd_instance(i, o, dy, **kw):
    return _api().instance_norm_backward(dy, i["x"], o[1], o[2], i["weight"], i["bias"], axis=i["axis"], **kw)


def _fwd_frozen(i, **kw):
    return (_api().frozen_batch_norm_forward(i["x"], i["weight"], i["bias"], i["running_mean"], i["running_var"],
                                             axis=i["axis"], **kw),)


def _bwd_frozen(i, o, dy, **kw):
    return (_api().frozen_batch_norm_backward(dy, i["weight"], i["running_var"], axis=i["axis"], **kw),)


def _fwd_lrn(i, **kw):
    return _api().local_response_norm_forward(i["x"], i["size"], **kw)


def _bwd_lrn(i, o, dy, **kw):
    return (_api().local_response_norm_backward(dy, i["x"], o[0], o[1], i["size"], **kw),)


def _fwd_fused(i, **kw):
    return _api().fused_add_norm_forward(i["x"], i["residual"], i["normalized_shape"], i["weight"], i["bias"],
                                         alpha=i["alpha"], norm=i["norm"], **kw)


def _bwd_fused(i, o, dy, **kw):
    return _api().fused_add_norm_backward(dy, o[1], i["normalized_shape"], o[2], o[3], i["weight"], i["bias"],
                                          alpha=i["alpha"], norm=i["norm"], **kw)


# ------------------------------------------------------------------------------------------- bytes moved
def _params(i):
    return _nbytes(i.get("weight"), i.get("bias"))


def _stats_bytes(i, per_unit=2):
    """The saved float64 statistics: mean and rstd per unit, rstd alone for RMS norm (``per_unit=1``)."""
    return per_unit * 8 * _stat_count(i)


def _bytes_norm_fwd(i, per_unit=2):
    """read x (+ params), write y (+ saved statistics, float64)."""
    return 2 * i["x"].nbytes + _params(i) + _stats_bytes(i, per_unit)


def _bytes_norm_bwd(i, per_unit=2):
    """read dy, x (+ params, stats), write dx (+ dweight, dbias)."""
    return 3 * i["x"].nbytes + 2 * _params(i) + _stats_bytes(i, per_unit)


def _bytes_rms_fwd(i):
    return _bytes_norm_fwd(i, per_unit=1)


def _bytes_rms_bwd(i):
    return _bytes_norm_bwd(i, per_unit=1)


def is_row(inputs) -> bool:
    """Whether a variant's inputs are a row variant's (layer, RMS, fused norms and any new one): normalised over a
    trailing ``normalized_shape``, which its ``make_inputs`` must include (docs/adding-a-variant.md)."""
    return "normalized_shape" in inputs


def _stat_count(i):
    x = i["x"]
    if is_row(i):
        return x.size // max(1, math.prod(i["normalized_shape"]))
    if "num_groups" in i:
        return x.shape[0] * i["num_groups"]
    if "training" in i:  # batch norm: per channel
        return x.shape[1 if i["axis"] == 1 else -1]
    return x.shape[0] * x.shape[1 if i["axis"] == 1 else -1]


def _fused_stats_bytes(i):
    return _stats_bytes(i, 1 if i["norm"] == "rms" else 2)


def _bytes_fused_fwd(i):
    return 4 * i["x"].nbytes + _params(i) + _fused_stats_bytes(i)  # read x, residual; write y, h


def _bytes_fused_bwd(i):
    return 4 * i["x"].nbytes + 2 * _params(i) + _fused_stats_bytes(i)  # read dy, h; write dx, dresidual


def _bytes_lrn_fwd(i):
    return 3 * i["x"].nbytes  # read x; write y, scale


def _bytes_lrn_bwd(i):
    return 5 * i["x"].nbytes  # read dy, x, y, scale; write dx


def _bytes_frozen_fwd(i):
    return 2 * i["x"].nbytes + 4 * i["weight"].nbytes


def _bytes_frozen_bwd(i):
    return 2 * i["x"].nbytes + 2 * i["weight"].nbytes


ROWS = ((8, 768), (8192, 1024), (32768, 256), (16384, 2048), (4096, 8192), (262144, 128))
IMAGES = ((8, 64, 56, 56), (64, 128, 56, 56), (128, 256, 28, 28))

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("batch_norm", "batch", make_batch, _fwd_batch, _bwd_batch, _bytes_norm_fwd, _bytes_norm_bwd,
                shapes=IMAGES + ((4096, 8192), (8, 64, 16, 56, 56)), params={"axis": (1, -1), "training": (True, False)}),
        Variant("layer_norm", "layer", make_rows, _fwd_layer, _bwd_layer, _bytes_norm_fwd, _bytes_norm_bwd,
                shapes=ROWS),
        Variant("rms_norm", "rms", make_rms, _fwd_rms, _bwd_rms, _bytes_rms_fwd, _bytes_rms_bwd, shapes=ROWS),
        Variant("group_norm", "group", make_group, _fwd_group, _bwd_group, _bytes_norm_fwd, _bytes_norm_bwd,
                shapes=IMAGES, params={"axis": (1, -1)}),
        Variant("instance_norm", "group", make_instance, _fwd_instance, _bwd_instance, _bytes_norm_fwd,
                _bytes_norm_bwd, shapes=IMAGES, params={"axis": (1, -1)}),
        Variant("frozen_batch_norm", "batch", make_frozen, _fwd_frozen, _bwd_frozen, _bytes_frozen_fwd,
                _bytes_frozen_bwd, shapes=IMAGES, params={"axis": (1, -1)}, uses_numerics=False),
        Variant("local_response_norm", "lrn", make_lrn, _fwd_lrn, _bwd_lrn, _bytes_lrn_fwd, _bytes_lrn_bwd,
                shapes=((8, 64, 56, 56), (32, 96, 55, 55)), uses_numerics=False),
        Variant("fused_add_norm", "fused", make_fused, _fwd_fused, _bwd_fused, _bytes_fused_fwd, _bytes_fused_bwd,
                shapes=ROWS, params={"norm": ("layer", "rms")}),
    )
}
