"""asv: accuracy as history — ``track_*`` benchmarks in units of eps (max error against the oracle, see
normbench/accuracy/metrics.py) for the headline cells of the accuracy study:

* each variant's default options on the standard and the offset-1e4 families (y and dx);
* each variance algorithm and accumulator on offset-1e4 (layer norm, batch norm);
* each eps placement on the var-close-to-eps family;
* each correction on batch norm with N = 2;
* every parameter combination of the case matrix (normbench/benchmarks/cases.py: the layouts, evaluation batch
  norm, fused RMS norm) with the default options, on the same two families (``TrackMatrixParams``).

All on the cpu backend, float32, the sweep's default shapes.  An output that is NaN or Inf where the oracle's is
finite is the worst error there is; it is recorded as :data:`NONFINITE` (1e30 units), as is any error above
that: asv writes an infinity into its graph files as ``Infinity``, which is not JSON, and the published graph of
that benchmark would then not load at all.  A commit that lacks the accuracy harness, the
variant, the cpu kernel or an option raises NotImplementedError (asv then records the cell as skipped); any
other error of a kernel fails the benchmark, as a crash should.
"""
import numpy as np

from normbench import registry

VARIANTS = list(registry.VARIANTS)
#: the value recorded for a non-finite output (and the cap of every value): finite, so asv's graphs stay JSON
NONFINITE = 1e30


def _measure(variant, family, numerics, seed=0, params=None):
    """{output: max error in units of eps} of the cpu backend on ``family``, float32; ``params`` the variant's
    input parameters (layout, training, ...; the registry's defaults where None)."""
    try:
        from normbench.accuracy import families, oracle, sweep
    except ImportError as err:
        raise NotImplementedError(f"no accuracy harness in this commit ({err})") from None
    if variant not in registry.VARIANTS or "cpu" not in registry.available_backends(variant):
        raise NotImplementedError(f"{variant}: no cpu kernel in this commit")
    if not families.applies(family, variant):
        raise NotImplementedError(f"family {family} does not apply to {variant}")
    _require_options(numerics)
    rng = np.random.default_rng(seed)
    inputs = families.make(family, variant, "float32", rng, **(params or {}))
    dy = rng.standard_normal(inputs["x"].shape).astype(np.float32)
    f = oracle.forward(variant, inputs, **numerics)
    g = oracle.backward(variant, inputs, f, dy, **numerics)
    with np.errstate(all="ignore"):
        rows = sweep.run_backend(variant, inputs, dy, "cpu", numerics, f, g, {"against": "oracle"})
    errors = [r["error"] for r in rows if r.get("error")]
    # the sweep keeps every exception as an error row "<type>: <message>": only a kernel that says it lacks the
    # feature is skipped; any other error (IndexError, a Numba typing error, ...) is a failure of this commit
    if errors and errors[0].startswith("NotImplementedError:"):
        raise NotImplementedError(errors[0])
    if errors:
        raise RuntimeError(f"{variant} on {family} with {numerics or 'default options'}: {errors[0]}")
    # a NaN/Inf where the oracle is finite is the worst error there is
    return {r["output"]: (NONFINITE if r["n_fail"] else min(r["max_err"], NONFINITE)) for r in rows
            if r["pass"] != "backward_exact_h"}  # (sweep.EXACT_H_PASS, spelled out: older commits lack the name)


def _require_options(numerics):
    """NotImplementedError when this commit does not know an option or its value (numerics.resolve rejects it
    with TypeError / ValueError), checked before any kernel runs so that a kernel's own errors stay failures."""
    if not numerics:
        return
    try:
        from normbench.numerics import resolve
    except ImportError as err:
        raise NotImplementedError(f"no numerics options in this commit ({err})") from None
    try:
        resolve(dict(numerics))
    except (TypeError, ValueError) as err:
        raise NotImplementedError(f"option not in this commit: {err}") from None


class TrackDefaults:
    """Each variant's default options on the standard and offset-1e4 families."""
    params = (VARIANTS, ["standard", "offset1e4"])
    param_names = ["variant", "family"]
    unit = "eps"
    timeout = 300

    def setup(self, variant, family):
        self.err = _measure(variant, family, {})

    def track_y(self, variant, family):
        return self.err["y"]

    def track_dx(self, variant, family):
        return self.err["dx"]

    track_y.unit = track_dx.unit = "eps"


class TrackVarianceAlgorithm:
    """Each variance algorithm and accumulator on data offset by 1e4 times its spread."""
    params = (["layer_norm", "batch_norm"], ["two_pass", "welford", "naive", "shifted"], ["float32", "float64"])
    param_names = ["variant", "variance", "accumulate"]
    unit = "eps"
    timeout = 300

    def setup(self, variant, variance, accumulate):
        self.err = _measure(variant, "offset1e4", dict(variance=variance, accumulate=accumulate))

    def track_y(self, variant, variance, accumulate):
        return self.err["y"]

    def track_dx(self, variant, variance, accumulate):
        return self.err["dx"]

    track_y.unit = track_dx.unit = "eps"


class TrackEpsPlacement:
    """Each eps placement where the variance is close to eps."""
    params = (["layer_norm", "batch_norm", "group_norm"], ["inside", "outside"])
    param_names = ["variant", "eps_placement"]
    unit = "eps"
    timeout = 300

    def setup(self, variant, eps_placement):
        self.err = _measure(variant, "var_near_eps", dict(eps_placement=eps_placement))

    def track_y(self, variant, eps_placement):
        return self.err["y"]

    def track_dx(self, variant, eps_placement):
        return self.err["dx"]

    track_y.unit = track_dx.unit = "eps"


class TrackCorrection:
    """Each correction on batch norm with N = 2."""
    params = ([0, 1],)
    param_names = ["correction"]
    unit = "eps"
    timeout = 300

    def setup(self, correction):
        self.err = _measure("batch_norm", "batch_n2", dict(correction=correction))

    def track_y(self, correction):
        return self.err["y"]

    def track_dx(self, correction):
        return self.err["dx"]

    track_y.unit = track_dx.unit = "eps"


def _matrix_params():
    """``{"variant/name=value,...": (variant, params)}`` for every parameter combination of the case matrix at the
    sweep's default shape (cases._param_combos: the matrix's own rule, e.g. no channels-last 2-D inputs)."""
    from normbench.accuracy import families
    from normbench.benchmarks import cases

    out = {}
    for variant, spec in registry.VARIANTS.items():
        for combo in cases._param_combos(spec, tuple(families.SHAPES[variant])):
            if combo:
                out[f"{variant}/" + ",".join(f"{k}={v}" for k, v in combo)] = (variant, dict(combo))
    return out


try:
    MATRIX_PARAMS = _matrix_params()
except (ImportError, AttributeError):  # discovery must not fail; the class below then has no cells
    MATRIX_PARAMS = {}


class TrackMatrixParams:
    """Every parameter combination of the case matrix (channels-last layouts, evaluation batch norm, fused RMS norm,
    ...) with the default options on the standard and offset-1e4 families: the kernels that TrackDefaults, which
    takes each variant's default parameters, does not reach."""
    params = (sorted(MATRIX_PARAMS), ["standard", "offset1e4"])
    param_names = ["case", "family"]
    unit = "eps"
    timeout = 300

    def setup(self, case, family):
        variant, params = MATRIX_PARAMS[case]
        self.err = _measure(variant, family, {}, params=params)

    def track_y(self, case, family):
        return self.err["y"]

    def track_dx(self, case, family):
        return self.err["dx"]

    track_y.unit = track_dx.unit = "eps"
