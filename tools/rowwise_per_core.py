import numpy as np
import normbench as nb
from normbench.bandwidth import _parallel_copy
from _timing import shape_arg, tmin
shape = shape_arg(); D = shape[-1]
rng = np.random.default_rng(0)
x = rng.standard_normal(shape, dtype=np.float32); dy = rng.standard_normal(shape, dtype=np.float32)
w = np.ones(D, np.float32); b = np.zeros(D, np.float32); out = np.zeros_like(x); dxo = np.zeros_like(x)
src = np.ones(x.size, np.float32); dst = np.zeros_like(src)
y, m, r = nb.layer_norm_forward(x, D, w, b, out=out)
for _ in range(2):
    tc = tmin(lambda: np.copyto(dst, src))
    tf = tmin(lambda: nb.layer_norm_forward(x, D, w, b, out=out))
    tb = tmin(lambda: nb.layer_norm_backward(dy, x, D, m, r, w, b, dx_out=dxo))
    trf = tmin(lambda: nb.rms_norm_forward(x, D, w, out=out))
    print(f"1-thread CPU time: copy {2*x.nbytes/tc/1e9:.1f} GB/s  layer fwd {2*x.nbytes/tf/1e9:.1f} ({tc/tf:.2f})  bwd {3*x.nbytes/tb/1e9:.1f} ({1.5*tc/tb:.2f})  rms fwd {2*x.nbytes/trf/1e9:.1f}")
