"""The ``normbench`` command: ``run | accuracy | report | bandwidth | study``.

Each subcommand lives in its own module with a ``main(argv)``; this file only dispatches, so that a
subcommand's dependencies (pandas, matplotlib, tqdm, scikit-learn) are imported only when it runs. It also holds
the argparse types the subcommands share (:func:`positive_int`, :func:`non_negative_int`, :func:`positive_float`).
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys

from . import __version__

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
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("normbench"):
            print(f"normbench {argv[0]}: not available in this version ({err.name} missing)", file=sys.stderr)
            return 2
        print(f"normbench {argv[0]} needs the optional package {err.name!r}: pip install 'normbench[bench]'",
              file=sys.stderr)
        return 2
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
