"""Where a CUDA call's host time goes (run on a GPU machine): microseconds a call for numba-cuda's own launch
path (an empty kernel with 1 and with 14 arguments, a device allocation, a view) beside normbench's calls on small
device arrays, each timed launch-bound (many calls, one synchronise) and synchronised per call, plus a cProfile of
the normbench calls.  PyTorch's CUDA layer norm on the same shape is the yardstick when it is installed.

    python tools/gpu_launch_probe.py [OUT_DIR]      # prints a table; writes launch_profile.txt into OUT_DIR
"""
from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import sys
import time

import numpy as np
from numba import cuda

import normbench as nb


def per_call_us(fn, calls=300, rounds=5):
    """(launch-bound, synchronised-per-call) median microseconds of fn()."""
    fn()
    cuda.synchronize()
    bound, synced = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        cuda.synchronize()
        bound.append((time.perf_counter() - t0) / calls * 1e6)
        t0 = time.perf_counter()
        for _ in range(calls // 5):
            fn()
            cuda.synchronize()
        synced.append((time.perf_counter() - t0) / (calls // 5) * 1e6)
    return statistics.median(bound), statistics.median(synced)


@cuda.jit
def empty1(a):
    pass


@cuda.jit
def empty14(a, b, c, d, e, f, g, h, i, j, k, m, n, o):
    pass


def cases():
    rng = np.random.default_rng(0)
    x = cuda.to_device(rng.standard_normal((8, 768), dtype=np.float32))
    w = cuda.to_device(np.ones(768, np.float32))
    b = cuda.to_device(np.zeros(768, np.float32))
    dy = cuda.to_device(rng.standard_normal((8, 768), dtype=np.float32))
    y, mean, rstd = nb.layer_norm_forward(x, 768, w, b)
    xc = cuda.to_device(rng.standard_normal((32, 64, 8, 8), dtype=np.float32))
    wc = cuda.to_device(np.ones(64, np.float32))
    bc = cuda.to_device(np.zeros(64, np.float32))
    rm = cuda.to_device(np.zeros(64, np.float32))
    rv = cuda.to_device(np.ones(64, np.float32))
    yc, sm, si = nb.batch_norm_forward(xc, wc, bc, rm, rv, training=True)
    f64 = cuda.device_array(8, np.float64)
    out = {
        "numba: empty kernel, 1 array arg": lambda: empty1[1, 32](x),
        "numba: empty kernel, 14 args (5 arrays)": lambda: empty14[1, 32](x, w, True, b, True, 768, True, 1, 0,
                                                                        1e-5, 0, y, mean, rstd),
        "numba: cuda.device_array(8, float64)": lambda: cuda.device_array(8, np.float64),
        "numba: device array reshape to 1-D": lambda: x.reshape(x.size),
        "numba: f64 copy_to_host (8 values)": lambda: f64.copy_to_host(),
        "normbench: layer_norm_forward (8, 768)": lambda: nb.layer_norm_forward(x, 768, w, b),
        "normbench: layer_norm_backward (8, 768)": lambda: nb.layer_norm_backward(dy, x, 768, mean, rstd, w, b),
        "normbench: rms_norm_forward (8, 768)": lambda: nb.rms_norm_forward(x, 768, w),
        "normbench: batch_norm_forward train (32, 64, 8, 8)": lambda: nb.batch_norm_forward(
            xc, wc, bc, rm, rv, training=True),
        "normbench: batch_norm_forward eval (32, 64, 8, 8)": lambda: nb.batch_norm_forward(
            xc, wc, bc, rm, rv, training=False),
        "normbench: batch_norm_backward train (32, 64, 8, 8)": lambda: nb.batch_norm_backward(
            xc, xc, wc, bc, sm, si, training=True),
        "normbench: group_norm_forward G=8 (32, 64, 8, 8)": lambda: nb.group_norm_forward(xc, 8, wc, bc),
        "normbench: frozen_batch_norm_backward (32, 64, 8, 8)": lambda: nb.frozen_batch_norm_backward(xc, wc, rv),
    }
    try:
        import torch

        xt = torch.randn(8, 768, device="cuda")
        wt, bt = torch.ones(768, device="cuda"), torch.zeros(768, device="cuda")
        out["torch: layer_norm (8, 768)"] = lambda: torch.nn.functional.layer_norm(xt, (768,), wt, bt)
        xct = torch.randn(32, 64, 8, 8, device="cuda")
        rmt, rvt = torch.zeros(64, device="cuda"), torch.ones(64, device="cuda")
        wct, bct = torch.ones(64, device="cuda"), torch.zeros(64, device="cuda")
        out["torch: batch_norm train (32, 64, 8, 8)"] = lambda: torch.nn.functional.batch_norm(
            xct, rmt, rvt, wct, bct, training=True)
    except Exception as err:  # optional yardstick
        print("torch yardstick unavailable:", err)
    return out


def main(out_dir=None):
    import numba
    import numba_cuda

    print("numba", numba.__version__, "numba-cuda", numba_cuda.__version__, "numpy", np.__version__)
    from normbench.cuda import timing

    print(timing.gpu_name())
    table = cases()
    print(f"{'call':55s} {'launch-bound us':>16s} {'synced us':>10s}")
    for name, fn in table.items():
        bound, synced = per_call_us(fn)
        print(f"{name:55s} {bound:16.1f} {synced:10.1f}")
    print("again, after PyTorch's CUDA calls in this process:")
    for name, fn in table.items():
        if name.startswith("normbench"):
            bound, synced = per_call_us(fn)
            print(f"{name:55s} {bound:16.1f} {synced:10.1f}")
    if out_dir:
        with open(f"{out_dir}/launch_profile.txt", "w") as f:
            for name in ("normbench: layer_norm_forward (8, 768)", "normbench: batch_norm_forward train (32, 64, 8, 8)",
                         "normbench: layer_norm_backward (8, 768)", "normbench: batch_norm_backward train (32, 64, 8, 8)"):
                fn = table[name]
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(200):
                    fn()
                cuda.synchronize()
                prof.disable()
                s = io.StringIO()
                st = pstats.Stats(prof, stream=s)
                f.write(f"===== {name}: {st.total_calls / 200:.0f} Python calls a call\n")
                st.sort_stats("tottime").print_stats(30)
                st.sort_stats("cumulative").print_stats(40)
                f.write(s.getvalue())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
