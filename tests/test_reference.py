"""Closed forms and property tests (hypothesis) for the reference, and for every non-CUDA backend where the
property is backend-generic (kernels compared with the registry's rtol, not exactly).

Identities: constant rows/channels give ``bias`` exactly; group norm with G = 1 is layer norm over
(C, *spatial); G = C is instance norm; eval batch norm with running (0, 1) is the affine map
``x * weight / sqrt(1 + eps) + bias``; frozen batch norm equals eval batch norm; fused add + norm with a zero
residual is the plain norm.  Properties: x-hat has zero mean and (n - correction)-variance one; layer norm's
dx sums to zero per row and is orthogonal to x - mean when eps = 0; dweight/dbias are the sums the math says.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import normbench as nb
from normbench import registry

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def backends(variant):
    return [b for b in registry.available_backends(variant) if b != "cuda"]


def rtol(variant, dtype):
    return registry.VARIANTS[variant].rtol[np.dtype(dtype)]


def allclose(a, b, variant, dtype, scale=None):
    """Compare with the registry's tolerance relative to the magnitude of b (or ``scale``)."""
    b = np.asarray(b, np.float64)
    s = max(np.abs(b).max(initial=0.0), 1e-300) if scale is None else scale
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=0, atol=4 * rtol(variant, dtype) * max(s, 1.0))


DTYPES = [np.float32, np.float64]


# ---------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_rows_give_bias_exactly(dtype, rng):
    for backend in backends("layer_norm"):
        x = np.repeat(rng.standard_normal((5, 1)), 7, axis=1).astype(dtype) * 100
        w, b = rng.standard_normal(7).astype(dtype), rng.standard_normal(7).astype(dtype)
        for num in ({}, dict(eps_placement="outside", correction=1)):
            y = nb.layer_norm_forward(x, 7, w, b, backend=backend, **num)[0]
            np.testing.assert_array_equal(y, np.broadcast_to(b, x.shape).astype(y.dtype), err_msg=backend)
    for backend in backends("batch_norm"):
        for axis in (1, -1):
            x = np.ones((4, 3, 5), dtype) * np.array([1.5, -3.25, 7e3], dtype)[None, :, None]
            if axis == -1:
                x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
            w, b = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
            y = nb.batch_norm_forward(x, w, b, None, None, axis=axis, backend=backend)[0]
            want = b[None, :, None] if axis == 1 else b
            np.testing.assert_array_equal(y, np.broadcast_to(want, x.shape).astype(y.dtype), err_msg=backend)
    for variant, fwd in (("group_norm", lambda x, w, b, be: nb.group_norm_forward(x, 2, w, b, backend=be)),
                         ("instance_norm", lambda x, w, b, be: nb.instance_norm_forward(x, w, b, backend=be))):
        for backend in backends(variant):
            x = np.repeat(rng.standard_normal((3, 4, 1)), 6, axis=2).astype(dtype)
            if variant == "group_norm":  # constant over each group of 2 channels
                x[:, 1] = x[:, 0]
                x[:, 3] = x[:, 2]
            w, b = rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)
            y = fwd(x, w, b, backend)[0]
            np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None], x.shape).astype(y.dtype),
                                          err_msg=f"{variant} {backend}")


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_one_group_is_layer_norm_over_channels_and_space(axis, dtype, rng):
    """G = 1: one statistic per sample over (C, *spatial) (channels-last: over (*spatial, C))."""
    for backend in backends("group_norm"):
        x = (rng.standard_normal((3, 4, 2, 5) if axis == 1 else (3, 2, 5, 4)) * 3 + 1).astype(dtype)
        C = 4
        w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
        y, mean, rstd = nb.group_norm_forward(x, 1, w, b, axis=axis, backend=backend)
        lw = np.broadcast_to(w[:, None, None] if axis == 1 else w, x.shape[1:]).copy()
        lb = np.broadcast_to(b[:, None, None] if axis == 1 else b, x.shape[1:]).copy()
        ly, lmean, lrstd = nb.layer_norm_forward(x, x.shape[1:], lw, lb, backend="reference")
        allclose(y, ly, "group_norm", dtype)
        allclose(mean[:, 0], lmean, "group_norm", dtype)
        allclose(rstd[:, 0], lrstd, "group_norm", dtype)
        g = rng.standard_normal(x.shape).astype(dtype)
        dx, dw, db = nb.group_norm_backward(g, x, 1, mean, rstd, w, b, axis=axis, backend=backend)
        ldx, ldw, ldb = nb.layer_norm_backward(g, x, x.shape[1:], lmean, lrstd, lw, lb, backend="reference")
        allclose(dx, ldx, "group_norm", dtype)
        sp = (1, 2) if axis == 1 else (0, 1)  # the layer-norm parameter gradients summed over space
        allclose(dw, ldw.sum(axis=sp), "group_norm", dtype)
        allclose(db, ldb.sum(axis=sp), "group_norm", dtype)


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_c_groups_is_instance_norm(axis, dtype, rng):
    for backend in backends("group_norm"):
        x = (rng.standard_normal((2, 3, 4, 2) if axis == 1 else (2, 4, 2, 3)) - 5).astype(dtype)
        w, b = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
        y, mean, rstd = nb.group_norm_forward(x, 3, w, b, axis=axis, backend=backend)
        iy, imean, irstd = nb.instance_norm_forward(x, w, b, axis=axis, backend="reference")
        allclose(y, iy, "group_norm", dtype)
        allclose(mean, imean, "group_norm", dtype)
        allclose(rstd, irstd, "group_norm", dtype)
        g = rng.standard_normal(x.shape).astype(dtype)
        for a, r in zip(nb.group_norm_backward(g, x, 3, mean, rstd, w, b, axis=axis, backend=backend),
                        nb.instance_norm_backward(g, x, imean, irstd, w, b, axis=axis, backend="reference")):
            allclose(a, r, "group_norm", dtype)


def test_layer_norm_is_not_group_norm_with_c_groups(rng):
    """Guard against the survey text that swaps the identities: G = C normalises each channel separately,
    which differs from layer norm over (C, *spatial) as soon as channels have different means."""
    x = rng.standard_normal((2, 3, 4)) + np.array([0.0, 5.0, -5.0])[None, :, None]
    g_c = nb.group_norm_forward(x, 3, backend="reference")[0]
    ln = nb.layer_norm_forward(x, (3, 4), backend="reference")[0]
    assert np.abs(g_c - ln).max() > 0.1


@pytest.mark.parametrize("axis", [1, -1])
def test_eval_batch_norm_with_unit_running_stats_is_affine(axis, rng):
    for backend in backends("batch_norm"):
        for dtype in DTYPES:
            x = rng.standard_normal((3, 4, 5) if axis == 1 else (3, 5, 4)).astype(dtype)
            w, b = rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)
            bw, bb = (w[:, None], b[:, None]) if axis == 1 else (w, b)
            for eps in (0.0, 1e-3):
                y = nb.batch_norm_forward(x, w, b, np.zeros(4, dtype), np.ones(4, dtype), training=False, eps=eps,
                                          axis=axis, backend=backend)[0]
                want = x.astype(np.float64) * bw / np.sqrt(1 + eps) + bb
                allclose(y, want, "batch_norm", dtype)
            # and frozen batch norm is the same map for any buffers
            rm, rv = rng.standard_normal(4).astype(dtype), (1 + rng.random(4)).astype(dtype)
            e = nb.batch_norm_forward(x, w, b, rm, rv, training=False, axis=axis, backend=backend)[0]
            f = nb.frozen_batch_norm_forward(x, w, b, rm, rv, axis=axis, backend=backend)
            allclose(f, e, "batch_norm", dtype)


def test_running_statistics_update_closed_form(rng):
    """running = (1 - m) * running + m * batch, with the unbiased batch variance, whatever ``correction``."""
    x = rng.standard_normal((6, 2, 3))
    for backend in backends("batch_norm"):
        for c in (0, 1):
            rm, rv = np.array([1.0, -1.0]), np.array([2.0, 0.5])
            nb.batch_norm_forward(x, None, None, rm, rv, momentum=0.25, correction=c, backend=backend)
            mean = x.mean(axis=(0, 2))
            var = x.var(axis=(0, 2), ddof=1)
            np.testing.assert_allclose(rm, 0.75 * np.array([1.0, -1.0]) + 0.25 * mean, rtol=1e-13)
            np.testing.assert_allclose(rv, 0.75 * np.array([2.0, 0.5]) + 0.25 * var, rtol=1e-13)


def test_instance_norm_running_stats_are_batch_averages(rng):
    x = rng.standard_normal((5, 2, 6))
    for backend in backends("instance_norm"):
        rm, rv = np.zeros(2), np.ones(2)
        nb.instance_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.5, backend=backend)
        np.testing.assert_allclose(rm, 0.5 * x.mean(axis=2).mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(rv, 0.5 + 0.5 * x.var(axis=2, ddof=1).mean(axis=0), rtol=1e-13)


def test_fused_with_zero_residual_is_the_plain_norm(rng):
    x = rng.standard_normal((4, 6))
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    for backend in backends("fused_add_norm"):
        y, h, mean, rstd = nb.fused_add_norm_forward(x, np.zeros_like(x), 6, w, b, alpha=3.0, backend=backend)
        np.testing.assert_array_equal(h, x)
        allclose(y, nb.layer_norm_forward(x, 6, w, b, backend="reference")[0], "fused_add_norm", np.float64)
        y, h, mean, rstd = nb.fused_add_norm_forward(x, np.zeros_like(x), 6, w, norm="rms", backend=backend)
        assert mean is None
        allclose(y, nb.rms_norm_forward(x, 6, w, eps=1e-5, backend="reference")[0], "fused_add_norm", np.float64)


def test_lrn_closed_form(rng):
    """size 1: scale = k + alpha * x**2; size >= 2C-1 at every channel: the whole channel sum."""
    x = rng.standard_normal((2, 3, 4))
    for backend in backends("local_response_norm"):
        y, scale = nb.local_response_norm_forward(x, 1, alpha=0.5, beta=0.75, k=2.0, backend=backend)
        np.testing.assert_allclose(scale, 2.0 + 0.5 * x * x, rtol=1e-14)
        np.testing.assert_allclose(y, x * (2.0 + 0.5 * x * x) ** -0.75, rtol=1e-14)
        y, scale = nb.local_response_norm_forward(x, 7, alpha=0.7, beta=0.5, k=1.0, backend=backend)
        np.testing.assert_allclose(scale, np.broadcast_to(1.0 + 0.1 * (x * x).sum(axis=1, keepdims=True), x.shape),
                                   rtol=1e-14)


def test_rms_norm_default_eps_is_machine_epsilon_of_the_dtype():
    x = np.zeros((1, 4), np.float32)
    x[0, 0] = 1e-4  # mean square 2.5e-9: eps = 1.19e-7 dominates
    for backend in backends("rms_norm"):
        _, rstd = nb.rms_norm_forward(x, 4, backend=backend)
        np.testing.assert_allclose(rstd, 1 / np.sqrt(2.5e-9 + np.finfo(np.float32).eps), rtol=1e-6)


# ---------------------------------------------------------------------------------------------- properties
def rows(min_rows=1, max_rows=4, min_cols=2, max_cols=12):
    shape = st.tuples(st.integers(min_rows, max_rows), st.integers(min_cols, max_cols))
    return hnp.arrays(np.float64, shape, elements=st.floats(-1e3, 1e3, allow_nan=False, width=64))


def well_spread(x, axes):
    """Rows whose spread is not tiny against their magnitude (otherwise x-hat is ill-conditioned)."""
    spread = x.std(axis=axes)
    mag = np.abs(x).max(axis=axes)
    return bool(np.all(spread > 1e-3 * np.maximum(mag, 1e-3)))


@pytest.mark.parametrize("backend", backends("layer_norm"))
@pytest.mark.parametrize("correction", [0, 1])
@SETTINGS
@given(x=rows())
def test_layer_norm_xhat_and_gradient_sums(backend, correction, x):
    assume(well_spread(x, 1) and x.shape[1] > correction)
    n = x.shape[1]
    y, mean, rstd = nb.layer_norm_forward(x, n, eps=0.0, correction=correction, backend=backend)
    tol = 50 * rtol("layer_norm", np.float64)
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=tol)
    np.testing.assert_allclose((y * y).sum(axis=1) / (n - correction), 1, atol=tol)
    g = np.random.default_rng(x.shape[0]).standard_normal(x.shape)
    w = 1 + np.arange(n) / n
    b = np.zeros(n)
    dx, dw, db = nb.layer_norm_backward(g, x, n, mean, rstd, w, b, eps=0.0, correction=correction, backend=backend)
    s = np.abs(g * w).max() * rstd.max() * n
    np.testing.assert_allclose(dx.sum(axis=1), 0, atol=tol * s)  # shift invariance
    xc = x - x.mean(axis=1, keepdims=True)
    np.testing.assert_allclose((dx * xc).sum(axis=1) / np.abs(xc).max(axis=1), 0, atol=tol * s)  # scale invariance
    np.testing.assert_allclose(dw, (g * y).sum(axis=0), rtol=tol, atol=tol * np.abs(g).sum(axis=0).max())
    np.testing.assert_allclose(db, g.sum(axis=0), rtol=tol, atol=tol * np.abs(g).sum(axis=0).max())


@pytest.mark.parametrize("backend", backends("rms_norm"))
@SETTINGS
@given(x=rows())
def test_rms_norm_scale_invariance(backend, x):
    assume(np.all(np.abs(x).max(axis=1) > 1e-3))
    n = x.shape[1]
    y, rstd = nb.rms_norm_forward(x, n, eps=0.0, backend=backend)
    tol = 50 * rtol("rms_norm", np.float64)
    np.testing.assert_allclose((y * y).mean(axis=1), 1, atol=tol)
    y2 = nb.rms_norm_forward(x * 8.0, n, eps=0.0, backend=backend)[0]
    np.testing.assert_allclose(y2, y, atol=tol)
    g = np.random.default_rng(n).standard_normal(x.shape)
    dx, _ = nb.rms_norm_backward(g, x, n, rstd, eps=0.0, backend=backend)
    s = np.abs(g).max() * rstd.max() * n
    np.testing.assert_allclose((dx * x).sum(axis=1) / np.abs(x).max(axis=1), 0, atol=tol * s)


@pytest.mark.parametrize("backend", backends("batch_norm"))
@pytest.mark.parametrize("axis", [1, -1])
@SETTINGS
@given(x=hnp.arrays(np.float64, st.tuples(st.integers(2, 4), st.integers(1, 3), st.integers(1, 4)),
                    elements=st.floats(-1e3, 1e3, allow_nan=False, width=64)),
       offset=st.floats(-1e4, 1e4))
def test_batch_norm_channel_properties(backend, axis, x, offset):
    x = x + offset
    axes = (0, 2) if axis == 1 else (0, 1)
    if axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    assume(well_spread(x, axes))
    y, sm, si = nb.batch_norm_forward(x, None, None, None, None, eps=0.0, axis=axis, backend=backend)
    tol = 50 * rtol("batch_norm", np.float64)
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=tol)
    np.testing.assert_allclose((y * y).mean(axis=axes), 1, atol=tol)
    g = np.random.default_rng(1).standard_normal(x.shape)
    C = x.shape[1 if axis == 1 else -1]
    dx, dw, db = nb.batch_norm_backward(g, x, np.ones(C), np.zeros(C), sm, si, eps=0.0, axis=axis, backend=backend)
    s = np.abs(g).max() * si.max() * x.size
    np.testing.assert_allclose(dx.sum(axis=axes), 0, atol=tol * s)
    np.testing.assert_allclose(dw, (g * y).sum(axis=axes), atol=tol * np.abs(g).sum())
    np.testing.assert_allclose(db, g.sum(axis=axes), atol=tol * np.abs(g).sum())


@pytest.mark.parametrize("backend", backends("group_norm"))
@SETTINGS
@given(x=hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.sampled_from([2, 4, 6]), st.integers(1, 4)),
                    elements=st.floats(-1e3, 1e3, allow_nan=False, width=64)))
def test_group_norm_group_properties(backend, x):
    N, C, S = x.shape
    G = 2
    xg = x.reshape(N, G, -1)
    assume(well_spread(xg, 2))
    y, mean, rstd = nb.group_norm_forward(x, G, eps=0.0, backend=backend)
    tol = 50 * rtol("group_norm", np.float64)
    yg = y.reshape(N, G, -1)
    np.testing.assert_allclose(yg.mean(axis=2), 0, atol=tol)
    np.testing.assert_allclose((yg * yg).mean(axis=2), 1, atol=tol)
    np.testing.assert_allclose(mean, xg.mean(axis=2), rtol=1e-12, atol=1e-12 * np.abs(x).max())
    g = np.random.default_rng(2).standard_normal(x.shape)
    dx = nb.group_norm_backward(g, x, G, mean, rstd, eps=0.0, backend=backend)[0]
    s = np.abs(g).max() * rstd.max() * xg.shape[2]
    np.testing.assert_allclose(dx.reshape(N, G, -1).sum(axis=2), 0, atol=tol * s)
