"""The public functional API: validate, pick the backend, call the implementation.

Every front function here does all argument checking (before any write), resolves ``**numerics`` and
``backend=``, and hands C-contiguous arrays plus a :class:`~normbench.numerics.Numerics` to the backend's
function of the same name (``normbench.<backend>.<family>.<name>``), found through :mod:`normbench.registry`.
Backend implementations receive: the positional arrays of the public signature (validated), then keyword
arguments ``eps``, ``opts`` (Numerics), ``out``/``dx_out``/``h_out`` and the variant's own keywords.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _checks, registry
from .numerics import DEFAULT as DEFAULT_NUMERICS
from .numerics import Numerics, check_correction, check_eps, resolve, rstd_from_var


def _channel_setup(x, axis):
    """(signed axis for kernels, C, values per channel n) for (N, C, *sp) / (N, *sp, C) inputs."""
    ax = _checks.channel_axis(axis, x)
    kernel_axis = 1 if ax == 1 else -1
    if x.ndim == 2:
        kernel_axis = 1  # (N, C): both layouts are the same thing
    C = x.shape[ax]
    n = x.size // C if C else 0
    return kernel_axis, C, n


def _inputs(**arrays):
    return {k: v for k, v in arrays.items() if v is not None}


def _output(name, out, backend, like, **inputs):
    """A preallocated output checked against ``like`` (shape; dtype per backend) and the inputs; None when not
    given (tested first: small calls are overhead-bound). Inputs given as None are skipped by the overlap check.
    Every front function calls it: off backend "cuda", device arrays among the inputs and out are rejected here."""
    if backend != "cuda":
        _checks.host_only(backend, dict(inputs, **{name: out}))
    if out is None:
        return None
    return _checks.output(name, out, like.shape, registry.output_dtype(backend, like), inputs)


def _like_x(x, a):
    """An empty-batch result built on the host, handed back as a device array when x is one (as the kernels'
    results are)."""
    if type(x) is np.ndarray or a is None or not _checks.is_device_array(x):
        return a
    from numba import cuda

    return cuda.to_device(a)


# --------------------------------------------------------------------------------------------- batch norm
class BatchArgs(NamedTuple):
    """Validated batch-norm forward arguments (see :func:`batch_norm_args`)."""

    x: object
    axis: int  # 1 or -1, as the kernels take it
    C: int
    n: int  # values per channel in this process
    weight: object
    bias: object
    running_mean: object
    running_var: object
    momentum: float
    eps: float
    opts: Numerics


def _running_pair(running_mean, running_var, C, x, updated, weight, bias):
    """The running statistics, both or neither; writable, and overlapping no input, where this call ``updated``
    them (training)."""
    running_mean = _checks.param("running_mean", running_mean, (C,), x, writable=updated)
    running_var = _checks.param("running_var", running_var, (C,), x, writable=updated)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (both arrays or both None)")
    if updated and running_mean is not None and not _checks.distinct_allocations(running_mean, running_var, x,
                                                                                   weight, bias):
        _checks.updated_in_place(dict(running_mean=running_mean, running_var=running_var),
                                 dict(x=x, weight=weight, bias=bias))
    return running_mean, running_var


def batch_norm_args(x, weight, bias, running_mean, running_var, training, momentum, eps, axis, numerics) -> BatchArgs:
    """Validate batch norm's forward arguments; shared with SyncBatchNorm, which judges the per-channel count
    (one value per channel, correction) on the global batch instead of this process's."""
    x = _checks.array("x", x, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
    kaxis, C, n = _channel_setup(x, axis)
    weight = _checks.param("weight", weight, (C,), x)
    bias = _checks.param("bias", bias, (C,), x)
    training = _checks.flag("training", training)
    running_mean, running_var = _running_pair(running_mean, running_var, C, x, training, weight, bias)
    eps = check_eps(eps)
    opts = resolve(numerics)
    if training:
        if running_mean is not None:
            momentum = _checks.momentum(momentum)
    elif running_mean is None:
        raise ValueError("training=False needs running_mean and running_var (evaluation uses running statistics)")
    return BatchArgs(x, kaxis, C, n, weight, bias, running_mean, running_var, momentum, eps, opts)


def batch_norm_forward(x, weight, bias, running_mean, running_var, *, training=True, momentum=0.1, eps=1e-5,
                       axis=1, out=None, backend=None, **numerics):
    """Batch norm forward. Returns ``(y, save_mean, save_invstd)``; save_* are float64 arrays of shape (C,).

    Training normalises with the batch statistics and, when running statistics are given, updates them in
    place: ``running = (1 - momentum) * running + momentum * batch`` with the unbiased batch variance.
    Evaluation (``training=False``) uses the running statistics and returns them as ``save_mean`` and
    ``save_invstd`` = the rstd of the running variance (``1/sqrt(running_var + eps)``, or ``1/(sqrt(running_var) +
    eps)`` with ``eps_placement="outside"``).
    """
    a = batch_norm_args(x, weight, bias, running_mean, running_var, training, momentum, eps, axis, numerics)
    x, C, n = a.x, a.C, a.n
    if training:
        if n == 1:
            raise ValueError(f"expected more than 1 value per channel when training, got x of shape "
                             f"{tuple(x.shape)} (axis={axis})")
        check_correction(a.opts, n, "channel")
    backend = registry.pick_backend(x, backend, "batch_norm")
    out = _output("out", out, backend, x, x=x, weight=a.weight, bias=a.bias,
                  running_mean=a.running_mean, running_var=a.running_var)
    if n == 0:  # empty batch: empty output, running statistics untouched (as PyTorch)
        y = out if out is not None else _like_x(x, np.empty(x.shape, registry.output_dtype(backend, x)))
        if training:
            return y, _like_x(x, np.full(C, np.nan)), _like_x(x, np.full(C, np.nan))
        return y, _like_x(x, _checks.host_float64(a.running_mean)), _like_x(x, rstd_from_var(
            _checks.host_float64(a.running_var), a.eps, a.opts.eps_placement))
    impl = registry.implementation("batch_norm", backend, "forward")
    return impl(x, a.weight, a.bias, a.running_mean, a.running_var, training=training, momentum=a.momentum,
                eps=a.eps, axis=a.axis, opts=a.opts, out=out)


def batch_norm_backward(dy, x, weight, bias, save_mean, save_invstd, *, training=True, eps=1e-5, axis=1,
                        dx_out=None, backend=None, **numerics):
    """Batch norm backward. Returns ``(dx, dweight, dbias)``; dweight/dbias are None where weight/bias are None."""
    training = _checks.flag("training", training)
    x = _checks.array("x", x, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
    dy = _checks.like("dy", dy, "x", x)
    kaxis, C, n = _channel_setup(x, axis)
    weight = _checks.param("weight", weight, (C,), x)
    bias = _checks.param("bias", bias, (C,), x)
    save_mean = _checks.stats("save_mean", save_mean, (C,))
    save_invstd = _checks.stats("save_invstd", save_invstd, (C,))
    eps = check_eps(eps)
    opts = resolve(numerics)
    if training:
        check_correction(opts, n, "channel")
    backend = registry.pick_backend(x, backend, "batch_norm")
    dx_out = _output("dx_out", dx_out, backend, x, dy=dy, x=x, weight=weight, bias=bias,
                     save_mean=save_mean, save_invstd=save_invstd)
    if n == 0:
        return _empty_backward(x, C, weight, bias, backend, dx_out)
    impl = registry.implementation("batch_norm", backend, "backward")
    return impl(dy, x, weight, bias, save_mean, save_invstd, training=training, eps=eps, axis=kaxis, opts=opts,
                dx_out=dx_out)


def _empty_backward(x, C, weight, bias, backend, dx_out):
    dtype = registry.output_dtype(backend, x)
    dx = dx_out if dx_out is not None else _like_x(x, np.empty(x.shape, dtype))
    return (dx, None if weight is None else _like_x(x, np.zeros(C, dtype)),
            None if bias is None else _like_x(x, np.zeros(C, dtype)))


# --------------------------------------------------------------------------------------- frozen batch norm
def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, *, eps=1e-5, axis=1, out=None,
                              backend=None):
    """FrozenBN: ``y = (x - running_mean) * weight / sqrt(running_var + eps) + bias``, all four buffers fixed."""
    x = _checks.array("x", x, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
    kaxis, C, n = _channel_setup(x, axis)
    weight = _checks.param("weight", weight, (C,), x, required=True)
    bias = _checks.param("bias", bias, (C,), x, required=True)
    running_mean = _checks.param("running_mean", running_mean, (C,), x, required=True)
    running_var = _checks.param("running_var", running_var, (C,), x, required=True)
    eps = check_eps(eps)
    backend = registry.pick_backend(x, backend, "frozen_batch_norm")
    out = _output("out", out, backend, x, x=x, weight=weight, bias=bias,
                  running_mean=running_mean, running_var=running_var)
    impl = registry.implementation("frozen_batch_norm", backend, "forward")
    return impl(x, weight, bias, running_mean, running_var, eps=eps, axis=kaxis, out=out)


def frozen_batch_norm_backward(dy, weight, running_var, *, eps=1e-5, axis=1, dx_out=None, backend=None):
    """FrozenBN backward: ``dx = dy * weight / sqrt(running_var + eps)`` (the buffers get no gradient)."""
    dy = _checks.array("dy", dy, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
    kaxis, C, n = _channel_setup(dy, axis)
    weight = _checks.param("weight", weight, (C,), dy, required=True)
    running_var = _checks.param("running_var", running_var, (C,), dy, required=True)
    eps = check_eps(eps)
    backend = registry.pick_backend(dy, backend, "frozen_batch_norm")
    dx_out = _output("dx_out", dx_out, backend, dy, dy=dy, weight=weight, running_var=running_var)
    impl = registry.implementation("frozen_batch_norm", backend, "backward")
    return impl(dy, weight, running_var, eps=eps, axis=kaxis, dx_out=dx_out)


# ---------------------------------------------------------------------------------------------- layer norm
def _row_setup(x, normalized_shape):
    shape = _checks.normalized_shape(normalized_shape, x)
    return shape, x.shape[:x.ndim - len(shape)], math.prod(shape)


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, out=None, backend=None,
                       **numerics):
    """Layer norm over the trailing ``normalized_shape``. Returns ``(y, mean, rstd)``, stats float64 of shape
    ``x.shape[:-len(normalized_shape)]``."""
    x = _checks.array("x", x, min_ndim=1)
    shape, lead, D = _row_setup(x, normalized_shape)
    weight = _checks.param("weight", weight, shape, x)
    bias = _checks.param("bias", bias, shape, x)
    eps = check_eps(eps)
    opts = resolve(numerics)
    check_correction(opts, D, "row (normalized_shape)")
    backend = registry.pick_backend(x, backend, "layer_norm")
    out = _output("out", out, backend, x, x=x, weight=weight, bias=bias)
    impl = registry.implementation("layer_norm", backend, "forward")
    return impl(x, shape, weight, bias, eps=eps, opts=opts, out=out)


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight=None, bias=None, *, eps=1e-5, dx_out=None,
                        backend=None, **numerics):
    """Layer norm backward. Returns ``(dx, dweight, dbias)``, None where weight/bias are None."""
    x = _checks.array("x", x, min_ndim=1)
    dy = _checks.like("dy", dy, "x", x)
    shape, lead, D = _row_setup(x, normalized_shape)
    mean = _checks.stats("mean", mean, lead)
    rstd = _checks.stats("rstd", rstd, lead)
    weight = _checks.param("weight", weight, shape, x)
    bias = _checks.param("bias", bias, shape, x)
    eps = check_eps(eps)
    opts = resolve(numerics)
    check_correction(opts, D, "row (normalized_shape)")
    backend = registry.pick_backend(x, backend, "layer_norm")
    dx_out = _output("dx_out", dx_out, backend, x, dy=dy, x=x, weight=weight, bias=bias, mean=mean,
                     rstd=rstd)
    impl = registry.implementation("layer_norm", backend, "backward")
    return impl(dy, x, shape, mean, rstd, weight, bias, eps=eps, opts=opts, dx_out=dx_out)


# ------------------------------------------------------------------------------------------------ RMS norm
_DTYPE_EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps), np.dtype(np.float64): float(np.finfo(np.float64).eps)}


def _rms_eps(eps, x):
    if eps is None:  # dict lookup: np.finfo costs ~0.5 us per call
        return _DTYPE_EPS[x.dtype] if x.dtype in _DTYPE_EPS else float(np.finfo(x.dtype).eps)
    return check_eps(eps)


def rms_norm_forward(x, normalized_shape, weight=None, *, eps=None, out=None, backend=None, **numerics):
    """RMS norm: ``y = x * rstd * weight`` with ``rstd = 1/sqrt(sum(x**2)/(D - correction) + eps)``.
    ``eps=None`` means ``finfo(x.dtype).eps`` (PyTorch). Returns ``(y, rstd)``."""
    x = _checks.array("x", x, min_ndim=1)
    shape, lead, D = _row_setup(x, normalized_shape)
    weight = _checks.param("weight", weight, shape, x)
    eps = _rms_eps(eps, x)
    opts = resolve(numerics)
    check_correction(opts, D, "row (normalized_shape)")
    backend = registry.pick_backend(x, backend, "rms_norm")
    out = _output("out", out, backend, x, x=x, weight=weight)
    impl = registry.implementation("rms_norm", backend, "forward")
    return impl(x, shape, weight, eps=eps, opts=opts, out=out)


def rms_norm_backward(dy, x, normalized_shape, rstd, weight=None, *, eps=None, dx_out=None, backend=None,
                      **numerics):
    """RMS norm backward. Returns ``(dx, dweight)``, dweight None where weight is None."""
    x = _checks.array("x", x, min_ndim=1)
    dy = _checks.like("dy", dy, "x", x)
    shape, lead, D = _row_setup(x, normalized_shape)
    rstd = _checks.stats("rstd", rstd, lead)
    weight = _checks.param("weight", weight, shape, x)
    eps = _rms_eps(eps, x)
    opts = resolve(numerics)
    check_correction(opts, D, "row (normalized_shape)")
    backend = registry.pick_backend(x, backend, "rms_norm")
    dx_out = _output("dx_out", dx_out, backend, x, dy=dy, x=x, weight=weight, rstd=rstd)
    impl = registry.implementation("rms_norm", backend, "backward")
    return impl(dy, x, shape, rstd, weight, eps=eps, opts=opts, dx_out=dx_out)


# ---------------------------------------------------------------------------------------------- group norm
def _group_setup(x, num_groups, axis):
    kaxis, C, n = _channel_setup(x, axis)
    G = _checks.positive_int("num_groups", num_groups)
    if C % G:
        raise ValueError(f"num_groups={G} does not divide the number of channels C={C}")
    return kaxis, C, G, (x.size // x.shape[0] // G if x.shape[0] else 0)


def group_norm_forward(x, num_groups, weight=None, bias=None, *, eps=1e-5, axis=1, out=None, backend=None,
                       **numerics):
    """Group norm: statistics per (sample, group of C/G channels) over the channels and spatial positions.
    Returns ``(y, mean, rstd)`` with float64 stats of shape (N, G)."""
    x = _checks.array("x", x, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
    kaxis, C, G, n = _group_setup(x, num_groups, axis)
    weight = _checks.param("weight", weight, (C,), x)
    bias = _checks.param("bias", bias, (C,), x)
    eps = check_eps(eps)
    opts = resolve(numerics)
    check_correction(opts, n, "group")
    backend = registry.pick_backend(x, backend, "group_norm")
    out = _output("out", out, backend, x, x=x, weight=weight, bias=bias)
    if x.size == 0:  # empty batch (N = 0): empty output, as PyTorch
        y = out if out is not None else _like_x(x, np.empty(x.shape, registry.output_dtype(backend, x)))
        return y, _like_x(x, np.full((x.shape[0], G), np.nan)), _like_x(x, np.full((x.shape[0], G), np.nan))
    impl = registry.implementation("group_norm", backend, "forward")
    return impl(x, G, weight, bias, eps=eps, axis=kaxis, opts=opts, out=out)


def group_norm_backward(dy, x, num_groups, mean, rstd, weight=None, bias=None, *, eps=1e-5, axis=1, dx_out=None,
                        backend=None, **numerics):
    """Group norm backward. Returns ``(dx, dweight, dbias)``."""
    x = _checks.array("x", x, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
    dy = _checks.like("dy", dy, "x", x)
    kaxis, C, G, n = _group_setup(x, num_groups, axis)
    mean = _checks.stats("mean", mean, (x.shape[0], G))
    rstd = _checks.stats("rstd", rstd, (x.shape[0], G))
    weight = _checks.param("weight", weight, (C,), x)
    bias = _checks.param("bias", bias, (C,), x)
    eps = check_eps(eps)
    opts = resolve(numerics)
    check_correction(opts, n, "group")
    backend = registry.pick_backend(x, backend, "group_norm")
    dx_out = _output("dx_out", dx_out, backend, x, dy=dy, x=x, weight=weight, bias=bias, mean=mean,
                     rstd=rstd)
    if x.size == 0:
        return _empty_backward(x, C, weight, bias, backend, dx_out)
    impl = registry.implementation("group_norm", backend, "backward")
    return impl(dy, x, G, mean, rstd, weight, bias, eps=eps, axis=kaxis, opts=opts, dx_out=dx_out)


# ------------------------------------------------------------------------------------------- instance norm
def instance_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *, use_input_stats=True,
                          momentum=0.1, eps=1e-5, axis=1, out=None, backend=None, **numerics):
    """Instance norm: statistics per (sample, channel) over the spatial positions. Returns ``(y, mean, rstd)``,
    float64 of shape (N, C). With running statistics and ``use_input_stats`` they are updated in place with the
    batch average of the per-instance statistics (PyTorch); ``use_input_stats=False`` normalises with them."""
    x = _checks.array("x", x, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
    kaxis, C, _ = _channel_setup(x, axis)
    S = x.size // (x.shape[0] * C) if x.shape[0] * C else 0
    weight = _checks.param("weight", weight, (C,), x)
    bias = _checks.param("bias", bias, (C,), x)
    use_input_stats = _checks.flag("use_input_stats", use_input_stats)
    running_mean, running_var = _running_pair(running_mean, running_var, C, x, use_input_stats, weight, bias)
    eps = check_eps(eps)
    opts = resolve(numerics)
    if use_input_stats:
        if running_mean is not None:
            momentum = _checks.momentum(momentum)
        if S == 1:
            raise ValueError(f"expected more than 1 spatial element per instance-channel when use_input_stats=True, "
                             f"got x of shape {tuple(x.shape)}")
        check_correction(opts, S, "instance-channel")
    elif running_mean is None:
        raise ValueError("use_input_stats=False needs running_mean and running_var")
    backend = registry.pick_backend(x, backend, "instance_norm")
    out = _output("out", out, backend, x, x=x, weight=weight, bias=bias,
                  running_mean=running_mean, running_var=running_var)
    if x.size == 0:
        y = out if out is not None else _like_x(x, np.empty(x.shape, registry.output_dtype(backend, x)))
        return y, _like_x(x, np.full((x.shape[0], C), np.nan)), _like_x(x, np.full((x.shape[0], C), np.nan))
    impl = registry.implementation("instance_norm", backend, "forward")
    return impl(x, weight, bias, running_mean, running_var, use_input_stats=use_input_stats, momentum=momentum,
                eps=eps, axis=kaxis, opts=opts, out=out)


def instance_norm_backward(dy, x, mean, rstd, weight=None, bias=None, *, use_input_stats=True, eps=1e-5, axis=1,
                           dx_out=None, backend=None, **numerics):
    """Instance norm backward. Returns ``(dx, dweight, dbias)``."""
    use_input_stats = _checks.flag("use_input_stats", use_input_stats)
    x = _checks.array("x", x, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
    dy = _checks.like("dy", dy, "x", x)
    kaxis, C, _ = _channel_setup(x, axis)
    S = x.size // (x.shape[0] * C) if x.shape[0] * C else 0
    mean = _checks.stats("mean", mean, (x.shape[0], C))
    rstd = _checks.stats("rstd", rstd, (x.shape[0], C))
    weight = _checks.param("weight", weight, (C,), x)
    bias = _checks.param("bias", bias, (C,), x)
    eps = check_eps(eps)
    opts = resolve(numerics)
    if use_input_stats:
        check_correction(opts, S, "instance-channel")
    backend = registry.pick_backend(x, backend, "instance_norm")
    dx_out = _output("dx_out", dx_out, backend, x, dy=dy, x=x, weight=weight, bias=bias, mean=mean,
                     rstd=rstd)
    if x.size == 0:
        return _empty_backward(x, C, weight, bias, backend, dx_out)
    impl = registry.implementation("instance_norm", backend, "backward")
    return impl(dy, x, mean, rstd, weight, bias, use_input_stats=use_input_stats, eps=eps, axis=kaxis, opts=opts,
                dx_out=dx_out)


# ------------------------------------------------------------------------------------ local response norm
def _lrn_setup(x, size, alpha, beta, k):
    size = _checks.positive_int("size", size)
    return size, _checks.real("alpha", alpha), _checks.real("beta", beta), _checks.real("k", k)


def local_response_norm_forward(x, size, *, alpha=1e-4, beta=0.75, k=1.0, out=None, backend=None):
    """LRN across channels (axis 1), PyTorch semantics: ``scale = k + alpha/size * sum(x**2 over
    [c - size//2, c + (size-1)//2])``, ``y = x * scale**(-beta)``. Returns ``(y, scale)``.  No numerics options:
    no eps, variance or correction enters it, and every backend sums the window in float64 (a keyword such as
    ``accumulate=`` is a TypeError, as for frozen batch norm)."""
    x = _checks.array("x", x, min_ndim=3, what="(N, C, *spatial) with at least one spatial dimension")
    size, alpha, beta, k = _lrn_setup(x, size, alpha, beta, k)
    opts = DEFAULT_NUMERICS
    backend = registry.pick_backend(x, backend, "local_response_norm")
    out = _output("out", out, backend, x, x=x)
    impl = registry.implementation("local_response_norm", backend, "forward")
    return impl(x, size, alpha=alpha, beta=beta, k=k, opts=opts, out=out)


def local_response_norm_backward(dy, x, y, scale, size, *, alpha=1e-4, beta=0.75, k=1.0, dx_out=None,
                                 backend=None):
    """LRN backward. Returns ``dx``."""
    x = _checks.array("x", x, min_ndim=3, what="(N, C, *spatial) with at least one spatial dimension")
    dy = _checks.like("dy", dy, "x", x)
    y = _checks.same_shape("y", y, "x", x)
    scale = _checks.same_shape("scale", scale, "x", x)
    size, alpha, beta, k = _lrn_setup(x, size, alpha, beta, k)
    opts = DEFAULT_NUMERICS
    backend = registry.pick_backend(x, backend, "local_response_norm")
    dx_out = _output("dx_out", dx_out, backend, x, dy=dy, x=x, y=y, scale=scale)
    impl = registry.implementation("local_response_norm", backend, "backward")
    return impl(dy, x, y, scale, size, alpha=alpha, beta=beta, k=k, opts=opts, dx_out=dx_out)


# ------------------------------------------------------------------------------------ fused add + norm
def _fused_setup(x, normalized_shape, bias, norm, eps, alpha):
    if norm not in ("layer", "rms"):
        raise ValueError(f"norm={norm!r}; expected 'layer' or 'rms'")
    if norm == "rms" and bias is not None:
        raise ValueError("bias must be None with norm='rms' (RMS norm has no bias)")
    shape, lead, D = _row_setup(x, normalized_shape)
    eps = _rms_eps(eps, x) if norm == "rms" else check_eps(eps)
    return shape, lead, D, eps, _checks.real("alpha", alpha)


def fused_add_norm_forward(x, residual, normalized_shape, weight=None, bias=None, *, alpha=1.0, norm="layer",
                           eps=1e-5, out=None, h_out=None, backend=None, **numerics):
    """Fused residual add + norm (DeepNorm): ``h = x + alpha * residual``, ``y = Norm(h)``.
    ``residual`` is the skip stream x_l, ``x`` the sublayer output G(x_l). Returns ``(y, h, mean, rstd)``,
    ``mean`` None for ``norm="rms"``."""
    x = _checks.array("x", x, min_ndim=1)
    residual = _checks.like("residual", residual, "x", x)
    shape, lead, D, eps, alpha = _fused_setup(x, normalized_shape, bias, norm, eps, alpha)
    weight = _checks.param("weight", weight, shape, x)
    bias = _checks.param("bias", bias, shape, x)
    opts = resolve(numerics)
    check_correction(opts, D, "row (normalized_shape)")
    backend = registry.pick_backend(x, backend, "fused_add_norm")
    inputs = _inputs(x=x, residual=residual, weight=weight, bias=bias)
    if backend != "cuda":
        _checks.host_only(backend, dict(inputs, out=out, h_out=h_out))
    dtype = registry.output_dtype(backend, x)
    out = _checks.output("out", out, x.shape, dtype, inputs)
    h_out = _checks.output("h_out", h_out, x.shape, dtype, inputs)
    if out is not None and h_out is not None and _checks.overlaps(out, h_out):
        raise ValueError("out and h_out share memory; they must be distinct arrays")
    impl = registry.implementation("fused_add_norm", backend, "forward")
    return impl(x, residual, shape, weight, bias, alpha=alpha, norm=norm, eps=eps, opts=opts, out=out, h_out=h_out)


def fused_add_norm_backward(dy, h, normalized_shape, mean, rstd, weight=None, bias=None, *, alpha=1.0, norm="layer",
                            dh=None, eps=1e-5, dx_out=None, dresidual_out=None, backend=None, **numerics):
    """Fused add + norm backward: ``dh_total = Norm_backward(dy) + dh``; returns
    ``(dx, dresidual, dweight, dbias)`` with ``dx = dh_total`` and ``dresidual = alpha * dh_total``.
    ``dresidual_out=`` preallocates dresidual as ``dx_out=`` does dx (a fresh full-size output costs page faults)."""
    h = _checks.array("h", h, min_ndim=1)
    dy = _checks.array("dy", dy, min_ndim=1)
    if tuple(dy.shape) != tuple(h.shape):
        raise ValueError(f"dy has shape {tuple(dy.shape)}; expected the shape of h, {tuple(h.shape)}")
    shape, lead, D, eps, alpha = _fused_setup(h, normalized_shape, bias, norm, eps, alpha)
    x_like = dy  # h may be float64 (from the reference backend); dtype follows dy
    if norm == "layer":
        mean = _checks.stats("mean", mean, lead)
    elif mean is not None:
        raise ValueError("mean must be None with norm='rms' (the forward returns mean=None)")
    rstd = _checks.stats("rstd", rstd, lead)
    weight = _checks.param("weight", weight, shape, x_like)
    bias = _checks.param("bias", bias, shape, x_like)
    if dh is not None:
        dh = _checks.like("dh", dh, "dy", dy)
    opts = resolve(numerics)
    check_correction(opts, D, "row (normalized_shape)")
    backend = registry.pick_backend(dy, backend, "fused_add_norm")
    inputs = _inputs(dy=dy, h=h, weight=weight, bias=bias, dh=dh, mean=mean, rstd=rstd)
    if backend != "cuda":
        _checks.host_only(backend, dict(inputs, dx_out=dx_out, dresidual_out=dresidual_out))
    dtype = registry.output_dtype(backend, dy)
    dx_out = _checks.output("dx_out", dx_out, dy.shape, dtype, inputs)
    dresidual_out = _checks.output("dresidual_out", dresidual_out, dy.shape, dtype, inputs)
    if dx_out is not None and dresidual_out is not None and _checks.overlaps(dx_out, dresidual_out):
        raise ValueError("dx_out and dresidual_out share memory; they must be distinct arrays")
    impl = registry.implementation("fused_add_norm", backend, "backward")
    return impl(dy, h, shape, mean, rstd, weight, bias, alpha=alpha, norm=norm, dh=dh, eps=eps, opts=opts,
                dx_out=dx_out, dresidual_out=dresidual_out)
