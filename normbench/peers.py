"""The comparison peers: NumPy textbook code, PyTorch CPU, JAX — each optional.

``prepare(peer, variant, inputs, dy)`` returns ``(forward, backward)``: zero-argument callables (the timed
regions) that return the pass's main output as a NumPy array (``y`` forward, ``dx`` backward), computed in the
input dtype, on the same inputs as normbench's kernels (the registry's input dicts).  ``backward`` needs the
forward's saved values; ``prepare`` computes them once, outside any timed region.  A peer that lacks a variant
(or a layout) raises :class:`NotImplementedError` from ``prepare``; the suites report that peer as n/a for the
variant.  A new variant has no peer until it is added here (:data:`NUMPY_VARIANTS` and its textbook formula in
:func:`_numpy`; :func:`_torch`, :func:`_jax`): see docs/adding-a-variant.md.

* ``numpy``: the textbook formulas a tutorial writes (``x.mean``, ``x.var``, broadcasting), in the input dtype.
* ``torch``: ``torch.nn.functional`` on zero-copy views of the NumPy inputs, threads set to Numba's thread count;
  forward under ``no_grad``, backward as ``torch.autograd.grad`` on a graph recorded once (``retain_graph``).
  Channels-last inputs become NCHW views with channels-last strides, which PyTorch's CPU kernels handle natively.
* ``jax``: ``jax.jit`` of the same textbook formulas, backward through ``jax.vjp`` (when JAX is installed).
"""
from __future__ import annotations

import importlib.util

import numpy as np

from . import registry

PEERS = ("numpy", "torch", "jax")
#: the variants the NumPy (and JAX) textbook formulas below know; any other is NotImplementedError (n/a)
NUMPY_VARIANTS = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "frozen_batch_norm",
                  "local_response_norm", "fused_add_norm")
#: channel variants by the axes their statistics reduce over (row variants are recognised by normalized_shape)
CHANNEL_REDUCTION = {"batch_norm": "batch", "frozen_batch_norm": "batch", "instance_norm": "spatial"}


def available() -> list[str]:
    """The peers installed here (numpy always)."""
    return [p for p in PEERS if p == "numpy" or importlib.util.find_spec(p) is not None]


def prepare(peer: str, variant: str, inputs: dict, dy: np.ndarray):
    if peer not in PEERS:
        raise ValueError(f"peer={peer!r}; expected one of {list(PEERS)}")
    if peer == "numpy":
        return _numpy(variant, inputs, dy, np)
    if peer == "torch":
        return _torch(variant, inputs, dy)
    return _jax(variant, inputs, dy)


# ============================================================================================ textbook formulas
# Written once against an array namespace ``xp`` (numpy or jax.numpy), the way tutorials write them.
def _reduce_axes(variant, x, inputs):
    """(axes to reduce over, broadcast shape of per-channel parameters or None).  Row variants (any variant whose
    inputs carry ``normalized_shape``) reduce over the trailing ``normalized_shape``; channel variants are listed
    in ``CHANNEL_REDUCTION`` (group norm and LRN are not axis reductions: see ``_group_view`` and ``_lrn``).
    Also the accuracy unit of ``normbench run`` (runner.error_scale)."""
    nd = x.ndim
    if registry.is_row(inputs):
        k = len(inputs["normalized_shape"])
        return tuple(range(nd - k, nd)), None
    axis = inputs.get("axis", 1)
    ch = 1 if axis == 1 or nd == 2 else nd - 1
    bshape = tuple(x.shape[ch] if a == ch else 1 for a in range(nd))
    kind = CHANNEL_REDUCTION.get(variant)
    if kind == "batch":
        return tuple(a for a in range(nd) if a != ch), bshape
    if kind == "spatial":
        return tuple(a for a in range(1, nd) if a != ch), bshape
    raise NotImplementedError(f"{variant}: normbench.peers._reduce_axes does not know the axes its statistics "
                              "reduce over (a channel variant: add it to peers.CHANNEL_REDUCTION; see "
                              "docs/adding-a-variant.md, step 6)")


def _group_view(x, G, axis, xp):
    """Group norm as a normalisation over the axes of a (N, G, C/G, *sp) or (N, *sp, G, C/G) view."""
    nd = x.ndim
    if axis == 1 or nd == 2:
        C = x.shape[1]
        v = x.reshape((x.shape[0], G, C // G) + tuple(x.shape[2:]))
        return v, tuple(range(2, nd + 1))
    C = x.shape[-1]
    v = x.reshape(tuple(x.shape[:-1]) + (G, C // G))
    return v, tuple(range(1, nd - 1)) + (nd,)


def _numpy(variant, inputs, dy, xp):
    if variant not in NUMPY_VARIANTS:
        raise NotImplementedError(f"no NumPy peer for {variant}")
    x, w, b = inputs["x"], inputs.get("weight"), inputs.get("bias")
    eps = 1e-5
    if variant == "local_response_norm":
        return _lrn(x, dy, inputs["size"], xp)
    if variant == "frozen_batch_norm":
        _, bshape = _reduce_axes(variant, x, inputs)
        def fwd():
            scale = w / xp.sqrt(inputs["running_var"] + eps)
            return x * scale.reshape(bshape) + (b - inputs["running_mean"] * scale).reshape(bshape)
        def bwd():
            return dy * (w / xp.sqrt(inputs["running_var"] + eps)).reshape(bshape)
        return fwd, bwd
    if variant == "fused_add_norm":
        alpha, inner = inputs["alpha"], ("rms_norm" if inputs["norm"] == "rms" else "layer_norm")
        h = x + alpha * inputs["residual"]
        _, bwd_h, fwd_of = _numpy_norm(inner, dict(inputs, x=h), dy, xp, eps=1e-5)  # fused: eps=1e-5 for both

        def bwd():  # the textbook code: add, then the unfused norm; dx = dh through the add
            dx = bwd_h()
            alpha * dx  # dresidual: computed (and dropped) as normbench's fused backward computes it too
            return dx
        return (lambda: fwd_of(x + alpha * inputs["residual"])), bwd
    return _numpy_norm(variant, inputs, dy, xp)[:2]


def _bias(variant, inputs):
    """RMS norm takes no bias (the registry's row inputs carry one for layer norm)."""
    rms = variant == "rms_norm" or (variant == "fused_add_norm" and inputs.get("norm") == "rms")
    return None if rms else inputs.get("bias")


def _numpy_norm(variant, inputs, dy, xp, eps=None):
    """Mean/variance normalisation over the variant's axes: (forward, backward, forward_of(array))."""
    x, w, b = inputs["x"], inputs.get("weight"), _bias(variant, inputs)
    rms = variant == "rms_norm"
    if variant == "group_norm":
        G, axis = inputs["num_groups"], inputs.get("axis", 1)
        C = x.shape[1] if axis == 1 or x.ndim == 2 else x.shape[-1]
        bshape = tuple(C if a == (1 if axis == 1 or x.ndim == 2 else x.ndim - 1) else 1 for a in range(x.ndim))
        def view(a):
            return _group_view(a, G, axis, xp)
    else:
        axes, bshape = _reduce_axes(variant, x, inputs)
        def view(a):
            return a, axes
    if eps is None:  # the public defaults: rms_norm eps=None means finfo(dtype).eps
        eps = float(np.finfo(x.dtype).eps) if rms else 1e-5
    wv = w.reshape(bshape) if (w is not None and bshape is not None) else w
    bv = b.reshape(bshape) if (b is not None and bshape is not None) else b
    eval_bn = variant == "batch_norm" and not inputs.get("training", True)

    def stats(a):
        v, ax = view(a)
        if eval_bn:
            _, bs = _reduce_axes(variant, x, inputs)
            return inputs["running_mean"].reshape(bs), 1 / xp.sqrt(inputs["running_var"].reshape(bs) + eps)
        if rms:
            return None, 1 / xp.sqrt((v * v).mean(axis=ax, keepdims=True) + eps)
        mean = v.mean(axis=ax, keepdims=True)
        return mean, 1 / xp.sqrt(v.var(axis=ax, keepdims=True) + eps)

    def normalize(a, mean, r):
        v, _ = view(a) if not eval_bn else (a, None)
        xhat = (v - mean) * r if mean is not None else v * r
        return xhat.reshape(a.shape)

    def fwd_of(a):
        mean, r = stats(a)
        y = normalize(a, mean, r)
        if wv is not None:
            y = y * wv
        if bv is not None:
            y = y + bv
        return y

    mean, r = stats(x)

    def bwd():
        dxhat = dy * wv if wv is not None else dy
        if eval_bn:
            return dxhat * r
        xhat, ax = view(normalize(x, mean, r))
        g, _ = view(dxhat)
        proj = xhat * (g * xhat).mean(axis=ax, keepdims=True)
        dx = r * (g - proj) if rms else r * (g - g.mean(axis=ax, keepdims=True) - proj)
        return dx.reshape(x.shape)

    return (lambda: fwd_of(x)), bwd, fwd_of


def _lrn(x, dy, size, xp, alpha=1e-4, beta=0.75, k=1.0):
    """PyTorch's window [c - size//2, c + (size-1)//2] over channels, via a padded cumulative sum."""
    C = x.shape[1]

    def window(a, before, after):
        pad = [(0, 0)] * a.ndim
        pad[1] = (1, 0)
        cs = xp.cumsum(xp.pad(a, pad), axis=1)
        hi = np.clip(np.arange(C) + after + 1, 0, C)
        lo = np.clip(np.arange(C) - before, 0, C)
        return xp.take(cs, hi, axis=1) - xp.take(cs, lo, axis=1)

    def scale():
        return k + alpha / size * window(x * x, size // 2, (size - 1) // 2)

    def fwd():
        return x * scale() ** -beta

    s = scale()

    def bwd():
        t = dy * x * s ** (-beta - 1)
        return dy * s ** -beta - (2 * alpha * beta / size) * x * window(t, (size - 1) // 2, size // 2)

    return fwd, bwd


# ============================================================================================ PyTorch
def _torch(variant, inputs, dy):
    import numba
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(numba.get_num_threads())

    def t(a):
        return None if a is None else torch.from_numpy(a)

    x, w, b = t(inputs["x"]), t(inputs.get("weight")), t(_bias(variant, inputs))
    dyt = t(dy)
    nd = x.ndim
    axis = inputs.get("axis", 1)
    if axis == -1 and nd > 2:  # (N, *sp, C) -> logical NCHW view with channels-last strides, no copy
        perm = (0, nd - 1) + tuple(range(1, nd - 1))
        x, dyt = x.permute(perm), dyt.permute(perm)
    eps = 1e-5

    if variant == "batch_norm":
        training = inputs["training"]
        rm, rv = t(inputs["running_mean"]), t(inputs["running_var"])
        def f(x, w, b):
            return F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1, eps=eps)
    elif variant == "frozen_batch_norm":
        rm, rv = t(inputs["running_mean"]), t(inputs["running_var"])
        def f(x, w, b):
            return F.batch_norm(x, rm, rv, w, b, training=False, eps=eps)
    elif variant == "layer_norm":
        def f(x, w, b):
            return F.layer_norm(x, inputs["normalized_shape"], w, b, eps)
    elif variant == "rms_norm":
        def f(x, w, b):
            return F.rms_norm(x, inputs["normalized_shape"], w, float(np.finfo(inputs["x"].dtype).eps))
    elif variant == "group_norm":
        def f(x, w, b):
            return F.group_norm(x, inputs["num_groups"], w, b, eps)
    elif variant == "instance_norm":
        def f(x, w, b):
            return F.instance_norm(x, None, None, w, b, use_input_stats=True, eps=eps)
    elif variant == "local_response_norm":
        def f(x, w, b):
            return F.local_response_norm(x, inputs["size"])
    elif variant == "fused_add_norm":
        # the residual wants its gradient (alpha * dh) as normbench's fused backward returns dresidual
        res, alpha = t(inputs["residual"]).requires_grad_(True), inputs["alpha"]
        nshape = inputs["normalized_shape"]
        def f(x, w, b):
            h = x + alpha * res  # unfused: PyTorch has no fused add + norm on CPU
            if inputs["norm"] == "rms":
                return F.rms_norm(h, nshape, w, eps)
            return F.layer_norm(h, nshape, w, b, eps)
    else:
        raise NotImplementedError(f"no PyTorch peer for {variant}")

    def out(y):
        if axis == -1 and nd > 2:  # back to the physical (N, *sp, C) layout
            y = y.permute((0,) + tuple(range(2, nd)) + (1,))
        return y.detach().numpy()

    def fwd():
        with torch.no_grad():
            return out(f(x, w, b))

    xg = x.detach().requires_grad_(True)
    params = [p.detach().requires_grad_(True) if p is not None else None for p in (w, b)]
    wants = [xg] + [p for p in params if p is not None] + ([res] if variant == "fused_add_norm" else [])
    with torch.enable_grad():
        y = f(xg, *params)

    def bwd():
        return out(torch.autograd.grad(y, wants, dyt, retain_graph=True, allow_unused=True)[0])

    return fwd, bwd


# ============================================================================================ JAX
def _jax(variant, inputs, dy):
    """jit-compiled textbook formulas; backward through jax.vjp.  Row variants only (layer, RMS)."""
    import jax
    import jax.numpy as jnp

    if variant not in ("layer_norm", "rms_norm"):
        raise NotImplementedError(f"no JAX peer for {variant}")
    eps = 1e-5 if variant == "layer_norm" else float(np.finfo(inputs["x"].dtype).eps)
    axes = tuple(range(inputs["x"].ndim - len(inputs["normalized_shape"]), inputs["x"].ndim))
    w, b = inputs.get("weight"), _bias(variant, inputs)

    def f(x):
        if variant == "rms_norm":
            y = x / jnp.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
        else:
            y = (x - x.mean(axis=axes, keepdims=True)) / jnp.sqrt(x.var(axis=axes, keepdims=True) + eps)
        y = y * w if w is not None else y
        return y + b if (b is not None and variant == "layer_norm") else y

    x = jnp.asarray(inputs["x"])
    dyj = jnp.asarray(dy)
    fj = jax.jit(f)
    bj = jax.jit(lambda x, g: jax.vjp(f, x)[1](g)[0])

    def fwd():
        return np.asarray(fj(x).block_until_ready())

    def bwd():
        return np.asarray(bj(x, dyj).block_until_ready())

    return fwd, bwd
