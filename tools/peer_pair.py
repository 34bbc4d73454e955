"""One case of the matrix against PyTorch, the two alternated for many rounds (a closer look at one cell of
``normbench run``): ``.venv/bin/python tools/peer_pair.py VARIANT SHAPE [PARAMS] [ROUNDS]``, e.g.
``tools/peer_pair.py group_norm 8x64x56x56 axis=-1 15``.

Each round times normbench (the suite's harness: preallocated, touched ``out=``) and the PyTorch peer, each as one
untimed call then three timed ones; freed memory is reused (bandwidth.reuse_freed_memory) so PyTorch's fresh outputs
cost no page faults.  Prints the median per call and the ratio, forward and backward.
"""
import sys
import time

import numpy as np

from normbench import bandwidth, peers
from normbench.benchmarks import _harness
from normbench.benchmarks import cases as _cases


def main(variant, shape, params="", rounds=15):
    bandwidth.reuse_freed_memory()
    matrix = _cases.cases(full=True, variants=[variant], dtypes=["float32"], shapes=[_cases.parse_shape(shape)])
    (case,) = [c for c in matrix if c.params_str == params]
    inputs = case.make_inputs(seed=0)
    dy = np.random.default_rng(1).standard_normal(inputs["x"].shape).astype(case.dtype)
    fwd, bwd = peers.prepare("torch", variant, _harness.fresh(inputs), dy)
    for pass_, peer in (("forward", fwd), ("backward", bwd)):
        ours = _harness.Pass(case, "cpu", pass_, inputs=inputs, dy=dy)
        ours(), peer()
        times = {"normbench": [], "torch": []}
        for _ in range(rounds):
            for name, fn in (("normbench", ours), ("torch", peer)):
                fn()
                t0 = time.perf_counter()
                fn(), fn(), fn()
                times[name].append((time.perf_counter() - t0) / 3)
        a, b = (float(np.median(times[k])) for k in ("normbench", "torch"))
        print(f"{case.name} {pass_}: normbench {a * 1e3:.3f} ms, torch {b * 1e3:.3f} ms, {b / a:.2f}x")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    main(args[0], args[1], args[2] if len(args) > 2 else "", int(args[3]) if len(args) > 3 else 15)
