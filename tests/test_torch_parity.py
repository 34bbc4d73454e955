"""normbench against PyTorch (float64): forward, backward (autograd), running statistics over several steps,
random shapes, and every numerics option torch can express (eps outside the root and the variance correction
through manual ``torch.var_mean`` formulas, differentiated by autograd).

The reference backend runs in extended precision; torch float64 rounds in float64, so they agree to ~1e-15
relative to each output's magnitude.  Non-CUDA kernels registered for a variant are checked the same way
(float64 inputs).  The largest relative errors seen are printed at the end of the module (``-s``).
"""
import numpy as np
import pytest

import normbench as nb
from normbench import registry

from nbtest import torch_or_skip

torch = torch_or_skip()
F = torch.nn.functional

RTOL = 1e-12
MAX_ERR = {}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nlargest relative error vs torch, by variant:")
    for key, err in sorted(MAX_ERR.items()):
        print(f"  {key:40s} {err:.2e}")


def backends(variant):
    return [b for b in registry.available_backends(variant) if b != "cuda"]


def T(a, grad=False):
    return None if a is None else torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def close(key, ours, theirs, rtol=RTOL, scale=None):
    """max |ours - theirs| / scale, recorded per key.  ``scale`` defaults to max |theirs| (at least 1e-6); dx
    is judged against the size of the terms that cancel in it (see dx_scale), not its own magnitude."""
    assert ours is not None and theirs is not None, key
    ours = np.asarray(ours, np.float64)
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (key, ours.shape, theirs.shape)
    if scale is None:
        scale = np.abs(theirs).max(initial=0.0)
    err = np.abs(ours - theirs).max(initial=0.0) / max(scale, 1e-6)
    MAX_ERR[key] = max(MAX_ERR.get(key, 0.0), float(err))
    assert err <= rtol, f"{key}: relative error {err:.3e} > {rtol:.0e}"


def dx_scale(g, w, rstd):
    """max |rstd * w * g|: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) cancels terms of
    this size, so float64 rounding in it is relative to this, not to |dx| (tiny when groups are 2 values)."""
    return float(np.abs(g).max() * (1.0 if w is None else np.abs(w).max()) * np.max(rstd))


def grads(loss_tensors, inputs):
    """Autograd gradients of sum(g * out) for each torch leaf in inputs (None where absent)."""
    leaves = [t for t in inputs if t is not None]
    got = torch.autograd.grad(loss_tensors, leaves, allow_unused=True)
    it = iter(got)
    return [None if t is None else next(it) for t in inputs]


def to_cf(a, axis):
    """channels-last numpy -> channels-first torch layout (a view, for torch's functionals)."""
    return a if axis == 1 or a.ndim == 2 else np.moveaxis(a, -1, 1)


def from_cf(t, axis, ndim):
    return t if axis == 1 or ndim == 2 else torch.movedim(t, 1, -1)


def random_shape(rng, min_spatial=0, max_spatial=3):
    nsp = int(rng.integers(min_spatial, max_spatial + 1))
    return (int(rng.integers(2, 5)), int(rng.integers(1, 5))) + tuple(int(rng.integers(1, 4)) for _ in range(nsp))


def layout(shape, axis):
    return shape if axis == 1 else (shape[0], *shape[2:], shape[1])


# ---------------------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("backend", backends("batch_norm"))
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("seed", range(6))
def test_batch_norm_steps(seed, axis, backend):
    """Three training steps (running statistics updated in place), then eval, forward and backward."""
    rng = np.random.default_rng(seed)
    shape = random_shape(rng)
    if np.prod(shape) // shape[1] < 2:
        shape = (3,) + shape[1:]
    C = shape[1]
    affine = seed % 2 == 0
    w, b = (rng.standard_normal(C), rng.standard_normal(C)) if affine else (None, None)
    rm, rv = rng.standard_normal(C), 1 + rng.random(C)
    trm, trv = T(rm), T(rv)
    momentum, eps = 0.3, 1e-3
    for step in range(4):
        training = step < 3
        x = (rng.standard_normal(layout(shape, axis)) * 2 + 5)
        g = rng.standard_normal(x.shape)
        y, sm, si = nb.batch_norm_forward(x, w, b, rm, rv, training=training, momentum=momentum, eps=eps,
                                          axis=axis, backend=backend)
        tx, tw, tb = T(to_cf(x, axis), True), T(w, True), T(b, True)
        ty = F.batch_norm(tx, trm, trv, tw, tb, training=training, momentum=momentum, eps=eps)
        close("batch_norm y", y, from_cf(ty, axis, x.ndim))
        close("batch_norm running_mean", rm, trm)
        close("batch_norm running_var", rv, trv)
        # saved statistics as torch's native op returns them
        _, tsm, tsi = torch.native_batch_norm(T(to_cf(x, axis)), T(w), T(b), None if training else T(rm),
                                              None if training else T(rv), training, momentum, eps)
        if training:
            close("batch_norm save_mean", sm, tsm)
            close("batch_norm save_invstd", si, tsi)
        dx, dw, db = nb.batch_norm_backward(g, x, w, b, sm, si, training=training, eps=eps, axis=axis,
                                            backend=backend)
        tdx, tdw, tdb = grads((ty * T(to_cf(g, axis))).sum(), [tx, tw, tb])
        close("batch_norm dx", dx, from_cf(tdx, axis, x.ndim), scale=dx_scale(g, w, si))
        if affine:
            close("batch_norm dweight", dw, tdw)
            close("batch_norm dbias", db, tdb)


def test_frozen_batch_norm(rng):
    """torchvision's FrozenBatchNorm2d: scale = w * rsqrt(rv + eps), y = x * scale + (b - rm * scale)."""
    for axis in (1, -1):
        x = rng.standard_normal(layout((2, 3, 4, 2), axis))
        w, b, rm, rv = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), 1 + rng.random(3)
        tx = T(to_cf(x, axis), True)
        scale = T(w) * torch.rsqrt(T(rv) + 1e-5)
        ty = tx * scale[:, None, None] + (T(b) - T(rm) * scale)[:, None, None]
        close("frozen_batch_norm y", nb.frozen_batch_norm_forward(x, w, b, rm, rv, axis=axis, backend="reference"),
              from_cf(ty, axis, 4))
        g = rng.standard_normal(x.shape)
        (tdx,) = grads((ty * T(to_cf(g, axis))).sum(), [tx])
        close("frozen_batch_norm dx", nb.frozen_batch_norm_backward(g, w, rv, axis=axis, backend="reference"),
              from_cf(tdx, axis, 4))


# ---------------------------------------------------------------------------------------------- layer / RMS
@pytest.mark.parametrize("backend", backends("layer_norm"))
@pytest.mark.parametrize("seed", range(6))
def test_layer_norm(seed, backend):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(rng.integers(1, 6)) for _ in range(int(rng.integers(1, 4))))
    k = int(rng.integers(1, len(shape) + 1))
    nshape = shape[len(shape) - k:]
    x = rng.standard_normal(shape) * 3 + 10
    affine = seed % 2 == 0
    w, b = (rng.standard_normal(nshape), rng.standard_normal(nshape)) if affine else (None, None)
    g = rng.standard_normal(shape)
    y, mean, rstd = nb.layer_norm_forward(x, nshape, w, b, backend=backend)
    tx, tw, tb = T(x, True), T(w, True), T(b, True)
    ty, tmean, trstd = torch.native_layer_norm(tx, nshape, tw, tb, 1e-5)
    close("layer_norm y", y, ty)
    lead = shape[: len(shape) - k]
    close("layer_norm mean", mean, tmean.reshape(lead))
    close("layer_norm rstd", rstd, trstd.reshape(lead))
    dx, dw, db = nb.layer_norm_backward(g, x, nshape, mean, rstd, w, b, backend=backend)
    tdx, tdw, tdb = grads((ty * T(g)).sum(), [tx, tw, tb])
    close("layer_norm dx", dx, tdx, scale=dx_scale(g, w, rstd))
    if affine:
        close("layer_norm dweight", dw, tdw)
        close("layer_norm dbias", db, tdb)


@pytest.mark.parametrize("backend", backends("rms_norm"))
@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("seed", range(4))
def test_rms_norm(seed, eps, backend):
    rng = np.random.default_rng(200 + seed)
    shape = tuple(int(rng.integers(1, 6)) for _ in range(int(rng.integers(1, 4))))
    k = int(rng.integers(1, len(shape) + 1))
    nshape = shape[len(shape) - k:]
    x = rng.standard_normal(shape)
    w = rng.standard_normal(nshape) if seed % 2 == 0 else None
    g = rng.standard_normal(shape)
    y, rstd = nb.rms_norm_forward(x, nshape, w, eps=eps, backend=backend)
    tx, tw = T(x, True), T(w, True)
    ty = F.rms_norm(tx, nshape, tw, eps=eps)  # eps None: finfo(float64).eps in both
    close("rms_norm y", y, ty)
    dx, dw = nb.rms_norm_backward(g, x, nshape, rstd, w, eps=eps, backend=backend)
    tdx, tdw = grads((ty * T(g)).sum(), [tx, tw])
    close("rms_norm dx", dx, tdx, scale=dx_scale(g, w, rstd))
    if w is not None:
        close("rms_norm dweight", dw, tdw)


# ---------------------------------------------------------------------------------------------- group / instance
@pytest.mark.parametrize("backend", backends("group_norm"))
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("seed", range(5))
def test_group_norm(seed, axis, backend):
    rng = np.random.default_rng(300 + seed)
    G = int(rng.integers(1, 4))
    shape = (int(rng.integers(1, 4)), G * int(rng.integers(1, 4))) + tuple(
        int(rng.integers(1, 4)) for _ in range(int(rng.integers(0, 4))))
    if np.prod(shape[2:]) * shape[1] // G < 2:
        shape = shape + (2,)
    C = shape[1]
    x = rng.standard_normal(layout(shape, axis)) * 2 - 7
    affine = seed % 2 == 0
    w, b = (rng.standard_normal(C), rng.standard_normal(C)) if affine else (None, None)
    g = rng.standard_normal(x.shape)
    y, mean, rstd = nb.group_norm_forward(x, G, w, b, eps=1e-4, axis=axis, backend=backend)
    tx, tw, tb = T(to_cf(x, axis), True), T(w, True), T(b, True)
    ty = F.group_norm(tx, G, tw, tb, eps=1e-4)
    close("group_norm y", y, from_cf(ty, axis, x.ndim))
    N = shape[0]
    _, tmean, trstd = torch.native_group_norm(T(to_cf(x, axis)).contiguous(), T(w), T(b), N, C, int(np.prod(shape[2:])), G,
                                              1e-4)
    close("group_norm mean", mean, tmean)
    close("group_norm rstd", rstd, trstd)
    dx, dw, db = nb.group_norm_backward(g, x, G, mean, rstd, w, b, eps=1e-4, axis=axis, backend=backend)
    tdx, tdw, tdb = grads((ty * T(to_cf(g, axis))).sum(), [tx, tw, tb])
    close("group_norm dx", dx, from_cf(tdx, axis, x.ndim), scale=dx_scale(g, w, rstd))
    if affine:
        close("group_norm dweight", dw, tdw)
        close("group_norm dbias", db, tdb)


@pytest.mark.parametrize("backend", backends("instance_norm"))
@pytest.mark.parametrize("mode", ["input", "input+running", "running"])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("seed", range(3))
def test_instance_norm(seed, axis, mode, backend):
    rng = np.random.default_rng(400 + seed)
    shape = random_shape(rng, 1, 3)
    if np.prod(shape[2:]) < 2:
        shape = shape + (3,)
    C = shape[1]
    affine = seed % 2 == 0
    w, b = (rng.standard_normal(C), rng.standard_normal(C)) if affine else (None, None)
    rm, rv = (rng.standard_normal(C), 1 + rng.random(C)) if mode != "input" else (None, None)
    trm, trv = T(rm), T(rv)
    use = mode != "running"
    for step in range(3):  # running statistics over several steps
        x = rng.standard_normal(layout(shape, axis)) + 3
        g = rng.standard_normal(x.shape)
        y, mean, rstd = nb.instance_norm_forward(x, w, b, rm, rv, use_input_stats=use, momentum=0.2, axis=axis,
                                                 backend=backend)
        tx, tw, tb = T(to_cf(x, axis), True), T(w, True), T(b, True)
        ty = F.instance_norm(tx, trm, trv, tw, tb, use_input_stats=use, momentum=0.2)
        close("instance_norm y", y, from_cf(ty, axis, x.ndim))
        if rm is not None:
            close("instance_norm running_mean", rm, trm)
            close("instance_norm running_var", rv, trv)
        dx, dw, db = nb.instance_norm_backward(g, x, mean, rstd, w, b, use_input_stats=use, axis=axis,
                                               backend=backend)
        tdx, tdw, tdb = grads((ty * T(to_cf(g, axis))).sum(), [tx, tw, tb])
        close("instance_norm dx", dx, from_cf(tdx, axis, x.ndim), scale=dx_scale(g, w, rstd))
        if affine:
            close("instance_norm dweight", dw, tdw)
            close("instance_norm dbias", db, tdb)


# ---------------------------------------------------------------------------------------------- LRN
@pytest.mark.parametrize("backend", backends("local_response_norm"))
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(2, 6, 3), (1, 5, 2, 3), (1, 4, 2, 1, 2)], ids=lambda s: "x".join(map(str, s)))
def test_local_response_norm(shape, size, backend, rng):
    x = rng.standard_normal(shape) * 2
    g = rng.standard_normal(shape)
    kw = dict(alpha=0.3, beta=0.75, k=1.5)
    y, scale = nb.local_response_norm_forward(x, size, backend=backend, **kw)
    tx = T(x, True)
    ty = F.local_response_norm(tx, size, **kw)
    close("local_response_norm y", y, ty)
    dx = nb.local_response_norm_backward(g, x, y, scale, size, backend=backend, **kw)
    (tdx,) = grads((ty * T(g)).sum(), [tx])
    close("local_response_norm dx", dx, tdx)


# ---------------------------------------------------------------------------------------------- fused add + norm
@pytest.mark.parametrize("backend", backends("fused_add_norm"))
@pytest.mark.parametrize("alpha", [1.0, 0.7, 3.0])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_fused_add_norm(norm, alpha, backend, rng):
    shape, nshape = (3, 2, 5), (5,)
    x, res = rng.standard_normal(shape), rng.standard_normal(shape)
    w = rng.standard_normal(nshape)
    b = rng.standard_normal(nshape) if norm == "layer" else None
    g, gh = rng.standard_normal(shape), rng.standard_normal(shape)
    eps = 1e-5 if norm == "layer" else None
    y, h, mean, rstd = nb.fused_add_norm_forward(x, res, nshape, w, b, alpha=alpha, norm=norm, eps=eps,
                                                 backend=backend)
    tx, tr, tw, tb = T(x, True), T(res, True), T(w, True), T(b, True)
    th = tx + alpha * tr
    ty = F.layer_norm(th, nshape, tw, tb, eps=eps) if norm == "layer" else F.rms_norm(th, nshape, tw, eps=eps)
    close(f"fused_add_norm[{norm}] y", y, ty)
    close(f"fused_add_norm[{norm}] h", h, th)
    dx, dres, dw, db = nb.fused_add_norm_backward(g, h, nshape, mean, rstd, w, b, alpha=alpha, norm=norm, dh=gh,
                                                  eps=eps, backend=backend)
    tdx, tdr, tdw, tdb = grads((ty * T(g)).sum() + (th * T(gh)).sum(), [tx, tr, tw, tb])
    sc = dx_scale(g, w, rstd) + np.abs(gh).max()
    close(f"fused_add_norm[{norm}] dx", dx, tdx, scale=sc)
    close(f"fused_add_norm[{norm}] dresidual", dres, tdr, scale=alpha * sc)
    close(f"fused_add_norm[{norm}] dweight", dw, tdw)
    if norm == "layer":
        close(f"fused_add_norm[{norm}] dbias", db, tdb)


# ---------------------------------------------------------------------------------------------- numerics options
def t_rstd(var, eps, placement):
    return torch.rsqrt(var + eps) if placement == "inside" else 1 / (torch.sqrt(var) + eps)


def t_normalize(tx, dims, eps, placement, correction):
    var, mean = torch.var_mean(tx, dim=dims, correction=correction, keepdim=True)
    return (tx - mean) * t_rstd(var, eps, placement)


NUMERICS = [dict(eps_placement=p, correction=c) for p in ("inside", "outside") for c in (0, 1, 2)]


@pytest.mark.parametrize("num", NUMERICS, ids=lambda d: f"{d['eps_placement']}-c{d['correction']}")
@pytest.mark.parametrize("variant", ["batch", "layer", "rms", "group", "instance", "fused"])
def test_numerics_options(variant, num, rng):
    """eps placement and correction, against manual torch formulas differentiated by autograd."""
    eps, p, c = 1e-2, num["eps_placement"], num["correction"]
    for backend in backends(f"{variant}_norm" if variant != "fused" else "fused_add_norm"):
        x = rng.standard_normal((3, 4, 5)) + 2
        g = rng.standard_normal(x.shape)
        w, b = rng.standard_normal(4), rng.standard_normal(4)
        tx, tw, tb = T(x, True), T(w, True), T(b, True)
        key = f"{variant} {p} c{c}"
        if variant == "batch":
            rm, rv = np.zeros(4), np.ones(4)
            y, sm, si = nb.batch_norm_forward(x, w, b, rm, rv, momentum=0.5, eps=eps, backend=backend, **num)
            ty = t_normalize(tx, (0, 2), eps, p, c) * tw[:, None] + tb[:, None]
            n = x.size // 4
            var_b = torch.var(T(x), dim=(0, 2), correction=c) * (n - c) / (n - 1)  # running: unbiased
            close(key + " running_var", rv, 0.5 + 0.5 * var_b)
            dx, dw, db = nb.batch_norm_backward(g, x, w, b, sm, si, eps=eps, backend=backend, **num)
            tw_, tb_ = tw, tb
        elif variant in ("layer", "fused"):
            w, b = w.repeat(5)[:5], b.repeat(5)[:5]
            tw_, tb_ = T(w, True), T(b, True)
            if variant == "layer":
                y, mean, rstd = nb.layer_norm_forward(x, 5, w, b, eps=eps, backend=backend, **num)
                dx, dw, db = nb.layer_norm_backward(g, x, 5, mean, rstd, w, b, eps=eps, backend=backend, **num)
                ty = t_normalize(tx, (2,), eps, p, c) * tw_ + tb_
            else:
                res = rng.standard_normal(x.shape)
                y, h, mean, rstd = nb.fused_add_norm_forward(x / 2, res, 5, w, b, alpha=0.5, eps=eps,
                                                             backend=backend, **num)
                dx, _, dw, db = nb.fused_add_norm_backward(g, h, 5, mean, rstd, w, b, alpha=0.5, eps=eps,
                                                           backend=backend, **num)
                dx = dx / 2
                ty = t_normalize(tx / 2 + 0.5 * T(res), (2,), eps, p, c) * tw_ + tb_
        elif variant == "rms":
            w = w.repeat(5)[:5]
            tw_, tb_ = T(w, True), None
            y, rstd = nb.rms_norm_forward(x, 5, w, eps=eps, backend=backend, **num)
            dx, dw = nb.rms_norm_backward(g, x, 5, rstd, w, eps=eps, backend=backend, **num)
            db = None
            ms = (tx * tx).sum(dim=2, keepdim=True) / (5 - c)
            ty = tx * t_rstd(ms, eps, p) * tw_
        elif variant == "group":
            y, mean, rstd = nb.group_norm_forward(x, 2, w, b, eps=eps, backend=backend, **num)
            dx, dw, db = nb.group_norm_backward(g, x, 2, mean, rstd, w, b, eps=eps, backend=backend, **num)
            ty = t_normalize(tx.reshape(3, 2, 10), (2,), eps, p, c).reshape(3, 4, 5) * tw[:, None] + tb[:, None]
            tw_, tb_ = tw, tb
        else:
            y, mean, rstd = nb.instance_norm_forward(x, w, b, eps=eps, backend=backend, **num)
            dx, dw, db = nb.instance_norm_backward(g, x, mean, rstd, w, b, eps=eps, backend=backend, **num)
            ty = t_normalize(tx, (2,), eps, p, c) * tw[:, None] + tb[:, None]
            tw_, tb_ = tw, tb
        close(key + " y", y, ty)
        tdx, tdw, tdb = grads((ty * T(g)).sum(), [tx, tw_, tb_])
        close(key + " dx", dx, tdx)
        close(key + " dweight", dw, tdw)
        if tb_ is not None:
            close(key + " dbias", db, tdb)


# ---------------------------------------------------------------------------------------------- float32 torch
@pytest.mark.parametrize("variant", ["batch", "layer", "rms", "group", "lrn"])
def test_torch_float32_within_its_rounding(variant, rng):
    """torch in float32 vs the float64 reference: a sanity bound (and the figure for the issue note)."""
    x = (rng.standard_normal((4, 8, 16)) + 1).astype(np.float32)
    tx = torch.tensor(x)
    if variant == "batch":
        ours = nb.batch_norm_forward(x, None, None, None, None, backend="reference")[0]
        theirs = F.batch_norm(tx, None, None, training=True)
    elif variant == "layer":
        ours = nb.layer_norm_forward(x, 16, backend="reference")[0]
        theirs = F.layer_norm(tx, (16,))
    elif variant == "rms":
        ours = nb.rms_norm_forward(x, 16, backend="reference")[0]
        theirs = F.rms_norm(tx, (16,))
    elif variant == "group":
        ours = nb.group_norm_forward(x, 2, backend="reference")[0]
        theirs = F.group_norm(tx, 2)
    else:
        ours = nb.local_response_norm_forward(x, 3, backend="reference")[0]
        theirs = F.local_response_norm(tx, 3)
    close(f"{variant} y (torch float32)", ours, theirs.double(), rtol=1e-5)
