"""The suite: the case matrix against the registry, `normbench run` and `normbench bandwidth` on a tiny
matrix, and asv (`asv check`, a tiny `asv run --python=same`) on a temporary results folder."""
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from normbench import bandwidth, registry
from normbench.benchmarks import cases, roofline, runner
from normbench.cpu._stream import aligned_empty, new_output

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- case matrix
def test_matrix_covers_the_registry():
    quick, full = cases.cases(), cases.cases(full=True)
    assert {c.variant for c in quick} == set(registry.VARIANTS) == {c.variant for c in full}
    assert set(quick) <= set(full)
    assert len({c.name for c in full}) == len(full), "case names must be unique"
    for name, spec in registry.VARIANTS.items():
        shapes = {c.shape for c in full if c.variant == name}
        assert {tuple(s) for s in spec.shapes} <= shapes, name
        for p, values in spec.params.items():
            assert {dict(c.params)[p] for c in full if c.variant == name} == set(values), (name, p)
    assert {c.dtype for c in full} == {"float32", "float64"} and {c.dtype for c in quick} == {"float32"}


def test_quick_matrix_has_a_latency_and_a_bandwidth_bound_shape_per_variant():
    for name in registry.VARIANTS:
        sizes = sorted({c.x_bytes() for c in cases.cases(variants=[name])})
        assert sizes[0] < 16 * 2**20, name
        assert len(sizes) == 2 and sizes[-1] > sizes[0], name


def test_full_matrix_has_real_model_shapes():
    shapes = {c.shape for c in cases.cases(full=True, variants=["layer_norm"])}
    assert {768, 4096, 8192} <= {s[-1] for s in shapes}  # transformer hidden sizes
    assert (1, 2**24) in shapes  # a single long row
    assert any(len(c.shape) == 5 for c in cases.cases(full=True, variants=["batch_norm"]))  # 3-d volumes
    assert any(len(c.shape) == 2 for c in cases.cases(full=True, variants=["batch_norm"]))  # 1-d batch norm


def test_two_read_limit_applies_where_the_slab_cannot_stay_in_cache():
    C = cases.Case
    last = C("batch_norm", (64, 128, 56, 56), "float32", (("axis", -1), ("training", True)))
    assert last.limit_factor("forward") == pytest.approx(2 / 3) and last.limit_factor("backward") == pytest.approx(0.6)
    assert C("batch_norm", (65536, 1024), "float32", (("axis", 1), ("training", True))).limit_factor("forward") < 1
    assert C("batch_norm", (64, 128, 56, 56), "float32", (("axis", -1), ("training", False))).limit_factor("forward") == 1
    assert C("batch_norm", (64, 128, 56, 56), "float32", (("axis", 1), ("training", True))).limit_factor("backward") == 1
    assert C("layer_norm", (1, 2**24), "float32").limit_name("forward") == "2/3 copy"
    assert C("layer_norm", (8192, 4096), "float32").limit_name("backward") == "copy"


def test_bytes_moved_closed_form():
    c = cases.Case("layer_norm", (4, 8), "float32")
    # read x (128 B) + weight and bias (2 x 32 B), write y (128 B) + mean and rstd (2 x 4 x 8 B)
    assert c.nbytes("forward") == 128 + 64 + 128 + 64
    # read dy, x, weight, bias, mean, rstd; write dx, dweight, dbias
    assert c.nbytes("backward") == 3 * 128 + 2 * 64 + 64
    # RMS norm takes no bias and saves rstd alone: read x and weight, write y and rstd (4 x 8 B)
    c = cases.Case("rms_norm", (4, 8), "float32")
    assert c.make_inputs()["bias"] is None
    assert c.nbytes("forward") == 128 + 32 + 128 + 32 and c.nbytes("backward") == 3 * 128 + 2 * 32 + 32
    y, rstd = c.spec.run_forward(c.make_inputs(), backend="cpu")
    assert y.nbytes == 128 and rstd.nbytes == 32  # what the call really writes
    fused = cases.Case("fused_add_norm", (4, 8), "float32", (("norm", "rms"),))
    # read x, residual, weight; write y, h, rstd
    assert fused.nbytes("forward") == 4 * 128 + 32 + 32


def test_case_filters_and_errors():
    sel = cases.cases(variants=["group_norm"], params={"axis": -1}, shapes=[(2, 8, 3, 3)], dtypes=["float64"])
    assert [c.name for c in sel] == ["group_norm/2x8x3x3/float64/axis=-1"]
    assert cases.by_name(sel[0].name.replace("2x8x3x3", "8x64x56x56")).shape == (8, 64, 56, 56)
    assert cases.parse_shape("8192x4096") == (8192, 4096)
    with pytest.raises(ValueError, match="shape"):
        cases.parse_shape("8x-1")
    with pytest.raises(ValueError, match="variant"):
        cases.cases(variants=["batch_nrom"])


# ------------------------------------------------------------------------------------------- normbench run
def test_run_writes_results_that_agree_with_the_reference(tmp_path, capsys):
    rc = runner.main(["--variant", "layer_norm", "--variant", "group_norm", "--shape", "4x8x3x3", "--axis", "1",
                      "--repeats", "2", "--peer", "numpy", "--out-dir", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "### layer_norm forward" in text and "### group_norm backward" in text and "slowest" in text
    (jpath,) = tmp_path.glob("*.json")
    (cpath,) = tmp_path.glob("*.csv")
    doc = json.loads(jpath.read_text())
    assert doc["schema"] == runner.SCHEMA and doc["machine"]["numba_threads"] >= 1
    # peers timed on reused memory, as normbench's preallocated outputs (where the C library is glibc)
    assert doc["machine"]["freed_memory_reused"] is GLIBC
    # the commit measured: this checkout's HEAD (None only where normbench is not imported from a git checkout)
    try:
        head = subprocess.run(["git", "-C", str(Path(runner.__file__).parents[2]), "rev-parse", "HEAD"],
                              capture_output=True, text=True)
    except OSError:  # no git
        head = None
    if head is not None and head.returncode == 0:
        assert doc["code"]["commit"] == head.stdout.strip() and isinstance(doc["code"]["dirty"], bool)
    else:
        assert doc["code"] is None
    rows = doc["rows"]
    backends = {v: runner._backends_for(v, None) for v in ("layer_norm", "group_norm")}
    assert len(rows) == 2 * sum(len(b) for b in backends.values())
    for r in rows:
        assert r["gbps"] * r["time_s"] == pytest.approx(r["bytes"] / 1e9)
        assert r["frac_limit"] == pytest.approx(r["frac_copy"] / r["limit_factor"])
        # the kernels against the float64 oracle, in units of float32 eps (the textbook peer can cancel badly
        # on rows of 3 values: its error is only required to be measured)
        assert 0 <= r["err_eps"] < 50 and np.isfinite(r["err_numpy"]), r
        assert r["speedup_numpy"] > 0
    assert len(cpath.read_text().splitlines()) == len(rows) + 1


def test_run_never_overwrites(tmp_path):
    import datetime as dt

    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    j1, c1 = runner.result_paths(tmp_path, "box-2t", now)
    j1.write_text("{}")
    j2, _ = runner.result_paths(tmp_path, "box-2t", now)
    assert j1.name == "box-2t-20260102T030405Z.json" and j2 != j1 and not j2.exists()


def test_run_json_and_bad_options(tmp_path, capsys):
    assert runner.main(["--variant", "rms_norm", "--shape", "3x16", "--repeats", "1", "--no-peers",
                        "--no-accuracy", "--json", "--out-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["pass"] for r in doc["rows"]} == {"forward", "backward"} and doc["rows"][0]["err_eps"] is None  # NaN -> null
    assert runner.main(["--variant", "nope", "--out-dir", str(tmp_path)]) == 2
    assert "variant" in capsys.readouterr().err
    assert runner.main(["--shape", "0x3", "--out-dir", str(tmp_path)]) == 2
    for shape in ("8x", "x8", "4xx8"):  # an empty size is a typo, not a smaller shape
        assert runner.main(["--variant", "layer_norm", "--shape", shape, "--out-dir", str(tmp_path)]) == 2
        assert "shape" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("")
    assert runner.main(["--variant", "rms_norm", "--shape", "3x16", "--out-dir", str(afile)]) == 2
    assert "--out-dir" in capsys.readouterr().err


def test_run_reports_why_cases_were_skipped(tmp_path, capsys):
    """A shape a variant cannot take is skipped with its reason, printed; nothing valid left: exit 1, no file."""
    out = tmp_path / "runs"
    assert runner.main(["--variant", "batch_norm", "--variant", "instance_norm", "--shape", "8", "--repeats", "1",
                        "--no-peers", "--no-accuracy", "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no case ran" in err and "rank >= 2" in err and "batch_norm" in err and not out.exists()
    assert runner.main(["--variant", "rms_norm", "--variant", "instance_norm", "--shape", "4x8", "--repeats", "1",
                        "--no-peers", "--no-accuracy", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 case(s)" in printed and "instance_norm" in printed and "invalid for this variant" in printed


def test_run_a_peer_that_raises_gets_blank_columns_not_the_case(tmp_path, capsys, monkeypatch):
    """A peer that raises on an input normbench handles (PyTorch's group norm on a batch of 1) gives that peer's
    columns NaN and its reason once; the kernel's measurement stands and the other peers are still timed."""
    from normbench import peers

    real = peers.prepare

    def prepare(peer, variant, inputs, dy):
        if peer == "torch":
            def broken():
                raise ValueError("Expected more than 1 value per channel when training")
            return broken, broken
        return real(peer, variant, inputs, dy)

    monkeypatch.setattr(peers, "prepare", prepare)
    monkeypatch.setattr(peers, "available", lambda: ["numpy", "torch"])
    rc = runner.main(["--variant", "rms_norm", "--shape", "3x16", "--repeats", "1", "--peer", "numpy",
                      "--peer", "torch", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    (jpath,) = tmp_path.glob("*.json")
    doc = json.loads(jpath.read_text())
    case = "rms_norm/3x16/float32"
    assert doc["peer_failures"] == {f"{case} [torch]": "ValueError: Expected more than 1 value per channel when "
                                                        "training"}
    assert out.count("Expected more than 1 value per channel") == 1
    assert {r["pass"] for r in doc["rows"]} == {"forward", "backward"}
    for r in doc["rows"]:
        assert r["speedup_torch"] is None and r["err_torch"] is None and r["time_torch"] is None  # NaN -> null
        assert r["speedup_numpy"] > 0 and 0 <= r["err_eps"] < 50


def test_run_repeated_options_run_each_case_once(tmp_path, capsys):
    """--variant, --shape, --backend and --dtype given twice: each case measured once, in the order given."""
    assert runner.main(["--variant", "rms_norm", "--variant", "layer_norm", "--variant", "rms_norm",
                        "--shape", "3x16", "--shape", "3x16", "--backend", "cpu", "--backend", "cpu",
                        "--dtype", "float32", "--dtype", "float32", "--repeats", "1", "--no-peers", "--no-accuracy",
                        "--json", "--out-dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["variant"], r["pass"]) for r in rows] == [("rms_norm", "forward"), ("rms_norm", "backward"),
                                                         ("layer_norm", "forward"), ("layer_norm", "backward")]


def test_run_cuda_without_a_gpu_says_so(tmp_path, capsys, monkeypatch):
    """--backend cuda where no GPU (nor the simulator) is there: the accuracy sweep's message, exit 2, nothing
    measured or written (not "no case ran ... (no selected backend implements it)", exit 1)."""
    real = registry.available_backends
    monkeypatch.setattr(registry, "available_backends", lambda v: [b for b in real(v) if b != "cuda"])
    monkeypatch.setattr(runner, "run_case", lambda *a, **k: pytest.fail("measured without a GPU"))
    out = tmp_path / "runs"
    assert runner.main(["--variant", "layer_norm", "--shape", "64x128", "--backend", "cuda",
                        "--out-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["normbench run: --backend cuda: not available here for layer_norm (cuda "
                                         "needs a GPU, or NUMBA_ENABLE_CUDASIM=1 for the simulator)"]
    assert not out.exists()


@pytest.mark.parametrize("where", ["under_file", "unwritable"])
def test_run_bad_out_dir_exits_2_before_measuring(tmp_path, capsys, monkeypatch, unwritable_dir, where):
    monkeypatch.setattr(runner, "run_case", lambda *a, **k: pytest.fail("measured despite a bad --out-dir"))
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "runs" if where == "under_file" else unwritable_dir
    assert runner.main(["--variant", "rms_norm", "--shape", "3x16", "--out-dir", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"normbench run: --out-dir {out}: ")


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, check=True).stdout


def test_code_version_only_from_a_checkout_that_tracks_normbench(tmp_path):
    """normbench installed (not editable) in a virtualenv inside some git checkout: that checkout's HEAD says
    nothing about the code measured, so ``code`` is null; the same file tracked by the checkout gives its HEAD."""
    import importlib.util

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "README").write_text("x\n")
    _git(repo, "add", "README")
    _git(repo, "commit", "-q", "-m", "one")

    def copy_of_runner(path):
        path.parent.mkdir(parents=True)
        path.write_text(Path(runner.__file__).read_text())
        spec = importlib.util.spec_from_file_location(f"runner_copy_{len(path.parts)}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    installed = copy_of_runner(repo / ".venv" / "lib" / "site-packages" / "normbench" / "benchmarks" / "runner.py")
    assert installed.code_version() is None  # untracked here: not this checkout's code
    tracked = copy_of_runner(repo / "normbench" / "benchmarks" / "runner.py")
    _git(repo, "add", "normbench")
    _git(repo, "commit", "-q", "-m", "two")
    assert tracked.code_version() == {"commit": _git(repo, "rev-parse", "HEAD").strip(), "dirty": False}


def test_error_eps_measures_in_units_of_eps():
    inputs = {"x": np.zeros((2, 4), np.float32), "normalized_shape": (4,)}
    ref = np.array([[1.0, -2, 0.5, 0], [4, 0, 0, 0]])
    out = ref.astype(np.float32).copy()
    out[1, 2] += 8 * np.finfo(np.float32).eps  # 8 eps absolute in a row whose max |ref| is 4 -> 2 units
    assert runner.error_eps("layer_norm", inputs, out, ref) == pytest.approx(2.0)


def test_bandwidth_command(capsys):
    assert roofline.main(["--mib", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "copy_gbps" in out and "0.667" in out
    rows = roofline.measure([0.5], repeats=1)
    assert rows[0]["limit_bwd_two_read_gbps"] == pytest.approx(0.6 * rows[0]["copy_gbps"])
    assert rows[0]["streaming_copy_gbps"] > 0


def test_paired_seconds_times_peers_in_the_kernels_rounds():
    """Peers are timed in the kernel's rounds: each timed call after an untimed one, a slow peer in fewer rounds
    (spread over the run) to fit its budget; the medians are those of the calls (closed form: sleeps)."""
    calls = {"fast": 0, "slow": 0}

    def peer(name, seconds):
        def call():
            calls[name] += 1
            time.sleep(seconds)
        return call

    t_fn, t_copy, t_peers = bandwidth.paired_seconds(lambda: None, 1 << 16, repeats=6,
                                                     peers={"fast": peer("fast", 0.001), "slow": peer("slow", 0.03)},
                                                     peer_budget=0.1)
    assert set(t_peers) == {"fast", "slow"} and t_fn < 0.001 and t_copy > 0
    assert 0.001 <= t_peers["fast"] < 0.02 and 0.03 <= t_peers["slow"] < 0.2
    # one sizing call each, then an untimed and a timed call per round it takes part in: 6 rounds for the fast
    # peer; the slow one fits 0.1 s / 2 / 0.03 s -> 1 round, raised to the minimum of 3
    assert calls == {"fast": 1 + 2 * 6, "slow": 1 + 2 * 3}


_FAULTS_OF_A_REALLOCATION = """
import sys
import numpy as np
from normbench import bandwidth
assert not bandwidth.freed_memory_reused()
if sys.argv[1] == "reuse":
    if not bandwidth.reuse_freed_memory():  # not glibc: nothing changed, and the process says so
        assert not bandwidth.freed_memory_reused()
        print("unavailable")
        sys.exit()
    assert bandwidth.freed_memory_reused()
import resource
np.ones(64 << 18, np.float32)  # 64 MiB, touched and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(64 << 18, np.float32)  # allocated and touched again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

GLIBC = platform.libc_ver()[0] == "glibc"


def test_reuse_freed_memory_spares_fresh_outputs_their_page_faults():
    """With reuse_freed_memory (what the timed suites set, so that peers allocating fresh outputs are timed like
    normbench writing into preallocated ones) a second 64 MiB allocation lands on touched pages: no page faults
    (the kernel's count); without it, every one of its pages (or 2 MiB huge pages) faults again.  Where the C
    library is not glibc the call changes nothing and reports False."""
    faults = {}
    for mode in ("reuse", "default") if GLIBC else ("reuse",):
        run = subprocess.run([sys.executable, "-c", _FAULTS_OF_A_REALLOCATION, mode], capture_output=True,
                             text=True, check=True)
        faults[mode] = run.stdout.split()[-1]
    if not GLIBC:
        assert faults == {"reuse": "unavailable"}
        return
    assert int(faults["reuse"]) < 8, faults
    assert int(faults["default"]) >= 32, faults  # 64 MiB: at least 32 huge pages


def test_streaming_copy_copies():
    """The streaming-store copy behind `normbench bandwidth`'s headroom column is a copy (odd length: a tail)."""
    src = np.arange(16 * 37 + 5, dtype=np.float32)
    dst = aligned_empty(src.size, np.float32)
    bandwidth._streaming_copy(dst, src, 3)
    np.testing.assert_array_equal(dst, src)


@pytest.mark.parametrize("shape", [5, np.int64(5), (2, 3), [2, 3], (0,), ()])
def test_output_allocators_take_any_shape(shape):
    """aligned_empty and new_output take the shapes np.empty takes, and aligned_empty's data starts on a line
    (where it has any)."""
    for make in (aligned_empty, new_output):
        a = make(shape, np.float32)
        assert a.shape == np.empty(shape).shape and a.dtype == np.float32
    a = aligned_empty(shape, np.float64)
    assert a.size == 0 or a.ctypes.data % 64 == 0


# ------------------------------------------------------------------------------------------- asv
def _asv_config(tmp_path):
    text = re.sub(r"^\s*//.*$", "", (ROOT / "asv.conf.json").read_text(), flags=re.M)
    conf = json.loads(text)
    assert conf["repo"] == "." and conf["benchmark_dir"] == "normbench/benchmarks"
    assert conf["results_dir"] == "results/asv" and conf["launch_method"] == "spawn"
    assert "--no-deps" in conf["build_command"][0]
    conf.update(repo=str(ROOT), benchmark_dir=str(ROOT / "normbench/benchmarks"),
                results_dir=str(tmp_path / "results"), html_dir=str(tmp_path / "html"), env_dir=str(tmp_path / "env"))
    path = tmp_path / "asv.conf.json"
    path.write_text(json.dumps(conf))
    return path


def _asv(tmp_path, *args):
    asv = Path(sys.executable).with_name("asv")
    if not asv.exists():
        pytest.skip("asv is not installed (pip install 'normbench[bench]')")
    env = dict(os.environ, HOME=str(tmp_path))  # asv's machine file goes to a temporary home
    return subprocess.run([str(asv), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_asv_check(tmp_path):
    conf = _asv_config(tmp_path)
    res = _asv(tmp_path, "check", "--python=same", "--config", str(conf))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No problems found" in res.stdout


def test_tiny_asv_run_has_no_failed_benchmark(tmp_path):
    conf = _asv_config(tmp_path)
    assert _asv(tmp_path, "machine", "--yes", "--machine", "pytest-box").returncode == 0
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    small = re.escape("'layer_norm/8x768/float32', 'cpu'")
    res = _asv(tmp_path, "run", "--python=same", "--set-commit-hash", commit, "--config", str(conf),
               "--machine", "pytest-box", "-b", "track_numba_threads", "-b", rf"Forward.time_pass\({small}\)",
               "-b", rf"Backward.track_fraction_of_copy\({small}\)")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "failed" not in res.stdout.lower(), res.stdout
    (result,) = (tmp_path / "results" / "pytest-box").glob(f"{commit[:8]}-*.json")
    doc = json.loads(result.read_text())
    got = {k: v[0] for k, v in doc["results"].items()}
    assert got["bench_kernels.track_numba_threads"][0] >= 1
    if registry.has_backend("layer_norm", "cpu"):
        idx = doc["results"]["bench_kernels.Forward.time_pass"][1][0].index("'layer_norm/8x768/float32'")
        assert 0 < got["bench_kernels.Forward.time_pass"][2 * idx] < 1  # (case, backend): cpu is first
        assert 0 < got["bench_kernels.Backward.track_fraction_of_copy"][2 * idx] < 5


@pytest.mark.parametrize("case", cases.cases(shapes=[(3, 8, 2, 5)]), ids=lambda c: c.name)
def test_error_eps_is_the_accuracy_harness_unit(case):
    """runner.error_eps (reductions) against normbench.accuracy.metrics (group ids): the same number."""
    metrics = pytest.importorskip("normbench.accuracy.metrics")
    from normbench.accuracy.layout import group_ids

    inputs = case.make_inputs()
    y = case.spec.run_forward(case.make_inputs(), backend="reference")[0]
    noisy = (y * (1 + 1e-6 * np.random.default_rng(0).standard_normal(y.shape))).astype(np.float32)
    ids, G = group_ids(case.variant, inputs)
    want = metrics.error_stats(noisy, y, metrics.group_scale(y, ids, G), np.float32)["max_err"]
    assert runner.error_eps(case.variant, inputs, noisy, y) == pytest.approx(want, rel=1e-9)


def test_check_html_swaps_cdn_scripts_for_local_copies(tmp_path, monkeypatch):
    from normbench.benchmarks import _check_html

    js = tmp_path / "js"
    for f in ("jquery/jquery.min.js", "jquery-flot/jquery.flot.js", "bootstrap/js/bootstrap.min.js"):
        (js / f).parent.mkdir(parents=True, exist_ok=True)
        (js / f).write_text("// " + f)
    monkeypatch.setattr(_check_html, "JS", js)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        '<script src="https://code.jquery.com/jquery-3.3.1.min.js" integrity="sha256-x" crossorigin="anonymous">'
        '</script>\n<script src="https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js"></script>\n'
        '<script src="https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js"></script>\n'
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js"></script>\n'
        '<script src="asv.js"></script>')
    missing = _check_html.localize(site, tmp_path / "out")
    html = (tmp_path / "out" / "index.html").read_text()
    assert "https://" not in html  # every CDN tag swapped or dropped
    assert 'src="jquery.min.js"' in html and 'src="jquery.flot.js"' in html and 'src="asv.js"' in html
    assert "orderBars" not in html and (tmp_path / "out" / "jquery.min.js").exists()
    assert missing == [str(js / "blueimp-md5/md5.min.js")]


def test_check_html_removes_its_served_copy(tmp_path, monkeypatch):
    """The site copy it serves went to a mkdtemp folder that was never removed (one more per run)."""
    import tempfile

    from normbench.benchmarks import _check_html

    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text("<html></html>")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(_check_html.shutil, "which", lambda name: "/bin/true")  # a browser that renders nothing
    monkeypatch.setattr(_check_html, "localize", lambda src, site: [])
    assert _check_html.main(["--html", str(html), "--out", str(tmp_path / "shot.png")]) == 1  # not rendered
    assert list(temp.iterdir()) == []
