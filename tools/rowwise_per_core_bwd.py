import numpy as np
import normbench as nb
from _timing import shape_arg, tmin
shape = shape_arg(); D = shape[-1]
rng = np.random.default_rng(0)
x, dy, res = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
w = np.ones(D, np.float32); b = np.zeros(D, np.float32); out = np.zeros_like(x); hout = np.zeros_like(x); dxo = np.zeros_like(x)
src = np.ones(x.size * 2, np.float32); dst = np.zeros_like(src)
src1 = np.ones(x.size, np.float32); dst1 = np.zeros_like(src1)
src15 = np.ones(x.size * 3 // 2, np.float32); dst15 = np.zeros_like(src15)
y, h, m, r = nb.fused_add_norm_forward(x, res, D, w, b, out=out, h_out=hout)
yr, rr = nb.rms_norm_forward(x, D, w)
for _ in range(2):
    tc2 = tmin(lambda: np.copyto(dst, src)); tc1 = tmin(lambda: np.copyto(dst1, src1)); tc15 = tmin(lambda: np.copyto(dst15, src15))
    tf = tmin(lambda: nb.fused_add_norm_forward(x, res, D, w, b, out=out, h_out=hout))
    tb = tmin(lambda: nb.fused_add_norm_backward(dy, hout, D, m, r, w, b, dx_out=dxo))
    trb = tmin(lambda: nb.rms_norm_backward(dy, x, D, rr, w, dx_out=dxo))
    print(f"{shape} 1 core: fused fwd {tc2/tf:.2f} bwd {tc2/tb:.2f} of copy; rms bwd {tc15/trb:.2f}")
