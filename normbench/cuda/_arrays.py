"""Host/device plumbing shared by the CUDA family modules, and the one place kernels are launched.

Device arrays (numba's, or anything exposing ``__cuda_array_interface__``: CuPy, torch CUDA tensors) stay on
the device and results come back as numba device arrays; NumPy inputs are copied in and the results copied
back into NumPy arrays (timings of NumPy calls on backend="cuda" therefore include the transfers).
"""
from __future__ import annotations

import atexit
import os
import pickle
import threading
import warnings

import numpy as np
from numba import cuda, typeof

try:  # the simulator has neither; the fast launch below is off there
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.errors import normalize_kernel_dimensions
except ImportError:  # pragma: no cover - another numba-cuda layout
    DeviceNDArray = normalize_kernel_dimensions = None

# the per-channel finishing kernels are tiny by design; numba's low-occupancy warning would fire on every call
warnings.filterwarnings("ignore", message="Grid size .* will likely result in GPU under-utilization")



def on_host(a) -> bool:
    return isinstance(a, np.ndarray)


def to_device(a, name="array", dtype=None):
    """A C-contiguous device array for ``a`` (None stays None); ``dtype`` casts host arrays."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))
    if not hasattr(a, "copy_to_host"):  # a foreign __cuda_array_interface__ object: a zero-copy view
        a = cuda.as_cuda_array(a)
    if not a.is_c_contiguous():
        raise ValueError(f"{name} is a non-contiguous device array; pass a C-contiguous one "
                         "(the CUDA kernels assume C order)")
    if dtype is not None and np.dtype(a.dtype) != np.dtype(dtype):
        a = cuda.to_device(a.copy_to_host().astype(dtype))  # rare: e.g. float64 reference outputs
    return a


def flat(a):
    return a.reshape(a.size) if a is not None else None


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def scratch(tag, n, dtype):
    """A device work array of ``n`` values that never reaches the caller (partial sums, coefficients), kept per
    thread, context and ``tag`` (distinct arrays of one call need distinct tags) and reused by later calls: every
    kernel runs on the default stream, in launch order, so a later call's kernels write it only after this call's
    have read it.  A device allocation costs 27-46 us of host time on the H100 hosts measured (docs/gpu.md);
    a backward allocated up to five of these a call.  At most SCRATCH_BYTES are kept per thread (the pool is
    emptied when a new array would pass it); an array larger than a quarter of that is allocated per call (its
    call's kernels take far longer than the allocation)."""
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    if _simulator() or 4 * nbytes > SCRATCH_BYTES:
        return empty(n, dtype)
    pool = getattr(_SCRATCH, "pool", None)
    if pool is None:
        pool = _SCRATCH.pool = {}
    key = (tag, n, dtype.str, id(cuda.current_context()))
    a = pool.get(key)
    if a is None:
        if nbytes + sum(v.nbytes for v in pool.values()) > SCRATCH_BYTES:
            pool.clear()
        a = pool[key] = cuda.device_array(n, dtype=dtype)
    return a


_SCRATCH = threading.local()
SCRATCH_BYTES = 64 << 20


def dummy(dtype):
    """A stand-in for an absent optional array (kernels take a flag; one signature whether it is given or not).
    Kept per dtype and context: never written, and allocating it on every call would cost a cudaMalloc."""
    key = (np.dtype(dtype).str, id(cuda.current_context()) if not _simulator() else 0)
    if key not in _DUMMIES:
        _DUMMIES[key] = cuda.device_array(1, dtype=np.dtype(dtype))
    return _DUMMIES[key]


_DUMMIES: dict = {}


def _simulator():
    from . import simulator

    return simulator()


def output(out, shape, dtype, host, name="out"):
    """The device array a kernel writes into: ``out`` itself when it is a device array, else a new one.  Called
    for every output before the first launch, so a bad device output (``name`` in the message) writes nothing."""
    if out is not None and not on_host(out):
        return to_device(out, name)
    return empty(shape, dtype)


def result(dev, host, out=None):
    """Hand a device result back: into ``out`` (NumPy, copied) or as NumPy when the inputs were NumPy."""
    if out is not None and on_host(out):
        dev.copy_to_host(out)
        return out
    if out is not None:
        return out
    return dev.copy_to_host() if host else dev


def write_back(dev, target):
    """Running statistics updated on the device are copied back into the caller's NumPy buffers.  Assigned
    through NumPy, so a strided (writable) buffer works as on the CPU backend: copy_to_host(target) would reject
    it, after the other buffer had been written."""
    if dev is not None and on_host(target):
        target[...] = dev.copy_to_host()


# ------------------------------------------------------------------------------------------- launching
#: (module, accumulator name, kernel name) -> argument types of a launch; recorded when the environment
#: variable NORMBENCH_CUDA_SIGNATURES names a file (the simulator tests do), so that the PTX test compiles every
#: kernel with the argument types it really receives.
SIGNATURES: dict = {}
_RECORD = os.environ.get("NORMBENCH_CUDA_SIGNATURES")


def launch(kernels, name, grid, block, *args):
    kernel = getattr(kernels, name)
    if _RECORD:
        key = (kernels.module, kernels.acc, name)
        if key not in SIGNATURES:
            SIGNATURES[key] = tuple(typeof(getattr(a, "_ary", a)) for a in args)
    if _FAST["ok"] and not _simulator():
        _fast_launch(kernel, grid, block, args)
    else:
        kernel[grid, block](*args)


# A launch through the dispatcher types every argument (numba's typeof: a fresh device array builds its Array type,
# 10-35 us each, and a call passes several) before it finds the compiled kernel.  The kinds of our arguments
# decide their types (a device array: dtype, ndim, C-contiguity; a scalar: its Python type), so the compiled
# kernel is looked up by them once and launched directly afterwards: 1.2-1.5x less host time a call on the H100
# host (2026-11-23, docs/gpu.md), results identical.  Any failure of the direct launch (another numba-cuda's
# internals) turns it off for the process; the dispatcher then launches as before.  The default stream's object
# is kept per context (as `scratch` and `dummy` key their arrays), for a process that switches between GPUs.
_FAST = {"ok": DeviceNDArray is not None}
_STREAMS: dict = {}
_COMPILED: dict = {}


def _kind(a):
    if isinstance(a, DeviceNDArray):
        return a.dtype, a.ndim, a.is_c_contiguous()
    return type(a)


def _fast_launch(kernel, grid, block, args):
    key = (id(kernel), tuple(map(_kind, args)))
    compiled = _COMPILED.get(key)
    if compiled is None:
        kernel[grid, block](*args)  # compiles if needed
        compiled = kernel.overloads.get(tuple(typeof(a) for a in args))
        if compiled is not None:
            _COMPILED[key] = compiled
        return
    try:
        context = id(cuda.current_context())
        stream = _STREAMS.get(context)
        if stream is None:
            from numba.cuda.cudadrv import driver

            stream = _STREAMS[context] = driver._to_core_stream(0)
        g, b = normalize_kernel_dimensions(grid, block)
        compiled.launch(args, g, b, stream, 0)
    except Exception:  # noqa: BLE001 - an internal API moved: launch as numba documents, from now on
        _FAST["ok"] = False
        kernel[grid, block](*args)


def _dump():
    with open(_RECORD, "wb") as f:
        pickle.dump(SIGNATURES, f)


if _RECORD:
    atexit.register(_dump)
