"""normbench: normalization layers, forward and backward, as a float64 reference, Numba CPU kernels and
numba.cuda kernels that agree; plus the suite that measures how fast and how accurate they are.

The functional API (stateless, NumPy arrays in and out, PyTorch ``native_*``-style returns) is re-exported
here; see docs/api.md.
"""
from .functional import (
    batch_norm_backward,
    batch_norm_forward,
    frozen_batch_norm_backward,
    frozen_batch_norm_forward,
    fused_add_norm_backward,
    fused_add_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    local_response_norm_backward,
    local_response_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
)
from .numerics import Numerics
from .population import PopulationStats

__version__ = "0.1.0"

__all__ = [
    "batch_norm_forward", "batch_norm_backward", "layer_norm_forward", "layer_norm_backward",
    "rms_norm_forward", "rms_norm_backward", "group_norm_forward", "group_norm_backward",
    "instance_norm_forward", "instance_norm_backward", "frozen_batch_norm_forward", "frozen_batch_norm_backward",
    "local_response_norm_forward", "local_response_norm_backward", "fused_add_norm_forward",
    "fused_add_norm_backward", "PopulationStats", "Numerics",
]
