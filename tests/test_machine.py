"""normbench.machine: the machine tag and CPU identity recorded with results (the CI box's hardware changes between
sessions under one host name), read from a fake /proc and /sys here so the assertions are exact."""
import json
import subprocess
import sys

import llvmlite.binding
import pytest

from normbench import machine

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
cache size\t: 1024 KB

processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
"""
CACHES = [("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "1024K"), ("3", "Unified", "32768K")]


@pytest.fixture
def fake_box(tmp_path, monkeypatch):
    """A Zen 4 as /proc/cpuinfo and cpu0's sysfs cache folders show it, LLVM's host CPU "znver4", host "vm"."""
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    for i, (level, kind, size) in enumerate(CACHES):
        d = tmp_path / "cache" / f"index{i}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(value + "\n")
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(machine, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(llvmlite.binding, "get_host_cpu_name", lambda: "znver4")
    monkeypatch.setattr(machine.platform, "node", lambda: "vm")
    monkeypatch.delenv("NUMBA_CPU_NAME", raising=False)
    monkeypatch.delenv("NORMBENCH_MACHINE", raising=False)
    return tmp_path


def test_cpu_info_reads_proc_and_sysfs(fake_box):
    info = machine.cpu_info()
    assert {k: v for k, v in info.items() if k != "ram_gib"} == {
        "cpu_model": "AMD EPYC 9R14 96-Core Processor", "llvm_cpu": "znver4",
        "l1d_kib": 32, "l2_kib": 1024, "l3_kib": 32768}  # the 32K instruction cache is not the L1d
    assert info.get("ram_gib", 1) >= 1


def test_cache_sizes_in_other_units(fake_box):
    (fake_box / "cache" / "index3" / "size").write_text("32M\n")
    assert machine.cpu_info()["l3_kib"] == 32768


def test_missing_files_fail_soft(tmp_path, monkeypatch):
    """No /proc/cpuinfo or sysfs (macOS): no cache keys, platform's model, no exception."""
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "nope")
    monkeypatch.setattr(machine, "CACHE_DIR", tmp_path / "nope-either")
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine.platform, "machine", lambda: "arm64")
    info = machine.cpu_info()
    assert info["cpu_model"] == "arm64"
    assert not {"l1d_kib", "l2_kib", "l3_kib"} & set(info)
    (tmp_path / "nope-either" / "index0").mkdir(parents=True)  # a cache folder without its files
    assert not {"l1d_kib", "l2_kib", "l3_kib"} & set(machine.cpu_info())


def test_tag_is_host_and_llvm_cpu(fake_box, monkeypatch):
    assert machine.tag() == "vm-znver4"
    monkeypatch.setattr(machine.platform, "node", lambda: "gpu01.lab/x y")
    assert machine.tag() == "gpu01.lab_x_y-znver4"  # dots kept, other unsafe characters to '_'
    monkeypatch.setenv("NUMBA_CPU_NAME", "skylake-avx512")  # what Numba then compiles for
    assert machine.tag() == "gpu01.lab_x_y-skylake-avx512"


def test_tag_honours_normbench_machine(fake_box, monkeypatch):
    monkeypatch.setenv("NORMBENCH_MACHINE", "xeon-2vcpu-24g")
    assert machine.tag() == "xeon-2vcpu-24g"


def test_describe(fake_box):
    assert machine.describe() == "AMD EPYC 9R14 96-Core Processor (znver4; L1d 32 KiB, L2 1024 KiB/core, L3 32768 KiB)"


def test_command_line():
    """What the Makefile runs: ``python -m normbench.machine tag`` prints tag() (same environment, same host)."""
    run = [sys.executable, "-m", "normbench.machine"]
    out = subprocess.run(run + ["tag"], capture_output=True, text=True, check=True).stdout
    assert out == machine.tag() + "\n"
    assert json.loads(subprocess.run(run, capture_output=True, text=True, check=True).stdout) == machine.cpu_info()
    ram = subprocess.run(run + ["ram"], capture_output=True, text=True, check=True).stdout.strip()
    assert ram == "" or (ram.endswith("GB") and ram[:-2].isdigit())
    assert subprocess.run(run + ["bogus"], capture_output=True, text=True).returncode == 2


def test_run_machine_info_records_the_cpu(fake_box, monkeypatch):
    """normbench run's documents carry the tag and the CPU identity ("cpu" kept for older readers)."""
    from normbench.benchmarks import runner

    info = runner.machine_info()
    assert info["machine"] == "vm-znver4" and info["cpu"] == info["cpu_model"] == "AMD EPYC 9R14 96-Core Processor"
    assert (info["llvm_cpu"], info["l1d_kib"], info["l2_kib"], info["l3_kib"]) == ("znver4", 32, 1024, 32768)
    monkeypatch.setenv("NORMBENCH_MACHINE", "xeon.lab.example")
    assert runner.machine_info()["machine"] == "xeon.lab.example"


def test_pytest_benchmark_label_prefers_the_machine_tag(tmp_path):
    """report labels a pytest-benchmark save by normbench's machine tag; older saves (none) by the host name."""
    from normbench import report

    bench = [{"group": "g", "name": "normbench", "stats": {"median": 1e-3}}]
    nb = {"numba_threads": 2, "node": "vm"}
    for extra, label in (({"machine": "vm-znver4"}, "vm-znver4-2t"), ({}, "vm-2t")):
        path = tmp_path / f"save{len(extra)}.json"
        path.write_text(json.dumps({"benchmarks": bench, "machine_info": {"node": "vm", "normbench": {**nb, **extra}}}))
        assert set(report.load_pytest_benchmark(path)["machine"]) == {label}
