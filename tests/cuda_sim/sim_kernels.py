"""The CUDA kernels against the float64 reference, in the CUDA simulator.

Run by tests/test_cuda_sim.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the variable must be set before
numba is first imported, and the main test process keeps the real numba.cuda for the PTX test).  By hand:
``NUMBA_ENABLE_CUDASIM=1 .venv/bin/python -m pytest tests/cuda_sim/sim_kernels.py``; on a GPU machine
``NORMBENCH_CUDA_REAL=1 .venv/bin/python -m pytest tests/cuda_sim/sim_kernels.py`` runs the same checks on the
hardware (warp-shuffle paths included).  The file name does not
match ``test_*.py`` so that the main run never collects it.

Launch parameters are shrunk (4 threads per block, 2 channels per tile, 5 values per split, grids of at most
3 blocks) so that tiny inputs exercise several threads per row, several row iterations per block, several
blocks per channel and grid-stride loops: the simulator costs milliseconds per simulated thread.
"""
import os

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
if not SIMULATOR and os.environ.get("NORMBENCH_CUDA_REAL", "0") in ("", "0"):
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 before numba is imported (tests/test_cuda_sim.py runs this file), "
                "or NORMBENCH_CUDA_REAL=1 on a GPU machine", allow_module_level=True)

from numba import cuda  # noqa: E402

import normbench as nb  # noqa: E402
from normbench import registry  # noqa: E402
from normbench.cuda import config  # noqa: E402
from normbench.population import PopulationStats  # noqa: E402

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


@pytest.fixture(autouse=True)
def tiny_launches(monkeypatch):
    # a GPU needs whole warps (the row reductions shuffle): 32 threads there, 4 in the simulator
    for name, value in dict(THREADS_PER_BLOCK=4 if SIMULATOR else 32, CHANNEL_TILE=2, SPLIT_ELEMENTS=5, MAX_GRID=3,
                            BACKWARD_ROW_BLOCKS=2, MIN_REDUCTION_BLOCKS=2, ELEMENTWISE_ITEMS=2).items():
        monkeypatch.setattr(config, name, value)


def tol(dtype, accumulate=None):
    """Relative tolerance of a kernel against the reference (errors scaled by the reference's max magnitude)."""
    if np.dtype(dtype) == F32 or accumulate == "float32":
        return 2e-5
    return 1e-12


def close(name, got, want, rtol):
    if want is None:
        assert got is None, f"{name}: expected None"
        return
    assert got is not None, f"{name}: got None"
    got = got.copy_to_host() if hasattr(got, "copy_to_host") else got
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    same_nan = np.isnan(got) == np.isnan(want)
    assert same_nan.all(), f"{name}: NaN pattern differs"
    scale = max(np.nanmax(np.abs(want)) if want.size and not np.isnan(want).all() else 0.0, 1e-300)
    err = np.nanmax(np.abs(got - want)) / scale if want.size and not np.isnan(want).all() else 0.0
    assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol:.3g}"


def copy_inputs(inputs):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}


def check_variant(name, shape, dtype, params=(), **numerics):
    """Forward (outputs, saved statistics, running statistics) and backward of backend "cuda" vs the reference."""
    spec = registry.VARIANTS[name]
    rng = np.random.default_rng(abs(hash((name, shape))) % 2**32)
    inputs = spec.make_inputs(shape, dtype, rng, **dict(params))
    ref_inputs = copy_inputs(inputs)
    got = spec.run_forward(inputs, backend="cuda", **numerics)
    want = spec.run_forward(ref_inputs, backend="reference", **numerics)
    rtol = tol(dtype, numerics.get("accumulate"))
    for i, (g, w) in enumerate(zip(got, want)):
        close(f"{name} forward output {i}", g, w, rtol)
    for k in ("running_mean", "running_var"):
        if inputs.get(k) is not None:
            close(f"{name} {k}", inputs[k], ref_inputs[k], rtol)
    for i, g in enumerate(got[:1]):
        assert g.dtype == np.dtype(dtype)
    dy = rng.standard_normal(inputs["x"].shape).astype(dtype)
    # both backwards get the reference's forward outputs, so they are judged on identical saved statistics
    gb = spec.run_backward(inputs, want, dy, backend="cuda", **numerics)
    wb = spec.run_backward(ref_inputs, want, dy, backend="reference", **numerics)
    for i, (g, w) in enumerate(zip(gb, wb)):
        close(f"{name} backward output {i}", g, w, rtol)


CASES = [
    # (variant, logical shape (N, C, *spatial) or rows, make_inputs params)
    ("batch_norm", (3, 4, 5), dict(axis=1)),
    ("batch_norm", (3, 4, 5), dict(axis=-1)),
    ("batch_norm", (2, 3, 2, 3), dict(axis=-1)),
    ("batch_norm", (7, 3), dict(axis=1)),  # 2-D: one value per sample, C apart
    ("batch_norm", (1, 3, 7), dict(axis=1)),  # N = 1
    ("batch_norm", (3, 4, 5), dict(axis=1, training=False)),
    ("batch_norm", (2, 3, 5), dict(axis=-1, training=False, affine=False)),
    ("batch_norm", (3, 2, 5), dict(axis=-1, affine=False)),
    ("layer_norm", (3, 11), {}),
    ("layer_norm", (1, 13), {}),
    ("layer_norm", (5, 7), dict(affine=False)),  # 5 rows on a grid of 3 blocks
    ("layer_norm", (2, 3, 5), dict(normalized_ndim=2)),
    ("layer_norm", (4, 3), {}),  # a row shorter than the block: 3 threads per block
    ("layer_norm", (3, 67), {}),  # > 4 threads x ROW_PARTIALS columns: partials in global memory
    ("rms_norm", (3, 9), {}),
    ("rms_norm", (1, 6), dict(affine=False)),
    ("rms_norm", (2, 2, 5), dict(normalized_ndim=2)),
    ("group_norm", (2, 4, 5), dict(num_groups=2, axis=1)),
    ("group_norm", (2, 4, 5), dict(num_groups=2, axis=-1)),
    ("group_norm", (1, 6, 3), dict(num_groups=3, axis=1, affine=False)),
    ("group_norm", (2, 3, 7), dict(num_groups=1, axis=-1)),
    ("instance_norm", (2, 3, 5), dict(axis=1, running=True)),
    ("instance_norm", (2, 3, 5), dict(axis=-1, running=True)),
    ("instance_norm", (1, 2, 7), dict(axis=-1, affine=False)),
    ("frozen_batch_norm", (2, 3, 5), dict(axis=1)),
    ("frozen_batch_norm", (2, 3, 5), dict(axis=-1)),
    ("local_response_norm", (2, 5, 3), dict(size=3)),
    ("local_response_norm", (1, 4, 2, 3), dict(size=2)),
    ("local_response_norm", (2, 3, 4), dict(size=5)),  # window wider than C
    ("fused_add_norm", (3, 9), dict(norm="layer")),
    ("fused_add_norm", (3, 9), dict(norm="rms", alpha=0.5)),
    ("fused_add_norm", (1, 7), dict(norm="layer", affine=False, alpha=2.0)),
]


def test_every_variant_has_a_cuda_backend():
    assert all("cuda" in registry.available_backends(v) for v in registry.VARIANTS)
    assert {c[0] for c in CASES} == set(registry.VARIANTS)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,shape,params", CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_variant_matches_reference(name, shape, params, dtype):
    check_variant(name, shape, dtype, params)


def _pairwise():
    """12 option combinations covering every pair of values of the four numerics options."""
    variances = ("two_pass", "welford", "naive", "shifted")
    accs = (None, "float32", "float64")
    for v in range(4):
        for a in range(3):
            yield dict(variance=variances[v], accumulate=accs[a], eps_placement=("inside", "outside")[(v + a) % 2],
                       correction=(v // 2 + a) % 2)


PAIRWISE = list(_pairwise())
NUMERIC_CASES = [("layer_norm", (3, 11), {}), ("rms_norm", (2, 9), {}), ("batch_norm", (3, 5, 2), dict(axis=-1)),
                 ("group_norm", (2, 4, 3), dict(num_groups=2, axis=1)),
                 ("fused_add_norm", (2, 6), dict(norm="layer")), ("instance_norm", (2, 2, 3), dict(axis=-1))]
# (LRN takes no numerics options: its defaults run in the variant tests)


@pytest.mark.parametrize("i", range(len(PAIRWISE)), ids=[
    "-".join(str(v) for v in p.values()) for p in PAIRWISE])
@pytest.mark.parametrize("name,shape,params", NUMERIC_CASES, ids=[c[0] for c in NUMERIC_CASES])
def test_numerics_options_pairwise(name, shape, params, i):
    dtype = (F32, F64)[i % 2]
    check_variant(name, shape, dtype, params, **PAIRWISE[i])


def test_device_arrays_stay_on_device_and_running_stats_update_in_place():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    w, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    xd, rmd, rvd = cuda.to_device(x), cuda.to_device(rm), cuda.to_device(rv)
    y, mean, rstd = nb.batch_norm_forward(xd, cuda.to_device(w), cuda.to_device(b), rmd, rvd)  # backend=None
    assert all(hasattr(a, "copy_to_host") for a in (y, mean, rstd))
    ry, rmean, rrstd = nb.batch_norm_forward(x, w, b, rm, rv, backend="reference")
    close("y", y, ry, 2e-5)
    close("save_mean", mean, rmean, 1e-12)
    close("running_mean (device, in place)", rmd, rm, 1e-6)
    close("running_var (device, in place)", rvd, rv, 1e-6)
    dyd = cuda.to_device(rng.standard_normal(x.shape).astype(np.float32))
    dx, dw, db = nb.batch_norm_backward(dyd, xd, cuda.to_device(w), cuda.to_device(b), mean, rstd)
    assert all(hasattr(a, "copy_to_host") for a in (dx, dw, db))
    want = nb.batch_norm_backward(dyd.copy_to_host(), x, w, b, rmean, rrstd, backend="reference")
    for n, g, r in zip(("dx", "dweight", "dbias"), (dx, dw, db), want):
        close(n, g, r, 2e-5)
    yl, ml, rl = nb.layer_norm_forward(xd, (4, 5))
    assert hasattr(yl, "copy_to_host") and ml.shape == (3,)
    close("layer y", yl, nb.layer_norm_forward(x, (4, 5), backend="reference")[0], 2e-5)


def test_out_arrays_numpy_and_device():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6))
    out = np.empty_like(x)
    y, _, _ = nb.layer_norm_forward(x, 6, out=out, backend="cuda")
    assert y is out
    close("out", out, nb.layer_norm_forward(x, 6, backend="reference")[0], 1e-12)
    outd = cuda.device_array(x.shape)
    y, rstd = nb.rms_norm_forward(cuda.to_device(x), 6, out=outd)
    assert y is outd
    close("device out", outd, nb.rms_norm_forward(x, 6, backend="reference")[0], 1e-12)
    dx_out = np.empty((2, 3, 4))
    xb = rng.standard_normal((2, 3, 4))
    fwd = nb.group_norm_forward(xb, 3, backend="reference")
    dy = rng.standard_normal(xb.shape)
    dx = nb.group_norm_backward(dy, xb, 3, fwd[1], fwd[2], dx_out=dx_out, backend="cuda")[0]
    assert dx is dx_out
    close("dx_out", dx_out, nb.group_norm_backward(dy, xb, 3, fwd[1], fwd[2], backend="reference")[0], 1e-12)


def test_fused_backward_with_dh():
    rng = np.random.default_rng(2)
    x, res, dy, dh = (rng.standard_normal((3, 7)) for _ in range(4))
    w = rng.standard_normal(7)
    for norm, bias in (("layer", rng.standard_normal(7)), ("rms", None)):
        fwd = nb.fused_add_norm_forward(x, res, 7, w, bias, alpha=0.7, norm=norm, backend="reference")
        got = nb.fused_add_norm_backward(dy, fwd[1], 7, fwd[2], fwd[3], w, bias, alpha=0.7, norm=norm, dh=dh,
                                         backend="cuda")
        want = nb.fused_add_norm_backward(dy, fwd[1], 7, fwd[2], fwd[3], w, bias, alpha=0.7, norm=norm, dh=dh,
                                          backend="reference")
        for i, (g, r) in enumerate(zip(got, want)):
            close(f"{norm} grad {i}", g, r, 1e-12)


def test_fused_forward_normalises_the_unrounded_sum():
    """y = Norm(x + alpha * residual) of the unrounded sum, as the reference and the CPU backend (docs/cpu-rowwise.md):
    on rows offset by 1e4 the stored float32 h is off by up to half its ulp (5e-4), which normalising the stored
    h carried into y (2.6e3 float32 units of max|y| on an H100; the accuracy sweep's offset1e6 rows: 1.7e5)."""
    rng = np.random.default_rng(31)
    x = (1e4 + rng.standard_normal((3, 40))).astype(np.float32)
    res = rng.standard_normal((3, 40)).astype(np.float32)
    y, h, mean, rstd = nb.fused_add_norm_forward(x, res, 40, alpha=0.7, backend="cuda")
    yr, hr, mr, rr = nb.fused_add_norm_forward(x, res, 40, alpha=0.7, backend="reference")
    close("h", h, hr.astype(np.float32), 1e-7)  # the returned h: the sum rounded once
    close("y", y, yr, 4 * np.finfo(np.float32).eps)  # float64 sums: a few float32 units of the exact result
    close("mean", mean, mr, 1e-12)
    close("rstd", rstd, rr, 1e-12)


@pytest.mark.parametrize("variance", ["shifted", "welford", "two_pass", "naive"])
def test_infinite_values_give_the_ieee_mean(variance):
    """A row or channel holding +Inf (also as the shifted sums' first value) has mean +Inf, one holding -Inf has
    -Inf, one holding both NaN, as the reference's sums; Chan's merge of partial moments, and Welford's update
    after an Inf, made them NaN.  Each thread sees several values (the Inf, then finite ones)."""
    rng = np.random.default_rng(41)
    x = rng.standard_normal((6, 3, 40)).astype(np.float32)
    x[0, 1, 0], x[4, 1, 9] = np.inf, np.inf
    x[2, 2, 3] = -np.inf
    x[1, 0, 0], x[5, 0, 2] = np.inf, -np.inf
    with np.errstate(invalid="ignore"):
        for fn, args in ((nb.batch_norm_forward, (None, None, None, None)), (nb.layer_norm_forward, ((3, 40),))):
            got = fn(x, *args, backend="cuda", variance=variance)[1]
            want = fn(x, *args, backend="reference")[1]
            got = got.copy_to_host() if hasattr(got, "copy_to_host") else got
            np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)])
            assert np.isfinite(got[np.isfinite(want)]).all()


@pytest.mark.parametrize("scale, eps", [(1e110, 1e-5), (1e-110, 0.0)])
def test_backward_of_data_at_extreme_scales(scale, eps):
    """float64 data whose std is 1e110 (or 1e-110 with eps = 0): the backward's variance term took rstd^3,
    which underflows to 0 (overflows to Inf) there; against the reference (extended precision)."""
    rng = np.random.default_rng(43)
    x = rng.standard_normal((4, 3, 10)) * scale
    dy = rng.standard_normal(x.shape)
    for axis in (1, -1):
        for fwd, bwd, args in ((nb.layer_norm_forward, nb.layer_norm_backward, (10,)),
                               (nb.batch_norm_forward, nb.batch_norm_backward, (None, None, None, None))):
            kw = dict(eps=eps) if fwd is nb.layer_norm_forward else dict(eps=eps, axis=axis)
            f = fwd(x, *args, backend="reference", **kw)
            bargs = (args[:1] + f[1:]) if fwd is nb.layer_norm_forward else (None, None, *f[1:])
            for name, got, want in (("y", fwd(x, *args, backend="cuda", **kw)[0], f[0]),
                                    ("dx", bwd(dy, x, *bargs, backend="cuda", **kw)[0],
                                     bwd(dy, x, *bargs, backend="reference", **kw)[0])):
                got = got.copy_to_host() if hasattr(got, "copy_to_host") else got
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=0, err_msg=f"{fwd.__name__} {name}")


def test_an_outlier_first_value_is_not_the_shift():
    """float64 rows and channels whose first value is an outlier (1e5): the shifted sums' shift was the segment's
    first value, which float64 cannot absorb (cpu/_moments.shift3); now the middle of its first, middle and
    last values, as on the CPU."""
    rng = np.random.default_rng(44)
    x = rng.standard_normal((12, 3, 20))
    x[0, :, 0] = 1e5
    x[:, 0, 0] = 1e5
    for axis in (1, -1):
        xx = x if axis == 1 else np.moveaxis(x, 1, -1).copy()
        for fn, args in ((nb.layer_norm_forward, (xx.shape[-1],)), (nb.batch_norm_forward, (None, None, None, None))):
            kw = {} if fn is nb.layer_norm_forward else dict(axis=axis)
            got = fn(xx, *args, backend="cuda", **kw)[0]
            got = got.copy_to_host() if hasattr(got, "copy_to_host") else got
            want = fn(xx, *args, backend="reference", **kw)[0]
            assert np.abs(got - want).max() <= 8 * np.finfo(np.float64).eps * np.abs(want).max(), (fn.__name__, axis)


def test_constant_rows_with_eps_outside_give_the_documented_limit():
    x = np.ones((2, 3, 5))  # variance exactly 0 in every row and channel
    dy = np.random.default_rng(3).standard_normal(x.shape)
    for fwd, bwd, args in ((nb.layer_norm_forward, nb.layer_norm_backward, (5,)),
                           (nb.group_norm_forward, nb.group_norm_backward, (3,))):
        f_ref = fwd(x, *args, eps_placement="outside", eps=1e-3, backend="reference")
        f_cuda = fwd(x, *args, eps_placement="outside", eps=1e-3, backend="cuda")
        close("y", f_cuda[0], f_ref[0], 1e-12)
        g_cuda = bwd(dy, x, *args, f_ref[1], f_ref[2], eps_placement="outside", eps=1e-3, backend="cuda")
        g_ref = bwd(dy, x, *args, f_ref[1], f_ref[2], eps_placement="outside", eps=1e-3, backend="reference")
        close("dx", g_cuda[0], g_ref[0], 1e-12)
        assert np.isfinite(g_cuda[0]).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_eps_zero_on_a_constant_unit_gives_nan_there_only():
    """eps = 0 on a zero-variance row or channel: rstd = inf, so y and dx are NaN in that unit (as on the
    reference and cpu backends), finite elsewhere."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5))
    x[:, 1] = 2.0  # channel 1 constant: also rows [n, 1] for layer norm
    dy = rng.standard_normal(x.shape)
    for placement in ("inside", "outside"):
        kw = dict(eps=0.0, eps_placement=placement)
        y, m, r = nb.layer_norm_forward(x, 5, backend="cuda", **kw)
        dx = nb.layer_norm_backward(dy, x, 5, m, r, backend="cuda", **kw)[0]
        y2, m2, r2 = nb.batch_norm_forward(x, None, None, None, None, backend="cuda", **kw)
        dx2 = nb.batch_norm_backward(dy, x, None, None, m2, r2, backend="cuda", **kw)[0]
        for out in (y, dx, y2, dx2):
            assert np.isnan(out[:, 1]).all() and np.isfinite(np.delete(out, 1, axis=1)).all(), placement


def test_channels_last_device_arrays():
    """Device arrays laid out channels-last (axis=-1) gave a bare IndexError in the simulator (shape[-1]); they
    give what the reference gives on the host array."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 2, 3))
    w, b = 1 + rng.random(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), 0.5 + rng.random(3)
    for fn, args in ((nb.batch_norm_forward, (w, b, None, None)), (nb.group_norm_forward, (3, w, b)),
                     (nb.frozen_batch_norm_forward, (w, b, rm, rv))):
        got = fn(cuda.to_device(x), *args, axis=-1)
        got = (got[0] if isinstance(got, tuple) else got).copy_to_host()
        want = fn(x, *args, axis=-1, backend="reference")
        close(fn.__name__, got, want[0] if isinstance(want, tuple) else want, 1e-12)
    s = PopulationStats(3)
    s.update(cuda.to_device(x), axis=-1)
    close("population var", s.var(), x.reshape(-1, 3).var(axis=0), 1e-12)


def test_frozen_batch_norm_near_its_running_mean_loses_nothing():
    """Float64 data offset by 1e4 spreads with a running mean near it: the folded x*scale + (b - rm*scale) lost
    log10(1e4) digits; (x - rm)*scale + b keeps y within 4 float64 units of the reference."""
    rng = np.random.default_rng(7)
    x = 1e4 + rng.standard_normal((6, 3, 5))
    w, b = 1 + rng.random(3), rng.standard_normal(3)
    rm, rv = 1e4 + 0.25 * rng.standard_normal(3), 0.5 + rng.random(3)
    got = nb.frozen_batch_norm_forward(x, w, b, rm, rv, backend="cuda")
    want = nb.frozen_batch_norm_forward(x, w, b, rm, rv, backend="reference")
    assert np.abs(got - want).max() <= 4 * np.finfo(np.float64).eps * np.abs(want).max()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_lrn_float32_scale_overflow_backward_matches_the_reference():
    """|x| = 1e22 in float32: the stored scale is inf (float32's range), and the backward took scale**-beta as 0
    (dx 0 where it is 1e-2); it now sums that window again from x."""
    x = np.array([[[1e22], [1.0], [2.0], [0.5]]], np.float32)
    dy = np.ones_like(x)
    kw = dict(alpha=1e-4, beta=0.05, k=1.0)
    y, s = nb.local_response_norm_forward(x, 3, backend="cuda", **kw)
    assert np.isinf(s[0, :2]).all()
    yr, sr = nb.local_response_norm_forward(x, 3, backend="reference", **kw)
    want = nb.local_response_norm_backward(dy, x, yr, sr, 3, backend="reference", **kw)
    dx = nb.local_response_norm_backward(dy, x, y, s, 3, backend="cuda", **kw)
    assert abs(want[0, 0, 0]) > 1e-3
    np.testing.assert_allclose(dx, want, rtol=4 * np.finfo(np.float32).eps, atol=0)


def test_nan_stays_in_its_row_and_channel():
    x = np.random.default_rng(4).standard_normal((3, 4, 5)).astype(np.float32)
    x[1, 2, 3] = np.nan
    y = nb.layer_norm_forward(x, 5, backend="cuda")[0]
    assert np.isnan(y[1, 2]).all() and np.isfinite(np.delete(y.reshape(12, 5), 6, axis=0)).all()
    y = nb.batch_norm_forward(x, None, None, None, None, backend="cuda")[0]
    assert np.isnan(y[:, 2]).all() and np.isfinite(y[:, [0, 1, 3]]).all()


def test_population_stats_accepts_device_arrays():
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((n, 3, 4)) + 100 for n in (2, 5)]
    stats = PopulationStats(3)
    for b in batches:
        stats.update(cuda.to_device(b))
    allx = np.concatenate(batches)
    close("mean", stats.mean, allx.mean(axis=(0, 2)), 1e-12)
    close("var", stats.var(), allx.var(axis=(0, 2)), 1e-10)


def test_channel_moments_channels_last():
    from normbench.cuda.batch import channel_moments

    x = np.random.default_rng(6).standard_normal((3, 2, 4)).astype(np.float32)
    n, mean, m2 = channel_moments(x, -1)
    x64 = x.astype(np.float64).reshape(-1, 4)
    assert n == 6
    close("mean", mean, x64.mean(axis=0), 1e-12)
    close("m2", m2, ((x64 - x64.mean(axis=0)) ** 2).sum(axis=0), 1e-12)


@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 4, 0)])
def test_group_norm_zero_size(shape):
    x = np.zeros(shape)
    w = np.ones(4)
    got = nb.group_norm_forward(x, 2, w, w, backend="cuda")
    with np.errstate(all="ignore"):
        want = nb.group_norm_forward(x, 2, w, w, backend="reference")
    for g, r in zip(got, want):
        assert g.shape == r.shape and np.array_equal(np.isnan(g), np.isnan(r))
    dx, dw, db = nb.group_norm_backward(x, x, 2, got[1], got[2], w, w, backend="cuda")
    assert dx.shape == shape and (dw == 0).all() and (db == 0).all()


@pytest.mark.parametrize("axis", [1, -1])
def test_instance_norm_with_running_statistics_as_constants(axis):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4) if axis == 1 else (2, 4, 3))
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), 1 + rng.random(3)
    kw = dict(use_input_stats=False, axis=axis, eps_placement="outside")
    got = nb.instance_norm_forward(x, w, b, rm, rv, backend="cuda", **kw)
    want = nb.instance_norm_forward(x, w, b, rm, rv, backend="reference", **kw)
    for i, (g, r) in enumerate(zip(got, want)):
        close(f"forward {i}", g, r, 1e-12)
    dy = rng.standard_normal(x.shape)
    got = nb.instance_norm_backward(dy, x, want[1], want[2], w, b, backend="cuda", **kw)
    want = nb.instance_norm_backward(dy, x, want[1], want[2], w, b, backend="reference", **kw)
    for i, (g, r) in enumerate(zip(got, want)):
        close(f"backward {i}", g, r, 1e-12)


def test_non_contiguous_device_array_is_a_clear_error():
    # a strided view (numba-cuda's .T of a 2-D device array is a transposed contiguous copy on a GPU)
    xd = cuda.to_device(np.ones((3, 8), np.float32))[:, ::2]
    assert not xd.is_c_contiguous()
    with pytest.raises(ValueError, match="x is a non-contiguous device array"):
        nb.layer_norm_forward(xd, 4)


def test_warp_shuffle_reduction_with_an_emulated_shuffle(monkeypatch):
    """The hardware path of _reduce.row_sum2 (shuffles within warps, then a tree over the warps' partials) run
    in the simulator with an exact shfl_down_sync twin, on 2-warp blocks: checks the warp compaction logic that
    the PTX test can only compile."""
    if not SIMULATOR:
        pytest.skip("on a GPU the shuffle path runs natively in every row test")
    from numba.cuda.simulator.kernelapi import FakeCUDAModule

    from normbench.cuda import _reduce, _rows

    buf = np.zeros(config.MAX_THREADS)  # the simulator runs one block at a time

    def shfl_down_sync(self, mask, value, delta):
        t = self.threadIdx.x
        buf[t] = value
        self.syncthreads()
        src = t + delta
        out = buf[src] if (t % 32) + delta < 32 and src < self.blockDim.x else value
        self.syncthreads()
        return out

    monkeypatch.setattr(FakeCUDAModule, "shfl_down_sync", shfl_down_sync, raising=False)
    monkeypatch.setattr(_rows, "row_sum2", _reduce._row_sum2_shfl)
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 64)
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((2, 70)), rng.standard_normal((2, 70))
    w = rng.standard_normal(70)
    for fwd, bwd in ((nb.rms_norm_forward, nb.rms_norm_backward), (nb.layer_norm_forward, nb.layer_norm_backward)):
        got, want = fwd(x, 70, w, backend="cuda"), fwd(x, 70, w, backend="reference")
        for i, (g, r) in enumerate(zip(got, want)):
            close(f"{fwd.__name__} output {i}", g, r, 1e-12)
        got = bwd(dy, x, 70, *want[1:], w, backend="cuda")
        ref = bwd(dy, x, 70, *want[1:], w, backend="reference")
        for i, (g, r) in enumerate(zip(got, ref)):
            close(f"{bwd.__name__} output {i}", g, r, 1e-12)


@pytest.mark.parametrize("axis", [1, -1])
def test_eval_backward_dx_never_reads_x_or_the_mean(axis):
    """Evaluation: dx = dy * weight * invstd exactly (closed form); a NaN/Inf in x or in running_mean must not
    reach dx through a 0 * (x - mean) term (probe D3)."""
    rng = np.random.default_rng(9)
    shape = (2, 3, 4) if axis == 1 else (2, 4, 3)
    x = rng.standard_normal(shape)
    x[(1, 1, 2)], x[(0, 2, 0)] = np.nan, np.inf
    dy = rng.standard_normal(shape)
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = np.array([0.5, np.nan, -1.0]), 1 + rng.random(3)
    invstd = 1 / np.sqrt(rv + 1e-5)
    bshape = (1, 3, 1) if axis == 1 else (1, 1, 3)
    want = dy * (w * invstd).reshape(bshape)
    _, sm, si = nb.batch_norm_forward(x, w, b, rm, rv, training=False, axis=axis, backend="reference")
    dx = nb.batch_norm_backward(dy, x, w, b, sm, si, training=False, axis=axis, backend="cuda")[0]
    close("batch eval dx", dx, want, 1e-12)
    _, m, r = nb.instance_norm_forward(x, w, b, rm, rv, use_input_stats=False, axis=axis, backend="reference")
    dx = nb.instance_norm_backward(dy, x, m, r, w, b, use_input_stats=False, axis=axis, backend="cuda")[0]
    close("instance eval dx", dx, want, 1e-12)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("fn", ["batch_norm_forward", "instance_norm_forward"])
def test_strided_numpy_running_statistics_are_updated_in_place(fn):
    """Writable strided NumPy running statistics are updated in place as on the reference (probe D2: the copy
    back raised 'incompatible strides' after running_mean had been written)."""
    x = np.random.default_rng(10).standard_normal((4, 3, 2))
    got = [np.zeros((3, 2))[:, 1], np.ones((3, 2))[:, 1]]  # both strided views
    want = [np.zeros(3), np.ones(3)]
    getattr(nb, fn)(x, None, None, *got, backend="cuda")
    getattr(nb, fn)(x, None, None, *want, backend="reference")
    close("running_mean (strided)", got[0], want[0], 1e-12)
    close("running_var (strided)", got[1], want[1], 1e-12)
    contiguous_mean = np.zeros(3)  # only running_var strided: the case that was left half-updated
    getattr(nb, fn)(x, None, None, contiguous_mean, np.ones((3, 2))[:, 0], backend="cuda")
    close("running_mean (with a strided running_var)", contiguous_mean, want[0], 1e-12)


def test_device_outputs_are_checked_before_any_kernel_writes():
    """A non-contiguous device dresidual_out is rejected, by name, before dx_out is written; a non-contiguous
    device dx_out is named dx_out (probe D6); a good device dresidual_out is written with the reference values."""
    rng = np.random.default_rng(11)
    xr, rr, dy = (rng.standard_normal((3, 6)) for _ in range(3))
    f = nb.fused_add_norm_forward(xr, rr, 6, alpha=0.5, backend="reference")
    dyd, hd = cuda.to_device(dy), cuda.to_device(f[1])
    dxo = cuda.to_device(np.zeros((3, 6)))
    with pytest.raises(ValueError, match="dresidual_out is a non-contiguous device array"):
        nb.fused_add_norm_backward(dyd, hd, 6, f[2], f[3], alpha=0.5, dx_out=dxo,
                                   dresidual_out=cuda.to_device(np.zeros((3, 12)))[:, ::2])
    assert (dxo.copy_to_host() == 0).all(), "dx_out was written before the bad dresidual_out was rejected"
    for fn, args in ((nb.layer_norm_backward, (dy, xr, 6, f[2], f[3])),
                     (nb.batch_norm_backward, (dy, xr, None, None, np.zeros(6), np.ones(6)))):
        with pytest.raises(ValueError, match="dx_out is a non-contiguous device array"):
            fn(*args, dx_out=cuda.to_device(np.zeros((3, 12)))[:, ::2], backend="cuda")
    dro = cuda.to_device(np.zeros((3, 6)))
    got = nb.fused_add_norm_backward(dyd, hd, 6, f[2], f[3], alpha=0.5, dx_out=dxo, dresidual_out=dro)
    want = nb.fused_add_norm_backward(dy, f[1], 6, f[2], f[3], alpha=0.5, backend="reference")
    assert got[0] is dxo and got[1] is dro
    close("dx_out", dxo, want[0], 1e-12)
    close("dresidual_out", dro, want[1], 1e-12)


@pytest.mark.parametrize("param", ["weight", "bias"])
def test_instance_norm_bad_device_parameter_leaves_running_statistics_untouched(param):
    """A non-contiguous device weight/bias was rejected only after the running statistics were updated."""
    x = cuda.to_device(np.random.default_rng(12).standard_normal((2, 3, 4)).astype(np.float32))
    bad = {param: cuda.to_device(np.ones(6, np.float32))[::2]}
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=param):
        nb.instance_norm_forward(x, running_mean=rm, running_var=rv, **bad)
    assert (rm == 0).all() and (rv == 1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_h_is_exact_with_a_float32_accumulator(dtype):
    """h is an output: x + alpha * residual formed in float64 and rounded to x's dtype, whatever ``accumulate``
    says (it was formed in float32: float64 h carried float32 precision, about 1e8 of its ulps off).  Float64 h is
    within an ulp of the exact value: a GPU contracts the multiply-add into one FMA (rounded once, measured on an
    H100); the simulator and the CPU round the product first (at most an ulp of the product more)."""
    from fractions import Fraction

    rng = np.random.default_rng(13)
    x, r = (rng.standard_normal((4, 64)).astype(dtype) for _ in range(2))
    exact = np.array([float(Fraction(float(a)) + Fraction(0.3) * Fraction(float(b))) for a, b in
                      zip(x.ravel(), r.ravel())]).reshape(x.shape)  # correctly rounded to float64
    for acc in ("float32", "float64"):
        h = nb.fused_add_norm_forward(x, r, 64, alpha=0.3, accumulate=acc, backend="cuda")[1]
        if dtype == np.float32:
            np.testing.assert_array_equal(h, exact.astype(np.float32))
        else:
            assert (np.abs(h - exact) <= np.spacing(np.abs(exact)) + np.spacing(np.abs(0.3 * r))).all()


def test_population_stats_device_array_with_a_constant_channel():
    """An all-zero channel (e.g. after a ReLU) is a normal input: variance 0, no ZeroDivisionError (probe D5)."""
    x = np.random.default_rng(12).standard_normal((3, 2, 4))
    x[:, 1] = 0.0
    stats = PopulationStats(2).update(cuda.to_device(x))
    close("mean", stats.mean, x.mean(axis=(0, 2)), 1e-12)
    close("var", stats.var(), x.var(axis=(0, 2)), 1e-12)


def test_mixed_host_and_device_arguments_off_cuda_are_a_clear_error():
    """Device arrays on a host backend: a TypeError naming the argument, not Numba's "can't unbox" (probe D8)."""
    x = np.random.default_rng(13).standard_normal((3, 5)).astype(np.float32)
    with pytest.raises(TypeError, match="weight is a CUDA device array .* backend 'cpu'"):
        nb.layer_norm_forward(x, 5, cuda.to_device(np.ones(5, np.float32)))  # backend=None picks cpu for host x
    with pytest.raises(TypeError, match="x is a CUDA device array .* backend 'cpu'"):
        nb.layer_norm_forward(cuda.to_device(x), 5, backend="cpu")
    with pytest.raises(TypeError, match="running_var is a CUDA device array .* backend 'reference'"):
        nb.batch_norm_forward(x, None, None, np.zeros(5, np.float32), cuda.to_device(np.ones(5, np.float32)),
                              backend="reference")
    with pytest.raises(TypeError, match="h_out is a CUDA device array"):
        nb.fused_add_norm_forward(x, x.copy(), 5, h_out=cuda.device_array(x.shape, np.float32), backend="cpu")
    with pytest.raises(TypeError, match="dx_out is a CUDA device array"):
        nb.rms_norm_backward(x, x, 5, np.ones(3), dx_out=cuda.device_array(x.shape, np.float32), backend="cpu")
    # backend "cuda" takes host and device arrays mixed (host ones are copied in), as before
    y = nb.layer_norm_forward(x, 5, cuda.to_device(np.ones(5, np.float32)), backend="cuda")[0]
    close("mixed on cuda", y, nb.layer_norm_forward(x, 5, np.ones(5, np.float32), backend="reference")[0], 2e-5)


def test_device_outputs_overlapping_inputs_or_each_other_are_rejected():
    """Device out=/h_out=/dx_out= sharing memory with an input, or out with h_out, is a ValueError as for NumPy
    arrays (probe D1: the kernels raced and gave wrong results); adjacent, disjoint device buffers are fine."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 5, 3))
    xd = cuda.to_device(x)
    with pytest.raises(ValueError, match="out shares memory with x"):
        nb.local_response_norm_forward(xd, 3, alpha=1.0, out=xd)
    buf = cuda.to_device(np.concatenate([x.ravel(), np.zeros(x.size)]))
    x_in = buf[:x.size].reshape(x.shape)
    with pytest.raises(ValueError, match="out shares memory with x"):  # a partial overlap
        nb.local_response_norm_forward(x_in, 3, alpha=1.0, out=buf[7:7 + x.size].reshape(x.shape))
    f = nb.local_response_norm_forward(x, 3, alpha=1.0, backend="reference")
    dyd = cuda.to_device(rng.standard_normal(x.shape))
    with pytest.raises(ValueError, match="dx_out shares memory with dy"):
        nb.local_response_norm_backward(dyd, xd, f[0], f[1], 3, alpha=1.0, dx_out=dyd)
    disjoint = buf[x.size:].reshape(x.shape)  # starts where x_in ends
    y = nb.local_response_norm_forward(x_in, 3, alpha=1.0, out=disjoint)[0]
    assert y is disjoint
    close("disjoint device out", y, f[0], 1e-12)
    xr, rr = rng.standard_normal((2, 6)), rng.standard_normal((2, 6))
    xrd, rrd = cuda.to_device(xr), cuda.to_device(rr)
    one = cuda.device_array((2, 6))
    with pytest.raises(ValueError, match="out and h_out share memory"):
        nb.fused_add_norm_forward(xrd, rrd, 6, out=one, h_out=one)
    with pytest.raises(ValueError, match="h_out shares memory with residual"):
        nb.fused_add_norm_forward(xrd, rrd, 6, h_out=rrd)
    ref = nb.fused_add_norm_forward(xr, rr, 6, backend="reference")
    with pytest.raises(ValueError, match="dx_out and dresidual_out share memory"):
        nb.fused_add_norm_backward(cuda.to_device(xr), cuda.to_device(ref[1]), 6, ref[2], ref[3], dx_out=one,
                                   dresidual_out=one)
    # running statistics are updated in place: device buffers aliasing weight or each other are errors too
    w = cuda.to_device(np.ones(5))
    both = cuda.to_device(np.concatenate([np.zeros(5), np.ones(5)]))
    with pytest.raises(ValueError, match="running_mean shares memory with weight"):
        nb.batch_norm_forward(xd, w, None, w, both[5:])
    with pytest.raises(ValueError, match="running_mean shares memory with running_var"):
        nb.batch_norm_forward(xd, None, None, both[:5], both[2:7])
    np.testing.assert_array_equal(both.copy_to_host(), np.repeat([0.0, 1.0], 5))
    nb.batch_norm_forward(xd, None, None, both[:5], both[5:])  # adjacent, disjoint
    cols = cuda.to_device(np.zeros((5, 2)))  # interleaved columns: disjoint, but the kernels need C order
    with pytest.raises(ValueError, match="running_mean is a non-contiguous device array"):
        nb.batch_norm_forward(xd, None, None, cols[:, 0], cols[:, 1])
    rm, rv = np.zeros(5), np.ones(5)
    nb.batch_norm_forward(x, None, None, rm, rv, backend="reference")
    close("disjoint device running statistics", both.copy_to_host(), np.concatenate([rm, rv]), 1e-12)
def test_empty_batches_of_device_arrays_come_back_as_device_arrays():
    """N = 0 device inputs: batch/group/instance norm return device arrays like the other variants, with the
    reference's shapes and values (probe D7: they came back as NumPy arrays)."""
    x = np.zeros((0, 3, 4), np.float32)
    w, rm, rv = np.ones(3, np.float32), np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
    xd, wd, rmd, rvd = (cuda.to_device(a) for a in (x, w, rm, rv))
    calls = [("batch_norm_forward", (w, w, None, None), (wd, wd, None, None), {}),
             ("batch_norm_forward", (w, w, rm, rv), (wd, wd, rmd, rvd), dict(training=False)),
             ("group_norm_forward", (1, w, w), (1, wd, wd), {}),
             ("instance_norm_forward", (w, w), (wd, wd), {}),
             ("batch_norm_backward", (x, w, w, np.zeros(3), np.ones(3)),
              (xd, wd, wd, cuda.to_device(np.zeros(3)), cuda.to_device(np.ones(3))), {}),
             ("group_norm_backward", (x, 1, np.zeros((0, 1)), np.zeros((0, 1)), w, w),
              (xd, 1, cuda.to_device(np.zeros((0, 1))), cuda.to_device(np.zeros((0, 1))), wd, wd), {}),
             ("instance_norm_backward", (x, np.zeros((0, 3)), np.zeros((0, 3)), w, w),
              (xd, cuda.to_device(np.zeros((0, 3))), cuda.to_device(np.zeros((0, 3))), wd, wd), {})]
    for fn, host_args, dev_args, kw in calls:
        got = getattr(nb, fn)(xd, *dev_args, **kw)
        with np.errstate(all="ignore"):
            want = getattr(nb, fn)(x, *host_args, backend="reference", **kw)
        for i, (g, r) in enumerate(zip(got, want)):
            assert hasattr(g, "copy_to_host"), f"{fn} output {i} is {type(g).__name__}, not a device array"
            close(f"{fn} output {i}", g, r, 1e-6)


@pytest.mark.parametrize("variant", ["layer_norm", "group_norm", "instance_norm", "batch_norm_cf", "batch_norm_cl"])
def test_float64_statistics_far_from_zero_keep_their_digits(variant):
    """Float64 data offset by 1e6 spreads: mean and rstd within a few float64 units of the reference.  Threads and
    blocks merged absolute means, whose rounding at the offset's magnitude cost rstd 2e4-8e4 units (H100 and
    simulator alike); they now merge means relative to the segment's shift."""
    x = 1e6 + np.random.default_rng(14).standard_normal((2, 4, 16))
    calls = {
        "layer_norm": lambda b: nb.layer_norm_forward(x, (4, 16), backend=b),
        "group_norm": lambda b: nb.group_norm_forward(x, 2, backend=b),
        "instance_norm": lambda b: nb.instance_norm_forward(x, backend=b),
        "batch_norm_cf": lambda b: nb.batch_norm_forward(x, None, None, None, None, backend=b),
        "batch_norm_cl": lambda b: nb.batch_norm_forward(x, None, None, None, None, axis=-1, backend=b),
    }
    want, got = calls[variant]("reference"), calls[variant]("cuda")
    for k in (1, 2):  # mean, rstd
        ref = np.asarray(want[k], np.float64)
        err = np.max(np.abs(np.asarray(got[k]) - ref) / np.abs(ref)) / np.finfo(np.float64).eps
        assert err <= 8, f"{('mean', 'rstd')[k - 1]}: {err:.3g} float64 units"


@pytest.mark.parametrize("variance", ["two_pass", "welford", "shifted", "naive"])
def test_float32_accumulator_on_float64_data_beyond_its_range(variance):
    """Float64 data above float32's range with accumulate="float32": the shift rounds to Inf in the accumulator and
    takes 0 (the CPU's rule), so the mean overflows to Inf as on the CPU; rounding after the finiteness rule gave
    Inf - Inf = NaN means (two-pass, Welford, shifted)."""
    x = np.array([[[1e39, 2e39, 3e39, 1.0]]] * 2)
    for call in (lambda b: nb.batch_norm_forward(x, None, None, None, None, backend=b, accumulate="float32",
                                                 variance=variance),
                 lambda b: nb.layer_norm_forward(x, (1, 4), backend=b, accumulate="float32", variance=variance)):
        want, got = call("cpu"), call("cuda")
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))  # mean: +Inf in each, not NaN


@pytest.mark.parametrize("nbytes", [40, 56, 64, 4096 + 8])
def test_device_copies_of_any_working_set(nbytes):
    """Every copy candidate runs, whatever the size (a size that is not a whole number of 16-byte words made the
    kernel candidate's view raise: 16 of the full matrix's passes), and the kernel candidate is offered only when
    its 16-byte words cover the working set."""
    from normbench.cuda import timing

    copies = timing.device_copies(nbytes)
    for copy in copies:
        copy()
    assert len(copies) >= (2 if (nbytes // 8) % 4 == 0 else 1)


def test_row_backward_column_sums_over_several_lanes(monkeypatch):
    """dweight/dbias from colsum with two lanes per column (64 threads per block: 32 columns x 2 lanes), three
    partial rows per lane pair and a one-block grid (grid-stride over the columns)."""
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 64)
    monkeypatch.setattr(config, "BACKWARD_ROW_BLOCKS", 5)
    monkeypatch.setattr(config, "MAX_GRID", 1)
    rng = np.random.default_rng(15)
    x, dy = rng.standard_normal((7, 40)), rng.standard_normal((7, 40))
    w, b = rng.standard_normal(40), rng.standard_normal(40)
    _, mean, rstd = nb.layer_norm_forward(x, 40, w, b, backend="reference")
    want = nb.layer_norm_backward(dy, x, 40, mean, rstd, w, b, backend="reference")
    got = nb.layer_norm_backward(dy, x, 40, mean, rstd, w, b, backend="cuda")
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        close(name, g, r, 1e-12)


@pytest.mark.parametrize("variant", ["batch_norm", "group_norm", "instance_norm"])
def test_channel_backward_sums_in_float64_whatever_accumulate_says(variant):
    """The channel norms' backward sums in float64 on every backend (accumulate= governs the forward's statistics):
    with float32 sums cuda's dx on float64 data differed from cpu's by 7e-6 relative at an offset of 1e3."""
    rng = np.random.default_rng(16)
    x = 1e3 + rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal(x.shape)
    w = rng.standard_normal(4)
    kw = dict(accumulate="float32")
    if variant == "batch_norm":
        f = nb.batch_norm_forward(x, w, w, None, None, backend="cpu", **kw)
        calls = lambda b: nb.batch_norm_backward(dy, x, w, w, f[1], f[2], backend=b, **kw)  # noqa: E731
    elif variant == "group_norm":
        f = nb.group_norm_forward(x, 2, w, w, backend="cpu", **kw)
        calls = lambda b: nb.group_norm_backward(dy, x, 2, f[1], f[2], w, w, backend=b, **kw)  # noqa: E731
    else:
        f = nb.instance_norm_forward(x, w, w, backend="cpu", **kw)
        calls = lambda b: nb.instance_norm_backward(dy, x, f[1], f[2], w, w, backend=b, **kw)  # noqa: E731
    for name, got, want in zip(("dx", "dweight", "dbias"), calls("cuda"), calls("cpu")):
        close(name, got, want, 1e-12)


def test_direct_launch_matches_the_dispatcher(monkeypatch):
    """On a GPU, _arrays.launch looks the compiled kernel up by its arguments' kinds and launches it directly after
    the first call (the dispatcher's typing skipped): the outputs of a row and a channel forward and backward equal
    the dispatcher's to the bit, the direct path was taken and stayed on, and scratch arrays are reused.  In the
    simulator (which has its own dispatcher and no compiled kernels) both are off: nothing is recorded."""
    from normbench.cuda import _arrays

    rng = np.random.default_rng(21)
    x = cuda.to_device(rng.standard_normal((6, 40)).astype(np.float32))
    dy = cuda.to_device(rng.standard_normal((6, 40)).astype(np.float32))
    w = cuda.to_device(rng.standard_normal(40).astype(np.float32))
    xc = cuda.to_device(rng.standard_normal((4, 5, 3, 7)).astype(np.float32))

    def calls():
        y, m, r = nb.layer_norm_forward(x, 40, w, w)
        g = nb.layer_norm_backward(dy, x, 40, m, r, w, w)
        yc, mc, rc = nb.batch_norm_forward(xc, None, None, None, None, training=True, axis=-1)
        gc = nb.batch_norm_backward(xc, xc, None, None, mc, rc, training=True, axis=-1)
        return [a.copy_to_host() for a in (y, m, r, *g, yc, mc, rc, gc[0])]

    if SIMULATOR:
        before = len(_arrays._COMPILED)
        calls()
        assert len(_arrays._COMPILED) == before == 0
        assert _arrays.scratch("t", 8, np.float64) is not _arrays.scratch("t", 8, np.float64)
        return
    monkeypatch.setitem(_arrays._FAST, "ok", False)
    want = calls()
    monkeypatch.setitem(_arrays._FAST, "ok", True)
    calls()  # first calls of these kinds: through the dispatcher, compiled kernels recorded
    n = len(_arrays._COMPILED)
    got = calls()
    assert _arrays._FAST["ok"] and n > 0 and len(_arrays._COMPILED) == n
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert _arrays.scratch("t", 8, np.float64) is _arrays.scratch("t", 8, np.float64)
    assert _arrays.scratch("t", 8, np.float64) is not _arrays.scratch("u", 8, np.float64)
