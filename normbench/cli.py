"""The ``normbench`` command: ``run | accuracy | report | bandwidth | study``.

Each subcommand lives in its own module with a ``main(argv)``; this file only dispatches, so that a
subcommand's dependencies (pandas, matplotlib, tqdm, scikit-learn) are imported only when it runs. It also holds
the argparse types the subcommands share (:func:`positive_int`, :func:`non_negative_int`, :func:`positive_float`,
the list options' :data:`MANY` and :func:`unique`)
and the checks of what they write to (:func:`output_dir_error`, :func:`writable_file_error`) and which backends
they may use (:func:`backend_error`), made before anything runs.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import tempfile
from pathlib import Path

from . import __version__

#: the import names of the [bench] extras (pyproject.toml), which only the subcommands need
BENCH_EXTRAS = ("asv", "pytest_benchmark", "tqdm", "matplotlib", "tabulate")
SUBCOMMANDS = {
    "run": ("normbench.benchmarks.runner", "time every kernel against the copy limit and the peers (make bench)"),
    "accuracy": ("normbench.accuracy.sweep", "the accuracy sweep: options x stress families x backends x peers"),
    "report": ("normbench.report", "tables and plots from results/ (asv, pytest-benchmark, accuracy)"),
    "bandwidth": ("normbench.benchmarks.roofline", "the copy baseline and the limits that apply"),
    "study": ("normbench.study", "training studies (normbench study lr)"),
}


def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse reports "argument --X: expected an integer >= 1, got '0'")."""
    return _int_at_least(text, 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a seed)."""
    return _int_at_least(text, 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (not nan, not inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


#: argparse keywords of a list option: several values after one flag, and repeatable (``--variant a b --variant c``)
MANY = dict(action="extend", nargs="+")


def unique(values):
    """A list option's values without repeats, in order (a value given twice counts once); None stays None."""
    return list(dict.fromkeys(values)) if values else values


def output_dir_error(option: str, path) -> str | None:
    """None when ``path`` is a folder this process can write into, or can create (with its parents); otherwise one
    line naming ``option``.  Probed by creating (and removing) a temporary folder in ``path`` or in its nearest
    existing ancestor: permission bits say nothing for root, nor for /proc or a read-only mount."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{option} {path} is a file; expected a folder (created if missing)"
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{option} {path}: {parent} is a file; expected a folder (created if missing)"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".normbench-probe-", dir=parent))
    except OSError as err:
        where = "" if parent == path else f" (cannot create folders in {parent})"
        return f"{option} {path}: not writable{where}: {err.strerror}"
    return None


def writable_file_error(option: str, path, create: bool = False) -> str | None:
    """None when ``path`` is an existing regular file this process can open for writing (or, with ``create``, one
    that does not exist yet in a folder :func:`output_dir_error` accepts); otherwise one line naming ``option``.
    Opened, never written."""
    path = Path(path)
    if create and not path.exists():
        return output_dir_error(f"{option} {path}: its folder", path.parent)
    if not path.is_file():
        return f"{option} {path}: {'not a regular file' if path.exists() else 'no such file'}"
    try:
        with open(path, "r+b"):
            pass
    except OSError as err:
        return f"{option} {path}: not writable: {err.strerror}"
    return None


def backend_error(backends, variants) -> str | None:
    """None when every backend in ``backends`` implements at least one of ``variants`` here; otherwise one line
    naming ``--backend`` (cuda without a GPU or the simulator, above all)."""
    from . import registry

    if not backends or all(any(b in registry.available_backends(v) for v in variants) for b in backends):
        return None
    return (f"--backend {' '.join(backends)}: not available here for {' '.join(variants)} (cuda needs a GPU, or "
            "NUMBA_ENABLE_CUDASIM=1 for the simulator)")


def _missing_module(err: ImportError) -> str | None:
    """The name of the module whose absence raised ``err``: its own, or (pandas' optional dependencies, such as
    tabulate for ``to_markdown``) that of the ModuleNotFoundError it was raised from; None for any other
    ImportError."""
    for e in (err, err.__cause__):
        if isinstance(e, ModuleNotFoundError) and e.name:
            return e.name
    return None


def _usage(file) -> None:
    print("usage: normbench {" + ",".join(SUBCOMMANDS) + "} [options]   (normbench <command> --help; "
          "normbench --version)\n", file=file)
    for name, (_, text) in SUBCOMMANDS.items():
        print(f"  {name:10s} {text}", file=file)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        _usage(sys.stdout)
        return 0
    if argv and argv[0] in ("-V", "--version"):
        print(f"normbench {__version__}")
        return 0
    if not argv or argv[0] not in SUBCOMMANDS:
        _usage(sys.stderr)
        print("\nnormbench: error: " + (f"unknown command {argv[0]!r}" if argv else "no command given"),
              file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[argv[0]][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        name = _missing_module(err)
        if name and name.startswith("normbench"):
            print(f"normbench {argv[0]}: not available in this version ({name} missing)", file=sys.stderr)
            return 2
        if not _optional(name):
            raise
        return _needs(argv[0], name)
    try:  # the subcommands import their optional packages (tqdm, tabulate, matplotlib) when they need them
        return module.main(argv[1:]) or 0
    except ImportError as err:
        name = _missing_module(err)
        if not _optional(name):
            raise  # any other import error is a bug to see, not an install hint
        return _needs(argv[0], name)


def _optional(name) -> bool:
    """Whether ``name`` is (in) one of the [bench] extras' packages, which the subcommands import when needed."""
    return bool(name) and name.split(".")[0] in BENCH_EXTRAS


def _needs(command, name) -> int:
    print(f"normbench {command} needs the optional package {name.split('.')[0]!r}: pip install 'normbench[bench]'",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
