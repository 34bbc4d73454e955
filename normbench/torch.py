"""PyTorch adapters: autograd functions and drop-in ``torch.nn`` modules backed by normbench's kernels.

Optional: needs PyTorch (``pip install 'normbench[peers]'``). A model switches implementation by changing an
import::

    from normbench.torch import BatchNorm2d, LayerNorm     # instead of torch.nn's

The modules subclass their ``torch.nn`` twins and replace only the computation, so constructor arguments,
parameters, buffers, ``state_dict`` keys (weight, bias, running_mean, running_var, num_batches_tracked),
``train()``/``eval()`` behaviour (momentum, ``momentum=None`` cumulative averages, ``track_running_stats``),
``repr`` and ``isinstance(m, torch.nn.BatchNorm2d)`` are PyTorch's own. Two keyword-only extras select the
computation: ``backend=None|"reference"|"cpu"|"cuda"`` and ``numerics={...}`` (see :mod:`normbench.numerics`);
the defaults give PyTorch's definitions computed by normbench's default kernels.

The functions (``batch_norm``, ``layer_norm``, ``group_norm``, ``instance_norm``, ``rms_norm``,
``fused_add_norm``) mirror ``torch.nn.functional``. Each wraps a ``torch.autograd.Function`` whose forward and
backward call the public functional API (:mod:`normbench.functional`) on NumPy views of the tensors: a
contiguous CPU tensor crosses without a copy (``detach().numpy()``), a non-contiguous one is copied once, and
a channels-last 4-D/5-D tensor is passed as ``(N, *spatial, C)`` with ``axis=-1`` (no copy; the output keeps
the channels-last layout). Running statistics are updated in place through a NumPy view of the buffer.
Outputs and gradients come back in the input's dtype (float32 or float64); saved statistics stay float64.
The backward is first-order only (``once_differentiable``): double backward raises.

CUDA tensors are handed over through ``__cuda_array_interface__`` to the CUDA backend; this path has not been
run on a GPU (the project's machines have none and its PyTorch is the CPU build).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from . import functional as nbf
from .numerics import resolve

__all__ = [
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "fused_add_norm",
    "BatchNormFunction", "LayerNormFunction", "GroupNormFunction", "InstanceNormFunction", "RMSNormFunction",
    "FusedAddNormFunction",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d",
    "InstanceNorm3d", "RMSNorm",
]

_FLOATS = (torch.float32, torch.float64)
_NP = {torch.float32: np.float32, torch.float64: np.float64}


# ------------------------------------------------------------------------------------------ tensor <-> array
def _checked(t, name):
    """The detached tensor, checked: a torch.Tensor of a float dtype the kernels take."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} has type {type(t).__name__}; expected a torch.Tensor")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} has dtype {t.dtype}; expected torch.float32 or torch.float64")
    return t.detach()


def _array(t, name="input"):
    """A NumPy view of a CPU tensor (one copy if non-contiguous), or the detached CUDA tensor itself."""
    if t is None:
        return None
    t = _checked(t, name).contiguous()
    return t if t.is_cuda else t.numpy()  # a CUDA tensor exposes __cuda_array_interface__: the front picks cuda


def _buffer(t, name):
    """A running-statistics buffer as an array over the tensor's own memory, which the kernels update in place:
    strided CPU tensors too (as PyTorch takes them); a CUDA buffer must be contiguous."""
    if t is None:
        return None
    t = _checked(t, name)
    if not t.is_cuda:
        return t.numpy()
    if not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous tensor on a CUDA device (it is updated in place)")
    return t


def _tensor(a, like):
    """An array from the kernels as a tensor of ``like``'s dtype and device (no copy when they already match)."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):  # cast in NumPy: the reference may return float64 (or longdouble)
        return torch.from_numpy(np.ascontiguousarray(a, dtype=_NP[like.dtype])).to(like.device)
    return torch.as_tensor(a, device=like.device).to(dtype=like.dtype)


def _stat(a):
    """Saved statistics as a float64 copy: in eval mode batch norm returns the running buffers themselves, which a
    later training step could change before this graph's backward runs."""
    return a if not isinstance(a, np.ndarray) else np.array(a, dtype=np.float64, copy=True)


def _grads(ctx, like, *grads):
    """One entry per forward input: the gradient as a tensor of ``like``'s dtype, None where the input needs
    none (or is not a tensor)."""
    grads = grads + (None,) * (len(ctx.needs_input_grad) - len(grads))
    return tuple(_tensor(g, like) if (need and g is not None) else None
                 for need, g in zip(ctx.needs_input_grad, grads))


def _numerics(numerics):
    numerics = dict(numerics or {})
    resolve(numerics)  # fail early with normbench's message for a bad option
    return numerics


# ---------------------------------------------------------------------------------------- autograd functions
class BatchNormFunction(torch.autograd.Function):
    """``apply(x, weight, bias, running_mean, running_var, training, momentum, eps, axis, backend, numerics)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, axis, backend, numerics):
        y, save_mean, save_invstd = nbf.batch_norm_forward(
            _array(x), _array(weight, "weight"), _array(bias, "bias"), _buffer(running_mean, "running_mean"),
            _buffer(running_var, "running_var"), training=training, momentum=momentum, eps=eps, axis=axis,
            backend=backend, **numerics)
        ctx.save_for_backward(x, weight, bias)
        ctx.stats = (_stat(save_mean), _stat(save_invstd))
        ctx.args = dict(training=training, eps=eps, axis=axis, backend=backend, **numerics)
        return _tensor(y, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = nbf.batch_norm_backward(_array(dy, "grad"), _array(x), _array(weight), _array(bias),
                                             *ctx.stats, **ctx.args)
        return _grads(ctx, x, dx, dw, db)


class LayerNormFunction(torch.autograd.Function):
    """``apply(x, normalized_shape, weight, bias, eps, backend, numerics)``."""

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps, backend, numerics):
        y, mean, rstd = nbf.layer_norm_forward(_array(x), normalized_shape, _array(weight, "weight"),
                                               _array(bias, "bias"), eps=eps, backend=backend, **numerics)
        ctx.save_for_backward(x, weight, bias)
        ctx.stats = (mean, rstd)
        ctx.normalized_shape = normalized_shape
        ctx.args = dict(eps=eps, backend=backend, **numerics)
        return _tensor(y, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = nbf.layer_norm_backward(_array(dy, "grad"), _array(x), ctx.normalized_shape, *ctx.stats,
                                             _array(weight), _array(bias), **ctx.args)
        return _grads(ctx, x, dx, None, dw, db)


class RMSNormFunction(torch.autograd.Function):
    """``apply(x, normalized_shape, weight, eps, backend, numerics)``; ``eps=None``: finfo(dtype).eps."""

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, eps, backend, numerics):
        y, rstd = nbf.rms_norm_forward(_array(x), normalized_shape, _array(weight, "weight"), eps=eps,
                                       backend=backend, **numerics)
        ctx.save_for_backward(x, weight)
        ctx.rstd = rstd
        ctx.normalized_shape = normalized_shape
        ctx.args = dict(eps=eps, backend=backend, **numerics)
        return _tensor(y, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx, dw = nbf.rms_norm_backward(_array(dy, "grad"), _array(x), ctx.normalized_shape, ctx.rstd,
                                       _array(weight), **ctx.args)
        return _grads(ctx, x, dx, None, dw)


class GroupNormFunction(torch.autograd.Function):
    """``apply(x, num_groups, weight, bias, eps, axis, backend, numerics)``."""

    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps, axis, backend, numerics):
        y, mean, rstd = nbf.group_norm_forward(_array(x), num_groups, _array(weight, "weight"),
                                               _array(bias, "bias"), eps=eps, axis=axis, backend=backend,
                                               **numerics)
        ctx.save_for_backward(x, weight, bias)
        ctx.stats = (mean, rstd)
        ctx.num_groups = num_groups
        ctx.args = dict(eps=eps, axis=axis, backend=backend, **numerics)
        return _tensor(y, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = nbf.group_norm_backward(_array(dy, "grad"), _array(x), ctx.num_groups, *ctx.stats,
                                             _array(weight), _array(bias), **ctx.args)
        return _grads(ctx, x, dx, None, dw, db)


class InstanceNormFunction(torch.autograd.Function):
    """``apply(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, axis, backend,
    numerics)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, axis, backend,
                numerics):
        y, mean, rstd = nbf.instance_norm_forward(
            _array(x), _array(weight, "weight"), _array(bias, "bias"), _buffer(running_mean, "running_mean"),
            _buffer(running_var, "running_var"), use_input_stats=use_input_stats, momentum=momentum, eps=eps,
            axis=axis, backend=backend, **numerics)
        ctx.save_for_backward(x, weight, bias)
        ctx.stats = (_stat(mean), _stat(rstd))
        ctx.args = dict(use_input_stats=use_input_stats, eps=eps, axis=axis, backend=backend, **numerics)
        return _tensor(y, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = nbf.instance_norm_backward(_array(dy, "grad"), _array(x), *ctx.stats, _array(weight),
                                                _array(bias), **ctx.args)
        return _grads(ctx, x, dx, dw, db)


class FusedAddNormFunction(torch.autograd.Function):
    """``apply(x, residual, normalized_shape, weight, bias, alpha, norm, eps, backend, numerics) -> (y, h)``
    with ``h = x + alpha * residual`` and ``y = Norm(h)``; gradients flow into both outputs."""

    @staticmethod
    def forward(ctx, x, residual, normalized_shape, weight, bias, alpha, norm, eps, backend, numerics):
        y, h, mean, rstd = nbf.fused_add_norm_forward(
            _array(x), _array(residual, "residual"), normalized_shape, _array(weight, "weight"),
            _array(bias, "bias"), alpha=alpha, norm=norm, eps=eps, backend=backend, **numerics)
        h_out = _tensor(h, x)  # shares h's memory (CPU): saved below so that autograd's version counter guards it
        ctx.save_for_backward(x, weight, bias, h_out)  # an in-place change of h is then an error, as in PyTorch
        ctx.h, ctx.stats, ctx.normalized_shape = h, (mean, rstd), normalized_shape
        ctx.args = dict(alpha=alpha, norm=norm, eps=eps, backend=backend, **numerics)
        ctx.set_materialize_grads(False)
        return _tensor(y, x), h_out

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        x, weight, bias, _ = ctx.saved_tensors  # (unpacking checks that h was not changed in place)
        y_unused = dy is None  # only h reached the loss: weight and bias get no gradient (None, not zeros),
        dy = np.zeros(x.shape, _array(x).dtype) if y_unused else _array(dy, "grad")  # as PyTorch's composition
        dx, dres, dw, db = nbf.fused_add_norm_backward(
            dy, ctx.h, ctx.normalized_shape, *ctx.stats, _array(weight), _array(bias),
            dh=_array(dh, "grad") if dh is not None else None, **ctx.args)
        if y_unused:
            dw = db = None
        return _grads(ctx, x, dx, dres, None, dw, db)


# ---------------------------------------------------------------------------------------- functional wrappers
def _channels_last(x):
    """For an (N, C, *spatial) tensor stored channels-last, its (N, *spatial, C) view (contiguous) and the
    permutation back; else None. Lets channels-last models run without a layout copy."""
    if not isinstance(x, torch.Tensor):
        return None  # the Function's input check names it
    if x.dim() < 3 or x.is_contiguous():
        return None
    perm = (0, *range(2, x.dim()), 1)
    xp = x.permute(perm)
    if not xp.is_contiguous():
        return None
    return xp, (0, x.dim() - 1, *range(1, x.dim() - 1))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               *, backend=None, **numerics):
    """``torch.nn.functional.batch_norm`` computed by normbench (channels on dim 1)."""
    numerics = _numerics(numerics)
    cl = _channels_last(input)
    if cl is not None:
        y = BatchNormFunction.apply(cl[0], weight, bias, running_mean, running_var, training, momentum, eps, -1,
                                    backend, numerics)
        return y.permute(cl[1])
    return BatchNormFunction.apply(input, weight, bias, running_mean, running_var, training, momentum, eps, 1,
                                   backend, numerics)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, backend=None, **numerics):
    """``torch.nn.functional.instance_norm`` computed by normbench (channels on dim 1)."""
    numerics = _numerics(numerics)
    cl = _channels_last(input)
    if cl is not None:
        y = InstanceNormFunction.apply(cl[0], weight, bias, running_mean, running_var, use_input_stats, momentum,
                                       eps, -1, backend, numerics)
        return y.permute(cl[1])
    return InstanceNormFunction.apply(input, weight, bias, running_mean, running_var, use_input_stats, momentum,
                                      eps, 1, backend, numerics)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, backend=None, **numerics):
    """``torch.nn.functional.group_norm`` computed by normbench (channels on dim 1)."""
    numerics = _numerics(numerics)
    cl = _channels_last(input)
    if cl is not None:
        return GroupNormFunction.apply(cl[0], num_groups, weight, bias, eps, -1, backend, numerics).permute(cl[1])
    return GroupNormFunction.apply(input, num_groups, weight, bias, eps, 1, backend, numerics)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend=None, **numerics):
    """``torch.nn.functional.layer_norm`` computed by normbench."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return LayerNormFunction.apply(input, shape, weight, bias, eps, backend, _numerics(numerics))


def rms_norm(input, normalized_shape, weight=None, eps=None, *, backend=None, **numerics):
    """``torch.nn.functional.rms_norm`` computed by normbench (``eps=None``: finfo(dtype).eps)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return RMSNormFunction.apply(input, shape, weight, eps, backend, _numerics(numerics))


def fused_add_norm(x, residual, normalized_shape, weight=None, bias=None, *, alpha=1.0, norm="layer", eps=1e-5,
                   backend=None, **numerics):
    """Residual add + layer/RMS norm (DeepNorm): ``h = x + alpha * residual``, ``y = Norm(h)``; returns
    ``(y, h)``. ``residual`` is the skip stream, ``x`` the sublayer output; both get gradients, through ``y``
    and through ``h`` (the next residual stream)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return FusedAddNormFunction.apply(x, residual, shape, weight, bias, alpha, norm, eps, backend,
                                      _numerics(numerics))


# ---------------------------------------------------------------------------------------------- modules
class _Options:
    """Keyword-only ``backend=`` and ``numerics=`` on top of the torch.nn constructor (first in the MRO)."""

    def __init__(self, *args, backend=None, numerics=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.numerics = _numerics(numerics)


class _BatchNorm(_Options):
    def forward(self, input):
        # torch.nn.modules.batchnorm._BatchNorm.forward, with the computation swapped
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if use_buffers else None,
                          self.running_var if use_buffers else None, self.weight, self.bias, bn_training, factor,
                          self.eps, backend=self.backend, **self.numerics)


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d):
    """Drop-in ``torch.nn.BatchNorm1d`` ((N, C) or (N, C, L)); extra keywords ``backend=``, ``numerics=``."""


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d):
    """Drop-in ``torch.nn.BatchNorm2d`` ((N, C, H, W)); extra keywords ``backend=``, ``numerics=``."""


class BatchNorm3d(_BatchNorm, torch.nn.BatchNorm3d):
    """Drop-in ``torch.nn.BatchNorm3d`` ((N, C, D, H, W)); extra keywords ``backend=``, ``numerics=``."""


class _InstanceNorm(_Options):
    def _apply_instance_norm(self, input):
        # torch.nn's forward handles unbatched input and the num_features check, then calls this
        return instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                             self.training or not self.track_running_stats,
                             self.momentum if self.momentum is not None else 0.0, self.eps,
                             backend=self.backend, **self.numerics)


class InstanceNorm1d(_InstanceNorm, torch.nn.InstanceNorm1d):
    """Drop-in ``torch.nn.InstanceNorm1d``; extra keywords ``backend=``, ``numerics=``."""


class InstanceNorm2d(_InstanceNorm, torch.nn.InstanceNorm2d):
    """Drop-in ``torch.nn.InstanceNorm2d``; extra keywords ``backend=``, ``numerics=``."""


class InstanceNorm3d(_InstanceNorm, torch.nn.InstanceNorm3d):
    """Drop-in ``torch.nn.InstanceNorm3d``; extra keywords ``backend=``, ``numerics=``."""


class LayerNorm(_Options, torch.nn.LayerNorm):
    """Drop-in ``torch.nn.LayerNorm``; extra keywords ``backend=``, ``numerics=``."""

    def forward(self, input):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, backend=self.backend,
                          **self.numerics)


class GroupNorm(_Options, torch.nn.GroupNorm):
    """Drop-in ``torch.nn.GroupNorm``; extra keywords ``backend=``, ``numerics=``."""

    def forward(self, input):
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps, backend=self.backend,
                          **self.numerics)


class RMSNorm(_Options, torch.nn.RMSNorm):
    """Drop-in ``torch.nn.RMSNorm`` (``eps=None``: finfo(dtype).eps); extra keywords ``backend=``, ``numerics=``."""

    def forward(self, input):
        return rms_norm(input, self.normalized_shape, self.weight, self.eps, backend=self.backend,
                        **self.numerics)
