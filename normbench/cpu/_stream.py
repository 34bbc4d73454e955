"""Streaming (non-temporal) stores for large outputs, shared by the row and channel kernels.

An ordinary store to a line that is not in cache first reads the line from memory (read-for-ownership); a
streaming store writes the line without reading it and without displacing cached data.  On this machine that
took a scale-and-store loop over 128 MiB from 12.5 to 24.3 GB/s on one core and from 21 to 39 GB/s on two
(``np.copyto``, whose limit the benchmarks quote, reaches 13.6).  On outputs that stay in cache they are slower
(they evict the result the caller is about to read), hence :data:`STREAM_MIN_BYTES`.

Streaming stores are issued as whole aligned vectors, so they are used only where *every* row (the unit a loop
writes) starts on a 64-byte boundary: the output's data is aligned and a row's byte length is a multiple of 64.
The loops are then the same loops with a different store instruction, so results are bit-for-bit those of
ordinary stores whatever the output's address.  Outputs the kernels allocate come from :func:`aligned_empty`;
an ``out=`` array that is not aligned simply gets ordinary stores.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

ALIGN = 64  # bytes: a cache line
#: outputs at least this large are written with streaming stores (when aligned; see the module docstring)
STREAM_MIN_BYTES = 16 << 20


@intrinsic
def stream(typingctx, arr, idx, val):
    """``arr[idx] = val`` as a non-temporal store declared 32-byte aligned (callers pass views whose data
    starts on an ALIGN boundary and loops from index 0, so the vectorised stores are aligned: an unaligned
    vector streaming store faults)."""
    def codegen(context, builder, sig, args):
        a, i, v = args
        aty = sig.args[0]
        ary = context.make_array(aty)(context, builder, a)
        v = context.cast(builder, v, sig.args[2], aty.dtype)
        st = builder.store(v, builder.gep(ary.data, [i], inbounds=True))
        st.align = 32
        st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(arr, types.intp, val), codegen


@njit(inline="always", cache=True)
def _put(a, j, v, nt):
    """``a[j] = v``, a streaming store when ``nt``.  ``nt`` must reach the loop as a compile-time constant: callers
    holding a run-time flag dispatch ``if nt: f(..., True) else: f(..., False)`` so that each kernel is compiled
    once per store kind (a store chosen at run time inside a loop was merged by LLVM into one store carrying the
    streaming store's alignment, which faulted on unaligned outputs)."""
    if nt:
        stream(a, j, v)
    else:
        a[j] = v


#: float64 values of padding after each per-thread partial buffer that threads update in their hot loops
#: (parameter-gradient and column partial sums): a cache line shared by two threads' buffers bounces between
#: their cores on every update.  One line (8) was not enough, the adjacent-line prefetcher pairs lines: the
#: row backward at D = 128 (2 threads, 4096 rows from cache) took 313 us unpadded, 250 us with 8, 210 with 16,
#: 190 us with 64, as fast as buffers allocated far apart.
PARTIAL_PAD = 64


def _count(shape) -> int:
    """Values in an array of ``shape``: a tuple (math.prod: np.prod costs ~3 us, a small call's whole budget) or
    anything np.empty takes (an int, a NumPy integer, a list)."""
    return math.prod(shape) if type(shape) is tuple else int(np.prod(shape, dtype=np.int64))


def aligned_empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts on an ALIGN boundary (a view into a slightly larger buffer)."""
    dtype = np.dtype(dtype)
    n = _count(shape)
    buf = np.empty(n * dtype.itemsize + ALIGN, np.uint8)
    off = (-buf.ctypes.data) % ALIGN
    return buf[off:off + n * dtype.itemsize].view(dtype).reshape(shape)


def new_output(shape, dtype) -> np.ndarray:
    """A fresh output: aligned (:func:`aligned_empty`) when it is large enough to be streamed, else np.empty."""
    n = _count(shape) * np.dtype(dtype).itemsize
    return aligned_empty(shape, dtype) if n >= STREAM_MIN_BYTES else np.empty(shape, dtype)


def streamable(a, row_values: int, *others) -> bool:
    """Whether rows of ``row_values`` values of ``a`` (and of each array in ``others``, written in the same loop)
    can all take streaming stores: large enough, aligned data, rows a whole number of lines."""
    if a.nbytes < STREAM_MIN_BYTES or (row_values * a.itemsize) % ALIGN:
        return False
    return all(o.ctypes.data % ALIGN == 0 for o in (a, *others))
