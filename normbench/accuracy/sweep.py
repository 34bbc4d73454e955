"""The accuracy sweep: variants x stress families x numerics options x dtypes x backends, plus the peers on the
same inputs, measured against the oracle.  Result: one tidy pandas DataFrame (one row per implementation,
option set, pass and output), written to results/accuracy/.

``normbench accuracy [--quick] [--variant V ...] [--family F ...] [--dtype float32 ...] [--out DIR] [--plot]
[--docs]``

Options are swept one factor at a time around the defaults (the full product would be 64 option sets per cell
and says nothing more): every ``variance`` x ``accumulate`` pair, ``eps_placement="outside"`` and
``correction=1``.  The reference backend runs with the defaults as a sanity row (0 for float32 inputs, at most
half a unit for float64 ones: its float64 rounding of the extended-precision oracle).  The cuda backend under
the simulator is checked for agreement with the CPU backend (``against="cpu"``) on the quick shapes, not
reported as GPU accuracy: the simulator's arithmetic is NumPy's, not the GPU's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .. import registry
from ..cli import MANY, backend_error, non_negative_int, output_dir_error, unique, writable_file_error
from ..numerics import ACCUMULATORS, VARIANCE_ALGORITHMS, resolve
from . import families, metrics, oracle

DTYPES = ("float32", "float64")
RESULTS = Path("results/accuracy")
#: fused add + norm's dx against the gradient at the exact ``h`` (:func:`fused_backward_oracle`): an end-to-end
#: figure for one note in docs/numerics.md, not a kernel's error; tables of kernels' errors leave this pass out
EXACT_H_PASS = "backward_exact_h"
META = ("variant", "family", "dtype", "shape", "impl", "kind", "against", "eps_placement", "correction", "variance",
        "accumulate", "is_default", "pass", "output")


def option_sets(variant: str) -> list[dict]:
    """The defaults first, then one factor at a time."""
    if not registry.VARIANTS[variant].uses_numerics:
        return [{}]
    sets = [{}]
    for v in VARIANCE_ALGORITHMS:
        for a in ACCUMULATORS[1:]:
            sets.append(dict(variance=v, accumulate=a))
    sets += [dict(eps_placement="outside"), dict(correction=1)]
    return sets


def _resolved(numerics: dict, dtype) -> dict:
    o = resolve(numerics)
    return dict(eps_placement=o.eps_placement, correction=o.correction, variance=o.variance,
                accumulate=o.accumulator(dtype).name)


def _host(a):
    if a is None or isinstance(a, np.ndarray):
        return a
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def _named(names, outputs):
    return {n: _host(o) for n, o in zip(names, outputs) if o is not None}


def _rows(meta: dict, pass_: str, res: dict) -> list[dict]:
    return [dict(meta, **{"pass": pass_, "output": name}, **m) for name, m in res.items()]


def _error_row(meta, pass_, err):
    return [dict(meta, **{"pass": pass_, "output": "", "error": f"{type(err).__name__}: {err}"})]


def run_backend(variant, inputs, dy, backend, numerics, ref_fwd, ref_bwd, meta):
    """Forward and backward of ``backend`` with ``numerics`` against (ref_fwd, ref_bwd): tidy rows."""
    spec = registry.VARIANTS[variant]
    try:
        out = spec.run_forward(oracle.fresh(inputs), backend=backend, **numerics)
    except Exception as err:  # a missing feature or a crash is a result, not the end of the sweep
        return _error_row(meta, "forward", err)
    fwd = _named(oracle.FORWARD_NAMES[variant], out)
    rows = _rows(meta, "forward", metrics.compare(variant, inputs, fwd, ref_fwd, ref_fwd))
    try:
        bwd = _named(oracle.BACKWARD_NAMES[variant], spec.run_backward(inputs, out, dy, backend=backend, **numerics))
    except Exception as err:
        return rows + _error_row(meta, "backward", err)
    if variant == "fused_add_norm" and meta.get("against", "oracle") == "oracle":
        exact_h = _rows(meta, EXACT_H_PASS, metrics.compare(variant, inputs, bwd, ref_bwd, ref_fwd))
        rows += [r for r in exact_h if r["output"] == "dx"]
        ref_bwd = fused_backward_oracle(inputs, fwd, dy, numerics)
    return rows + _rows(meta, "backward", metrics.compare(variant, inputs, bwd, ref_bwd, ref_fwd))


def fused_backward_oracle(inputs, fwd, dy, numerics):
    """Fused add + norm's backward is judged given its own inputs: the stored ``h`` (rounded to the input dtype
    by contract) and the forward's statistics (of the exact ``h``).  Against the gradient at the exact ``h``, the
    rounding of ``h`` alone costs about |offset|/spread units on offset data (float32, offset 1e4: ~750): a
    property of storing ``h`` in the input dtype while normalising the exact sum, which a backward given only the
    stored ``h`` cannot undo, not of the kernel (an implementation normalising the stored ``h`` would have no such
    gap, and y half an ulp of ``h`` worse; the sweep records the end-to-end figure too, as pass
    ``backward_exact_h``)."""
    W = oracle.wide_dtype(inputs["x"].dtype)
    given = {k: np.asarray(fwd[k]).astype(W) for k in ("h", "mean", "rstd") if k in fwd}
    return oracle.backward("fused_add_norm", inputs, given, dy, opts=resolve(numerics))


def run_peers(variant, inputs, dy, oracles, meta, peer_names):
    """The peers with their own definitions: NumPy textbook and PyTorch (eps inside, biased), the tutorial
    layer norm (eps outside)."""
    rows = []
    ref_fwd, ref_bwd = oracles(dict())
    for peer in peer_names:
        m = dict(meta, impl=peer, kind="peer", **_resolved({}, inputs["x"].dtype))
        m.update(variance="", accumulate="")
        try:
            from .. import peers

            fwd, bwd = peers.prepare(peer, variant, oracle.fresh(inputs), dy)
            y = np.asarray(fwd())
            rows += _rows(m, "forward", metrics.compare(variant, inputs, {"y": y}, {"y": ref_fwd["y"]}, ref_fwd))
            dx = np.asarray(bwd())
            rows += _rows(m, "backward", metrics.compare(variant, inputs, {"dx": dx}, {"dx": ref_bwd["dx"]}, ref_fwd))
        except NotImplementedError:
            continue
        except Exception as err:
            rows += _error_row(m, "forward", err)
    if variant == "layer_norm":
        from .textbook import tutorial_layer_norm

        out_fwd, _ = oracles(dict(eps_placement="outside"))
        m = dict(meta, impl="tutorial", kind="peer", **_resolved(dict(eps_placement="outside"), inputs["x"].dtype))
        m.update(variance="", accumulate="")
        with np.errstate(all="ignore"):
            y = tutorial_layer_norm(oracle.fresh(inputs))
        rows += _rows(m, "forward", metrics.compare(variant, inputs, {"y": y}, {"y": out_fwd["y"]}, out_fwd))
    return rows


def cases(variants, fams, dtypes):
    for v in variants:
        for f in fams:
            if not families.applies(f, v):
                continue
            for d in dtypes:
                yield v, f, d


def _peer_names():
    try:
        from .. import peers
    except ImportError:
        return []
    return [p for p in peers.available() if p != "jax"]


def sweep(variants=None, fams=None, dtypes=DTYPES, backends=None, *, quick=False, peers=True, seed=0,
          progress=False):
    """The sweep as a tidy DataFrame (see the module docstring)."""
    import pandas as pd

    variants = list(variants or registry.VARIANTS)
    fams = list(fams or families.FAMILIES)
    if quick:
        fams = [f for f in fams if f != "long_rows"]
    peer_names = _peer_names() if peers else []
    todo = list(cases(variants, fams, dtypes))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="accuracy", unit="case", file=sys.stderr)
    rows = []
    for k, (variant, fam, dtype) in enumerate(todo):
        rng = np.random.default_rng([seed, k])
        inputs = families.make(fam, variant, dtype, rng, quick=quick)
        dy = rng.standard_normal(inputs["x"].shape).astype(dtype)
        meta = dict(variant=variant, family=fam, dtype=dtype, shape="x".join(map(str, inputs["x"].shape)),
                    against="oracle")
        cache = {}

        def oracles(numerics):
            key = (numerics.get("eps_placement", "inside"), numerics.get("correction", 0))
            if key not in cache:
                opts = resolve(numerics)
                f = oracle.forward(variant, inputs, opts=opts)
                cache[key] = (f, oracle.backward(variant, inputs, f, dy, opts=opts))
            return cache[key]

        avail = [b for b in registry.available_backends(variant) if backends is None or b in backends]
        with np.errstate(all="ignore"):
            for backend in avail:
                if backend == "cuda" and _simulated_cuda():  # the simulator: agreement with cpu, below
                    continue
                for numerics in (option_sets(variant) if backend != "reference" else [{}]):
                    ref_fwd, ref_bwd = oracles(numerics)
                    m = dict(meta, impl=backend, kind="backend", is_default=not numerics, **_resolved(numerics, dtype))
                    rows += run_backend(variant, inputs, dy, backend, numerics, ref_fwd, ref_bwd, m)
            if "cuda" in avail and "cpu" in avail and fam != "long_rows":
                rows += cuda_agreement(variant, fam, dtype, rng, meta)
            if peer_names or variant == "layer_norm" and peers:
                rows += run_peers(variant, inputs, dy, oracles, dict(meta, is_default=True), peer_names)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    df = pd.DataFrame(rows)
    for col in META + metrics.COLUMNS + ("error",):
        if col not in df:
            df[col] = "" if col == "error" else np.nan
    return df[list(META) + list(metrics.COLUMNS) + ["error"]]


def _simulated_cuda():
    from .. import cuda

    return cuda.simulator()


def cuda_agreement(variant, fam, dtype, rng, meta):
    """The cuda backend (simulator or GPU) against the CPU backend on the quick shapes, defaults and each variance
    algorithm: agreement, not accuracy."""
    if not _simulated_cuda():  # on a real GPU the cuda backend is measured against the oracle like any other
        return []
    inputs = families.make(fam, variant, dtype, rng, quick=True)
    dy = rng.standard_normal(inputs["x"].shape).astype(dtype)
    spec = registry.VARIANTS[variant]
    rows = []
    sets = [{}] + [dict(variance=v) for v in VARIANCE_ALGORITHMS] if spec.uses_numerics else [{}]
    for numerics in sets:
        cpu_f = spec.run_forward(oracle.fresh(inputs), backend="cpu", **numerics)
        cpu_fwd = _named(oracle.FORWARD_NAMES[variant], cpu_f)
        cpu_bwd = _named(oracle.BACKWARD_NAMES[variant], spec.run_backward(inputs, cpu_f, dy, backend="cpu",
                                                                            **numerics))
        m = dict(meta, impl="cuda", kind="agreement", against="cpu", is_default=not numerics,
                 shape="x".join(map(str, inputs["x"].shape)), **_resolved(numerics, dtype))
        rows += run_backend(variant, inputs, dy, "cuda", numerics, cpu_fwd, cpu_bwd, m)
    return rows


# ============================================================================================== summary
def summary(df) -> str:
    """Markdown: the defaults' max error (units of eps) per variant x family, float32 and float64, cpu backend;
    then every failure (NaN/Inf where the oracle is finite) and every error raised."""
    parts = []
    base = df[(df.kind == "backend") & (df.impl == "cpu") & (df.is_default == True)]  # noqa: E712
    for dtype in DTYPES:
        d = base[(base.dtype == dtype) & base.output.isin(["y", "dx"])]
        if d.empty:
            continue
        t = d.pivot_table(index="family", columns=["variant", "output"], values="max_err", aggfunc="max")
        parts.append(f"### Default options, cpu backend, {dtype}: max error (units of eps)\n\n"
                     + t.round(2).to_markdown())
    fails = df[(df.n_fail > 0)]
    if not fails.empty:
        f = fails.groupby(["impl", "variant", "family", "dtype", "variance", "accumulate", "eps_placement"],
                          dropna=False).n_fail.sum().reset_index()
        parts.append("### NaN/Inf where the oracle is finite\n\n" + f.to_markdown(index=False))
    errs = df[df.error.fillna("") != ""]
    if not errs.empty:
        e = errs[["impl", "variant", "family", "dtype", "pass", "error"]].drop_duplicates(["impl", "variant", "error"])
        parts.append("### Errors raised\n\n" + e.to_markdown(index=False))
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="normbench accuracy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, float32 only, no long rows")
    ap.add_argument("--variant", **MANY, choices=list(registry.VARIANTS), help="variants (default: all)")
    ap.add_argument("--family", **MANY, choices=list(families.FAMILIES), help="families (default: all)")
    ap.add_argument("--dtype", **MANY, choices=DTYPES, help="dtypes (default: both; --quick: float32)")
    ap.add_argument("--backend", **MANY, choices=registry.BACKENDS, help="backends (default: all available)")
    ap.add_argument("--no-peers", action="store_true", help="skip the peers")
    ap.add_argument("--out", default=str(RESULTS), help="output folder (default results/accuracy/)")
    ap.add_argument("--plot", action="store_true", help="also run the studies (fixed variants and dtypes; --quick "
                    "and --seed apply) and write PNG figures; needs matplotlib")
    ap.add_argument("--docs", nargs="?", const="docs/numerics.md", default=None,
                    help="write docs/numerics.md (or the given path) from the results in --out")
    ap.add_argument("--seed", type=non_negative_int, default=0, help="data seed, a non-negative integer (default 0)")
    args = ap.parse_args(argv)
    args.variant, args.family, args.dtype, args.backend = map(unique, (args.variant, args.family, args.dtype,
                                                                       args.backend))
    out = Path(args.out)
    problem = (output_dir_error("--out", out) or (args.docs and writable_file_error("--docs", args.docs, create=True))
               or backend_error(args.backend, args.variant or list(registry.VARIANTS)))
    if problem:
        ap.error(problem)
    if args.plot:  # before the sweep (the CLI turns its absence into the one-line hint): not after a whole run
        import matplotlib  # noqa: F401
    dtypes = args.dtype or (("float32",) if args.quick else DTYPES)
    df = sweep(args.variant, args.family, dtypes, args.backend, quick=args.quick, peers=not args.no_peers,
               seed=args.seed, progress=True)
    name = "accuracy-quick.csv" if args.quick else "accuracy.csv"
    if df.empty:  # never replace earlier results with a header-only file
        print(f"normbench accuracy: nothing measured; {out / name} left as it was", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / name, index=False)
    if (df.kind == "agreement").any():  # kept apart: a simulator run is slow and done separately
        df[df.kind == "agreement"].to_csv(out / "cuda-agreement.csv", index=False)
    print(summary(df))
    print(f"wrote {out / name} ({len(df)} rows)")
    if args.plot:
        from . import plots, studies

        studies.run_all(out, quick=args.quick, seed=args.seed)
        for path in plots.plot_all(out):
            print(f"wrote {path}")
    if args.docs:
        from .docs import write_numerics

        print(f"wrote {write_numerics(out, Path(args.docs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
