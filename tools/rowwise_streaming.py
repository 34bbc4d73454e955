"""Layer norm with streaming stores (aligned out=) vs ordinary stores (misaligned out=), fraction of np.copyto of
the same bytes (docs/cpu-rowwise.md, "Streaming stores"). Run: [NUMBA_NUM_THREADS=1] .venv/bin/python
tools/rowwise_streaming.py 16384x2048 262144x128 4096x8192"""
import numpy as np, time, sys
import normbench as nb
from normbench.cpu._stream import aligned_empty
def T(fn, n=9):
    fn(); b = 1e9
    for _ in range(n):
        t = time.perf_counter(); fn(); b = min(b, time.perf_counter() - t)
    return b
for s in sys.argv[1:]:
    R, D = (int(v) for v in s.split("x"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((R, D), dtype=np.float32); dy = rng.standard_normal((R, D), dtype=np.float32)
    w = np.ones(D, np.float32); b = np.zeros(D, np.float32)
    ya = aligned_empty(x.shape, x.dtype); ym = np.empty(x.size + 1, np.float32)[1:].reshape(x.shape)
    _, m, r = nb.layer_norm_forward(x, D, w, b)
    src = np.ones(x.size, np.float32); dst = np.zeros_like(src)
    src15 = np.ones(x.size * 3 // 2, np.float32); dst15 = np.zeros_like(src15)
    tc = T(lambda: np.copyto(dst, src)); tc15 = T(lambda: np.copyto(dst15, src15))
    fa = T(lambda: nb.layer_norm_forward(x, D, w, b, out=ya)); fm = T(lambda: nb.layer_norm_forward(x, D, w, b, out=ym))
    ba = T(lambda: nb.layer_norm_backward(dy, x, D, m, r, w, b, dx_out=ya)); bm = T(lambda: nb.layer_norm_backward(dy, x, D, m, r, w, b, dx_out=ym))
    print((R, D), f"fwd of copy: stream {tc/fa:.2f} plain {tc/fm:.2f}   bwd of copy: stream {tc15/ba:.2f} plain {tc15/bm:.2f}")
