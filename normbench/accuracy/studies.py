"""The three studies behind docs/numerics.md's figures, each a tidy DataFrame written to results/accuracy/:

* ``offset_study``: error vs mean offset (0, 1e1 ... 1e7 times the spread) per variance algorithm and accumulator,
  layer norm and batch norm on the CPU backend, float32 and float64;
* ``eps_placement_study``: how far ``1/(sqrt(var)+eps)`` moves the output from ``1/sqrt(var+eps)``, vs var/eps
  (the oracle: a property of the definitions, not of a kernel);
* ``correction_study``: how far ``correction=1`` moves batch norm's output and gradient from ``correction=0``, vs
  the batch size N (the oracle), with the closed form sqrt(N/(N-1)) - 1 for y.
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
        rows.append(dict(N=N, output="y", rel_diff=_rel_diff(y0, y1), closed_form=float(np.sqrt(N / (N - 1)) - 1)))
        rows.append(dict(N=N, output="dx", rel_diff=_rel_diff(out[0][1], out[1][1]), closed_form=np.nan))
    return pd.DataFrame(rows)


STUDIES = {"offset_study": offset_study, "eps_placement_study": eps_placement_study,
           "correction_study": correction_study}


def run_all(out: Path, quick=False):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in STUDIES.items():
        df = fn(quick=quick) if name != "correction_study" else fn()
        path = out / f"{name}.csv"
        df.to_csv(path, index=False)
        paths.append(path)
    return paths
