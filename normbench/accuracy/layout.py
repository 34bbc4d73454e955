"""Which normalisation group each element of x belongs to, per variant: the "row" that errors are scaled by
and that the stress families shape (constant groups, mixed-scale channels).

Group numbering follows the saved statistics: rows of ``x.shape[:-k]`` for row norms, channels for batch norm,
``n * G + g`` for group norm (``n * C + c`` for instance norm), and the sample for LRN, so that a statistic
array reshaped to ``(-1,)`` is indexed by the group id.
"""
from __future__ import annotations

import math

import numpy as np

ROW_VARIANTS = ("layer_norm", "rms_norm", "fused_add_norm")
CHANNEL_VARIANTS = ("batch_norm", "frozen_batch_norm", "group_norm", "instance_norm", "local_response_norm")


def channel_axis(inputs) -> int:
    x = inputs["x"]
    return 1 if inputs.get("axis", 1) == 1 or x.ndim == 2 else x.ndim - 1


def channel_ids(variant: str, inputs) -> np.ndarray:
    """Per element: its channel (channel variants) or its feature index in the normalised shape (row variants)."""
    x = inputs["x"]
    if variant in ROW_VARIANTS:
        D = math.prod(inputs["normalized_shape"])
        return np.broadcast_to(np.arange(D).reshape(inputs["normalized_shape"]), x.shape)
    ax = channel_axis(inputs)
    shape = [1] * x.ndim
    shape[ax] = x.shape[ax]
    return np.broadcast_to(np.arange(x.shape[ax]).reshape(shape), x.shape)


def group_ids(variant: str, inputs) -> tuple[np.ndarray, int]:
    """(ids of x's shape, number of groups); every group has the same number of elements."""
    x = inputs["x"]
    if variant in ROW_VARIANTS:
        D = math.prod(inputs["normalized_shape"])
        R = x.size // D
        return np.arange(R).repeat(D).reshape(x.shape), R
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
