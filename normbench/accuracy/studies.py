"""The three studies behind docs/numerics.md's figures, each a tidy DataFrame written to results/accuracy/:

* ``offset_study``: error vs mean offset (0, 1e1 ... 1e7 times the spread) per variance algorithm and accumulator,
  layer norm and batch norm on the CPU backend, float32 and float64;
* ``eps_placement_study``: how far ``1/(sqrt(var)+eps)`` moves the output from ``1/sqrt(var+eps)``, vs var/eps
  (the oracle: a property of the definitions, not of a kernel);
* ``correction_study``: how far ``correction=1`` moves batch norm's output and gradient from ``correction=0``, vs
  the batch size N (the oracle), with the closed form 1 - sqrt((N-1)/N) for y;
* ``speed_study``: the speed cost of each variance algorithm and accumulator (ratios to the defaults, one run).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import registry
from ..numerics import ACCUMULATORS, VARIANCE_ALGORITHMS
from . import families, metrics, oracle


def _rel_diff(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def offset_study(variants=("layer_norm", "batch_norm"), dtypes=("float32", "float64"), quick=False, seed=0):
    import pandas as pd

    offsets = [0.0] + [10.0 ** k for k in (range(1, 8, 2) if quick else range(1, 8))]
    rows = []
    for variant in variants:
        if "cpu" not in registry.available_backends(variant):
            continue
        spec = registry.VARIANTS[variant]
        for dtype in dtypes:
            for c in offsets:
                rng = np.random.default_rng([seed, int(c)])
                inputs = families.offset(c)(families.QUICK_SHAPES[variant] if quick else families.SHAPES[variant],
                                            dtype, rng, variant=variant)
                dy = rng.standard_normal(inputs["x"].shape).astype(dtype)
                f = oracle.forward(variant, inputs)
                g = oracle.backward(variant, inputs, f, dy)
                for v in VARIANCE_ALGORITHMS:
                    for a in ACCUMULATORS[1:]:
                        with np.errstate(all="ignore"):
                            out = spec.run_forward(oracle.fresh(inputs), backend="cpu", variance=v, accumulate=a)
                            grads = spec.run_backward(inputs, out, dy, backend="cpu", variance=v, accumulate=a)
                        res = metrics.compare(variant, inputs, {"y": out[0], "dx": grads[0]},
                                              {"y": f["y"], "dx": g["dx"]}, f)
                        for name, m in res.items():
                            rows.append(dict(variant=variant, dtype=dtype, offset=c, variance=v, accumulate=a,
                                             output=name, max_err=m["max_err"], n_fail=m["n_fail"]))
    return pd.DataFrame(rows)


def eps_placement_study(quick=False, seed=0):
    import pandas as pd

    ratios = 10.0 ** np.arange(-4, 4.01, 1.0 if quick else 0.5)
    rows = []
    for variant in ("layer_norm", "batch_norm"):
        for ratio in ratios:
            rng = np.random.default_rng(seed)
            inputs = families.scaled_variance(ratio)(families.QUICK_SHAPES[variant], "float64", rng, variant=variant)
            dy = rng.standard_normal(inputs["x"].shape)
            out = {}
            for placement in ("inside", "outside"):
                f = oracle.forward(variant, inputs, eps_placement=placement)
                out[placement] = (f["y"], oracle.backward(variant, inputs, f, dy, eps_placement=placement)["dx"])
            for k, name in enumerate(("y", "dx")):
                rows.append(dict(variant=variant, var_over_eps=float(ratio), output=name,
                                 rel_diff=_rel_diff(out["inside"][k], out["outside"][k])))
    return pd.DataFrame(rows)


def correction_study(seed=0, C=8):
    import pandas as pd

    rows = []
    for N in (2, 3, 4, 8, 16, 32, 64, 128, 256, 1024):
        rng = np.random.default_rng([seed, N])
        inputs = families.FAMILIES["standard"]((N, C), "float64", rng, variant="batch_norm")
        dy = rng.standard_normal(inputs["x"].shape)
        out = {}
        for c in (0, 1):
            f = oracle.forward("batch_norm", inputs, correction=c)
            out[c] = (f["y"], oracle.backward("batch_norm", inputs, f, dy, correction=c)["dx"])
        y0 = (out[0][0] - inputs["bias"]) / inputs["weight"]
        y1 = (out[1][0] - inputs["bias"]) / inputs["weight"]
        rows.append(dict(N=N, output="y", rel_diff=_rel_diff(y0, y1), closed_form=float(1 - np.sqrt((N - 1) / N))))
        rows.append(dict(N=N, output="dx", rel_diff=_rel_diff(out[0][1], out[1][1]), closed_form=np.nan))
    return pd.DataFrame(rows)


def speed_study(quick=False, seed=0, repeats=7):
    """What each variance algorithm and accumulator costs in speed: median forward and backward times of the cpu
    kernels, float32, relative to the defaults measured in the same run (ratios, not absolute times, are what a
    shared machine can compare).  Inputs of 16 MiB (4 MiB with ``quick``), outputs preallocated."""
    import pandas as pd

    from ..bandwidth import median_seconds

    rows = []
    shapes = {"layer_norm": (1024, 1024) if quick else (4096, 1024),
              "batch_norm": (16, 64, 32, 32) if quick else (64, 64, 32, 32)}
    for variant, shape in shapes.items():
        if "cpu" not in registry.available_backends(variant):
            continue
        spec = registry.VARIANTS[variant]
        rng = np.random.default_rng(seed)
        inputs = spec.make_inputs(shape, np.dtype(np.float32), rng)
        dy = rng.standard_normal(inputs["x"].shape).astype(np.float32)
        y = np.empty_like(inputs["x"])
        dx = np.empty_like(inputs["x"])
        for v in VARIANCE_ALGORITHMS:
            for a in ACCUMULATORS[1:]:
                kw = dict(variance=v, accumulate=a)
                fwd = spec.run_forward(inputs, backend="cpu", out=y, **kw)  # compiles
                t_f = median_seconds(lambda: spec.run_forward(inputs, backend="cpu", out=y, **kw), repeats)
                t_b = median_seconds(lambda: spec.run_backward(inputs, fwd, dy, backend="cpu", dx_out=dx, **kw),
                                     repeats)
                rows.append(dict(variant=variant, shape="x".join(map(str, shape)), variance=v, accumulate=a,
                                 forward_s=t_f, backward_s=t_b))
    df = pd.DataFrame(rows)
    for col in ("forward_s", "backward_s"):
        base = df[(df.variance == "shifted") & (df.accumulate == "float64")].set_index("variant")[col]
        df[col.replace("_s", "_vs_default")] = df[col] / df.variant.map(base)
    return df


STUDIES = {"offset_study": offset_study, "eps_placement_study": eps_placement_study,
           "correction_study": correction_study, "speed_study": speed_study}


def run_all(out: Path, quick=False, seed=0):
    """Every study (fixed variants and dtypes: they are the figures of docs/numerics.md) with data seed ``seed``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in STUDIES.items():
        df = fn(quick=quick, seed=seed) if name != "correction_study" else fn(seed=seed)
        path = out / f"{name}.csv"
        df.to_csv(path, index=False)
        paths.append(path)
    return paths
