"""docs/adding-a-variant.md is complete: every registered variant has an entry in every per-variant table that
the doc lists (a missing one fails here, naming the table), the doc names every such table, and a throwaway
ScaleNorm registered in-process exactly as the doc's recipe says (front, reference, a stand-in CPU backend,
registry entry, oracle entries; nothing else) is measured by the suites: the case matrix, ``normbench run``
(with accuracy), the accuracy sweep and oracle, asv's accuracy benchmark, and the NumPy peer (reported n/a)."""
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest

from normbench import _checks, functional, peers, registry
from normbench.accuracy import families, layout, metrics, oracle, sweep
from normbench.benchmarks import cases, runner

from nbtest import DeviceLike

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-variant.md"


# ============================================================================================ every variant
@pytest.mark.parametrize("variant", list(registry.VARIANTS))
def test_every_variant_has_an_entry_in_every_per_variant_table(variant):
    assert not oracle.missing(variant), (
        f"{variant}: no entry in normbench/accuracy/oracle.py {oracle.missing(variant)} (docs/adding-a-variant.md)")
    rng = np.random.default_rng(0)
    inputs = families.make("standard", variant, "float32", rng, quick=True)  # SHAPES/QUICK_SHAPES resolve
    assert families.LONG_SHAPES[variant]
    if not layout.is_row(inputs):
        assert variant in layout.CHANNEL_VARIANTS, f"{variant}: not in accuracy/layout.py CHANNEL_VARIANTS"
    spec = registry.VARIANTS[variant]
    dy = rng.standard_normal(inputs["x"].shape).astype(np.float32)
    ref = spec.run_forward(oracle.fresh(inputs), backend="reference")
    ref_b = spec.run_backward(oracle.fresh(inputs), ref, dy, backend="reference")
    assert len(oracle.FORWARD_NAMES[variant]) == len(ref), f"{variant}: FORWARD_NAMES does not match the forward"
    assert len(oracle.BACKWARD_NAMES[variant]) == len(ref_b), f"{variant}: BACKWARD_NAMES does not match"
    assert set(oracle.BACKWARD_NAMES[variant]) <= set(metrics.X_SHAPED + metrics.PARAMS), variant
    f = oracle.forward(variant, inputs)
    g = oracle.backward(variant, inputs, f, dy)
    assert f["y"].shape == g["dx"].shape == inputs["x"].shape
    # the error unit of normbench run / pytest-benchmark (peers._reduce_axes: CHANNEL_REDUCTION for channels)
    assert np.isfinite(runner.error_eps(variant, inputs, ref[0].astype(np.float32), ref[0]))
    try:
        peers.prepare("numpy", variant, oracle.fresh(inputs), dy)
    except NotImplementedError:
        pass  # no textbook peer: reported n/a


def test_the_doc_names_every_per_variant_table_and_the_host_only_front():
    doc = DOC.read_text()
    for name in [*oracle.TABLES, "CHANNEL_VARIANTS", "CHANNEL_REDUCTION", "NUMPY_VARIANTS", "SHAPES",
                 "QUICK_SHAPES", "LONG_SHAPES", "normalized_shape"]:
        assert re.search(rf"\b{name}\b", doc), f"docs/adding-a-variant.md does not name {name}"
    assert "_checks.output(" not in doc and '_output("out", out, backend, x' in doc
    assert "design.md" not in doc  # not in this repository


def test_a_missing_oracle_entry_is_a_clear_not_implemented_error(monkeypatch):
    monkeypatch.delitem(oracle.STATISTICS, "rms_norm")
    inputs = families.make("standard", "rms_norm", "float32", np.random.default_rng(0), quick=True)
    with pytest.raises(NotImplementedError, match=r"'rms_norm' in STATISTICS .*oracle\.py"):
        oracle.forward("rms_norm", inputs)


# ============================================================================================ the recipe, walked
NAME = "toy_scale_norm"  # a throwaway name: the doc's ScaleNorm, registered for this test only


def _fronts():
    """Step 1: the doc's front functions (functional._output, hence host_only)."""
    from normbench.functional import _output, _row_setup, check_eps, resolve

    def forward(x, normalized_shape, g=None, *, eps=1e-5, out=None, backend=None, **numerics):
        x = _checks.array("x", x, min_ndim=1)
        shape, lead, D = _row_setup(x, normalized_shape)
        g = _checks.param("g", g, (1,), x)
        eps = check_eps(eps)
        opts = resolve(numerics)
        backend = registry.pick_backend(x, backend, NAME)
        out = _output("out", out, backend, x, x=x, g=g)
        return registry.implementation(NAME, backend, "forward")(x, shape, g, eps=eps, opts=opts, out=out)

    def backward(dy, x, normalized_shape, rstd, g=None, *, eps=1e-5, dx_out=None, backend=None, **numerics):
        x = _checks.array("x", x, min_ndim=1)
        dy = _checks.like("dy", dy, "x", x)
        shape, lead, D = _row_setup(x, normalized_shape)
        rstd = _checks.stats("rstd", rstd, lead)
        g = _checks.param("g", g, (1,), x)
        eps = check_eps(eps)
        opts = resolve(numerics)
        backend = registry.pick_backend(x, backend, NAME)
        dx_out = _output("dx_out", dx_out, backend, x, dy=dy, x=x, g=g, rstd=rstd)
        return registry.implementation(NAME, backend, "backward")(dy, x, shape, rstd, g, eps=eps, opts=opts,
                                                                   dx_out=dx_out)

    return forward, backward


def _reference():
    """Step 2: the doc's reference, transcribed."""
    from normbench.reference._stats import finish, normalize_backward, rstd, wide

    def _axes(x, normalized_shape):
        return tuple(range(x.ndim - len(normalized_shape), x.ndim))

    def forward(x, normalized_shape, g, *, eps, opts, out=None):
        xw, axes = wide(x), _axes(x, normalized_shape)
        r = rstd((xw * xw).sum(axis=axes, keepdims=True), eps, opts.eps_placement)
        y = xw * r * (wide(g)[0] if g is not None else 1)
        lead = x.shape[: x.ndim - len(normalized_shape)]
        return finish(y, out), r.reshape(lead).astype(np.float64)

    def backward(dy, x, normalized_shape, rstd_, g, *, eps, opts, dx_out=None):
        xw, dyw, axes = wide(x), wide(dy), _axes(x, normalized_shape)
        n = math.prod(normalized_shape)
        keep = tuple(x.shape[: x.ndim - len(normalized_shape)]) + (1,) * len(normalized_shape)
        r = wide(rstd_).reshape(keep)
        dxhat = dyw * wide(g)[0] if g is not None else dyw
        dx = normalize_backward(dxhat, xw, r, axes, n - 1, eps, opts.eps_placement)
        dg = None if g is None else np.array([(dyw * xw * r).sum()], dtype=np.float64)
        return finish(dx, dx_out), dg

    return forward, backward


def _stand_in_cpu(ref_forward, ref_backward):
    """Step 3 stand-in: the reference computed wide and returned in x's dtype, as a CPU kernel returns."""

    def forward(x, normalized_shape, g, *, eps, opts, out=None):
        y, r = ref_forward(x, normalized_shape, g, eps=eps, opts=opts)
        out = np.empty(x.shape, x.dtype) if out is None else out
        out[...] = y
        return out, r

    def backward(dy, x, normalized_shape, rstd, g, *, eps, opts, dx_out=None):
        dx, dg = ref_backward(dy, x, normalized_shape, rstd, g, eps=eps, opts=opts)
        dx_out = np.empty(x.shape, x.dtype) if dx_out is None else dx_out
        dx_out[...] = dx
        return dx_out, (None if dg is None else dg.astype(x.dtype))

    return forward, backward


def _make_scale(shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    return dict(x=x, normalized_shape=(shape[-1],), g=np.array([math.sqrt(shape[-1])], dtype=dtype))


@pytest.fixture
def toy_variant(monkeypatch):
    """The doc's six steps, in-process; everything undone afterwards."""
    fwd, bwd = _fronts()
    monkeypatch.setattr(functional, f"{NAME}_forward", fwd, raising=False)
    monkeypatch.setattr(functional, f"{NAME}_backward", bwd, raising=False)
    ref_f, ref_b = _reference()
    cpu_f, cpu_b = _stand_in_cpu(ref_f, ref_b)
    family = "toy_scale"
    monkeypatch.setitem(registry._MODULES, ("reference", family), types.SimpleNamespace(
        **{f"{NAME}_forward": ref_f, f"{NAME}_backward": ref_b}))
    monkeypatch.setitem(registry._MODULES, ("cpu", family), types.SimpleNamespace(
        **{f"{NAME}_forward": cpu_f, f"{NAME}_backward": cpu_b}))
    monkeypatch.setitem(registry._MODULES, ("cuda", family), None)
    spec = registry.Variant(
        NAME, family, _make_scale,
        lambda i, **kw: functional.__dict__[f"{NAME}_forward"](i["x"], i["normalized_shape"], i["g"], **kw),
        lambda i, o, dy, **kw: functional.__dict__[f"{NAME}_backward"](dy, i["x"], i["normalized_shape"], o[1],
                                                                       i["g"], **kw),
        registry._bytes_rms_fwd, registry._bytes_rms_bwd, shapes=((8, 64), (64, 256)))
    monkeypatch.setitem(registry.VARIANTS, NAME, spec)
    # step 6: the oracle's five entries, as the doc writes them
    monkeypatch.setitem(oracle.FORWARD_NAMES, NAME, ("y", "rstd"))
    monkeypatch.setitem(oracle.BACKWARD_NAMES, NAME, ("dx", "dweight"))
    monkeypatch.setitem(oracle.STATISTICS, NAME, lambda i, rows, opts: (None, (rows * rows).sum(axis=1)))
    monkeypatch.setitem(oracle.FORWARD_CALLS, NAME, lambda f, i, eps, opts, out: f(
        i["x"], tuple(i["normalized_shape"]), i["g"], eps=eps, opts=opts, out=out))
    monkeypatch.setitem(oracle.BACKWARD_CALLS, NAME, lambda f, i, fwd, dy, eps, opts, dx: f(
        dy, i["x"], tuple(i["normalized_shape"]), fwd["rstd"], i["g"], eps=eps, opts=opts, dx_out=dx))
    yield NAME
    for cache in (registry._IMPLEMENTATIONS, registry._DEFAULT_HOST_BACKEND):
        for key in [k for k in cache if k == NAME or (isinstance(k, tuple) and k[0] == NAME)]:
            del cache[key]


def test_the_recipe_gives_a_variant_every_suite_measures(toy_variant):
    assert registry.available_backends(NAME) == ["reference", "cpu"]
    # the case matrix (asv, pytest-benchmark, normbench run) and normbench run with accuracy
    matrix = cases.cases(variants=[NAME])
    assert matrix and {c.variant for c in matrix} == {NAME}
    case = cases.cases(variants=[NAME], shapes=[(8, 64)])[0]
    rows = runner.run_case(case, ["cpu"], ["numpy"], 3, runner._CopyCache(), accuracy=True)
    assert {r["pass"] for r in rows} == {"forward", "backward"}
    for r in rows:
        assert r["err_eps"] < 8, r
        assert "err_numpy" not in r  # no textbook peer for it: n/a, not a wrong formula
    with pytest.raises(NotImplementedError, match="no NumPy peer"):
        peers.prepare("numpy", NAME, case.make_inputs(), np.ones((8, 64), np.float32))
    # runner's error unit is the accuracy harness's (tests/test_suite.py, for registered variants)
    inputs = case.make_inputs()
    y = case.spec.run_forward(case.make_inputs(), backend="reference")[0]
    noisy = (y * (1 + 1e-6 * np.random.default_rng(0).standard_normal(y.shape))).astype(np.float32)
    ids, G = layout.group_ids(NAME, inputs)
    want = metrics.error_stats(noisy, y, metrics.group_scale(y, ids, G), np.float32)["max_err"]
    assert runner.error_eps(NAME, inputs, noisy, y) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_recipe_gives_a_variant_the_accuracy_harness_measures(toy_variant, dtype):
    assert oracle.default_eps(NAME, {"x": np.ones(1, dtype)}) == 1e-5  # read from the front's signature
    for fam in ("standard", "offset1e4", "constant", "mixed_scale"):
        rng = np.random.default_rng(1)
        inputs = families.make(fam, NAME, dtype, rng, quick=True)
        assert inputs["x"].shape == (8, 256)  # the row default of QUICK_SHAPES
        dy = rng.standard_normal(inputs["x"].shape).astype(dtype)
        f = oracle.forward(NAME, inputs)
        g = oracle.backward(NAME, inputs, f, dy)
        assert set(f) == {"y", "rstd"} and set(g) == {"dx", "dweight"}
        with np.errstate(all="ignore"):
            rows = sweep.run_backend(NAME, inputs, dy, "cpu", {}, f, g, {"against": "oracle"})
        assert rows and not any(r.get("error") for r in rows), rows
        assert {r["output"] for r in rows} == {"y", "rstd", "dx", "dweight"}
        assert all(r["n_fail"] == 0 for r in rows), (fam, rows)
    # the sweep end to end, and asv's accuracy benchmark (a number, not a failure or a skip)
    df = sweep.sweep([NAME], ["standard"], (dtype,), ("reference", "cpu"), quick=True, peers=False)
    assert not df.error.fillna("").astype(bool).any() and set(df.impl) == {"reference", "cpu"}
    from normbench.benchmarks import bench_accuracy

    err = bench_accuracy._measure(NAME, "standard", {})
    assert np.isfinite(err["y"]) and np.isfinite(err["dx"])


def test_the_recipes_front_rejects_a_device_array_on_a_host_backend(toy_variant):
    i = _make_scale((4, 8), np.dtype(np.float32), np.random.default_rng(0))
    with pytest.raises(TypeError, match="out is a CUDA device array"):
        registry.VARIANTS[NAME].run_forward(i, backend="cpu", out=DeviceLike(i["x"]))
