"""normbench against another checkout of itself, each timed in processes of its own, the processes alternated:
``.venv/bin/python tools/ab_trees.py OTHER_TREE VARIANT SHAPE [PARAMS] [ROUNDS]``, e.g.
``git worktree add /tmp/base c717219 && .venv/bin/python tools/ab_trees.py /tmp/base group_norm 8x64x56x56 axis=-1``.

Each child is tools/peer_isolated.py's (the case's inputs, seed 0; the suite's harness into preallocated ``out=``;
the median of 101 calls per pass) with normbench imported from OTHER_TREE or from this checkout (PYTHONPATH).
Prints each tree's median of its ROUNDS (default 5) children's medians (this checkout first) and the speed-up
of this checkout.
"""
import os
import sys
from pathlib import Path

from peer_isolated import alternated_medians, print_ratios  # tools/ is on sys.path: this script's folder

HERE = Path(__file__).resolve().parent


def main(other, variant, shape, params="", rounds=5):
    trees = {"other": Path(other).resolve(), "this": HERE.parent}
    path = os.environ.get("PYTHONPATH")
    med = alternated_medians({k: ("normbench", {"PYTHONPATH": os.pathsep.join(filter(None, (str(t), path)))})
                              for k, t in trees.items()}, variant, shape, params, rounds)
    for k, tree in trees.items():  # each child imported normbench from its own tree (not the installed one)
        files = med[k][1]
        if not all(Path(f).resolve().is_relative_to(tree) for f in files):
            sys.exit(f"the {k} children imported normbench from {sorted(files)}, not from {tree}")
    print_ratios(med, "this", "other", ("this checkout", other), f"{variant}/{shape}/{params}", rounds)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 3:
        sys.exit(__doc__)
    main(args[0], args[1], args[2], args[3] if len(args) > 3 else "", int(args[4]) if len(args) > 4 else 5)
