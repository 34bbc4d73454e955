"""CPU channel-statistics kernels (batch, frozen batch, group, instance norm) against independent truths: the
float64 reference backend, PyTorch, closed forms.  Shapes are tiny; every layout path of normbench.cpu._channel
is reached: channels-first units (fused, and split when there are fewer units than threads), channels-last
blocks (fused and split), and channels-first batch norm with short slabs run as columns; the kernel tests run
both schedules (serial, as tiny inputs do by default, and threaded: fixture ``schedule``).
(PyTorch's own op_db samples reach backend "cpu" through tests/test_opdb.py.)"""
import itertools

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normbench as nb
from normbench.cpu import _channel, _stream

from nbtest import torch_or_skip

DTYPES = (np.float32, np.float64)
EPS = {np.dtype(np.float32): np.finfo(np.float32).eps, np.dtype(np.float64): np.finfo(np.float64).eps}
OPTIONS = [dict(eps_placement=e, correction=c, variance=v, accumulate=a)
           for e, c, v, a in itertools.product(("inside", "outside"), (0, 1), ("two_pass", "welford", "naive", "shifted"),
                                               ("float32", "float64"))]


@pytest.fixture(params=("serial", "threaded"))
def schedule(request, monkeypatch):
    """Inputs below _channel.PARALLEL_MIN values run the serial kernel twins; "threaded" forces the parallel
    kernels (and their split paths, reached when there are fewer units/blocks than threads) on tiny inputs."""
    if request.param == "threaded":
        monkeypatch.setattr(_channel, "PARALLEL_MIN", 0)
    return request.param


# logical (N, C, *spatial) shape and axis; comments name the kernel path each one reaches
BN_CASES = [
    ((5, 3, 4, 6), 1),      # channels-first units, one per channel (S=24 >= SMALL_S)
    ((3, 9, 4, 5), 1),      # channels-first blocks of several units, the last one partial
    ((5, 3, 4, 2), 1),      # channels-first with short slabs: columns C*S, groups of S
    ((7, 5), 1),            # (N, C): rows x C, split over row chunks
    ((3, 5, 4, 3), -1),     # channels-last 2d
    ((2, 3, 3, 4, 5), 1),   # 3d channels-first
    ((2, 3, 3, 2, 2), -1),  # 3d channels-last
    ((4, 1, 20), 1),        # C=1 < threads: split units
    ((3, 4, 1), 1),         # spatial size 1
]


def phys(shape, axis):
    return shape if axis == 1 or len(shape) == 2 else (shape[0], *shape[2:], shape[1])


def units(a, ref, axis, dtype):
    """max over channels of max|a - ref| / (eps * max|ref|) within the channel (the issue's accuracy unit)."""
    a = np.moveaxis(np.asarray(a, np.float64), axis, 0).reshape(a.shape[axis], -1)
    ref = np.moveaxis(np.asarray(ref, np.float64), axis, 0).reshape(a.shape[0], -1)
    scale = np.abs(ref).max(axis=1)
    err = np.abs(a - ref).max(axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    return float((err / (EPS[np.dtype(dtype)] * scale)).max())


def close(a, ref, dtype, tol, scale=None):
    """max|a - ref| within ``tol`` units of ``eps(dtype) * scale`` (default scale: max|ref|; sums pass the
    magnitude of their terms, since cancellation can make the result itself arbitrarily small)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape
    if scale is None:
        scale = max(float(np.abs(ref).max()), 1e-300) if ref.size else 1.0
    err = float(np.abs(a - ref).max()) if ref.size else 0.0
    assert err <= tol * EPS[np.dtype(dtype)] * scale, f"error {err / (EPS[np.dtype(dtype)] * scale):.1f} units"


def dx_scale(dxr, dy, rstd, w):
    """Magnitude of dx's terms, r*w*dy: where the exact dx is 0 (one value per group) it is what rounding
    errors are relative to."""
    wmax = 1.0 if w is None else float(np.abs(w).max())
    return max(float(np.abs(dxr).max()), float(np.abs(dy).max()) * float(np.abs(rstd).max()) * wmax)


def affine(rng, C, dtype):
    return (1 + 0.2 * rng.standard_normal(C)).astype(dtype), (0.2 * rng.standard_normal(C)).astype(dtype)


def option_tol(dtype, opts):
    """(unit dtype, units) of tolerance against the exact reference: float32 accumulation and the naive
    algorithm are the inaccurate options on purpose (tiny shapes keep their error small); a float32
    accumulator on float64 data is judged in float32 units."""
    if opts.get("accumulate") == "float32":
        return np.float32, 64
    return dtype, 64


# -------------------------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", BN_CASES)
def test_batch_norm_training_every_option(rng, schedule, dtype, shape, axis):
    x = (rng.standard_normal(phys(shape, axis)) + 0.5).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    C = shape[1]
    w, b = affine(rng, C, dtype)
    rm0, rv0 = rng.standard_normal(C).astype(dtype), (0.5 + rng.random(C)).astype(dtype)
    for opts in OPTIONS:
        ud, tol = option_tol(dtype, opts)
        rm, rv, rm_ref, rv_ref = rm0.copy(), rv0.copy(), rm0.copy(), rv0.copy()
        y, m, r = nb.batch_norm_forward(x, w, b, rm, rv, training=True, momentum=0.3, axis=axis, backend="cpu", **opts)
        yr, mr, rr = nb.batch_norm_forward(x, w, b, rm_ref, rv_ref, training=True, momentum=0.3, axis=axis,
                                           backend="reference", **opts)
        assert y.dtype == dtype and m.dtype == r.dtype == np.float64 and m.shape == r.shape == (C,)
        close(y, yr, ud, tol)
        close(m, mr, ud, tol)
        close(r, rr, ud, tol)
        close(rm, rm_ref, ud, tol)
        close(rv, rv_ref, ud, tol)
        dx, dw, db = nb.batch_norm_backward(dy, x, w, b, m, r, training=True, axis=axis, backend="cpu", **opts)
        dxr, dwr, dbr = nb.batch_norm_backward(dy, x, w, b, mr, rr, training=True, axis=axis, backend="reference",
                                               **opts)
        assert dx.dtype == dw.dtype == db.dtype == dtype
        close(dx, dxr, ud, tol, scale=dx_scale(dxr, dy, rr, w))
        terms = x.size // C  # dweight, dbias: sums of that many O(1) terms per channel
        close(dw, dwr, ud, tol, scale=terms)
        close(db, dbr, ud, tol, scale=terms)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((5, 3, 4, 6), 1), ((5, 3, 4, 2), 1), ((7, 5), 1), ((3, 5, 4, 3), -1)])
def test_running_statistics_near_offset_data_lose_nothing(rng, dtype, shape, axis):
    """Evaluation, frozen and running-statistics instance norm on data offset by 1e4 spreads with a running mean
    near the data's mean (a trained model): y within 4 units of the reference (the issue's bound). The folded
    x*scale + (bias - rm*scale) cost float64 data 660 units there (log10(offset/spread) digits)."""
    x = (1e4 + rng.standard_normal(phys(shape, axis))).astype(dtype)
    C = shape[1]
    w, b = affine(rng, C, dtype)
    rm = (1e4 + 0.25 * rng.standard_normal(C)).astype(dtype)
    rv = (0.5 + rng.random(C)).astype(dtype)
    calls = [(nb.batch_norm_forward, (w, b, rm, rv), dict(training=False)),
             (nb.frozen_batch_norm_forward, (w, b, rm, rv), {})]
    if len(shape) > 2:
        calls.append((nb.instance_norm_forward, (w, b, rm, rv), dict(use_input_stats=False)))
    for fn, args, kw in calls:
        y = fn(x, *args, axis=axis, backend="cpu", **kw)
        y = y[0] if isinstance(y, tuple) else y
        want = fn(x, *args, axis=axis, backend="reference", **kw)
        want = want[0] if isinstance(want, tuple) else want
        assert units(y, want, x.ndim - 1 if axis == -1 else 1, dtype) <= 4, fn.__name__


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", BN_CASES + [((6, 4), -1), ((5, 3, 1, 1), -1)])
@pytest.mark.parametrize("eps_placement", ("inside", "outside"))
def test_batch_norm_eval_and_frozen(rng, schedule, dtype, shape, axis, eps_placement):
    x = rng.standard_normal(phys(shape, axis)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    C = shape[1]
    w, b = affine(rng, C, dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), (0.5 + rng.random(C)).astype(dtype)
    rm_before, rv_before = rm.copy(), rv.copy()
    for wb in ((w, b), (None, None)):
        out = np.empty_like(x)
        y, m, r = nb.batch_norm_forward(x, *wb, rm, rv, training=False, axis=axis, eps_placement=eps_placement,
                                        backend="cpu", out=out)
        yr, mr, rr = nb.batch_norm_forward(x, *wb, rm, rv, training=False, axis=axis, eps_placement=eps_placement,
                                           backend="reference")
        assert y is out
        close(y, yr, dtype, 4)
        np.testing.assert_array_equal(m, mr)
        close(r, rr, dtype, 1)
        g = nb.batch_norm_backward(dy, x, *wb, m, r, training=False, axis=axis, eps_placement=eps_placement,
                                   backend="cpu")
        gr = nb.batch_norm_backward(dy, x, *wb, mr, rr, training=False, axis=axis, eps_placement=eps_placement,
                                    backend="reference")
        close(g[0], gr[0], dtype, 8)
        for a, ref in zip(g[1:], gr[1:]):
            assert (a is None) == (ref is None)
            if a is not None:
                close(a, ref, dtype, 8, scale=x.size // C)
    np.testing.assert_array_equal(rm, rm_before)  # evaluation never touches the running statistics
    np.testing.assert_array_equal(rv, rv_before)
    y = nb.frozen_batch_norm_forward(x, w, b, rm, rv, eps=1e-3, axis=axis, backend="cpu")
    close(y, nb.frozen_batch_norm_forward(x, w, b, rm, rv, eps=1e-3, axis=axis, backend="reference"), dtype, 4)
    dx = nb.frozen_batch_norm_backward(dy, w, rv, eps=1e-3, axis=axis, backend="cpu")
    close(dx, nb.frozen_batch_norm_backward(dy, w, rv, eps=1e-3, axis=axis, backend="reference"), dtype, 4)


@pytest.mark.parametrize("shape,axis", [((4, 3, 20), 1), ((4, 5, 3), -1), ((6, 3), 1), ((3, 2, 4, 2), 1)])
def test_channel_moments_and_precise_bn(rng, shape, axis):
    from normbench.cpu.batch import channel_moments
    from normbench.reference.batch import channel_moments as ref_moments

    x = (rng.standard_normal(phys(shape, axis)) * 3 + 1e3).astype(np.float32)
    n, m, q = channel_moments(x, axis)
    nr, mr, qr = ref_moments(x, axis)
    assert n == nr and m.dtype == q.dtype == np.float64
    np.testing.assert_allclose(m, mr, rtol=1e-12)
    np.testing.assert_allclose(q, qr, rtol=1e-9)
    for weighting in ("samples", "batches"):
        cpu, ref = nb.PopulationStats(shape[1], weighting=weighting), nb.PopulationStats(shape[1], weighting=weighting)
        for k in range(3):
            xb = (rng.standard_normal(phys((k + 2, *shape[1:]), axis)) + k).astype(np.float32)
            cpu.update(xb, axis=axis, backend="cpu")
            ref.update(xb, axis=axis, backend="reference")
        np.testing.assert_allclose(cpu.mean, ref.mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(cpu.var(1), ref.var(1), rtol=1e-10)


# --------------------------------------------------------------------------------------- group / instance
GN_CASES = [
    ((3, 6, 5, 4), 3, 1),     # channels-first units (N*G >= threads)
    ((3, 6, 5, 4), 3, -1),    # channels-last blocks, one sample per iteration
    ((1, 4, 7), 1, 1),        # one unit: split over sub-runs
    ((1, 4, 7), 2, -1),       # one sample channels-last: split over row chunks
    ((2, 5, 3, 2, 2), 5, 1),  # 3d, odd C, G = C
    ((4, 6), 2, 1),           # (N, C)
    ((2, 3, 1, 1), 3, -1),    # spatial size 1
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G,axis", GN_CASES)
def test_group_norm_every_option(rng, schedule, dtype, shape, G, axis):
    x = (rng.standard_normal(phys(shape, axis)) - 2).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w, b = affine(rng, shape[1], dtype)
    n = x.size // (shape[0] * G)
    for opts in OPTIONS:
        if opts["correction"] >= n:
            continue
        if n == 1 and (opts["variance"] == "naive" or (opts["accumulate"] == "float32" and dtype == np.float64)):
            continue  # where var = 0 these leave a residue (naive: of x**2; float32 mean of float64 data) that
            #          r = 1/sqrt(eps) amplifies: inaccurate by design, measured by the accuracy harness
        ud, tol = option_tol(dtype, opts)
        for wb in ((w, b), (None, None)) if opts["variance"] == "shifted" else ((w, b),):
            y, m, r = nb.group_norm_forward(x, G, *wb, axis=axis, backend="cpu", **opts)
            yr, mr, rr = nb.group_norm_forward(x, G, *wb, axis=axis, backend="reference", **opts)
            assert y.dtype == dtype and m.shape == r.shape == (shape[0], G) and m.dtype == np.float64
            close(y, yr, ud, tol)
            close(m, mr, ud, tol)
            close(r, rr, ud, tol)
            g = nb.group_norm_backward(dy, x, G, m, r, *wb, axis=axis, backend="cpu", **opts)
            gr = nb.group_norm_backward(dy, x, G, mr, rr, *wb, axis=axis, backend="reference", **opts)
            close(g[0], gr[0], ud, tol, scale=dx_scale(gr[0], dy, rr, wb[0]))
            for a, ref in zip(g[1:], gr[1:]):
                assert (a is None) == (ref is None)
                if a is not None:
                    close(a, ref, ud, tol, scale=x.size // shape[1])


@pytest.fixture
def two_threads_or_serial(schedule, monkeypatch):
    """The schedule fixture, made independent of the core count for inputs above PARALLEL_MIN: "serial" raises
    the threshold so that the serial twins run; "threaded" runs at most two threads, so that a few blocks still
    take the one-block-per-thread kernels rather than the split ones."""
    if schedule == "serial":
        monkeypatch.setattr(_channel, "PARALLEL_MIN", 1 << 40)
        yield schedule
        return
    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        yield schedule
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("gang", (True, False))
@pytest.mark.parametrize("offset", (0.0, 1e4))
def test_channels_last_gangs_of_row_tiles(rng, monkeypatch, two_threads_or_serial, offset, gang):
    """Channels-last blocks of 400 rows of C = 16 (three blocks: the pipelined forward, one or two threads): its
    tiled loops run whole gangs of _channel.GANG tiles of 64 rows, then the remainder (144 rows: two tiles and a
    partial one); batch norm's row chunks too.  Float32, the default options: within the issue's 4 units of the
    float64 reference, standard and offset data, y (and dx, whose sums use these statistics).  Float64 is covered
    by STREAM_CASES, each loop alone by test_tiled_loops_against_numpy.  Gangs or one tile at a time
    (_channel.WIDE_L1D: by machine)."""
    monkeypatch.setattr(_channel, "WIDE_L1D", gang)
    dtype = np.float32
    assert _channel.GANG == 4 and _channel.TILE == 1024  # the shapes below were chosen for these
    x = (rng.standard_normal((3, 20, 20, 16)) * 3 + offset).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w, b = affine(rng, 16, dtype)
    for G in (4, 16):  # group norm, and instance norm's kernels (G = C)
        y, m, r = nb.group_norm_forward(x, G, w, b, axis=-1, backend="cpu")
        yr, mr, rr = nb.group_norm_forward(x, G, w, b, axis=-1, backend="reference")
        assert units(y, yr, -1, dtype) <= 4
        dx = nb.group_norm_backward(dy, x, G, m, r, w, b, axis=-1, backend="cpu")[0]
        dxr = nb.group_norm_backward(dy, x, G, mr, rr, w, b, axis=-1, backend="reference")[0]
        close(dx, dxr, dtype, 4, scale=dx_scale(dxr, dy, rr, w))
    y = nb.batch_norm_forward(x, w, b, None, None, training=True, axis=-1, backend="cpu")[0]
    yr = nb.batch_norm_forward(x, w, b, None, None, training=True, axis=-1, backend="reference")[0]
    assert units(y, yr, -1, dtype) <= 4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("llc", (0, 1 << 40))
def test_column_sweep_from_memory_and_from_cache(rng, monkeypatch, two_threads_or_serial, dtype, llc):
    """The channels-last statistics sweep has two forms, picked by whether the data would come from cache
    (_moments.FOURS: four rows at a time, or one), as have the backward's sums (ROWS_NOTE): LLC_BYTES = 0 makes
    every call take the one-row form, a huge one (with WIDE_L1D) the four-row form.  Each, on 825 rows (206 fours
    and one row left; 10725 values, above PARALLEL_MIN: the threaded schedule runs the split kernels, whose
    sweeps these are, the serial one the fused and pipelined ones): float32 standard and offset channels within the issue's 4 units of the float64 reference
    (y, training and evaluation dx, running statistics); float64 standard channels within 64 (float64 channels far
    from zero lose digits in the merged means: docs/cpu-channel.md)."""
    monkeypatch.setattr(_channel, "LLC_BYTES", llc)
    monkeypatch.setattr(_channel, "WIDE_L1D", bool(llc))
    assert _channel.from_cache(1) == bool(llc)
    tol = 4 if dtype == np.float32 else 64  # float64: option_tol's bound, as the other float64 cases here
    for offset in (0.0, 1e4) if dtype == np.float32 else (0.0,):
        x = (rng.standard_normal((5, 15, 11, 13)) * 2 + offset).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        w, b = affine(rng, 13, dtype)
        rm, rv = np.zeros(13, dtype), np.ones(13, dtype)
        rm_ref, rv_ref = rm.copy(), rv.copy()
        y, m, r = nb.batch_norm_forward(x, w, b, rm, rv, training=True, axis=-1, backend="cpu")
        yr, mr, rr = nb.batch_norm_forward(x, w, b, rm_ref, rv_ref, training=True, axis=-1, backend="reference")
        assert units(y, yr, -1, dtype) <= tol
        close(rm, rm_ref, dtype, tol)
        close(rv, rv_ref, dtype, tol)
        dx = nb.batch_norm_backward(dy, x, w, b, m, r, training=True, axis=-1, backend="cpu")[0]
        dxr = nb.batch_norm_backward(dy, x, w, b, mr, rr, training=True, axis=-1, backend="reference")[0]
        close(dx, dxr, dtype, tol, scale=dx_scale(dxr, dy, rr, w))
        _, me, re = nb.batch_norm_forward(x, w, b, rm, rv, training=False, axis=-1, backend="cpu")
        dx = nb.batch_norm_backward(dy, x, w, b, me, re, training=False, axis=-1, backend="cpu")[0]
        dxr = nb.batch_norm_backward(dy, x, w, b, me, re, training=False, axis=-1, backend="reference")[0]
        close(dx, dxr, dtype, tol, scale=np.abs(dxr).max())


@pytest.mark.parametrize("offset", (0.0, 1e4))
def test_channels_last_pipelined_or_not(rng, monkeypatch, two_threads_or_serial, offset):
    """The channels-last training forward and backward (group and instance norm, a block per sample) run
    pipelined or block by block, by machine (_channel.WIDE_L1D).  Both, float32, five samples of 400 rows of C = 16
    (a gang of four 64-row tiles, then the rest; 32000 values, above PARALLEL_MIN: two threads taking runs of two
    and three blocks in the threaded schedule): y and the statistics the same to the bit (the same sums in the same order),
    y within the issue's 4 units of the float64 reference; dx within 4 units and the same to the bit, as are
    dweight and dbias."""
    x = (rng.standard_normal((5, 20, 20, 16)) * 3 + offset).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = affine(rng, 16, np.float32)
    for G in (4, 16):
        fwd = {}
        for pipe in (True, False):
            monkeypatch.setattr(_channel, "WIDE_L1D", pipe)
            fwd[pipe] = nb.group_norm_forward(x, G, w, b, axis=-1, backend="cpu")
        for a, c in zip(fwd[True], fwd[False]):
            np.testing.assert_array_equal(a, c)
        y, m, r = fwd[False]
        yr, mr, rr = nb.group_norm_forward(x, G, w, b, axis=-1, backend="reference")
        assert units(y, yr, -1, np.float32) <= 4
        dxr = nb.group_norm_backward(dy, x, G, mr, rr, w, b, axis=-1, backend="reference")[0]
        got = {}
        for pipe in (True, False):
            monkeypatch.setattr(_channel, "WIDE_L1D", pipe)
            got[pipe] = nb.group_norm_backward(dy, x, G, m, r, w, b, axis=-1, backend="cpu")
            close(got[pipe][0], dxr, np.float32, 4, scale=dx_scale(dxr, dy, rr, w))
        for a, c in zip(got[True], got[False]):
            np.testing.assert_array_equal(a, c)


@numba.njit
def _normalize_and_sum_plain(x, y, xn, K, tm, ts, th, tt, ss, ss2, folded):
    """_normalize_and_sum with ordinary stores as a compile-time literal, as the kernels call it (a store kind
    passed at run time from Python may be merged by LLVM into one store with the streaming store's alignment,
    which faults on unaligned arrays: _stream._put)."""
    _channel._normalize_and_sum(x, y, xn, K, tm, ts, th, tt, ss, ss2, False, folded)


@pytest.mark.parametrize("folded", (0, 1))
@pytest.mark.parametrize("gang", (1, 0))
@pytest.mark.parametrize("C", (16, 20, 1024, 1500))  # K = TILE // C rows a tile: 64, 51, 1 and 1
def test_tiled_loops_against_numpy(rng, C, gang, folded):
    """The channels-last forward's tiled loops alone, on blocks of fewer rows than a gang, exactly a gang, and a
    gang plus a tile plus one row: _tiled_sums' shifted column sums and sums of squares (summed over the tiles),
    _normalize_rows_loop's y, and _normalize_and_sum doing both at once, against NumPy in float64; y also in the
    folded form (FOLD_NOTE: x*sc + (sh - mc*sc))."""
    K = int(_channel._tile_rows(C, _channel.TILE))
    for R in (3, _channel.GANG * K - 1, _channel.GANG * K, _channel.GANG * K + K + 1):
        x = rng.standard_normal((R, C)).astype(np.float32)
        xn = (rng.standard_normal((R, C)) + 5).astype(np.float32)
        mc, sc, sh = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(C)
        shift = np.median(xn[[0, R // 2, R - 1]].astype(np.float64), axis=0)  # _moments.shift3, per column
        d = xn.astype(np.float64) - shift
        tt, ss, ss2 = np.empty(K * C), np.empty(K * C), np.empty(K * C)
        _channel._tiled_sums(xn, K, tt, ss, ss2)
        np.testing.assert_array_equal(tt.reshape(K, C), np.broadcast_to(shift, (K, C)))
        np.testing.assert_allclose(ss.reshape(K, C).sum(0), d.sum(0), rtol=1e-12, atol=1e-12 * R)
        np.testing.assert_allclose(ss2.reshape(K, C).sum(0), (d * d).sum(0), rtol=1e-12)
        y_ref = ((x.astype(np.float64) - mc) * sc + sh).astype(np.float32)
        shf = sh - mc * sc if folded else sh  # as _fold makes it
        y = np.full_like(x, np.nan)
        _channel._normalize_rows(x, y, 0, R, mc, sc, shf, 0, gang, folded)
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
        y2 = np.full_like(x, np.nan)
        tiled = [_channel._tiled(v, K) for v in (mc, sc, shf)]
        _normalize_and_sum_plain(x, y2, xn, K, *tiled, tt, ss, ss2, folded)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_allclose(ss.reshape(K, C).sum(0), d.sum(0), rtol=1e-12, atol=1e-12 * R)
        np.testing.assert_allclose(ss2.reshape(K, C).sum(0), (d * d).sum(0), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((3, 5, 4, 3), 1), ((3, 5, 4, 3), -1), ((1, 1, 9), 1), ((2, 3, 2, 2, 3), -1)])
@pytest.mark.parametrize("eps_placement", ("inside", "outside"))
def test_instance_norm(rng, schedule, dtype, shape, axis, eps_placement):
    x = (rng.standard_normal(phys(shape, axis)) + 1).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    C = shape[1]
    w, b = affine(rng, C, dtype)
    kw = dict(axis=axis, eps_placement=eps_placement)
    for use_input_stats in (True, False):
        rm, rv = rng.standard_normal(C).astype(dtype), (0.5 + rng.random(C)).astype(dtype)
        rm_ref, rv_ref = rm.copy(), rv.copy()
        y, m, r = nb.instance_norm_forward(x, w, b, rm, rv, use_input_stats=use_input_stats, momentum=0.2,
                                           backend="cpu", **kw)
        yr, mr, rr = nb.instance_norm_forward(x, w, b, rm_ref, rv_ref, use_input_stats=use_input_stats, momentum=0.2,
                                              backend="reference", **kw)
        close(y, yr, dtype, 8)
        close(m, mr, dtype, 8)
        close(r, rr, dtype, 8)
        close(rm, rm_ref, dtype, 8)
        close(rv, rv_ref, dtype, 8)
        g = nb.instance_norm_backward(dy, x, m, r, w, b, use_input_stats=use_input_stats, backend="cpu", **kw)
        gr = nb.instance_norm_backward(dy, x, mr, rr, w, b, use_input_stats=use_input_stats, backend="reference",
                                       **kw)
        close(g[0], gr[0], dtype, 16)
        for a, ref in zip(g[1:], gr[1:]):
            close(a, ref, dtype, 16, scale=x.size // C)


def test_empty_batches(rng):
    for axis in (1, -1):
        x = np.zeros(phys((0, 4, 3, 2), axis), np.float32)
        rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
        y, m, r = nb.batch_norm_forward(x, None, None, rm, rv, axis=axis, backend="cpu")
        assert y.shape == x.shape and (rm == 0).all() and (rv == 1).all()
        y, m, r = nb.group_norm_forward(x, 2, None, None, axis=axis, backend="cpu")
        assert y.shape == x.shape and m.shape == (0, 2)
        dx, dw, db = nb.group_norm_backward(x, x, 2, m, r, np.ones(4, np.float32), None, axis=axis, backend="cpu")
        assert dx.shape == x.shape and (dw == 0).all() and db is None
        y, m, r = nb.instance_norm_forward(x, axis=axis, backend="cpu")
        assert y.shape == x.shape and m.shape == (0, 4)
        y = nb.frozen_batch_norm_forward(x, rv, rm, rm, rv, axis=axis, backend="cpu")
        assert y.shape == x.shape


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(N=st.integers(1, 4), C=st.integers(1, 6), spatial=st.lists(st.integers(1, 5), min_size=0, max_size=3),
       axis=st.sampled_from((1, -1)), f64=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_shapes(N, C, spatial, axis, f64, seed):
    dtype = np.float64 if f64 else np.float32
    # float64 data with a float64 accumulator: groups of two close values lose a few bits in x - mean (the
    # oracle is extended precision), so float64 y gets 64 units; float32 (float64 accumulator) keeps 16
    tol_y = 16 if dtype == np.float32 else 64
    rng = np.random.default_rng(seed)
    shape = (N, C, *spatial)
    x = rng.standard_normal(phys(shape, axis)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w, b = affine(rng, C, dtype)
    if x.size // C > 1:
        o = nb.batch_norm_forward(x, w, b, None, None, axis=axis, backend="cpu")
        r = nb.batch_norm_forward(x, w, b, None, None, axis=axis, backend="reference")
        close(o[0], r[0], dtype, tol_y)
        close(o[1], r[1], dtype, 16, scale=np.abs(x).max())  # a mean: relative to the data it averages
        close(o[2], r[2], dtype, 16)
        g = nb.batch_norm_backward(dy, x, w, b, o[1], o[2], axis=axis, backend="cpu")
        gr = nb.batch_norm_backward(dy, x, w, b, r[1], r[2], axis=axis, backend="reference")
        close(g[0], gr[0], dtype, 64, scale=dx_scale(gr[0], dy, r[2], w))
        for a, ref in zip(g[1:], gr[1:]):
            close(a, ref, dtype, 64, scale=x.size // C)
    G = max(d for d in range(1, C + 1) if C % d == 0 and d <= 3)
    o = nb.group_norm_forward(x, G, w, b, axis=axis, backend="cpu")
    r = nb.group_norm_forward(x, G, w, b, axis=axis, backend="reference")
    close(o[0], r[0], dtype, tol_y)
    close(o[1], r[1], dtype, 16, scale=np.abs(x).max())
    close(o[2], r[2], dtype, 16)
    g = nb.group_norm_backward(dy, x, G, o[1], o[2], w, b, axis=axis, backend="cpu")
    gr = nb.group_norm_backward(dy, x, G, r[1], r[2], w, b, axis=axis, backend="reference")
    close(g[0], gr[0], dtype, 64, scale=dx_scale(gr[0], dy, r[2], w))
    for a, ref in zip(g[1:], gr[1:]):
        close(a, ref, dtype, 64, scale=x.size // C)


# ------------------------------------------------------------------------------------------ accuracy (issue)
def stress(kind, rng, shape, axis):
    """float32 stress inputs per channel: the float64 values are what the oracle sees (exactly representable)."""
    C = shape[1]
    cshape = [1] * len(shape)
    cshape[1] = C
    spread = np.exp(rng.uniform(-1, 1, C)).reshape(cshape)
    z = rng.standard_normal(shape)
    if kind == "normal":
        x = z
    elif kind in ("offset1e4", "offset1e6"):
        k = 1e4 if kind == "offset1e4" else 1e6
        x = k * spread * np.sign(rng.standard_normal(C)).reshape(cshape) + spread * z
    elif kind == "constant":
        x = np.broadcast_to(rng.standard_normal(C).reshape(cshape) * 10, shape).copy()
    else:  # variance far below eps
        x = 1e-4 * z + 3.0
    x = x.astype(np.float32)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if axis == -1 else x


@pytest.mark.parametrize("kind", ("normal", "offset1e4", "offset1e6", "constant", "tiny_variance"))
@pytest.mark.parametrize("shape,axis", [((16, 6, 8, 8), 1), ((16, 6, 8, 8), -1), ((2, 5, 40), 1), ((256, 7), 1),
                                        ((2, 5, 3, 2), 1)])
def test_accuracy_within_4_units(rng, kind, shape, axis):
    x = stress(kind, rng, shape, axis)
    cax = 1 if axis == 1 else x.ndim - 1
    C = shape[1]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = affine(rng, C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    for _ in range(10):
        y, m, r = nb.batch_norm_forward(x, w, b, rm, rv, axis=axis, backend="cpu")
        yr, mr, rr = nb.batch_norm_forward(x, w, b, rm_ref, rv_ref, axis=axis, backend="reference")
        rm_ref, rv_ref = rm_ref.astype(np.float32), rv_ref.astype(np.float32)  # the buffers' own dtype
    assert units(y, yr, cax, np.float32) <= 4
    assert np.abs(rm - rm_ref).max() <= 4 * EPS[np.dtype(np.float32)] * np.abs(rm_ref).max()
    assert np.abs(rv - rv_ref).max() <= 4 * EPS[np.dtype(np.float32)] * max(np.abs(rv_ref).max(), 1e-30)
    dx = nb.batch_norm_backward(dy, x, w, b, m, r, axis=axis, backend="cpu")[0]
    dxr = nb.batch_norm_backward(dy, x, w, b, mr, rr, axis=axis, backend="reference")[0]
    assert units(dx, dxr, cax, np.float32) <= 4
    if x.ndim > 2:  # instance and group norm (G = C/... one channel per group and one group)
        for G in (C, 1):
            y, m, r = nb.group_norm_forward(x, G, w, b, axis=axis, backend="cpu")
            yr, mr, rr = nb.group_norm_forward(x, G, w, b, axis=axis, backend="reference")
            assert units(y, yr, cax, np.float32) <= 4
            dx = nb.group_norm_backward(dy, x, G, m, r, w, b, axis=axis, backend="cpu")[0]
            dxr = nb.group_norm_backward(dy, x, G, mr, rr, w, b, axis=axis, backend="reference")[0]
            if G == C or kind in ("normal", "tiny_variance"):  # G = 1 mixes channels of different offsets
                assert units(dx, dxr, cax, np.float32) <= 4


# --------------------------------------------------------------------------------------- IEEE, errors, out=
@pytest.mark.parametrize("variance", ["shifted", "welford", "two_pass", "naive"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,axis", [((64, 3, 40), 1), ((64, 40, 3), -1), ((3000, 3), 1), ((64, 3, 4, 10), 1)])
def test_infinite_values_give_the_ieee_mean(rng, shape, axis, threads, variance, monkeypatch):
    """A channel holding +Inf in several samples has mean +Inf, one holding a single -Inf has -Inf, one holding both
    has NaN, as the reference's sum; variance NaN in all three; an Inf that is a block's first value (the shifted
    sums' shift) included.  Blocks and threads merge partial moments with
    Chan's formula, whose ``delta`` (Inf - Inf) made the mean NaN; the CPU batch norm channels-first gave NaN for
    both infinite channels.  Running and population statistics follow."""
    import numba

    monkeypatch.setattr(numba, "get_num_threads", lambda: threads)  # the kernels' split follows it
    cax = 1 if axis == 1 else len(shape) - 1
    cf = rng.standard_normal(np.moveaxis(np.empty(shape), cax, 1).shape).astype(np.float32)  # (N, C, *spatial)
    flat = cf.reshape(cf.shape[0], cf.shape[1], -1)  # a view of cf
    flat[3, 1, 0], flat[-5, 1, -1] = np.inf, np.inf  # channel 1: +Inf twice, far apart (the first a shift)
    flat[10, 2, 0] = -np.inf  # channel 2: one -Inf
    flat[-1, 0, 0], flat[7, 0, -1] = np.inf, -np.inf  # channel 0: both
    x = np.ascontiguousarray(np.moveaxis(cf, 1, cax))
    C = x.shape[cax]
    with np.errstate(invalid="ignore"):
        want_mean = np.moveaxis(x.astype(np.float64), cax, 0).reshape(C, -1).sum(axis=1)  # IEEE's sum: its sign
        _, m, r = nb.batch_norm_forward(x, None, None, None, None, axis=axis, backend="cpu", variance=variance)
        _, mr, rr = nb.batch_norm_forward(x, None, None, None, None, axis=axis, backend="reference")
        stats = nb.PopulationStats(C).update(x[: len(x) // 2], axis=axis).update(x[len(x) // 2:], axis=axis)
        # layer norm over each sample's values: rows holding Inf (a row's first value among them)
        lm = nb.layer_norm_forward(x.reshape(len(x), -1), x[0].size, backend="cpu", variance=variance)[1]
        lr = nb.layer_norm_forward(x.reshape(len(x), -1), x[0].size, backend="reference")[1]
    np.testing.assert_array_equal(lm[~np.isfinite(lr)], lr[~np.isfinite(lr)])
    assert np.isfinite(lm[np.isfinite(lr)]).all()
    for got in (m, mr, stats.mean):
        inf = ~np.isfinite(want_mean)
        np.testing.assert_array_equal(got[inf], want_mean[inf])  # +Inf, -Inf or NaN, exactly
        assert np.isfinite(got[~inf]).all()
    np.testing.assert_array_equal(np.isnan(r), np.isnan(rr))
    assert np.isnan(stats.var()[~np.isfinite(want_mean)]).all()


@pytest.mark.parametrize("shape,axis", [((4, 3, 5, 5), 1), ((4, 5, 5, 3), -1), ((6, 3), 1), ((4, 3, 2), 1)])
def test_nan_stays_in_its_channel(rng, shape, axis):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    cax = 1 if axis == 1 else x.ndim - 1
    idx = [0] * x.ndim
    idx[cax] = 1
    x[tuple(idx)] = np.nan
    C = x.shape[cax]
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    others = [c for c in range(C) if c != 1]

    def check(a):
        a = np.moveaxis(a, cax, 0)
        assert np.isnan(a[1]).all() and np.isfinite(a[others]).all()

    y, m, r = nb.batch_norm_forward(x, w, b, None, None, axis=axis, backend="cpu")
    check(y)
    check(nb.batch_norm_backward(dy, x, w, b, m, r, axis=axis, backend="cpu")[0])
    if x.ndim > 2:
        y, m, r = nb.instance_norm_forward(x, w, b, axis=axis, backend="cpu")
        a = np.moveaxis(y, cax, 0)
        assert np.isnan(a[1, 0]).all() and np.isfinite(a[others]).all() and np.isfinite(a[1, 1:]).all()
        dx = np.moveaxis(nb.instance_norm_backward(dy, x, m, r, w, b, axis=axis, backend="cpu")[0], cax, 0)
        assert np.isnan(dx[1, 0]).all() and np.isfinite(dx[others]).all() and np.isfinite(dx[1, 1:]).all()
        y, m, r = nb.group_norm_forward(x, C, w, b, axis=axis, backend="cpu")  # one group per channel
        assert np.isfinite(np.moveaxis(y, cax, 0)[others]).all()


def test_errors_leave_running_stats_untouched(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    bad_calls = [
        dict(momentum=1.5),
        dict(out=np.empty((4, 3, 5), np.float64)),
        dict(out=x),  # overlaps the input
        dict(correction=20),
        dict(variance="kahan"),
    ]
    for kw in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            nb.batch_norm_forward(x, None, None, rm, rv, training=True, backend="cpu", **kw)
        with pytest.raises((ValueError, TypeError)):
            nb.instance_norm_forward(x, None, None, rm, rv, backend="cpu", **kw)
        assert (rm == 0).all() and (rv == 1).all()
    with pytest.raises(ValueError, match="num_groups"):
        nb.group_norm_forward(x, 2, backend="cpu")
    with pytest.raises(ValueError, match="more than 1 value"):
        nb.batch_norm_forward(x[:1, :, :1], None, None, rm, rv, backend="cpu")
    with pytest.raises(ValueError, match="spatial"):
        nb.instance_norm_forward(x[:, :, :1], None, None, rm, rv, backend="cpu")
    assert (rm == 0).all() and (rv == 1).all()


@pytest.mark.parametrize("axis", (1, -1))
def test_out_and_dx_out(rng, axis):
    x = rng.standard_normal(phys((3, 4, 5, 2), axis)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    out, dx_out = np.full_like(x, np.nan), np.full_like(x, np.nan)
    for fwd, bwd in (
        (lambda **k: nb.batch_norm_forward(x, None, None, None, None, axis=axis, backend="cpu", **k),
         lambda o, **k: nb.batch_norm_backward(dy, x, None, None, o[1], o[2], axis=axis, backend="cpu", **k)),
        (lambda **k: nb.group_norm_forward(x, 2, axis=axis, backend="cpu", **k),
         lambda o, **k: nb.group_norm_backward(dy, x, 2, o[1], o[2], axis=axis, backend="cpu", **k)),
        (lambda **k: nb.instance_norm_forward(x, axis=axis, backend="cpu", **k),
         lambda o, **k: nb.instance_norm_backward(dy, x, o[1], o[2], axis=axis, backend="cpu", **k)),
    ):
        ref = fwd()
        o = fwd(out=out)
        assert o[0] is out
        np.testing.assert_array_equal(out, ref[0])
        g = bwd(o, dx_out=dx_out)
        assert g[0] is dx_out
        np.testing.assert_array_equal(dx_out, bwd(ref)[0])
        with pytest.raises(ValueError, match="out"):
            fwd(out=np.empty(x.shape, np.float64))
        with pytest.raises(ValueError, match="dx_out"):
            bwd(o, dx_out=dy)  # overlaps an input
    y = nb.frozen_batch_norm_forward(x, *[np.ones(4, np.float32)] * 4, axis=axis, backend="cpu", out=out)
    assert y is out


# ------------------------------------------------------------------------------------------- PyTorch parity
@pytest.mark.parametrize("shape,axis", [((4, 3, 5, 6), 1), ((4, 3, 5, 6), -1), ((6, 5), 1), ((2, 3, 2, 3, 4), -1)])
def test_torch_parity(rng, shape, axis):
    torch = torch_or_skip()
    TF = torch.nn.functional
    C = shape[1]
    w, b = affine(rng, C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    trm, trv = torch.zeros(C), torch.ones(C)
    irm, irv = np.zeros(C, np.float32), np.ones(C, np.float32)
    tirm, tirv = torch.zeros(C), torch.ones(C)

    def to_torch(a):  # our layout -> torch's logical (N, C, *spatial) tensor
        t = torch.from_numpy(a.copy())
        return t if axis == 1 or a.ndim == 2 else t.permute(0, a.ndim - 1, *range(1, a.ndim - 1))

    def ours(t):
        a = t.detach().numpy()
        return a if axis == 1 or a.ndim == 2 else np.moveaxis(a, 1, -1)

    for step in range(4):
        x = (rng.standard_normal(phys(shape, axis)) * (step + 1) + step).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        xt = to_torch(x).requires_grad_(True)
        wt, bt = torch.from_numpy(w).requires_grad_(True), torch.from_numpy(b).requires_grad_(True)
        yt = TF.batch_norm(xt, trm, trv, wt, bt, training=True, momentum=0.1, eps=1e-5)
        yt.backward(to_torch(dy))
        y, m, r = nb.batch_norm_forward(x, w, b, rm, rv, axis=axis, backend="cpu")
        dx, dw, db = nb.batch_norm_backward(dy, x, w, b, m, r, axis=axis, backend="cpu")
        np.testing.assert_allclose(y, ours(yt), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dx, ours(xt.grad), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5, atol=1e-6)
        if len(shape) > 2:
            xt = to_torch(x).requires_grad_(True)
            yt = TF.instance_norm(xt, tirm, tirv, wt, bt, use_input_stats=True, momentum=0.1, eps=1e-5)
            y, m, r = nb.instance_norm_forward(x, w, b, irm, irv, axis=axis, backend="cpu")
            np.testing.assert_allclose(y, ours(yt), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(irm, tirm.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(irv, tirv.numpy(), rtol=1e-5, atol=1e-6)
            yt.backward(to_torch(dy))
            dx = nb.instance_norm_backward(dy, x, m, r, w, b, axis=axis, backend="cpu")[0]
            np.testing.assert_allclose(dx, ours(xt.grad), rtol=1e-4, atol=1e-4)
            xt = to_torch(x).requires_grad_(True)
            G = C if C % 3 else 3
            yt = TF.group_norm(xt, G, torch.from_numpy(w), torch.from_numpy(b), eps=1e-5)
            yt.backward(to_torch(dy))
            y, m, r = nb.group_norm_forward(x, G, w, b, axis=axis, backend="cpu")
            dx = nb.group_norm_backward(dy, x, G, m, r, w, b, axis=axis, backend="cpu")[0]
            np.testing.assert_allclose(y, ours(yt), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(dx, ours(xt.grad), rtol=1e-4, atol=1e-4)
    # evaluation with the running statistics accumulated above
    x = rng.standard_normal(phys(shape, axis)).astype(np.float32)
    yt = TF.batch_norm(to_torch(x), trm, trv, torch.from_numpy(w), torch.from_numpy(b), training=False, eps=1e-5)
    y = nb.batch_norm_forward(x, w, b, rm, rv, training=False, axis=axis, backend="cpu")[0]
    np.testing.assert_allclose(y, ours(yt), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ streaming stores
# Shapes whose every written segment is a whole number of 64-byte lines (channels-first runs of S values, rows of
# C or C*S columns), so that with the size threshold lowered they take streaming stores: the fused/pipelined and
# split units, channels-last fused and split blocks, short slabs as columns, (N, C) rows, 3d.
STREAM_CASES = [
    ((3, 16, 4, 4), 1),
    ((3, 16, 4, 4), -1),
    ((1, 16, 4, 4), -1),    # one block: channels-last split group norm
    ((4, 1, 16), 1),        # one unit: channels-first split
    ((4, 4, 2, 2), 1),      # short slabs: rows of C*S = 16 columns
    ((8, 16), 1),
    ((2, 16, 2, 4, 4), 1),
    ((3, 16, 20, 20), -1),  # channels-last blocks with whole gangs of row tiles and a partial tile (see above)
]


def _all_channel_ops(x, dy, axis, new, backend="cpu"):
    """Every channel-statistics forward and backward output (y, dx, statistics, dweight, dbias), with out= and
    dx_out= from ``new(shape, dtype)`` (None: let the function allocate)."""
    C = x.shape[1] if axis == 1 else x.shape[-1]
    rng = np.random.default_rng(7)
    w, b = affine(rng, C, x.dtype)
    rm, rv = rng.standard_normal(C).astype(x.dtype), (0.5 + rng.random(C)).astype(x.dtype)
    o = (lambda: None) if new is None else (lambda: new(x.shape, x.dtype))
    kw = dict(axis=axis, backend=backend)
    res = []
    for training in (True, False):
        f = nb.batch_norm_forward(x, w, b, rm.copy(), rv.copy(), training=training, out=o(), **kw)
        g = nb.batch_norm_backward(dy, x, w, b, f[1], f[2], training=training, dx_out=o(), **kw)
        res += [*f, *g]
    res.append(nb.frozen_batch_norm_forward(x, w, b, rm, rv, out=o(), **kw))
    res.append(nb.frozen_batch_norm_backward(dy, w, rv, dx_out=o(), **kw))
    if x.ndim > 2:
        G = C // 4 if C % 4 == 0 else 1
        f = nb.group_norm_forward(x, G, w, b, out=o(), **kw)
        g = nb.group_norm_backward(dy, x, G, f[1], f[2], w, b, dx_out=o(), **kw)
        res += [*f, *g]
        for use in (True, False):
            f = nb.instance_norm_forward(x, w, b, rm.copy(), rv.copy(), use_input_stats=use, out=o(), **kw)
            g = nb.instance_norm_backward(dy, x, f[1], f[2], w, b, use_input_stats=use, dx_out=o(), **kw)
            res += [*f, *g]
    return res


def _misaligned(shape, dtype):
    """An out= array whose data is 4 bytes off a 64-byte line (it must take ordinary stores)."""
    n = int(np.prod(shape))
    return _stream.aligned_empty((n + 1,), dtype)[1:].reshape(shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", STREAM_CASES)
def test_streaming_stores_identical(rng, schedule, monkeypatch, dtype, shape, axis):
    """Streaming stores forced on tiny outputs (threshold 0): results bit-identical to ordinary stores (default
    threshold; and a misaligned out=, which must fall back to ordinary stores) and correct against the reference;
    outputs the kernels allocate are 64-byte aligned."""
    x = (rng.standard_normal(phys(shape, axis)) + 0.5).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    plain = _all_channel_ops(x, dy, axis, _stream.aligned_empty)  # below the threshold: ordinary stores
    ref = _all_channel_ops(x, dy, axis, None, backend="reference")
    calls = []

    def spy(a, *args):
        calls.append(_stream.streamable.__wrapped__(a, *args))
        return calls[-1]

    spy.__wrapped__ = _stream.streamable
    monkeypatch.setattr(_stream, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(_stream, "streamable", spy)
    streamed = _all_channel_ops(x, dy, axis, _stream.aligned_empty)
    assert any(calls), "no sweep took streaming stores"
    calls.clear()
    allocated = _all_channel_ops(x, dy, axis, None)
    assert any(calls)
    calls.clear()
    misaligned = _all_channel_ops(x, dy, axis, _misaligned)
    assert calls and not any(calls)
    for a, s, k, m, r in zip(plain, streamed, allocated, misaligned, ref):
        assert (a is None) == (r is None)
        if a is None:
            continue
        np.testing.assert_array_equal(s, a)
        np.testing.assert_array_equal(k, a)
        np.testing.assert_array_equal(m, a)
        if a.shape == x.shape:  # y, dx: against the reference (a value of O(1) terms, hence the scale)
            assert k.ctypes.data % _stream.ALIGN == 0
            close(s, r, dtype, 64, scale=max(8.0, float(np.abs(r).max())))


@pytest.mark.parametrize("scale, eps", [(1e110, 1e-5), (1e-110, 0.0)])
@pytest.mark.parametrize("eps_placement", ["inside", "outside"])
@pytest.mark.parametrize("shape,axis", [((4, 3, 5, 6), 1), ((4, 5, 6, 4), -1), ((7, 3), 1)])
def test_backward_of_data_at_extreme_scales(rng, schedule, shape, axis, scale, eps, eps_placement):
    """float64 channels whose std is 1e110 (or 1e-110 with eps = 0): the backward's variance term took
    rstd^3, which underflows to 0 (overflows to Inf) there; against the reference (extended precision)."""
    x = rng.standard_normal(shape) * scale
    dy = rng.standard_normal(shape)
    C = shape[axis]
    w, b = affine(rng, C, np.float64)
    kw = dict(axis=axis, eps=eps, eps_placement=eps_placement)

    def ops(backend):
        f = nb.batch_norm_forward(x, w, b, None, None, backend=backend, **kw)
        res = [*f, *nb.batch_norm_backward(dy, x, w, b, f[1], f[2], backend=backend, **kw)]
        if x.ndim > 2:
            f = nb.group_norm_forward(x, 2 if C % 2 == 0 else 1, w, b, backend=backend, **kw)
            res += [*f, *nb.group_norm_backward(dy, x, 2 if C % 2 == 0 else 1, f[1], f[2], w, b, backend=backend,
                                                **kw)]
            f = nb.instance_norm_forward(x, w, b, backend=backend, **kw)
            res += [*f, *nb.instance_norm_backward(dy, x, f[1], f[2], w, b, backend=backend, **kw)]
        return res

    for got, want in zip(ops("cpu"), ops("reference")):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


@pytest.mark.parametrize("axis", (1, -1))
def test_more_than_three_spatial_dims(rng, axis):
    """docs/api.md: any number of spatial dims (PyTorch's functionals take them too); 4 here, against the
    reference, forward and backward."""
    x = rng.standard_normal((3, 4, 2, 3, 2, 2)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    if axis == -1:
        x, dy = np.moveaxis(x, 1, -1).copy(), np.moveaxis(dy, 1, -1).copy()
    for be in ("cpu", "reference"):
        f = nb.batch_norm_forward(x, None, None, None, None, axis=axis, backend=be)
        g = nb.group_norm_forward(x, 2, axis=axis, backend=be)
        i = nb.instance_norm_forward(x, axis=axis, backend=be)
        res = [f[0], nb.batch_norm_backward(dy, x, None, None, f[1], f[2], axis=axis, backend=be)[0],
               g[0], nb.group_norm_backward(dy, x, 2, g[1], g[2], axis=axis, backend=be)[0],
               i[0], nb.instance_norm_backward(dy, x, i[1], i[2], axis=axis, backend=be)[0]]
        if be == "cpu":
            got = res
    for a, r in zip(got, res):
        np.testing.assert_allclose(a, r, rtol=0, atol=4e-6 * np.abs(r).max())


@pytest.mark.parametrize("axis", (1, -1))
def test_an_outlier_first_value_is_not_the_shift(rng, axis):
    """The one-pass shifted sums took each range's first value as the shift; float64 data has no wider accumulator
    to absorb an outlier there (sum((x - shift)^2) dwarfs m2): y was off by 1500 float64 units (batch norm
    channels-last) with one 1e5 first value. The shift is now the middle of the first, middle and last values."""
    x = rng.standard_normal((64, 4, 30))
    x[0, 0, 0] = 1e5
    if axis == -1:
        x = np.moveaxis(x, 1, -1).copy()
    for fn, args in ((nb.batch_norm_forward, (None, None, None, None)), (nb.group_norm_forward, (2,)),
                     (nb.instance_norm_forward, ())):
        got = fn(x, *args, axis=axis, backend="cpu")[0]
        want = fn(x, *args, axis=axis, backend="reference")[0]
        assert np.abs(got - want).max() <= 8 * np.finfo(np.float64).eps * np.abs(want).max(), fn.__name__


# every path that merges partial statistics (_moments.MERGE_NOTE): (variant, physical shape, axis, groups)
MERGE_CASES = [
    ("batch_norm", (6, 3, 4, 6), 1, None),    # channels-first: units of 6 runs (pipelined; fused in serial)
    ("batch_norm", (6, 1, 4, 6), 1, None),    # one unit, fewer than threads: split sub-runs
    ("batch_norm", (6, 3, 4, 2), 1, None),    # short slabs: 8 columns a channel, merged as a group
    ("batch_norm", (40, 7), 1, None),         # (N, C): row chunks
    ("batch_norm", (6, 4, 5, 3), -1, None),   # channels-last: row chunks
    ("group_norm", (3, 4, 5, 8), -1, 2),      # channels-last groups of 4 columns (a block per sample)
    ("group_norm", (1, 4, 5, 8), -1, 2),      # one sample, fewer than threads: row chunks, then columns
]


@pytest.mark.parametrize("variant,shape,axis,G", MERGE_CASES, ids=[f"{v}-{s}-{a}" for v, s, a, _ in MERGE_CASES])
def test_float64_statistics_far_from_zero_keep_their_digits(rng, schedule, variant, shape, axis, G):
    """Float64 channels offset by 1e6 spreads, every kernel path that merges partial moments (runs, row chunks,
    a group's columns), both schedules: rstd within 8 float64 units of the oracle (extended precision) and the mean
    within an ulp of it.  Partial means rounded at 1e6 before their merges put 1.6e3-1.8e5 units into rstd; taken
    relative to a data value of the unit (MERGE_NOTE), about 1, as the CUDA kernels."""
    from normbench import registry
    from normbench.accuracy import oracle

    C = shape[1] if axis == 1 else shape[-1]
    x = 1e6 + rng.standard_normal(shape)
    inputs = dict(x=x, weight=None, bias=None, axis=axis)
    if variant == "batch_norm":
        inputs.update(running_mean=None, running_var=None, training=True)
    else:
        inputs.update(num_groups=G)
    want = oracle.forward(variant, inputs)
    _, mean, r = registry.VARIANTS[variant].run_forward(oracle.fresh(inputs), backend="cpu")
    eps = np.finfo(np.float64).eps
    r_units = np.max(np.abs(r.reshape(-1) - want["rstd"].reshape(-1)) / want["rstd"].reshape(-1)) / eps
    assert r_units <= 8, (r_units, C)
    ulps = np.abs(mean.reshape(-1) - want["mean"].reshape(-1)) / np.spacing(np.abs(mean.reshape(-1)))
    assert np.max(ulps) <= 1
