"""``normbench report``: every result file -> pandas DataFrames -> markdown tables and PNG plots.

Sources (each optional; whatever is present is reported):

* ``normbench run`` documents: ``results/runs/*.json`` (the latest per machine and thread count);
* asv results: ``results/asv/<machine>/<commit>-<env>.json`` (history across commits and machines);
* pytest-benchmark JSON: ``results/pytest/**/*.json`` (normbench vs the peers, per case);
* the accuracy sweep: ``results/accuracy/*.csv``.

Output: ``<out>/report.md`` and PNGs beside it (bandwidth fraction per variant and pass — the roofline bar
chart —, speed-up over the peers, asv history of chosen benchmarks, accuracy vs mean offset).  ``--readme``
rewrites the results table of README.md between ``<!-- results:start -->`` and ``<!-- results:end -->``: that
table is generated, never typed.  A file that is truncated, not JSON/CSV, from another schema, or holds the wrong
types (a string for a number, a list for an object) is reported with a one-line message naming it and skipped:
never a traceback; a null number is shown blank.  A source path given on the command line that does not exist,
a --history that is not a regular expression, or a --readme whose markers are not one start before one end (nor
absent), is an argument error (exit code 2); a default source folder that does not exist is passed over quietly.
"""
from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .accuracy.sweep import EXACT_H_PASS, META
from .benchmarks.cases import BIG_BYTES
from .cli import output_dir_error, writable_file_error

RUN_SCHEMA = "normbench.run/1"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
RUN_COLUMNS = ("case", "variant", "shape", "dtype", "params", "pass", "backend", "bytes", "time_s", "gbps",
               "copy_gbps", "frac_copy", "limit", "frac_limit", "err_eps")
RUN_NUMBERS = ("bytes", "time_s", "gbps", "copy_gbps", "frac_copy", "frac_limit", "err_eps")
ACCURACY_COLUMNS = ("variant", "family", "dtype", "impl", "pass", "output", "max_err")


class ResultFileError(ValueError):
    """A results file that cannot be read: the message names the file and what is wrong with it."""


# ============================================================================================ loaders
def _loader(load):
    """A loader that reports a file of the right shape but wrong content (a list where an object belongs, a
    string for a number, a bad date) as ResultFileError naming the file, like a truncated one: one place for
    what the CLI skips, rather than a guard per field."""
    @functools.wraps(load)
    def wrapper(path):
        try:
            return load(path)
        except ResultFileError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            raise ResultFileError(f"{path}: unexpected content ({type(err).__name__}: {err})") from None

    return wrapper


def _numbers(df: pd.DataFrame, columns, path) -> None:
    """Make ``columns`` float in place: null stays NaN (shown blank), anything else non-numeric is damage."""
    for c in columns:
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna() & df[c].notna()
        if bad.any():
            raise ResultFileError(f"{path}: non-numeric {c!r} ({df[c][bad].iloc[0]!r})")
        df[c] = values.astype(float)


def _read_json(path: Path):
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ResultFileError(f"{path}: cannot read ({err.strerror})") from None
    if not text.strip():
        raise ResultFileError(f"{path}: empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        hint = "truncated (ends mid-document)" if err.pos >= len(text.rstrip()) - 1 else "not valid JSON"
        raise ResultFileError(f"{path}: {hint} at line {err.lineno} column {err.colno}") from None


@_loader
def load_run(path) -> pd.DataFrame:
    """One ``normbench run`` document -> rows, with its machine tag and creation time."""
    doc = _read_json(path)
    if not isinstance(doc, dict) or "schema" not in doc:
        raise ResultFileError(f"{path}: not a normbench run document (no 'schema' field)")
    if doc["schema"] != RUN_SCHEMA:
        raise ResultFileError(f"{path}: schema {doc['schema']!r}; this version reads {RUN_SCHEMA!r}")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ResultFileError(f"{path}: no result rows")
    df = pd.DataFrame(rows)
    missing = [c for c in RUN_COLUMNS if c not in df.columns]
    if missing:
        raise ResultFileError(f"{path}: rows lack columns {missing} (older schema?)")
    _numbers(df, RUN_NUMBERS + tuple(c for c in df.columns if c.startswith("speedup_")), path)
    text = [c for c in RUN_COLUMNS if c not in RUN_NUMBERS]
    df[text] = df[text].fillna("").astype(str)  # the tables and plot labels join them as strings
    m = doc.get("machine", {})
    df["machine"] = f"{m.get('machine', '?')}-{m.get('numba_threads', '?')}t"
    df["created"] = str(doc.get("created", ""))  # compared across files by latest_runs
    df["peers_paired"] = doc.get("peer_timing") == "paired"  # older runs overstate the speed-ups (runner.py)
    df["file"] = Path(path).name
    code = doc.get("code") if isinstance(doc.get("code"), dict) else {}
    commit = str(code.get("commit") or "")[:8]  # runs before normbench recorded it: ""
    df["commit"] = commit + "+dirty" if commit and code.get("dirty") else commit
    return df


def provenance(rows: pd.DataFrame) -> str:
    """One line naming the run files (and their commits) that the rows come from: the newest row per case is
    taken over every file, so one table may merge several runs of several commits."""
    commits = rows["commit"] if "commit" in rows.columns else pd.Series("", index=rows.index)
    by = rows.assign(commit=commits.fillna("")).groupby("commit")["file"].unique()
    groups = [f"{'commit ' + c if c else 'no recorded commit'}: {', '.join(sorted(f))}"
              for c, f in sorted(by.items(), key=lambda kv: (kv[0] == "", kv[0]))]
    n = rows["file"].nunique()
    return f"Rows from {n} run file{'s' if n != 1 else ''} ({'; '.join(groups)})."


ASV_COLUMNS = ["machine", "commit", "date", "benchmark", "params", "value", "env", "unit"]


def asv_files(results_dir) -> list[Path]:
    """The result files under an asv results folder (``<machine>/<commit>-<env>.json``), of one machine folder
    (one that holds machine.json or result files itself), or the one file given."""
    root = Path(results_dir)
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    own = sorted(f for f in root.glob("*.json") if f.name not in ("machine.json", "benchmarks.json"))
    if own or (root / "machine.json").is_file():
        return own
    machines = sorted(p for p in root.iterdir() if p.is_dir())
    return [f for d in machines for f in sorted(d.glob("*.json")) if f.name != "machine.json"]


def asv_unit(benchmark: str) -> str:
    """The unit of an asv benchmark without a benchmarks.json: by its kind (time_/peakmem_); for any other (a
    track_ one) unknown, so its own name, which keeps it off the axes of the others."""
    method = benchmark.rsplit(".", 1)[-1]
    if method.startswith(("time_", "timeraw_")):
        return "seconds"
    if method.startswith(("peakmem_", "mem_")):
        return "bytes"
    return f"({method})"


@functools.lru_cache(maxsize=None)
def _asv_units(benchmarks_json: Path) -> dict:
    """benchmark name -> unit, from the benchmarks.json that asv keeps beside the machine folders (if readable)."""
    try:
        doc = json.loads(Path(benchmarks_json).read_text())
        return {k: v["unit"] for k, v in doc.items() if isinstance(v, dict) and isinstance(v.get("unit"), str)}
    except (OSError, ValueError, AttributeError):
        return {}


@_loader
def load_asv_file(path) -> pd.DataFrame:
    """One asv result file (format version 2) -> a row per benchmark and parameter set; the machine is its
    folder's name."""
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("version") != 2 or "result_columns" not in doc:
        raise ResultFileError(f"{path}: not an asv results file of format version 2")
    cols = doc["result_columns"]
    units = _asv_units(Path(path).parent.parent / "benchmarks.json")
    commit, date = doc.get("commit_hash", "")[:8], pd.to_datetime(doc.get("date", 0), unit="ms")
    rows = []
    for name, entry in doc.get("results", {}).items():
        rec = dict(zip(cols, entry))
        values, params = rec.get("result"), rec.get("params") or []
        if values is None:
            continue
        combos = list(_product(params)) if params else [()]
        if not isinstance(values, list):
            values = [values]
        for combo, value in zip(combos, values):
            rows.append({"machine": Path(path).parent.name, "commit": commit, "date": date, "benchmark": name,
                         "params": ", ".join(combo), "value": np.nan if value is None else float(value),
                         "env": doc.get("env_name", ""), "unit": units.get(name) or asv_unit(name)})
    return pd.DataFrame(rows, columns=ASV_COLUMNS)


def load_asv(results_dir) -> pd.DataFrame:
    """asv result files (format version 2) -> one row per machine, commit, benchmark and parameter set."""
    frames = [load_asv_file(f) for f in asv_files(results_dir)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ASV_COLUMNS)


def _product(params):
    import itertools

    return itertools.product(*params)


@_loader
def load_pytest_benchmark(path) -> pd.DataFrame:
    """One pytest-benchmark JSON -> a row per benchmark: group (case and pass), implementation, median, extra_info."""
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ResultFileError(f"{path}: not a pytest-benchmark file (no 'benchmarks' list)")
    if not doc["benchmarks"]:
        raise ResultFileError(f"{path}: no benchmarks")
    rows = []
    for b in doc["benchmarks"]:
        try:
            row = {"group": b["group"], "impl": b["name"], "median_s": b["stats"]["median"]}
        except (KeyError, TypeError):
            raise ResultFileError(f"{path}: a benchmark entry lacks group/name/stats.median") from None
        row.update(b.get("extra_info") or {})
        rows.append(row)
    df = pd.DataFrame(rows)
    _numbers(df, [c for c in ("median_s", "fraction_of_copy") if c in df.columns], path)
    df[["group", "impl"]] = df[["group", "impl"]].astype(str)  # pivot_table keys
    df["file"] = Path(path).name
    df["datetime"] = str(doc.get("datetime", ""))  # ISO time of the run: the newest per machine is reported
    info = doc.get("machine_info") if isinstance(doc.get("machine_info"), dict) else {}
    nb = info.get("normbench") if isinstance(info.get("normbench"), dict) else {}
    # normbench.machine.tag(); older saves have none and are labelled by host name
    tag = nb.get("machine") or info.get("node") or nb.get("node") or "?"
    df["machine"] = f"{tag}-{nb.get('numba_threads', '?')}t"
    return df


@_loader
def load_accuracy(path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ResultFileError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in ACCURACY_COLUMNS if c not in df.columns]
    if missing:
        raise ResultFileError(f"{path}: accuracy CSV lacks columns {missing} (older schema?)")
    _numbers(df, ["max_err"] + (["n_fail"] if "n_fail" in df.columns else []), path)
    return df


# ============================================================================================ tables
def latest_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The newest measurement of each case, backend and pass per machine tag (runs may cover different subsets
    of the matrix: each row's ratios come from its own run, where kernel and copy were timed side by side)."""
    keys = ["machine", "case", "backend", "pass"]
    newest = runs.groupby(keys)["created"].transform("max")
    return runs[runs["created"] == newest]


TABLE_MIN_BYTES = BIG_BYTES  # the results table's bandwidth-bound cases: working sets out of every cache


def table_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows the results table and its two plots show: the newest per machine, case, backend and pass, of the
    cases with a working set of at least ``TABLE_MIN_BYTES`` in either pass (both passes of such a case: a
    backward moves more than its forward), per machine; all of a machine's cases where it has none that big (so a
    machine with small runs only still has rows)."""
    df = latest_runs(runs)
    big = df.groupby(["machine", "case", "backend"])["bytes"].transform("max") >= TABLE_MIN_BYTES
    return df[big | ~big.groupby(df["machine"]).transform("any")]


def _fmt(values: pd.Series, spec: str) -> pd.Series:
    """Numbers as text, a missing one (null in the file) blank."""
    return values.map(lambda v: "" if pd.isna(v) else format(v, spec))


def shown_speedups(df: pd.DataFrame) -> pd.DataFrame:
    """The ``speedup_*`` columns of run rows as the table and the plot show them: NaN (blank, no bar) in rows from
    runs that timed the peers apart from the kernel and charged them their fresh outputs' page faults (documents
    without ``peer_timing: "paired"``, before 2026-11-22 13:09 UTC), which overstated the speed-ups."""
    cols = sorted(c for c in df.columns if c.startswith("speedup_"))
    return df[cols].where(_peers_paired(df), np.nan)


def _peers_paired(df: pd.DataFrame) -> pd.Series:
    """Per row: does its run time the peers beside the kernel (False where the rows do not say)?"""
    return df["peers_paired"].astype(bool) if "peers_paired" in df.columns else pd.Series(False, index=df.index)


def results_table(runs: pd.DataFrame) -> str:
    """The README table: the bandwidth-bound cases (working set of 128 MiB or more) of the newest row per machine,
    case, backend and pass over all runs, with the fraction of the applicable limit, speed-ups over the peers and
    the error, and a line naming the run files and commits the rows come from."""
    df = table_rows(runs)
    t = pd.DataFrame({
        "machine": df["machine"], "variant": df["variant"], "pass": df["pass"], "shape": df["shape"],
        "dtype": df["dtype"], "params": df["params"].fillna(""), "backend": df["backend"],
        "GB/s": _fmt(df["gbps"], ".1f"), "% of limit": _fmt(100 * df["frac_limit"], ".0f"), "limit": df["limit"],
    })
    speedups = shown_speedups(df)
    for c in speedups.columns:
        t["vs " + c[8:]] = speedups[c].map(lambda v: "" if pd.isna(v) else f"{v:.1f}x")
    t["error (eps)"] = _fmt(df["err_eps"], ".2g")
    table = t.to_markdown(index=False)
    if "file" in df.columns:
        table += "\n\n" + provenance(df)
    if (df[speedups.columns].notna() & speedups.isna()).any(axis=None):  # the note explains blanked values only
        table += ("\n\nBlank speed-ups: rows from runs that timed the peers apart from the kernel and charged them "
                  "their fresh outputs' page faults (before 2026-11-22 13:09 UTC), which overstated them.")
    return table


def latest_pytest_runs(bench: pd.DataFrame) -> pd.DataFrame:
    """The rows of the newest saved pytest-benchmark run per machine (as :func:`latest_runs` for normbench run):
    an older, faster run must not hide a regression, and one row's cells must come from one run."""
    if "machine" not in bench.columns:
        bench = bench.assign(machine="")
    newest = bench.groupby("machine")["datetime"].transform("max")
    return bench[bench["datetime"] == newest]


def pytest_table(bench: pd.DataFrame) -> str:
    """Median time per case (rows) and implementation (columns), plus the fraction of copy where recorded, from
    the latest saved run per machine (a column level per machine when there are several)."""
    bench = latest_pytest_runs(bench)
    index = ["machine", "group"] if bench["machine"].nunique() > 1 else "group"
    t = bench.pivot_table(index=index, columns="impl", values="median_s", aggfunc="first") * 1e3
    t = t.round(3).add_suffix(" (ms)")
    if "fraction_of_copy" in bench.columns:
        f = bench.pivot_table(index=index, columns="impl", values="fraction_of_copy", aggfunc="first").round(2)
        t = t.join(f.add_suffix(" (x copy)"))
    return t.to_markdown()


def asv_table(asv: pd.DataFrame, pattern: str) -> str:
    d = asv[asv["benchmark"].str.contains(pattern, regex=True)]
    if d.empty:
        return f"(no asv benchmark matches {pattern!r})"
    # the unit in the index: one table may mix seconds, fractions of copy, GB/s and thread counts
    t = d.pivot_table(index=["benchmark", "params", "unit"], columns=["machine", "commit"], values="value",
                      aggfunc="first")
    # history order: per machine, the commits by the date asv recorded for them (pivot_table sorts by hash)
    order = d.groupby(["machine", "commit"])["date"].min().reset_index().sort_values(["machine", "date", "commit"])
    t = t[[mc for mc in zip(order["machine"], order["commit"]) if mc in t.columns]]  # all-NaN ones are dropped
    return t.to_markdown(floatfmt=".3g")


def _accuracy_rows(acc: pd.DataFrame) -> pd.DataFrame:
    """The accuracy rows the table and the plot judge: errors against the oracle with default options, not the
    CUDA simulator's agreement with the CPU (``kind=agreement``, ``against=cpu``: a difference, not an error; CSVs
    without these columns are all against the oracle); an output with a NaN/Inf where the oracle is finite
    (``n_fail`` > 0) as an infinite error, as bench_accuracy counts it (error_stats leaves the failed elements out
    of max_err, which reads 0 when every element failed)."""
    d = acc
    if "against" in d.columns:
        d = d[d["against"].astype(str) == "oracle"]
    if "kind" in d.columns:
        d = d[d["kind"].astype(str) != "agreement"]
    if "is_default" in d.columns:
        d = d[d["is_default"].astype(str) == "True"]
    if "n_fail" in d.columns:
        d = d.assign(max_err=d["max_err"].mask(d["n_fail"] > 0, np.inf))
    return d


def _raised_mask(d: pd.DataFrame) -> pd.Series:
    """The error rows: the implementation raised (``error`` set; a CSV without the column has none)."""
    if "error" not in d.columns:
        return pd.Series(False, index=d.index)
    return d["error"].notna() & (d["error"].astype(str) != "")


def _raised(d: pd.DataFrame) -> pd.DataFrame:
    """A y and a dx row for each implementation run that raised (an error row: ``error`` set, no output), for the
    outputs that run (same variant, family, dtype, implementation and options) did not produce: a forward error
    costs both, a backward one dx."""
    raised = _raised_mask(d)
    keys = [c for c in META if c in d.columns and c not in ("pass", "output")]
    run = pd.Series(list(map(tuple, d[keys].astype(str).to_numpy())), index=d.index, dtype=object)
    produced = set(zip(run[~raised], d.loc[~raised, "output"]))
    rows = [dict(r, output=out, max_err=np.inf) for (_, r), k in zip(d[raised].iterrows(), run[raised])
            for out in ("y", "dx") if (k, out) not in produced]
    return pd.DataFrame(rows, columns=d.columns)


def accuracy_table(acc: pd.DataFrame) -> str:
    """Max error of y and dx per variant (rows) and implementation (columns), default options, over the stress
    families: one table per dtype, since each is in units of its own dtype's eps (float64's is 2**29 smaller).
    Rows as :func:`_accuracy_rows` (``inf``: NaN/Inf where the oracle is finite); a cell reads ``error`` where
    the implementation raised for that variant and output in some family (the worst result there is)."""
    d = _accuracy_rows(acc)
    failed = _raised(d)
    d = pd.concat([d, failed], ignore_index=True) if len(failed) else d
    d = d[d["output"].isin(["y", "dx"])]
    if "pass" in d.columns:
        d = d[d["pass"] != EXACT_H_PASS]  # an end-to-end figure for one note in numerics.md, not a kernel's error
    parts = []
    for dtype, g in d.assign(raised=_raised_mask(d)).groupby(d["dtype"].astype(str), sort=True):
        t = g.pivot_table(index=["variant", "output"], columns="impl", values="max_err", aggfunc="max")
        failed = g.pivot_table(index=["variant", "output"], columns="impl", values="raised", aggfunc="any")
        # as text: a column holding "error" would otherwise print its numbers unformatted
        t = t.apply(_fmt, spec=".3g")
        t = t.mask(failed.reindex_like(t).fillna(False).astype(bool), "error")
        parts.append(f"### {dtype}: max error in units of {dtype} eps\n\n" + t.to_markdown(floatfmt=".3g"))
    return "\n\n".join(parts) if parts else "(no y/dx rows with default options)"


# ============================================================================================ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _row_labels(df: pd.DataFrame, with_pass: bool = False) -> pd.Series:
    """One label per run row: variant, (pass,) shape, params, dtype and backend, and the machine tag (machine and
    thread count) where the rows come from more than one: rows differing only in these must not share a bar."""
    label = df["variant"] + (" " + df["pass"] if with_pass else "") + " " + df["shape"] + " " + \
        df["params"].fillna("") + " " + df["dtype"] + " [" + df["backend"] + "]"
    if df["machine"].nunique() > 1:
        label = df["machine"] + ": " + label
    return label.str.replace(r"\s+", " ", regex=True)


def plot_roofline(runs: pd.DataFrame, path: Path) -> Path:
    """Fraction of the applicable limit per variant and pass (one bar per results-table row), the limit drawn
    at 1."""
    plt = _plt()
    df = table_rows(runs).copy()
    df["label"] = _row_labels(df)
    n = max(len(df[df["pass"] == p]) for p in ("forward", "backward")) if len(df) else 0
    fig, axes = plt.subplots(1, 2, figsize=(15, max(3, 0.28 * n + 1.5)))
    for ax, pass_ in zip(axes, ("forward", "backward")):
        d = df[df["pass"] == pass_]
        y = np.arange(len(d))  # positions, not categories: equal labels would draw on top of each other
        ax.barh(y, d["frac_limit"], color="tab:blue")
        ax.set_yticks(y, d["label"], fontsize=7)
        ax.axvline(1.0, color="k", lw=1)
        ax.set_title(f"{pass_}: fraction of the limit")
        ax.set_xlabel("achieved / limit (copy, or 2/3 - 3/5 of it)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_speedups(runs: pd.DataFrame, path: Path) -> Path | None:
    """The speed-ups the results table shows (its rows, :func:`shown_speedups`), a bar per row and peer; None (no
    file) when there are none."""
    df = table_rows(runs)
    speedups = shown_speedups(df).dropna(axis=1, how="all")
    if speedups.empty:
        return None
    plt = _plt()
    cols = list(speedups.columns)
    d = speedups.set_index(_row_labels(df, with_pass=True).rename("label")).rename(columns=lambda c: c[8:])
    ax = d.plot.barh(figsize=(11, max(3, 0.22 * len(d) * len(cols) + 1)), logx=True)
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xlabel("speed-up of normbench over the peer (log scale)")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=90)
    plt.close(ax.figure)
    return path


NON_FINITE = "non-finite (drawn at the top)"


def plot_history(asv: pd.DataFrame, pattern: str, path: Path) -> Path | None:
    """The matching asv benchmarks across commit dates: one subplot per unit (seconds, fraction of copy, ...),
    a line per machine, benchmark (class and method) and parameter set.  An infinite value (which matplotlib
    would leave out) is drawn as a triangle in its line's colour above the axis's largest finite value, with
    the legend entry ``NON_FINITE``."""
    d = asv[asv["benchmark"].str.contains(pattern, regex=True)].dropna(subset=["value"])
    if d.empty:
        return None
    if "unit" not in d.columns:
        d = d.assign(unit=d["benchmark"].map(asv_unit))
    d = d.assign(unit=d["unit"].fillna(d["benchmark"].map(asv_unit)))
    plt = _plt()
    units = list(dict.fromkeys(d.sort_values("benchmark")["unit"]))
    fig, axes = plt.subplots(len(units), 1, figsize=(10, 3.2 * len(units) + 1), sharex=True, squeeze=False)
    for ax, unit in zip(axes[:, 0], units):
        du = d[d["unit"] == unit]
        finite = du["value"][np.isfinite(du["value"])]
        hi = finite.max() if len(finite) else 1.0
        top = hi + 0.1 * (abs(hi) or 1.0)
        for (machine, bench, params), g in du.groupby(["machine", "benchmark", "params"]):
            g = g.sort_values("date")
            name = bench.split(".", 1)[-1]  # without the module: Class.method, or the function's name
            label = f"{machine}: {name}" + (f" ({params.replace(chr(39), '')})" if params else "")
            (line,) = ax.plot(g["date"], g["value"], marker="o", label=label)
            inf = g[~np.isfinite(g["value"])]
            if len(inf):
                ax.plot(inf["date"], [top] * len(inf), ls="", marker="^", ms=9, color=line.get_color(),
                        label="_nolegend_")
        if not np.isfinite(du["value"]).all():
            ax.plot([], [], ls="", marker="^", ms=9, color="k", label=NON_FINITE)
        ax.set_ylabel(unit)
        ax.legend(fontsize=6)
    axes[-1, 0].set_xlabel("commit date")
    fig.suptitle(f"asv history: {pattern}", fontsize=9)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_accuracy_offset(acc: pd.DataFrame, path: Path) -> Path | None:
    """Max error of y vs the mean offset (stress families standard, offset1e3/1e4/1e6), per implementation; None
    (no file) when no implementation has two of them to draw a line through."""
    fams = {"standard": 0.0, "offset1e3": 1e3, "offset1e4": 1e4, "offset1e6": 1e6}
    d = _accuracy_rows(acc)
    d = d[d["family"].isin(fams) & (d["output"] == "y") & (d["dtype"] == "float32")]
    d = d.assign(offset=d["family"].map(fams).replace(0.0, 1.0))
    lines = {f"{variant} {impl}": g.groupby("offset")["max_err"].max() for (variant, impl), g in
             d.groupby(["variant", "impl"])}
    lines = {label: g for label, g in lines.items() if len(g) > 1}  # a line needs two offsets
    if not lines:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, g in lines.items():
        ax.loglog(g.index, g.clip(lower=1e-2).values, marker="o", label=label)
    ax.set_xlabel("mean offset / spread (1 = no offset)")
    ax.set_ylabel("max error of y (units of eps, float32)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ============================================================================================ CLI
def _gather(paths, loader, problems):
    frames = []
    for p in paths:
        try:
            frames.append(loader(p))
        except ResultFileError as err:
            problems.append(str(err))
    return pd.concat(frames, ignore_index=True) if frames else None


class ReadmeMarkerError(ValueError):
    """A README whose results markers are not one start followed by one end (nor absent): rewriting it would
    append a second block or delete what lies between stray markers, so it is left alone."""


def _readme_span(readme: Path, text: str) -> tuple[int, int] | None:
    """Where the results block of ``text`` (read from ``readme``) lies, markers included; None when it has no
    markers (the block is appended)."""
    starts, ends = text.count(README_START), text.count(README_END)
    if starts == ends == 0:
        return None
    start, end = text.find(README_START), text.find(README_END)
    if starts == ends == 1 and end > start:
        return start, end + len(README_END)
    found = "the end marker first" if starts == ends == 1 else f"{starts} start and {ends} end markers"
    raise ReadmeMarkerError(f"{readme}: needs one {README_START} followed by one {README_END}, or neither (found "
                            f"{found}); fix the markers by hand (the file is left as it is)")


def write_readme(readme: Path, table: str) -> None:
    """Put ``table`` between the markers of ``readme`` (or append it under ## Results where there are none);
    ReadmeMarkerError, the file untouched, where the markers are stray (:func:`_readme_span`)."""
    text = readme.read_text() if readme.exists() else ""
    block = f"{README_START}\n{table}\n{README_END}"
    span = _readme_span(readme, text)
    if span:
        text = text[:span[0]] + block + text[span[1]:]
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    readme.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="normbench report", description=__doc__.split("\n\n")[0])
    # sources default to None so that a path the user typed can be told from the default (see below)
    ap.add_argument("--runs", help="normbench run JSON: a file or a folder (default: results/runs)")
    ap.add_argument("--asv", help="asv results: the folder, one machine's folder, or one result file "
                                  "(default: results/asv)")
    ap.add_argument("--pytest", help="pytest-benchmark JSON: a file or a folder (default: results/pytest)")
    ap.add_argument("--accuracy", help="accuracy CSV: a file or a folder (default: results/accuracy)")
    ap.add_argument("--history", default=r"track_fraction_of_limit",
                    help="regex of asv benchmarks to tabulate and plot across commits")
    ap.add_argument("--out", default="results/report", help="folder for report.md and the PNGs")
    ap.add_argument("--readme", nargs="?", const="README.md", default=None,
                    help="rewrite the results table of README.md (or the given file) between the markers")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    for source in ("runs", "asv", "pytest", "accuracy"):
        given = getattr(args, source)
        if given is None:  # a missing default is no error: a fresh clone has no results yet
            setattr(args, source, f"results/{source}")
        elif not Path(given).exists():  # a typo would otherwise just drop a section from the report
            ap.error(f"--{source} {given}: no such file or folder")
    try:
        re.compile(args.history)
    except re.error as err:
        ap.error(f"--history {args.history!r}: not a regular expression ({err})")
    problem = output_dir_error("--out", args.out) or (args.readme and writable_file_error("--readme", args.readme, create=True))
    if problem:
        ap.error(problem)
    if args.readme and Path(args.readme).is_file():  # stray markers: refused before anything is written
        try:
            _readme_span(Path(args.readme), Path(args.readme).read_text())
        except ReadmeMarkerError as err:
            ap.error(f"--readme {err}")

    def files(where, pattern):
        p = Path(where)
        return [p] if p.is_file() else sorted(p.rglob(pattern)) if p.is_dir() else []

    problems: list[str] = []
    runs = _gather(files(args.runs, "*.json"), load_run, problems)
    bench = _gather(files(args.pytest, "*.json"), load_pytest_benchmark, problems)
    # the sweep, not the studies: accuracy*.csv; a quick sweep's (accuracy-quick.csv from `normbench accuracy
    # --quick`, any *quick.csv) only where the folder holds no full one: never both merged (their grids differ)
    found = files(args.accuracy, "accuracy*.csv")
    quick = [f for f in found if f.stem.endswith("quick") and Path(args.accuracy).is_dir()]
    acc_files = [f for f in found if f not in quick]
    acc = _gather(acc_files, load_accuracy, problems)
    if acc is None:  # no full sweep (or none readable): the quick one
        acc = _gather(quick, load_accuracy, problems)
    elif quick:
        print(f"normbench report: accuracy from {', '.join(map(str, acc_files))}; ignored "
              f"{', '.join(map(str, quick))} (pass it as --accuracy to report it)", file=sys.stderr)
    asv = _gather(asv_files(args.asv), load_asv_file, problems)
    if asv is not None and asv.empty:
        asv = None
    for msg in problems:
        print(f"normbench report: skipped {msg}", file=sys.stderr)
    if runs is None and bench is None and acc is None and asv is None:
        print("normbench report: no readable result files (run `normbench run`, `make compare`, "
              "`normbench accuracy` or asv first)", file=sys.stderr)
        return 1

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts, pngs = ["# normbench report\n"], []
    if runs is not None:
        parts.append("## normbench run: bandwidth-bound cases, latest run per machine\n\n" + results_table(runs))
        if not args.no_plots:
            pngs.append(plot_roofline(runs, out / "roofline.png"))
            pngs.append(plot_speedups(runs, out / "speedup.png"))
    if bench is not None:
        parts.append("## pytest-benchmark: median per case and implementation\n\n" + pytest_table(bench))
    if asv is not None:
        parts.append(f"## asv history: `{args.history}` per machine and commit\n\n" + asv_table(asv, args.history))
        if not args.no_plots:
            pngs.append(plot_history(asv, args.history, out / "history.png"))
    if acc is not None:
        parts.append("## accuracy: max error (units of each dtype's eps) of y and dx, default options, worst "
                     "stress family\n\n" + accuracy_table(acc))
        if not args.no_plots:
            pngs.append(plot_accuracy_offset(acc, out / "accuracy_offset.png"))
    pngs = [p for p in pngs if p is not None]
    parts += [f"![{p.stem}]({p.name})" for p in pngs]
    report = out / "report.md"
    report.write_text("\n\n".join(parts) + "\n")
    print(f"wrote {report}" + "".join(f", {p.name}" for p in pngs))
    if args.readme:
        if runs is None:
            print("normbench report: --readme needs normbench run results", file=sys.stderr)
            return 1
        write_readme(Path(args.readme), results_table(runs))
        print(f"updated the results table in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
