"""Write docs/numerics.md from results/accuracy/: tables, figures and plain conclusions drawn from the numbers.

``python -m normbench.accuracy.docs [results/accuracy] [docs/numerics.md]`` or ``normbench accuracy --docs``.
Every number in the page comes from the CSVs; the prose around them is chosen by what the numbers say.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .. import numerics
from .sweep import EXACT_H_PASS

GUARD_BOUND = 4.0


def _md(df, index=True, digits=2):
    return df.round(digits).to_markdown(index=index) if not df.empty else "_(no data)_"


def _fmt(v):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    if v == np.inf:
        return "inf"
    if v >= 1e4:
        return f"{v:.1e}"
    return f"{v:.2g}" if v < 10 else f"{v:.0f}"


def _pivot(d, index, columns, values="max_err"):
    if d.empty:
        return d
    t = d.pivot_table(index=index, columns=columns, values=values, aggfunc="max")
    return t.map(_fmt) if hasattr(t, "map") else t.applymap(_fmt)


def _rel(path: Path, target: Path) -> str:
    return os.path.relpath(path, target.parent)


def _speed_doc(out_path: Path):
    """B's measured speed cost of the variance algorithms, when docs/cpu-rowwise.md exists."""
    p = out_path.parent / "cpu-rowwise.md"
    return p if p.exists() else None


OFFSETS = ("offset1e3", "offset1e4", "offset1e6")
#: the float32 stress families the defaults' claim names, in the words it uses
FLOAT32_STRESS = {"offset1e4": "offset data", "offset1e6": "offset data", "overflow32":
                  "data whose squares overflow float32", "constant": "constant rows", "long_rows": "2**20-long rows"}
NOT_STUDIED = "Not in this run: the studies are written by `normbench accuracy --plot`.\n"


def _float32_conclusion(d32) -> str:
    """The claim the float32 defaults' figures (all within one unit, no failures) support, naming only the stress
    families that were measured."""
    stress = list(dict.fromkeys(FLOAT32_STRESS[f] for f in FLOAT32_STRESS if f in set(d32.family)))
    where = (", on " + (", ".join(stress[:-1]) + " and " if len(stress) > 1 else "") + stress[-1] + " alike"
             if stress else "")
    return f": the float64 accumulator makes float32 kernels as good as rounding the exact result once{where}."


def _algorithm_conclusion(alg) -> str:
    """What the float32 data at offset 1e4 says about the algorithms and the accumulator: the figures, and the
    conclusions only where they hold."""
    o4 = alg[alg.family == "offset1e4"].groupby(["accumulate", "variance"]).max_err.max()
    if o4.empty:
        return "Offset 1e4 was not measured in this run: no conclusion about the algorithms.\n"
    names = {"naive": "naive", "two_pass": "two-pass", "welford": "Welford", "shifted": "shifted"}
    text = []
    for acc in ("float32", "float64"):
        if acc in o4.index.get_level_values(0):
            text.append(f"With a **{acc} accumulator**, at offset 1e4: " + ", ".join(
                f"{names.get(v, v)} {_fmt(e)}" for v, e in o4[acc].items()) + " units.")
    if {"float32", "float64"} <= set(o4.index.get_level_values(0)):
        if o4["float32"].min() > o4["float64"].max():
            text.append("Every algorithm with a float64 accumulator beats every algorithm with a float32 one: the "
                        "accumulator matters more than the algorithm.")
        if "naive" in o4["float32"] and o4["float32"]["naive"] > 10 * o4["float32"].min():
            text.append("Naive float32 sums lose most (catastrophic cancellation of sum(x^2) - sum(x)^2/n).")
    f64 = o4.get("float64")
    if f64 is not None and {"shifted", "two_pass"} <= set(f64.index) and f64["shifted"] <= f64["two_pass"] + 0.5:
        text.append("With a float64 accumulator the one-pass shifted sums are as accurate as two passes "
                    "(within half a unit).")
    return " ".join(text) + "\n"


def build(results: Path, out_path: Path) -> str:
    import pandas as pd

    results = Path(results)
    csv = results / "accuracy.csv"
    if not csv.exists():
        csv = results / "accuracy-quick.csv"
    df = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    df["is_default"] = df.is_default.astype(str) == "True"
    ex = df[(df["pass"] == EXACT_H_PASS) & df.family.str.startswith("offset") & (df.dtype == "float32")
            & df.is_default & (df.impl == "cpu")].groupby("family").max_err.max()
    exact_h = ", ".join(f"{k[6:]}: {_fmt(v)}" for k, v in ex.items())
    df = df[df["pass"] != EXACT_H_PASS]  # an end-to-end figure for one note, not a kernel's error
    study = {n: pd.read_csv(results / f"{n}.csv") for n in
             ("offset_study", "eps_placement_study", "correction_study", "speed_study")
             if (results / f"{n}.csv").exists()}
    fig = {n: results / n for n in ("error_vs_offset.png", "eps_placement.png", "correction_vs_batch.png")
           if (results / n).exists()}
    L = []
    w = L.append
    w("# Numerics: how wrong, and why\n")
    w(f"_Generated by `normbench accuracy --docs` from `{_rel(csv, out_path)}` "
      f"({len(df)} rows); do not edit by hand._\n")
    w("Every error is measured against the **oracle** (the reference computed in float64 for float32 inputs and in "
      "x87 extended precision for float64 inputs, itself checked against exact rational arithmetic in "
      "tests/test_accuracy.py) and reported in **units of the input dtype's eps scaled by the magnitude of the "
      "row** (channel, group) it belongs to: `max |out - oracle| / (eps * max |oracle row|)`. 1 unit is one "
      "rounding of the largest value of the row; a correctly rounded result scores at most 0.5. A row whose "
      "exact result is all zero (the backward of a one-value group) is scaled by the whole output's largest value. "
      "Parameter "
      "gradients are scaled by the largest entry of the vector, `mean` by `|mean| + std`, `rstd` relatively. "
      "NaN/Inf where the oracle is finite count as failures (`n_fail`), never as an error figure. "
      "Details: normbench/accuracy/metrics.py; stress families: normbench/accuracy/families.py.\n")

    # ---------------------------------------------------------------------------------- defaults
    var, acc = numerics.DEFAULT_VARIANCE, numerics.DEFAULT_ACCUMULATE[np.dtype(np.float32)]
    w("## The defaults\n")
    w(f"`variance=\"{var}\"`, `accumulate=\"{acc}\"` for float32 (and float64) inputs, `eps_placement=\"inside\"`, "
      "`correction=0`: PyTorch's definitions, this project's algorithm.\n")
    cpu = df[(df.kind == "backend") & (df.impl == "cpu")]
    dflt = cpu[cpu.is_default]
    for dtype in ("float32", "float64"):
        d = dflt[(dflt.dtype == dtype) & dflt.output.isin(["y", "dx"])]
        if d.empty:
            continue
        w(f"### Default options, cpu backend, {dtype}: max error (units of eps), y / dx\n")
        t = d.assign(col=d.variant + " " + d.output)
        w(_md(_pivot(t, "family", "col")) + "\n")
    d32 = dflt[dflt.dtype == "float32"]
    if not d32.empty:
        worst = d32.max_err.max()
        fails = int(d32.n_fail.sum())
        w(f"**Float32:** the defaults' worst error over every variant, family and output measured (saved "
          f"statistics and parameter gradients included) is **{_fmt(worst)} units**, with {fails} NaN/Inf "
          f"failures" + (_float32_conclusion(d32) if worst <= 1 and not fails else ".")
          + f" tests/test_accuracy.py guards the defaults: within **{GUARD_BOUND:g} units** on every family "
          f"for every available backend.\n")
    d64 = dflt[dflt.dtype == "float64"]
    if not d64.empty:
        off = d64[d64.family.isin(OFFSETS)].groupby("family").max_err.max()
        hard = list(OFFSETS) + ["long_rows", "cauchy", "mixed_scale", "overflow32"]
        rest = d64[~d64.family.isin(hard)]
        by_fam = d64[d64.family.isin(hard[len(OFFSETS):])].groupby("family").max_err.max()
        text = ["**Float64:** nothing is wider than the data by default, so the error follows the conditioning:"]
        if not rest.empty:
            text.append(f"at most {_fmt(rest.max_err.max())} units on well-conditioned families"
                        + ("," if len(off) or len(by_fam) else "."))
        if len(off):
            text.append("on offset data " + ", ".join(f"{_fmt(v)} at {k[6:]}" for k, v in off.items())
                        + " (the mean itself cannot be represented closer than half an ulp of the offset)"
                        + ("." if by_fam.empty else ";"))
        if len(by_fam):
            text.append("elsewhere " + ", ".join(f"{k} {_fmt(v)}" for k, v in by_fam.items())
                        + " units (sums over 2**20 values, dynamic range of the data, LRN's power of x*x near 1e40).")
        text.append("The guard's float64 bounds scale accordingly (tests/test_accuracy.py, `FLOAT64_BOUND`).\n")
        w(" ".join(text))

    # ---------------------------------------------------------------------------------- algorithms
    w("## Variance algorithm and accumulator\n")
    alg = cpu[(cpu.dtype == "float32") & cpu.output.isin(["y"]) & (cpu.eps_placement == "inside")
              & (cpu.correction == 0) & cpu.family.isin(["standard", "offset1e3", "offset1e4", "offset1e6",
                                                         "overflow32", "long_rows"])
              & cpu.variant.isin(["layer_norm", "batch_norm", "group_norm"])]
    if not alg.empty:
        w("Max error of y (units of eps), float32, cpu backend, by algorithm and accumulator:\n")
        w(_md(_pivot(alg.assign(option=alg.variance + " / " + alg.accumulate), ["variant", "option"], "family"))
          + "\n")
        w(_algorithm_conclusion(alg))
        of = cpu[(cpu.family == "overflow32") & (cpu.dtype == "float32") & (cpu.accumulate == "float32")]
        if not of.empty and of.n_fail.sum() + (of.max_err > 1e3).sum() > 0:
            w("On data whose squares overflow float32 (|x| ~ 1e20), float32 accumulators overflow: the output "
              "is lost (NaN/Inf or a zeroed row); float64 accumulators are exact there.\n")
    if "error_vs_offset.png" in fig:
        w(f"![error vs offset]({_rel(fig['error_vs_offset.png'], out_path)})\n")
        w("_Error of y vs the mean offset (in units of the spread) per algorithm; dashed: float32 accumulator. "
          "Float64 data (bottom) with a float64 accumulator grows linearly with the offset: the conditioning "
          "of centring, not the algorithm._\n")
    sp = study.get("speed_study")
    w("### What the defaults cost in speed\n")
    if sp is None or sp.empty:
        w(NOT_STUDIED)
    else:
        t = sp.assign(option=sp.variance + " / " + sp.accumulate).pivot_table(
            index="option", columns="variant", values=["forward_vs_default", "backward_vs_default"])
        w("Time relative to the defaults (shifted / float64), cpu backend, float32, medians measured in the same "
          f"run (shapes {', '.join(sorted(set(sp.variant + ' ' + sp['shape'])))}; <1 is faster than the default):\n")
        w(_md(t) + "\n")
        w("These ratios come from a shared 2-core machine and carry its noise: differences below ~20% are not "
          "significant there. The algorithms all read x once (two-pass reads each row twice from cache), so "
          "the kernels stay memory-bound and the float64 accumulator costs little on bandwidth-bound shapes.\n")
    speed_doc = _speed_doc(out_path)
    if speed_doc:
        w(f"The CPU row-wise kernels' own measurements of this trade-off: [{speed_doc.name}]({speed_doc.name}).\n")

    # ---------------------------------------------------------------------------------- peers
    peers = df[(df.kind == "peer") & (df.dtype == "float32")]
    if not peers.empty:
        w("## Where the peers lose accuracy\n")
        w("Peers on the same inputs, each judged against the oracle of **its own definition** (NumPy textbook "
          "and PyTorch: eps inside, biased variance; the tutorial layer norm "
          "`gamma * (x - mean) / (x.std() + eps) + beta`: eps outside), float32, max error of y (units of eps), "
          "beside normbench's cpu defaults:\n")
        both = pd.concat([peers, d32.assign(impl="normbench cpu")])
        for variant in ("layer_norm", "batch_norm", "group_norm", "rms_norm"):
            b = both[(both.variant == variant) & (both.output == "y")]
            if b.impl.nunique() > 1:
                w(f"**{variant}**\n")
                w(_md(_pivot(b, "family", "impl")) + "\n")
        p_off = peers[(peers.family == "offset1e4") & (peers.output == "y")].groupby("impl").max_err.max()
        p_ovf = peers[(peers.family == "overflow32")].groupby("impl").n_fail.sum()
        if not p_off.empty:
            w("At offset 1e4 the peers reach (worst over variants) "
              + ", ".join(f"{k} {_fmt(v)}" for k, v in p_off.items())
              + " units where normbench's defaults stay below 1: float32 arithmetic on the data itself "
                "(the mean, the deviations) loses what the offset takes. ")
        p_const = peers[(peers.family == "constant") & (peers.output == "y")].groupby("impl").max_err.max()
        if not p_const.empty:
            w("On constant rows/channels (variance exactly 0; a centred norm must then output exactly the bias) "
              "the peers reach "
              + ", ".join(f"{k} {_fmt(v)}" for k, v in p_const.items())
              + " units (worst over variants): a float32 mean of equal values is not always that value, and "
                "the rounding left in x - mean is amplified by 1/sqrt(eps) (1/eps with eps outside). ")
        if not p_ovf.empty and p_ovf.sum():
            w("On |x| ~ 1e20 (x*x overflows float32): " + ", ".join(f"{k} {v} NaN/Inf" for k, v in p_ovf.items())
              + ".")
        w("\n")

    # ---------------------------------------------------------------------------------- eps placement
    ep = study.get("eps_placement_study")
    w("## When eps placement matters\n")
    if ep is None or ep.empty:
        w(NOT_STUDIED)
    else:
        t = ep.pivot_table(index="var_over_eps", columns=["variant", "output"], values="rel_diff")
        w("Max relative difference between `1/sqrt(var + eps)` and `1/(sqrt(var) + eps)` outputs (exact values, "
          "float64 oracle), vs var/eps:\n")
        w(_md(t, digits=6) + "\n")
        y = ep[(ep.output == "y")].groupby("var_over_eps").rel_diff.max()
        above = y[y > 1e-2]
        thr = above.index.max() if not above.empty else None
        dx = ep[(ep.output == "dx")].groupby("var_over_eps").rel_diff.max()
        w(f"The two definitions differ by more than 1% up to var/eps = {_fmt(thr)} and the difference falls off "
          f"as eps/(2 var) above it (the relative difference is sqrt(var+eps)/(sqrt(var)+eps) - 1 ~ "
          f"eps/(2 var) - eps/sqrt(var); var/eps = {_fmt(y.index[-1])}: {_fmt(y.iloc[-1])}): the placement matters "
          f"when the variance is within a few orders of magnitude of eps (tiny activations, near-constant "
          f"channels, small-magnitude data with eps 1e-5), not for ordinary O(1) data. Below var = eps the "
          f"outputs differ by up to {_fmt(y.max())}x and the gradients by up to {_fmt(dx.max())}x.\n")
    if "eps_placement.png" in fig:
        w(f"![eps placement]({_rel(fig['eps_placement.png'], out_path)})\n")
    near = cpu[(cpu.family == "var_near_eps") & (cpu.dtype == "float32") & cpu.output.isin(["y", "dx"])
               & (cpu.variance == var) & (cpu.accumulate == acc) & (cpu.correction == 0)]
    if not near.empty:
        w("Both placements are computed accurately by the kernels (var close to eps, float32, max error):\n")
        w(_md(_pivot(near.assign(col=near.output + " " + near.eps_placement), "variant", "col")) + "\n")

    # ---------------------------------------------------------------------------------- correction
    cs = study.get("correction_study")
    w("## What correction does to small batches\n")
    if cs is None or cs.empty:
        w(NOT_STUDIED)
    else:
        w("Batch norm, max relative difference between `correction=1` (unbiased) and `correction=0` (biased, "
          "PyTorch's normalising variance) outputs, exact values:\n")
        w(_md(cs.pivot_table(index="N", columns="output", values=["rel_diff", "closed_form"]), digits=5) + "\n")
        y = cs[cs.output == "y"].set_index("N").rel_diff
        w("Unbiased outputs are sqrt((N-1)/N) times the biased ones: "
          + ", ".join(f"{100 * r:.2g}% smaller at N = {n}" for n, r in y[y.index.isin([2, 64])].items())
          + " (the closed form column). With N = 2 every normalised value is +-1 (biased) "
          "or +-0.71 (unbiased): the choice changes the layer's output scale, not its accuracy, so it must match "
          "between training and whatever the model is compared with. The running variance is always unbiased "
          "(n - 1), as PyTorch's.\n")
    if "correction_vs_batch.png" in fig:
        w(f"![correction]({_rel(fig['correction_vs_batch.png'], out_path)})\n")
    n2 = cpu[(cpu.family == "batch_n2") & cpu.output.isin(["y", "dx"]) & (cpu.variance == var)
             & (cpu.accumulate == acc) & (cpu.eps_placement == "inside")]
    if not n2.empty:
        w("Kernel accuracy with N = 2 per correction (max error, units of eps):\n")
        w(_md(_pivot(n2.assign(col=n2.output + " c=" + n2.correction.astype(str)), "dtype", "col")) + "\n")

    # ---------------------------------------------------------------------------------- failures, cuda
    fails = df[(df.n_fail > 0) & (df.kind == "backend")]
    w("## Failures (NaN/Inf where the oracle is finite)\n")
    if fails.empty:
        w("None.\n")
    else:
        f = fails.groupby(["impl", "dtype", "family", "variance", "accumulate"]).agg(
            variants=("variant", lambda s: ", ".join(sorted(set(s)))), n_fail=("n_fail", "sum")).reset_index()
        w(_md(f, index=False) + "\n")
        if (fails.accumulate != "float32").sum() == 0:
            w("Every failure comes from a float32 accumulator.\n")
    errs = df[df.error.notna() & (df.error.astype(str) != "")] if "error" in df else df[:0]
    if not errs.empty:
        w("Calls that raised (features not implemented by a backend at the time of the run):\n")
        w(_md(errs[["impl", "variant", "dtype", "pass", "error"]].drop_duplicates(["impl", "variant", "error"]),
              index=False) + "\n")
    cu = df[df.kind == "agreement"]
    if cu.empty and (results / "cuda-agreement.csv").exists():
        cu = pd.read_csv(results / "cuda-agreement.csv")
    w("## CUDA backend\n")
    if cu.empty:
        w("Not in this run: the CUDA backend is checked under the simulator (`NUMBA_ENABLE_CUDASIM=1 normbench "
          "accuracy --quick`) for agreement with the CPU backend only. The simulator's arithmetic is NumPy's, not "
          "the GPU's, so it says nothing about GPU accuracy.\n")
    else:
        w("Under the simulator (`NUMBA_ENABLE_CUDASIM=1 normbench accuracy --quick ...`), cuda vs cpu backend on "
          f"the quick shapes ({', '.join(sorted(cu.family.unique()))}, {', '.join(sorted(cu.dtype.unique()))}): "
          "agreement, not GPU accuracy (the simulator's arithmetic is NumPy's). Max difference in units of eps:\n")
        w(_md(_pivot(cu, ["variant", "variance"], "output")) + "\n")

    # ---------------------------------------------------------------------------------- notes
    w("## How to read these numbers\n")
    notes = ("- The oracle's own error: below 1e-6 units for float32 and below 0.1 units for float64 on 1e3-offset "
      "data (tests/test_accuracy.py compares it with exact rationals); on float64 data offset by 1e6 it is ~2**-11 of "
      "the offset's ulp, still 1000x below what it judges.\n"
      "- Fused add + norm's backward is judged given its own inputs (the stored `h`, rounded to the input dtype "
      "by contract, and the forward's statistics)."
      + (" Judged against the gradient at the exact `h`, the rounding of `h` alone costs units that grow with the "
         f"offset (float32, dx, offset {exact_h}; pass `backward_exact_h` in the CSV): a property of storing `h` "
         "in the input dtype while normalising the exact sum (as the reference, this project's backends and "
         "PyTorch's composition do), which a backward given only the stored `h` cannot undo; not of a kernel."
         if len(ex) else "")
      + "\n- `reference` rows are a sanity check of the harness: 0 for float32 inputs, at most 0.5 units for float64 "
      "ones (the reference backend rounds the extended-precision oracle to float64).\n"
      "- Reproduce: `normbench accuracy --plot --docs` (full: ~20 min on a shared 2-core machine) or "
      "`normbench accuracy --quick`.\n")
    w(notes)
    return "\n".join(L)


def write_numerics(results: Path, out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(build(Path(results), out_path))
    return out_path


if __name__ == "__main__":
    args = sys.argv[1:]
    print(write_numerics(Path(args[0] if args else "results/accuracy"),
                         Path(args[1] if len(args) > 1 else "docs/numerics.md")))
