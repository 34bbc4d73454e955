"""PyTorch's own sample inputs for its norm functionals (``op_db`` in torch's internal test suite).

Each sample is converted to NumPy float64 and run through normbench.  Either it is an input the design rejects
(rank too low, negative eps, momentum outside [0, 1] where it is used, one value per channel in training,
num_groups not dividing C...), and normbench must raise a ValueError/TypeError, or it must match torch:
output, running statistics, and the gradients of autograd.  torch's ``error_inputs`` must be rejected too.
The rules below are transcribed from the design, not from the code under test.
"""
import numpy as np
import pytest

import normbench as nb
from normbench import registry

from nbtest import torch_or_skip

torch = torch_or_skip()
pytest.importorskip("expecttest", reason="torch's op_db needs the expecttest package (pip install expecttest)")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

F = torch.nn.functional
OPS = {"batch_norm": "batch_norm", "layer_norm": "layer_norm", "group_norm": "group_norm",
       "instance_norm": "instance_norm", "local_response_norm": "local_response_norm", "rms_norm": "rms_norm"}
# the CPU kernels join automatically once registered
BACKENDS = [b for b in ("reference", "cpu") if any(b in registry.available_backends(v) for v in OPS.values())]


def _collect():
    torch.manual_seed(0)
    samples, errors = [], []
    for op in op_db:
        name = op.name.removeprefix("nn.functional.")
        if op.name.startswith("nn.functional.") and name in OPS and op.variant_test_name == "":
            samples += [(name, s) for s in op.sample_inputs("cpu", torch.float64, requires_grad=False)]
            if op.error_inputs_func is not None:
                errors += [(name, e.sample_input) for e in op.error_inputs_func(op, "cpu")]
    return samples, errors


SAMPLES, ERROR_SAMPLES = _collect()


def cases(samples):
    out = []
    for i, (name, _) in enumerate(samples):
        for b in BACKENDS:
            if b in registry.available_backends(OPS[name]):
                out.append(pytest.param(i, b, id=f"{name}-{i}-{b}"))
    return out


def npy(a):
    return None if a is None else a.detach().numpy().astype(np.float64).copy()


def leaf(a):
    return None if a is None else a.detach().clone().requires_grad_(True)


def call(name, s):
    """Unpack a sample into the functional's full argument dict (torch's defaults filled in)."""
    x, args, kw = s.input, list(s.args), dict(s.kwargs)
    if name == "batch_norm":
        names, defaults = ["running_mean", "running_var", "weight", "bias"], dict(training=False, momentum=0.1,
                                                                                    eps=1e-5)
    elif name == "instance_norm":
        names, defaults = ["running_mean", "running_var", "weight", "bias"], dict(use_input_stats=True,
                                                                                    momentum=0.1, eps=1e-5)
    elif name == "layer_norm":
        names, defaults = ["normalized_shape", "weight", "bias", "eps"], dict(eps=1e-5)
    elif name == "rms_norm":
        names, defaults = ["normalized_shape", "weight", "eps"], dict(eps=None)
    elif name == "group_norm":
        names, defaults = ["num_groups", "weight", "bias", "eps"], dict(eps=1e-5)
    else:
        names, defaults = ["size", "alpha", "beta", "k"], dict(alpha=1e-4, beta=0.75, k=1.0)
    d = dict(defaults)
    d.update({k: None for k in names if k not in defaults})
    d.update(zip(names, args))
    d.update(kw)
    d["x"] = x
    return d


def expected_error(name, d):
    """True where the design says the input is rejected."""
    x = d["x"]
    min_rank = {"layer_norm": 1, "rms_norm": 1, "local_response_norm": 3}.get(name, 2)
    if x.ndim < min_rank:
        return True
    eps = d.get("eps")
    if eps is not None and eps < 0:
        return True
    if name == "batch_norm" and d["training"]:
        if d["running_mean"] is not None and not 0 <= d["momentum"] <= 1:
            return True
        if x.numel() > 0 and x.numel() // x.shape[1] == 1:
            return True
    if name == "instance_norm" and d["use_input_stats"]:
        if d["running_mean"] is not None and not 0 <= d["momentum"] <= 1:
            return True
        if x.numel() > 0 and x[0, 0].numel() == 1:
            return True
    if name == "group_norm" and x.shape[1] % d["num_groups"]:
        return True
    return False


def run_ours(name, d, backend):
    """normbench forward; returns (y, running stats after, backward(g) -> dict of gradients)."""
    x, w, b = npy(d["x"]), npy(d.get("weight")), npy(d.get("bias"))
    if name in ("batch_norm", "instance_norm"):
        rm, rv = npy(d["running_mean"]), npy(d["running_var"])
        if name == "batch_norm":
            y, s1, s2 = nb.batch_norm_forward(x, w, b, rm, rv, training=d["training"], momentum=d["momentum"],
                                              eps=d["eps"], backend=backend)
            bwd = lambda g: nb.batch_norm_backward(g, x, w, b, s1, s2, training=d["training"], eps=d["eps"],
                                                   backend=backend)
        else:
            y, s1, s2 = nb.instance_norm_forward(x, w, b, rm, rv, use_input_stats=d["use_input_stats"],
                                                 momentum=d["momentum"], eps=d["eps"], backend=backend)
            bwd = lambda g: nb.instance_norm_backward(g, x, s1, s2, w, b, use_input_stats=d["use_input_stats"],
                                                      eps=d["eps"], backend=backend)
        return y, (rm, rv), lambda g: dict(zip(("x", "weight", "bias"), bwd(g)))
    if name == "layer_norm":
        ns = d["normalized_shape"]
        y, m, r = nb.layer_norm_forward(x, ns, w, b, eps=d["eps"], backend=backend)
        return y, None, lambda g: dict(zip(("x", "weight", "bias"), nb.layer_norm_backward(
            g, x, ns, m, r, w, b, eps=d["eps"], backend=backend)))
    if name == "rms_norm":
        ns = d["normalized_shape"]
        y, r = nb.rms_norm_forward(x, ns, w, eps=d["eps"], backend=backend)
        return y, None, lambda g: dict(zip(("x", "weight"), nb.rms_norm_backward(
            g, x, ns, r, w, eps=d["eps"], backend=backend)))
    if name == "group_norm":
        G = d["num_groups"]
        y, m, r = nb.group_norm_forward(x, G, w, b, eps=d["eps"], backend=backend)
        return y, None, lambda g: dict(zip(("x", "weight", "bias"), nb.group_norm_backward(
            g, x, G, m, r, w, b, eps=d["eps"], backend=backend)))
    kw = dict(alpha=d["alpha"], beta=d["beta"], k=d["k"])
    y, scale = nb.local_response_norm_forward(x, d["size"], backend=backend, **kw)
    return y, None, lambda g: {"x": nb.local_response_norm_backward(g, x, y, scale, d["size"], backend=backend,
                                                                    **kw)}


def run_torch(name, d):
    """torch forward on leaf copies; returns (y, running stats after, leaves by name)."""
    t = {k: leaf(d.get(k)) for k in ("x", "weight", "bias")}
    if name in ("batch_norm", "instance_norm"):
        rm = None if d["running_mean"] is None else d["running_mean"].clone()
        rv = None if d["running_var"] is None else d["running_var"].clone()
        if name == "batch_norm":
            y = F.batch_norm(t["x"], rm, rv, t["weight"], t["bias"], training=d["training"], momentum=d["momentum"],
                             eps=d["eps"])
        else:
            y = F.instance_norm(t["x"], rm, rv, t["weight"], t["bias"], use_input_stats=d["use_input_stats"],
                                momentum=d["momentum"], eps=d["eps"])
        return y, (rm, rv), t
    if name == "layer_norm":
        y = F.layer_norm(t["x"], d["normalized_shape"], t["weight"], t["bias"], eps=d["eps"])
    elif name == "rms_norm":
        y = F.rms_norm(t["x"], d["normalized_shape"], t["weight"], eps=d["eps"])
    elif name == "group_norm":
        y = F.group_norm(t["x"], d["num_groups"], t["weight"], t["bias"], eps=d["eps"])
    else:
        y = F.local_response_norm(t["x"], d["size"], alpha=d["alpha"], beta=d["beta"], k=d["k"])
    return y, None, t


def assert_close(ours, theirs, what):
    theirs = theirs.detach().numpy()
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, what
    scale = max(1.0, np.abs(theirs).max(initial=0.0))
    np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-11 * scale, err_msg=what)


@pytest.mark.parametrize("index,backend", cases(SAMPLES))
def test_sample(index, backend):
    name, s = SAMPLES[index]
    d = call(name, s)
    if expected_error(name, d):
        before = [npy(d.get(k)) for k in ("running_mean", "running_var")]
        with pytest.raises((ValueError, TypeError)):
            run_ours(name, d, backend)
        for k, b in zip(("running_mean", "running_var"), before):
            if b is not None:
                np.testing.assert_array_equal(npy(d[k]), b, err_msg=f"{k} changed by a rejected call")
        return
    y, running, backward = run_ours(name, d, backend)
    ty, trunning, leaves = run_torch(name, d)
    assert_close(y, ty, "y")
    if running is not None:
        for ours, theirs, k in zip(running, trunning, ("running_mean", "running_var")):
            if theirs is not None:
                assert_close(ours, theirs, k)
    if ty.numel() == 0:
        return
    g = np.random.default_rng(index).standard_normal(ty.shape)
    ours_grads = backward(g)
    live = [k for k, v in leaves.items() if v is not None]
    tgrads = torch.autograd.grad((ty * torch.tensor(g)).sum(), [leaves[k] for k in live], allow_unused=True)
    for k, tg in zip(live, tgrads):
        if k in ours_grads and tg is not None:
            assert_close(ours_grads[k], tg, f"d{k}")


@pytest.mark.parametrize("index", range(len(ERROR_SAMPLES)),
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(ERROR_SAMPLES)])
def test_error_inputs(index):
    """Inputs torch rejects are rejected here too, with a ValueError/TypeError."""
    name, s = ERROR_SAMPLES[index]
    d = call(name, s)
    with pytest.raises((ValueError, TypeError)):
        run_ours(name, d, "reference")


def test_samples_cover_every_op_and_both_outcomes():
    """The sample set is what this file claims to test: every op, accepted and rejected samples, empty batches."""
    assert {n for n, _ in SAMPLES} == set(OPS)
    verdicts = [expected_error(n, call(n, s)) for n, s in SAMPLES]
    assert any(verdicts) and not all(verdicts)
    assert any(s.input.numel() == 0 and s.input.ndim >= 2 for _, s in SAMPLES)
