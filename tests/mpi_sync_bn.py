"""SyncBatchNorm cases, run on every rank under ``mpiexec -n P python tests/mpi_sync_bn.py``.

Every case builds the *global* batch from a seed shared by all ranks, gives each rank its slice, runs the
distributed functions and measures them against single-process batch norm on the concatenated batch (the
float64 reference backend: an independent truth). Errors are in units of the input dtype's machine epsilon,
relative to the global magnitude of the true output. Each rank's findings are gathered on rank 0, which
prints one line ``NB_RESULTS <json>``; tests/test_distributed.py asserts on it. Importable without mpi4py
(``case_names``) so that pytest can name one test per case.
"""
from __future__ import annotations

import json
import sys

import numpy as np

TOL = 8.0  # eps units: outputs are computed in float64 and rounded once to the output dtype


def _split(counts, rank):
    lo = sum(counts[:rank])
    return slice(lo, lo + counts[rank])


def _err(got, want, scale, dtype):
    """max |got - want| / (eps(dtype) * scale), 0 for empty arrays."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / (np.finfo(dtype).eps * scale))


def _bn_case(comm, counts, rest, *, axis=1, dtype=np.float32, offset=0.0, seed=0, affine=True, running=True,
             training=True, use_out=False, backend="reference", constant_channel=False, pass_comm=True, scale=1.0,
             **numerics):
    """SyncBN on this rank's slice vs single-process batch norm on the concatenation. ``rest`` is x.shape[1:]
    as laid out for ``axis`` (channels last when axis=-1)."""
    import normbench as nb
    from normbench import distributed as dist

    P, rank = comm.size, comm.rank
    assert len(counts) == P
    C = rest[0] if axis == 1 else rest[-1]
    rng = np.random.default_rng(seed)
    xg = (offset + rng.standard_normal((sum(counts), *rest)) * (1 + rng.random(C) if axis == -1 else 1))
    xg = (xg * scale).astype(dtype)
    if constant_channel:  # a dead (all-zero) channel and a constant one: variance exactly 0
        xg[(slice(None), 0) if axis == 1 else (..., 0)] = 0
        xg[(slice(None), 1) if axis == 1 else (..., 1)] = 3
    dyg = rng.standard_normal(xg.shape).astype(dtype)
    w, b = (1 + 0.5 * rng.standard_normal((2, C))).astype(dtype) if affine else (None, None)
    rm0, rv0 = rng.standard_normal(C).astype(dtype), (1 + rng.random(C)).astype(dtype)
    if not affine:
        w = b = None
    sl = _split(counts, rank)
    x, dy = xg[sl], dyg[sl]

    rm_ref, rv_ref = rm0.copy(), rv0.copy()
    args = (rm_ref, rv_ref) if running else (None, None)
    yg, mg, rg = nb.batch_norm_forward(xg, w, b, *args, training=training, axis=axis, backend="reference", **numerics)
    dxg, dwg, dbg = nb.batch_norm_backward(dyg, xg, w, b, mg, rg, training=training, axis=axis, backend="reference",
                                           **numerics)

    rm, rv = rm0.copy(), rv0.copy()
    odtype = np.float64 if backend == "reference" else dtype  # the reference backend returns float64
    out = np.empty(x.shape, odtype) if use_out else None
    kw = {"comm": comm} if pass_comm else {}  # not passed: the default, MPI.COMM_WORLD (comm must be it)
    y, m, r = dist.sync_batch_norm_forward(x, w, b, *((rm, rv) if running else (None, None)), training=training,
                                           axis=axis, out=out, backend=backend, **kw, **numerics)
    dx_out = np.empty(x.shape, odtype) if use_out else None
    dx, dw, db = dist.sync_batch_norm_backward(dy, x, w, b, m, r, training=training, axis=axis,
                                               dx_out=dx_out, backend=backend, **kw, **numerics)
    res = {"output_dtype_ok": y.dtype == odtype and dx.dtype == odtype}
    res.update({
        "y": _err(y, yg[sl], np.abs(yg).max(), dtype),
        "dx": _err(dx, dxg[sl], np.abs(dxg).max(), dtype),
        "save_mean": _err(m * rg, mg * rg, 1.0, dtype),  # in units of the standard deviation
        "save_invstd": _err(r / rg, 1.0, 1.0, dtype),
        "tol": TOL,
    })
    if use_out:
        res["out_used"] = bool(y is out and dx is dx_out)
    if running:
        res["running_mean"] = _err(rm, rm_ref, np.abs(rm_ref).max(), dtype)
        res["running_var"] = _err(rv, rv_ref, np.abs(rv_ref).max(), dtype)
        # every rank (including one with no samples) holds bitwise the same running statistics
        res["running_same_on_all_ranks"] = len(set(comm.allgather(rm.tobytes() + rv.tobytes()))) == 1
    if affine:
        # dweight/dbias are per-rank contributions (PyTorch SyncBN): their sum is the single-process gradient
        res["dweight_sum"] = _err(comm.allreduce(dw.astype(np.float64)), dwg, np.abs(dwg).max(), dtype)
        res["dbias_sum"] = _err(comm.allreduce(db.astype(np.float64)), dbg, np.abs(dbg).max(), dtype)
    else:
        res["no_param_grads"] = dw is None and db is None
    return res


def _offset_case(comm, counts, backend):
    """Offset 1e4: Chan's merge stays exact; the sum-of-squares merge in the input dtype does not."""
    res = _bn_case(comm, counts, (3, 4, 5), offset=1e4, seed=7, backend=backend)
    rng = np.random.default_rng(7)
    xg = (1e4 + rng.standard_normal((sum(counts), 3, 4, 5))).astype(np.float32)
    x = xg[_split(counts, comm.rank)]
    s1 = comm.allreduce(x.sum(axis=(0, 2, 3), dtype=np.float32))  # what naive SyncBN communicates
    s2 = comm.allreduce((x * x).sum(axis=(0, 2, 3), dtype=np.float32))
    n = np.float32(xg.size // 3)
    naive_var = s2 / n - (s1 / n) ** 2
    true_var = xg.astype(np.float64).var(axis=(0, 2, 3))
    res["naive_merge_var_relerr"] = float(np.max(np.abs(naive_var - true_var) / true_var))
    return res


def _expect_error(fn, expect="ValueError"):
    """Run ``fn``; report the exception raised (the case passes when every rank raises ``expect`` with the
    same message; ``expect=None``: no rank raises)."""
    try:
        fn()
    except (ValueError, TypeError) as exc:
        return {"expect": expect, "raised": type(exc).__name__, "message": str(exc)}
    return {"expect": expect, "raised": None, "message": ""}


def _mismatch_case(comm, what):
    from normbench import distributed as dist

    last = comm.rank == comm.size - 1
    C = 4 + (1 if (what == "C" and last) else 0)
    dtype = np.float64 if (what == "dtype" and last) else np.float32
    x = np.random.default_rng(comm.rank).standard_normal((3, C, 5)).astype(dtype)
    w = np.ones(C + (1 if (what == "weight" and last) else 0), dtype)
    # backend="reference": a float64 CPU kernel compiled for one rank's local moments would dominate run time
    res = _expect_error(lambda: dist.sync_batch_norm_forward(x, w, None, np.zeros(C, dtype), np.ones(C, dtype),
                                                             comm=comm, backend="reference"))
    if what == "option":  # backward with a different eps placement on the last rank
        x = x.astype(np.float32)
        res = _expect_error(lambda: dist.sync_batch_norm_backward(
            x, x, None, None, np.zeros(C), np.ones(C), comm=comm, backend="reference",
            eps_placement="outside" if last else "inside"))
    res["must_mention"] = {"C": "disagree on C", "dtype": "disagree on dtype", "weight": "weight has shape (5,)",
                           "option": "disagree on numerics"}[what]
    return res


def _population_mismatch_case(comm):
    """PopulationStats of different widths: the message names this call's fields (it named SyncBN's, sample shape
    and axis among them, which a PopulationStats has not)."""
    import normbench as nb
    from normbench import distributed as dist

    stats = nb.PopulationStats(4 + (comm.rank == comm.size - 1))
    res = _expect_error(lambda: dist.allreduce_population_stats(stats, comm=comm))
    res["must_mention"] = "disagree on num_features"
    res["names_its_own_fields"] = "the same num_features, weighting" in res["message"]
    return res


def _global_count_case(comm, counts, expect):
    """(N, C) input: "more than one value per channel" is judged on the global count."""
    from normbench import distributed as dist

    x = np.random.default_rng(comm.rank).standard_normal((counts[comm.rank], 3)).astype(np.float32)
    res = _expect_error(lambda: dist.sync_batch_norm_forward(x, None, None, np.zeros(3, np.float32),
                                                             np.ones(3, np.float32), comm=comm), expect)
    res["must_mention"] = "more than 1 value per channel" if expect else ""
    return res


def _bad_comm_case():
    from normbench import distributed as dist

    x = np.ones((2, 3), np.float32)
    res = _expect_error(lambda: dist.sync_batch_norm_forward(x, None, None, None, None, comm="world"), "TypeError")
    res["must_mention"] = "comm has type str"
    return res


def _mixed_calls_case(comm, other):
    """Rank 0 calls sync_batch_norm_backward (or allreduce_population_stats) while the others call the forward
    in the same step: every rank raises the same error naming the functions (the gathered payloads would
    otherwise be merged as the wrong kind of data)."""
    import normbench as nb
    from normbench import distributed as dist

    x = np.random.default_rng(comm.rank).standard_normal((3, 4, 5)).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    if comm.rank == 0 and other == "backward":
        fn = lambda: dist.sync_batch_norm_backward(x, x, None, None, np.zeros(4), np.ones(4), comm=comm,  # noqa
                                                   backend="reference")
    elif comm.rank == 0:
        fn = lambda: dist.allreduce_population_stats(nb.PopulationStats(4), comm=comm)  # noqa: E731
    else:
        fn = lambda: dist.sync_batch_norm_forward(x, None, None, rm, rv, comm=comm, backend="reference")  # noqa
    res = _expect_error(fn)
    res["must_mention"] = "ranks called different collective functions"
    res["running_untouched"] = bool(np.all(rm == 0) and np.all(rv == 1))
    return res


def _eval_nonfinite_case(comm, axis):
    """Evaluation backward: dx = dy * weight * invstd does not read x, so an Inf or NaN in x leaves dx finite
    (single-process batch norm on the concatenation gives the same)."""
    import normbench as nb
    from normbench import distributed as dist

    counts = [2] * comm.size
    rest = (3, 4) if axis == 1 else (4, 3)
    rng = np.random.default_rng(22)
    xg = rng.standard_normal((sum(counts), *rest)).astype(np.float32)
    xg[0, 1, 0], xg[-1, 0, 1] = np.inf, np.nan
    dyg = rng.standard_normal(xg.shape).astype(np.float32)
    w = (1 + rng.random(3)).astype(np.float32)
    rm, rv = rng.standard_normal(3).astype(np.float32), (1 + rng.random(3)).astype(np.float32)
    _, mg, rg = nb.batch_norm_forward(xg, w, None, rm, rv, training=False, axis=axis, backend="reference")
    dxg, _, _ = nb.batch_norm_backward(dyg, xg, w, None, mg, rg, training=False, axis=axis, backend="reference")
    sl = _split(counts, comm.rank)
    _, m, r = dist.sync_batch_norm_forward(xg[sl], w, None, rm, rv, training=False, axis=axis, comm=comm)
    dx, _, _ = dist.sync_batch_norm_backward(dyg[sl], xg[sl], w, None, m, r, training=False, axis=axis, comm=comm)
    return {"dx_finite": bool(np.isfinite(dx).all()), "dx": _err(dx, dxg[sl], np.abs(dxg).max(), np.float32),
            "tol": TOL}


def _eps_zero_constant_channel_case(comm, eps_placement):
    """eps = 0 on a channel constant over every rank: rstd = inf, so y and dx are NaN in that channel on every
    rank (as single-process batch norm), finite and equal to it elsewhere."""
    import normbench as nb
    from normbench import distributed as dist

    counts = [2] * comm.size
    rng = np.random.default_rng(23)
    xg = rng.standard_normal((sum(counts), 3, 4))
    xg[:, 1] = 0.5
    dyg = rng.standard_normal(xg.shape)
    kw = dict(eps=0.0, eps_placement=eps_placement)
    with np.errstate(all="ignore"):
        _, mg, rg = nb.batch_norm_forward(xg, None, None, None, None, backend="reference", **kw)
        dxg = nb.batch_norm_backward(dyg, xg, None, None, mg, rg, backend="reference", **kw)[0]
        sl = _split(counts, comm.rank)
        y, m, r = dist.sync_batch_norm_forward(xg[sl], None, None, None, None, comm=comm, **kw)
        dx = dist.sync_batch_norm_backward(dyg[sl], xg[sl], None, None, m, r, comm=comm, **kw)[0]
    rest = [0, 2]
    return {"y_nan_in_the_channel": bool(np.isnan(y[:, 1]).all()),
            "dx_nan_in_the_channel": bool(np.isnan(dx[:, 1]).all()),
            "finite_elsewhere": bool(np.isfinite(y[:, rest]).all() and np.isfinite(dx[:, rest]).all()),
            "dx": _err(dx[:, rest], dxg[sl][:, rest], np.abs(dxg[:, rest]).max(), np.float64), "tol": TOL}


def _empty_global_batch_case(comm):
    """Every rank empty: empty outputs, running statistics untouched and parameter gradients 0 (single-process
    batch norm on the empty concatenation), not 0 * the NaN saved invstd."""
    from normbench import distributed as dist

    x = np.zeros((0, 3, 4), np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, m, r = dist.sync_batch_norm_forward(x, w, b, rm, rv, comm=comm)
    dx, dw, db = dist.sync_batch_norm_backward(x, x, w, b, m, r, comm=comm)
    return {"empty_outputs": y.shape == x.shape and dx.shape == x.shape,
            "running_untouched": bool(np.all(rm == 0) and np.all(rv == 1)),
            "param_grads_zero": bool(np.all(dw == 0) and np.all(db == 0)), "tol": TOL}


def _zero_channels_case(comm):
    """C = 0: empty outputs, as single-process batch norm (not a num_features error)."""
    from normbench import distributed as dist

    x = np.zeros((2, 0, 4), np.float32)
    y, m, r = dist.sync_batch_norm_forward(x, None, None, None, None, comm=comm)
    dx, _, _ = dist.sync_batch_norm_backward(x, x, None, None, m, r, comm=comm)
    return {"empty_outputs": y.shape == x.shape and dx.shape == x.shape and m.shape == r.shape == (0,), "tol": TOL}


def _subcomm_case(comm):
    """Ranks 0 and 1 form one group, rank 2 another: statistics never cross groups."""
    sub = comm.Split(0 if comm.rank < 2 else 1, key=comm.rank)
    try:
        if comm.rank < 2:
            res = _bn_case(sub, [3, 2], (3, 4), seed=11)
        else:
            res = _bn_case(sub, [4], (3, 4), seed=12)
        res["group_size"] = sub.size
        return res
    finally:
        sub.Free()


def _precise_bn_case(comm, weighting):
    """Distributed PreciseBN: every rank accumulates its own batches (sizes differ, one is empty), then the
    cross-rank merge equals the statistics of all batches of all ranks, computed directly."""
    import normbench as nb
    from normbench import distributed as dist

    rng = np.random.default_rng(3)
    C = 3
    sizes = [(0,) if rank == 1 else (rank % 3 + 1, 0, 2 + rank) for rank in range(comm.size)]  # rank 1: none
    batches = [[(5 + rng.standard_normal((k, C, 4)) * 2).astype(np.float32) for k in ks] for ks in sizes]
    stats = nb.PopulationStats(C, weighting=weighting)
    for xb in batches[comm.rank]:
        stats.update(xb, axis=1)
    before = (stats.count, stats.mean.copy())
    merged = dist.allreduce_population_stats(stats, comm=comm)
    every = [xb.astype(np.float64) for per_rank in batches for xb in per_rank if xb.shape[0]]
    if weighting == "samples":
        cat = np.concatenate(every)
        mean, var = cat.mean(axis=(0, 2)), cat.var(axis=(0, 2), ddof=1)
        correction = 1
    else:
        mus = np.array([xb.mean(axis=(0, 2)) for xb in every])
        vs = np.array([xb.var(axis=(0, 2)) for xb in every])
        mean = mus.mean(0)
        var = (mus ** 2 + vs).mean(0) - mean ** 2
        correction = 0
    scale = np.sqrt(var)
    return {
        "mean": _err(merged.mean / scale, mean / scale, 1.0, np.float64),
        "var": _err(merged.var(correction) / var, 1.0, 1.0, np.float64),
        "tol": 64.0,
        "count": merged.count == sum(xb.size // C for xb in every),
        "input_unchanged": stats.count == before[0] and np.array_equal(stats.mean, before[1], equal_nan=True),
        "same_on_all_ranks": len(set(comm.allgather(merged.mean.tobytes() + merged.var().tobytes()))) == 1,
    }


def cases(P):
    """name -> fn(comm) for a world of P ranks. ``counts`` are samples per rank. Cases named cpu_* use the
    CPU kernels' channel_moments and return x's dtype (float32); the others use the reference's moments
    (float64 outputs), which keeps a cold test run from compiling every CPU kernel layout and dtype."""
    even = [2] * P
    uneven = [1, 4, 2, 3][:P]
    zero = [3, 0, 4, 1][:P] if P > 2 else [0, 5]
    c = {
        "cpu_even_2d": lambda comm: _bn_case(comm, even, (3, 4, 5), backend=None),
        "cpu_zero_sample_rank": lambda comm: _bn_case(comm, zero, (3, 4, 5), seed=2, backend=None),
        "cpu_channels_last_2d": lambda comm: _bn_case(comm, uneven, (4, 5, 3), axis=-1, seed=3, backend=None),
        "cpu_one_sample_per_rank_NC": lambda comm: _bn_case(comm, [1] * P, (5,), seed=5, backend=None),
        "cpu_offset_1e4": lambda comm: _offset_case(comm, uneven, None),
        "cpu_out_and_dx_out": lambda comm: _bn_case(comm, even, (3, 6), seed=16, use_out=True, backend=None),
        "cpu_constant_channels": lambda comm: _bn_case(comm, uneven, (3, 4, 5), seed=19, constant_channel=True,
                                                       backend=None),
        "constant_channels_eps_outside": lambda comm: _bn_case(comm, zero, (4, 3), axis=-1, seed=20,
                                                               constant_channel=True, eps_placement="outside"),
        "cpu_eval_mode": lambda comm: _bn_case(comm, uneven, (3, 6), seed=15, training=False, backend=None),
        "uneven_2d": lambda comm: _bn_case(comm, uneven, (3, 4, 5), seed=1),
        "zero_sample_rank": lambda comm: _bn_case(comm, zero, (3, 4, 5), seed=2),
        "channels_last_zero_rank": lambda comm: _bn_case(comm, zero, (4, 3), axis=-1, seed=4),
        "plain_NC": lambda comm: _bn_case(comm, uneven, (5,), seed=5),
        "1d": lambda comm: _bn_case(comm, uneven, (3, 7), seed=6),
        "1d_channels_last": lambda comm: _bn_case(comm, zero, (7, 3), axis=-1, seed=6),
        "3d": lambda comm: _bn_case(comm, zero, (2, 2, 3, 2), seed=8),
        "3d_channels_last": lambda comm: _bn_case(comm, even, (2, 3, 2, 3), axis=-1, seed=9),
        "float64": lambda comm: _bn_case(comm, uneven, (3, 4, 5), dtype=np.float64, seed=10),
        "offset_1e4": lambda comm: _offset_case(comm, uneven, "reference"),
        # std 1e110: the backward's rstd^3 underflowed to 0 and dx lost its variance term
        "float64_std_1e110": lambda comm: _bn_case(comm, uneven, (3, 4, 5), dtype=np.float64, seed=22, scale=1e110),
        "eps_outside_correction_1": lambda comm: _bn_case(comm, uneven, (3, 6), seed=13, eps_placement="outside",
                                                          correction=1),
        "no_affine_no_running": lambda comm: _bn_case(comm, zero, (3, 6), seed=14, affine=False, running=False),
        "eval_mode": lambda comm: _bn_case(comm, uneven, (3, 6), seed=15, training=False),
        "mismatched_C": lambda comm: _mismatch_case(comm, "C"),
        "mismatched_dtype": lambda comm: _mismatch_case(comm, "dtype"),
        "bad_weight_on_one_rank": lambda comm: _mismatch_case(comm, "weight"),
        "mismatched_option_backward": lambda comm: _mismatch_case(comm, "option"),
        "mismatched_population_num_features": _population_mismatch_case,
        "one_value_per_channel_globally": lambda comm: _global_count_case(comm, [1] + [0] * (P - 1), "ValueError"),
        "one_value_per_rank_is_fine": lambda comm: _global_count_case(comm, [1] * P, None),
        "comm_not_a_communicator": lambda comm: _bad_comm_case(),
        "backward_on_one_rank_forward_on_others": lambda comm: _mixed_calls_case(comm, "backward"),
        "precise_bn_on_one_rank_forward_on_others": lambda comm: _mixed_calls_case(comm, "population"),
        "eval_backward_nonfinite_x": lambda comm: _eval_nonfinite_case(comm, 1),
        "eval_backward_nonfinite_x_channels_last": lambda comm: _eval_nonfinite_case(comm, -1),
        "eps_zero_constant_channel_inside": lambda comm: _eps_zero_constant_channel_case(comm, "inside"),
        "eps_zero_constant_channel_outside": lambda comm: _eps_zero_constant_channel_case(comm, "outside"),
        "empty_global_batch": _empty_global_batch_case,
        "zero_channels": _zero_channels_case,
        "precise_bn_samples": lambda comm: _precise_bn_case(comm, "samples"),
        "precise_bn_batches": lambda comm: _precise_bn_case(comm, "batches"),
        "default_comm_is_world": lambda comm: _bn_case(comm, uneven, (3, 5), seed=21, pass_comm=False),
        "after_errors_still_in_step": lambda comm: _bn_case(comm, uneven, (3, 4), seed=18),
    }
    if P == 3:
        c["subcomm_2_of_3"] = _subcomm_case
    return c


def _warm_up(comm):
    for shape, axis, dtype, backend in [((2, 3, 4, 5), 1, np.float32, None), ((2, 4, 3), -1, np.float32, None),
                                        ((2, 3, 4), 1, np.float64, "reference")]:
        _bn_case(comm, [2], shape[1:], axis=axis, dtype=dtype, backend=backend)


def case_names(P):
    return list(cases(P))


def main():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    # compile (or load) every kernel on rank 0 first, alone: the other ranks then load the on-disk cache
    # instead of all compiling the same kernels at once on a shared machine
    if comm.rank == 0:
        _warm_up(MPI.COMM_SELF)
    comm.Barrier()
    if comm.rank != 0:
        _warm_up(MPI.COMM_SELF)
    report = []
    for name, fn in cases(comm.size).items():
        try:
            local = {"ok": True, **fn(comm)}
        except Exception as exc:  # reported, not raised: the remaining cases still run
            local = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        gathered = comm.gather(local, root=0)
        if comm.rank == 0:
            report.append({"case": name, "ranks": gathered})
    if comm.rank == 0:
        print("NB_RESULTS " + json.dumps(report), flush=True)


if __name__ == "__main__":
    sys.exit(main())
