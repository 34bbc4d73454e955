"""SyncBatchNorm benchmark: time per call and bytes communicated vs world size.

    python -m normbench.distributed_bench [--sizes 1 2 4] [--shape 64 64 56 56] [--repeats 7] [--json FILE]

The driver launches ``mpiexec -n P python -m normbench.distributed_bench --worker`` for each world size P. The
*global* batch (default (64, 64, 56, 56) float32) is split across the ranks along N, so every P does the same
total work; ranks beyond the machine's cores are oversubscribed (one Numba thread per rank). Each timed call
is preceded by a barrier, and its time is the slowest rank's (a collective call finishes when the last rank
does); waiting ranks yield the core (``OMPI_MCA_mpi_yield_when_idle=1``, overridable). Reported per pass:
median seconds per call, the same rank-local work without synchronisation (single-process
``batch_norm_forward``/``backward`` on the rank's slice: what the statistics exchange adds is the
difference), the time of the one collective alone, and bytes sent / received per rank per call, counted
from the pickled messages (:class:`_CountingComm`).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np

from .cli import positive_int

SHAPE = (64, 64, 56, 56)


def _counting_comm(MPI, comm):
    class _CountingComm(MPI.Intracomm):
        """COMM_WORLD that records the size of every pickled allgather message it sends and receives."""

        sent = 0
        received = 0

        def allgather(self, obj):
            out = super().allgather(obj)
            type(self).sent += len(pickle.dumps(obj, protocol=MPI.pickle.PROTOCOL))
            type(self).received += sum(len(pickle.dumps(o, protocol=MPI.pickle.PROTOCOL)) for o in out)
            return out

    return _CountingComm(comm)


def _timed(comm, fn, repeats, warmup=1):
    """Median over repeats of the slowest rank's time for ``fn()`` (after ``warmup`` calls)."""
    from mpi4py import MPI

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    return float(np.median(times))


def worker(shape, repeats):
    from mpi4py import MPI

    import normbench as nb
    from normbench import distributed as dist

    world = MPI.COMM_WORLD
    P, rank = world.size, world.rank
    N, C = shape[0], shape[1]
    counts = [N // P + (1 if r < N % P else 0) for r in range(P)]
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((counts[rank], *shape[1:])).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)  # preallocated: no first-touch page faults in the timings
    comm = _counting_comm(MPI, world)

    fwd = lambda: dist.sync_batch_norm_forward(x, w, b, rm, rv, comm=comm, out=y)  # noqa: E731
    _, mean, invstd = fwd()
    bwd = lambda: dist.sync_batch_norm_backward(dy, x, w, b, mean, invstd, comm=comm, dx_out=dx)  # noqa: E731
    bwd()
    row = {"P": P, "shape": list(shape), "local_N": counts[rank], "MiB_per_rank": x.nbytes / 2**20}
    for name, fn in (("forward", fwd), ("backward", bwd)):
        type(comm).sent = type(comm).received = 0
        fn()
        row[f"{name}_bytes_sent"], row[f"{name}_bytes_received"] = type(comm).sent, type(comm).received
        row[f"{name}_s"] = _timed(world, fn, repeats)
    # the same rank-local work without synchronisation, and the collective alone
    # (not where a rank holds one value per channel: SyncBN takes it, single-process training batch norm not)
    S = int(np.prod(shape[2:], dtype=np.int64))
    local = all(c * S != 1 for c in counts)  # the same on every rank: _timed is collective
    row["local_forward_s"] = row["local_backward_s"] = None
    if local:
        row["local_forward_s"] = _timed(world, lambda: nb.batch_norm_forward(x, w, b, rm, rv, out=y), repeats)
        row["local_backward_s"] = _timed(
            world, lambda: nb.batch_norm_backward(dy, x, w, b, mean, invstd, dx_out=dx), repeats)
    # the physical limit: x must be read twice forward (statistics must be global before any output) and
    # x, dy twice backward, so the bound is 1.5 copies forward, 2.5 copies backward (docs/benchmarking.md's 2/3 and 3/5)
    row["copy_s"] = _timed(world, lambda: np.copyto(y, x), repeats)
    message = ({"C": C, "dtype": "float32", "numerics": ("inside", 0, "shifted", None)},
               (counts[rank], np.zeros(C), np.zeros(C)))
    row["collective_s"] = _timed(world, lambda: world.allgather(("sync_batch_norm_forward", None) + message),
                                 repeats * 3)
    if rank == 0:
        print("NB_BENCH " + json.dumps(row), flush=True)


def run(sizes, shape, repeats):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("no mpiexec found: pip install 'normbench[mpi]'")
    # ranks waiting in a collective yield the core instead of busy-polling: on a shared or oversubscribed
    # machine a spinning rank steals the core its peer needs (measured: 2.7x -> 1.2x of local time at P=2)
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    rows = []
    for P in sizes:
        cmd = [mpiexec, "--allow-run-as-root", "--oversubscribe", "-n", str(P), sys.executable, "-m",
               "normbench.distributed_bench", "--worker", "--repeats", str(repeats), "--shape", *map(str, shape)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("NB_BENCH ")]
        if proc.returncode or not lines:
            raise SystemExit(f"mpiexec -n {P} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        rows.append(json.loads(lines[-1][len("NB_BENCH "):]))
    return rows


def table(rows):
    head = ("| ranks | local batch | fwd ms | local fwd ms | bwd ms | local bwd ms | collective ms "
            "| copy ms | fwd / bwd % of limit | fwd bytes sent/recv per rank | bwd bytes sent/recv per rank |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    ms = lambda s: "n/a" if s is None else f"{s * 1e3:.1f}"  # noqa: E731  (no local baseline: see worker)
    for r in rows:
        lines.append(f"| {r['P']} | {r['local_N']} x {r['MiB_per_rank']:.1f} MiB | {r['forward_s'] * 1e3:.1f} | "
                     f"{ms(r['local_forward_s'])} | {r['backward_s'] * 1e3:.1f} | "
                     f"{ms(r['local_backward_s'])} | {r['collective_s'] * 1e3:.3f} | {r['copy_s'] * 1e3:.1f} | "
                     f"{150 * r['copy_s'] / r['forward_s']:.0f} / {250 * r['copy_s'] / r['backward_s']:.0f} | "
                     f"{r['forward_bytes_sent']} / {r['forward_bytes_received']} | "
                     f"{r['backward_bytes_sent']} / {r['backward_bytes_received']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m normbench.distributed_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[1, 2, 4],
                        help="world sizes (default 1 2 4)")
    parser.add_argument("--shape", type=positive_int, nargs="+", default=list(SHAPE),
                        help="global batch shape (N, C, *spatial), channels first")
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.shape) < 2:
        parser.error(f"argument --shape: expected (N, C, *spatial), at least 2 sizes, got {args.shape}")
    if args.worker:
        return worker(tuple(args.shape), args.repeats)
    rows = run(args.sizes, tuple(args.shape), args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
