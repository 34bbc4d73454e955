"""The asv suite (normbench/benchmarks/bench_*.py) against what history runs pair it with: older installs that
lack a module or an option (skipped: NotImplementedError), and kernels that crash (a failure, never skipped)."""
import importlib
import sys

import numba
import numpy as np
import pytest

import normbench.benchmarks
from normbench import bandwidth, registry
from normbench.benchmarks import bench_accuracy

SMALL = "rms_norm/8x768/float32"


def test_suite_imports_and_runs_without_the_stream_module(monkeypatch):
    """A commit before normbench.cpu._stream: the harness falls back to a plain allocation, and the benchmarks
    that need no kernel (threads, copy) as well as the kernels' own still run."""
    for which in ("forward", "backward"):  # today's kernels need the module; an old commit's do not
        registry.implementation("rms_norm", "cpu", which)
    monkeypatch.setitem(sys.modules, "normbench.cpu._stream", None)  # "import normbench.cpu._stream" fails
    for name in ("_harness", "bench_kernels"):
        monkeypatch.delitem(sys.modules, f"normbench.benchmarks.{name}", raising=False)
        monkeypatch.delattr(normbench.benchmarks, name, raising=False)  # both restored afterwards
    bk = importlib.import_module("normbench.benchmarks.bench_kernels")
    assert bk._harness.aligned_empty is np.empty
    assert bk.track_numba_threads() == numba.get_num_threads()
    copy_gbps = bandwidth.copy_gbps
    monkeypatch.setattr(bandwidth, "copy_gbps", lambda nbytes, repeats: copy_gbps(2**20, repeats=1))
    assert bk.track_copy_gbps_256mib() > 0
    for cls in (bk.Forward, bk.Backward):
        bench = cls()
        bench.setup(SMALL, "cpu")
        out = bench.run()[0]
        assert out.shape == (8, 768) and np.isfinite(out).all()
        assert bench.track_fraction_of_copy(SMALL, "cpu") > 0


def _crash(*args, **kwargs):
    raise IndexError("index 768 is out of bounds")


def test_accuracy_track_fails_on_a_crashing_kernel(monkeypatch):
    monkeypatch.setitem(registry._IMPLEMENTATIONS, ("rms_norm", "cpu", "forward"), _crash)
    with pytest.raises(RuntimeError, match="IndexError: index 768 is out of bounds") as exc:
        bench_accuracy._measure("rms_norm", "standard", {})
    assert not isinstance(exc.value, NotImplementedError)  # (a subclass of RuntimeError) asv: skipped, not failed


def test_accuracy_track_skips_what_a_commit_lacks(monkeypatch):
    # a kernel that says it lacks the feature
    monkeypatch.setitem(registry._IMPLEMENTATIONS, ("rms_norm", "cpu", "forward"),
                        lambda *a, **k: (_ for _ in ()).throw(NotImplementedError("no such layout")))
    with pytest.raises(NotImplementedError, match="no such layout"):
        bench_accuracy._measure("rms_norm", "standard", {})
    monkeypatch.undo()
    # an option (value) this commit does not know, before any kernel runs
    from normbench import numerics

    monkeypatch.setattr(numerics, "VARIANCE_ALGORITHMS", ("two_pass", "welford", "naive"))
    monkeypatch.setitem(registry._IMPLEMENTATIONS, ("layer_norm", "cpu", "forward"), _crash)
    with pytest.raises(NotImplementedError, match="variance='shifted'"):
        bench_accuracy._measure("layer_norm", "offset1e4", {"variance": "shifted", "accumulate": "float32"})


def test_fraction_of_limit_is_the_copy_fraction_of_the_same_measurement(monkeypatch):
    """Both track_fraction_* come from one timing per setup: the limit's is the copy's / the limit factor,
    exactly, not a second measurement with its own noise (here every timing differs)."""
    from normbench.benchmarks import bench_kernels as bk

    times = iter(np.linspace(1e-3, 2e-3, 20))
    monkeypatch.setattr(bandwidth, "median_seconds", lambda *a, **k: next(times))
    monkeypatch.setattr(bandwidth, "copy_gbps", lambda nbytes, repeats: 10.0)
    for cls in (bk.Forward, bk.Backward):
        bench = cls()
        bench.setup(SMALL, "cpu")
        copy = bench.track_fraction_of_copy(SMALL, "cpu")
        limit = bench.track_fraction_of_limit(SMALL, "cpu")
        assert limit == copy / bench.run.case.limit_factor(cls.pass_)
        assert bench.track_fraction_of_copy(SMALL, "cpu") == copy
        bench.setup(SMALL, "cpu")  # a new setup measures anew
        assert bench.track_fraction_of_limit(SMALL, "cpu") != limit


def test_first_call_benchmarks_leave_no_numba_cache_behind(monkeypatch, tmp_path):
    """bench_compile's caches (the warm one its setup fills, the cold one each timed process makes) are removed:
    asv runs them for every variant and commit, and they used to pile up in the temporary folder."""
    import os
    import subprocess

    from normbench.benchmarks import bench_compile
    fill = "import os\nos.makedirs(os.path.join(os.environ['NUMBA_CACHE_DIR'], 'index'))\n"  # as a compile would
    monkeypatch.setattr(bench_compile, "_code", lambda variant: fill)  # the cache folders, not the kernels
    monkeypatch.setattr(bench_compile.tempfile, "tempdir", str(tmp_path))
    bench = bench_compile.FirstCall()
    bench.setup("rms_norm")
    assert os.path.isdir(bench.warm_dir)
    bench.teardown("rms_norm")
    assert not os.path.exists(bench.warm_dir)
    code, setup = bench.timeraw_cold("rms_norm")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    made = subprocess.run([sys.executable, "-c", setup + code + "print(os.environ['NUMBA_CACHE_DIR'])\n"],
                          env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert made.startswith(str(tmp_path)) and not os.path.exists(made)
