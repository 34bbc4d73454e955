"""normbench report on the real result files committed under tests/data/ (a normbench run, asv results, a
pytest-benchmark JSON, an accuracy CSV), and the clear messages for truncated or foreign files."""
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from normbench import report

DATA = Path(__file__).parent / "data"
PNG = b"\x89PNG\r\n\x1a\n"


def _one(pattern):
    (path,) = sorted(DATA.glob(pattern))
    return path


def test_load_every_kind_of_result_file():
    runs = report.load_run(_one("runs/*.json"))
    assert set(runs["variant"]) == {"layer_norm", "group_norm"} and set(runs["pass"]) == {"forward", "backward"}
    assert runs["machine"].str.endswith("t").all()
    asv = report.load_asv(DATA / "asv")
    got = asv.dropna(subset=["value"]).set_index(["benchmark", "params"])["value"]
    assert got["bench_kernels.track_numba_threads", ""] >= 1
    assert 0 < got["bench_kernels.Forward.time_pass", "'layer_norm/8x768/float32', 'cpu'"] < 1
    assert len(asv) > 100  # every parameter combination, NaN where that run skipped it
    bench = report.load_pytest_benchmark(_one("pytest/*.json"))
    assert set(bench["impl"]) >= {"normbench", "numpy", "torch"} and (bench["median_s"] > 0).all()
    assert {"bytes", "error_eps", "fraction_of_copy"} <= set(bench.columns)
    acc = report.load_accuracy(_one("accuracy/*.csv"))
    assert {"cpu", "reference"} <= set(acc["impl"])


def test_tables_say_what_the_files_hold():
    runs = report.load_run(_one("runs/*.json"))
    table = report.results_table(runs)
    assert "% of limit" in table and "layer_norm" in table and "vs torch" in table
    t = report.pytest_table(report.load_pytest_benchmark(_one("pytest/*.json")))
    assert "layer_norm/8x768/float32 forward" in t and "normbench (ms)" in t and "torch (x copy)" in t
    assert "track_numba_threads" in report.asv_table(report.load_asv(DATA / "asv"), "numba_threads")
    mixed = report.asv_table(report.load_asv(DATA / "asv"), r"Forward\.t|numba_threads")  # each row's unit
    rows = mixed.splitlines()[2:]
    assert rows and all(re.search(r"'(seconds|threads)'\) *\|", ln) for ln in rows), mixed
    assert "(no asv benchmark matches" in report.asv_table(report.load_asv(DATA / "asv"), "nothing_like_this")
    acc = report.accuracy_table(report.load_accuracy(_one("accuracy/*.csv")))
    assert "layer_norm" in acc and "cpu" in acc


def test_speed_ups_only_from_runs_that_paired_the_peers(tmp_path):
    """The committed run predates paired peer timing: its speed-ups are left blank, with the reason; the same
    document marked as paired shows them (from its speedup_* columns)."""
    old = _one("runs/*.json")
    def torch_column(table):
        lines = [ln.split("|") for ln in table.splitlines() if ln.startswith("|")]
        k = [c.strip() for c in lines[0]].index("vs torch")
        return [ln[k].strip() for ln in lines[2:]]

    table = report.results_table(report.load_run(old))
    assert "Blank speed-ups" in table and set(torch_column(table)) == {""}
    doc = json.loads(old.read_text())
    doc["peer_timing"] = "paired"
    new = tmp_path / old.name
    new.write_text(json.dumps(doc))
    runs = report.load_run(new)
    table = report.results_table(runs)
    assert "Blank speed-ups" not in table
    shown = torch_column(table)
    assert shown and all(v.endswith("x") and float(v[:-1]) > 0 for v in shown)


def test_report_command_writes_markdown_plots_and_readme(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{report.README_START}\nold table\n{report.README_END}\n\nafter\n")
    rc = report.main(["--runs", str(DATA / "runs"), "--asv", str(DATA / "asv"), "--pytest", str(DATA / "pytest"),
                      "--accuracy", str(DATA / "accuracy"), "--history", "time_pass|numba_threads",
                      "--out", str(tmp_path / "rep"), "--readme", str(readme)])
    assert rc == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    for section in ("normbench run", "pytest-benchmark", "asv history", "accuracy"):
        assert section in md
    for png in ("roofline.png", "history.png", "accuracy_offset.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == PNG, png
    # the committed run timed the peers apart: no speed-up is shown, in the table or as a plot
    assert not (tmp_path / "rep" / "speedup.png").exists() and "speedup" not in md
    text = readme.read_text()
    assert "old table" not in text and "before" in text and "after" in text and "% of limit" in text
    assert text.count(report.README_START) == 1


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[: len(t) // 2], "truncated"),
    (lambda t: "", "empty"),
    (lambda t: t.replace("normbench.run/1", "normbench.run/0"), "schema"),
    (lambda t: json.dumps({"rows": []}), "no 'schema'"),
])
def test_damaged_run_files_give_one_clear_message(tmp_path, capsys, damage, message):
    good = _one("runs/*.json")
    shutil.copy(good, tmp_path / good.name)
    (tmp_path / "bad.json").write_text(damage(good.read_text()))
    with pytest.raises(report.ResultFileError, match=message):
        report.load_run(tmp_path / "bad.json")
    (tmp_path / "none").mkdir()
    rc = report.main(["--runs", str(tmp_path), "--asv", str(tmp_path / "none"), "--pytest", str(tmp_path / "none"),
                      "--accuracy", str(tmp_path / "none"), "--out", str(tmp_path / "rep"), "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 0 and "bad.json" in err and message in err and "Traceback" not in err


def test_foreign_and_missing_files(tmp_path, capsys):
    (tmp_path / "acc.csv").write_text("a,b\n1,2\n")
    with pytest.raises(report.ResultFileError, match="lacks columns"):
        report.load_accuracy(tmp_path / "acc.csv")
    (tmp_path / "bench.json").write_text(json.dumps({"machine_info": {}}))
    with pytest.raises(report.ResultFileError, match="not a pytest-benchmark file"):
        report.load_pytest_benchmark(tmp_path / "bench.json")
    (tmp_path / "asv" / "box").mkdir(parents=True)
    (tmp_path / "asv" / "box" / "abc-env.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(report.ResultFileError, match="format version 2"):
        report.load_asv(tmp_path / "asv")
    (tmp_path / "x").mkdir()
    assert report.main(["--runs", str(tmp_path / "x"), "--asv", str(tmp_path / "x"), "--pytest", str(tmp_path / "x"),
                        "--accuracy", str(tmp_path / "x"), "--out", str(tmp_path / "rep")]) == 1
    assert "no readable result files" in capsys.readouterr().err


def test_latest_run_per_machine():
    runs = report.load_run(_one("runs/*.json"))
    older = runs.assign(created="2000-01-01T00:00:00+00:00", gbps=-1.0)
    latest = report.latest_runs(pd.concat([older, runs], ignore_index=True))
    assert (latest["gbps"] >= 0).all() and len(latest) == len(runs)


# ---------------------------------------------------------------- damaged content: skipped by name, never a traceback
def _set_first_result(doc, value):
    entry = next(iter(doc["results"].values()))
    entry[0] = [value] * len(entry[0]) if isinstance(entry[0], list) else value


# kind -> (good file under tests/data, loader of one file, report section that shows the good file)
KINDS = {
    "runs": ("runs/*.json", report.load_run, "## normbench run"),
    "pytest": ("pytest/*.json", report.load_pytest_benchmark, "## pytest-benchmark"),
    "asv": ("asv/testbox/*-*.json", report.load_asv_file, "## asv history"),
}


@pytest.mark.parametrize("kind, damage, reason", [
    ("pytest", lambda d: d.update(benchmarks=[]), "no benchmarks"),
    ("pytest", lambda d: d.update(benchmarks=5), "no 'benchmarks' list"),
    ("pytest", lambda d: d["benchmarks"][0].update(extra_info=[1, 2]), "unexpected content (TypeError"),
    ("pytest", lambda d: d["benchmarks"][0]["stats"].update(median="fast"), "non-numeric 'median_s' ('fast')"),
    ("runs", lambda d: d.update(machine="abc"), "unexpected content (AttributeError"),
    ("runs", lambda d: d["rows"][0].update(frac_limit="big"), "non-numeric 'frac_limit' ('big')"),
    ("asv", lambda d: d.update(commit_hash=5), "unexpected content (TypeError"),
    ("asv", lambda d: d.update(results=[]), "unexpected content (AttributeError"),
    ("asv", lambda d: _set_first_result(d, "x"), "could not convert string to float: 'x'"),
    ("asv", lambda d: d.update(date="yesterday"), "unexpected content (DateParseError"),
])
def test_damaged_content_is_skipped_by_name(tmp_path, capsys, kind, damage, reason):
    """A file with the wrong types inside: the loader raises ResultFileError, and the command names the file with
    the reason, exits 0 and still reports the good file beside it."""
    pattern, loader, section = KINDS[kind]
    good = _one(pattern)
    folder = tmp_path / kind / ("testbox" if kind == "asv" else "")
    folder.mkdir(parents=True)
    shutil.copy(good, folder / good.name)
    doc = json.loads(good.read_text())
    damage(doc)
    bad = folder / "bad-env.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(report.ResultFileError, match=re.escape(reason)):
        loader(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"--runs": empty, "--asv": empty, "--pytest": empty, "--accuracy": empty, "--out": tmp_path / "rep"}
    args["--" + kind] = tmp_path / kind
    argv = [str(a) for kv in args.items() for a in kv] + ["--history", "time_pass", "--no-plots"]
    rc = report.main(argv)
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    assert f"skipped {bad}: " in err and reason in err and good.name not in err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert section in md and "layer_norm" in md


def test_damaged_accuracy_csv_is_skipped_by_name(tmp_path, capsys):
    good = _one("accuracy/*.csv")
    shutil.copy(good, tmp_path / good.name)
    df = pd.read_csv(good)
    df["max_err"] = df["max_err"].astype(object)
    df.loc[0, "max_err"] = "abc"
    df.to_csv(tmp_path / "accuracy-bad.csv", index=False)
    (tmp_path / "empty").mkdir()
    e = str(tmp_path / "empty")
    rc = report.main(["--runs", e, "--asv", e, "--pytest", e, "--accuracy", str(tmp_path),
                      "--out", str(tmp_path / "rep"), "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 0 and f"skipped {tmp_path / 'accuracy-bad.csv'}: non-numeric 'max_err' ('abc')" in err
    assert "## accuracy" in (tmp_path / "rep" / "report.md").read_text()


def test_null_numbers_are_shown_blank(tmp_path):
    """null in a run row (a measurement that was not taken) is a blank cell and a missing bar, not a crash."""
    doc = json.loads(_one("runs/*.json").read_text())
    doc["rows"][0].update(frac_limit=None, gbps=None, variant=None)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    runs = report.load_run(path)
    lines = [[c.strip() for c in ln.split("|")[1:-1]] for ln in report.results_table(runs).splitlines()
             if ln.startswith("|")]
    header, rows = lines[0], lines[2:]
    cells = [dict(zip(header, r)) for r in rows]
    blank = [c for c in cells if c["% of limit"] == ""]
    assert len(blank) == 1 and blank[0]["GB/s"] == "" and blank[0]["variant"] == ""
    assert all(float(c["% of limit"]) > 0 and float(c["GB/s"]) > 0 for c in cells if c not in blank)
    assert report.plot_roofline(runs, tmp_path / "r.png").read_bytes()[:8] == PNG


def test_argument_errors_name_the_option(tmp_path, capsys, monkeypatch):
    """A typo in a source path or a broken --history regex is an argument error (exit code 2) naming the option;
    a default folder that does not exist (a fresh clone) is passed over quietly."""
    typo = tmp_path / "typo"
    with pytest.raises(SystemExit) as exc:
        report.main(["--runs", str(typo), "--out", str(tmp_path / "rep"), "--no-plots"])
    assert exc.value.code == 2 and f"--runs {typo}: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        report.main(["--asv", str(DATA / "asv"), "--history", "(", "--out", str(tmp_path / "rep")])
    assert exc.value.code == 2 and "--history '(': not a regular expression" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()
    monkeypatch.chdir(tmp_path)
    assert report.main(["--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "no readable result files" in err and "no such" not in err


# ---------------------------------------------------------------- tables: units, history order, latest runs
def test_accuracy_table_one_per_dtype():
    """float32 and float64 errors are in different eps units: never maxed together under one heading."""
    rows = [dict(variant="layer_norm", family=f, dtype=dt, impl="cpu", output="y", max_err=e, is_default=True)
            for f, dt, e in (("standard", "float32", 0.25), ("offset1e4", "float32", 0.5),
                             ("offset1e6", "float64", 1.0e5))]
    text = report.accuracy_table(pd.DataFrame(rows))
    f32, f64 = text.split("### float64")
    assert f32.startswith("### float32: max error in units of float32 eps")
    assert "0.5" in f32 and "1e+05" not in f32 and "1e+05" in f64 and "0.5" not in f64


def test_report_reads_the_full_accuracy_sweep_not_also_the_quick_one(tmp_path, capsys):
    folder = tmp_path / "acc"
    folder.mkdir()
    full = report.load_accuracy(_one("accuracy/*.csv")).drop(columns=["file"], errors="ignore")
    full.to_csv(folder / "accuracy.csv", index=False)
    full.assign(max_err=full["max_err"] + 777.0).to_csv(folder / "accuracy-quick.csv", index=False)
    assert report.main(["--runs", str(tmp_path), "--asv", str(tmp_path), "--pytest", str(tmp_path),
                        "--accuracy", str(folder), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert f"ignored {folder / 'accuracy-quick.csv'}" in err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### float32" in md and "777" not in md
    # alone, the quick sweep is what there is to report
    (folder / "accuracy.csv").unlink()
    assert report.main(["--runs", str(tmp_path), "--asv", str(tmp_path), "--pytest", str(tmp_path),
                        "--accuracy", str(folder), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    assert "777" in (tmp_path / "rep" / "report.md").read_text()


def test_asv_history_columns_in_date_order():
    when = {"c092c4b9": "2026-11-22 05:27", "07c72589": "2026-11-22 05:23", "03cbe2b6": "2026-11-22 05:24"}
    asv = pd.DataFrame([{"machine": "box", "commit": c, "date": pd.Timestamp(t), "benchmark": "b.track_x",
                         "params": "", "value": v, "env": "", "unit": "seconds"}
                        for (c, t), v in zip(when.items(), (3.0, 1.0, 2.0))])
    header = report.asv_table(asv, "track_x").splitlines()[0]
    found = re.findall(r"'box', '([0-9a-f]{8})'", header)
    assert found == ["07c72589", "03cbe2b6", "c092c4b9"]  # history order, not the hashes' order


def test_pytest_table_latest_run_per_machine():
    """A later, slower save is what the table shows (min over all saves would hide the regression)."""
    new = report.load_pytest_benchmark(_one("pytest/*.json"))
    old = new.assign(datetime="2000-01-01T00:00:00+00:00", median_s=new["median_s"] / 100,
                     fraction_of_copy=new["fraction_of_copy"] * 100 if "fraction_of_copy" in new else None)
    table = report.pytest_table(pd.concat([old, new], ignore_index=True))
    assert table == report.pytest_table(new)
    assert set(new["machine"]) == {"vm-2t"}
    row = new.iloc[0]
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {row['group']} "))
    assert f"{round(row['median_s'] * 1e3, 3):g}" in line


# ---------------------------------------------------------------- plots: one bar per row, labels that tell them apart
def _plotted(monkeypatch):
    """The figures the report's plot functions close (they close every figure they draw)."""
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    return figs


def test_roofline_and_speedups_one_bar_per_row(tmp_path, monkeypatch):
    """Rows that differ only in dtype or machine tag get their own bar and label (not drawn on top of each
    other under one name)."""
    run = report.load_run(_one("runs/*.json")).assign(peers_paired=True)
    f64 = run.assign(dtype="float64", case=run["case"].str.replace("float32", "float64"), frac_limit=0.5)
    other = run.assign(machine="boxB-2t", frac_limit=0.25)
    runs = pd.concat([run, f64, other], ignore_index=True)
    figs = _plotted(monkeypatch)
    report.plot_roofline(runs, tmp_path / "roofline.png")
    assert report.plot_speedups(runs, tmp_path / "speedup.png") is not None
    (roof, speed) = figs
    for ax, pass_ in zip(roof.axes, ("forward", "backward")):
        rows = runs[runs["pass"] == pass_]
        ys = {round(p.get_y() + p.get_height() / 2, 6) for p in ax.patches}
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(ys) == len(rows) and len(set(labels)) == len(rows)
        assert any("float64" in lb for lb in labels) and any(lb.startswith("boxB-2t: ") for lb in labels)
    labels = [t.get_text() for t in speed.axes[0].get_yticklabels()]
    assert len(set(labels)) == len(labels) == len(runs)


def test_plots_draw_the_rows_the_results_table_lists(tmp_path, monkeypatch):
    """Where a run holds cases out of cache (>= 128 MiB) and cache-resident ones, the table lists the former only,
    and so do the roofline and speed-up plots (a fraction of the memory limit means nothing in cache)."""
    run = report.load_run(_one("runs/*.json")).assign(peers_paired=True)
    big = run.assign(case=run["case"] + "-big", shape=run["shape"] + "0", bytes=report.TABLE_MIN_BYTES)
    runs = pd.concat([run.assign(bytes=report.TABLE_MIN_BYTES - 1), big], ignore_index=True)
    table_shapes = {ln.split("|")[4].strip() for ln in report.results_table(runs).splitlines()[2:]
                    if ln.startswith("|")}
    assert table_shapes == set(big["shape"])
    figs = _plotted(monkeypatch)
    report.plot_roofline(runs, tmp_path / "roofline.png")
    report.plot_speedups(runs, tmp_path / "speedup.png")
    roof, speed = figs
    drawn = [t.get_text() for ax in roof.axes for t in ax.get_yticklabels()]
    drawn += [t.get_text() for t in speed.axes[0].get_yticklabels()]
    assert drawn and all(any(f" {s} " in lb for s in table_shapes) for lb in drawn)
    assert len([t for ax in roof.axes for t in ax.get_yticklabels()]) == len(big)


def test_history_plot_names_class_method_and_backend_one_axis_per_unit(tmp_path, monkeypatch):
    asv = report.load_asv(DATA / "asv")
    figs = _plotted(monkeypatch)
    assert report.plot_history(asv, r"Forward\.t|Backward|numba_threads", tmp_path / "h.png") is not None
    (fig,) = figs
    axes = {ax.get_ylabel(): [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes}
    assert set(axes) == {"seconds", "fraction of limit", "threads"}  # units from asv's benchmarks.json
    assert axes["threads"] == ["testbox: track_numba_threads"]
    for unit, name in (("seconds", "Forward.time_pass"), ("fraction of limit", "Backward.track_fraction_of_limit")):
        assert axes[unit] and all(lb.startswith(f"testbox: {name} (") for lb in axes[unit])
        assert any(lb.endswith("float32, cpu)") for lb in axes[unit]) and len(set(axes[unit])) == len(axes[unit])


def test_results_table_names_its_run_files_and_commits(tmp_path):
    """The table takes the newest row per case over every run file: the line under it says which files (and
    commits) that was."""
    old = _one("runs/*.json")
    doc = json.loads(old.read_text())
    doc["created"], doc["code"] = "2100-01-01T00:00:00+00:00", {"commit": "abcdef1234567890", "dirty": False}
    doc["rows"] = [r for r in doc["rows"] if r["variant"] == "layer_norm"]  # newer, for some cases only
    (tmp_path / "new.json").write_text(json.dumps(doc))
    runs = pd.concat([report.load_run(old), report.load_run(tmp_path / "new.json")], ignore_index=True)
    table = report.results_table(runs)
    line = next(ln for ln in table.splitlines() if ln.startswith("Rows from"))
    assert line == f"Rows from 2 run files (commit abcdef12: new.json; no recorded commit: {old.name})."


# ---------------------------------------------------------------- the rules the tables and the plots share
def test_accuracy_table_leaves_out_the_exact_h_pass():
    """Fused add + norm's ``backward_exact_h`` rows (dx against the gradient at the exact h: the rounding of the
    stored h, not the kernel's error) stay out of the table, as out of docs/numerics.md."""
    from normbench.accuracy.sweep import EXACT_H_PASS

    rows = [dict(variant="fused_add_norm", family="offset1e4", dtype="float32", impl="cpu", output="dx",
                 is_default=True, **{"pass": p, "max_err": e}) for p, e in (("backward", 0.5), (EXACT_H_PASS, 1.9e4))]
    text = report.accuracy_table(pd.DataFrame(rows))
    assert "0.5" in text and "1.9e+04" not in text


def test_speedup_plot_shows_only_the_speedups_the_table_shows(tmp_path, monkeypatch):
    """Runs that timed the peers apart overstate the speed-ups: blank in the table, and no bar in the plot."""
    old = report.load_run(_one("runs/*.json"))
    assert not old["peers_paired"].any() and old["speedup_torch"].notna().any()
    assert report.plot_speedups(old, tmp_path / "speedup.png") is None and not (tmp_path / "speedup.png").exists()
    figs = _plotted(monkeypatch)
    new = old.assign(machine="boxB-2t", peers_paired=True)
    assert report.plot_speedups(pd.concat([old, new], ignore_index=True), tmp_path / "speedup.png") is not None
    (fig,) = figs
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    widths = {}
    for container, peer in zip(fig.axes[0].containers, [t.get_text() for t in fig.axes[0].get_legend().get_texts()]):
        widths[peer] = [p.get_width() for p in container.patches]
    drawn = {lb for k, lb in enumerate(labels) if any(w[k] == w[k] and w[k] > 0 for w in widths.values())}
    assert drawn and all(lb.startswith("boxB-2t: ") for lb in drawn)


@pytest.mark.parametrize("where", ["file", "unwritable", "readme_in_a_file", "readme_unwritable"])
def test_bad_output_paths_exit_2_before_anything_is_written(tmp_path, capsys, monkeypatch, unwritable_dir, where):
    """--out must be a folder that can be written (or created), --readme a file that can be written (or created):
    checked before reading the sources, so a bad one writes nothing (not report.md first, then a traceback)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    out, readme = tmp_path / "rep", []
    if where == "file":
        out = afile
    elif where == "unwritable":
        out = unwritable_dir
    elif where == "readme_in_a_file":  # its folder is a file
        readme = ["--readme", str(afile / "README.md")]
    else:  # an existing file that cannot be opened for writing (root opens anything: the refusal is simulated)
        real_open = open

        def refusing_open(path, *a, **k):
            if str(path) == str(afile) and a and "+" in a[0]:
                raise PermissionError(13, "Permission denied")
            return real_open(path, *a, **k)

        monkeypatch.setattr("builtins.open", refusing_open)
        readme = ["--readme", str(afile)]
    with pytest.raises(SystemExit) as exc:
        report.main(["--runs", str(DATA / "runs"), "--asv", str(DATA / "asv"), "--pytest", str(DATA / "pytest"),
                     "--accuracy", str(DATA / "accuracy"), "--no-plots", "--out", str(out), *readme])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    option = "--readme" if readme else "--out"
    assert err.splitlines()[-1].startswith(f"normbench report: error: {option} ") and "Traceback" not in err
    if where == "readme_unwritable":
        assert "not writable" in err
    monkeypatch.undo()
    assert not (tmp_path / "rep").exists() and afile.read_text() == ""


def test_readme_that_does_not_exist_is_created(tmp_path):
    """--readme names a file to write the table into; a missing one is created (as before the path checks)."""
    readme = tmp_path / "NEW.md"
    report.main(["--runs", str(DATA / "runs"), "--asv", str(DATA / "asv"), "--pytest", str(DATA / "pytest"),
                 "--accuracy", str(DATA / "accuracy"), "--no-plots", "--out", str(tmp_path / "rep"),
                 "--readme", str(readme)])
    assert "<!-- results:start -->" in readme.read_text()


# ---------------------------------------------------------------- small inputs built here: runs, accuracy rows, asv
MIB = 2**20


def _run(tmp_path, machine, rows, paired=False):
    """A normbench run document on ``machine`` of ``rows`` ((case, pass, bytes, extra columns)), loaded."""
    full = [dict(case=case, variant=case.split("/")[0], shape=case.split("/")[1], dtype="float32", params="",
                 backend="cpu", bytes=nbytes, time_s=1e-3, gbps=1.0, copy_gbps=2.0, frac_copy=0.5, limit="copy",
                 frac_limit=0.5, err_eps=0.5, **{"pass": pass_}, **extra) for case, pass_, nbytes, extra in rows]
    doc = {"schema": report.RUN_SCHEMA, "created": "2026-01-01T00:00:00+00:00",
           "machine": {"machine": machine, "numba_threads": 1}, "rows": full}
    if paired:
        doc["peer_timing"] = "paired"
    path = tmp_path / f"{machine}.json"
    path.write_text(json.dumps(doc))
    return report.load_run(path)


def _cells(table):
    """The rows of a markdown table as dicts of header -> cell text."""
    lines = [[c.strip() for c in ln.split("|")[1:-1]] for ln in table.splitlines() if ln.startswith("|")]
    return [dict(zip(lines[0], r)) for r in lines[2:]]


def _table_rows(runs):
    """(machine, variant, pass) of the results table's rows."""
    return {(c["machine"], c["variant"], c["pass"]) for c in _cells(report.results_table(runs))}


def test_results_table_big_cases_per_machine(tmp_path):
    """The >= 128 MiB rule is per machine: one whose runs have small cases only keeps them all, rather than
    vanish from the table beside one with big cases."""
    big = _run(tmp_path, "boxA", [("layer_norm/16384x2048/float32", "forward", 256 * MIB, {}),
                                  ("layer_norm/8x768/float32", "forward", MIB, {})])
    small = _run(tmp_path, "boxB", [("layer_norm/8x768/float32", "forward", MIB, {}),
                                    ("rms_norm/8x768/float32", "forward", MIB, {})])
    assert _table_rows(pd.concat([big, small])) == {("boxA-1t", "layer_norm", "forward"),
                                                    ("boxB-1t", "layer_norm", "forward"),
                                                    ("boxB-1t", "rms_norm", "forward")}


def test_results_table_keeps_both_passes_of_a_big_case(tmp_path):
    """A case is in when either pass reaches the threshold: local response norm 32x96x55x55 moves 106 MiB forward
    and 177 MiB backward, and its forward row stays beside the backward one."""
    case = "local_response_norm/32x96x55x55/float32"
    runs = _run(tmp_path, "box", [(case, "forward", 106 * MIB, {}), (case, "backward", 177 * MIB, {}),
                                  ("layer_norm/8x768/float32", "forward", MIB, {})])
    assert _table_rows(runs) == {("box-1t", "local_response_norm", "forward"),
                                 ("box-1t", "local_response_norm", "backward")}


def test_blank_speed_up_note_only_for_blanked_values(tmp_path):
    """The note explains speed-ups left blank: none when there is no speed-up column, or no value to blank."""
    assert "Blank speed-ups" not in report.results_table(_run(tmp_path, "box", [("layer_norm/8x768/float32",
                                                                                 "forward", MIB, {})]))
    unpaired = _run(tmp_path, "box", [("layer_norm/8x768/float32", "forward", MIB, {"speedup_torch": None})])
    assert "Blank speed-ups" not in report.results_table(unpaired)
    unpaired = _run(tmp_path, "box", [("layer_norm/8x768/float32", "forward", MIB, {"speedup_torch": 2.0})])
    assert "Blank speed-ups" in report.results_table(unpaired)


def _accuracy(tmp_path, rows):
    """An accuracy CSV as the sweep writes it (every META column, the metrics, error; blank where not given)."""
    from normbench.accuracy import metrics, sweep

    base = dict(family="standard", dtype="float32", shape="8x256", kind="backend", against="oracle",
                eps_placement="inside", correction=0, variance="shifted", accumulate="float64", is_default=True,
                max_err=0.5, n_fail=0, n=2048)
    columns = list(sweep.META) + list(metrics.COLUMNS) + ["error"]
    path = tmp_path / "accuracy.csv"
    pd.DataFrame([dict(base, **r) for r in rows], columns=columns).to_csv(path, index=False)
    return report.load_accuracy(path)


def _accuracy_cells(text):
    """(variant, output, impl) -> cell of the accuracy table's markdown (one dtype)."""
    return {(*c[""].strip("()").replace("'", "").split(", "), impl): v
            for c in _cells(text.split("\n\n", 1)[1]) for impl, v in c.items() if impl}


def test_accuracy_leaves_out_agreement_rows(tmp_path, monkeypatch):
    """The CUDA simulator's rows (kind agreement, against cpu) are a difference from the CPU, not an error: in
    neither the table nor the offset plot (0 there would read as exact)."""
    rows = [dict(variant="layer_norm", family=f, impl=impl, kind=kind, against=against, output="y", max_err=e)
            for f in ("standard", "offset1e4")
            for impl, kind, against, e in (("cpu", "backend", "oracle", 0.5), ("cuda", "agreement", "cpu", 0.0))]
    acc = _accuracy(tmp_path, rows)
    assert "cuda" not in report.accuracy_table(acc) and "cpu" in report.accuracy_table(acc)
    figs = _plotted(monkeypatch)
    assert report.plot_accuracy_offset(acc, tmp_path / "offset.png") is not None
    (fig,) = figs
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["layer_norm cpu"]


def test_accuracy_table_shows_failed_outputs_and_errors(tmp_path):
    """An output that is all NaN/Inf (n_fail = n, max_err 0) is an infinite error, not exact; an implementation
    that raised (an error row, no output) reads "error" for the outputs it did not produce, not vanish."""
    rows = [dict(variant="layer_norm", impl="cpu", output="y", max_err=0.0, n_fail=2048),
            dict(variant="layer_norm", impl="cpu", output="dx", max_err=0.5, **{"pass": "backward"}),
            dict(variant="layer_norm", impl="torch", kind="peer", output="y", max_err=1.0),
            dict(variant="layer_norm", impl="torch", kind="peer", output=None, error="RuntimeError: no dx"),
            dict(variant="rms_norm", impl="cpu", output="y", max_err=0.25),
            dict(variant="rms_norm", impl="cpu", output="dx", max_err=0.25, **{"pass": "backward"}),
            dict(variant="rms_norm", impl="torch", kind="peer", output=None, error="NotImplementedError: x")]
    cells = _accuracy_cells(report.accuracy_table(_accuracy(tmp_path, rows)))
    assert cells == {("layer_norm", "dx", "cpu"): "0.5", ("layer_norm", "dx", "torch"): "error",
                     ("layer_norm", "y", "cpu"): "inf", ("layer_norm", "y", "torch"): "1",
                     ("rms_norm", "dx", "cpu"): "0.25", ("rms_norm", "dx", "torch"): "error",
                     ("rms_norm", "y", "cpu"): "0.25", ("rms_norm", "y", "torch"): "error"}


def test_accuracy_offset_plot_only_with_a_line_to_draw(tmp_path):
    """No implementation with two offsets: no plot (not a blank PNG), and the report does not link one."""
    acc = _accuracy(tmp_path, [dict(variant="layer_norm", impl="cpu", output="y")])
    assert report.plot_accuracy_offset(acc, tmp_path / "offset.png") is None
    assert not (tmp_path / "offset.png").exists()
    e = str(tmp_path / "none")
    (tmp_path / "none").mkdir()
    assert report.main(["--runs", e, "--asv", e, "--pytest", e, "--accuracy", str(tmp_path / "accuracy.csv"),
                        "--out", str(tmp_path / "rep")]) == 0
    assert "accuracy_offset" not in (tmp_path / "rep" / "report.md").read_text()


def test_history_plot_marks_infinite_values(tmp_path, monkeypatch):
    """An inf value (matplotlib draws nothing for it) is a marker above the axis's finite values, in the legend."""
    asv = pd.DataFrame([{"machine": "box", "commit": c, "date": pd.Timestamp(f"2026-11-2{k}"), "benchmark": "b.track_x",
                         "params": "", "value": v, "env": "", "unit": "seconds"}
                        for k, (c, v) in enumerate((("aaaaaaaa", 1.0), ("bbbbbbbb", float("inf")), ("cccccccc", 2.0)))])
    figs = _plotted(monkeypatch)
    assert report.plot_history(asv, "track_x", tmp_path / "h.png") is not None
    (fig,) = figs
    (ax,) = fig.axes
    assert any("non-finite" in t.get_text() for t in ax.get_legend().get_texts())
    marked = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()
              if ln.get_marker() == "^" and len(ln.get_xdata())]
    assert len(marked) == 1 and marked[0][0] == [asv["date"][1]] and marked[0][1][0] > 2.0


@pytest.mark.parametrize("text", [
    f"a\n{report.README_START}\nold\n\nmine\n",  # start only: a second block, then the next run deletes "mine"
    f"a\n{report.README_END}\nmine\n",
    f"{report.README_END}\nmine\n{report.README_START}\n",
    f"{report.README_START}\nx\n{report.README_END}\nmine\n{report.README_START}\ny\n{report.README_END}\n",
])
def test_readme_with_stray_markers_is_left_alone(tmp_path, capsys, text):
    """Markers other than one start before one end (or none): an argument error naming the file and the markers,
    the README untouched and nothing written."""
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(SystemExit) as exc:
        report.main(["--runs", str(DATA / "runs"), "--out", str(tmp_path / "rep"), "--no-plots",
                     "--readme", str(readme)])
    err = capsys.readouterr().err.splitlines()[-1]
    assert exc.value.code == 2 and err.startswith(f"normbench report: error: --readme {readme}: ")
    assert report.README_START in err and report.README_END in err
    assert readme.read_text() == text and not (tmp_path / "rep").exists()
    with pytest.raises(ValueError, match=re.escape(str(readme))):  # write_readme alone refuses alike
        report.write_readme(readme, "table")
    assert readme.read_text() == text


def test_asv_given_one_machine_folder(tmp_path, capsys):
    """--asv may name one machine's folder (machine.json and result files) as well as the folder of them."""
    box = tmp_path / "testbox"
    shutil.copytree(DATA / "asv" / "testbox", box)
    assert [f.name for f in report.asv_files(box)] == [_one("asv/testbox/*-*.json").name]
    e = str(tmp_path / "none")
    (tmp_path / "none").mkdir()
    assert report.main(["--runs", e, "--asv", str(box), "--pytest", e, "--accuracy", e, "--history", "numba_threads",
                        "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    assert "track_numba_threads" in (tmp_path / "rep" / "report.md").read_text()
