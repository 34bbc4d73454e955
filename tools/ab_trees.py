"""normbench against another checkout of itself, each timed in processes of its own, the processes alternated:
``.venv/bin/python tools/ab_trees.py OTHER_TREE VARIANT SHAPE [PARAMS] [ROUNDS]``, e.g.
``git worktree add /tmp/base HEAD~2 && .venv/bin/python tools/ab_trees.py /tmp/base group_norm 8x64x56x56 axis=-1``.

Each child is tools/peer_isolated.py's (the case's inputs, seed 0; the suite's harness into preallocated ``out=``;
the median of 101 calls per pass) with normbench imported from OTHER_TREE or from this checkout (PYTHONPATH).
Prints each tree's median of its ROUNDS (default 5) children's medians and the speed-up of this checkout.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CHILD = str(HERE / "peer_isolated.py")


def main(other, variant, shape, params="", rounds=5):
    trees = {"other": str(Path(other).resolve()), "this": str(HERE.parent)}
    med = {k: [] for k in trees}
    for _ in range(rounds):
        for k, tree in trees.items():
            run = subprocess.run([sys.executable, CHILD, "--child", "normbench", variant, shape, params],
                                 capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": tree})
            med[k].append(json.loads(run.stdout.splitlines()[-1]))
    for pass_ in ("forward", "backward"):
        a, b = (float(np.median([m[pass_] for m in med[k]])) for k in ("other", "this"))
        print(f"{variant}/{shape}/{params} {pass_}: {other} {a * 1e3:.3f} ms, this checkout {b * 1e3:.3f} ms,"
              f" {a / b:.2f}x (each the median of {rounds} processes' medians)")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 3:
        sys.exit(__doc__)
    main(args[0], args[1], args[2], args[3] if len(args) > 3 else "", int(args[4]) if len(args) > 4 else 5)
