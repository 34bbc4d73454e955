"""What the asv benchmarks and the pytest-benchmark files share: a case's pass as a zero-argument callable,
compiled and with preallocated outputs, on the CPU or (synchronised) on a GPU.

asv imports this directory as a top-level package named ``benchmarks`` and pairs today's files with older
installs of the project, so everything an old commit may lack raises ``NotImplementedError`` (asv then records
the benchmark as skipped for that commit).
"""
from __future__ import annotations

import os

import numpy as np

from normbench import registry

try:
    from normbench.cpu._stream import aligned_empty
except ImportError:  # commits before normbench.cpu._stream (1d2bc18): a plain allocation (touched in Pass)
    aligned_empty = np.empty

from . import cases as _cases


def require_backend(variant: str, backend: str) -> None:
    if variant not in registry.VARIANTS:
        raise NotImplementedError(f"this version has no variant {variant!r}")
    if backend == "cuda":
        try:
            from numba import cuda

            gpu = cuda.is_available() and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0")
        except Exception:  # a broken driver is as good as none
            gpu = False
        if not gpu:
            raise NotImplementedError("no CUDA GPU on this machine")
    if not registry.has_backend(variant, backend):
        raise NotImplementedError(f"backend {backend!r} does not implement {variant} in this version")


def fresh(inputs: dict) -> dict:
    """The same inputs with private copies of the arrays a call may update in place (running statistics)."""
    return {k: v.copy() if k.startswith("running_") and isinstance(v, np.ndarray) else v
            for k, v in inputs.items()}


def _to_device(inputs):
    from numba import cuda

    return {k: cuda.to_device(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


class Pass:
    """One case, backend and pass, ready to call: ``Pass(...)()`` runs it once (outputs preallocated)."""

    def __init__(self, case: _cases.Case, backend: str, pass_: str, seed: int = 0, inputs=None, dy=None):
        """``inputs``/``dy``: the case's arrays when the caller already made them (x is shared, never written;
        the running statistics that a training forward updates are copied)."""
        require_backend(case.variant, backend)
        self.case, self.backend, self.pass_ = case, backend, pass_
        spec = case.spec
        host = case.make_inputs(seed) if inputs is None else fresh(inputs)
        self.nbytes = case.nbytes(pass_, host)
        if dy is None:
            dy = np.random.default_rng(seed + 1).standard_normal(host["x"].shape).astype(case.dtype)
        out_dtype = registry.output_dtype(backend, host["x"])
        if backend == "cuda":
            from numba import cuda

            inputs, dy = _to_device(host), cuda.to_device(dy)
            alloc = lambda: cuda.device_array(host["x"].shape, out_dtype)  # noqa: E731
            self._sync = cuda.synchronize
        else:
            inputs = host
            # touched (no page faults in the timing) and 64-byte aligned like the outputs the CPU kernels
            # allocate themselves, so a preallocated out= times the same (streaming-store) path as a call without it
            def alloc():
                a = aligned_empty(host["x"].shape, out_dtype)
                a.fill(0)
                return a

            self._sync = lambda: None
        kw = {"out": alloc()}
        if case.variant == "fused_add_norm":
            kw["h_out"] = alloc()
        self.inputs, self.dy = inputs, dy
        fwd_out = spec.run_forward(inputs, backend=backend, **kw)  # compiles forward
        if pass_ == "forward":
            self._fn = lambda: spec.run_forward(inputs, backend=backend, **kw)
        else:
            bkw = {"dx_out": alloc()}
            if case.variant == "fused_add_norm":
                bkw["dresidual_out"] = alloc()
            self._fn = lambda: spec.run_backward(inputs, fwd_out, dy, backend=backend, **bkw)
        self()  # compiles (and warms) the timed pass

    def __call__(self):
        result = self._fn()
        self._sync()  # GPU: the timed region ends when the kernels have
        return result


def case_names(full: bool = False, **filters) -> list[str]:
    return [c.name for c in _cases.cases(full=full, **filters)]
