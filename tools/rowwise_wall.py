"""B's benchmark (throwaway, until F's runner): float32, out=/dx_out= preallocated, one process, interleaved.
Fraction = kernel bandwidth / copy bandwidth of the same working set (limit 2/3, 3/5 for a single long row).
Times are the MIN over repeats (the machine is shared by 8 agents: a median mostly measures preemption)."""
import sys, time, numpy as np, torch
import normbench as nb
from normbench.bandwidth import _parallel_copy, TWO_READ_FORWARD, TWO_READ_BACKWARD
torch.set_num_threads(2)
def tmin(fn, n):
    fn(); best = 1e9
    for _ in range(n):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    return best
def copy_min(nbytes, n):
    src = np.ones(nbytes // 8, np.float32); dst = np.zeros_like(src)
    return min(tmin(lambda: np.copyto(dst, src), n), tmin(lambda: _parallel_copy(dst, src), n))
rng = np.random.default_rng(0)
shapes = [tuple(int(v) for v in s.split("x")) for s in sys.argv[1].split(",")]
variants = sys.argv[2].split(",") if len(sys.argv) > 2 else ["layer", "rms", "fused"]
for shape in shapes:
    D = shape[-1]; small = np.prod(shape) < 1e6; REP = 200 if small else 7
    x = rng.standard_normal(shape, dtype=np.float32); dy = rng.standard_normal(shape, dtype=np.float32)
    w = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32); b = (0.1 * rng.standard_normal(D)).astype(np.float32)
    res = rng.standard_normal(shape, dtype=np.float32)
    out = np.zeros_like(x); dxo = np.zeros_like(x); hout = np.zeros_like(x)
    tx, tdy, tw, tb, tres = (torch.from_numpy(a) for a in (x, dy, w, b, res))
    long = shape[0] < 2 and D >= 2**20
    for v in variants:
        if v == "layer":
            f = lambda: nb.layer_norm_forward(x, D, w, b, out=out); y, m, r = f()
            g = lambda: nb.layer_norm_backward(dy, x, D, m, r, w, b, dx_out=dxo)
            fb, bb = 2 * x.nbytes, 3 * x.nbytes
            tf = lambda: torch.nn.functional.layer_norm(tx, (D,), tw, tb)
            _, tm, tr = torch.native_layer_norm(tx, (D,), tw, tb, 1e-5)
            tg = lambda: torch.ops.aten.native_layer_norm_backward(tdy, tx, (D,), tm, tr, tw, tb, [True, True, True])
        elif v == "rms":
            f = lambda: nb.rms_norm_forward(x, D, w, out=out); y, r = f()
            g = lambda: nb.rms_norm_backward(dy, x, D, r, w, dx_out=dxo)
            fb, bb = 2 * x.nbytes, 3 * x.nbytes
            tf = lambda: torch.nn.functional.rms_norm(tx, (D,), tw)
            txr = tx.clone().requires_grad_(True); twr = tw.clone().requires_grad_(True)
            ty = torch.nn.functional.rms_norm(txr, (D,), twr)
            tg = lambda: torch.autograd.grad(ty, (txr, twr), tdy, retain_graph=True)
        else:
            f = lambda: nb.fused_add_norm_forward(x, res, D, w, b, out=out, h_out=hout); y, h, m, r = f()
            g = lambda: nb.fused_add_norm_backward(dy, h, D, m, r, w, b, dx_out=dxo)
            fb, bb = 4 * x.nbytes, 4 * x.nbytes
            tf = lambda: torch.nn.functional.layer_norm(tx + tres, (D,), tw, tb)
            tg = None
        for direction, fn, nbytes, tfn, lim in (("fwd", f, fb, tf, TWO_READ_FORWARD), ("bwd", g, bb, tg, TWO_READ_BACKWARD)):
            tc = copy_min(nbytes, REP); tk = tmin(fn, REP); tt = tmin(tfn, REP) if tfn else None
            tc = min(tc, copy_min(nbytes, REP)); tk = min(tk, tmin(fn, REP))
            if tfn: tt = min(tt, tmin(tfn, REP))
            limit = lim if long else 1.0
            frac = tc / tk / limit
            ts = f"{tt/tk:5.2f}x torch" if tt else "    -      "
            print(f"{v:6s} {direction} {str(shape):15s} WS {nbytes/2**20:7.2f} MiB {nbytes/tk/1e9:6.1f} GB/s copy {nbytes/tc/1e9:6.1f} "
                  f"frac {frac:5.2f} (limit {limit:.2f}) {ts} t={tk*1e6:9.1f}us", flush=True)
