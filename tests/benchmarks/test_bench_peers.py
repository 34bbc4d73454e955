"""normbench cpu vs NumPy textbook code vs PyTorch (vs JAX) per case and pass, grouped so that
``pytest-benchmark compare`` shows the implementations of one case in one table.

``extra_info`` carries the bytes the pass must move, GB/s, the fraction of a same-size copy (measured in the
same session: the ratio that the regression gate uses) and the implementation's error against the float64
reference on the same inputs, in units of the dtype's epsilon (max over rows, relative to the row's magnitude).
Benchmarks disabled (``make test``): the small cases only, one call each, checked against the reference.
"""
import numpy as np
import pytest

from normbench import bandwidth, peers
from normbench.benchmarks import _harness, cases
from normbench.benchmarks.runner import error_eps

IMPLS = ["normbench"] + list(peers.PEERS)


def benchmarks_disabled(config) -> bool:
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    matrix = cases.cases()
    if benchmarks_disabled(metafunc.config):  # correctness run: the latency-bound shape of each variant
        smallest = {}
        for c in matrix:
            if c.variant not in smallest or c.x_bytes() < smallest[c.variant]:
                smallest[c.variant] = c.x_bytes()
        matrix = [c for c in matrix if c.x_bytes() == smallest[c.variant]]
    metafunc.parametrize("case", matrix, ids=[c.name for c in matrix])


_REF = {}


def _reference(case, pass_):
    """The float64 oracle's y (forward) or dx (backward) on the case's inputs (cached per session)."""
    key = case.name
    if key not in _REF:
        spec, inputs = case.spec, case.make_inputs(seed=0)
        dy = np.random.default_rng(1).standard_normal(inputs["x"].shape).astype(case.dtype)
        out = spec.run_forward(inputs, backend="reference")
        _REF.clear()  # one case at a time: large cases hold hundreds of MiB
        _REF[key] = (out[0], spec.run_backward(inputs, out, dy, backend="reference")[0])
    return _REF[key][0 if pass_ == "forward" else 1]


@pytest.mark.parametrize("pass_", cases.PASSES)
@pytest.mark.parametrize("impl", IMPLS)
def test_case(benchmark, case, pass_, impl, copy_seconds_cache):
    if impl == "normbench":
        fn = _harness.Pass(case, "cpu", pass_)
        nbytes = fn.nbytes
        run = lambda: fn()[0]  # noqa: E731
    else:
        if impl not in peers.available():
            pytest.skip(f"optional peer {impl} is not installed")
        inputs = case.make_inputs(seed=0)
        dy = np.random.default_rng(1).standard_normal(inputs["x"].shape).astype(case.dtype)
        try:
            fwd, bwd = peers.prepare(impl, case.variant, inputs, dy)
        except NotImplementedError as err:
            pytest.skip(f"peer {impl} has no {case.variant}: {err}")
        run = fwd if pass_ == "forward" else bwd
        nbytes = case.nbytes(pass_, inputs)
        run()  # warm-up (JIT for numba/JAX, allocator for PyTorch), outside the timing
    benchmark.group = f"{case.name} {pass_}"
    benchmark.name = impl
    result = benchmark(run)

    err = error_eps(case.variant, case.make_inputs(seed=0), result, _reference(case, pass_))
    info = {"bytes": nbytes, "error_eps": err, "limit_factor": case.limit_factor(pass_)}
    if benchmark.stats is not None and not benchmark.disabled:
        t = benchmark.stats.stats.median
        if nbytes not in copy_seconds_cache:
            copy_seconds_cache[nbytes] = bandwidth.copy_seconds(nbytes, repeats=5)
        copy_gbps = 2 * (max(1, nbytes // 8) * 4) / copy_seconds_cache[nbytes] / 1e9
        info.update(gbps=nbytes / t / 1e9, copy_gbps=copy_gbps, fraction_of_copy=nbytes / t / 1e9 / copy_gbps)
    benchmark.extra_info.update(info)
    # every implementation must agree with the oracle (the registry's float32/float64 tolerance)
    tol = case.spec.rtol[np.dtype(case.dtype)] / np.finfo(case.dtype).eps
    assert err <= 10 * tol, f"{impl} {pass_}: error {err:.3g} eps > {10 * tol:.3g}"

