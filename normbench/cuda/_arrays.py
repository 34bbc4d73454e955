"""Host/device plumbing shared by the CUDA family modules, and the one place kernels are launched.

Device arrays (numba's, or anything exposing ``__cuda_array_interface__``: CuPy, torch CUDA tensors) stay on
the device and results come back as numba device arrays; NumPy inputs are copied in and the results copied
back into NumPy arrays (timings of NumPy calls on backend="cuda" therefore include the transfers).
"""
from __future__ import annotations

import atexit
import os
import pickle
import warnings

import numpy as np
from numba import cuda

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
        from numba import typeof

        key = (kernels.module, kernels.acc, name)
        if key not in SIGNATURES:
            SIGNATURES[key] = tuple(typeof(getattr(a, "_ary", a)) for a in args)
    kernel[grid, block](*args)


def _dump():
    with open(_RECORD, "wb") as f:
        pickle.dump(SIGNATURES, f)


if _RECORD:
    atexit.register(_dump)
