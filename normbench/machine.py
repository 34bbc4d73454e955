"""The machine's identity, recorded with every result: the CI machine's hardware changes between sessions (an
Intel Xeon one day, an AMD EPYC the next, both with host name "vm"), and figures only compare within one tag.

``cpu_info()`` reads the CPU model (/proc/cpuinfo), the LLVM CPU that Numba compiles for, cpu0's cache sizes
(sysfs) and the RAM; each reading fails soft (a missing file leaves its key out).  ``tag()`` is the default
machine label (``$NORMBENCH_MACHINE``, else ``<host name>-<llvm cpu>``), ``describe()`` a line for asv's
``--cpu``.  ``python -m normbench.machine [tag|describe|ram|os]`` prints them (no argument: cpu_info as JSON).
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

#: module-level so tests can point them at a fake tree
CPUINFO = Path("/proc/cpuinfo")
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
OS_RELEASE = Path("/etc/os-release")

_CACHE_KEYS = {"1": "l1d_kib", "2": "l2_kib", "3": "l3_kib"}
_UNITS = {"K": 1, "M": 1024, "G": 1024 ** 2}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo (Linux); else what platform knows ("x86_64" at worst)."""
    text = _read(CPUINFO) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def llvm_cpu() -> str:
    """The CPU Numba compiles for: ``$NUMBA_CPU_NAME`` when set (Numba then targets it), else LLVM's host CPU."""
    name = os.environ.get("NUMBA_CPU_NAME")
    if name:
        return name
    try:
        import llvmlite.binding

        return llvmlite.binding.get_host_cpu_name() or platform.machine() or "unknown"
    except Exception:  # no llvmlite, or it failed to load
        return platform.machine() or "unknown"


def _kib(size: str) -> int | None:
    """sysfs cache size ("32K", "1024K", "1M") -> KiB."""
    size = size.strip()
    try:
        return int(size[:-1]) * _UNITS[size[-1].upper()] if size and size[-1].isalpha() else int(size) // 1024
    except (KeyError, ValueError):
        return None


def caches() -> dict:
    """cpu0's data/unified cache sizes in KiB by level (``l1d_kib``, ``l2_kib``, ``l3_kib``); {} without sysfs."""
    out = {}
    try:
        dirs = sorted(CACHE_DIR.glob("index*"))
    except OSError:
        return out
    for d in dirs:
        level, kind, size = (_read(d / f) for f in ("level", "type", "size"))
        if level is None or size is None or (kind or "").strip() == "Instruction":
            continue
        key, kib = _CACHE_KEYS.get(level.strip()), _kib(size)
        if key and kib is not None:
            out.setdefault(key, kib)
    return out


def ram_gib() -> int | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30)
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name (macOS: SC_PHYS_PAGES)
        return None


def cpu_info() -> dict:
    """CPU model, LLVM target, cache sizes and RAM: what a result's speed depends on beyond the code."""
    info = {"cpu_model": cpu_model(), "llvm_cpu": llvm_cpu(), **caches()}
    ram = ram_gib()
    if ram is not None:
        info["ram_gib"] = ram
    return info


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def tag() -> str:
    """``$NORMBENCH_MACHINE``, else ``<host name>-<llvm cpu>`` (e.g. "vm-znver4"): the host name keeps hosts apart,
    the LLVM CPU splits a host name reused on different hardware; safe for file names."""
    return _safe(os.environ.get("NORMBENCH_MACHINE") or f"{platform.node() or 'unknown'}-{llvm_cpu()}")


def describe() -> str:
    """One line for asv's ``--cpu``, e.g. "AMD EPYC (znver4; L1d 32 KiB, L2 1024 KiB/core, L3 32768 KiB)"."""
    info = cpu_info()
    sizes = [f"{label} {info[key]} KiB{suffix}" for label, key, suffix in
             (("L1d", "l1d_kib", ""), ("L2", "l2_kib", "/core"), ("L3", "l3_kib", "")) if key in info]
    detail = f"{info['llvm_cpu']}; {', '.join(sizes)}" if sizes else info["llvm_cpu"]
    return f"{info['cpu_model']} ({detail})"


def os_name() -> str:
    """For asv's ``--os``: e.g. "Linux (Debian GNU/Linux 12 (bookworm))", the system alone without os-release."""
    for line in (_read(OS_RELEASE) or "").splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME" and value.strip().strip('"'):
            return f"{platform.system()} ({value.strip().strip(chr(34))})"
    return platform.system() or "unknown"


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    what = args[0] if args else None
    if what == "tag":
        print(tag())
    elif what == "describe":
        print(describe())
    elif what == "ram":
        ram = ram_gib()
        print(f"{ram}GB" if ram is not None else "")
    elif what == "os":
        print(os_name())
    elif what is None:
        print(json.dumps(cpu_info(), indent=1))
    else:
        print("usage: python -m normbench.machine [tag|describe|ram|os]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
