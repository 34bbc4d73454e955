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
                            BACKWARD_ROW_BLOCKS=2).items():
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
                 ("fused_add_norm", (2, 6), dict(norm="layer")), ("instance_norm", (2, 2, 3), dict(axis=-1)),
                 ("local_response_norm", (1, 3, 2), dict(size=2))]


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
    xd = cuda.to_device(np.ones((4, 3), np.float32)).T
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
