"""Every backward against central finite differences of the float64 reference forward.

The loss is ``L = sum(g * y)`` (plus ``sum(gh * h)`` for fused add + norm), so the analytic backward with
``dy = g`` must equal dL/d(input) computed by perturbing one element at a time.  Shapes are tiny; eps is large
(0.1) so that the eps-placement and correction terms are far above the finite-difference error.
The analytic side runs on every non-CUDA backend that implements the variant (float64 inputs).
"""
import numpy as np
import pytest

import normbench as nb
from normbench import registry

EPS = 0.1
H = 1e-5


def backends(variant):
    # CUDA kernels are checked against the reference in the simulator by their own tests
    return [b for b in registry.available_backends(variant) if b != "cuda"]


def numgrad(loss, arrays, name):
    """Central differences of ``loss()`` w.r.t. ``arrays[name]`` (perturbed in place, then restored)."""
    a = arrays[name]
    flat = a.reshape(-1)
    assert np.shares_memory(flat, a)
    g = np.empty(a.size)
    for i in range(a.size):
        old = flat[i]
        flat[i] = old + H
        lp = loss()
        flat[i] = old - H
        lm = loss()
        flat[i] = old
        g[i] = (lp - lm) / (2 * H)
    return g.reshape(a.shape)


def check(analytic, numeric, name):
    assert analytic is not None, f"{name}: backward returned None"
    analytic = np.asarray(analytic, np.float64)
    scale = max(1.0, np.abs(numeric).max())
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=2e-7 * scale, err_msg=name)


def params(C, rng, affine):
    if not affine:
        return None, None
    return 1.0 + 0.5 * rng.standard_normal(C), 0.5 * rng.standard_normal(C)


NUMERICS = [dict(eps_placement=p, correction=c) for p in ("inside", "outside") for c in (0, 1)]
NUM_IDS = [f"{d['eps_placement']}-c{d['correction']}" for d in NUMERICS]

# logical (N, C, *spatial); channels-last is laid out as (N, *spatial, C)
BATCH_SHAPES = [(5, 3), (3, 2, 4), (2, 2, 3, 2), (2, 2, 2, 2, 2)]


def layout(shape, axis):
    return shape if axis == 1 else (shape[0], *shape[2:], shape[1])


# ---------------------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("backend", backends("batch_norm"))
@pytest.mark.parametrize("training,num", [(True, d) for d in NUMERICS] + [(False, d) for d in NUMERICS[::2]],
                         ids=[f"train-{i}" for i in NUM_IDS] + [f"eval-{i}" for i in NUM_IDS[::2]])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape,axis", [(s, a) for s in BATCH_SHAPES for a in ((1,) if len(s) == 2 else (1, -1))],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"axis{v}")
def test_batch_norm(shape, axis, affine, training, num, backend, rng):
    # eval uses running statistics, so correction (the normalising divisor) does not apply there
    C = shape[1]
    x = rng.standard_normal(layout(shape, axis))
    w, b = params(C, rng, affine)
    rm, rv = 0.3 * rng.standard_normal(C), 0.5 + rng.random(C)
    g = rng.standard_normal(x.shape)
    arrays = dict(x=x, w=w, b=b)

    def loss():
        y = nb.batch_norm_forward(arrays["x"], arrays["w"], arrays["b"], rm.copy(), rv.copy(), training=training,
                                  eps=EPS, axis=axis, backend="reference", **num)[0]
        return float((g * y).sum())

    rm0, rv0 = rm.astype(x.dtype), rv.astype(x.dtype)
    _, sm, si = nb.batch_norm_forward(x, w, b, rm0, rv0, training=training, eps=EPS, axis=axis, backend=backend,
                                      **num)
    dx, dw, db = nb.batch_norm_backward(g, x, w, b, sm, si, training=training, eps=EPS, axis=axis,
                                        backend=backend, **num)
    check(dx, numgrad(loss, arrays, "x"), "dx")
    if affine:
        check(dw, numgrad(loss, arrays, "w"), "dweight")
        check(db, numgrad(loss, arrays, "b"), "dbias")
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("backend", backends("frozen_batch_norm"))
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape", BATCH_SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
def test_frozen_batch_norm(shape, axis, backend, rng):
    C = shape[1]
    x = rng.standard_normal(layout(shape, axis))
    w, b = params(C, rng, True)
    rm, rv = 0.3 * rng.standard_normal(C), 0.5 + rng.random(C)
    g = rng.standard_normal(x.shape)
    arrays = dict(x=x)

    def loss():
        return float((g * nb.frozen_batch_norm_forward(arrays["x"], w, b, rm, rv, eps=EPS, axis=axis,
                                                       backend="reference")).sum())

    dx = nb.frozen_batch_norm_backward(g, w, rv, eps=EPS, axis=axis, backend=backend)
    check(dx, numgrad(loss, arrays, "x"), "dx")


# ---------------------------------------------------------------------------------------------- layer / RMS
ROW_CASES = [((4, 5), (5,)), ((2, 3, 4), (3, 4)), ((2, 2, 2, 3), (2, 2, 3))]


@pytest.mark.parametrize("backend", backends("layer_norm"))
@pytest.mark.parametrize("num", NUMERICS, ids=NUM_IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape,nshape", ROW_CASES, ids=lambda s: "x".join(map(str, s)))
def test_layer_norm(shape, nshape, affine, num, backend, rng):
    x = rng.standard_normal(shape) + 3.0
    w, b = params(nshape, rng, affine)
    g = rng.standard_normal(shape)
    arrays = dict(x=x, w=w, b=b)

    def loss():
        y = nb.layer_norm_forward(arrays["x"], nshape, arrays["w"], arrays["b"], eps=EPS, backend="reference",
                                  **num)[0]
        return float((g * y).sum())

    _, mean, rstd = nb.layer_norm_forward(x, nshape, w, b, eps=EPS, backend=backend, **num)
    dx, dw, db = nb.layer_norm_backward(g, x, nshape, mean, rstd, w, b, eps=EPS, backend=backend, **num)
    check(dx, numgrad(loss, arrays, "x"), "dx")
    if affine:
        check(dw, numgrad(loss, arrays, "w"), "dweight")
        check(db, numgrad(loss, arrays, "b"), "dbias")
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("backend", backends("rms_norm"))
@pytest.mark.parametrize("num", NUMERICS, ids=NUM_IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape,nshape", ROW_CASES, ids=lambda s: "x".join(map(str, s)))
def test_rms_norm(shape, nshape, affine, num, backend, rng):
    x = rng.standard_normal(shape)
    w, _ = params(nshape, rng, affine)
    g = rng.standard_normal(shape)
    arrays = dict(x=x, w=w)

    def loss():
        y = nb.rms_norm_forward(arrays["x"], nshape, arrays["w"], eps=EPS, backend="reference", **num)[0]
        return float((g * y).sum())

    _, rstd = nb.rms_norm_forward(x, nshape, w, eps=EPS, backend=backend, **num)
    dx, dw = nb.rms_norm_backward(g, x, nshape, rstd, w, eps=EPS, backend=backend, **num)
    check(dx, numgrad(loss, arrays, "x"), "dx")
    if affine:
        check(dw, numgrad(loss, arrays, "w"), "dweight")
    else:
        assert dw is None


# ---------------------------------------------------------------------------------------------- group / instance
@pytest.mark.parametrize("backend", backends("group_norm"))
@pytest.mark.parametrize("num", NUMERICS, ids=NUM_IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape,G", [((2, 4), 2), ((2, 6, 3), 3), ((2, 4, 2, 2), 2), ((1, 4, 2, 1, 2), 1)],
                         ids=lambda s: "x".join(map(str, s)) if isinstance(s, tuple) else f"G{s}")
def test_group_norm(shape, G, axis, affine, num, backend, rng):
    C = shape[1]
    x = rng.standard_normal(layout(shape, axis))
    w, b = params(C, rng, affine)
    g = rng.standard_normal(x.shape)
    arrays = dict(x=x, w=w, b=b)

    def loss():
        y = nb.group_norm_forward(arrays["x"], G, arrays["w"], arrays["b"], eps=EPS, axis=axis,
                                  backend="reference", **num)[0]
        return float((g * y).sum())

    _, mean, rstd = nb.group_norm_forward(x, G, w, b, eps=EPS, axis=axis, backend=backend, **num)
    dx, dw, db = nb.group_norm_backward(g, x, G, mean, rstd, w, b, eps=EPS, axis=axis, backend=backend, **num)
    check(dx, numgrad(loss, arrays, "x"), "dx")
    if affine:
        check(dw, numgrad(loss, arrays, "w"), "dweight")
        check(db, numgrad(loss, arrays, "b"), "dbias")
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("backend", backends("instance_norm"))
@pytest.mark.parametrize("mode,num", [(m, d) for m in ("input", "input+running") for d in NUMERICS]
                         + [("running", d) for d in NUMERICS[::2]],
                         ids=[f"{m}-{i}" for m in ("input", "input+running") for i in NUM_IDS]
                         + [f"running-{i}" for i in NUM_IDS[::2]])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 2, 2, 3)], ids=lambda s: "x".join(map(str, s)))
def test_instance_norm(shape, axis, affine, mode, num, backend, rng):
    # use_input_stats=False normalises with running statistics: correction does not apply there
    C = shape[1]
    x = rng.standard_normal(layout(shape, axis))
    w, b = params(C, rng, affine)
    rm, rv = (0.3 * rng.standard_normal(C), 0.5 + rng.random(C)) if mode != "input" else (None, None)
    use_input_stats = mode != "running"
    g = rng.standard_normal(x.shape)
    arrays = dict(x=x, w=w, b=b)

    def cp(a):
        return None if a is None else a.copy()

    def loss():
        y = nb.instance_norm_forward(arrays["x"], arrays["w"], arrays["b"], cp(rm), cp(rv),
                                     use_input_stats=use_input_stats, eps=EPS, axis=axis, backend="reference",
                                     **num)[0]
        return float((g * y).sum())

    _, mean, rstd = nb.instance_norm_forward(x, w, b, cp(rm), cp(rv), use_input_stats=use_input_stats, eps=EPS,
                                             axis=axis, backend=backend, **num)
    dx, dw, db = nb.instance_norm_backward(g, x, mean, rstd, w, b, use_input_stats=use_input_stats, eps=EPS,
                                           axis=axis, backend=backend, **num)
    check(dx, numgrad(loss, arrays, "x"), "dx")
    if affine:
        check(dw, numgrad(loss, arrays, "w"), "dweight")
        check(db, numgrad(loss, arrays, "b"), "dbias")
    else:
        assert dw is None and db is None


# ---------------------------------------------------------------------------------------------- LRN
@pytest.mark.parametrize("backend", backends("local_response_norm"))
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shape", [(2, 5, 3), (1, 4, 2, 2)], ids=lambda s: "x".join(map(str, s)))
def test_local_response_norm(shape, size, backend, rng):
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    kw = dict(alpha=0.5, beta=0.75, k=1.5)  # large alpha: the window term is not negligible
    arrays = dict(x=x)

    def loss():
        return float((g * nb.local_response_norm_forward(arrays["x"], size, backend="reference", **kw)[0]).sum())

    y, scale = nb.local_response_norm_forward(x, size, backend=backend, **kw)
    dx = nb.local_response_norm_backward(g, x, y, scale, size, backend=backend, **kw)
    check(dx, numgrad(loss, arrays, "x"), "dx")


# ---------------------------------------------------------------------------------------------- fused add + norm
@pytest.mark.parametrize("backend", backends("fused_add_norm"))
@pytest.mark.parametrize("num", NUMERICS, ids=NUM_IDS)
@pytest.mark.parametrize("with_dh", [True, False], ids=["dh", "no-dh"])
@pytest.mark.parametrize("alpha", [1.0, 2.5])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_fused_add_norm(norm, affine, alpha, with_dh, num, backend, rng):
    shape, nshape = (3, 2, 3), (2, 3)
    x, res = rng.standard_normal(shape), rng.standard_normal(shape)
    w, b = params(nshape, rng, affine)
    if norm == "rms":
        b = None
    g = rng.standard_normal(shape)
    gh = rng.standard_normal(shape) if with_dh else None
    arrays = dict(x=x, res=res, w=w, b=b)

    def loss():
        y, h, _, _ = nb.fused_add_norm_forward(arrays["x"], arrays["res"], nshape, arrays["w"], arrays["b"],
                                               alpha=alpha, norm=norm, eps=EPS, backend="reference", **num)
        return float((g * y).sum() + ((gh * h).sum() if with_dh else 0.0))

    _, h, mean, rstd = nb.fused_add_norm_forward(x, res, nshape, w, b, alpha=alpha, norm=norm, eps=EPS,
                                                 backend=backend, **num)
    dx, dres, dw, db = nb.fused_add_norm_backward(g, h, nshape, mean, rstd, w, b, alpha=alpha, norm=norm, dh=gh,
                                                  eps=EPS, backend=backend, **num)
    check(dx, numgrad(loss, arrays, "x"), "dx")
    check(dres, numgrad(loss, arrays, "res"), "dresidual")
    if affine:
        check(dw, numgrad(loss, arrays, "w"), "dweight")
    else:
        assert dw is None
    if affine and norm == "layer":
        check(db, numgrad(loss, arrays, "b"), "dbias")
    else:
        assert db is None


# ---------------------------------------------------------------------------------------------- var = 0 limits
@pytest.mark.parametrize("num", NUMERICS[:2], ids=NUM_IDS[:2])
def test_layer_norm_constant_rows_fd(num, rng):
    """With eps inside the root the gradient exists at var = 0: finite differences still hold there
    (eps outside has no derivative there: its limit is tested below)."""
    x = np.full((3, 4), 2.0)
    g = rng.standard_normal(x.shape)
    arrays = dict(x=x)

    def loss():
        return float((g * nb.layer_norm_forward(arrays["x"], 4, eps=EPS, backend="reference", **num)[0]).sum())

    _, mean, rstd = nb.layer_norm_forward(x, 4, eps=EPS, backend="reference", **num)
    dx, _, _ = nb.layer_norm_backward(g, x, 4, mean, rstd, eps=EPS, backend="reference", **num)
    check(dx, numgrad(loss, arrays, "x"), "dx")


@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("variant", ["batch", "layer", "group", "instance", "rms", "fused"])
def test_eps_outside_limit_at_zero_variance(variant, correction, rng):
    """eps outside, var = 0: the documented limit dx = (1/eps) * (dxhat - mean(dxhat)), dxhat = gamma * g
    (no mean term for RMS norm, whose 'variance' is the mean square: zero rows)."""
    num = dict(eps_placement="outside", correction=correction)
    eps = 1e-3
    if variant == "batch":
        C = 3
        x = np.repeat(rng.standard_normal((1, C, 1)), 4, axis=0) * np.ones((4, C, 2))  # constant per channel
        w = 1.0 + rng.random(C)
        g = rng.standard_normal(x.shape)
        _, sm, si = nb.batch_norm_forward(x, w, None, None, None, eps=eps, backend="reference", **num)
        dx = nb.batch_norm_backward(g, x, w, None, sm, si, eps=eps, backend="reference", **num)[0]
        want = w[None, :, None] / eps * (g - g.mean(axis=(0, 2), keepdims=True))
    elif variant in ("layer", "fused"):
        x = np.repeat(rng.standard_normal((3, 1)), 5, axis=1)
        w = 1.0 + rng.random(5)
        g = rng.standard_normal(x.shape)
        if variant == "layer":
            _, mean, rstd = nb.layer_norm_forward(x, 5, w, eps=eps, backend="reference", **num)
            dx = nb.layer_norm_backward(g, x, 5, mean, rstd, w, eps=eps, backend="reference", **num)[0]
        else:
            half = x / 2
            _, h, mean, rstd = nb.fused_add_norm_forward(half, half, 5, w, eps=eps, backend="reference", **num)
            dx = nb.fused_add_norm_backward(g, h, 5, mean, rstd, w, eps=eps, backend="reference", **num)[0]
        d = g * w
        want = (d - d.mean(axis=1, keepdims=True)) / eps
    elif variant in ("group", "instance"):
        x = np.repeat(rng.standard_normal((2, 4, 1)), 3, axis=2)  # constant per (n, c)
        w = 1.0 + rng.random(4)
        g = rng.standard_normal(x.shape)
        G = 4
        if variant == "group":
            _, mean, rstd = nb.group_norm_forward(x, G, w, eps=eps, backend="reference", **num)
            dx = nb.group_norm_backward(g, x, G, mean, rstd, w, eps=eps, backend="reference", **num)[0]
        else:
            _, mean, rstd = nb.instance_norm_forward(x, w, eps=eps, backend="reference", **num)
            dx = nb.instance_norm_backward(g, x, mean, rstd, w, eps=eps, backend="reference", **num)[0]
        d = g * w[None, :, None]
        want = (d - d.mean(axis=2, keepdims=True)) / eps
    else:  # rms: an all-zero row has mean square 0
        x = np.zeros((2, 4))
        w = 1.0 + rng.random(4)
        g = rng.standard_normal(x.shape)
        _, rstd = nb.rms_norm_forward(x, 4, w, eps=eps, backend="reference", **num)
        dx = nb.rms_norm_backward(g, x, 4, rstd, w, eps=eps, backend="reference", **num)[0]
        want = g * w / eps
    assert np.all(np.isfinite(dx))
    np.testing.assert_allclose(dx, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
