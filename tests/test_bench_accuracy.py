"""The asv accuracy tracks (normbench/benchmarks/bench_accuracy.py): what they record and which cells they cover."""
import json

import numpy as np
import pytest

from normbench.benchmarks import bench_accuracy, cases


def test_matrix_params_track_every_parameter_combination_of_the_quick_matrix():
    """Every parameter combination that `make bench` times (channels-last layouts, evaluation batch norm, fused RMS
    norm, ...) has an accuracy track, named as the case matrix names it."""
    timed = {f"{c.variant}/{c.params_str}" for c in cases.cases(full=False) if c.params}
    assert timed and timed <= set(bench_accuracy.TrackMatrixParams.params[0])


def test_matrix_params_reach_the_inputs(monkeypatch):
    """A cell builds its inputs with its parameters (here channels-last evaluation batch norm) and records the
    kernel's error: below the issue's 4 units on standard data."""
    from normbench.accuracy import families

    seen = []
    make = families.make
    monkeypatch.setattr(families, "make", lambda *a, **kw: seen.append(kw) or make(*a, **kw))
    t = bench_accuracy.TrackMatrixParams()
    t.setup("batch_norm/axis=-1,training=False", "standard")
    assert seen == [{"axis": -1, "training": False}]
    assert 0 <= t.track_y("batch_norm/axis=-1,training=False", "standard") < 4
    assert 0 <= t.track_dx("batch_norm/axis=-1,training=False", "standard") < 4


@pytest.mark.parametrize("n_fail,max_err,expected", [(3, 0.0, bench_accuracy.NONFINITE),
                                                      (0, 1e40, bench_accuracy.NONFINITE), (0, 0.25, 0.25)])
def test_non_finite_output_is_recorded_as_a_finite_worst_value(monkeypatch, n_fail, max_err, expected):
    """A NaN/Inf output (n_fail > 0) is the worst error, recorded as NONFINITE; so is an error above it; asv must get
    a value that its graph files can hold as JSON (an infinity became `Infinity`, which JSON.parse rejects)."""
    from normbench.accuracy import sweep

    rows = [{"output": o, "pass": p, "n_fail": n_fail, "max_err": max_err}
            for o, p in (("y", "forward"), ("dx", "backward"))]
    monkeypatch.setattr(sweep, "run_backend", lambda *a, **kw: rows)
    err = bench_accuracy._measure("layer_norm", "standard", {})
    assert err == {"y": expected, "dx": expected}
    assert np.isfinite(err["y"])
    json.loads(json.dumps(err, allow_nan=False))  # strict JSON: raises on inf/NaN
