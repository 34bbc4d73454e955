"""Shared fixtures. Tests compare against independent truths: the float64 reference, finite differences,
PyTorch (where installed), closed forms. Shared helpers live in tests/nbtest.py."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
