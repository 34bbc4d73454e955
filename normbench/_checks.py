"""Argument validation shared by every public function: one place, clear messages.

Every check raises before anything is written, so running statistics are never half-updated.
Messages name the argument, the value received and what was expected.
"""
from __future__ import annotations

import math

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_device_array(a) -> bool:
    """True for GPU arrays: anything with ``__cuda_array_interface__`` and numba's (simulated) device arrays."""
    if isinstance(a, np.ndarray):
        return False
    return hasattr(a, "__cuda_array_interface__") or type(a).__name__ in ("DeviceNDArray", "FakeCUDAArray")


def array(name: str, a, *, min_ndim: int = 1, what: str = "") -> np.ndarray:
    """A float32/float64 array (NumPy or device). NumPy inputs are made C-contiguous (one copy if needed)."""
    if type(a) is np.ndarray and a.dtype in FLOAT_DTYPES and a.ndim >= min_ndim and a.flags.c_contiguous:
        return a  # the common call, answered first (small calls are overhead-bound)
    if a is None:
        raise TypeError(f"{name} is None; expected a float32 or float64 array")
    if not is_device_array(a):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} has type {type(a).__name__}; expected a NumPy (or CUDA) array")
        if isinstance(a, (np.matrix, np.ma.MaskedArray)):  # a mask would be ignored; matrix is always 2-D
            raise TypeError(f"{name} has type {type(a).__name__}; expected a plain NumPy array (np.asarray(...))")
    dtype = np.dtype(a.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {dtype}; expected float32 or float64")
    if len(a.shape) < min_ndim:
        raise ValueError(
            f"{name} has shape {tuple(a.shape)} (rank {len(a.shape)}); expected rank >= {min_ndim}"
            + (f" {what}" if what else "")
        )
    if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)  # kernels assume C order; documented one copy
    return a


def same_dtype(name: str, a, ref_name: str, ref) -> None:
    if np.dtype(a.dtype) != np.dtype(ref.dtype):
        raise TypeError(f"{name} has dtype {np.dtype(a.dtype)} but {ref_name} has dtype {np.dtype(ref.dtype)}; "
                        "mixed dtypes are not supported")


def like(name: str, a, ref_name: str, ref):
    """An array with exactly the shape and dtype of ``ref`` (e.g. dy like x)."""
    a = array(name, a, min_ndim=0)
    if tuple(a.shape) != tuple(ref.shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected the shape of {ref_name}, {tuple(ref.shape)}")
    same_dtype(name, a, ref_name, ref)
    return a


def same_shape(name: str, a, ref_name: str, ref):
    """A float array of ``ref``'s shape whose dtype may differ (e.g. float64 outputs of the reference backend
    passed back to a backward); the backend casts it to what it computes in."""
    a = array(name, a, min_ndim=0)
    if tuple(a.shape) != tuple(ref.shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected the shape of {ref_name}, {tuple(ref.shape)}")
    return a


def param(name: str, p, shape: tuple, x, *, required: bool = False, writable: bool = False):
    """An optional per-feature parameter (weight, bias, running statistics) of ``shape`` and x's dtype."""
    if (type(p) is np.ndarray and p.shape == shape and p.dtype == x.dtype and p.flags.c_contiguous
            and (not writable or p.flags.writeable)):
        return p  # the common call, answered first (x's float dtype was checked)
    if p is None:
        if required:
            raise TypeError(f"{name} is None; expected an array of shape {shape}")
        return None
    if not (isinstance(p, np.ndarray) or is_device_array(p)):
        raise TypeError(f"{name} has type {type(p).__name__}; expected an array of shape {shape} or None")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(p.shape)}; expected {tuple(shape)}")
    same_dtype(name, p, "x", x)
    if writable:
        if isinstance(p, np.ndarray) and not p.flags.writeable:
            raise ValueError(f"{name} is read-only; running statistics are updated in place")
        return p
    if type(p) is np.ndarray and p.flags.c_contiguous:
        return p  # what array() returns for it (x's float dtype was checked): skips its repeated checks
    return array(name, p, min_ndim=0)


def stats(name: str, s, shape: tuple):
    """Saved statistics from a forward pass: float arrays of ``shape``; returned as float64 (NumPy) arrays."""
    if s is None:
        raise TypeError(f"{name} is None; expected the {name} returned by the forward pass, shape {shape}")
    if not (isinstance(s, np.ndarray) or is_device_array(s)):
        raise TypeError(f"{name} has type {type(s).__name__}; expected an array of shape {shape}")
    if tuple(s.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(s.shape)}; expected {tuple(shape)}")
    if np.dtype(s.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {np.dtype(s.dtype)}; expected float64 (or float32)")
    if isinstance(s, np.ndarray):
        return np.ascontiguousarray(s, dtype=np.float64)
    return s


def channel_axis(axis, x) -> int:
    """axis=1 (channels-first) or -1 (channels-last); returns the non-negative channel axis."""
    expected = "1 (channels-first, (N, C, *spatial)) or -1 (channels-last, (N, *spatial, C))"
    if integer("axis", axis, expected) not in (1, -1):
        raise ValueError(f"axis={axis!r}; expected {expected}")
    return 1 if axis == 1 else x.ndim - 1


def normalized_shape(value, x) -> tuple:
    """normalized_shape: an int or a tuple of ints equal to x's trailing dimensions."""
    if type(value) is int:  # the common calls, without the generator below (small calls are overhead-bound)
        shape = (value,)
    elif type(value) is tuple and len(value) == 1 and type(value[0]) is int:
        shape = value
    else:
        shape = (value,) if isinstance(value, (int, np.integer)) else value
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__") or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) for d in shape):
            raise TypeError(f"normalized_shape={value!r}; expected an int or a tuple of ints")
        shape = tuple(int(d) for d in shape)
    k = len(shape)
    if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"normalized_shape={shape} does not match the trailing dimensions of x, shape "
                         f"{tuple(x.shape)}")
    if math.prod(shape) == 0:
        raise ValueError(f"normalized_shape={shape} has zero elements; expected a non-empty normalized shape")
    return shape


def momentum(value) -> float:
    m = real("momentum", value, "a real number in [0, 1]")
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum={value!r}; expected a real number in [0, 1] (PyTorch convention: "
                         "running = (1 - momentum) * running + momentum * batch)")
    return m


def positive_int(name: str, value) -> int:
    if integer(name, value, "a positive integer") < 1:
        raise ValueError(f"{name}={value!r}; expected a positive integer")
    return int(value)


def real(name: str, value, expected: str = "a real number") -> float:
    """A real number (int, float, NumPy scalar, 0-d array) as a float; strings and booleans are errors, though
    float() takes them."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise TypeError(f"{name}={value!r}; expected {expected}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}={value!r}; expected {expected}") from None


def integer(name: str, value, expected: str) -> int:
    """An int or NumPy integer (not a bool, not a float such as 1.0): anything else is a TypeError (a value out of
    range is the caller's ValueError), as for PyTorch's integer arguments."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r}; expected {expected}")
    return int(value)


def host_float64(a) -> np.ndarray:
    """A float64 NumPy copy of a host or device array (a foreign ``__cuda_array_interface__`` object included)."""
    if isinstance(a, np.ndarray):
        return np.asarray(a, np.float64).copy()
    if not hasattr(a, "copy_to_host"):
        from numba import cuda

        a = cuda.as_cuda_array(a)
    return a.copy_to_host().astype(np.float64)


def _device_span(a):
    """(first byte, one past the last byte) a device array can touch, from its __cuda_array_interface__ (the
    simulator's arrays have none: their host buffer's __array_interface__ stands in); None when unknown/empty."""
    gpu = getattr(a, "gpu_data", None)  # numba-cuda's arrays: their pointer without building the interface dict
    if gpu is not None and hasattr(gpu, "device_pointer_value") and a.is_c_contiguous():  # (2.6 us a call)
        start = gpu.device_pointer_value
        return (start, start + a.nbytes) if a.size and start is not None else None
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is None and isinstance(getattr(a, "_ary", None), np.ndarray):
        iface = a._ary.__array_interface__
    if not isinstance(iface, dict) or not iface.get("data") or iface["data"][0] is None:
        return None
    shape = tuple(iface["shape"])
    itemsize = np.dtype(iface["typestr"]).itemsize
    if math.prod(shape) == 0:
        return None
    strides = iface.get("strides")
    if strides is None:  # C-contiguous
        strides = tuple(itemsize * math.prod(shape[i + 1:]) for i in range(len(shape)))
    lo = iface["data"][0] + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    hi = iface["data"][0] + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + itemsize
    return lo, hi


def overlaps(a, b, span_a=None) -> bool:
    """Whether two arrays may share memory: np.shares_memory for NumPy arrays, byte extents for device arrays
    (conservative for strided ones), False for a host and a device array. ``span_a``: ``a``'s extent when the
    caller already has it (one output checked against several inputs)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a is not b and a.flags.owndata and b.flags.owndata:
            return False  # two distinct NumPy allocations never overlap (np.shares_memory costs ~0.4 us)
        return bool(np.shares_memory(a, b))
    if a is b:
        return True
    sa, sb = span_a or _device_span(a), _device_span(b)
    return sa is not None and sb is not None and sa[0] < sb[1] and sb[0] < sa[1]


def host_only(backend: str, arrays: dict) -> None:
    """Backends other than "cuda" take NumPy arrays: a device array among ``arrays`` is a clear TypeError (Numba
    would raise "can't unbox array" from inside a kernel, naming nothing)."""
    for name, a in arrays.items():
        if a is not None and type(a) is not np.ndarray and is_device_array(a):
            raise TypeError(f"{name} is a CUDA device array but the call runs on backend {backend!r}, which takes "
                            "NumPy arrays; pass NumPy arrays (.copy_to_host()) or device arrays with "
                            "backend='cuda' (backend=None picks 'cuda' when x is a device array)")


def output(name: str, out, shape: tuple, dtype, inputs: dict):
    """A preallocated output: exact shape and dtype, writable, C-contiguous, sharing memory with no input
    (NumPy and device arrays alike)."""
    if out is None:
        return None
    if not (isinstance(out, np.ndarray) or is_device_array(out)):
        raise TypeError(f"{name} has type {type(out).__name__}; expected an array or None")
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
        raise ValueError(f"{name} has shape {tuple(out.shape)} and dtype {np.dtype(out.dtype)}; expected shape "
                         f"{tuple(shape)} and dtype {np.dtype(dtype)}")
    if isinstance(out, np.ndarray) and not (out.flags.writeable and out.flags.c_contiguous):
        raise ValueError(f"{name} must be a writable C-contiguous array")
    owns = isinstance(out, np.ndarray) and out.flags.owndata
    span = None if isinstance(out, np.ndarray) else _device_span(out)
    for in_name, a in inputs.items():
        if a is None or (owns and a is not out and type(a) is np.ndarray and a.flags.owndata):
            continue  # two distinct NumPy allocations never overlap (inline: small calls are overhead-bound)
        if overlaps(out, a, span):
            raise ValueError(f"{name} shares memory with {in_name}; outputs must not overlap inputs")
    return out


def updated_in_place(updated: dict, inputs: dict) -> None:
    """Arrays a call updates in place (running statistics) overlap neither an input nor each other: the result
    would depend on the order of the writes and reads (the backends' orders differ).  A non-contiguous device
    array is left to the backend's own check (its extent is only a bound: two interleaved columns would look
    alike)."""
    items = [(k, a) for k, a in updated.items() if a is not None and not _strided_device(a)]
    others = [(k, a) for k, a in inputs.items() if a is not None and not _strided_device(a)]
    spans = {id(a): None if isinstance(a, np.ndarray) else _device_span(a) for _, a in items}
    for i, (name, a) in enumerate(items):
        for other, b in items[i + 1:] + others:
            if overlaps(a, b, spans[id(a)]):
                raise ValueError(f"{name} shares memory with {other}; running statistics are updated in place "
                                 "and must not overlap an input or each other")


def distinct_allocations(rm, rv, *others) -> bool:
    """Whether ``rm``, ``rv`` and ``others`` (None skipped) are distinct NumPy arrays each owning its memory,
    which never overlap: the common call's answer to :func:`updated_in_place` (0.2 us; written out, as small
    calls are overhead-bound)."""
    if not (type(rm) is np.ndarray and type(rv) is np.ndarray and rm is not rv and rm.flags.owndata
            and rv.flags.owndata):
        return False
    for a in others:
        if a is not None and (a is rm or a is rv or type(a) is not np.ndarray or not a.flags.owndata):
            return False
    return True


def _strided_device(a) -> bool:
    return not isinstance(a, np.ndarray) and is_device_array(a) and not getattr(a, "is_c_contiguous", lambda: True)()


def flag(name: str, value) -> bool:
    """A bool (or NumPy bool): a string such as "False" or None is an error, as in PyTorch, not a truth value."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name}={value!r}; expected True or False")
