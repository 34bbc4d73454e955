"""The tutorial layer norm peer: ``gamma * (x - mean) / (x.std() + eps) + beta`` (biased std, eps *outside*
the root), in the input dtype, as blog posts and course notebooks write it.  (normbench/peers.py holds the
NumPy textbook and PyTorch peers; this one has no backward and exists only for the accuracy study.)"""
from __future__ import annotations

import numpy as np


def tutorial_layer_norm(inputs, eps=1e-5):
    x, w, b = inputs["x"], inputs.get("weight"), inputs.get("bias")
    axes = tuple(range(x.ndim - len(inputs["normalized_shape"]), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    y = (x - mean) / (x.std(axis=axes, keepdims=True) + x.dtype.type(eps))
    if w is not None:
        y = w * y
    if b is not None:
        y = y + b
    return y
