"""Shared fixtures. Tests compare against independent truths: the float64 reference, finite differences,
PyTorch (where installed), closed forms."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def torch_or_skip():
    """PyTorch is an optional peer: tests that compare with it skip with this reason where it is absent."""
    return pytest.importorskip("torch", reason="PyTorch not installed (pip install torch==2.13.0, the CPU build)")
