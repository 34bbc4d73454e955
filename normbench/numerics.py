"""The numerical options that researchers argue about, as explicit, validated choices.

Every function that computes statistics accepts ``**numerics``:

* ``eps_placement``: ``"inside"`` -> ``1/sqrt(var + eps)`` (PyTorch, the default) or ``"outside"`` ->
  ``1/(sqrt(var) + eps)`` (common in tutorials).
* ``correction``: the divisor of the normalising variance is ``n - correction`` (0: biased, PyTorch's
  definition; 1: unbiased).  It must be smaller than ``n``.  Batch norm's *running* variance always uses
  ``n - 1``, as PyTorch.
* ``variance``: the algorithm that computes the statistics: ``"two_pass"``, ``"welford"``, ``"naive"``
  (sum and sum of squares; kept on purpose for the accuracy study, clamped at 0) or ``"shifted"`` (one pass
  around a shift taken from the data: the middle one of each range's first, middle and last values).
* ``accumulate``: ``None`` (the backend's default for the dtype), ``"float32"`` or ``"float64"``.

The defaults keep PyTorch's *definitions* and use this project's most accurate fast algorithm: a shifted
one-pass variance with float64 accumulators (see docs/numerics.md for the measurements behind the choice).
The reference backend ignores ``variance`` and ``accumulate``: it is the exact oracle.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _checks

EPS_PLACEMENTS = ("inside", "outside")
VARIANCE_ALGORITHMS = ("two_pass", "welford", "naive", "shifted")
ACCUMULATORS = (None, "float32", "float64")
NUMERICS_OPTIONS = ("eps_placement", "correction", "variance", "accumulate")

DEFAULT_EPS_PLACEMENT = "inside"
DEFAULT_CORRECTION = 0
DEFAULT_VARIANCE = "shifted"
#: accumulator used when ``accumulate=None``, per input dtype
DEFAULT_ACCUMULATE = {np.dtype(np.float32): "float64", np.dtype(np.float64): "float64"}

# Integer codes passed to compiled kernels: options are runtime values, not compile-time
# specialisations, so that a cold test run compiles few signatures.
EPS_CODE = {"inside": 0, "outside": 1}
VARIANCE_CODE = {name: i for i, name in enumerate(VARIANCE_ALGORITHMS)}


class Numerics(NamedTuple):
    """Validated numerics options (``accumulate`` stays ``None`` until resolved for a dtype)."""

    eps_placement: str = DEFAULT_EPS_PLACEMENT
    correction: int = DEFAULT_CORRECTION
    variance: str = DEFAULT_VARIANCE
    accumulate: str | None = None

    def accumulator(self, dtype) -> np.dtype:
        """The accumulator dtype to use for inputs of ``dtype``."""
        name = self.accumulate or DEFAULT_ACCUMULATE[np.dtype(dtype)]
        return np.dtype(name)

    @property
    def eps_code(self) -> int:
        return EPS_CODE[self.eps_placement]

    @property
    def variance_code(self) -> int:
        return VARIANCE_CODE[self.variance]


DEFAULT = Numerics()


def resolve(numerics: dict) -> Numerics:
    """Validate ``**numerics`` keyword arguments and return a :class:`Numerics`.

    Raises ``TypeError`` for an unknown option name or a value of the wrong type and ``ValueError`` for a bad
    value, naming the option.
    """
    if not numerics:  # the common call: defaults (this runs on every call, so it is kept cheap)
        return DEFAULT
    unknown = sorted(set(numerics) - set(NUMERICS_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown keyword argument(s) {unknown}; numerics options are {list(NUMERICS_OPTIONS)}"
            " (plus the function's own keywords and backend=)"
        )
    for name in ("eps_placement", "variance"):  # a wrong type is a TypeError (docs/api.md), a bad string a ValueError
        if name in numerics and not isinstance(numerics[name], str):
            raise TypeError(f"{name}={numerics[name]!r}; expected a string")
    eps_placement = numerics.get("eps_placement", DEFAULT_EPS_PLACEMENT)
    if eps_placement not in EPS_PLACEMENTS:
        raise ValueError(f"eps_placement={eps_placement!r}; expected one of {list(EPS_PLACEMENTS)}")
    correction = numerics.get("correction", DEFAULT_CORRECTION)
    expected = "a non-negative integer (0 biased, 1 unbiased)"
    if _checks.integer("correction", correction, expected) < 0:
        raise ValueError(f"correction={correction!r}; expected {expected}")
    variance = numerics.get("variance", DEFAULT_VARIANCE)
    if variance not in VARIANCE_ALGORITHMS:
        raise ValueError(f"variance={variance!r}; expected one of {list(VARIANCE_ALGORITHMS)}")
    accumulate = numerics.get("accumulate", None)
    if accumulate is not None and not isinstance(accumulate, str):
        if not isinstance(accumulate, (type, np.dtype)) or isinstance(accumulate, type) and accumulate is bool:
            raise TypeError(f"accumulate={accumulate!r}; expected None, a string or a NumPy dtype")
        accumulate = np.dtype(accumulate).name
    if accumulate not in ACCUMULATORS:
        raise ValueError(f"accumulate={accumulate!r}; expected one of {list(ACCUMULATORS)}")
    return Numerics(eps_placement, int(correction), variance, accumulate)


def check_eps(eps, name: str = "eps") -> float:
    """eps must be a finite or +inf non-negative real number (NaN and negatives are errors)."""
    value = _checks.real(name, eps, "a non-negative real number")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name}={eps!r}; expected a non-negative real number")
    return value


def check_correction(opts: Numerics, n: int, what: str) -> None:
    """The normalising variance divides by ``n - correction``, which must be positive."""
    if n > 0 and opts.correction >= n:
        raise ValueError(
            f"correction={opts.correction} must be smaller than the number of values per {what} (n={n})"
        )


def rstd_from_var(var, eps, eps_placement):
    """1/sqrt(var+eps) or 1/(sqrt(var)+eps); works on NumPy scalars and arrays of any float dtype."""
    if eps_placement == "inside":
        return 1.0 / np.sqrt(var + eps)
    return 1.0 / (np.sqrt(var) + eps)
