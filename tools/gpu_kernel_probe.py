"""Kernel-side questions on a GPU machine (the host-side ones are tools/gpu_launch_probe.py).

    python tools/gpu_kernel_probe.py copies     # copy yardsticks: numba's copy_to_device, a numba copy kernel, torch
    ncu --csv ... python tools/gpu_kernel_probe.py calls   # one call of each large case, for Nsight Compute

``copies`` prints, per working set, the wall time of a synchronised copy (as normbench run times its yardstick)
and of back-to-back copies (launch-bound: the GPU's own rate once the host keeps ahead), as GB/s counting bytes
read plus written.  ``calls`` runs each large quick-matrix case once (compilation happens before each launch,
so a profiler sees only the real kernels).
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from numba import cuda

import normbench as nb


@cuda.jit
def copy_kernel(a, b):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        b[i] = a[i]


def _rate(fn, nbytes, calls=20, rounds=5):
    fn()
    cuda.synchronize()
    synced, bound = [], []
    for _ in range(rounds):
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            cuda.synchronize()
            synced.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        cuda.synchronize()
        bound.append((time.perf_counter() - t0) / calls)
    return nbytes / statistics.median(synced) / 1e9, nbytes / statistics.median(bound) / 1e9


def copies():
    print(f"{'working set':>12s} {'copy':36s} {'synced GB/s':>12s} {'back-to-back GB/s':>18s}")
    for mib in (12, 196, 512, 2048):
        n = mib * 2**20 // 8  # float32 values in each of the two arrays
        a = cuda.to_device(np.random.default_rng(0).standard_normal(n, dtype=np.float32))
        b = cuda.device_array_like(a)
        sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
        cases = {
            "numba copy_to_device (normbench run's)": lambda: b.copy_to_device(a),
            "numba kernel, grid 65535 x 256": lambda: copy_kernel[min(65535, -(-n // 256)), 256](a, b),
            f"numba kernel, grid {sms * 8} x 256": lambda: copy_kernel[sms * 8, 256](a, b),
        }
        try:
            import torch

            at = torch.as_tensor(a, device="cuda")
            bt = torch.as_tensor(b, device="cuda")
            cases["torch copy_"] = lambda: bt.copy_(at)
        except Exception as err:
            print("torch unavailable:", err)
        for name, fn in cases.items():
            s, t = _rate(fn, 2 * n * 4)
            print(f"{mib:>9d} MiB {name:36s} {s:12.0f} {t:18.0f}")


def calls():
    rng = np.random.default_rng(0)
    f32 = np.float32
    x2 = cuda.to_device(rng.standard_normal((16384, 2048), dtype=f32))
    w2 = cuda.to_device(np.ones(2048, f32))
    y2, m2, r2 = nb.layer_norm_forward(x2, 2048, w2, w2)
    nb.layer_norm_backward(x2, x2, 2048, m2, r2, w2, w2)
    xc = cuda.to_device(rng.standard_normal((64, 128, 56, 56), dtype=f32))
    xl = cuda.to_device(rng.standard_normal((64, 56, 56, 128), dtype=f32))
    w = cuda.to_device(np.ones(128, f32))
    rm, rv = cuda.to_device(np.zeros(128, f32)), cuda.to_device(np.ones(128, f32))
    _, sm, si = nb.batch_norm_forward(xc, w, w, rm, rv, training=True)
    nb.batch_norm_backward(xc, xc, w, w, sm, si, training=True)
    nb.batch_norm_forward(xl, w, w, rm, rv, training=True, axis=-1)
    nb.batch_norm_forward(xc, w, w, rm, rv, training=False)
    nb.group_norm_forward(xl, 32, w, w, axis=-1)
    nb.frozen_batch_norm_forward(xc, w, w, rm, rv)
    _, gm, gr = nb.group_norm_forward(xc, 32, w, w)
    nb.group_norm_backward(xc, xc, 32, gm, gr, w, w)
    xr = cuda.to_device(rng.standard_normal((32, 96, 55, 55), dtype=f32))
    yr, sc = nb.local_response_norm_forward(xr, 5)
    nb.local_response_norm_backward(xr, xr, yr, sc, 5)
    b = cuda.device_array_like(x2)
    copy_kernel[65535, 256](x2.reshape(x2.size), b.reshape(b.size))
    cuda.synchronize()


if __name__ == "__main__":
    {"copies": copies, "calls": calls}[sys.argv[1]]()
