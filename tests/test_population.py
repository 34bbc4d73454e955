"""PreciseBN (PopulationStats): the two weightings against statistics computed directly with NumPy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normbench as nb
from normbench import registry

BACKENDS = [b for b in registry.available_backends("batch_norm") if b != "cuda"]


def batches(rng, sizes, C, axis, spatial=(3,), offset=0.0):
    out = []
    for n in sizes:
        col = np.arange(C).reshape((C,) + (1,) * len(spatial))  # channels differ in scale and mean
        x = rng.standard_normal((n, C, *spatial)) * (1 + col) + offset + col
        out.append(x if axis == 1 else np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    return out


def per_channel(xs, axis):
    """All samples of every batch, as (count, C)."""
    return np.concatenate([(x if axis == 1 else np.moveaxis(x, -1, 1)).swapaxes(0, 1).reshape(x.shape[axis], -1).T
                           for x in xs])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [1, -1])
@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_samples_weighting_is_the_concatenation(backend, axis, sizes, seed):
    rng = np.random.default_rng(seed)
    xs = batches(rng, sizes, 3, axis, offset=1e3)
    stats = nb.PopulationStats(3)
    for x in xs:
        stats.update(x, axis=axis, backend=backend)
    allx = per_channel(xs, axis)
    assert stats.count == allx.shape[0]
    if allx.shape[0] == 0:
        assert np.isnan(stats.mean).all()
        return
    np.testing.assert_allclose(stats.mean, allx.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats.var(), allx.var(axis=0), rtol=1e-10)
    if allx.shape[0] > 1:
        np.testing.assert_allclose(stats.var(correction=1), allx.var(axis=0, ddof=1), rtol=1e-10)
    else:
        assert np.isnan(stats.var(correction=1)).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [0.0, 1e8])
def test_batches_weighting_formula(backend, offset, rng):
    """mu_pop = E[mu_B], var_pop = E[mu_B^2 + var_B] - E[mu_B]^2 (var_B biased), unequal batch sizes; at an
    offset of 1e8 the textbook difference cancels (it gave 0), the law of total variance does not."""
    xs = batches(rng, (2, 5, 9), 2, 1, spatial=(2, 2), offset=offset)
    stats = nb.PopulationStats(2, weighting="batches")
    for x in xs:
        stats.update(x, backend=backend)
    mus = np.array([x.mean(axis=(0, 2, 3)) for x in xs])
    vars_ = np.array([x.var(axis=(0, 2, 3)) for x in xs])
    mu = mus.mean(axis=0)
    np.testing.assert_allclose(stats.mean, mu, rtol=1e-13)
    rtol = 1e-12 if offset == 0 else 1e-6  # data at 1e8 carry ~1e-8 of rounding per value
    np.testing.assert_allclose(stats.var(), vars_.mean(axis=0) + mus.var(axis=0), rtol=rtol)
    if offset == 0:
        np.testing.assert_allclose(stats.var(), (mus ** 2 + vars_).mean(axis=0) - mu ** 2, rtol=1e-12)
    assert stats.num_batches == 3
    # and it differs from the sample weighting for unequal sizes
    s = nb.PopulationStats(2)
    for x in xs:
        s.update(x, backend=backend)
    assert np.abs(s.mean - stats.mean).max() > 1e-6


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("offset", [-50.0, 1e8])
def test_weightings_agree_for_equal_batches(axis, correction, offset, rng):
    xs = batches(rng, (4, 4, 4, 4), 3, axis, spatial=(2, 3), offset=offset)
    a, b = nb.PopulationStats(3), nb.PopulationStats(3, weighting="batches")
    for x in xs:
        a.update(x, axis=axis)
        b.update(x, axis=axis)
    rtol = 1e-10 if abs(offset) < 1e3 else 1e-6
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-13)
    np.testing.assert_allclose(a.var(correction), b.var(correction), rtol=rtol)
    np.testing.assert_allclose(a.var(correction), per_channel(xs, axis).var(axis=0, ddof=correction), rtol=rtol)


@pytest.mark.parametrize("weighting", ["samples", "batches"])
def test_merge_equals_one_accumulator(weighting, rng):
    xs = batches(rng, (3, 7, 2, 5), 2, 1)
    whole, left, right = (nb.PopulationStats(2, weighting=weighting) for _ in range(3))
    for x in xs:
        whole.update(x)
    for x in xs[:1]:
        left.update(x)
    for x in xs[1:]:
        right.update(x)
    left.merge(right)
    assert (left.count, left.num_batches) == (whole.count, whole.num_batches)
    np.testing.assert_allclose(left.mean, whole.mean, rtol=1e-13)
    np.testing.assert_allclose(left.var(1), whole.var(1), rtol=1e-12)
    left.merge(nb.PopulationStats(2, weighting=weighting))  # merging an empty accumulator changes nothing
    np.testing.assert_allclose(left.mean, whole.mean, rtol=1e-13)


def test_precise_bn_matches_torch_definition_on_a_stream(rng):
    """The exact population statistics, not an exponential average: independent of batch order."""
    xs = batches(rng, (1, 8, 3), 2, 1)
    a, b = nb.PopulationStats(2), nb.PopulationStats(2)
    for x in xs:
        a.update(x)
    for x in xs[::-1]:
        b.update(x)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-13)
    np.testing.assert_allclose(a.var(), b.var(), rtol=1e-12)


def test_empty_and_errors(rng):
    s = nb.PopulationStats(3)
    assert np.isnan(s.mean).all() and np.isnan(s.var()).all()
    s.update(np.empty((0, 3, 4)))
    assert s.count == 0 and s.num_batches == 0
    with pytest.raises(ValueError, match="num_features=3"):
        s.update(rng.standard_normal((2, 4, 3)))
    with pytest.raises(ValueError, match="axis"):
        s.update(rng.standard_normal((2, 3)), axis=0)
    with pytest.raises(ValueError, match="rank"):
        s.update(np.ones(3))
    with pytest.raises(TypeError, match="dtype"):
        s.update(np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="num_features"):
        nb.PopulationStats(0)
    with pytest.raises(ValueError, match="weighting"):
        nb.PopulationStats(3, weighting="ema")
    with pytest.raises(ValueError, match="same num_features and weighting"):
        s.merge(nb.PopulationStats(3, weighting="batches"))
    with pytest.raises(ValueError, match="same num_features"):
        s.merge(nb.PopulationStats(4))
    with pytest.raises(ValueError, match="correction"):
        s.var(correction=-1)
    assert s.count == 0  # nothing was merged by the failed calls


def test_merge_moments_checks_before_changing_anything(rng):
    """merge_moments is public: a count that is not a non-negative integer, arrays not of shape (C,), negative M2
    and a non-accumulator to merge are errors naming the argument, and a failed call leaves the state as it
    was (a wrong M2 shape used to change the mean and not the count)."""
    s = nb.PopulationStats(3).update(rng.standard_normal((4, 3)))
    state = (s.count, s.num_batches, s.mean, s.var())
    good = np.zeros(3)
    bad_calls = [
        ((-2, good, good), ValueError, "count=-2"),
        ((2.5, good, good), TypeError, "count=2.5"),
        ((True, good, good), TypeError, "count=True"),
        ((2, good, np.zeros(4)), ValueError, "m2 has shape"),
        ((2, np.ones(1), good), ValueError, "mean has shape"),
        ((2, good, np.full(3, -0.25)), ValueError, "m2 has negative"),
        ((2, [0.0, 0.0, 0.0], good), TypeError, "mean has type list"),
    ]
    for args, error, words in bad_calls:
        with pytest.raises(error, match=words):
            s.merge_moments(*args)
    with pytest.raises(ValueError, match="num_batches"):
        s.merge_moments(2, good, good, num_batches=-1)
    for other in ("not stats", None):
        with pytest.raises(TypeError, match="expected a normbench.PopulationStats"):
            s.merge(other)
    after = (s.count, s.num_batches, s.mean, s.var())
    assert after[:2] == state[:2]
    np.testing.assert_array_equal(after[2], state[2])
    np.testing.assert_array_equal(after[3], state[3])
    # a well-formed call still merges (closed form: two samples at 1, M2 0, into the empty accumulator)
    t = nb.PopulationStats(3).merge_moments(np.int64(2), np.ones(3, np.float32), np.zeros(3))
    assert t.count == 2 and np.array_equal(t.mean, np.ones(3)) and np.array_equal(t.var(), np.zeros(3))
