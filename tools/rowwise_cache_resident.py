"""Per-value time of layer norm on cache-resident shapes, one core, normbench vs PyTorch (docs/cpu-rowwise.md,
"Cache-resident shapes"). Run: NUMBA_NUM_THREADS=1 .venv/bin/python tools/rowwise_cache_resident.py"""
import sys
import timeit

import numpy as np
import torch

import normbench as nb

torch.set_num_threads(1)


def per_value_ns(fn, size, n=100):
    fn()
    return min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e9 / size


shapes = [tuple(int(v) for v in s.split("x")) for s in sys.argv[1:]] or [(64, 768), (512, 768), (2048, 1024)]
for R, D in shapes:
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal((R, D), dtype=np.float32) for _ in range(2))
    w = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
    b = (0.1 * rng.standard_normal(D)).astype(np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    _, m, r = nb.layer_norm_forward(x, D, w, b, out=y)
    xt, dyt, wt, bt = (torch.from_numpy(a) for a in (x, dy, w, b))
    _, mt, rt = torch.ops.aten.native_layer_norm(xt, (D,), wt, bt, 1e-5)
    nf = per_value_ns(lambda: nb.layer_norm_forward(x, D, w, b, out=y), R * D)
    nbw = per_value_ns(lambda: nb.layer_norm_backward(dy, x, D, m, r, w, b, dx_out=dx), R * D)
    tf = per_value_ns(lambda: torch.ops.aten.native_layer_norm(xt, (D,), wt, bt, 1e-5), R * D)
    tbw = per_value_ns(lambda: torch.ops.aten.native_layer_norm_backward(dyt, xt, (D,), mt, rt, wt, bt,
                                                                         [True, True, True]), R * D)
    print(f"({R}, {D}) ns/value, 1 core: forward normbench {nf:.3f} torch {tf:.3f} ({tf / nf:.2f}x); "
          f"backward normbench {nbw:.3f} torch {tbw:.3f} ({tbw / nbw:.2f}x)")
