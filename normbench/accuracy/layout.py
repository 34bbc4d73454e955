"""Which normalisation group each element of x belongs to, per variant: the "row" that errors are scaled by
and that the stress families shape (constant groups, mixed-scale channels).

Group numbering follows the saved statistics: rows of ``x.shape[:-k]`` for row norms, channels for batch norm,
``n * G + g`` for group norm (``n * C + c`` for instance norm), and the sample for LRN, so that a statistic
array reshaped to ``(-1,)`` is indexed by the group id.

A row variant is recognised by its inputs (the registry's ``make_inputs`` gives it a ``normalized_shape``), so a
new row-wise norm needs no entry here; a new channel variant must be added to :data:`CHANNEL_VARIANTS` (and, if
its groups are not (sample, channel) ones, given a branch in :func:`group_ids`).
"""
from __future__ import annotations

import math

import numpy as np

from .. import registry
from ..registry import is_row

#: the built-in row variants (for reference: rows are recognised by :func:`is_row`, not by this list)
ROW_VARIANTS = ("layer_norm", "rms_norm", "fused_add_norm")
#: the channel variants whose groups :func:`group_ids` knows (a new channel variant is added here)
CHANNEL_VARIANTS = ("batch_norm", "frozen_batch_norm", "group_norm", "instance_norm", "local_response_norm")


def row_variant(variant: str) -> bool:
    """Whether ``variant`` is a row variant, from the registry: its inputs for a tiny (2, 4) input carry a
    ``normalized_shape`` (a maker that rejects that shape is a channel variant's)."""
    try:
        inputs = registry.VARIANTS[variant].make_inputs((2, 4), np.dtype(np.float64), np.random.default_rng(0))
    except (TypeError, ValueError):
        return False
    return is_row(inputs)


def _require_channel(variant):
    if variant not in CHANNEL_VARIANTS:
        raise NotImplementedError(
            f"variant {variant!r} has no normalized_shape (not a row variant) and is not in "
            "normbench/accuracy/layout.py CHANNEL_VARIANTS: add it there (see docs/adding-a-variant.md, step 6)")


def channel_axis(inputs) -> int:
    x = inputs["x"]
    return 1 if inputs.get("axis", 1) == 1 or x.ndim == 2 else x.ndim - 1


def channel_ids(variant: str, inputs) -> np.ndarray:
    """Per element: its channel (channel variants) or its feature index in the normalised shape (row variants)."""
    x = inputs["x"]
    if is_row(inputs):
        D = math.prod(inputs["normalized_shape"])
        return np.broadcast_to(np.arange(D).reshape(inputs["normalized_shape"]), x.shape)
    _require_channel(variant)
    ax = channel_axis(inputs)
    shape = [1] * x.ndim
    shape[ax] = x.shape[ax]
    return np.broadcast_to(np.arange(x.shape[ax]).reshape(shape), x.shape)


def group_ids(variant: str, inputs) -> tuple[np.ndarray, int]:
    """(ids of x's shape, number of groups); every group has the same number of elements."""
    x = inputs["x"]
    if is_row(inputs):
        D = math.prod(inputs["normalized_shape"])
        R = x.size // D
        return np.arange(R).repeat(D).reshape(x.shape), R
    _require_channel(variant)
    if variant == "local_response_norm":
        N = x.shape[0]
        return np.arange(N).repeat(x.size // N).reshape(x.shape), N
    chan = channel_ids(variant, inputs)
    C = x.shape[channel_axis(inputs)]
    if variant in ("batch_norm", "frozen_batch_norm"):
        return np.ascontiguousarray(chan), C
    G = inputs["num_groups"] if variant == "group_norm" else C
    n = np.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    return n * G + chan // (C // G), x.shape[0] * G


def group_rows(a: np.ndarray, ids: np.ndarray, G: int) -> np.ndarray:
    """``a`` (x-shaped) rearranged as (G, elements per group), group g in row g."""
    order = np.argsort(ids.reshape(-1), kind="stable")
    return a.reshape(-1)[order].reshape(G, -1)
