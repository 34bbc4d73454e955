"""The ``normbench`` dispatcher (unknown or missing command, --help, --version, a subcommand's --help) and
`normbench bandwidth`'s argument checks: exit 2 with a message naming the option, before anything runs."""
import re
from pathlib import Path

import pytest

import normbench
from normbench import cli
from normbench.benchmarks import roofline


def test_no_command_prints_usage_and_exits_2(capsys):
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: normbench {run,")
    assert captured.err.splitlines()[-1] == "normbench: error: no command given"


def test_unknown_command_is_named(capsys):
    assert cli.main(["bogus", "--x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage: normbench" in captured.err
    assert captured.err.splitlines()[-1] == "normbench: error: unknown command 'bogus'"


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(capsys, flag):
    assert cli.main([flag]) == 0
    assert capsys.readouterr().out == f"normbench {normbench.__version__}\n"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0(capsys, flag):
    assert cli.main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: normbench") and all(name in out for name in cli.SUBCOMMANDS)


@pytest.mark.parametrize("argv, expected", [
    (["study", "--help"], "usage: normbench study [-h] {lr} ..."),
    (["study", "lr", "--help"], "usage: normbench study lr [options]"),
])
def test_study_help_exits_0(capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(expected) and captured.err == ""


@pytest.mark.parametrize("argv, message", [
    (["--mib", "nan"], "argument --mib: expected a finite number > 0, got 'nan'"),
    (["--mib", "inf"], "argument --mib: expected a finite number > 0, got 'inf'"),
    (["--mib", "1", "--mib", "0"], "argument --mib: expected a finite number > 0, got '0'"),
    (["--mib", "-4"], "argument --mib: expected a finite number > 0, got '-4'"),
    (["--repeats", "0"], "argument --repeats: expected an integer >= 1, got '0'"),
])
def test_bandwidth_bad_values_exit_2(capsys, monkeypatch, argv, message):
    monkeypatch.setattr(roofline, "measure", lambda *a, **k: pytest.fail("measured despite a bad option"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["bandwidth", *argv])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines()[-1] == f"normbench bandwidth: error: {message}"


def test_bandwidth_size_beyond_memory_exits_2(capsys, monkeypatch):
    """A working set that cannot be allocated: a clear error up front, not a MemoryError from NumPy."""
    monkeypatch.setattr(roofline, "measure", lambda *a, **k: pytest.fail("measured despite a bad option"))
    monkeypatch.setattr(roofline, "physical_memory_bytes", lambda: 8 * 2**30)  # an 8 GiB machine
    with pytest.raises(SystemExit) as exc:
        roofline.main(["--mib", "1", "--mib", "5000"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines()[-1] == (
        "normbench bandwidth: error: --mib 5000: needs 10000 MiB of memory (the working set twice); expected at "
        "most 4096 MiB on this machine (8.0 GiB)")
    # and on this machine: 1e9 MiB (an exbibyte) is beyond any
    monkeypatch.undo()
    monkeypatch.setattr(roofline, "measure", lambda *a, **k: pytest.fail("measured despite a bad option"))
    with pytest.raises(SystemExit) as exc:
        roofline.main(["--mib", "1e9"])
    assert exc.value.code == 2 and "--mib 1e+09: needs 2000000000 MiB" in capsys.readouterr().err


def test_physical_memory_is_known_here():
    assert roofline.physical_memory_bytes() > 2**20


# ------------------------------------------------------------------------------------------- normbench run
def test_run_result_names_keep_a_dotted_machine_tag(tmp_path):
    """An FQDN machine tag: the name is ``<tag>-<UTC time>.json/.csv`` in full, and a clash adds ``-1``
    (with_suffix would cut the name at the tag's last dot, and every candidate would then clash)."""
    import datetime as dt

    from normbench.benchmarks import runner

    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    j1, c1 = runner.result_paths(tmp_path, "xeon.lab.example-2t", now)
    assert (j1.name, c1.name) == ("xeon.lab.example-2t-20260102T030405Z.json",
                                  "xeon.lab.example-2t-20260102T030405Z.csv")
    j1.write_text("{}")
    j2, c2 = runner.result_paths(tmp_path, "xeon.lab.example-2t", now)
    assert (j2.name, c2.name) == ("xeon.lab.example-2t-20260102T030405Z-1.json",
                                  "xeon.lab.example-2t-20260102T030405Z-1.csv")


def test_run_twice_with_a_dotted_machine_tag(tmp_path, monkeypatch, capsys):
    import numba

    from normbench.benchmarks import runner

    monkeypatch.setenv("NORMBENCH_MACHINE", "xeon.lab.example")
    argv = ["--variant", "rms_norm", "--shape", "3x16", "--repeats", "1", "--no-peers", "--no-accuracy",
            "--out-dir", str(tmp_path)]
    assert runner.main(argv) == 0 and runner.main(argv) == 0
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(names) == 2, names
    tag = f"xeon.lab.example-{numba.get_num_threads()}t-"
    assert all(n.startswith(tag) and re.fullmatch(r"\d{8}T\d{6}Z(-1)?\.json", n[len(tag):]) for n in names), names
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == [n[:-5] + ".csv" for n in names]


@pytest.mark.parametrize("peer, installed, message", [
    ("bogus", ["numpy", "torch"], "normbench run: peer=['bogus']; expected some of ['numpy', 'torch', 'jax']"),
    ("jax", ["numpy", "torch"], "normbench run: peer=['jax'] is not installed here (installed: ['numpy', 'torch']); "
                                "install it (pip install jax) or leave out --peer jax"),
])
def test_run_bad_or_missing_peer_exits_2(tmp_path, monkeypatch, capsys, peer, installed, message):
    """--peer is checked before anything runs: a typo or a peer that is not installed is an error, never dropped."""
    from normbench import peers
    from normbench.benchmarks import runner

    monkeypatch.setattr(peers, "available", lambda: list(installed))
    monkeypatch.setattr(runner, "run_case", lambda *a, **k: pytest.fail("measured despite a bad --peer"))
    out = tmp_path / "runs"
    assert runner.main(["--variant", "rms_norm", "--shape", "3x16", "--repeats", "1", "--no-accuracy",
                        "--peer", "numpy", "--peer", peer, "--out-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [message]
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--variant", "batch_norm", "--shape", "64x64", "--axis", "-1"],
     "normbench run: the selected variants, shapes, dtypes and --axis leave no case (a 2-D (N, C) shape has one "
     "layout, listed as axis=1)"),
    (["--variant", "batch_norm", "--shape", "64x64", "--axis", "-1", "--backend", "cpu"],
     "normbench run: the selected variants, shapes, dtypes and --axis leave no case (a 2-D (N, C) shape has one "
     "layout, listed as axis=1)"),
    (["--variant", "rms_norm", "--shape", "3x16", "--no-peers", "--peer", "foo"],
     "normbench run: peer=['foo']; expected some of ['numpy', 'torch', 'jax']"),
])
def test_run_selection_errors_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    """A selection that leaves no case used to blame the backend ("not available here for  (cuda needs a GPU")
    or print an empty "no case ran:"; a --peer typo beside --no-peers ran and exited 0."""
    from normbench.benchmarks import runner

    monkeypatch.setattr(runner, "run_case", lambda *a, **k: pytest.fail("measured despite a bad selection"))
    out = tmp_path / "runs"
    assert runner.main(argv + ["--repeats", "1", "--no-accuracy", "--out-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [message]
    assert not out.exists()


def test_run_list_options_take_several_values_after_one_flag(tmp_path, monkeypatch):
    """``--variant a b`` as ``normbench accuracy`` takes it (it was "unrecognized arguments"), mixed with repeats;
    a value given twice runs once."""
    from normbench.benchmarks import runner

    ran = []
    monkeypatch.setattr(runner, "run_case", lambda case, *a, **k: ran.append(case.name) or [])
    runner.main(["--variant", "layer_norm", "rms_norm", "--variant", "layer_norm", "--shape", "3x16", "4x8",
                 "--no-peers", "--repeats", "1", "--no-accuracy", "--out-dir", str(tmp_path)])
    assert ran == ["layer_norm/3x16/float32", "layer_norm/4x8/float32", "rms_norm/3x16/float32",
                   "rms_norm/4x8/float32"]


def test_paired_seconds_times_the_copies_it_is_given():
    """The limit of a paired measurement is the fastest of the copies passed (a device copy for cuda rows), timed
    in the same rounds as the kernel; sleeps give closed-form lower bounds."""
    import time

    from normbench import bandwidth

    calls = []

    def slow_copy():
        calls.append(1)
        time.sleep(0.004)

    t_fn, t_copy, peers = bandwidth.paired_seconds(lambda: time.sleep(0.001), 1 << 30, repeats=3, copies=(slow_copy,))
    assert t_copy >= 0.004 and t_fn < t_copy and peers == {}
    assert len(calls) == 1 + 3  # the warm-up call, then one per round


def test_cuda_rows_are_judged_against_the_device_copy(monkeypatch):
    """A cuda row's limit is a device copy of its working set and it carries no (host) peer ratios: against the
    host copy an H100 layer norm read 439% of its limit.  The GPU is stood in for by the cpu kernels."""
    import time

    from normbench.benchmarks import _harness, runner
    from normbench.benchmarks import cases as _cases
    from normbench.cuda import timing

    real_pass = _harness.Pass
    sizes = []

    def device_copies(nbytes):
        sizes.append(nbytes)
        return (lambda: time.sleep(0.002), lambda: time.sleep(0.004))  # far slower than any host copy of 1 KiB

    monkeypatch.setattr(_harness, "Pass", lambda case, backend, pass_, **kw: real_pass(case, "cpu", pass_, **kw))
    monkeypatch.setattr(timing, "device_copies", device_copies)
    (case,) = _cases.cases(full=True, variants=["rms_norm"], dtypes=["float32"], shapes=[(8, 16)])
    rows = runner.run_case(case, ["cuda"], ["numpy"], 3, runner._CopyCache(), accuracy=False)
    assert [r["backend"] for r in rows] == ["cuda", "cuda"]
    assert sizes == [case.nbytes("forward", case.make_inputs(seed=0)), case.nbytes("backward", case.make_inputs(seed=0))]
    assert all("speedup_numpy" not in r for r in rows)
    for r in rows:  # the limit is the faster given copy (2 ms for 1 KiB, not the 4 ms one), not the host's
        copy_seconds = 2 * (r["bytes"] // 8 * 4) / (r["copy_gbps"] * 1e9)
        assert 0.002 <= copy_seconds < 0.0035, copy_seconds


# ------------------------------------------------------------------------------------------- optional packages
def _fake_rows(*a, **k):
    return [{"working_set_mib": 1, "copy_gbps": 1.0}]


@pytest.mark.parametrize("package, argv", [
    ("tqdm", ["run", "--variant", "rms_norm", "--shape", "3x16", "--repeats", "1", "--no-peers", "--no-accuracy"]),
    ("tqdm", ["accuracy", "--quick", "--variant", "rms_norm", "--family", "standard", "--no-peers"]),
    ("tabulate", ["report", "--no-plots"]),
    ("matplotlib", ["report"]),
    ("matplotlib", ["accuracy", "--quick", "--variant", "rms_norm", "--family", "standard", "--no-peers", "--plot"]),
    ("tabulate", ["bandwidth", "--mib", "1"]),
])
def test_missing_optional_package_is_one_line_for_every_subcommand(tmp_path, capsys, monkeypatch, package, argv):
    """tqdm, tabulate and matplotlib (the [bench] extra) are imported when a subcommand needs them, after the
    dispatcher's import of the module: their absence is the same one line (exit 2), not a traceback."""
    import sys

    from normbench.benchmarks import runner

    data = str(Path(__file__).parent / "data")
    extra = {"run": ["--out-dir", str(tmp_path / "out")], "accuracy": ["--out", str(tmp_path / "out")],
             "report": ["--runs", f"{data}/runs", "--asv", f"{data}/asv", "--pytest", f"{data}/pytest",
                        "--accuracy", f"{data}/accuracy", "--out", str(tmp_path / "out")], "bandwidth": []}[argv[0]]
    monkeypatch.setattr(roofline, "measure", _fake_rows)
    monkeypatch.setattr(runner, "run_case", lambda *a, **k: pytest.fail("measured without tqdm"))
    from normbench.accuracy import sweep

    if package == "matplotlib":  # accuracy --plot stops before the sweep (it failed after a whole run)
        monkeypatch.setattr(sweep, "sweep", lambda *a, **k: pytest.fail("swept without matplotlib"))
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    assert cli.main(argv + extra) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == (f"normbench {argv[0]} needs the optional package {package!r}: "
                                             "pip install 'normbench[bench]'")
    assert "Traceback" not in captured.err


# ------------------------------------------------------------------------------------------- output locations
def test_output_dir_error(unwritable_dir):
    """A folder that exists or can be created is fine (and is not created by the check); a file, a folder under a
    file and a place where nothing can be created are one line naming the option."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        assert cli.output_dir_error("--out", d) is None
        assert cli.output_dir_error("--out", d / "a" / "b") is None and not (d / "a").exists()
        assert list(d.iterdir()) == []  # the probe leaves nothing behind
        (d / "f").write_text("")
        assert cli.output_dir_error("--out", d / "f") == (
            f"--out {d / 'f'} is a file; expected a folder (created if missing)")
        assert cli.output_dir_error("--out", d / "f" / "sub") == (
            f"--out {d / 'f' / 'sub'}: {d / 'f'} is a file; expected a folder (created if missing)")
        assert cli.writable_file_error("--readme", d / "f") is None
        assert cli.writable_file_error("--readme", d / "g") == f"--readme {d / 'g'}: no such file"
        assert cli.writable_file_error("--readme", d) == f"--readme {d}: not a regular file"
        assert cli.writable_file_error("--docs", d / "new" / "g.md", create=True) is None
    assert cli.output_dir_error("--out", unwritable_dir).startswith(f"--out {unwritable_dir}: not writable")


@pytest.mark.parametrize("where", ["file", "under_file", "unwritable"])
@pytest.mark.parametrize("argv", [
    ["accuracy", "--quick", "--variant", "rms_norm", "--family", "standard", "--no-peers", "--out"],
    ["study", "lr", "--lrs", "0.1", "--norms", "none", "--seeds", "1", "--epochs", "1", "--out"],
], ids=["accuracy", "study"])
def test_bad_output_folder_exits_2_before_anything_runs(tmp_path, capsys, monkeypatch, unwritable_dir, where, argv):
    from normbench import study
    from normbench.accuracy import sweep

    monkeypatch.setattr(sweep, "sweep", lambda *a, **k: pytest.fail("swept despite a bad --out"))
    monkeypatch.setattr(study, "run_study", lambda *a, **k: pytest.fail("trained despite a bad --out"))
    afile = tmp_path / "afile"
    afile.write_text("")
    out = {"file": afile, "under_file": afile / "sub", "unwritable": unwritable_dir}[where]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + [str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"normbench {' '.join(argv[:1 + (argv[0] == 'study')])}: error: --out {out}")


def test_accuracy_unwritable_docs_exits_2_before_the_sweep(capsys, monkeypatch, unwritable_dir):
    from normbench.accuracy import sweep

    monkeypatch.setattr(sweep, "sweep", lambda *a, **k: pytest.fail("swept despite a bad --docs"))
    docs = unwritable_dir / "numerics.md"
    with pytest.raises(SystemExit) as exc:
        cli.main(["accuracy", "--quick", "--variant", "rms_norm", "--docs", str(docs)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"normbench accuracy: error: --docs {docs}: its folder")


def test_other_import_errors_inside_a_subcommand_are_not_install_hints(monkeypatch):
    """Only the [bench] extras' absence is an install hint: a missing module anywhere else during a subcommand is
    a bug, raised as is (a review found "not available in this version" and a wrong pip hint for them)."""
    from normbench.benchmarks import roofline as rl

    for missing in ("normbench.no_such_helper", "cuda.bindings"):
        def broken(*a, **k):
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

        monkeypatch.setattr(rl, "main", broken)
        with pytest.raises(ModuleNotFoundError):
            cli.main(["bandwidth"])
