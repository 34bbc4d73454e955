"""``normbench run`` (what ``make bench`` runs): every case of the matrix against the copy limit and the peers.

For each case of :mod:`normbench.benchmarks.cases` and each selected backend: build the inputs, compile in a
warm-up call, time forward and backward (median over repeats) writing into preallocated ``out=``/``dx_out=``,
time a copy of the same working set and each installed peer on the same inputs in the same rounds
(:func:`normbench.bandwidth.paired_seconds`; the process reuses freed memory, so a peer's fresh output costs no
page faults, as our preallocated one does not), and report effective GB/s, the fraction of copy bandwidth and of
the limit that applies (the copy, or 2/3 / 3/5 of it where the reduction slab cannot stay in cache), the speed-up
over each peer, and the error of every
implementation against the float64 reference on those inputs (in units of the dtype's epsilon, see
:func:`error_eps`).  Results go to ``results/runs/<machine>-<UTC timestamp>.json`` and ``.csv`` (never
overwriting), a summary table per variant and pass to stdout, and a one-line verdict on the slowest case.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from normbench import bandwidth, machine, registry
from normbench.benchmarks import _harness
from normbench.benchmarks import cases as _cases
from normbench.cli import MANY, backend_error, output_dir_error, unique

SCHEMA = "normbench.run/1"
#: how peers are timed, recorded in every run document: "paired" = in the kernel's rounds, on reused memory
#: (bandwidth.paired_seconds, bandwidth.reuse_freed_memory); documents without it timed peers apart, charged
#: with their fresh outputs' page faults, and overstate the speed-ups on large cases about 2x
PEER_TIMING = "paired"
#: how to install each optional peer (numpy is always there), named by ``--peer`` when one is missing
PEER_INSTALL = {"numpy": "pip install numpy", "torch": "pip install 'normbench[peers]'", "jax": "pip install jax"}
#: time spent per peer measurement at most (peers can be 100x slower than the kernels): repeats shrink to fit
PEER_BUDGET_S = 1.0


# ============================================================================================ accuracy
def error_scale(variant: str, inputs: dict, ref) -> np.ndarray:
    """Per element (broadcastable), the magnitude its error is judged against: the max |ref| over its
    normalisation group (row, channel, (sample, group), (sample, channel); the sample for LRN), the accuracy
    harness's unit (:mod:`normbench.accuracy.metrics`), computed by reduction rather than group ids."""
    from normbench.peers import _group_view, _reduce_axes

    a = np.abs(np.asarray(ref))
    if variant == "local_response_norm":
        return a.max(axis=tuple(range(1, a.ndim)), keepdims=True)
    if variant == "group_norm":
        v, axes = _group_view(a, inputs["num_groups"], inputs.get("axis", 1), np)
        return np.broadcast_to(v.max(axis=axes, keepdims=True), v.shape).reshape(a.shape)
    axes, _ = _reduce_axes(variant, a, inputs)
    return a.max(axis=axes, keepdims=True)


def error_eps(variant: str, inputs: dict, out, ref, scale=None) -> float:
    """max |out - ref| / (eps * scale) over the elements where ref is finite, in units of the input dtype's
    epsilon (pass ``scale`` from :func:`error_scale` to judge several outputs against one oracle cheaply)."""
    dtype = np.dtype(inputs["x"].dtype)
    ref = np.asarray(ref)
    scale = error_scale(variant, inputs, ref) if scale is None else scale
    d = np.asarray(out).astype(ref.dtype)  # in place from here on: large cases hold hundreds of MiB
    d -= ref
    np.abs(d, out=d)
    d /= np.maximum(scale, np.finfo(dtype).tiny)
    with np.errstate(invalid="ignore"):
        d[~np.isfinite(ref)] = 0.0  # where the oracle itself is not finite there is no error to measure
    return float(d.max() / np.finfo(dtype).eps) if d.size else 0.0


# ============================================================================================ timing
def _host(a):
    """A NumPy view of a (possibly device) array."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def _repeats_for(seconds: float, repeats: int, budget: float) -> int:
    return max(3, min(repeats, int(budget / max(seconds, 1e-9))))


def _time(fn, repeats: int, budget: float | None = None):
    """(median seconds, result of the warm-up call).  The warm-up call compiles; it is never timed.  With a
    ``budget`` the repeats shrink so that slow implementations (peers, the reference) finish in time."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    if budget is not None:
        repeats = _repeats_for(first, repeats, budget)
    return bandwidth.median_seconds(fn, repeats=repeats, warmup=0), result


class _CopyCache(dict):
    def seconds(self, nbytes: int, repeats: int) -> float:
        key = int(nbytes)
        if key not in self:
            self[key] = bandwidth.copy_seconds(key, repeats=max(3, repeats))
        return self[key]


def run_case(case: _cases.Case, backends, peers, repeats: int, copies: _CopyCache, accuracy: bool = True,
             peer_failures: dict | None = None):
    """Rows (dicts) for one case: one per backend and pass.  A peer that raises on the case's inputs gets NaN in
    its columns, and its reason ("<type>: <message>") under its name in ``peer_failures`` when given."""
    from normbench import peers as _peers

    spec = case.spec
    dtype = np.dtype(case.dtype)
    inputs = case.make_inputs(seed=0)  # made once: every implementation gets these (running stats copied)
    dy = np.random.default_rng(1).standard_normal(inputs["x"].shape).astype(dtype)
    ref_y = ref_dx = None
    if accuracy:  # the oracle on the same inputs: its running-statistics update must not leak
        ref_in = _harness.fresh(inputs)
        ref_out = spec.run_forward(ref_in, backend="reference")
        ref_y, ref_dx = ref_out[0], spec.run_backward(ref_in, ref_out, dy, backend="reference")[0]
        scales = {"forward": error_scale(case.variant, inputs, ref_y),
                  "backward": error_scale(case.variant, inputs, ref_dx)}

    peer_fns, peer_err, peer_failed = {}, {}, {}

    def failed(p, err):  # the peer's own failure (e.g. PyTorch refuses a batch of 1): its columns n/a, not the case's
        peer_failed[p] = f"{type(err).__name__}: {err}"
        if peer_failures is not None:
            peer_failures[p] = peer_failed[p]

    for p in peers:
        own = _harness.fresh(inputs)
        try:  # only the peer's own calls are caught: our error measure below is not
            fwd, bwd = _peers.prepare(p, case.variant, own, dy)
        except NotImplementedError:
            continue
        except MemoryError:
            raise  # the case is skipped as out of memory
        except Exception as err:
            failed(p, err)
            continue
        for pass_, fn, ref in (("forward", fwd, ref_y), ("backward", bwd, ref_dx)):
            try:
                out = fn()  # the warm-up call (JIT, allocator) gives the error; timed below, beside the kernel
            except MemoryError:
                raise
            except Exception as err:
                failed(p, err)
                break
            peer_err[p, pass_] = (error_eps(case.variant, inputs, out, ref, scales[pass_]) if ref is not None
                                  else math.nan)
            del out
        else:
            peer_fns[p] = {"forward": fwd, "backward": bwd}

    rows = []
    for backend in backends:
        for pass_, ref in (("forward", ref_y), ("backward", ref_dx)):
            # compiled, outputs preallocated and touched, GPU work synchronised inside the call
            run = _harness.Pass(case, backend, pass_, inputs=inputs, dy=dy)
            nbytes = case.nbytes(pass_, inputs)
            pass_peers = {p: fns[pass_] for p, fns in peer_fns.items()}
            if backend == "reference":  # slow: fewer repeats, copy and peers timed on their own
                t, result = _time(run, repeats, PEER_BUDGET_S)
                t_copy = copies.seconds(nbytes, repeats)
                t_peers = {p: _time(fn, repeats, PEER_BUDGET_S)[0] for p, fn in pass_peers.items()}
            else:  # kernel, copy and peers in the same rounds: the ratios are what count
                result = run()
                device_copies = None
                if backend == "cuda":  # judged against the GPU's own copy; the (host) peers are not its peers
                    from normbench.cuda import timing

                    device_copies, pass_peers = timing.device_copies(nbytes), {}
                t, t_copy, t_peers = bandwidth.paired_seconds(run, nbytes, repeats, pass_peers, PEER_BUDGET_S,
                                                              copies=device_copies)
            main = _host(result[0])
            del run, result
            copy_gbps = 2 * (max(1, nbytes // 8) * 4) / t_copy / 1e9
            gbps = nbytes / t / 1e9
            factor = case.limit_factor(pass_)
            row = {
                "case": case.name, "variant": case.variant, "shape": case.shape_str, "dtype": case.dtype,
                "params": case.params_str, "pass": pass_, "backend": backend, "bytes": nbytes,
                "time_s": t, "gbps": gbps, "copy_gbps": copy_gbps, "frac_copy": gbps / copy_gbps,
                "limit": case.limit_name(pass_), "limit_factor": factor, "frac_limit": gbps / copy_gbps / factor,
                "err_eps": error_eps(case.variant, inputs, main, ref, scales[pass_]) if ref is not None else math.nan,
            }
            for p, tp in t_peers.items():
                row[f"err_{p}"] = peer_err[p, pass_]
                row[f"time_{p}"] = tp
                row[f"speedup_{p}"] = tp / t
            if backend != "cuda":  # cuda rows carry no (host) peer columns
                for p in peer_failed:
                    row[f"err_{p}"] = row[f"time_{p}"] = row[f"speedup_{p}"] = math.nan
            rows.append(row)
    return rows


# ============================================================================================ output
def code_version() -> dict | None:
    """The git commit normbench was imported from and whether its tracked files differ from it
    (``{"commit", "dirty"}``); None outside a git checkout (e.g. an installed wheel), without git, and where the
    folder holding normbench lies in a git checkout that does not track normbench's own files (a wheel installed
    in a virtualenv inside some checkout: that checkout's HEAD says nothing about the code measured)."""
    here = Path(__file__).resolve()

    def git(where, *a):
        return subprocess.run(["git", "-C", str(where), *a], capture_output=True, text=True, check=True,
                              timeout=10).stdout

    try:
        top = Path(git(here.parent, "rev-parse", "--show-toplevel").strip()).resolve()
        git(top, "ls-files", "--error-unmatch", "--", str(here.relative_to(top)))  # fails unless this file is tracked
        commit = git(top, "rev-parse", "HEAD").strip()
        dirty = bool(git(top, "status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, ValueError, subprocess.SubprocessError):  # ValueError: this file is not under the toplevel
        return None
    return {"commit": commit, "dirty": dirty}


def machine_info() -> dict:
    import numba

    cpu = machine.cpu_info()  # model, LLVM target, caches: the CI machine's hardware changes between sessions
    info = {
        "machine": machine.tag(), "cpu": cpu["cpu_model"], **cpu, "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(), "numba": numba.__version__, "numpy": np.__version__,
        "python": platform.python_version(),
        # False: every fresh output of 32 MiB or more cost the peers page faults (not glibc: see bandwidth.py)
        "freed_memory_reused": bandwidth.freed_memory_reused(),
    }
    try:
        import llvmlite

        info["llvmlite"] = llvmlite.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    from normbench.cuda import timing

    gpu = timing.gpu_name()  # the GPU that cuda rows ran on (their limit is its device copy); None without one
    if gpu:
        info["gpu"] = gpu
    return info


def result_paths(out_dir: Path, machine: str, now: _dt.datetime) -> tuple[Path, Path]:
    """``<machine>-<UTC timestamp>.json/.csv`` that do not exist yet (a suffix is added rather than overwrite)."""
    stem = f"{machine}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
    for k in range(1000):
        name = safe if k == 0 else f"{safe}-{k}"  # appended, not with_suffix: a tag may hold dots (FQDNs)
        jpath, cpath = out_dir / (name + ".json"), out_dir / (name + ".csv")
        if not jpath.exists() and not cpath.exists():
            return jpath, cpath
    raise RuntimeError(f"could not find a free result name under {out_dir}")


def summary_tables(df) -> str:
    """Markdown tables, one per variant and pass."""
    peer_cols = [c for c in df.columns if c.startswith("speedup_")]
    err_cols = [c for c in df.columns if c.startswith("err_") and c != "err_eps"]
    parts = []
    for (variant, pass_), g in df.groupby(["variant", "pass"], sort=False):
        t = g[["shape", "dtype", "params", "backend"]].copy()
        t["time"] = [_fmt_time(s) for s in g["time_s"]]
        t["GB/s"] = g["gbps"].map(lambda v: f"{v:.1f}")
        t["% copy"] = (100 * g["frac_copy"]).map(lambda v: f"{v:.0f}")
        t["% limit"] = [f"{100 * f:.0f} ({lim})" for f, lim in zip(g["frac_limit"], g["limit"])]
        for c in peer_cols:
            t["vs " + c[len("speedup_"):]] = g[c].map(lambda v: "" if v != v else f"{v:.2f}x")
        t["err (eps)"] = g["err_eps"].map(_fmt_err)
        for c in err_cols:
            t["err " + c[len("err_"):]] = g[c].map(_fmt_err)
        parts.append(f"### {variant} {pass_}\n\n" + t.to_markdown(index=False))
    return "\n\n".join(parts)


def _fmt_time(s: float) -> str:
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def _fmt_err(v) -> str:
    return "" if v != v else f"{v:.2g}"


def verdict(df) -> str:
    """One line: the case furthest from its limit (among working sets that are bandwidth-bound when any)."""
    big = df[df["bytes"] >= _cases.BIG_BYTES]
    pool = big if len(big) else df
    r = pool.loc[pool["frac_limit"].idxmin()]
    where = "bandwidth-bound" if len(big) else "all cases small (latency-bound)"
    what = " ".join(str(v) for v in (r["variant"], r["pass"], r["shape"], r["dtype"], r["params"]) if v)
    return (f"slowest ({where}): {what} [{r['backend']}]: {r['gbps']:.1f} GB/s = {100 * r['frac_limit']:.0f}% "
            f"of its limit ({r['limit']}; copy {r['copy_gbps']:.1f} GB/s on a {r['bytes'] / 2**20:.3g} MiB "
            f"working set)")


# ============================================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="normbench run", description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick matrix (default)")
    size.add_argument("--full", action="store_true", help="the full matrix: all shapes, float32 and float64")
    ap.add_argument("--variant", **MANY, help="variant names; default all")
    ap.add_argument("--backend", **MANY,
                    help="backends; default every installed kernel backend (cpu, cuda), or the "
                         "reference when no kernel exists for a variant")
    ap.add_argument("--shape", **MANY, help="logical shapes such as 8192x4096")
    ap.add_argument("--dtype", **MANY, choices=_cases.DTYPES_FULL, help="dtypes")
    ap.add_argument("--axis", type=int, choices=(1, -1), help="only this layout (channel variants)")
    ap.add_argument("--peer", **MANY, help="peers to time; default every installed one")
    ap.add_argument("--no-peers", action="store_true", help="time no peers")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the error column (no reference run)")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (median)")
    ap.add_argument("--out-dir", default="results/runs", help="where the .json/.csv go (default results/runs)")
    ap.add_argument("--json", action="store_true", help="print the result document as JSON on stdout")
    return ap


def _backends_for(variant: str, wanted) -> list[str]:
    have = registry.available_backends(variant)
    if wanted:
        return [b for b in wanted if b in have]
    kernels = [b for b in have if b != "reference"]
    return kernels or ["reference"]


def main(argv=None) -> int:
    import pandas as pd
    from tqdm import tqdm

    from normbench import peers as _peers

    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        print("normbench run: --repeats must be >= 1", file=sys.stderr)
        return 2
    args.variant, args.dtype, args.backend = unique(args.variant), unique(args.dtype), unique(args.backend)
    try:
        shapes = unique([_cases.parse_shape(s) for s in args.shape]) if args.shape else None
        matrix = _cases.cases(full=args.full, variants=args.variant, dtypes=args.dtype, shapes=shapes,
                              params={"axis": args.axis} if args.axis else None)
    except ValueError as err:
        print(f"normbench run: {err}", file=sys.stderr)
        return 2
    if not matrix:  # e.g. --axis -1 with 2-D shapes only: an (N, C) input has one layout
        hint = (" (a 2-D (N, C) shape has one layout, listed as axis=1)"
                if args.axis == -1 and shapes and all(len(s) == 2 for s in shapes) else "")
        print(f"normbench run: the selected variants, shapes, dtypes and --axis leave no case{hint}",
              file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    if args.backend:
        bad = [b for b in args.backend if b not in registry.BACKENDS]
        if bad:
            print(f"normbench run: backend={bad}; expected some of {list(registry.BACKENDS)}", file=sys.stderr)
            return 2
    problem = (output_dir_error("--out-dir", out_dir)
               or backend_error(args.backend, unique([c.variant for c in matrix])))
    if problem:
        print(f"normbench run: {problem}", file=sys.stderr)
        return 2
    installed = _peers.available()
    bad = [p for p in args.peer or () if p not in _peers.PEERS]
    if bad:  # a typo is an error with --no-peers too
        print(f"normbench run: peer={bad}; expected some of {list(_peers.PEERS)}", file=sys.stderr)
        return 2
    if args.peer and not args.no_peers:
        missing = [p for p in args.peer if p not in installed]
        if missing:
            print(f"normbench run: peer={missing} is not installed here (installed: {installed}); install it "
                  f"({', '.join(PEER_INSTALL[p] for p in missing)}) or leave out --peer {missing[0]}",
                  file=sys.stderr)
            return 2
    peers = [] if args.no_peers else unique(args.peer or installed)
    bandwidth.reuse_freed_memory()  # peers' fresh outputs then cost what our preallocated ones do: no page faults
    copies = _CopyCache()
    rows, skipped, peer_failures = [], [], {}
    with tqdm(matrix, desc="normbench run", unit="case", file=sys.stderr, disable=args.json and not sys.stderr.isatty()) as bar:
        for case in bar:
            bar.set_postfix_str(case.name, refresh=False)
            backends = _backends_for(case.variant, args.backend)
            if not backends:
                skipped.append(f"{case.name} (no selected backend implements it)")
                continue
            failed = {}
            try:
                rows += run_case(case, backends, peers, args.repeats, copies, accuracy=not args.no_accuracy,
                                 peer_failures=failed)
            except MemoryError:
                skipped.append(case.name + " (out of memory)")
            except (ValueError, TypeError) as err:  # e.g. --shape 4096x8192 for instance norm: not a valid input
                skipped.append(f"{case.name} (invalid for this variant: {err})")
            else:
                peer_failures.update({f"{case.name} [{p}]": why for p, why in failed.items()})
    if not rows:
        print("normbench run: no case ran:\n" + "\n".join(f"  {s}" for s in skipped), file=sys.stderr)
        return 1
    df = pd.DataFrame(rows)
    info = machine_info()
    now = _dt.datetime.now(_dt.timezone.utc)
    doc = {"schema": SCHEMA, "created": now.isoformat(timespec="seconds"), "machine": info,
           "argv": list(argv) if argv is not None else sys.argv[1:], "peers": peers,
           "peer_timing": PEER_TIMING, "code": code_version(),
           "skipped": skipped, "peer_failures": peer_failures, "verdict": verdict(df),
           "rows": json.loads(df.to_json(orient="records"))}
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, cpath = result_paths(out_dir, f"{info['machine']}-{info['numba_threads']}t", now)
    jpath.write_text(json.dumps(doc, indent=1))
    df.to_csv(cpath, index=False)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(summary_tables(df))
    print(f"\n{doc['verdict']}")
    print(f"results: {jpath} and {cpath.name}")
    if skipped:
        print(f"skipped {len(skipped)} case(s):\n" + "\n".join(f"  {s}" for s in skipped))
    if peer_failures:
        print(f"peer columns n/a where the peer raised ({len(peer_failures)}):\n"
              + "\n".join(f"  {k}: {why}" for k, why in peer_failures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
