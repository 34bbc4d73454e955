"""CPU row-wise kernels (layer norm, RMS norm, fused add + norm, LRN) against the float64 reference.

The reference (normbench/reference) is the independent truth; PyTorch's own sample inputs run through
backend "cpu" in tests/test_opdb.py and finite differences in tests/test_gradcheck.py.
"""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normbench as nb
from normbench.cpu import _rows, _stream
from normbench.cpu import lrn as cpu_lrn

OPTIONS = [dict(eps_placement=e, correction=c, variance=v, accumulate=a)
           for e, c, v, a in itertools.product(("inside", "outside"), (0, 1), ("two_pass", "welford", "naive", "shifted"),
                                               (None, "float32", "float64"))]
FAMILIES = ("layer", "rms", "fused_layer", "fused_rms")
F32_EPS = float(np.finfo(np.float32).eps)


def rel(a, ref):
    """max|a - ref| / max(max|ref|, 1): relative, absolute near 0 (dx of D = 1); NaN equals NaN."""
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0
    both_nan = np.isnan(a) & np.isnan(ref)
    d = np.where(both_nan, 0.0, np.abs(a - ref))
    return float(np.max(d) / max(np.nanmax(np.abs(ref)), 1.0))  # absolute near 0 (e.g. dx of D = 1)


def tolerance(dtype, accumulate):
    if np.dtype(dtype) == np.float64 and accumulate != "float32":
        return 1e-12
    return 2e-5


def make(shape, dtype, rng, nd=1, offset=0.0):
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    ns = tuple(shape[len(shape) - nd:])
    w = (1 + 0.1 * rng.standard_normal(ns)).astype(dtype)
    b = (0.1 * rng.standard_normal(ns)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype)
    dh = rng.standard_normal(shape).astype(dtype)
    return x, ns, w, b, dy, res, dh


def run(family, backend, x, ns, w, b, dy, res, dh, alpha=0.7, **numerics):
    """Forward then backward for one family; the backward gets the backend's own saved statistics.
    Returns the list of forward outputs followed by the gradients (None entries dropped)."""
    kw = dict(backend=backend, **numerics)
    if family == "layer":
        y, m, r = nb.layer_norm_forward(x, ns, w, b, **kw)
        grads = nb.layer_norm_backward(dy, x, ns, m, r, w, b, **kw)
        outs = [y, m, r]
    elif family == "rms":
        y, r = nb.rms_norm_forward(x, ns, w, **kw)
        grads = nb.rms_norm_backward(dy, x, ns, r, w, **kw)
        outs = [y, r]
    else:
        norm = family.split("_")[1]
        bb = b if norm == "layer" else None
        y, h, m, r = nb.fused_add_norm_forward(x, res, ns, w, bb, alpha=alpha, norm=norm, **kw)
        # both backwards see the same (float32-rounded) h, so only the kernel is compared
        h_in = h.astype(x.dtype)
        grads = nb.fused_add_norm_backward(dy, h_in, ns, m, r, w, bb, alpha=alpha, norm=norm, dh=dh, **kw)
        outs = [y, h, m, r]
    return [o for o in outs if o is not None], [g for g in grads if g is not None]


def compare(family, args, tol, **numerics):
    outs, grads = run(family, "cpu", *args, **numerics)
    routs, rgrads = run(family, "reference", *args, **numerics)
    x = args[0]
    for o in outs[:1] + grads:
        assert o.dtype == x.dtype
    assert outs[0].shape == x.shape and grads[0].shape == x.shape
    for o in outs[-2:] if family in ("layer", "fused_layer") else outs[-1:]:
        assert o.dtype == np.float64  # saved statistics are float64 whatever the input dtype
    if family.startswith("fused"):
        fused_backward_reference_check(args, outs, grads, tol, **numerics)
        grads = grads[:0]
        rgrads = rgrads[:0]
    for i, (o, r) in enumerate(zip(outs + grads, routs + rgrads)):
        assert rel(o, r) <= tol, (family, i, rel(o, r), numerics)


def fused_backward_reference_check(args, outs, grads, tol, **numerics):
    """The fused backward is judged on the reference backward of the same h and statistics."""
    x, ns, w, b, dy, res, dh = args
    family_norm = "layer" if len(outs) == 4 else "rms"
    h = outs[1]
    m = outs[2] if family_norm == "layer" else None
    r = outs[-1]
    bb = b if family_norm == "layer" else None
    ref = nb.fused_add_norm_backward(dy, h, ns, m, r, w, bb, alpha=0.7, norm=family_norm, dh=dh,
                                     backend="reference", **numerics)
    ref = [g for g in ref if g is not None]
    for i, (o, rr) in enumerate(zip(grads, ref)):
        assert rel(o, rr) <= tol, ("fused backward", i, rel(o, rr), numerics)


# ------------------------------------------------------------------------------------------ option product
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_option_combination(family, dtype, rng):
    args = make((3, 2, 37), dtype, rng, offset=2.0)
    for numerics in OPTIONS:
        compare(family, args, tolerance(dtype, numerics["accumulate"]), **numerics)


@pytest.mark.parametrize("D", [1, 3, 1023])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_odd_sizes_and_one_row(D, dtype, rng):
    for R in (1, 5):
        args = make((R, D), dtype, rng)
        for family in FAMILIES:
            compare(family, args, tolerance(dtype, None))
            # D = 1 has var = 0, where eps outside has no derivative and rstd = 1/eps amplifies rounding
            placement = "outside" if D > 1 else "inside"
            compare(family, args, tolerance(dtype, None), eps_placement=placement, variance="welford")


def test_one_value_per_row_with_correction_is_an_error(rng):
    x, ns, w, b, dy, res, dh = make((4, 1), np.float32, rng)
    with pytest.raises(ValueError, match="correction"):
        nb.layer_norm_forward(x, ns, w, b, correction=1, backend="cpu")
    with pytest.raises(ValueError, match="correction"):
        nb.rms_norm_backward(dy, x, ns, np.ones(4), w, correction=1, backend="cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_rows(family, rng):
    args = make((0, 7), np.float32, rng)
    outs, grads = run(family, "cpu", *args)
    assert outs[0].shape == (0, 7) and grads[0].shape == (0, 7)
    for g in grads[1:]:
        assert g.shape in ((0, 7), (7,))
        if g.shape == (7,):
            assert np.all(g == 0)


def test_multi_dim_normalized_shape(rng):
    args = make((2, 3, 4, 5), np.float32, rng, nd=2)
    for family in FAMILIES:
        compare(family, args, 2e-5)
    outs, _ = run("layer", "cpu", *args)
    assert outs[1].shape == (2, 3)


# ------------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_path_for_a_long_row(dtype, rng, monkeypatch):
    """A row longer than SPLIT_MIN with fewer rows than threads is split across threads and merged."""
    monkeypatch.setattr(_rows, "SPLIT_MIN", 64)
    assert _rows._schedule(1, 1001)[0] == "split"
    args = make((1, 1001), dtype, rng, offset=10.0)
    for family in FAMILIES:
        for numerics in ({}, dict(variance="welford", correction=1), dict(variance="two_pass", accumulate="float32"),
                         dict(variance="naive", eps_placement="outside")):
            compare(family, args, tolerance(dtype, numerics.get("accumulate")), **numerics)


def test_split_path_many_rows_uneven_pieces(rng, monkeypatch):
    """Several rows cut into 3 pieces of unequal length (the piece loop runs over rows)."""
    monkeypatch.setattr(_rows, "_schedule", lambda R, D: ("split", 3))
    args = make((4, 101), np.float32, rng, offset=10.0)
    for family in FAMILIES:
        compare(family, args, 2e-5)
        compare(family, args, 2e-5, variance="welford", correction=1, eps_placement="outside")


@pytest.mark.parametrize("R", [1, 4])
def test_split_path_parameter_gradients_only_where_wanted(R, rng, monkeypatch):
    """The split backward writes dweight/dbias into fresh arrays (the first row assigns, later rows add): each is
    None exactly where its parameter is, and the other matches the reference."""
    monkeypatch.setattr(_rows, "_schedule", lambda R, D: ("split", 3))
    x, ns, w, b, dy, _, _ = make((R, 133), np.float32, rng, offset=5.0)
    for ww, bb in ((w, None), (None, b), (None, None), (w, b)):
        y, m, r = nb.layer_norm_forward(x, ns, ww, bb)
        got = nb.layer_norm_backward(dy, x, ns, m, r, ww, bb)
        ref = nb.layer_norm_backward(dy, x, ns, m, r, ww, bb, backend="reference")
        for g, gr in zip(got, ref):
            assert (g is None) == (gr is None)
            if g is not None:
                assert rel(g, gr) <= 2e-5
        y, r = nb.rms_norm_forward(x, ns, ww)
        got = nb.rms_norm_backward(dy, x, ns, r, ww)
        ref = nb.rms_norm_backward(dy, x, ns, r, ww, backend="reference")
        assert (got[1] is None) == (ww is None)
        for g, gr in zip(got, ref):
            if g is not None:
                assert rel(g, gr) <= 2e-5


def test_parallel_rows_path_on_small_inputs(rng, monkeypatch):
    """Short rows (one at a time) and rows of PAIRS_MIN values (the two-row backward; 13 rows: every thread's
    chunk runs its pair loop and a tail)."""
    monkeypatch.setattr(_rows, "PARALLEL_MIN", 0)
    for shape in ((7, 33), (13, _rows.PAIRS_MIN)):
        assert _rows._schedule(*shape)[0] == "rows"
        args = make(shape, np.float32, rng)
        for family in FAMILIES:
            compare(family, args, 2e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("schedule", ["serial", "rows", "split"])
def test_streaming_stores(dtype, schedule, rng, monkeypatch):
    """Outputs of at least STREAM_MIN_BYTES whose rows all start on a 64-byte line are written with streaming
    stores (forced on here for small inputs): correct against the reference, and bit for bit the results of
    ordinary stores, which misaligned out= arrays and rows that are not whole lines (D = 77) take."""
    monkeypatch.setattr(_stream, "STREAM_MIN_BYTES", 0)
    if schedule == "rows":
        monkeypatch.setattr(_rows, "PARALLEL_MIN", 0)
    elif schedule == "split":  # pieces on 16-value boundaries; dweight/dbias streamed too
        monkeypatch.setattr(_rows, "_schedule", lambda R, D: ("split", 3))
    used = []
    real = _rows.streamable
    monkeypatch.setattr(_rows, "streamable", lambda *a: used.append(real(*a)) or used[-1])

    def misaligned(like):
        return np.empty(like.size + 1, dtype)[1:].reshape(like.shape)  # 4 or 8 bytes off a 16-byte boundary

    for R, D in ((6, 16), (6, 48), (6, 77), (10, _rows.PAIRS_MIN)):  # the last: the two-row backward
        args = make((R, D), dtype, rng, offset=3.0)
        for family in FAMILIES:
            compare(family, args, tolerance(dtype, None))
        x, ns, w, b, dy, res, dh = args
        y, m, r = nb.layer_norm_forward(x, ns, w, b)
        np.testing.assert_array_equal(nb.layer_norm_forward(x, ns, w, b, out=misaligned(x))[0], y)
        dx = nb.layer_norm_backward(dy, x, ns, m, r, w, b)[0]
        np.testing.assert_array_equal(nb.layer_norm_backward(dy, x, ns, m, r, w, b, dx_out=misaligned(x))[0], dx)
        y, h, m, r = nb.fused_add_norm_forward(x, res, ns, w, b, alpha=0.7)
        y2, h2, _, _ = nb.fused_add_norm_forward(x, res, ns, w, b, alpha=0.7, h_out=misaligned(x))
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(h2, h)
        dx, dres = nb.fused_add_norm_backward(dy, h, ns, m, r, w, b, alpha=0.7, dh=dh)[:2]
        dx2, dres2 = nb.fused_add_norm_backward(dy, h, ns, m, r, w, b, alpha=0.7, dh=dh,
                                                dresidual_out=misaligned(x))[:2]
        np.testing.assert_array_equal(dx2, dx)
        np.testing.assert_array_equal(dres2, dres)
    assert True in used and False in used


@settings(max_examples=25, deadline=None)
@given(R=st.integers(0, 40), D=st.integers(1, 300), f64=st.booleans(), fam=st.sampled_from(FAMILIES),
       seed=st.integers(0, 2**31 - 1))
def test_hypothesis_shapes(R, D, f64, fam, seed):
    dtype = np.float64 if f64 else np.float32
    compare(fam, make((R, D), dtype, np.random.default_rng(seed), offset=1.0), tolerance(dtype, None))


# --------------------------------------------------------------------------------------------- out= rules
def test_out_arrays_are_written_and_returned(rng):
    x, ns, w, b, dy, res, dh = make((6, 40), np.float32, rng)
    out = np.empty_like(x)
    h_out = np.empty_like(x)
    dx_out = np.empty_like(x)
    y, m, r = nb.layer_norm_forward(x, ns, w, b, out=out, backend="cpu")
    assert y is out
    assert nb.layer_norm_backward(dy, x, ns, m, r, w, b, dx_out=dx_out, backend="cpu")[0] is dx_out
    y, r = nb.rms_norm_forward(x, ns, w, out=out, backend="cpu")
    assert y is out
    y, h, m, r = nb.fused_add_norm_forward(x, res, ns, w, b, out=out, h_out=h_out, backend="cpu")
    assert y is out and h is h_out
    np.testing.assert_allclose(h_out, x + res, rtol=1e-6)
    assert nb.fused_add_norm_backward(dy, h, ns, m, r, w, b, dx_out=dx_out, backend="cpu")[0] is dx_out


def test_out_rules_enforced(rng):
    x, ns, w, b, dy, res, dh = make((6, 40), np.float32, rng)
    with pytest.raises((TypeError, ValueError), match="out"):
        nb.layer_norm_forward(x, ns, w, b, out=np.empty(x.shape, np.float64), backend="cpu")
    with pytest.raises(ValueError, match="out"):
        nb.layer_norm_forward(x, ns, w, b, out=np.empty((6, 41), np.float32), backend="cpu")
    with pytest.raises(ValueError, match="out"):
        nb.rms_norm_forward(x, ns, w, out=x, backend="cpu")
    y, m, r = nb.layer_norm_forward(x, ns, w, b, backend="cpu")
    with pytest.raises(ValueError, match="dx_out"):
        nb.layer_norm_backward(dy, x, ns, m, r, w, b, dx_out=dy, backend="cpu")
    with pytest.raises(ValueError, match="h_out"):
        nb.fused_add_norm_forward(x, res, ns, w, b, h_out=res, backend="cpu")
    before = x.copy()
    with pytest.raises(ValueError):
        nb.fused_add_norm_forward(x, res, ns, w, b, out=np.empty((5, 40), np.float32), backend="cpu")
    np.testing.assert_array_equal(x, before)


# ------------------------------------------------------------------------------------------ NaN isolation
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("schedule", ["serial", "rows"])
@pytest.mark.parametrize("D", [50, _rows.PAIRS_MIN])  # rows one at a time, and two at a time (backward)
def test_nan_row_does_not_contaminate_other_rows(family, schedule, D, rng, monkeypatch):
    if schedule == "rows":
        monkeypatch.setattr(_rows, "PARALLEL_MIN", 0)
    x, ns, w, b, dy, res, dh = make((8, D), np.float32, rng)
    clean_outs, clean_grads = run(family, "cpu", x, ns, w, b, dy, res, dh)
    xn = x.copy()
    xn[3, 7] = np.nan
    dyn = dy.copy()
    dyn[5, 1] = np.inf
    outs, grads = run(family, "cpu", xn, ns, w, b, dyn, res, dh)
    other = [i for i in range(8) if i not in (3, 5)]
    assert np.isnan(outs[0][3]).all()
    np.testing.assert_array_equal(outs[0][other], clean_outs[0][other])
    np.testing.assert_array_equal(grads[0][other], clean_grads[0][other])
    assert not np.isfinite(grads[0][3]).any() and not np.isfinite(grads[0][5]).all()


# ----------------------------------------------------------------------------------------------- accuracy
def errors_in_units(a, ref):
    """Worst row of max|a - ref| / (eps_f32 * max|ref|)."""
    a = np.asarray(a, np.float64).reshape(ref.shape[0], -1)
    ref = np.asarray(ref, np.float64).reshape(ref.shape[0], -1)
    scale = np.maximum(np.abs(ref).max(axis=1), 1e-300)
    return float((np.abs(a - ref).max(axis=1) / (F32_EPS * scale)).max())


def stress(kind, rng, R=8, D=1024):
    z = rng.standard_normal((R, D))
    if kind == "normal":
        return z.astype(np.float32)
    if kind == "offset1e4":
        return (1e4 + z).astype(np.float32)
    if kind == "offset1e6":
        return (1e6 + z).astype(np.float32)
    if kind == "constant":
        return np.repeat(rng.standard_normal((R, 1)) * 100, D, axis=1).astype(np.float32)
    if kind == "tiny_var":  # variance ~1e-12, far below eps = 1e-5
        return (1.0 + 1e-6 * z).astype(np.float32)
    raise ValueError(kind)


def check_units(family, x, rng, limit=4.0):
    D = x.shape[-1]
    ns = (D,)
    w = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
    b = (0.1 * rng.standard_normal(D)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    res = np.zeros_like(x)
    args = (x, ns, w, b, dy, res, None)
    outs, grads = run(family, "cpu", *args, alpha=1.0)
    routs, rgrads = run(family, "reference", *args, alpha=1.0)
    assert errors_in_units(outs[0], routs[0]) <= limit, ("y", errors_in_units(outs[0], routs[0]))
    assert errors_in_units(grads[0], rgrads[0]) <= limit, ("dx", errors_in_units(grads[0], rgrads[0]))


@pytest.mark.parametrize("kind", ["normal", "offset1e4", "offset1e6", "constant", "tiny_var"])
@pytest.mark.parametrize("family", ["layer", "rms", "fused_layer"])
def test_default_options_within_4_units_on_stress_inputs(family, kind, rng):
    check_units(family, stress(kind, rng), rng)


def test_long_row_within_4_units(rng):
    """One row of 2**20 values (split across threads), offset by 1e4 times its spread."""
    x = (1e4 + rng.standard_normal((1, 2**20))).astype(np.float32)
    check_units("layer", x, rng)


def test_naive_variance_clamps_instead_of_nan(rng):
    """Catastrophic cancellation may make the naive variance negative: it is clamped at 0, never NaN."""
    x = (1e6 + rng.standard_normal((16, 256))).astype(np.float32)
    for acc in ("float32", "float64"):
        y, m, r = nb.layer_norm_forward(x, 256, variance="naive", accumulate=acc, backend="cpu")
        assert np.isfinite(y).all() and np.isfinite(r).all()


# ------------------------------------------------------------------------------------------------------ LRN
def lrn_both(x, dy, size, **kw):
    y, s = nb.local_response_norm_forward(x, size, backend="cpu", **kw)
    dx = nb.local_response_norm_backward(dy, x, y, s, size, backend="cpu", **kw)
    yr, sr = nb.local_response_norm_forward(x, size, backend="reference", **kw)
    dxr = nb.local_response_norm_backward(dy, x, yr, sr, size, backend="reference", **kw)
    return (y, s, dx), (yr, sr, dxr)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,size", [((2, 7, 5), 3), ((2, 1, 4), 5), ((3, 16, 300), 5), ((2, 4, 3, 3), 1),
                                        ((2, 6, 9, 7), 8), ((1, 5, 2, 2, 3), 12)])
def test_lrn_matches_reference(shape, size, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for kw in (dict(alpha=1e-4, beta=0.75, k=1.0), dict(alpha=0.5, beta=0.3, k=2.0), dict(alpha=0.2, beta=0.5, k=1.5),
               dict(alpha=0.2, beta=1.0, k=1.0)):  # beta 0.75, 0.5 and 1 take the sqrt/division path
        got, ref = lrn_both(x, dy, size, **kw)
        for g, r in zip(got, ref):
            assert g.dtype == dtype and g.shape == x.shape
            assert rel(g, r) <= tol


def test_lrn_spatial_blocks_and_parallel_path(rng, monkeypatch):
    """More spatial positions than one block, and the threaded path, on a small input."""
    monkeypatch.setattr(cpu_lrn, "PARALLEL_MIN", 0)
    x = rng.standard_normal((3, 6, cpu_lrn.SBLOCK + 37)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    got, ref = lrn_both(x, dy, 3, alpha=0.3, beta=0.75, k=1.0)
    for g, r in zip(got, ref):
        assert rel(g, r) <= 1e-6


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_lrn_nan_reaches_exactly_the_windows_that_hold_it(backend, bad, rng):
    """A NaN (or Inf) at channel 3 enters the windows of channels 2..4 (size 3) and no other: neither the CPU
    kernel's sliding sum nor the reference may carry it further (a cumulative sum did)."""
    x = rng.standard_normal((2, 10, 4)).astype(np.float32)
    x[0, 3, 1] = bad
    y, s = nb.local_response_norm_forward(x, 3, alpha=0.1, beta=0.75, k=1.0, backend=backend)
    window = np.zeros(x.shape, bool)
    window[0, 2:5, 1] = True
    # the scale is NaN/Inf exactly there; y is NaN there (x * Inf**-beta = x * 0 elsewhere in the window, 0)
    np.testing.assert_array_equal(~np.isfinite(s), window)
    assert np.isnan(y[0, 3, 1]) and np.isfinite(y[~window]).all()
    clean = x.copy()
    clean[0, 3, 1] = 0.0
    yc, _ = nb.local_response_norm_forward(clean, 3, alpha=0.1, beta=0.75, k=1.0, backend=backend)
    np.testing.assert_array_equal(y[~window], yc[~window])
    dy = np.ones_like(x)
    dx = nb.local_response_norm_backward(dy, x, y, s, 3, alpha=0.1, beta=0.75, k=1.0, backend=backend)
    assert np.isfinite(dx[1]).all() and np.isfinite(dx[0, 6:]).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_lrn_float32_scale_overflow_backward_matches_the_reference(threads, rng, monkeypatch):
    """|x| = 1e22 in float32: alpha/size * sum(x**2) passes float32's range, so the stored scale is inf; y is
    right (float64 sums) and dx was 0 where it is 1e-2 (scale**-beta taken as 0). The backward now recomputes in
    float64: dx within float32 rounding of the reference's, which keeps a finite float64 scale."""
    monkeypatch.setattr(cpu_lrn, "PARALLEL_MIN", 0 if threads == 2 else 1 << 30)
    x = rng.standard_normal((2, 5, 300)).astype(np.float32)
    x[1, 2, 7] = 1e22
    dy = rng.standard_normal(x.shape).astype(np.float32)
    kw = dict(alpha=1e-4, beta=0.05, k=1.0)
    y, s = nb.local_response_norm_forward(x, 3, backend="cpu", **kw)
    assert np.isinf(s[1, 1:4, 7]).all()
    yr, sr = nb.local_response_norm_forward(x, 3, backend="reference", **kw)
    want = nb.local_response_norm_backward(dy, x, yr, sr, 3, backend="reference", **kw)
    dx = nb.local_response_norm_backward(dy, x, y, s, 3, backend="cpu", **kw)
    assert abs(want[1, 1, 7]) > 1e-3  # the case tests something: the gradient there is not negligible
    np.testing.assert_allclose(dx, want, rtol=4 * np.finfo(np.float32).eps, atol=0)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_lrn_small_terms_next_to_a_huge_one(backend, rng):
    """The window sums keep the small terms that sat next to a huge one (a sliding or cumulative sum loses them:
    1e40 + 1 - 1e40 = 0). Closed form: windows of ones after the huge channel left them."""
    for dtype, big in ((np.float64, 1e20), (np.float32, 1e8)):
        x = np.array([big, 1, 1, 1, 1, 1], dtype).reshape(1, 6, 1)
        _, s = nb.local_response_norm_forward(x, 3, alpha=3.0, beta=0.75, k=0.0, backend=backend)
        np.testing.assert_allclose(s.ravel()[2:], [3.0, 3.0, 3.0, 2.0], rtol=1e-6, err_msg=str(dtype))
    # one lane of 40 holding the huge value: summed again alone (the others keep their sliding sums), against
    # direct float64 window sums
    x = rng.standard_normal((1, 6, 40))
    x[0, 0, 7] = 1e20
    _, s = nb.local_response_norm_forward(x, 3, alpha=3.0, beta=0.75, k=0.0, backend=backend)
    sq = x * x
    direct = np.stack([sq[:, max(c - 1, 0):c + 2].sum(axis=1) for c in range(6)], axis=1)  # window [c-1, c+1]
    np.testing.assert_allclose(s, direct, rtol=1e-12)
    # the backward's signed sums: one channel of dy a trillion times the others, against the direct float64
    # sums of the reference (the cpu's own sums are checked; the reference's closed form is its direct sum)
    x = rng.standard_normal((2, 9, 300))
    dy = rng.standard_normal(x.shape)
    dy[:, 1] *= 1e12
    y, sc = nb.local_response_norm_forward(x, 3, alpha=0.5, backend="reference")
    t = dy * y / sc
    direct = np.zeros_like(t)
    for c in range(9):
        direct[:, c] = t[:, max(c - 1, 0):c + 2].sum(axis=1)  # the channels whose window holds c (size 3)
    expected = dy * sc ** -0.75 - 2 * 0.5 * 0.75 / 3 * x * direct
    dx = nb.local_response_norm_backward(dy, x, y, sc, 3, alpha=0.5, backend=backend)
    np.testing.assert_allclose(dx[:, 4:], expected[:, 4:], rtol=1e-9, atol=1e-9)


def test_fused_backward_accepts_float64_h_from_the_reference(rng):
    """h may come from the reference forward (float64): the kernel casts it to dy's dtype."""
    x, ns, w, b, dy, res, dh = make((5, 33), np.float32, rng)
    y, h, m, r = nb.fused_add_norm_forward(x, res, ns, w, b, backend="reference")
    assert h.dtype == np.float64
    got = nb.fused_add_norm_backward(dy, h, ns, m, r, w, b, dh=dh, backend="cpu")
    ref = nb.fused_add_norm_backward(dy, h, ns, m, r, w, b, dh=dh, backend="reference")
    for g, rr in zip(got, ref):
        assert g.dtype == np.float32 and rel(g, rr) <= 2e-5


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_fused_backward_dresidual_out(backend, norm):
    """dresidual_out= receives exactly what a freshly allocated dresidual holds; overlap with dx_out is refused."""
    rng = np.random.default_rng(3)
    x, res, dy = (rng.standard_normal((5, 33)).astype(np.float32) for _ in range(3))
    w = rng.standard_normal(33).astype(np.float32)
    b = None if norm == "rms" else rng.standard_normal(33).astype(np.float32)
    y, h, mean, rstd = nb.fused_add_norm_forward(x, res, 33, w, b, alpha=0.7, norm=norm, backend=backend)
    want = nb.fused_add_norm_backward(dy, h, 33, mean, rstd, w, b, alpha=0.7, norm=norm, backend=backend)
    dtype = np.float64 if backend == "reference" else np.float32
    dres_out, dx_out = np.zeros(x.shape, dtype), np.zeros(x.shape, dtype)
    got = nb.fused_add_norm_backward(dy, h, 33, mean, rstd, w, b, alpha=0.7, norm=norm, backend=backend,
                                     dx_out=dx_out, dresidual_out=dres_out)
    assert got[0] is dx_out and got[1] is dres_out
    np.testing.assert_array_equal(dres_out, want[1])
    np.testing.assert_array_equal(dx_out, want[0])
    with pytest.raises(ValueError, match="dresidual_out"):
        nb.fused_add_norm_backward(dy, h, 33, mean, rstd, w, b, norm=norm, backend=backend,
                                   dx_out=dx_out, dresidual_out=dx_out)


@pytest.mark.parametrize("scale, eps", [(1e110, 1e-5), (1e-110, 0.0)])
@pytest.mark.parametrize("eps_placement", ["inside", "outside"])
@pytest.mark.parametrize("family", FAMILIES)
def test_backward_of_data_at_extreme_scales(family, scale, eps, eps_placement, rng):
    """float64 rows whose std is 1e110 (or 1e-110 with eps = 0): the backward's variance term took rstd^3,
    which underflows to 0 (overflows to Inf) there, and dx lost its second term (relative error 1.1 at 1e108);
    against the reference (extended precision) on finite data whose squares fit float64."""
    x, ns, w, b, dy, res, dh = make((3, 17), np.float64, rng)
    x, res = x * scale, res * scale
    outs, grads = run(family, "cpu", x, ns, w, b, dy, res, dh, eps=eps, eps_placement=eps_placement)
    routs, rgrads = run(family, "reference", x, ns, w, b, dy, res, dh, eps=eps, eps_placement=eps_placement)
    if family.startswith("fused"):  # judged on the reference backward of the same h and statistics
        norm = family.split("_")[1]
        m = outs[2] if norm == "layer" else None
        rgrads = [g for g in nb.fused_add_norm_backward(dy, outs[1], ns, m, outs[-1], w, b if norm == "layer" else None,
                                                        alpha=0.7, norm=norm, dh=dh, eps=eps,
                                                        eps_placement=eps_placement, backend="reference")
                  if g is not None]
    for got, want in zip(outs + grads, routs + rgrads):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


@pytest.mark.parametrize("C, size, k, beta", [(65, 2, 0.0, 2.0), (256, 5, 0.0, 0.75), (256, 2, 1e-3, 0.75),
                                              (256, 5, 1.0, 0.75), (256, 31, 1.0, 0.75)])  # 31: sliding sums
def test_lrn_float64_within_a_few_units(C, size, k, beta, rng):
    """Float64 LRN took sliding window sums, which keep the rounding of every term they held: y off by 300-900
    float64 units with k = 0, and dx by up to 18 with the defaults (k = 1), against the reference (extended
    precision). Direct window sums for float64 inputs up to lrn.DIRECT_MAX_SIZE channels (wider windows keep
    the sliding sums); units of eps times the largest |value| across channels."""
    x = rng.standard_normal((2, C, 3, 5))
    dy = rng.standard_normal(x.shape)
    kw = dict(alpha=1.0, beta=beta, k=k)
    got = nb.local_response_norm_forward(x, size, backend="cpu", **kw)
    want = nb.local_response_norm_forward(x, size, backend="reference", **kw)

    def units(a, ref):
        return np.max(np.abs(a - ref) / np.max(np.abs(ref), axis=1, keepdims=True)) / np.finfo(np.float64).eps

    assert units(got[0], want[0]) <= 8
    dx = nb.local_response_norm_backward(dy, x, *got, size, backend="cpu", **kw)[0]
    dx_ref = nb.local_response_norm_backward(dy, x, *got, size, backend="reference", **kw)[0]
    # with k = 0, dx = dy s^-b - c x sum(dy y / s) cancels: the conditioning, not the sums; wider windows'
    # sliding sums reach 35 units here (documented in docs/cpu-rowwise.md)
    if k == 1.0 and size <= cpu_lrn.DIRECT_MAX_SIZE:
        assert units(dx, dx_ref) <= 8


@pytest.mark.parametrize("family", ["layer", "fused_layer"])
def test_an_outlier_first_value_is_not_the_shift(family, rng):
    """Rows whose first value is an outlier (1e5 among standard normal values), float64: the shifted sums'
    shift was the first value, and y was off by 1374 float64 units; the middle of the first, middle and last
    values as the shift keeps it within a few (as Cauchy rows: 734 -> 4 units at worst over 4000 rows)."""
    x, ns, w, b, dy, res, dh = make((16, 1000), np.float64, rng)
    x[:, 0] = 1e5
    res[:, 0] = 0.0
    outs, _ = run(family, "cpu", x, ns, w, b, dy, res, dh)
    routs, _ = run(family, "reference", x, ns, w, b, dy, res, dh)
    y, yr = outs[0], routs[0]
    assert np.max(np.abs(y - yr).max(axis=1) / np.abs(yr).max(axis=1)) <= 8 * np.finfo(np.float64).eps


@pytest.mark.parametrize("variant", ["layer_norm", "batch_norm", "group_norm"])
def test_shifted_float32_accumulator_forms_the_mean_in_float64(variant, rng):
    """accumulate="float32" holds the shifted sums in float32; the mean is the shift (a value of the data) plus
    their mean, formed in float64 (_moments.range_moments).  Float32 rows/channels offset by 1e4 spreads: y within
    the issue's 4 units of the oracle (it was 1390 units for layer norm, the mean rounded in float32)."""
    from normbench import registry
    from normbench.accuracy import oracle

    x = (1e4 + rng.standard_normal((6, 4, 33))).astype(np.float32)
    inputs = dict(x=x, weight=None, bias=None)
    if variant == "layer_norm":
        inputs["normalized_shape"] = (33,)
    elif variant == "batch_norm":
        inputs.update(running_mean=None, running_var=None, training=True, axis=1)
    else:
        inputs.update(num_groups=2, axis=1)
    opts = dict(variance="shifted", accumulate="float32")
    want = oracle.forward(variant, inputs, **opts)["y"]
    y = registry.VARIANTS[variant].run_forward(oracle.fresh(inputs), backend="cpu", **opts)[0]
    err = np.abs(y.astype(np.float64) - want).max() / (np.finfo(np.float32).eps * np.abs(want).max())
    assert err <= 4, err
