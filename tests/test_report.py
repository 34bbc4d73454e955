"""normbench report on the real result files committed under tests/data/ (a normbench run, asv results, a
pytest-benchmark JSON, an accuracy CSV), and the clear messages for truncated or foreign files."""
import json
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
    for png in ("roofline.png", "speedup.png", "history.png", "accuracy_offset.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == PNG, png
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
    assert report.main(["--runs", str(tmp_path / "x"), "--asv", str(tmp_path / "x"), "--pytest", str(tmp_path / "x"),
                        "--accuracy", str(tmp_path / "x"), "--out", str(tmp_path / "rep")]) == 1
    assert "no readable result files" in capsys.readouterr().err


def test_latest_run_per_machine():
    runs = report.load_run(_one("runs/*.json"))
    older = runs.assign(created="2000-01-01T00:00:00+00:00", gbps=-1.0)
    latest = report.latest_runs(pd.concat([older, runs], ignore_index=True))
    assert (latest["gbps"] >= 0).all() and len(latest) == len(runs)
