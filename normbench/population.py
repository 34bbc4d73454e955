"""PreciseBN: population statistics accumulated over many batches.

``PopulationStats.update(x, axis=1)`` computes each batch's per-channel (count, mean, M2) with the chosen
backend and merges them in float64:

* ``weighting="samples"``: Chan's parallel formula, so ``mean`` and ``var()`` are exactly the statistics of
  the concatenation of every batch seen, whatever the batch sizes.
* ``weighting="batches"``: every batch has equal weight (the PreciseBN formula):
  ``mu_pop = E[mu_B]`` and ``var_pop = E[mu_B**2 + var_B] - E[mu_B]**2`` (var_B the biased batch variance),
  computed as ``E[var_B] + Var[mu_B]``, with the batch means merged by Chan's formula (one observation per batch):
  the textbook difference cancels on offset data (every digit lost at an offset of 1e8).

``var(correction=c)`` scales the population's biased variance by ``n/(n - c)``, n the number of samples seen,
so the two weightings agree for equal-size batches for every correction.
"""
from __future__ import annotations

import numpy as np

from . import _checks, registry

WEIGHTINGS = ("samples", "batches")


class PopulationStats:
    def __init__(self, num_features, *, weighting="samples"):
        self.num_features = _checks.positive_int("num_features", num_features)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={weighting!r}; expected one of {list(WEIGHTINGS)}")
        self.weighting = weighting
        self.reset()

    def reset(self):
        C = self.num_features
        self.count = 0  # samples seen per channel
        self.num_batches = 0
        self._mean = np.zeros(C)  # samples: mean of every sample;  batches: mean of the batch means
        self._m2 = np.zeros(C)  # samples: their M2;              batches: M2 of the batch means
        self._vsum = np.zeros(C)  # batches: sum of the batches' biased variances (samples: unused, 0)

    def update(self, x, axis=1, *, backend=None):
        """Merge one batch (N, C, *spatial) (``axis=1``) or (N, *spatial, C) (``axis=-1``). Empty batches are
        ignored. Returns self."""
        x = _checks.array("x", x, min_ndim=2, what="(N, C, *spatial); a 1-D input is an error")
        ax = _checks.channel_axis(axis, x)
        if x.shape[ax] != self.num_features:
            raise ValueError(f"x has {x.shape[ax]} channels on axis={axis}; expected num_features="
                             f"{self.num_features}")
        n = x.size // self.num_features
        if n == 0:
            return self
        backend = registry.pick_backend(x, backend, "batch_norm")
        module = registry._backend_module(backend, "batch")
        count, mean, m2 = module.channel_moments(x, 1 if ax == 1 or x.ndim == 2 else -1)
        return self._merge_moments(int(count), np.asarray(mean, np.float64), np.asarray(m2, np.float64))

    def _chan(self, n_self, n_other, mean, m2):
        """Chan's merge of (n_other, mean, m2) into (n_self, self._mean, self._m2)."""
        total = n_self + n_other
        delta = mean - self._mean
        finite = np.isfinite(mean) & np.isfinite(self._mean)  # else IEEE's sum, m2 NaN (as _moments.chan_merge)
        with np.errstate(invalid="ignore"):
            self._mean = np.where(finite, self._mean + delta * (n_other / total), self._mean + mean)
            self._m2 = np.where(finite, self._m2 + m2 + delta * delta * (n_self * n_other / total), np.nan)

    def merge_moments(self, count, mean, m2, num_batches=1):
        """Merge per-channel moments of ``count`` samples: one batch, or for "samples" the concatenation of
        ``num_batches`` batches. ``mean`` and ``m2``: float arrays of shape (num_features,), ``m2 >= 0``.
        Arguments are checked before anything changes."""
        count = _checks.integer("count", count, "a non-negative integer (samples per channel)")
        num_batches = _checks.integer("num_batches", num_batches, "a positive integer")
        if count < 0 or num_batches < 1:
            raise ValueError(f"count={count}, num_batches={num_batches}; expected count >= 0 and num_batches >= 1")
        # float64 NumPy copies (device arrays come to the host: the accumulator lives there)
        mean = _checks.host_float64(_checks.stats("mean", mean, (self.num_features,)))
        m2 = _checks.host_float64(_checks.stats("m2", m2, (self.num_features,)))
        if np.any(m2 < 0):  # NaN passes: it stays in its channel
            raise ValueError("m2 has negative entries; expected sums of squared deviations (>= 0)")
        return self._merge_moments(count, mean, m2, num_batches)

    def _merge_moments(self, count, mean, m2, num_batches=1):
        """:meth:`merge_moments` on arguments known to be well formed (a backend's moments, another
        accumulator's state)."""
        if count == 0:
            return self
        if self.weighting == "samples":
            self._chan(self.count, count, mean, m2)
        elif num_batches != 1:
            raise ValueError(f"num_batches={num_batches}; with weighting='batches' moments merge one batch at a "
                             "time (merge() combines accumulators)")
        else:
            self._chan(self.num_batches, 1, mean, 0.0)  # the batch mean: one more observation
            self._vsum = self._vsum + m2 / count
        self.count += count
        self.num_batches += num_batches
        return self

    def merge(self, other: "PopulationStats"):
        """Merge another accumulator of the same kind (e.g. from another process)."""
        if not isinstance(other, PopulationStats):
            raise TypeError(f"other has type {type(other).__name__}; expected a normbench.PopulationStats")
        if other.num_features != self.num_features or other.weighting != self.weighting:
            raise ValueError("can only merge PopulationStats with the same num_features and weighting")
        if other.count == 0:
            return self
        if self.weighting == "samples":
            return self._merge_moments(other.count, other._mean, other._m2, other.num_batches)
        self._chan(self.num_batches, other.num_batches, other._mean, other._m2)
        self._vsum = self._vsum + other._vsum
        self.count += other.count
        self.num_batches += other.num_batches
        return self

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            return np.full(self.num_features, np.nan)
        return self._mean.copy()

    def var(self, correction=0) -> np.ndarray:
        correction = _checks.integer("correction", correction, "a non-negative integer")
        if correction < 0:
            raise ValueError(f"correction={correction}; expected a non-negative integer")
        if self.count <= correction:
            return np.full(self.num_features, np.nan)
        if self.weighting == "samples":
            return self._m2 / (self.count - correction)
        biased = (self._vsum + self._m2) / self.num_batches  # E[var_B] + Var[mu_B]
        return biased * (self.count / (self.count - correction))
