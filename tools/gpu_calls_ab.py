"""Host time of normbench CUDA calls, small (launch-bound) and large, synchronised per call: median us. Run it once per
tree (PYTHONPATH naming the tree) and alternate the trees: results/gpu/h100-launch-ab-20261123.txt."""
import sys, time, statistics, numpy as np
from numba import cuda
import normbench as nb
print("normbench from", nb.__file__)
def us(fn, n):
    fn(); cuda.synchronize()
    r = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        cuda.synchronize()
        r.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(r)
rng = np.random.default_rng(0)
def dev(*s):
    return cuda.to_device(rng.standard_normal(s).astype(np.float32))
x, dy, w = dev(8, 768), dev(8, 768), dev(768)
y, m, r = nb.layer_norm_forward(x, 768, w, w)
xc = dev(32, 64, 8, 8); wc = dev(64)
yc, mc, rc = nb.batch_norm_forward(xc, wc, wc, None, None, training=True)
xb, dyb, wb = dev(16384, 2048), dev(16384, 2048), dev(2048)
yb, mb, rb = nb.layer_norm_forward(xb, 2048, wb, wb)
xB = dev(64, 128, 56, 56); wB = dev(128)
yB, mB, rB = nb.batch_norm_forward(xB, wB, wB, None, None, training=True)
cases = [
 ("layer_norm_forward (8, 768)", lambda: nb.layer_norm_forward(x, 768, w, w), 300),
 ("layer_norm_backward (8, 768)", lambda: nb.layer_norm_backward(dy, x, 768, m, r, w, w), 300),
 ("batch_norm_forward train (32,64,8,8)", lambda: nb.batch_norm_forward(xc, wc, wc, None, None, training=True), 200),
 ("batch_norm_backward train (32,64,8,8)", lambda: nb.batch_norm_backward(xc, xc, wc, wc, mc, rc, training=True), 200),
 ("group_norm_forward G=8 (32,64,8,8)", lambda: nb.group_norm_forward(xc, 8, wc, wc), 200),
 ("layer_norm_forward (16384, 2048)", lambda: nb.layer_norm_forward(xb, 2048, wb, wb), 50),
 ("layer_norm_backward (16384, 2048)", lambda: nb.layer_norm_backward(dyb, xb, 2048, mb, rb, wb, wb), 50),
 ("batch_norm_forward train (64,128,56,56)", lambda: nb.batch_norm_forward(xB, wB, wB, None, None, training=True), 50),
 ("batch_norm_backward train (64,128,56,56)", lambda: nb.batch_norm_backward(xB, xB, wB, wB, mB, rB, training=True), 50),
]
for name, f, n in cases:
    print(f"RESULT {name:42s} {us(f, n):9.1f}")
