"""Block-level reductions shared by every CUDA kernel, and the variance algorithms as device functions.

A block is seen as ``groups`` of ``lanes``: lane ``l`` of group ``g`` uses shared slot ``g * lanes + l``.
Row kernels use one group (lanes = every thread); channels-last kernels put channels along x (groups) and
the values of one channel along y (lanes).  Reductions are trees over shared memory in a fixed order, so
results are deterministic (no float atomics).  Every thread of the block must call them (they synchronise).

The simulator has no warp shuffles: :func:`row_sum2` (the row kernels' hot reduction) has a warp-shuffle
version chosen at import on real hardware and the shared-memory tree as its simulator twin; both share the
tree code.  Everything is float64 once per-thread partials are formed.
"""
from __future__ import annotations

import math

from numba import cuda, float32, float64

from . import simulator

TWO_PASS, WELFORD, NAIVE, SHIFTED = 0, 1, 2, 3  # numerics.VARIANCE_CODE


@cuda.jit(device=True, inline=True)
def cursor(j, inner, step):
    """Walk the values j, j+step, ... of a segment whose value j lies at ``base + a * outer + b`` with
    (a, b) = divmod(j, inner) (runs of ``inner`` contiguous values, ``outer`` apart; outer = 0 and inner >= the
    count: one contiguous run).  Returns the start (a, b) and the per-step increments: one divide per thread,
    none per element (see :func:`advance`)."""
    if j < inner and step < inner:  # rows and channel runs longer than the step: no 64-bit divisions
        return 0, j, 0, step
    return j // inner, j % inner, step // inner, step % inner


@cuda.jit(device=True, inline=True)
def advance(a, b, da, db, inner):
    b += db
    a += da
    if b >= inner:
        b -= inner
        a += 1
    return a, b


@cuda.jit(device=True, inline=True)
def chan(na, ma, qa, nb, mb, qb):
    """Chan et al.'s merge of two (count, mean, M2) summaries (float64)."""
    if nb == 0.0:
        return na, ma, qa
    if na == 0.0:
        return nb, mb, qb
    n = na + nb
    if not (abs(ma) < math.inf and abs(mb) < math.inf):  # Inf or NaN: IEEE's sum, as cpu/_moments.chan_merge
        return n, ma + mb, math.nan
    d = mb - ma
    return n, ma + d * (nb / n), qa + qb + d * d * (na * nb / n)


@cuda.jit(device=True)
def group_moments(sn, sm, sq, g, lanes, l, n, m, q):
    """Merge per-thread (n, mean, M2) over the lanes of group g; every thread gets the group's total."""
    i = g * lanes + l
    sn[i] = n
    sm[i] = m
    sq[i] = q
    cuda.syncthreads()
    s = 1
    while s < lanes:
        if (l & (2 * s - 1)) == 0 and l + s < lanes:  # l % (2s): s is a power of two (no 64-bit modulo)
            a, b, c = chan(sn[i], sm[i], sq[i], sn[i + s], sm[i + s], sq[i + s])
            sn[i] = a
            sm[i] = b
            sq[i] = c
        cuda.syncthreads()
        s *= 2
    i0 = g * lanes
    n, m, q = sn[i0], sm[i0], sq[i0]
    cuda.syncthreads()  # the buffers may be reused right after
    return n, m, q


@cuda.jit(device=True)
def group_sum2(sa, sb, g, lanes, l, a, b):
    """Sums of two float64 values over the lanes of group g (tree over shared memory)."""
    i = g * lanes + l
    sa[i] = a
    sb[i] = b
    cuda.syncthreads()
    s = 1
    while s < lanes:
        if (l & (2 * s - 1)) == 0 and l + s < lanes:  # l % (2s): s is a power of two (no 64-bit modulo)
            sa[i] += sa[i + s]
            sb[i] += sb[i + s]
        cuda.syncthreads()
        s *= 2
    i0 = g * lanes
    a, b = sa[i0], sb[i0]
    cuda.syncthreads()
    return a, b


@cuda.jit(device=True)
def _row_sum2_shfl(sa, sb, a, b):
    """Warp shuffles within each warp, then the shared tree over the warps' partials (blockDim.x % 32 == 0)."""
    off = 16
    while off > 0:
        a += cuda.shfl_down_sync(0xFFFFFFFF, a, off)
        b += cuda.shfl_down_sync(0xFFFFFFFF, b, off)
        off //= 2
    t = cuda.threadIdx.x
    warps = cuda.blockDim.x // 32
    if t % 32 == 0:  # lane 0 of each warp holds its warp's sum: compact them to slots 0..warps-1
        sa[t // 32] = a
        sb[t // 32] = b
    cuda.syncthreads()
    a = float64(0.0)
    b = float64(0.0)
    if t < warps:
        a = sa[t]
        b = sb[t]
    cuda.syncthreads()
    return group_sum2(sa, sb, 0, warps, t, a, b)  # lanes >= warps take part in the barriers only


@cuda.jit(device=True)
def _row_sum2_tree(sa, sb, a, b):
    return group_sum2(sa, sb, 0, cuda.blockDim.x, cuda.threadIdx.x, a, b)


#: sums of two float64 values over a 1-D block; the shuffle path on hardware, the tree in the simulator
row_sum2 = _row_sum2_tree if simulator() else _row_sum2_shfl


@cuda.jit(device=True, inline=True)
def seg_shift(x, base, inner, outer, n):
    """The shifted sums' shift of a segment of ``n`` values laid out as :func:`cursor` says: the middle one of its
    values 0, n // 2 and n - 1, as the CPU kernels take it (cpu/_moments.shift3; :func:`effective_shift` maps a
    non-finite one to 0).  The same for every thread and block of the segment."""
    jm = n // 2
    jl = n - 1
    a = x[base]
    if n <= inner:  # one contiguous run (rows): no divisions
        b = x[base + jm]
        c = x[base + jl]
    else:
        b = x[base + (jm // inner) * outer + jm % inner]
        c = x[base + (jl // inner) * outer + jl % inner]
    return max(min(a, b), min(max(a, b), c))


@cuda.jit(device=True, inline=True)
def effective_shift(algo, shift):
    """The value a segment's moments are taken about (float64): its shift (:func:`seg_shift`) for every algorithm
    but naive (0), and 0 for a non-finite shift (cpu/_moments.finite_shift).  Callers pass the shift rounded to the
    accumulator (``acc(...)``: float64 data beyond float32's range round to Inf there, and take 0 as the CPU's do),
    give the result to thread_moments, then add it back to the merged mean."""
    if algo == NAIVE or not abs(shift) < math.inf:
        return float64(0.0)
    return float64(shift)


def make_thread_moments(acc):
    """Per-thread (n, mean - k0, M2) of the values ``j = j0, j0+step, ... < j1`` of a segment with algorithm
    ``algo``, accumulated in ``acc`` (float32 or float64) and returned in float64.  ``k0`` is the segment's
    :func:`effective_shift` (the same for every thread and block of a segment, representable in ``acc``): the
    shifted (and naive, k0 = 0) sums are taken about it, and every algorithm returns its mean relative to it, so
    that the merges (Chan's formula over threads and blocks) add no rounding at the offset's magnitude.  For the
    shifted default that keeps float64 data far from 0 exact to about an ulp: merging absolute means had cost rstd
    2e4-1e5 float64 units at an offset of 1e6 spreads (H100 and simulator; the CPU's row and group kernels have
    about 1 there, its batch norm 2e4).  Two-pass and Welford form an absolute per-thread mean first, as their
    definitions do, so their rounding at the offset stays (about 7e4 units there, as on the CPU)."""

    @cuda.jit(device=True)
    def thread_moments(x, base, inner, outer, j0, j1, step, algo, k0):
        zero = acc(0.0)
        if j0 >= j1:
            return float64(0.0), float64(0.0), float64(0.0)
        cnt = acc((j1 - j0 + step - 1) // step)
        a0, b0, da, db = cursor(j0, inner, step)
        if algo == TWO_PASS:
            s = zero
            a, b, j = a0, b0, j0
            while j < j1:
                s += acc(x[base + a * outer + b])
                a, b = advance(a, b, da, db, inner)
                j += step
            mean = s / cnt
            q = zero
            a, b, j = a0, b0, j0
            while j < j1:
                d = acc(x[base + a * outer + b]) - mean
                q += d * d
                a, b = advance(a, b, da, db, inner)
                j += step
            return float64(cnt), float64(mean) - k0, float64(q)
        if algo == WELFORD:
            k = zero
            mean = zero
            q = zero
            a, b, j = a0, b0, j0
            while j < j1:
                v = acc(x[base + a * outer + b])
                a, b = advance(a, b, da, db, inner)
                j += step
                k += acc(1.0)
                if abs(v) < math.inf and abs(mean) < math.inf:
                    d = v - mean
                    mean += d / k
                    q += d * (v - mean)
                else:  # an Inf or NaN: IEEE's sum, m2 NaN (chan's rule)
                    mean = mean + v
                    q = acc(math.nan)
            return float64(cnt), float64(mean) - k0, float64(q)
        ka = acc(k0)
        s = zero
        s2 = zero
        a, b, j = a0, b0, j0
        while j < j1:  # not range(j0, j1, step): its trip count costs a 64-bit division
            d = acc(x[base + a * outer + b]) - ka
            a, b = advance(a, b, da, db, inner)
            j += step
            s += d
            s2 += d * d
        q = s2 - s * (s / cnt)
        if q < zero:  # cancellation; NaN stays NaN
            q = zero
        return float64(cnt), float64(s / cnt), float64(q)

    return thread_moments


# module-level so that kernels reach them as globals: a dispatcher captured in a closure would change the
# on-disk cache key in every session (numba/numba#6264)
thread_moments32 = make_thread_moments(float32)
thread_moments64 = make_thread_moments(float64)


@cuda.jit(device=True, inline=True)
def rstd_from_m2(m2, n, correction, eps, eps_code):
    """1/sqrt(var + eps) (eps_code 0) or 1/(sqrt(var) + eps) (1), var = m2/(n - correction), float64."""
    var = m2 / float64(n - correction)
    # float64(...): a no-op on the GPU; in the simulator it keeps NumPy's 1/0 = inf (eps = 0, var = 0) where
    # Python's float would raise ZeroDivisionError
    if eps_code == 0:
        return 1.0 / float64(math.sqrt(var + eps))
    return 1.0 / float64(math.sqrt(var) + eps)


@cuda.jit(device=True, inline=True)
def drstd_factor(r, s, n, correction, eps, eps_code):
    """The coefficient k of xc in dx = r*(g - mean g) + k*xc, from r and s = sum(g*xc) (see reference/_stats.py):
    k = r'(var) * 2/(n-c) * s with r' = -r^3/2 (eps inside) or -r^2/(2 sqrt var) (outside; 0 where var = 0)."""
    if eps_code == 0:
        return -(s / float64(n - correction)) * r * r * r  # in this order: r^3 alone under/overflows (cpu/_rows.py)
    sd = 1.0 / r - eps
    if sd > 0.0:
        return -(s / (sd * float64(n - correction))) * r * r
    return float64(0.0) * r  # NaN where r = inf (eps = 0; cpu/_rows.py)
