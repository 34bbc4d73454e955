"""Bad input: every class in the design's list raises a clear ValueError/TypeError naming the argument, before
any write (running statistics untouched).  Also: non-contiguous inputs work, NaN stays in its row/channel."""
import os

import numpy as np
import pytest

import normbench as nb
from normbench import registry

from nbtest import DeviceLike


def backends(variant):
    return [b for b in registry.available_backends(variant) if b != "cuda"]


@pytest.fixture
def x4(rng):
    return rng.standard_normal((2, 4, 3))


def running(C=4):
    return np.zeros(C), np.ones(C)


# ---------------------------------------------------------------------------------------------- shapes, dtypes, rank
def test_shape_mismatch_names_the_argument(x4):
    rm, rv = running()
    with pytest.raises(ValueError, match="weight"):
        nb.batch_norm_forward(x4, np.ones(3), None, rm, rv)
    with pytest.raises(ValueError, match="running_var"):
        nb.batch_norm_forward(x4, None, None, rm, np.ones(5))
    with pytest.raises(ValueError, match="dy"):
        nb.layer_norm_backward(x4[:1], x4, 3, np.zeros((2, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="rstd"):
        nb.layer_norm_backward(x4, x4, 3, np.zeros((2, 4)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="normalized_shape"):
        nb.layer_norm_forward(x4, (4,))
    with pytest.raises(ValueError, match="normalized_shape"):
        nb.rms_norm_forward(x4, (2, 3))
    with pytest.raises(ValueError, match="bias"):
        nb.group_norm_forward(x4, 2, np.ones(4), np.ones(2))
    with pytest.raises(ValueError, match="residual"):
        nb.fused_add_norm_forward(x4, x4[:, :2], 3)
    with pytest.raises(ValueError, match="scale"):
        nb.local_response_norm_backward(x4, x4, x4, x4[:1], 3)
    with pytest.raises(ValueError, match="save_mean"):
        nb.batch_norm_backward(x4, x4, None, None, np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="mean"):
        nb.group_norm_backward(x4, x4, 2, np.zeros((2, 4)), np.ones((2, 2)))


def test_dtypes(x4):
    xi = np.ones((2, 4, 3), dtype=np.int64)
    with pytest.raises(TypeError, match="x has dtype int64"):
        nb.layer_norm_forward(xi, 3)
    with pytest.raises(TypeError, match="x has dtype float16"):
        nb.batch_norm_forward(x4.astype(np.float16), None, None, None, None)
    with pytest.raises(TypeError, match="weight"):  # mixed dtypes
        nb.layer_norm_forward(x4.astype(np.float32), 3, np.ones(3))
    with pytest.raises(TypeError, match="running_mean"):
        nb.batch_norm_forward(x4, None, None, np.zeros(4, np.float32), np.ones(4, np.float32))
    with pytest.raises(TypeError, match="dy"):
        nb.rms_norm_backward(x4.astype(np.float32), x4, 3, np.ones((2, 4)))
    with pytest.raises(TypeError, match="x has type list"):
        nb.rms_norm_forward([[1.0, 2.0]], 2)
    with pytest.raises(TypeError, match="x is None"):
        nb.group_norm_forward(None, 1)
    with pytest.raises(TypeError, match="normalized_shape"):
        nb.layer_norm_forward(x4, "abc")


def test_rank_too_low(rng):
    x1 = rng.standard_normal(5)
    one = np.ones(5)
    for call in (lambda: nb.batch_norm_forward(x1, None, None, None, None),
                 lambda: nb.batch_norm_backward(x1, x1, None, None, one, one),
                 lambda: nb.group_norm_forward(x1, 1),
                 lambda: nb.instance_norm_forward(x1),
                 lambda: nb.frozen_batch_norm_forward(x1, one, one, one, one),
                 lambda: nb.local_response_norm_forward(rng.standard_normal((2, 5)), 3),
                 lambda: nb.fused_add_norm_forward(np.ones(()), np.ones(()), ()),
                 lambda: nb.PopulationStats(5).update(x1)):
        with pytest.raises(ValueError, match="rank"):
            call()


# ---------------------------------------------------------------------------------------------- counts
def test_batch_norm_one_value_per_channel(rng):
    for shape in ((1, 3), (1, 3, 1), (1, 3, 1, 1)):
        rm, rv = running(3)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            nb.batch_norm_forward(rng.standard_normal(shape), None, None, rm, rv, training=True)
        np.testing.assert_array_equal(rm, 0)
        # evaluation uses running statistics: one value is fine
        nb.batch_norm_forward(rng.standard_normal(shape), None, None, rm, rv, training=False)


def test_instance_norm_one_value_per_instance_channel(rng):
    for shape in ((4, 3), (4, 3, 1), (2, 3, 1, 1)):
        with pytest.raises(ValueError, match="more than 1 spatial element"):
            nb.instance_norm_forward(rng.standard_normal(shape))
        rm, rv = running(3)
        nb.instance_norm_forward(rng.standard_normal(shape), running_mean=rm, running_var=rv, use_input_stats=False)


def test_num_groups(x4):
    with pytest.raises(ValueError, match="num_groups=3 does not divide .* C=4"):
        nb.group_norm_forward(x4, 3)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="num_groups"):
            nb.group_norm_forward(x4, bad)
    for bad in (1.5, 2.0, True, "2"):  # a wrong type is a TypeError, as in PyTorch
        with pytest.raises(TypeError, match="num_groups"):
            nb.group_norm_forward(x4, bad)


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), "abc"])
def test_eps(eps, x4):
    rm, rv = running()
    one = np.ones(4)
    calls = [lambda: nb.batch_norm_forward(x4, None, None, rm, rv, eps=eps),
             lambda: nb.batch_norm_backward(x4, x4, None, None, one, one, eps=eps),
             lambda: nb.layer_norm_forward(x4, 3, eps=eps),
             lambda: nb.rms_norm_forward(x4, 3, eps=eps),
             lambda: nb.group_norm_forward(x4, 2, eps=eps),
             lambda: nb.instance_norm_forward(x4, eps=eps),
             lambda: nb.frozen_batch_norm_forward(x4, one, one, one, one, eps=eps),
             lambda: nb.frozen_batch_norm_backward(x4, one, one, eps=eps),
             lambda: nb.fused_add_norm_forward(x4, x4, 3, eps=eps),
             lambda: nb.fused_add_norm_forward(x4, x4, 3, norm="rms", eps=eps)]
    for call in calls:
        with pytest.raises((ValueError, TypeError), match="eps"):
            call()
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan"), "fast"])
def test_momentum(momentum, x4):
    rm, rv = running()
    with pytest.raises((ValueError, TypeError), match="momentum"):
        nb.batch_norm_forward(x4, None, None, rm, rv, momentum=momentum)
    with pytest.raises((ValueError, TypeError), match="momentum"):
        nb.instance_norm_forward(x4, None, None, rm, rv, momentum=momentum)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    # momentum is not used (no running statistics, or evaluation): not checked, as PyTorch
    nb.batch_norm_forward(x4, None, None, None, None, momentum=momentum)
    nb.batch_norm_forward(x4, None, None, rm, rv, training=False, momentum=momentum)


def test_momentum_bounds_are_inclusive(x4):
    for m, want in ((0.0, 0.0), (1.0, None)):
        rm, rv = running()
        _, mean, _ = nb.batch_norm_forward(x4, None, None, rm, rv, momentum=m, backend="reference")
        np.testing.assert_allclose(rm, 0.0 if want == 0.0 else mean, atol=1e-15)


def test_correction_must_be_below_n(x4):
    with pytest.raises(ValueError, match=r"correction=3 must be smaller .*\(n=3\)"):
        nb.layer_norm_forward(x4, 3, correction=3)
    with pytest.raises(ValueError, match="correction"):
        nb.rms_norm_forward(x4, 3, correction=5)
    with pytest.raises(ValueError, match="correction"):
        nb.group_norm_forward(x4, 4, correction=3)
    with pytest.raises(ValueError, match="correction"):
        nb.instance_norm_forward(x4, correction=3)
    rm, rv = running()
    with pytest.raises(ValueError, match="correction"):
        nb.batch_norm_forward(x4, None, None, rm, rv, correction=6)
    np.testing.assert_array_equal(rm, 0)
    with pytest.raises(ValueError, match="correction"):
        nb.layer_norm_forward(x4, 3, correction=-1)
    for bad in (0.5, 1.0, True, "1"):
        with pytest.raises(TypeError, match="correction"):
            nb.layer_norm_forward(x4, 3, correction=bad)
    nb.layer_norm_forward(x4, 3, correction=2)  # n - correction = 1 is allowed


def test_lrn_size(x4):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="size"):
            nb.local_response_norm_forward(x4, bad)
    for bad in (2.0, None):
        with pytest.raises(TypeError, match="size"):
            nb.local_response_norm_forward(x4, bad)
    with pytest.raises(TypeError, match="alpha"):
        nb.local_response_norm_forward(x4, 3, alpha="x")


def test_unknown_backend_and_options(x4):
    with pytest.raises(ValueError, match="backend='gpu'"):
        nb.layer_norm_forward(x4, 3, backend="gpu")
    with pytest.raises(TypeError, match="variance_algo"):
        nb.layer_norm_forward(x4, 3, variance_algo="welford")
    with pytest.raises(TypeError, match="correction"):  # FrozenBN computes no statistics: no numerics options
        nb.frozen_batch_norm_forward(x4, np.ones(4), np.ones(4), np.ones(4), np.ones(4), correction=1)
    # nor LRN (design.md's signature): its options were accepted, ignored by cpu and reference, and cuda alone
    # took accumulate=
    for kw in (dict(accumulate="float32"), dict(eps_placement="outside"), dict(variance="naive")):
        with pytest.raises(TypeError, match=next(iter(kw))):
            nb.local_response_norm_forward(x4, 3, **kw)
        with pytest.raises(TypeError, match=next(iter(kw))):
            nb.local_response_norm_backward(x4, x4, x4, x4, 3, **kw)
    # a value of the wrong type is a TypeError naming the option (it was a ValueError for these)
    for kw in (dict(eps_placement=None), dict(eps_placement=0), dict(variance=None), dict(accumulate=True),
               dict(accumulate=32)):
        with pytest.raises(TypeError, match=next(iter(kw))):
            nb.layer_norm_forward(x4, 3, **kw)
    with pytest.raises(ValueError, match="eps_placement='middle'"):
        nb.layer_norm_forward(x4, 3, eps_placement="middle")
    with pytest.raises(ValueError, match="variance='kahan'"):
        nb.layer_norm_forward(x4, 3, variance="kahan")
    with pytest.raises(ValueError, match="accumulate"):
        nb.layer_norm_forward(x4, 3, accumulate="float16")
    with pytest.raises(ValueError, match="axis=2"):
        nb.batch_norm_forward(x4, None, None, None, None, axis=2)
    with pytest.raises(ValueError, match="axis=0"):
        nb.group_norm_forward(x4, 2, axis=0)
    with pytest.raises(ValueError, match="norm='group'"):
        nb.fused_add_norm_forward(x4, x4, 3, norm="group")
    with pytest.raises(ValueError, match="bias must be None"):
        nb.fused_add_norm_forward(x4, x4, 3, None, np.ones(3), norm="rms")
    with pytest.raises(ValueError, match="running_mean and running_var"):
        nb.batch_norm_forward(x4, None, None, np.zeros(4), None)
    with pytest.raises(ValueError, match="training=False"):
        nb.batch_norm_forward(x4, None, None, None, None, training=False)
    with pytest.raises(ValueError, match="use_input_stats=False"):
        nb.instance_norm_forward(x4, use_input_stats=False)
    with pytest.raises(ValueError, match="weighting"):
        nb.PopulationStats(4, weighting="equal")


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"),
                    reason="the CUDA simulator is enabled: backend='cuda' is available")
def test_cuda_without_gpu(x4):
    from numba import cuda

    if cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises((RuntimeError, ValueError), match="cuda"):
        nb.layer_norm_forward(x4, 3, backend="cuda")


# ---------------------------------------------------------------------------------------------- out=
@pytest.mark.parametrize("backend", backends("layer_norm"))
def test_out_rules(backend, x4):
    dtype = registry.output_dtype(backend, x4.astype(np.float32))
    x = x4.astype(np.float32)
    wrong = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(ValueError, match="out has shape"):
        nb.layer_norm_forward(x, 3, out=np.empty((2, 4), dtype), backend=backend)
    with pytest.raises(ValueError, match="out has shape .* dtype"):
        nb.layer_norm_forward(x, 3, out=np.empty(x.shape, wrong), backend=backend)
    if dtype == x.dtype:
        with pytest.raises(ValueError, match="out shares memory with x"):
            nb.layer_norm_forward(x, 3, out=x, backend=backend)
    with pytest.raises(ValueError, match="writable"):
        ro = np.empty(x.shape, dtype)
        ro.flags.writeable = False
        nb.layer_norm_forward(x, 3, out=ro, backend=backend)
    with pytest.raises(TypeError, match="out has type list"):
        nb.layer_norm_forward(x, 3, out=[], backend=backend)
    out = np.empty(x.shape, dtype)
    y = nb.layer_norm_forward(x, 3, out=out, backend=backend)[0]
    assert y is out
    np.testing.assert_allclose(out, nb.layer_norm_forward(x, 3, backend=backend)[0], rtol=0, atol=0)


def test_out_overlap(x4):
    rm, rv = running()
    w = np.ones(4)
    big = np.empty(x4.size * 2)
    with pytest.raises(ValueError, match="out shares memory with x"):
        xv = big[: x4.size].reshape(x4.shape)
        xv[...] = x4
        nb.batch_norm_forward(xv, None, None, rm, rv, out=big[x4.size // 2: x4.size // 2 + x4.size].reshape(x4.shape),
                              backend="reference")
    with pytest.raises(ValueError, match="dx_out shares memory with dy"):
        dy = x4.copy()
        nb.batch_norm_backward(dy, x4, w, None, np.zeros(4), np.ones(4), dx_out=dy, backend="reference")
    with pytest.raises(ValueError, match="out and h_out share memory"):
        o = np.empty(x4.shape)
        nb.fused_add_norm_forward(x4, x4.copy(), 3, out=o, h_out=o, backend="reference")
    with pytest.raises(ValueError, match="h_out shares memory with residual"):
        r = x4.copy()
        nb.fused_add_norm_forward(x4, r, 3, h_out=r, backend="reference")
    with pytest.raises(ValueError, match="dx_out"):
        nb.local_response_norm_backward(x4, x4, x4, x4, 3, dx_out=np.empty((1,)), backend="reference")
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_out_overlapping_only_a_copied_strided_input_is_computed_from_the_copy(backend, rng):
    """docs/api.md: a non-contiguous NumPy x is copied to C order first, so an out= over the same memory is
    written from the copy: the result is the one on a fresh x."""
    buf = rng.standard_normal(64).astype(np.float32)
    x = buf[::2].reshape(4, 8)  # strided: copied by the front
    want = nb.layer_norm_forward(x.copy(), 8, backend="reference")[0]
    if backend == "reference":  # it returns float64
        buf = buf.astype(np.float64)
        x = buf[::2].reshape(4, 8)
    y = nb.layer_norm_forward(x, 8, out=buf[:32].reshape(4, 8), backend=backend)[0]
    assert np.shares_memory(y, buf)
    np.testing.assert_allclose(y, want, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(want).max())


# ---------------------------------------------------------------------------------------------- no half-updated state
@pytest.mark.parametrize("variant", ["batch", "instance"])
def test_running_stats_untouched_after_any_error(variant, x4):
    """Every late check (output, backend, option, correction) fires before the running statistics are written."""
    fwd = nb.batch_norm_forward if variant == "batch" else nb.instance_norm_forward
    bad_calls = [dict(out=np.empty((1, 1))), dict(out=x4), dict(backend="tpu"), dict(variance="exact"),
                 dict(correction=99), dict(eps=-1.0), dict(momentum=2.0), dict(weight=np.ones(3)),
                 dict(bias=np.ones(4, np.float32)), dict(axis=3), dict(unknown=1)]
    for kw in bad_calls:
        rm, rv = np.full(4, 0.5), np.full(4, 2.0)
        w = kw.pop("weight", None)
        b = kw.pop("bias", None)
        with pytest.raises((ValueError, TypeError)):
            fwd(x4, w, b, rm, rv, **kw)
        np.testing.assert_array_equal(rm, 0.5, err_msg=str(kw))
        np.testing.assert_array_equal(rv, 2.0, err_msg=str(kw))


def test_running_stats_must_be_writable(x4):
    rm, rv = running()
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        nb.batch_norm_forward(x4, None, None, rm, rv)
    np.testing.assert_array_equal(rv, 1)


def test_empty_batch_leaves_running_stats(rng):
    for fwd in (nb.batch_norm_forward, nb.instance_norm_forward):
        rm, rv = np.full(3, 0.5), np.full(3, 2.0)
        y = fwd(np.empty((0, 3, 4)), None, None, rm, rv)[0]
        assert y.shape == (0, 3, 4)
        np.testing.assert_array_equal(rm, 0.5)
        np.testing.assert_array_equal(rv, 2.0)


# ---------------------------------------------------------------------------------------------- non-contiguous
def _noncontig(a):
    """The same values in a non-C-contiguous array (a strided view of a larger buffer)."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    view = big[..., ::2]
    view[...] = a
    assert not view.flags.c_contiguous or a.shape[-1] <= 1
    return view


CONTIG_CASES = [("batch_norm", (3, 4, 5), {"axis": 1}), ("batch_norm", (3, 4, 5), {"axis": -1}),
                ("layer_norm", (3, 4, 5), {"normalized_ndim": 2}), ("rms_norm", (6, 5), {}),
                ("group_norm", (2, 4, 5), {"num_groups": 2, "axis": -1}), ("instance_norm", (2, 4, 5), {}),
                ("frozen_batch_norm", (2, 4, 5), {}), ("local_response_norm", (2, 6, 3), {"size": 3}),
                ("fused_add_norm", (4, 6), {"norm": "layer"}), ("fused_add_norm", (4, 6), {"norm": "rms"})]


@pytest.mark.parametrize("variant,shape,params", CONTIG_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONTIG_CASES)])
def test_noncontiguous_inputs(variant, shape, params):
    spec = registry.VARIANTS[variant]
    for backend in backends(variant):
        inputs = spec.make_inputs(shape, np.float64, np.random.default_rng(0), **params)
        strided = {k: _noncontig(v) for k, v in inputs.items()}
        a = spec.run_forward(dict(inputs, **{k: (v.copy() if isinstance(v, np.ndarray) else v)
                                             for k, v in inputs.items()}), backend=backend)
        b = spec.run_forward(strided, backend=backend)
        dy = np.random.default_rng(1).standard_normal(a[0].shape)
        ga = spec.run_backward(inputs, a, dy, backend=backend)
        gb = spec.run_backward(strided, b, _noncontig(dy), backend=backend)
        for u, v in zip(tuple(a) + tuple(ga), tuple(b) + tuple(gb)):
            if isinstance(u, np.ndarray):
                np.testing.assert_allclose(v, u, rtol=1e-14, atol=1e-14, err_msg=f"{variant} {backend}")


# ---------------------------------------------------------------------------------------------- NaN isolation
@pytest.mark.parametrize("backend", backends("layer_norm"))
def test_nan_stays_in_its_row(backend, rng):
    x = rng.standard_normal((4, 8))
    x[1, 3] = np.nan
    w, b = np.ones(8), np.zeros(8)
    y, mean, rstd = nb.layer_norm_forward(x, 8, w, b, backend=backend)
    assert np.isnan(y[1]).all() and np.isfinite(np.delete(y, 1, axis=0)).all()
    dx, dw, db = nb.layer_norm_backward(np.ones_like(x), x, 8, mean, rstd, w, b, backend=backend)
    assert np.isfinite(np.delete(dx, 1, axis=0)).all()
    assert np.isnan(dw).any()  # a sum over rows carries it, as the math does
    y, rstd = nb.rms_norm_forward(x, 8, backend=backend if backend in backends("rms_norm") else "reference")
    assert np.isnan(y[1]).all() and np.isfinite(np.delete(y, 1, axis=0)).all()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_nan_stays_in_its_channel_or_group(rng):
    x = rng.standard_normal((3, 4, 5))
    x[0, 2, 1] = np.inf
    y = nb.batch_norm_forward(x, None, None, None, None, backend="reference")[0]
    assert np.isnan(y[:, 2]).all() and np.isfinite(np.delete(y, 2, axis=1)).all()
    dx = nb.batch_norm_backward(np.ones_like(x), x, None, None, *nb.batch_norm_forward(
        x, None, None, None, None, backend="reference")[1:], backend="reference")[0]
    assert np.isfinite(np.delete(dx, 2, axis=1)).all()
    y = nb.group_norm_forward(x, 2, backend="reference")[0]
    bad = np.zeros(y.shape, bool)
    bad[0, 2:4] = True
    assert np.isnan(y[bad]).all() and np.isfinite(y[~bad]).all()
    y = nb.instance_norm_forward(x, backend="reference")[0]
    assert np.isnan(y[0, 2]).all() and np.isfinite(np.delete(y.reshape(12, 5), 2, axis=0)).all()
    # LRN: the NaN reaches exactly the channels whose window contains channel 2, at that position
    x[0, 2, 1] = np.nan
    y = nb.local_response_norm_forward(x, 2, alpha=1.0, backend="reference")[0]  # window [c-1, c]
    bad = np.zeros(y.shape, bool)
    bad[0, 2:4, 1] = True
    assert np.isnan(y[bad]).all() and np.isfinite(y[~bad]).all()


def _zero_variance_cases(rng):
    """(name, forward, backward, extra args, kw, x, mask of the zero-variance unit): a constant row, a zero RMS row,
    a constant channel and a constant group, in both layouts."""
    x = rng.standard_normal((3, 4, 5))
    row = x.copy()
    row[1, 2] = 2.5
    zero = x.copy()
    zero[1, 2] = 0.0
    chan = x.copy()
    chan[:, 1] = -1.5
    grp = x.copy()
    grp[2, 2:4] = 0.75
    unit = {"row": np.zeros(x.shape, bool), "chan": np.zeros(x.shape, bool), "grp": np.zeros(x.shape, bool)}
    unit["row"][1, 2], unit["chan"][:, 1], unit["grp"][2, 2:4] = True, True, True
    last = lambda a: np.moveaxis(a, 1, -1).copy()  # noqa: E731
    return [("layer", nb.layer_norm_forward, nb.layer_norm_backward, (5,), {}, row, unit["row"]),
            ("rms", nb.rms_norm_forward, nb.rms_norm_backward, (5,), {}, zero, unit["row"]),
            ("batch", nb.batch_norm_forward, nb.batch_norm_backward, (None, None), {}, chan, unit["chan"]),
            ("batch_cl", nb.batch_norm_forward, nb.batch_norm_backward, (None, None), {"axis": -1}, last(chan),
             last(unit["chan"])),
            ("group", nb.group_norm_forward, nb.group_norm_backward, (2,), {}, grp, unit["grp"]),
            ("group_cl", nb.group_norm_forward, nb.group_norm_backward, (2,), {"axis": -1}, last(grp),
             last(unit["grp"]))]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("placement", ["inside", "outside"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_eps_zero_on_zero_variance_is_nan_in_that_unit_only(backend, placement, rng):
    """eps = 0 on a zero-variance row, channel or group: rstd = inf, the forward is 0 * inf = NaN there, and so is
    every value of that unit's input gradient (the CPU channel kernels returned +-inf with eps outside, the
    reference and the row kernels a mix of NaN and +-inf); every other unit stays finite and exact."""
    for name, fwd, bwd, args, kw, x, unit in _zero_variance_cases(rng):
        dy = rng.standard_normal(x.shape)
        opts = dict(kw, eps=0.0, eps_placement=placement)
        if name.startswith("batch"):
            y, mean, rstd = fwd(x, *args, None, None, backend=backend, **opts)
            dx = bwd(dy, x, *args, mean, rstd, backend=backend, **opts)[0]
            ref = bwd(dy, x, *args, mean, rstd, backend="reference", **opts)[0]
        elif name == "rms":
            y, rstd = fwd(x, *args, backend=backend, **opts)
            dx = bwd(dy, x, *args, rstd, backend=backend, **opts)[0]
            ref = bwd(dy, x, *args, rstd, backend="reference", **opts)[0]
        else:
            y, mean, rstd = fwd(x, *args, backend=backend, **opts)
            dx = bwd(dy, x, *args, mean, rstd, backend=backend, **opts)[0]
            ref = bwd(dy, x, *args, mean, rstd, backend="reference", **opts)[0]
        for out, what in ((y, "y"), (dx, "dx")):
            assert np.isnan(out[unit]).all(), (name, what, out[unit])
            assert np.isfinite(out[~unit]).all(), (name, what)
        np.testing.assert_allclose(dx[~unit], ref[~unit], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("variant", ["batch_norm", "instance_norm"])
def test_strided_running_stats_are_updated_in_place(variant, rng):
    """Running statistics are the caller's buffers: a strided view is updated in place, like a contiguous one."""
    fwd = getattr(nb, f"{variant}_forward")
    x = rng.standard_normal((4, 3, 5))
    for backend in backends(variant):
        big_m, big_v = np.zeros(6), np.ones(6)
        fwd(x, None, None, big_m[::2], big_v[::2], momentum=0.5, backend=backend)
        rm, rv = np.zeros(3), np.ones(3)
        fwd(x, None, None, rm, rv, momentum=0.5, backend=backend)
        np.testing.assert_allclose(big_m[::2], rm, rtol=1e-15, atol=1e-15, err_msg=backend)
        np.testing.assert_allclose(big_v[::2], rv, rtol=1e-15, err_msg=backend)
        assert not big_m[1::2].any() and (big_v[1::2] == 1).all()  # the gaps are untouched
        assert np.abs(rm).max() > 0


# ---------------------------------------------------------------------------------------------- division by zero
def _same(a, b, what):
    assert len(a) == len(b), what
    for u, v in zip(a, b):
        assert isinstance(u, np.ndarray) == isinstance(v, np.ndarray), what  # None where the other has an array
        if isinstance(u, np.ndarray):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=what)


def _ieee_cases():
    """(name, call(backend)) whose statistics divide by zero: eps=0 on a constant row/channel/group/window, rstd = 0
    with eps outside the root (an Inf in an RMS row; eps=inf), LRN with k=0 on an all-zero window."""
    x = np.array([[1., 2., 3., 4.], [5., 5., 5., 5.]])
    xi = np.ones((2, 4))
    xi[0, 1] = np.inf
    xc = np.stack([np.arange(6.), np.full(6, 3.)], axis=1)  # (6, 2): channel 1 constant
    g = np.ones_like

    def ln(b):
        y, m, r = nb.layer_norm_forward(x, 4, eps=0.0, backend=b)
        return (y, m, r) + nb.layer_norm_backward(g(x), x, 4, m, r, eps=0.0, backend=b)

    def rms(b):
        y, r = nb.rms_norm_forward(np.zeros((2, 4)), 4, eps=0.0, backend=b)
        yi, ri = nb.rms_norm_forward(xi, 4, eps_placement="outside", backend=b)
        return (y, r, yi, ri) + nb.rms_norm_backward(g(xi), xi, 4, ri, eps_placement="outside", backend=b)

    def bn(b):
        y, m, r = nb.batch_norm_forward(xc, None, None, None, None, eps=0.0, backend=b)
        yo, mo, ro = nb.batch_norm_forward(xc, None, None, None, None, eps=np.inf, eps_placement="outside",
                                           backend=b)
        return (y, m, r, yo) + nb.batch_norm_backward(g(xc), xc, None, None, m, r, eps=0.0, backend=b) + \
            nb.batch_norm_backward(g(xc), xc, None, None, mo, ro, eps=np.inf, eps_placement="outside", backend=b)

    def gn(b):
        x3 = xc.T.reshape(1, 4, 3)  # groups of two channels: the second group constant
        y, m, r = nb.group_norm_forward(x3, 2, eps=0.0, backend=b)
        return (y, m, r) + nb.group_norm_backward(g(x3), x3, 2, m, r, eps=0.0, backend=b)

    def lrn(b):
        z = np.zeros((1, 3, 2))
        out = ()
        for beta in (0.75, 0.5, 1.0, 0.3):
            y, s = nb.local_response_norm_forward(z, 3, k=0.0, beta=beta, backend=b)
            out += (y, s) + (nb.local_response_norm_backward(g(z), z, y, s, 3, k=0.0, beta=beta, backend=b),)
        return out

    return {"layer": ln, "rms": rms, "batch": bn, "group": gn, "lrn": lrn}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", sorted(_ieee_cases()))
def test_division_by_zero_gives_ieee_values(case):
    """A zero variance with eps=0 (or rstd = 0) is valid input: inf/NaN where the reference has them, no
    exception (Numba's default error model raised ZeroDivisionError half-way through writing the outputs)."""
    call = _ieee_cases()[case]
    ref = call("reference")
    assert any(np.isnan(a).any() or np.isinf(a).any() for a in ref if isinstance(a, np.ndarray))
    _same(call("cpu"), ref, case)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_out_complete_when_a_row_divides_by_zero():
    x = np.array([[1., 2., 3., 4.], [5., 5., 5., 5.]])
    out = np.full((2, 4), -7.0)
    nb.layer_norm_forward(x, 4, eps=0.0, out=out, backend="cpu")
    np.testing.assert_array_equal(out, nb.layer_norm_forward(x, 4, eps=0.0, backend="reference")[0])


# ---------------------------------------------------------------------------------------------- saved statistics
@pytest.mark.parametrize("backend", backends("layer_norm"))
def test_dx_out_must_not_overlap_saved_stats(backend, rng):
    """The saved statistics are inputs of the backward: a dx_out over their memory is rejected."""
    x = rng.standard_normal((4, 8))
    dy = rng.standard_normal((4, 8))

    def over(stat):
        buf = np.empty(32)
        buf[:stat.size] = stat.ravel()
        return buf[:stat.size].reshape(stat.shape), buf.reshape(4, 8)

    y, mean, rstd = nb.layer_norm_forward(x, 8, backend=backend)
    for name, args in (("mean", lambda s: (s, rstd)), ("rstd", lambda s: (mean, s))):
        s, dx_out = over(mean if name == "mean" else rstd)
        with pytest.raises(ValueError, match=f"dx_out shares memory with {name}"):
            nb.layer_norm_backward(dy, x, 8, *args(s), dx_out=dx_out, backend=backend)
    s, dx_out = over(nb.rms_norm_forward(x, 8, backend=backend)[1])
    with pytest.raises(ValueError, match="dx_out shares memory with rstd"):
        nb.rms_norm_backward(dy, x, 8, s, dx_out=dx_out, backend=backend)
    h = x + x
    _, _, m, r = nb.fused_add_norm_forward(x, x, 8, backend=backend)
    s, dx_out = over(m)
    with pytest.raises(ValueError, match="dx_out shares memory with mean"):
        nb.fused_add_norm_backward(dy, h, 8, s, r, dx_out=dx_out, backend=backend)
    x3 = x.reshape(4, 2, 4)
    _, m, r = nb.group_norm_forward(x3, 2, backend=backend)
    s, dx_out = over(r)
    with pytest.raises(ValueError, match="dx_out shares memory with rstd"):
        nb.group_norm_backward(dy.reshape(x3.shape), x3, 2, m, s, dx_out=dx_out.reshape(x3.shape), backend=backend)
    _, m, r = nb.instance_norm_forward(x3, backend=backend)
    s, dx_out = over(m)
    with pytest.raises(ValueError, match="dx_out shares memory with mean"):
        nb.instance_norm_backward(dy.reshape(x3.shape), x3, s, r, dx_out=dx_out.reshape(x3.shape), backend=backend)
    _, m, r = nb.batch_norm_forward(x, None, None, None, None, backend=backend)
    s, dx_out = over(r)
    with pytest.raises(ValueError, match="dx_out shares memory with save_invstd"):
        nb.batch_norm_backward(dy, x, None, None, m, s, dx_out=dx_out, backend=backend)


@pytest.mark.parametrize("backend", backends("batch_norm"))
def test_evaluation_reads_read_only_running_stats(backend, rng):
    """Evaluation only reads the running statistics: read-only buffers are accepted (training rejects them)."""
    x = rng.standard_normal((3, 4, 5))
    rm, rv = rng.standard_normal(4), 0.5 + rng.random(4)
    ro_m, ro_v = rm.copy(), rv.copy()
    ro_m.flags.writeable = False
    ro_v.flags.writeable = False
    y = nb.batch_norm_forward(x, None, None, ro_m, ro_v, training=False, backend=backend)[0]
    _same((y,), (nb.batch_norm_forward(x, None, None, rm, rv, training=False, backend=backend)[0],), "batch")
    y = nb.instance_norm_forward(x, None, None, ro_m, ro_v, use_input_stats=False, backend=backend)[0]
    _same((y,), (nb.instance_norm_forward(x, None, None, rm, rv, use_input_stats=False, backend=backend)[0],),
          "instance")
    with pytest.raises(ValueError, match="running_mean is read-only"):
        nb.instance_norm_forward(x, None, None, ro_m, ro_v, backend=backend)


# ---------------------------------------------------------------------------------------------- argument types
@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("backend", backends("batch_norm"))
def test_strings_booleans_and_floats_are_not_numbers_here(backend, x4):
    """float() accepts "1e-5" and True, and 1.0 == 1: each of these is still a wrong type for its argument."""
    rm, rv = running()
    for kw, name in ((dict(eps="1e-5"), "eps"), (dict(eps=True), "eps"), (dict(momentum="0.1"), "momentum"),
                     (dict(momentum=False), "momentum")):
        with pytest.raises(TypeError, match=name):
            nb.batch_norm_forward(x4, None, None, rm, rv, backend=backend, **kw)
    for axis in (1.0, True, "1"):
        with pytest.raises(TypeError, match=f"axis={axis!r}"):
            nb.batch_norm_forward(x4, None, None, rm, rv, axis=axis, backend=backend)
    for name, kw in (("num_groups", dict(num_groups=2.0)), ("size", dict(size=True))):
        with pytest.raises(TypeError, match=name):
            (nb.group_norm_forward if name == "num_groups" else nb.local_response_norm_forward)(x4, backend=backend,
                                                                                              **kw)
    np.testing.assert_array_equal(rm, 0)
    for ns in ("43", (3.0,), (True,), 3.0):
        with pytest.raises(TypeError, match="normalized_shape"):
            nb.layer_norm_forward(x4, ns, backend=backend)
    np.testing.assert_array_equal(nb.layer_norm_forward(x4, (np.int64(3),), backend=backend)[0],
                                  nb.layer_norm_forward(x4, 3, backend=backend)[0])
    with pytest.raises(TypeError, match="plain NumPy array"):
        nb.layer_norm_forward(np.asmatrix(x4[0]), 3, backend=backend)
    with pytest.raises(TypeError, match="plain NumPy array"):
        nb.layer_norm_forward(np.ma.masked_array(x4, mask=x4 > 0), 3, backend=backend)
    stats = nb.PopulationStats(4).update(x4, backend=backend)
    for c in (1.5, True):
        with pytest.raises(TypeError, match="correction"):
            stats.var(c)
    np.testing.assert_allclose(stats.var(np.int64(1)), x4.transpose(1, 0, 2).reshape(4, -1).var(axis=1, ddof=1))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mode_flags_are_booleans(backend, x4):
    """training / use_input_stats taken by truth value: "False" trained and updated the running statistics,
    None ran evaluation. PyTorch rejects both (must be bool); so does normbench, before anything is written."""
    rm, rv = running()
    dy = np.ones_like(x4)
    y, m, s = nb.batch_norm_forward(x4, None, None, rm.copy(), rv.copy(), backend=backend)
    for bad in ("False", None, 0, 1.0, np.array([True])):
        with pytest.raises(TypeError, match="training"):
            nb.batch_norm_forward(x4, None, None, rm, rv, training=bad, backend=backend)
        with pytest.raises(TypeError, match="training"):
            nb.batch_norm_backward(dy, x4, None, None, m, s, training=bad, backend=backend)
        with pytest.raises(TypeError, match="use_input_stats"):
            nb.instance_norm_forward(x4, None, None, rm, rv, use_input_stats=bad, backend=backend)
        with pytest.raises(TypeError, match="use_input_stats"):
            nb.instance_norm_backward(dy, x4, np.zeros((2, 4)), np.ones((2, 4)), use_input_stats=bad,
                                      backend=backend)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    # NumPy booleans are booleans: the same results as Python's
    np.testing.assert_array_equal(nb.batch_norm_forward(x4, None, None, rm.copy(), rv.copy(), training=np.True_,
                                                        backend=backend)[0], y)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_running_statistics_overlapping_an_input_are_errors(backend, x4):
    """Running statistics are written in place: aliasing weight, bias, x or each other made the result depend
    on each backend's order of writes and reads (the reference normalised with the updated weight; the buffer
    shared by mean and var ended as a mix on reference and cpu, as the variance on cuda). Rejected before any
    write, in training; evaluation only reads them, so sharing is harmless there."""
    w = np.ones(4)
    rv = np.ones(4)
    both = np.zeros(8)
    cases = [(dict(weight=w, running_mean=w, running_var=rv), "running_mean shares memory with weight"),
             (dict(bias=w, running_mean=np.zeros(4), running_var=w), "running_var shares memory with bias"),
             (dict(running_mean=both[:4], running_var=both[:4]), "running_mean shares memory with running_var"),
             (dict(running_mean=both[::2], running_var=both[1::2]), None)]  # interleaved, disjoint: accepted
    for kw, message in cases:
        kw = dict(dict(weight=None, bias=None), **kw)
        before = {k: v.copy() for k, v in kw.items() if v is not None}
        for call in (nb.batch_norm_forward, nb.instance_norm_forward):
            if message is None:
                call(x4.copy(), **kw, backend=backend)
                kw["running_mean"][:], kw["running_var"][:] = 0, 1
                continue
            with pytest.raises(ValueError, match=message):
                call(x4, **kw, backend=backend)
            for k, v in before.items():
                np.testing.assert_array_equal(kw[k], v)
    flat = x4.reshape(-1)[:4]  # a view of x as a running buffer
    with pytest.raises(ValueError, match="running_mean shares memory with x"):
        nb.batch_norm_forward(x4, None, None, flat, rv, backend=backend)
    y, _, _ = nb.batch_norm_forward(x4, w, None, w, np.ones(4), training=False, backend=backend)  # read-only use
    np.testing.assert_allclose(y, nb.batch_norm_forward(x4, np.ones(4), None, np.ones(4), np.ones(4),
                                                        training=False, backend="reference")[0])


# ---------------------------------------------------------------------------------------------- every variant
# The generic rules of docs/adding-a-variant.md, step 1, checked for every variant in registry.VARIANTS through
# the registry's make_inputs / run_forward / run_backward, so that a new variant is checked without an edit here.
EVERY_HOST_BACKEND = [(v, b) for v in registry.VARIANTS for b in backends(v)]
_SMALL = (2, 4, 3)  # a logical shape every variant takes: rows of 3 values, or N=2, C=4 (4 groups), 3 positions


def _fresh(inputs):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}


@pytest.mark.parametrize("variant,backend", EVERY_HOST_BACKEND)
def test_every_front_rejects_a_device_output_on_a_host_backend(variant, backend, rng):
    spec = registry.VARIANTS[variant]
    inputs = spec.make_inputs(_SMALL, np.dtype(np.float32), rng)
    fake = DeviceLike(inputs["x"])
    with pytest.raises(TypeError, match="out is a CUDA device array"):
        spec.run_forward(_fresh(inputs), backend=backend, out=fake)
    out = spec.run_forward(_fresh(inputs), backend=backend)
    dy = rng.standard_normal(inputs["x"].shape).astype(np.float32)
    with pytest.raises(TypeError, match="dx_out is a CUDA device array"):
        spec.run_backward(_fresh(inputs), out, dy, backend=backend, dx_out=fake)


@pytest.mark.parametrize("variant,backend", EVERY_HOST_BACKEND)
def test_every_front_rejects_integer_x_naming_it(variant, backend, rng):
    spec = registry.VARIANTS[variant]
    inputs = spec.make_inputs(_SMALL, np.dtype(np.float64), rng)
    inputs["x"] = np.ones(inputs["x"].shape, np.int64)
    with pytest.raises((TypeError, ValueError), match=r"\bx\b"):
        spec.run_forward(inputs, backend=backend)


@pytest.mark.parametrize("variant,backend", EVERY_HOST_BACKEND)
def test_every_front_saves_float64_statistics_and_takes_an_empty_batch(variant, backend, rng):
    from normbench.accuracy import oracle

    spec = registry.VARIANTS[variant]
    for shape in (_SMALL, (0,) + _SMALL[1:]):
        inputs = spec.make_inputs(shape, np.dtype(np.float32), rng)
        x = inputs["x"]
        out = spec.run_forward(_fresh(inputs), backend=backend)
        assert out[0].shape == x.shape
        for name, o in zip(oracle.FORWARD_NAMES[variant], out):
            if name in ("mean", "rstd") and o is not None:
                assert o.dtype == np.float64, f"{variant} {name}: {o.dtype}"
        dy = np.ones(x.shape, np.float32)
        assert spec.run_backward(_fresh(inputs), out, dy, backend=backend)[0].shape == x.shape
