import time, numpy as np, torch, normbench as nb
x=np.random.randn(8,768).astype(np.float32); w=np.ones(768,np.float32); b=np.zeros(768,np.float32)
r=np.random.randn(8,768).astype(np.float32)
y=np.empty_like(x); dy=np.random.randn(8,768).astype(np.float32); dx=np.empty_like(x); h=np.empty_like(x)
tx=torch.from_numpy(x); tw=torch.from_numpy(w); tb=torch.from_numpy(b); tr=torch.from_numpy(r)
_,mean,rstd=nb.layer_norm_forward(x,(768,),w,b)
_,rr=nb.rms_norm_forward(x,768,w)
F=torch.nn.functional
cases={
 "ln fwd": lambda: nb.layer_norm_forward(x,768,w,b,out=y),
 "ln bwd": lambda: nb.layer_norm_backward(dy,x,768,mean,rstd,w,b,dx_out=dx),
 "rms fwd": lambda: nb.rms_norm_forward(x,768,w,out=y),
 "rms bwd": lambda: nb.rms_norm_backward(dy,x,768,rr,w,dx_out=dx),
 "fused rms fwd": lambda: nb.fused_add_norm_forward(x,r,768,w,None,norm="rms",out=y,h_out=h),
 "torch ln": lambda: F.layer_norm(tx,(768,),tw,tb),
 "torch rms": lambda: F.rms_norm(tx,(768,),tw),
 "torch add+rms": lambda: F.rms_norm(tx+tr,(768,),tw),
}
best={k:1e9 for k in cases}
for f in cases.values(): f()
for rnd in range(30):
    for k,f in cases.items():
        t0=time.perf_counter()
        for i in range(100): f()
        best[k]=min(best[k],(time.perf_counter()-t0)/100)
for k,v in best.items(): print(f"{k:14} {v*1e6:6.2f} us")
