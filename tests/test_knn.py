"""Tests for ``jaxkl.knn_kl``, the k-nearest-neighbour KL estimator.

The reference is a plain ``scipy.spatial.cKDTree`` implementation of the same
estimators (Wang, Kulkarni & Verdú 2009), with the same rule for zero
distances; the data are float32, cast to float64 for the reference.
"""

import functools
import math
import warnings

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.special import digamma

import jaxkl
from jaxkl import _knn

ESTIMATORS = ("wkv", "adaptive")
F32_EPS = float(np.finfo(np.float32).eps)
# Most tests here use samples with deliberate duplicates (the floor rule);
# the duplicate warning itself is tested below with pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore:Heavily duplicated:RuntimeWarning")


def reference_knn_kl(x, y, k=1, estimator="wkv", dtype=np.float32):
  """cKDTree implementation of both estimators, in float64.

  Distances from ``x_i`` below ``max(eps / 4 * max_j |x_ij|, sqrt(tiny) * 2^e)``
  (``eps``, ``tiny`` of ``dtype``; ``2^e`` the power of two at or below the
  largest |coordinate|, ``unit``) count as that floor, as in ``knn_kl``.
  ``rho_k(i)`` is the (k+1)-th distance from ``x_i`` to ``x``
  (``x_i`` itself is one of the zeros). Adaptive: the ball of radius
  ``max(rho_k, nu_k)`` holds ``l_i`` points of ``x`` (``x_i`` excluded) and
  ``k_i`` of ``y``; the term is ``d log(nu_{k_i} / rho_{l_i}) + psi(l_i) -
  psi(k_i)`` (the estimated ``log p(x_i) - log q(x_i)``).
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  (n, d), m = x.shape, y.shape[0]
  info = jnp.finfo(dtype)
  floor = np.maximum(
    float(info.eps) / 4 * np.abs(x).max(axis=1),
    math.sqrt(float(info.tiny)) * unit(x, y),
  )
  tree_x, tree_y = cKDTree(x), cKDTree(y)
  rho = np.maximum(tree_x.query(x, k=[k + 1])[0][:, 0], floor)
  nu = np.maximum(tree_y.query(x, k=[k])[0][:, 0], floor)
  if estimator == "wkv":
    return d * np.mean(np.log(nu / rho)) + math.log(m / (n - 1))
  terms = []
  for i in range(n):
    radius = max(rho[i], nu[i])  # floor[i] or more
    # query_ball_point compares squared distances to a rounded radius**2, and
    # np.linalg.norm rounds differently from cKDTree (the point at distance
    # `radius` can come out a few ulps above it): widen the radius a little.
    wide = radius * (1 + 1e-9)
    near_x = [j for j in tree_x.query_ball_point(x[i], wide) if j != i]
    near_y = tree_y.query_ball_point(x[i], wide)
    dist_x = np.linalg.norm(x[near_x] - x[i], axis=1)
    dist_y = np.linalg.norm(y[near_y] - x[i], axis=1)
    dist_x = np.maximum(dist_x[dist_x <= wide], floor[i])
    dist_y = np.maximum(dist_y[dist_y <= wide], floor[i])
    terms.append(
      d * math.log(dist_y.max() / dist_x.max())
      + digamma(dist_x.size)
      - digamma(dist_y.size)
    )
  return np.mean(terms) + math.log(m / (n - 1))


def unit(x, y):
  """2^e <= max |coordinate| of x and y < 2^(e + 1) (1 if all are 0), by
  math.frexp: the samples' scale, relative to which knn_kl floors."""
  largest = max(float(np.abs(x).max()), float(np.abs(y).max()))
  return 2.0 ** (math.frexp(largest)[1] - 1) if largest > 0 else 1.0


def samples_with_duplicates(d, seed, n=240, m=190):
  """Float32 samples of N(0, I) and N(0.5, 1.3^2 I) with repeated points.

  A point repeated in x (rho = 0 up to k = 3), one repeated in y (nu = 0 up
  to k = 3), one in both, and repeats inside y.
  """
  rng = np.random.default_rng([d, seed])
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (0.5 + 1.3 * rng.normal(size=(m, d))).astype(np.float32)
  x[[3, 4, 7]] = x[2]  # x_2 has three duplicates in x
  y[[10, 11, 12]] = x[1]  # x_1 appears three times in y
  x[9] = x[8]  # x_8: once more in x ...
  y[[20, 21]] = x[8]  # ... and twice in y
  y[[30, 31]] = y[29]  # repeats inside y only
  return x, y


def gaussian_kl(mean, cov):
  """KL(N(0, I) || N(mean, cov))."""
  d = len(mean)
  inv = np.linalg.inv(cov)
  return 0.5 * (np.trace(inv) + mean @ inv @ mean - d + np.log(np.linalg.det(cov)))


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("d", [1, 3, 5])
def test_matches_ckdtree_reference(d, k, estimator):
  """Equal to the cKDTree reference to float32 rounding, with duplicates.

  Each term is d/2 times a difference of logs of squared distances that
  float32 computes to a few ulps: the mean is within a few d * eps32.
  """
  for seed in range(2):
    x, y = samples_with_duplicates(d, seed)
    expected = reference_knn_kl(x, y, k, estimator)
    got = jaxkl.knn_kl(x, y, k=k, estimator=estimator)
    assert got.dtype == jnp.float32
    assert np.isfinite(expected)
    np.testing.assert_allclose(
      float(got), expected, rtol=0, atol=8 * d * F32_EPS + 1e-6 * abs(expected)
    )


def test_matches_ckdtree_reference_float64(x64, k=3, estimator="adaptive"):
  """Under x64, float64 inputs give float64 estimates equal to ~1e-13 (the
  adaptive estimator runs every step of "wkv" and more)."""
  x, y = samples_with_duplicates(3, seed=5)
  x = x.astype(np.float64) + 1e-3 * np.random.default_rng(1).normal(size=x.shape)
  y = y.astype(np.float64)
  y[[10, 11, 12]] = x[1]  # keep exact duplicates after the perturbation
  x[[3, 4, 7]] = x[2]
  x[9] = x[8]
  y[[20, 21]] = x[8]
  expected = reference_knn_kl(x, y, k, estimator, dtype=np.float64)
  got = jaxkl.knn_kl(x, y, k=k, estimator=estimator)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(float(got), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gaussian_shift_1d(estimator):
  """N(0, 1) vs N(2, 1) (KL = 2) at n = m = 1e4, k = 1, five seeds.

  Spread: the cKDTree implementation gives 1.98 +- 0.07; knn_kl over seeds
  0-19 gave 1.979 +- 0.070 ("wkv", |error| <= 0.135) and 1.992 +- 0.074
  ("adaptive", <= 0.146). Each seed must be within 0.3 of 2 (over 4 sd),
  their mean within 0.15 (4 sd of a 5-seed mean, 0.031, plus the 0.02 bias).
  Seeds 0-4 give 1.865, 2.114, 1.967, 2.036, 1.939 ("wkv", mean 1.984) and
  1.878, 2.127, 1.986, 2.068, 1.954 ("adaptive", mean 2.002).
  """
  estimates = []
  for seed in range(5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(10_000, 1)).astype(np.float32)
    y = (2.0 + rng.normal(size=(10_000, 1))).astype(np.float32)
    estimates.append(float(jaxkl.knn_kl(x, y, estimator=estimator)))
  estimates = np.array(estimates)
  assert np.all(np.abs(estimates - 2.0) < 0.3), estimates
  assert abs(estimates.mean() - 2.0) < 0.15, estimates


def test_error_shrinks_with_sample_size_2d():
  """Mean |error| over 6 seeds falls as n = m grows, 2-D Gaussian pair.

  P = N(0, I), Q = N((1, 0), [[1, .5], [.5, 1]]), KL = 0.8562, k = 1,
  "wkv". Observed mean absolute errors over these seeds (n = 500, 2000,
  8000): 0.188, 0.109, 0.073 (8 seeds: 0.200, 0.100, 0.067). Beyond
  n = 2000 all of it is the estimator's negative bias, which decreases
  steadily ("adaptive": 0.156, 0.104, 0.063). Asserted: strictly decreasing,
  and at n = 8000 less than 0.6 times the error at n = 500.
  """
  estimator = "wkv"
  mean = np.array([1.0, 0.0])
  cov = np.array([[1.0, 0.5], [0.5, 1.0]])
  true_kl = gaussian_kl(mean, cov)
  chol = np.linalg.cholesky(cov)
  mean_abs_error = []
  for n in (500, 2000, 8000):
    errors = []
    for seed in range(6):
      rng = np.random.default_rng([n, seed])
      x = rng.normal(size=(n, 2)).astype(np.float32)
      y = (mean + rng.normal(size=(n, 2)) @ chol.T).astype(np.float32)
      errors.append(float(jaxkl.knn_kl(x, y, estimator=estimator)) - true_kl)
    mean_abs_error.append(np.mean(np.abs(errors)))
  assert mean_abs_error[0] > mean_abs_error[1] > mean_abs_error[2], mean_abs_error
  assert mean_abs_error[2] < 0.6 * mean_abs_error[0], mean_abs_error


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_chunk_size_does_not_change_the_estimate(estimator, k=3):
  """n = 240 with duplicates, in one chunk (None: automatic), chunks of 48
  (divides n) or of 100 (does not): bitwise equal in 1-D; in 3-D equal up to
  the last bit of the squared distances (XLA may contract multiply-adds into
  FMAs differently for different loop shapes)."""
  x, y = samples_with_duplicates(1, seed=0)
  values = [
    float(jaxkl.knn_kl(x, y, k=k, estimator=estimator, chunk_size=size))
    for size in (None, 48)
  ]
  assert values[0] == values[1], values
  x, y = samples_with_duplicates(3, seed=0)
  values = [
    float(jaxkl.knn_kl(x, y, k=k, estimator=estimator, chunk_size=size))
    for size in (None, 100)
  ]
  np.testing.assert_allclose(values[1], values[0], rtol=0, atol=12 * F32_EPS)


def test_duplicates_rule_exact_value():
  """Only x_i's own entry is excluded; zero distances become the floor.

  x = [1, 1, 4], y = [2, 3]: x_0 and x_1 have rho_1 = 0 -> floor
  eps32 / 4 * 1 (not 3, which excluding every zero distance would give) and
  nu_1 = 1; x_2 has rho_1 = 3, nu_1 = 1.
  """
  x = np.array([[1.0], [1.0], [4.0]], np.float32)
  y = np.array([[2.0], [3.0]], np.float32)
  floor = F32_EPS / 4
  expected = (2 * math.log(1.0 / floor) + math.log(1.0 / 3.0)) / 3 + math.log(2 / 2)
  np.testing.assert_allclose(float(jaxkl.knn_kl(x, y)), expected, rtol=1e-6)
  np.testing.assert_allclose(reference_knn_kl(x, y), expected, rtol=1e-12)


def test_floor_does_not_touch_distinct_points_1d():
  """Near 0 the float spacing is far below eps * max|x|: the floor follows
  the query point, so close distinct points keep their distances."""
  x = np.array([[1e-3], [1e-3 + 1e-9], [-2.0], [5.0]], np.float32)
  y = np.array([[0.5], [-1.0], [3.0]], np.float32)
  assert x[0, 0] != x[1, 0]
  got = float(jaxkl.knn_kl(x, y))
  np.testing.assert_allclose(got, reference_knn_kl(x, y), rtol=1e-6)
  rho = abs(float(x[1, 0]) - float(x[0, 0]))
  terms = [
    math.log(abs(0.5 - float(x[0, 0])) / rho),
    math.log(abs(0.5 - float(x[1, 0])) / rho),
    math.log(1.0 / (2.0 + float(x[0, 0]))),
    math.log(2.0 / (5.0 - float(x[1, 0]))),
  ]
  np.testing.assert_allclose(got, np.mean(terms) + math.log(3 / 3), rtol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_all_points_identical_is_finite(estimator):
  """Every distance 0: all radii are the floor, so the distance terms vanish.

  "wkv" gives log(m / (n - 1)); "adaptive" counts every point in each ball,
  l_i = n - 1 and k_i = m, and adds psi(n - 1) - psi(m).
  """
  for dim in (1, 2):  # the sorted path (1-D) and the brute force
    x = jnp.full((5, dim), 3.0)
    y = jnp.full((3, dim), 3.0)
    expected = math.log(3 / 4)
    if estimator == "adaptive":
      expected += float(digamma(4) - digamma(3))
    # knn_kl itself refuses (every point of x is in y); the private entry
    # point computes the value without the check.
    value, duplicates = _knn._estimate(x, y, k=2, estimator=estimator, chunk_size=None)
    np.testing.assert_allclose(float(value), expected, rtol=0, atol=1e-6)
    assert duplicates.tolist() == [5, 5]
    with pytest.raises(ValueError, match="5 of 5 points of `x` also appear"):
      jaxkl.knn_kl(x, y, k=2, estimator=estimator)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_invariant_to_scaling_with_duplicates(estimator):
  """The floor scales with the data: x -> 2^10 x leaves the estimate equal
  (the scaling is exact in floating point)."""
  x, y = samples_with_duplicates(3, seed=1)
  base = float(jaxkl.knn_kl(x, y, k=3, estimator=estimator))
  scaled = float(jaxkl.knn_kl(1024 * x, 1024 * y, k=3, estimator=estimator))
  np.testing.assert_allclose(scaled, base, rtol=0, atol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_give_nan(value, estimator):
  """In x or in y (where a point at NaN or infinity would otherwise just
  never be a neighbour)."""
  x, y = samples_with_duplicates(3, seed=0)
  bad_x, bad_y = x.copy(), y.copy()
  bad_x[3, 0] = value
  bad_y[5, 2] = value
  assert np.isnan(float(jaxkl.knn_kl(bad_x, y, estimator=estimator)))
  assert np.isnan(float(jaxkl.knn_kl(x, bad_y, estimator=estimator)))


def test_jit_and_vmap(k=3, estimator="adaptive"):
  """Under jit (static k, estimator, chunk_size) and vmap over pairs."""
  x, y = samples_with_duplicates(3, seed=3)
  eager = float(jaxkl.knn_kl(x, y, k=k, estimator=estimator))
  jitted = jax.jit(jaxkl.knn_kl, static_argnames=("k", "estimator", "chunk_size"))
  got = jitted(x, y, k=k, estimator=estimator, chunk_size=50)
  np.testing.assert_allclose(float(got), eager, rtol=0, atol=1e-6)
  xs, ys = np.stack([x, 2 * x]), np.stack([y, 2 * y])
  batched = jax.vmap(lambda a, b: jaxkl.knn_kl(a, b, k=k, estimator=estimator))(xs, ys)
  assert batched.shape == (2,)
  np.testing.assert_allclose(batched, eager, rtol=0, atol=1e-5)


def test_dtypes(x64):
  """float32 -> float32, float64 -> float64 (x64), bfloat16 -> bfloat16
  (computed in float32 on its exact values, with float32's floor: the
  estimate of the float32 copy, see test_16_bit_samples_are_their_float32_values)."""
  x, y = samples_with_duplicates(3, seed=0)
  assert jaxkl.knn_kl(x, y).dtype == jnp.float32
  got = jaxkl.knn_kl(
    x.astype(np.float64), y.astype(np.float64), k=3, estimator="adaptive"
  )
  assert got.dtype == jnp.float64
  half = jaxkl.knn_kl(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
  x16, y16 = (np.asarray(jnp.asarray(v, jnp.bfloat16), np.float64) for v in (x, y))
  expected = reference_knn_kl(x16, y16, dtype=jnp.float32)
  np.testing.assert_allclose(float(half), expected, rtol=1e-2)


def test_accepts_nested_lists():
  x = [[0.0], [1.0], [3.0]]
  y = [[0.5], [2.0], [4.0], [6.0]]
  np.testing.assert_allclose(float(jaxkl.knn_kl(x, y)), 0.0, atol=1e-6)


X = np.zeros((6, 2), np.float32)
Y = np.zeros((4, 2), np.float32)


@pytest.mark.parametrize(
  "args, kwargs, error, match",
  [
    ((X.astype(np.int32), Y), {}, TypeError, "`x` must have a real"),
    ((X, Y > 0), {}, TypeError, "`y` must have a real"),
    ((X[:, 0], Y), {}, ValueError, r"`x` must be a 2-D.*\(6,\)"),
    ((X, Y[None]), {}, ValueError, r"`y` must be a 2-D.*\(1, 4, 2\)"),
    ((X, Y[:, :1]), {}, ValueError, r"same dimension.*\(6, 2\).*\(4, 1\)"),
    ((X[:, :0], Y[:, :0]), {}, ValueError, "at least one coordinate"),
    (
      (X[:3], Y),
      {"k": 3},
      ValueError,
      r"k \+ 1 = 4 samples .*; got 3 \(shape \(3, 2\)\)",
    ),
    ((X, Y[:2]), {"k": 3}, ValueError, "at least k = 3 samples; got 2"),
    ((X, Y), {"k": 0}, ValueError, "`k` must be a positive int; got 0"),
    ((X, Y), {"k": 1.0}, TypeError, "`k` must be a positive int"),
    ((X, Y), {"k": True}, TypeError, "`k` must be a positive int"),
    ((X, Y), {"k": jnp.array(1)}, TypeError, "`k` must be a positive int"),
    ((X, Y), {"estimator": "kl"}, ValueError, r"`estimator` must be one"),
    ((X, Y), {"estimator": None}, TypeError, r"`estimator` must be a str"),
    ((X, Y), {"chunk_size": 0}, ValueError, "`chunk_size` must be a pos"),
    ((X, Y), {"chunk_size": 2.5}, TypeError, "`chunk_size` must be a pos"),
  ],
)
def test_errors(args, kwargs, error, match):
  with pytest.raises(error, match=match):
    jaxkl.knn_kl(*args, **kwargs)


def test_traced_k_is_rejected():
  """k must be static: a traced k raises the TypeError at trace time."""
  with pytest.raises(TypeError, match="`k` must be a positive int"):
    jax.jit(jaxkl.knn_kl)(X, Y, k=1)


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
  n=st.sampled_from([8, 24]),  # few shapes: few compilations
  m=st.sampled_from([7, 17]),
  k=st.integers(1, 4),
  estimator=st.sampled_from(["wkv", "adaptive"]),
  seed=st.integers(0, 2**16),
)
def test_sorted_1d_gradients_are_finite_and_equal_brute_force(n, m, k, estimator, seed):
  """The gradients of the per-point radii, sorted path against brute force,
  on continuous samples (no ties: one subgradient): equal and finite. The
  sorted path pads each side with +inf; a square's slope there times a zero
  cotangent was NaN (found for ``jax.grad(knn_kl)`` in 1-D). Ranks up to
  ``k + 3 <= m < n``, as the estimators allow."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 1)).astype(np.float32)
  y = (rng.normal(size=(m, 1)) + 0.5).astype(np.float32)
  ks = (k,) if estimator == "adaptive" else (1, k, k + 3)
  c = rng.uniform(0.5, 1.5, size=(2, n, len(ks)))

  def loss(x, y, method):
    rho_sq, nu_sq = _per_point(x, y, ks=ks, estimator=estimator, method=method)[:2]
    rho_sq = rho_sq.reshape(n, -1)
    nu_sq = nu_sq.reshape(n, -1)
    # Radii beyond the sample sizes are +inf: left out (no slope).
    terms = [jnp.where(jnp.isfinite(r), jnp.log(r), 0) for r in (rho_sq, nu_sq)]
    return sum(jnp.sum(ci[:, : t.shape[1]] * t) for ci, t in zip(c, terms, strict=True))

  got = jax.grad(loss, argnums=(0, 1))(x, y, "sort")
  want = jax.grad(loss, argnums=(0, 1))(x, y, "brute")
  for a, b in zip(got, want, strict=True):
    assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dim", [1, 3])
def test_neighbour_radii_match_ckdtree(dim):
  """Several ranks at once: the k-th distances equal cKDTree's (float64)."""
  rng = np.random.default_rng(dim)
  x = rng.normal(size=(300, dim)).astype(np.float32)
  y = rng.normal(size=(200, dim)).astype(np.float32)
  ks = (1, 2, 5, 9)
  rho_sq, nu_sq = jaxkl._knn.neighbour_radii(x, y, ks=ks, chunk_size=64)
  assert rho_sq.shape == nu_sq.shape == (len(ks), 300)
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  dx = cKDTree(x64).query(x64, k=max(ks) + 1)[0]  # column 0: the point itself
  dy = cKDTree(y64).query(x64, k=max(ks))[0]
  np.testing.assert_allclose(np.sqrt(rho_sq), dx[:, list(ks)].T, rtol=2e-6)
  np.testing.assert_allclose(np.sqrt(nu_sq), dy[:, [k - 1 for k in ks]].T, rtol=2e-6)


# The 1-D sorted path against the brute force and cKDTree.


@functools.partial(
  jax.jit, static_argnames=("ks", "estimator", "method", "window", "window_chunk")
)
def _per_point(x, y, *, ks, estimator, method, window=None, window_chunk=None):
  return _knn._per_point(
    x,
    y,
    jnp.float32(F32_EPS / 4),
    ks=ks,
    estimator=estimator,
    chunk_size=8,
    distance="direct",
    method=method,
    window=window,
    window_chunk_size=window_chunk,
  )


def _tied_samples(n, m):
  """Small integer-valued float32 samples (many ties and duplicates), times
  a scale (the floor follows it), x sometimes jittered (continuous)."""
  return st.tuples(
    hnp.arrays(np.int8, (n, 1), elements=st.integers(-4, 4)),
    hnp.arrays(np.int8, (m, 1), elements=st.integers(-4, 4)),
    st.sampled_from([1.0, 0.5, 1e-3, 3e4]),
    st.booleans(),
    st.integers(0, 2**16),
  )


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(data=_tied_samples(24, 17), k=st.integers(1, 5))
def test_sorted_1d_equals_brute_force_with_ties(data, k):
  """Per point, bitwise: radii for k = 1..5 (and 7, 16 > m: padding), the
  adaptive balls' radii and ranks, the duplicate flags; and the estimates
  equal the cKDTree reference (float64, same floor)."""
  xi, yi, scale, jitter, seed = data
  noise = np.random.default_rng(seed).normal(size=xi.shape) if jitter else 0
  # Jitter relative to the scale: distinct distances stay distinct in float32
  # (the reference compares float64 distances).
  x = ((xi + noise) * scale).astype(np.float32)
  y = (yi * scale).astype(np.float32)
  for estimator, ks in (("wkv", (1, 2, 3, 4, 5, 7, 16)), ("adaptive", (k,))):
    got = _per_point(x, y, ks=ks, estimator=estimator, method="sort")
    expected = _per_point(x, y, ks=ks, estimator=estimator, method="brute")
    for a, b in zip(got, expected, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    value, _ = _knn._estimate(x, y, k=k, estimator=estimator, chunk_size=None)
    reference = reference_knn_kl(x, y, k, estimator)
    np.testing.assert_allclose(float(value), reference, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dim", [1, 3])
def test_neighbour_radii_large_ks_with_duplicates(dim):
  """ks up to 64 (the ensemble's range), with duplicates in x and in y, the
  sorted (1-D) and brute-force paths against cKDTree; the duplicate counts
  against numpy."""
  rng = np.random.default_rng(7 + dim)
  x = rng.normal(size=(400, dim)).astype(np.float32)
  y = rng.normal(size=(150, dim)).astype(np.float32)
  x[10:20] = x[0]
  y[:5] = x[1]
  ks = (1, 3, 8, 9, 33, 64)
  rho_sq, nu_sq, duplicates = _knn.neighbour_radii(
    x, y, ks=ks, chunk_size=128, return_duplicates=True
  )
  floor = np.maximum(
    F32_EPS / 4 * np.abs(x).max(axis=1), np.sqrt(1.1754944e-38) * unit(x, y)
  )
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  dx = cKDTree(x64).query(x64, k=max(ks) + 1)[0]
  dy = cKDTree(y64).query(x64, k=max(ks))[0]
  expected_rho = np.maximum(dx[:, list(ks)].T, floor)
  expected_nu = np.maximum(dy[:, [k - 1 for k in ks]].T, floor)
  np.testing.assert_allclose(np.sqrt(rho_sq), expected_rho, rtol=2e-6)
  np.testing.assert_allclose(np.sqrt(nu_sq), expected_nu, rtol=2e-6)
  # x_0 and its 10 copies; x_1 is in y (continuous otherwise).
  assert duplicates.tolist() == [11, 1]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_sorted_1d_jit_vmap_and_chunk_size(estimator, k=2):
  """The 1-D path under jit and vmap, and chunk_size (unused there) changes
  nothing, bitwise."""
  x, y = samples_with_duplicates(1, seed=4)
  eager = float(jaxkl.knn_kl(x, y, k=k, estimator=estimator))
  got = jaxkl.knn_kl(x, y, k=k, estimator=estimator, chunk_size=37)
  assert float(got) == eager
  jitted = jax.jit(jaxkl.knn_kl, static_argnames=("k", "estimator"))
  np.testing.assert_allclose(
    float(jitted(x, y, k=k, estimator=estimator)), eager, rtol=1e-6
  )
  xs, ys = np.stack([x, 4 * x, -x]), np.stack([y, 4 * y, -y])
  batched = jax.vmap(lambda a, b: jaxkl.knn_kl(a, b, k=k, estimator=estimator))(xs, ys)
  np.testing.assert_allclose(batched, eager, rtol=1e-5)


# The projection-pruned path (method="window") against the brute force.


# (``_per_point`` above, with ``window`` and ``window_chunk`` set.)


def _window_samples(n, m, d):
  """Small float32 samples in d = 2..5: continuous, integer-valued (ties and
  duplicates) or mixed, times a scale, with points of x copied into y."""
  return st.tuples(
    st.integers(0, 2**16),
    st.sampled_from(["normal", "integers", "mixed"]),
    st.sampled_from([1.0, 1e-3, 3e4]),
    st.integers(0, 3),
  ).map(lambda args: _make_window_samples(n, m, d, *args))


def _make_window_samples(n, m, d, seed, kind, scale, shared):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = rng.normal(size=(m, d)) + 0.7
  if kind != "normal":
    x[: n // 2] = rng.integers(-2, 3, size=(n // 2, d))
    y[: m // 2] = rng.integers(-2, 3, size=(m // 2, d))
  if kind == "integers":
    x, y = np.round(x), np.round(y)
  y[:shared] = x[:shared]
  return (x * scale).astype(np.float32), (y * scale).astype(np.float32)


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(
  data=st.sampled_from([2, 4]).flatmap(lambda d: _window_samples(40, 33, d)),
  window=st.sampled_from([5, 16]),
  window_chunk=st.just(3),
  k=st.integers(1, 2),
)
def test_window_equals_brute_force(data, window, window_chunk, k):
  """Per point, bitwise: radii for several ks, the adaptive balls' radii and
  ranks, the duplicate flags; windows from 4 points (most points fall back to
  the brute force) to all of them (none does)."""
  x, y = data
  for estimator, ks in (("wkv", (1, 2, 3, 5)), ("adaptive", (k,))):
    got = _per_point(
      x,
      y,
      ks=ks,
      estimator=estimator,
      method="window",
      window=window,
      window_chunk=window_chunk,
    )
    expected = _per_point(x, y, ks=ks, estimator=estimator, method="brute")
    for a, b in zip(got, expected, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_window_gaussian_windows(estimator):
  """Gaussian samples in 4-D: a window of 30 (most points fall back), 90 (some
  do) and all 300 points (none do); per point, bitwise the brute force."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(300, 4)).astype(np.float32)
  y = rng.normal(size=(260, 4)).astype(np.float32)
  y[:, 0] += 1.5
  ks = (1,) if estimator == "adaptive" else (1, 4)
  kwargs = {"ks": ks, "estimator": estimator}
  expected = _per_point(x, y, method="brute", **kwargs)
  for window in (30, 90, 300):
    got = _per_point(x, y, method="window", window=window, **kwargs)
    for a, b in zip(got, expected, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_window_auto_rule_matches_ckdtree():
  """The automatic path (windowed in 5-D at n = 4000) against cKDTree, and
  neighbour_radii with several ks against the brute force, bitwise."""
  assert _knn._auto_window(4000, 3000, 5) is not None
  rng = np.random.default_rng(11)
  x = rng.normal(size=(4000, 5)).astype(np.float32)
  y = rng.normal(size=(3000, 5)).astype(np.float32)
  y[:, 0] += 2
  value = float(jaxkl.knn_kl(x, y))
  np.testing.assert_allclose(value, reference_knn_kl(x, y), rtol=1e-5, atol=1e-5)
  ks = (1, 2, 7)
  got = _per_point(x, y, ks=ks, estimator="wkv", method="auto")
  expected = _per_point(x, y, ks=ks, estimator="wkv", method="brute")
  for a, b in zip(got, expected, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rho_sq, _ = _knn.neighbour_radii(x, y, ks=ks)
  np.testing.assert_array_equal(np.asarray(rho_sq), np.asarray(expected[0]).T)
  y[5, 2] = np.nan  # every point to the brute force, and a NaN estimate
  assert np.isnan(float(jaxkl.knn_kl(x, y)))


# Independence and duplicate checks.


@pytest.mark.parametrize("dim", [1, 3])
def test_same_sample_twice_raises(dim):
  x = np.random.default_rng(dim).normal(size=(200, dim)).astype(np.float32)
  with pytest.raises(ValueError, match="same array for both"):
    jaxkl.knn_kl(x, x)
  with pytest.raises(ValueError, match="200 of 200 points of `x` also appear"):
    jaxkl.knn_kl(x, x.copy())
  with pytest.raises(ValueError, match="200 of 200 points"):
    jaxkl.knn_kl(x, x[::-1], estimator="adaptive")  # same set, other order
  # Under jit only the object identity is known (at trace time): one traced
  # value passed as both raises ...
  with pytest.raises(ValueError, match="same array for both"):
    jax.jit(lambda a: jaxkl.knn_kl(a, a))(x)
  # ... but jax.jit(knn_kl)(x, x) traces x and y as two arguments (two
  # tracers): nothing is raised there, and the counts say what happened.
  jitted = jax.jit(jaxkl.knn_kl, static_argnames="return_duplicates")
  value, duplicates = jitted(x, x, return_duplicates=True)
  assert duplicates.tolist() == [0, 200]
  assert np.isfinite(float(value))


@pytest.mark.parametrize("dim", [1, 3])
def test_shared_points_warn_with_counts(dim):
  """30% of y's points copied into x: a RuntimeWarning giving the counts;
  under jit no warning, and the same counts come out with
  return_duplicates."""
  rng = np.random.default_rng(dim)
  x = rng.normal(size=(300, dim)).astype(np.float32)
  y = rng.normal(size=(300, dim)).astype(np.float32)
  x[:90] = y[:90]
  with pytest.warns(RuntimeWarning, match=r"0 of 300 .* and 90 appear in `y`"):
    jaxkl.knn_kl(x, y)
  x[100:104] = x[200]  # 5 equal points in x
  with pytest.warns(RuntimeWarning, match=r"5 of 300 points of `x` have an exact"):
    value, duplicates = jaxkl.knn_kl(x, y, return_duplicates=True)
  assert duplicates.tolist() == [5, 90]
  jitted = jax.jit(jaxkl.knn_kl, static_argnames="return_duplicates")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    traced_value, traced = jitted(x, y, return_duplicates=True)
  assert traced.tolist() == [5, 90]
  np.testing.assert_allclose(float(traced_value), float(value), rtol=1e-6)


def test_continuous_samples_do_not_warn():
  """float32 N(0, 1) samples in 1-D at n = m = 1e4 repeat by chance (here 1
  point of x is also in y, counted exactly with numpy): far below the 1%
  threshold; up to 1% of shared points do not warn either, more do."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10_000, 1)).astype(np.float32)
  y = (2.0 + rng.normal(size=(10_000, 1))).astype(np.float32)
  in_y = int(np.isin(x[:, 0], y[:, 0]).sum())
  _, counts = np.unique(x[:, 0], return_counts=True)
  in_x = int(counts[counts > 1].sum())
  assert in_x + in_y <= 10
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _, duplicates = jaxkl.knn_kl(x, y, return_duplicates=True)
    assert duplicates.tolist() == [in_x, in_y]
    x[:90] = y[:90]
    assert np.isin(x[:, 0], y[:, 0]).sum() <= 100  # 1% of 10^4
    jaxkl.knn_kl(x, y)
  x[90:120] = y[90:120]
  with pytest.warns(RuntimeWarning, match="appear in `y`"):
    jaxkl.knn_kl(x, y)


# Scale: both samples are divided by a power of two before any distance.


def _scaled_samples(d, seed):
  """Float32 samples of N(0, I) and N(0.5, 1.3^2 I) whose sizes take the
  sorted (1-D), pruned (3-D, >= 2048 points in each) and brute-force (12-D)
  paths, with duplicates: x_2 three times in x, x_1 in y, and the origin
  twice in x (floored at sqrt(tiny) * 2^e, relative to the scale). By
  construction 5 points of x have a copy in x and 1 appears in y."""
  n, m = {1: (300, 250), 3: (2100, 2050), 12: (200, 150)}[d]
  rng = np.random.default_rng([d, seed])
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (0.5 + 1.3 * rng.normal(size=(m, d))).astype(np.float32)
  x[[3, 4]] = x[2]
  y[[10, 11]] = x[1]
  x[[5, 6]] = 0.0
  return x, y


def test_scaled_samples_take_every_path():
  assert _knn._auto_window(300, 250, 1) is None  # 1-D: sorted whatever
  assert _knn._auto_window(2100, 2050, 3) is not None
  assert _knn._auto_window(200, 150, 12) is None


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
  d=st.sampled_from([1, 3, 12]),
  s=st.integers(-100, 100),
  seed=st.integers(0, 3),
  estimator=st.sampled_from(ESTIMATORS),
  k=st.sampled_from([1, 3]),
)
def test_power_of_two_scale_is_exact(d, s, seed, estimator, k):
  """knn_kl(2^s x, 2^s y) == knn_kl(x, y) bitwise, finite, with the same
  duplicate counts (5 in x, 1 in y, by construction), from 2^-100 to 2^100
  (float32 squared distances alone overflow from about 2^64 and underflow
  below about 2^-63). neighbour_radii: the normalized radii equal bitwise,
  the default ones are 4^s times the unscaled ones, exactly where that is a
  normal float32 (else inf above, at most tiny below)."""
  x, y = _scaled_samples(d, seed)
  c = np.float32(2.0**s)
  cx, cy = x * c, y * c
  # Exact: every coordinate of the scaled samples is a normal float.
  np.testing.assert_array_equal(cx.astype(np.float64) / 2.0**s, x)
  np.testing.assert_array_equal(cy.astype(np.float64) / 2.0**s, y)
  kwargs = {"k": k, "estimator": estimator, "return_duplicates": True}
  base, base_counts = jaxkl.knn_kl(x, y, **kwargs)
  got, counts = jaxkl.knn_kl(cx, cy, **kwargs)
  assert np.isfinite(float(got))
  assert float(got) == float(base)
  assert base_counts.tolist() == counts.tolist() == [5, 1]
  ks = (1, 4)
  base_radii = _knn.neighbour_radii(x, y, ks=ks, normalized=True)
  radii = _knn.neighbour_radii(cx, cy, ks=ks, normalized=True)
  for a, b in zip(radii, base_radii, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  info = np.finfo(np.float32)
  for a, b in zip(
    _knn.neighbour_radii(cx, cy, ks=ks), _knn.neighbour_radii(x, y, ks=ks), strict=True
  ):
    a, expected = np.asarray(a, np.float64), np.asarray(b, np.float64) * 4.0**s
    normal = (expected >= info.tiny) & (expected <= info.max)
    np.testing.assert_array_equal(a[normal], expected[normal])
    assert np.all(np.isinf(a[expected > info.max]))
    assert np.all(a[expected < info.tiny] <= info.tiny)


@pytest.mark.parametrize("d", [1, 3, 12])
@pytest.mark.parametrize("scale", [1e20, 1e-20, 3.7e-19, 1e35, 1e-30])
def test_extreme_scales_match_ckdtree(scale, d):
  """Scales that are not powers of two: the float32 samples scale * x are
  rounded, so the estimate is that of the rounded samples: equal to the
  cKDTree reference on them (float64, whose squared distances do not
  overflow at 1e35 nor underflow at 1e-30), to the tolerance of
  test_matches_ckdtree_reference; finite; and the duplicates are the
  constructed ones (at 1e-20 every point used to count as shared)."""
  x, y = _scaled_samples(d, seed=0)
  cx, cy = (x * np.float32(scale)), (y * np.float32(scale))
  nonzero = np.abs(cx[cx != 0])
  assert nonzero.min() >= np.finfo(np.float32).tiny and np.isfinite(nonzero).all()
  for estimator in ESTIMATORS:
    got, counts = jaxkl.knn_kl(cx, cy, estimator=estimator, return_duplicates=True)
    expected = reference_knn_kl(cx, cy, 1, estimator)
    assert np.isfinite(float(got)) and np.isfinite(expected)
    np.testing.assert_allclose(
      float(got), expected, rtol=0, atol=8 * d * F32_EPS + 1e-6 * abs(expected)
    )
    assert counts.tolist() == [5, 1]


def test_origin_duplicates_floor_follows_the_scale():
  """x = [0, 0, 1, 3], y = [0.5, 2], by hand: max |coordinate| 3, so 2^e = 2
  and the floor of the two points at the origin is 2 sqrt(tiny32) (their
  rho_1, the distance to each other, is 0); nu_1 = 0.5 for both; x = 1 has
  rho_1 = 1, nu_1 = 0.5 (1 to 0.5), x = 3 has rho_1 = 2, nu_1 = 1. The same
  value for the samples times 2^-80 and 2^80."""
  x = np.array([[0.0], [0.0], [1.0], [3.0]], np.float32)
  y = np.array([[0.5], [2.0]], np.float32)
  floor = 2 * math.sqrt(float(np.finfo(np.float32).tiny))
  expected = (
    2 * math.log(0.5 / floor) + math.log(0.5 / 1.0) + math.log(1.0 / 2.0)
  ) / 4 + math.log(2 / 3)
  assert math.isclose(reference_knn_kl(x, y), expected, rel_tol=1e-12)
  for d in (1, 2):  # the sorted path and the brute force
    xd, yd = np.repeat(x, d, axis=1), np.repeat(y, d, axis=1)
    # In 2-D every distance is sqrt(2) times the 1-D one, the floor is not.
    want = expected if d == 1 else reference_knn_kl(xd, yd)
    for c in (1.0, 2.0**-80, 2.0**80):
      got, counts = jaxkl.knn_kl(
        xd * np.float32(c), yd * np.float32(c), return_duplicates=True
      )
      np.testing.assert_allclose(float(got), want, rtol=1e-6)
      assert counts.tolist() == [2, 0]


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
  offset=st.sampled_from([0.0, 4.0, 16.0, 64.0, 1000.0]),
  dim=st.sampled_from([1, 2, 3, 12]),
  dtype=st.sampled_from(["bfloat16", "float16"]),
  seed=st.integers(0, 2**16),
)
def test_16_bit_samples_are_their_float32_values(offset, dim, dtype, seed):
  """16-bit samples are computed in float32 on their exact values, with
  float32's floor: the duplicate counts are those of the float32 copy, and
  the estimate its value rounded to the 16-bit dtype (the floor used to be
  the 16-bit epsilon's, 2^-10 max|x_i| for bfloat16: distinct points counted
  as copies, a false 'not independent' error at offset 64 in 2-D)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(300, dim))
  y = rng.normal(size=(280, dim))
  x[:, 0] += offset
  y[:, 0] += offset + 1
  xs, ys = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  x32, y32 = xs.astype(jnp.float32), ys.astype(jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # rounding makes ties
    try:
      want, want_counts = jaxkl.knn_kl(x32, y32, return_duplicates=True)
    except ValueError:  # as many shared points as float32 sees: same error
      with pytest.raises(ValueError, match="independent"):
        jaxkl.knn_kl(xs, ys)
      return
    got, counts = jaxkl.knn_kl(xs, ys, return_duplicates=True)
  np.testing.assert_array_equal(np.asarray(counts), np.asarray(want_counts))
  assert got.dtype == jnp.dtype(dtype)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(dtype)))


def test_none_samples_are_refused_naming_the_argument():
  with pytest.raises(TypeError, match="`x` must be an array"):
    jaxkl.knn_kl(None, np.ones((3, 1), np.float32))
  with pytest.raises(TypeError, match="`y` must be an array"):
    jaxkl.knn_kl_estimate(np.ones((30, 1), np.float32), None)
