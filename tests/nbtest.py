"""Helpers shared by test modules (a plain module: `from conftest import ...` is ambiguous once
tests/benchmarks/ has a conftest.py of its own)."""
import pytest


def torch_or_skip():
    """PyTorch is an optional peer: tests that compare with it skip with this reason where it is absent."""
    return pytest.importorskip("torch", reason="optional peer PyTorch is not installed "
                                              "(pip install 'normbench[peers]': torch==2.13.0, the CPU build)")


class DeviceLike:
    """Stands for a CUDA device array (what _checks.is_device_array recognises) without a GPU."""

    def __init__(self, a):
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (0, False),
                                         "version": 3}
