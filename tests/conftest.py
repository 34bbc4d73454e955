"""Shared fixtures. Tests compare against independent truths: the float64 reference, finite differences,
PyTorch (where installed), closed forms. Shared helpers live in tests/nbtest.py."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def unwritable_dir(tmp_path, monkeypatch):
    """A path inside a folder this process may not create anything in (a read-only mount, /proc): the refusal is
    simulated where the command line probes it (``tempfile.mkdtemp`` in ``cli.output_dir_error``), since root,
    which runs CI here, ignores permission bits."""
    import tempfile
    from pathlib import Path

    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkdtemp

    def mkdtemp(suffix=None, prefix=None, dir=None):
        if dir is not None and Path(dir).resolve() == locked.resolve():
            raise PermissionError(13, "Permission denied")
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return locked / "out"
