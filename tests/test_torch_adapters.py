"""normbench.torch against PyTorch itself: gradcheck (finite differences) of every autograd Function in float64,
parity with the torch.nn modules over several optimizer steps in train and eval, and state_dicts that load
across the two implementations."""
import numpy as np
import pytest
from nbtest import torch_or_skip

torch = torch_or_skip()
import torch.nn as tnn  # noqa: E402

import normbench.torch as nt  # noqa: E402

F64 = torch.float64


def _t(*shape, dtype=F64, seed=0, grad=True, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=dtype) + offset).requires_grad_(grad)


# ------------------------------------------------------------------------------------------------ gradcheck
def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_batch_norm_train(channels_last):
    x = _t(4, 3, 2, 3, offset=2.0)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    w, b = _t(3, seed=1), _t(3, seed=2)
    rm, rv = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    # channels-last reaches the kernels as axis=-1: the adapter's layout logic is what is under test here, so
    # the reference backend keeps this test from compiling a second set of CPU kernels
    backend = "reference" if channels_last else None
    _gradcheck(lambda x, w, b: nt.batch_norm(x, rm, rv, w, b, training=True, backend=backend), x, w, b)


def test_gradcheck_batch_norm_eval_and_2d():
    x, w, b = _t(5, 4), _t(4, seed=1), _t(4, seed=2)
    rm, rv = _t(4, seed=3, grad=False), 1 + _t(4, seed=4, grad=False).abs()
    _gradcheck(lambda x, w, b: nt.batch_norm(x, rm, rv, w, b, training=False), x, w, b)
    _gradcheck(lambda x: nt.batch_norm(x, None, None, training=True, correction=1), x)


@pytest.mark.parametrize("numerics", [{}, {"eps_placement": "outside", "correction": 1}])
def test_gradcheck_layer_norm(numerics):
    x, w, b = _t(3, 2, 5), _t(2, 5, seed=1), _t(2, 5, seed=2)
    _gradcheck(lambda x, w, b: nt.layer_norm(x, (2, 5), w, b, 1e-3, **numerics), x, w, b)


def test_gradcheck_rms_norm():
    x, w = _t(4, 6), _t(6, seed=1)
    _gradcheck(lambda x, w: nt.rms_norm(x, 6, w, 1e-5), x, w)
    _gradcheck(lambda x: nt.rms_norm(x, 6), x)


def test_gradcheck_group_norm():
    x, w, b = _t(2, 6, 3, 2), _t(6, seed=1), _t(6, seed=2)
    _gradcheck(lambda x, w, b: nt.group_norm(x, 3, w, b), x, w, b)


@pytest.mark.parametrize("use_input_stats", [True, False])
def test_gradcheck_instance_norm(use_input_stats):
    x, w, b = _t(2, 3, 4), _t(3, seed=1), _t(3, seed=2)
    rm, rv = _t(3, seed=3, grad=False), 1 + _t(3, seed=4, grad=False).abs()
    _gradcheck(lambda x, w, b: nt.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats), x, w, b)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_gradcheck_fused_add_norm(norm):
    x, res, w = _t(3, 5), _t(3, 5, seed=1), _t(5, seed=2)
    b = _t(5, seed=3) if norm == "layer" else None
    # both outputs carry gradients: y = Norm(h) and h (the next residual stream)
    _gradcheck(lambda x, res, w: nt.fused_add_norm(x, res, 5, w, b, alpha=0.7, norm=norm), x, res, w)


def test_fused_add_norm_matches_torch_composition():
    x, res, w, b = _t(3, 5), _t(3, 5, seed=1), _t(5, seed=2), _t(5, seed=3)
    y, h = nt.fused_add_norm(x, res, 5, w, b, alpha=0.5)
    h_ref = x + 0.5 * res
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(h_ref, (5,), w, b))


# ------------------------------------------------------------------------------------------ module parity
CASES = {
    "bn1d_2d": (lambda: tnn.BatchNorm1d(4), lambda: nt.BatchNorm1d(4), (6, 4)),
    "bn1d_3d_cma": (lambda: tnn.BatchNorm1d(4, momentum=None), lambda: nt.BatchNorm1d(4, momentum=None), (3, 4, 5)),
    "bn2d": (lambda: tnn.BatchNorm2d(3, momentum=0.3), lambda: nt.BatchNorm2d(3, momentum=0.3), (4, 3, 2, 3)),
    "bn2d_untracked": (lambda: tnn.BatchNorm2d(3, track_running_stats=False),
                       lambda: nt.BatchNorm2d(3, track_running_stats=False), (4, 3, 2, 2)),
    "bn3d": (lambda: tnn.BatchNorm3d(2), lambda: nt.BatchNorm3d(2), (2, 2, 2, 3, 2)),
    "ln": (lambda: tnn.LayerNorm((3, 4)), lambda: nt.LayerNorm((3, 4)), (5, 3, 4)),
    "gn": (lambda: tnn.GroupNorm(2, 6), lambda: nt.GroupNorm(2, 6), (3, 6, 4)),
    "in1d": (lambda: tnn.InstanceNorm1d(3), lambda: nt.InstanceNorm1d(3), (2, 3, 5)),
    "in2d_tracked": (lambda: tnn.InstanceNorm2d(3, affine=True, track_running_stats=True),
                     lambda: nt.InstanceNorm2d(3, affine=True, track_running_stats=True), (2, 3, 3, 2)),
    "in3d": (lambda: tnn.InstanceNorm3d(2, affine=True), lambda: nt.InstanceNorm3d(2, affine=True), (2, 2, 2, 2, 3)),
    "rms": (lambda: tnn.RMSNorm(5), lambda: nt.RMSNorm(5), (4, 5)),
}
# float32: both sides round differently (normbench's statistics are float64); gradients cancel, so tolerances are
# a few hundred float32 eps relative to values of order 1-10
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}
# every module in float64; float32 on two representative ones (each extra dtype compiles more kernels)
PARITY = [(c, torch.float64) for c in sorted(CASES)] + [("bn2d", torch.float32), ("ln", torch.float32)]


def _perturb(module, seed):
    """Non-trivial parameters so that the affine parts are exercised from the first step."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("case,dtype", PARITY, ids=[f"{c}-{str(d)[6:]}" for c, d in PARITY])
def test_module_parity_over_sgd_steps(case, dtype):
    make_ref, make_nb, shape = CASES[case]
    ref, mine = make_ref().to(dtype), make_nb().to(dtype)
    _perturb(ref, 7)
    mine.load_state_dict(ref.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) if list(m.parameters()) else None
            for m in (ref, mine)]
    tol = TOL[dtype]
    for step in range(4):  # train: outputs, input gradients, parameters and buffers after every step
        x = _t(*shape, dtype=dtype, seed=100 + step, grad=False, offset=3.0)
        target = _t(*shape, dtype=dtype, seed=200 + step, grad=False)
        results = []
        for m, opt in zip((ref, mine), opts):
            xi = x.clone().requires_grad_()
            y = m(xi)
            ((y - target) ** 2).sum().backward()
            if opt is not None:
                opt.step()
                opt.zero_grad()
            results.append((y.detach(), xi.grad))
        torch.testing.assert_close(results[1][0], results[0][0], **tol)
        torch.testing.assert_close(results[1][1], results[0][1], **tol)
        sd_ref, sd_mine = ref.state_dict(), mine.state_dict()
        assert list(sd_mine) == list(sd_ref)
        for k in sd_ref:
            torch.testing.assert_close(sd_mine[k], sd_ref[k], **tol, msg=f"{case}: {k} after step {step}")
    ref.eval(), mine.eval()
    x = _t(*shape, dtype=dtype, seed=300, grad=False, offset=3.0)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, ym = ref(xr), mine(xm)
    torch.testing.assert_close(ym, yr, **tol)
    yr.square().sum().backward(), ym.square().sum().backward()
    torch.testing.assert_close(xm.grad, xr.grad, **tol)


def test_unbatched_instance_norm_matches_torch():
    x = _t(3, 5, grad=False)
    torch.testing.assert_close(nt.InstanceNorm1d(3)(x), tnn.InstanceNorm1d(3)(x))


def test_channels_last_layout_is_kept_and_matches_torch():
    x = _t(2, 4, 3, 3, grad=False, offset=1.0).to(memory_format=torch.channels_last)
    backend = "reference"  # the layout handling is under test, not the (separately tested) axis=-1 kernels
    for ref, mine in ((tnn.BatchNorm2d(4), nt.BatchNorm2d(4, backend=backend)),
                      (tnn.GroupNorm(2, 4), nt.GroupNorm(2, 4, backend=backend))):
        ref, mine = ref.double(), mine.double()
        y = mine(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, ref(x))
        torch.testing.assert_close(mine.state_dict(), ref.state_dict())


# ------------------------------------------------------------------------------------------------ state_dict
def _model(lib):
    return tnn.Sequential(tnn.Conv2d(2, 4, 3), lib.BatchNorm2d(4), tnn.ReLU(), lib.GroupNorm(2, 4),
                          tnn.Flatten(), tnn.Linear(16, 6), lib.LayerNorm(6), lib.RMSNorm(6)).double()


def test_state_dict_loads_across_implementations():
    torch.manual_seed(0)
    ref = _model(tnn)
    ref(_t(3, 2, 4, 4, grad=False)).sum().backward()  # train one forward: running stats move
    _perturb(ref, 3)
    mine = _model(nt)
    mine.load_state_dict(ref.state_dict(), strict=True)
    back = _model(tnn)
    back.load_state_dict(mine.state_dict(), strict=True)
    assert list(mine.state_dict()) == list(ref.state_dict())
    x = _t(2, 2, 4, 4, seed=9, grad=False)
    for m in (ref, mine, back):
        m.eval()
    torch.testing.assert_close(mine(x), ref(x))
    torch.testing.assert_close(back(x), ref(x))


def test_modules_are_torch_modules_with_torch_repr():
    m = nt.BatchNorm2d(8, eps=1e-3, momentum=None, affine=False, backend="reference", numerics={"correction": 0})
    assert isinstance(m, tnn.BatchNorm2d)
    assert repr(m) == repr(tnn.BatchNorm2d(8, eps=1e-3, momentum=None, affine=False))
    assert nt.LayerNorm(4, bias=False).bias is None


# ------------------------------------------------------------------------------------------------ options, errors
def test_numerics_reach_the_kernels():
    x = _t(4, 8, grad=False)
    y_out = nt.layer_norm(x, 8, eps=0.5, eps_placement="outside")
    xc = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(y_out, xc / (xc.square().mean(-1, keepdim=True).sqrt() + 0.5))
    m = nt.LayerNorm(8, eps=0.0, numerics={"correction": 1}, backend="reference").double()
    torch.testing.assert_close(m(x), xc / x.std(-1, keepdim=True) * m.weight + m.bias)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="input has dtype torch.int64"):
        nt.layer_norm(torch.ones(2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="variance="):
        nt.LayerNorm(4, numerics={"variance": "bogus"})
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nt.BatchNorm1d(3)(torch.ones(1, 3))
    for fn, args in ((nt.batch_norm, (None, None)), (nt.instance_norm, ()), (nt.group_norm, (1,))):
        with pytest.raises(TypeError, match="input has type ndarray; expected a torch.Tensor"):
            fn(np.ones((4, 3, 2)), *args)  # was an AttributeError from the channels-last probe


def test_fused_add_norm_gradient_through_h_only():
    x, res = _t(3, 5), _t(3, 5, seed=1)
    y, h = nt.fused_add_norm(x, res, 5, alpha=0.25)
    h.sum().backward()  # y unused: its gradient arrives as None
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    torch.testing.assert_close(res.grad, torch.full_like(res, 0.25))
    # weight and bias get no gradient (None, as PyTorch's composition gives: an optimizer then leaves them alone,
    # where a zero gradient would still decay them), unless y reaches the loss
    w, b = _t(5, seed=2), _t(5, seed=3)
    y, h = nt.fused_add_norm(x, res, 5, w, b)
    h.sum().backward()
    assert w.grad is None and b.grad is None
    y, h = nt.fused_add_norm(x, res, 5, w, b)
    (y.sum() + h.sum()).backward()
    assert w.grad is not None and b.grad is not None


def test_fused_add_norm_h_changed_in_place_is_an_error_as_in_pytorch():
    """h is saved for the backward and shared with the returned tensor: changing it in place used to give a silently
    wrong gradient (x100 here); PyTorch's composition raises, and so does the adapter now."""
    x, res = _t(2, 4), _t(2, 4, seed=1, grad=False)
    c = _t(2, 4, seed=2, grad=False)
    def composition(a, b, n):
        h = a + b
        return torch.nn.functional.layer_norm(h, (n,)), h

    for fused in (nt.fused_add_norm, composition):
        y, h = fused(x, res, 4)
        h.mul_(100.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad((y * c).sum(), x)
    y, h = nt.fused_add_norm(x, res, 4)
    h2 = h * 100.0  # out of place: fine
    (g,) = torch.autograd.grad((y * c).sum() + h2.sum(), x)
    ref = x.detach().clone().requires_grad_(True)
    hr = ref + res
    (gr,) = torch.autograd.grad((torch.nn.functional.layer_norm(hr, (4,)) * c).sum() + (hr * 100.0).sum(), ref)
    torch.testing.assert_close(g, gr)


def test_contiguous_tensors_reach_the_kernels_without_a_copy(monkeypatch):
    seen = {}
    real = nt.nbf.layer_norm_forward

    def spy(x, *args, **kwargs):
        seen["x"] = x
        return real(x, *args, **kwargs)

    monkeypatch.setattr(nt.nbf, "layer_norm_forward", spy)
    x = _t(4, 6, grad=False)
    nt.layer_norm(x, 6)
    assert np.shares_memory(seen["x"], x.numpy())
    base = _t(6, 4, grad=False)
    y = nt.layer_norm(base.t(), 6)  # a transposed (non-contiguous) view: copied once, still correct
    assert not np.shares_memory(seen["x"], base.numpy())
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(base.t(), (6,)))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_strided_running_buffers_are_updated_in_place_as_torch(backend):
    """PyTorch updates strided running buffers (every other element of a bigger tensor) in place; the adapters
    refused them ("must be a contiguous tensor") though the functional layer updates strided arrays in place."""
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = (torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64))
    theirs = (torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64))
    for step in range(3):
        y = nt.batch_norm(x + step, ours[0][::2], ours[1][::2], training=True, backend=backend)
        want = torch.nn.functional.batch_norm(x + step, theirs[0][::2], theirs[1][::2], training=True)
        torch.testing.assert_close(y, want)
        y = nt.instance_norm(x - step, ours[0][1::2], ours[1][1::2], backend=backend)
        want = torch.nn.functional.instance_norm(x - step, theirs[0][1::2], theirs[1][1::2])
        torch.testing.assert_close(y, want)
    torch.testing.assert_close(ours, theirs)
