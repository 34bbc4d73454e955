"""One case, normbench and PyTorch each timed in a process of its own, the processes alternated:
``.venv/bin/python tools/peer_isolated.py VARIANT SHAPE [PARAMS] [ROUNDS]``, e.g.
``tools/peer_isolated.py group_norm 8x64x56x56 axis=-1 5``.

In one process the two libraries' OpenMP pools (each loads its own libgomp) spin after their parallel regions and
slow the other's next sub-millisecond calls (docs/cpu-channel.md, "Not met").  Here each child process runs one
library only, as a program using it would: it builds the case's inputs (seed 0), warms up, then reports the median
of 101 calls per pass (normbench through the suite's harness, into preallocated ``out=``; PyTorch through its peer
closure, on reused freed memory).  ROUNDS children of each kind are alternated; the parent prints the medians of
their medians and the ratio.
"""
import json
import os
import subprocess
import sys

import numpy as np

CALLS = 101


def child(impl, variant, shape, params):
    from normbench import bandwidth, peers
    from normbench.benchmarks import _harness
    from normbench.benchmarks import cases as _cases

    bandwidth.reuse_freed_memory()
    matrix = _cases.cases(full=True, variants=[variant], dtypes=["float32"], shapes=[_cases.parse_shape(shape)])
    (case,) = [c for c in matrix if c.params_str == params]
    inputs = case.make_inputs(seed=0)
    dy = np.random.default_rng(1).standard_normal(inputs["x"].shape).astype(case.dtype)
    if impl == "torch":
        fwd, bwd = peers.prepare("torch", variant, _harness.fresh(inputs), dy)
        fns = {"forward": fwd, "backward": bwd}
    else:
        fns = {p: _harness.Pass(case, "cpu", p, inputs=inputs, dy=dy) for p in ("forward", "backward")}
    import normbench

    med = {p: bandwidth.median_seconds(fn, repeats=CALLS, warmup=10) for p, fn in fns.items()}
    print(json.dumps({"medians": med, "normbench": normbench.__file__}))


def alternated_medians(children, variant, shape, params, rounds):
    """``{name: ({pass: median over rounds child processes of their medians}, {normbench's __file__ in them})}``;
    ``children`` maps a name to the (impl, extra environment) of a child; the children run in turn, round after
    round, in reverse order every other round (a child following another may find the machine in another state:
    identical code measured 0.97-1.06x in the fixed order)."""
    med = {name: [] for name in children}
    for i in range(rounds):
        for name, (impl, env) in list(children.items())[::-1 if i % 2 else 1]:
            run = subprocess.run([sys.executable, __file__, "--child", impl, variant, shape, params],
                                 capture_output=True, text=True, check=True, env={**os.environ, **env})
            med[name].append(json.loads(run.stdout.splitlines()[-1]))
    return {name: ({p: float(np.median([m["medians"][p] for m in ms])) for p in ms[0]["medians"]},
                   {m["normbench"] for m in ms}) for name, ms in med.items()}


def print_ratios(med, first, second, labels, case, rounds):
    """One line per pass of :func:`alternated_medians`' result: both medians, then second / first (the speed-up
    of ``first``)."""
    for pass_ in ("forward", "backward"):
        a, b = med[first][0][pass_], med[second][0][pass_]
        print(f"{case} {pass_}: {labels[0]} {a * 1e3:.3f} ms, {labels[1]} {b * 1e3:.3f} ms, {b / a:.2f}x"
              f" (each the median of {rounds} processes' medians of {CALLS} calls)")


def main(variant, shape, params="", rounds=5):
    med = alternated_medians({"normbench": ("normbench", {}), "torch": ("torch", {})}, variant, shape, params, rounds)
    print_ratios(med, "normbench", "torch", ("normbench", "torch"), f"{variant}/{shape}/{params}", rounds)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--child"]:
        child(*args[1:5])
    elif len(args) < 2:
        sys.exit(__doc__)
    else:
        main(args[0], args[1], args[2] if len(args) > 2 else "", int(args[3]) if len(args) > 3 else 5)
