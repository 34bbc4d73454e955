"""pytest-benchmark: normbench's kernels side by side with the peers, on the case matrix (cases.py).

``make test`` runs these with ``--benchmark-disable`` (pyproject's addopts): each implementation is then called
once on the small (latency-bound) cases and checked against the float64 reference.  ``make compare`` runs the
quick matrix for real and saves JSON under results/pytest/.
"""
import os
import platform

import pytest


def pytest_configure(config):
    """Timed runs (``make compare``): the peers' fresh outputs reuse freed memory, as normbench's preallocated
    ``out=`` buffers are reused (no page faults charged to one side only: normbench.bandwidth)."""
    if config.getoption("benchmark_enable", False) or not config.getoption("benchmark_disable", False):
        from normbench import bandwidth

        bandwidth.reuse_freed_memory()


def pytest_benchmark_update_machine_info(config, machine_info):
    """Machine tag, CPU model, LLVM target and caches, numba / llvm versions, thread counts and GPU, so saved runs
    say what they ran on."""
    import llvmlite
    import llvmlite.binding
    import numba
    import numpy

    from normbench import bandwidth, machine

    nb = {"machine": machine.tag(), **machine.cpu_info(), "numba": numba.__version__,
          "llvmlite": llvmlite.__version__, "llvm": ".".join(map(str, llvmlite.binding.llvm_version_info)),
          "numba_threads": numba.get_num_threads(), "numpy": numpy.__version__,
          "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS"), "node": platform.node(),
          "freed_memory_reused": bandwidth.freed_memory_reused()}
    try:
        nb["threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        nb["threading_layer"] = None
    try:
        from numba import cuda

        nb["gpu"] = cuda.get_current_device().name.decode() if cuda.is_available() else None
    except Exception:  # no driver
        nb["gpu"] = None
    try:
        import torch

        nb["torch"], nb["torch_threads"] = torch.__version__, torch.get_num_threads()
    except ImportError:
        pass
    machine_info["normbench"] = nb


@pytest.fixture(scope="session")
def copy_seconds_cache():
    return {}
