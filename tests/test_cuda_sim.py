"""CUDA backend: the simulator suite (run in a subprocess), PTX compilation of every kernel for sm_80 and
sm_90 with the real compiler (no GPU needed), the no-GPU error, automatic dispatch and the timing helpers.

Why a subprocess: NUMBA_ENABLE_CUDASIM must be set before numba is first imported, and this process must keep
the real numba.cuda for compile_ptx (the simulator accepts code the real compiler rejects).  The subprocess
also records the argument types of every kernel launch (NORMBENCH_CUDA_SIGNATURES), so the PTX test compiles
each kernel with exactly the types it receives, and fails if a kernel was never exercised in the simulator.
"""
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import normbench as nb
from normbench import registry

ROOT = Path(__file__).resolve().parents[1]
SIM_TESTS = "tests/cuda_sim/sim_kernels.py"
pytestmark = pytest.mark.cudasim


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    sigs = tmp_path_factory.mktemp("cuda") / "signatures.pkl"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NORMBENCH_CUDA_SIGNATURES=str(sigs))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", SIM_TESTS], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    return SimpleNamespace(proc=proc, sigs=sigs)


def test_simulator_suite_passes(sim_run):
    out = sim_run.proc.stdout + sim_run.proc.stderr
    assert sim_run.proc.returncode == 0, out[-6000:]
    assert " passed" in out and "skipped" not in out.splitlines()[-1], out[-2000:]


def _all_kernels():
    """(module, accumulator, name) -> dispatcher of every CUDA kernel (real numba.cuda in this process)."""
    from normbench.cuda import _channels, _rows, lrn

    found = {}
    for mod in (_rows, _channels, lrn):
        for acc in ("float32", "float64"):
            ks = mod.kernels(acc)
            for name, k in vars(ks).items():
                if hasattr(k, "py_func"):
                    found[(ks.module, acc, name)] = k
    return found


def _signatures(sim_run):
    if sim_run.proc.returncode != 0 or not sim_run.sigs.exists():
        pytest.fail("the simulator suite failed or recorded no launches; see test_simulator_suite_passes")
    with open(sim_run.sigs, "rb") as f:
        return pickle.load(f)


def test_every_kernel_ran_in_the_simulator(sim_run):
    sigs = _signatures(sim_run)
    names = {(m, n) for m, _, n in _all_kernels()}
    launched = {(m, n) for m, _, n in sigs}
    assert names - launched == set(), f"kernels never launched in the simulator: {sorted(names - launched)}"
    assert {a for _, a, _ in sigs} == {"float32", "float64"}  # both accumulators exercised


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
def test_every_kernel_compiles_to_ptx(sim_run, cc, monkeypatch):
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher

    sigs = _signatures(sim_run)
    kernels = _all_kernels()
    # device functions are compiled for "the current device"; without a GPU, name the target ourselves
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: SimpleNamespace(compute_capability=cc))
    done = set()
    for (module, acc, name), argtypes in sorted(sigs.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if acc == "float32" and (module, name) in done:
            continue  # one accumulator per kernel for sm_90 keeps the test short; sm_80 compiles both
        if cc == (9, 0):
            done.add((module, name))
        ptx, _ = cuda.compile_ptx(kernels[(module, acc, name)].py_func, argtypes, cc=cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx, (module, acc, name)
        if module.endswith("_rows") and name in ("forward", "backward"):
            assert "shfl.sync" in ptx, f"{module}.{name}: the warp-shuffle reduction was not selected"


class FakeGpuArray:
    """Anything exposing __cuda_array_interface__ (CuPy, torch CUDA tensors) must dispatch to "cuda"."""

    def __init__(self, shape, dtype=np.float32):
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.ndim, self.size = len(shape), int(np.prod(shape))
        self.__cuda_array_interface__ = {"shape": shape, "typestr": self.dtype.str, "data": (0, False),
                                         "version": 3, "strides": None}


def test_automatic_dispatch_picks_cuda_for_cuda_array_interface():
    x = FakeGpuArray((2, 4))
    assert registry.pick_backend(x, None, "layer_norm") == "cuda"
    assert registry.pick_backend(np.ones((2, 4), np.float32), None, "layer_norm") in ("cpu", "reference")


def test_cuda_without_gpu_or_simulator_is_a_clear_error():
    from numba import cuda

    if cuda.is_available():
        pytest.skip("a CUDA GPU is present: the no-GPU error cannot be provoked")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        nb.layer_norm_forward(np.ones((2, 4), np.float32), 4, backend="cuda")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        nb.batch_norm_forward(FakeGpuArray((2, 3)), None, None, None, None)  # dispatched to cuda automatically
    assert "cuda" not in registry.available_backends("layer_norm")


def test_timing_helpers_skip_cleanly_without_gpu():
    from numba import cuda

    from normbench.cuda import timing

    if cuda.is_available():
        assert timing.skip_reason() is None and timing.gpu_name()
        assert timing.median_seconds(lambda: None, repeats=3, warmup=1) >= 0
        return
    reason = timing.skip_reason()
    assert reason and "GPU" in reason
    assert timing.gpu_name() is None and timing.machine_info()["gpu"] == "none"
    with pytest.raises(RuntimeError, match="GPU"):
        timing.median_seconds(lambda: None)
