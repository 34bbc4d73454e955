"""The ``normbench`` command: ``run | accuracy | report | bandwidth | study``.

Each subcommand lives in its own module with a ``main(argv)``; this file only dispatches, so that a
subcommand's dependencies (pandas, matplotlib, tqdm, scikit-learn) are imported only when it runs.
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "run": ("normbench.benchmarks.runner", "time every kernel against the copy limit and the peers (make bench)"),
    "accuracy": ("normbench.accuracy.sweep", "the accuracy sweep: options x stress families x backends x peers"),
    "report": ("normbench.report", "tables and plots from results/ (asv, pytest-benchmark, accuracy)"),
    "bandwidth": ("normbench.benchmarks.roofline", "the copy baseline and the limits that apply"),
    "study": ("normbench.study", "training studies (normbench study lr)"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: normbench {" + ",".join(SUBCOMMANDS) + "} [options]\n")
        for name, (_, text) in SUBCOMMANDS.items():
            print(f"  {name:10s} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
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
