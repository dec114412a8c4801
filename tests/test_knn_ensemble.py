"""Tests for the bias-reduced k-NN KL estimator and its standard error.

References: the weights against an mpmath solve of their equations (50
digits); the estimate and its standard error against a ``scipy.spatial``
cKDTree implementation of the same formulas in float64; the bias and the
interval's coverage against the true divergence of Gaussians, with stated
statistical margins.
"""

import functools
import math
import warnings

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from scipy.spatial import cKDTree

import jaxkl
from jaxkl import _knn
from jaxkl._knn_ensemble import default_max_k
from jaxkl._knn_ensemble import ensemble_estimate
from jaxkl._knn_ensemble import ensemble_weights
from jaxkl._knn_ensemble import knn_kl_estimate


def mp_weights(d, max_k, bias_terms):
  """Minimum-norm weights by mpmath: w = A^T lam with (A A^T) lam = e_1."""
  with mpmath.workdps(50):
    rows = [[mpmath.mpf(1)] * max_k]
    for i in range(1, bias_terms + 1):
      a = mpmath.mpf(i) / d
      rows.append([mpmath.gamma(k + a) / mpmath.gamma(k) for k in range(1, max_k + 1)])
    a_mat = mpmath.matrix(rows)
    rhs = mpmath.matrix([1] + [0] * bias_terms)
    lam = mpmath.lu_solve(a_mat * a_mat.T, rhs)
    w = a_mat.T * lam
    return np.array([float(v) for v in w])


@pytest.mark.parametrize(
  ("d", "max_k", "bias_terms"),
  [(1, 5, 1), (5, 50, 1), (5, 30, 2), (20, 100, 1), (3, 4, 0)],
)
def test_weights_solve_their_equations(d, max_k, bias_terms):
  """Equal to the mpmath solution; sum 1 and cancel each term to 1e-12."""
  w = ensemble_weights(d, max_k, bias_terms)
  np.testing.assert_allclose(w, mp_weights(d, max_k, bias_terms), rtol=1e-9, atol=1e-12)
  assert abs(w.sum() - 1) < 1e-12
  for i in range(1, bias_terms + 1):
    ratios = [
      float(mpmath.gamma(k + mpmath.mpf(i) / d) / mpmath.gamma(k))
      for k in range(1, max_k + 1)
    ]
    assert abs(np.dot(w, ratios)) < 1e-11 * max(ratios) * np.abs(w).sum()


def test_default_max_k():
  assert default_max_k(10_000, 5) == 50
  assert default_max_k(2000, 20) == 22
  assert default_max_k(10_000, 1) == 10
  assert default_max_k(2000, 1) == 4
  assert default_max_k(30, 3) == 4
  assert default_max_k(10**6, 2) == 100
  assert default_max_k(3, 2) == 2


def unit(x, y):
  """2^e <= max |coordinate| of x and y < 2^(e + 1) (1 if all are 0)."""
  largest = max(float(np.abs(x).max()), float(np.abs(y).max()))
  return 2.0 ** (math.frexp(largest)[1] - 1) if largest > 0 else 1.0


def reference(x, y, max_k, bias_terms, num_groups=None):
  """cKDTree implementation in float64 (distances floored as knn_kl does;
  each replicate relative to its own samples' scale, as knn_kl_estimate)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

  def value(x, y, kk):
    (n, d), m = x.shape, y.shape[0]
    floor = np.maximum(
      np.finfo(np.float64).eps / 4 * np.abs(x).max(axis=1),
      math.sqrt(np.finfo(np.float64).tiny) * unit(x, y),
    )
    rho = np.maximum(cKDTree(x).query(x, k=kk + 1)[0][:, 1:], floor[:, None])
    nu = np.maximum(cKDTree(y).query(x, k=kk)[0].reshape(n, kk), floor[:, None])
    per_k = d * np.mean(np.log(nu / rho), axis=0) + math.log(m / (n - 1))
    return mp_weights(d, kk, bias_terms) @ per_k

  full = value(x, y, max_k)
  if num_groups is None:
    return full, None
  # Delete-a-group jackknife, groups i mod G over the first G * floor(n / G).
  n_g, m_g = len(x) // num_groups, len(y) // num_groups
  ix, iy = np.arange(num_groups * n_g), np.arange(num_groups * m_g)
  replicates = np.array(
    [
      value(x[ix[ix % num_groups != g]], y[iy[iy % num_groups != g]], max_k)
      for g in range(num_groups)
    ]
  )
  spread = np.sum((replicates - replicates.mean()) ** 2)
  return full, math.sqrt((num_groups - 1) / num_groups * spread)


@pytest.mark.parametrize(("d", "bias_terms"), [(1, 1), (3, 2), (6, 0)])
def test_matches_ckdtree_reference_float64(x64, d, bias_terms):
  rng = np.random.default_rng(d)
  x = rng.normal(size=(403, d))
  y = 0.5 + 1.3 * rng.normal(size=(331, d))
  expected, expected_se = reference(x, y, 12, bias_terms, num_groups=5)
  got = knn_kl_estimate(x, y, max_k=12, bias_terms=bias_terms, num_groups=5)
  assert got.value.dtype == jnp.float64
  np.testing.assert_allclose(float(got.value), expected, rtol=0, atol=1e-10)
  np.testing.assert_allclose(float(got.stderr), expected_se, rtol=1e-9)
  value = ensemble_estimate(x, y, max_k=12, bias_terms=bias_terms)
  np.testing.assert_allclose(float(value), expected, rtol=0, atol=1e-10)
  if bias_terms != 2:
    return
  # WKV (k = 1) is the ensemble of one rank: the same jackknife.
  expected, expected_se = reference(x, y, 1, 0, num_groups=7)
  got = knn_kl_estimate(x, y, estimator="wkv", num_groups=7)
  np.testing.assert_allclose(float(got.value), expected, rtol=0, atol=1e-10)
  np.testing.assert_allclose(float(got.stderr), expected_se, rtol=1e-9)


def test_matches_reference_float32_and_chunking():
  """float32: a few d * eps32 from the float64 reference, any chunk_size."""
  rng = np.random.default_rng(7)
  x = rng.normal(size=(500, 4)).astype(np.float32)
  y = rng.normal(size=(450, 4)).astype(np.float32)
  expected, expected_se = reference(x, y, 10, 1, num_groups=4)
  for chunk in (None, 37):
    got = knn_kl_estimate(x, y, max_k=10, num_groups=4, chunk_size=chunk)
    assert got.value.dtype == jnp.float32
    np.testing.assert_allclose(float(got.value), expected, rtol=0, atol=2e-5)
    np.testing.assert_allclose(float(got.stderr), expected_se, rtol=1e-3)


def test_wkv_is_knn_kl():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(400, 3)).astype(np.float32)
  y = rng.normal(size=(300, 3)).astype(np.float32)
  for k in (1, 3):
    got = knn_kl_estimate(x, y, estimator="wkv", k=k, num_groups=None)
    np.testing.assert_allclose(
      float(got.value), float(jaxkl.knn_kl(x, y, k=k)), rtol=1e-6, atol=1e-6
    )
    assert got.estimator == "knn-wkv" and got.num_samples == 400
    assert np.isnan(float(got.pareto_k)) and float(got.effective_sample_size) == 400


def gaussian_pair(d, n, seed):
  rng = np.random.default_rng([seed, d, n])
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.normal(size=(n, d)).astype(np.float32)
  y[:, 0] += 2.0
  return x, y


def test_bias_reduced_against_wkv_d5():
  """P = N(0, I_5), Q = N(2 e_1, I_5), KL = 2, n = m = 2000, 6 sample sets.

  Measured spread of one estimate at this size: 0.06 (WKV, k = 1) and 0.12
  (ensemble, K = 22). WKV's mean error is about -0.35; the ensemble's within
  0.05 of 0. Asserted: the ensemble's mean error within 0.2 of 0 (over 4 sd
  of a 6-set mean, 0.05) and its mean absolute error below WKV's minus 0.1.
  """
  ens, wkv = [], []
  for seed in range(6):
    x, y = gaussian_pair(5, 2000, seed)
    ens.append(float(ensemble_estimate(x, y)) - 2)
    wkv.append(float(jaxkl.knn_kl(x, y)) - 2)
  ens, wkv = np.array(ens), np.array(wkv)
  assert abs(ens.mean()) < 0.2, ens
  assert np.abs(ens).mean() < np.abs(wkv).mean() - 0.1, (ens, wkv)


def test_interval_coverage():
  """Coverage of the 95% jackknife interval over 200 sample sets, n = m = 600.

  P = N(0, I_2), Q = N((1, 0), I_2), KL = 0.5, where the ensemble's bias is
  negligible (measured: -0.000, sd of the estimates 0.099, mean SE 0.123,
  192 of 200 covered). With an exact SE, the count of 200 lies in [178, 198]
  with probability 0.998 (binomial, p = 0.95); the jackknife variance is
  biased upwards (Efron & Stein 1981), so the band asserted is [178, 199]
  (199 or 200 would mean an SE far too large), and the mean SE must be
  within [0.8, 1.5] times the sd of the 200 estimates (whose own relative
  sd is 5%; the former subsampling SE had 0.6 at d = 1).
  """
  est = jax.jit(lambda x, y: knn_kl_estimate(x, y))
  hits, values, stderrs = 0, [], []
  for rep in range(200):
    rng = np.random.default_rng([rep, 11])
    x = rng.normal(size=(600, 2)).astype(np.float32)
    y = rng.normal(size=(600, 2)).astype(np.float32)
    y[:, 0] += 1.0
    got = est(x, y)
    low, high = got.confidence_interval(0.95)
    hits += bool(low <= 0.5 <= high)
    values.append(float(got.value))
    stderrs.append(float(got.stderr))
  assert 178 <= hits <= 199, hits
  ratio = np.mean(stderrs) / np.std(values, ddof=1)
  assert 0.8 <= ratio <= 1.5, ratio


def test_jit_and_vmap():
  x, y = gaussian_pair(3, 300, 0)
  eager = knn_kl_estimate(x, y)
  jitted = jax.jit(knn_kl_estimate)(x, y)
  np.testing.assert_allclose(float(jitted.value), float(eager.value), rtol=1e-6)
  np.testing.assert_allclose(float(jitted.stderr), float(eager.stderr), rtol=1e-5)
  xs = np.stack([x, gaussian_pair(3, 300, 1)[0]])
  batched = jax.vmap(lambda a: ensemble_estimate(a, y))(xs)
  np.testing.assert_allclose(
    float(batched[0]), float(ensemble_estimate(x, y)), rtol=1e-6
  )


def test_non_finite_input_gives_nan():
  x, y = gaussian_pair(2, 100, 0)
  x[3, 1] = np.nan
  for groups in (None, 10):
    got = knn_kl_estimate(x, y, num_groups=groups)
    assert np.isnan(float(got.value)) and np.isnan(float(got.stderr))


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"estimator": "kde"}, ValueError, "estimator"),
    ({"estimator": 1}, TypeError, "estimator"),
    ({"k": 2}, ValueError, "`k` applies"),
    ({"estimator": "wkv", "max_k": 5}, ValueError, "`max_k` applies"),
    ({"max_k": 1}, ValueError, "max_k"),
    ({"max_k": 2.0}, TypeError, "max_k"),
    ({"bias_terms": -1}, ValueError, "bias_terms"),
    ({"bias_terms": True}, TypeError, "bias_terms"),
    ({"num_groups": 1}, ValueError, "num_groups"),
    ({"num_groups": 151}, ValueError, "num_groups"),
    ({"max_k": 200}, ValueError, "samples"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
  ],
)
def test_argument_errors(kwargs, error, match):
  x, y = gaussian_pair(2, 150, 0)
  with pytest.raises(error, match=match):
    knn_kl_estimate(x, y, **kwargs)


def test_sample_errors():
  x, y = gaussian_pair(2, 150, 0)
  with pytest.raises(ValueError, match="2-D"):
    knn_kl_estimate(x[:, 0], y)
  with pytest.raises(ValueError, match="dimension"):
    knn_kl_estimate(x, y[:, :1])
  with pytest.raises(TypeError, match="floating"):
    knn_kl_estimate(x.astype(np.int32), y)


# Scale: the estimate and its standard error depend on the distances only
# through their ratios (knn_kl's normalization by a power of two).

# (n, m, keyword arguments) by dimension: the sorted path (1-D), the pruned
# one (3-D: 2732 points, so the replicates without one of 4 groups keep 2049
# and are pruned too) and the brute force (12-D).
SCALED_CASES = {
  1: (400, 350, {}),
  3: (2732, 2732, {"max_k": 6, "num_groups": 4}),
  12: (200, 180, {}),
}


def scaled_pair(d, seed):
  """Continuous float32 samples of N(0, I) and N(0.5 e_1, 1.3^2 I)."""
  n, m, kwargs = SCALED_CASES[d]
  rng = np.random.default_rng([d, seed, 5])
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (1.3 * rng.normal(size=(m, d))).astype(np.float32)
  y[:, 0] += 0.5
  return x, y, kwargs


def test_scaled_cases_take_every_path():
  n, m, kwargs = SCALED_CASES[3]
  keep = (kwargs["num_groups"] - 1) * (n // kwargs["num_groups"])
  assert _knn._auto_window(n, m, 3) is not None
  assert _knn._auto_window(keep, keep, 3) is not None
  assert _knn._auto_window(*SCALED_CASES[12][:2], 12) is None


@functools.cache
def _jitted_estimate(estimator, kwargs):
  return jax.jit(
    functools.partial(knn_kl_estimate, estimator=estimator, **dict(kwargs))
  )


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
  d=st.sampled_from([1, 3, 12]),
  s=st.integers(-100, 100),
  seed=st.integers(0, 2),
  estimator=st.sampled_from(["ensemble", "wkv"]),
)
def test_power_of_two_scale_is_exact(d, s, seed, estimator):
  """value and stderr of 2^s x, 2^s y: bitwise those of x, y and finite,
  from 2^-100 to 2^100 (the jackknife's replicates normalize their own
  samples: the same power of two times 2^s). Jitted, to compile once per
  case (the eager calls are in test_extreme_scales_match_ckdtree)."""
  x, y, kwargs = scaled_pair(d, seed)
  if estimator == "wkv":
    kwargs = {key: v for key, v in kwargs.items() if key != "max_k"}
  c = np.float32(2.0**s)
  cx, cy = x * c, y * c
  np.testing.assert_array_equal(cx.astype(np.float64) / 2.0**s, x)  # exact
  np.testing.assert_array_equal(cy.astype(np.float64) / 2.0**s, y)
  run = _jitted_estimate(estimator, tuple(sorted(kwargs.items())))
  base, got = run(x, y), run(cx, cy)
  assert np.isfinite(float(got.value)) and np.isfinite(float(got.stderr))
  assert float(got.value) == float(base.value)
  assert float(got.stderr) == float(base.stderr)


@pytest.mark.parametrize("d", [1, 3, 12])
@pytest.mark.parametrize("scale", [1e20, 1e-20, 3.7e-19])
def test_extreme_scales_match_ckdtree(scale, d):
  """Not powers of two: the estimate of the rounded float32 samples, against
  the float64 cKDTree reference on the same samples (no overflow there):
  value to 1e-5, stderr to 1e-5 relative (measured at most 8e-7 and 4e-7,
  the largest in 12-D). These used to give NaN (1e20) or raise (every point
  "shared" at 1e-20 and 3.7e-19)."""
  x, y, kwargs = scaled_pair(d, seed=0)
  cx, cy = x * np.float32(scale), y * np.float32(scale)
  max_k = kwargs.get("max_k", default_max_k(len(x), d))
  groups = kwargs.get("num_groups", 10)
  expected, expected_se = reference(cx, cy, max_k, 1, num_groups=groups)
  got, duplicates = knn_kl_estimate(cx, cy, return_duplicates=True, **kwargs)
  assert duplicates.tolist() == [0, 0]
  np.testing.assert_allclose(float(got.value), expected, rtol=0, atol=1e-5)
  np.testing.assert_allclose(float(got.stderr), expected_se, rtol=1e-5)


# Independence and duplicate checks, as knn_kl's.


@pytest.mark.parametrize("dim", [1, 3])
def test_same_sample_twice_raises(dim):
  x = np.random.default_rng(dim).normal(size=(200, dim)).astype(np.float32)
  for estimate in (knn_kl_estimate, ensemble_estimate):
    with pytest.raises(ValueError, match="same array for both"):
      estimate(x, x)
    with pytest.raises(ValueError, match="200 of 200 points of `x` also appear"):
      estimate(x, x.copy())
  with pytest.raises(ValueError, match="200 of 200 points"):
    knn_kl_estimate(x, x[::-1], estimator="wkv")  # same set, other order
  with pytest.raises(ValueError, match="same array for both"):
    jax.jit(lambda a: knn_kl_estimate(a, a))(x)
  # Two arguments of a jitted function are two tracers: nothing raised, the
  # counts come out with return_duplicates.
  jitted = jax.jit(knn_kl_estimate, static_argnames="return_duplicates")
  _, duplicates = jitted(x, x, return_duplicates=True)
  assert duplicates.tolist() == [0, 200]


@pytest.mark.parametrize("dim", [1, 3])
def test_shared_points_warn_with_counts(dim):
  """30% of y's points copied into x (90 of 300 in y), then 5 equal points
  in x: RuntimeWarnings with those counts; under jit none, the same counts
  with return_duplicates and the same estimate."""
  rng = np.random.default_rng(dim)
  x = rng.normal(size=(300, dim)).astype(np.float32)
  y = rng.normal(size=(300, dim)).astype(np.float32)
  x[:90] = y[:90]
  with pytest.warns(RuntimeWarning, match=r"0 of 300 .* and 90 appear in `y`"):
    knn_kl_estimate(x, y)
  x[100:104] = x[200]
  with pytest.warns(RuntimeWarning, match=r"5 of 300 points of `x` have an exact"):
    value, duplicates = knn_kl_estimate(x, y, return_duplicates=True)
  assert duplicates.tolist() == [5, 90]
  with pytest.warns(RuntimeWarning, match=r"5 of 300 points"):
    ensemble_estimate(x, y)
  jitted = jax.jit(knn_kl_estimate, static_argnames="return_duplicates")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    traced_value, traced = jitted(x, y, return_duplicates=True)
  assert traced.tolist() == [5, 90]
  np.testing.assert_allclose(float(traced_value.value), float(value.value), rtol=1e-6)


def test_continuous_samples_do_not_warn():
  x, y = gaussian_pair(2, 300, 0)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _, duplicates = knn_kl_estimate(x, y, return_duplicates=True)
    ensemble_estimate(x, y)
  assert duplicates.tolist() == [0, 0]
  with pytest.raises(TypeError, match="return_duplicates"):
    knn_kl_estimate(x, y, return_duplicates=1)


def test_eager_calls_compile_once_per_shape_and_plan():
  # The estimate and its jackknife are one cached program: a second eager
  # call with the same shapes and options compiles nothing (it used to
  # retrace its lax.map each call, ~1 s at n = 400).
  from jaxkl import _knn_ensemble  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  x = rng.normal(size=(123, 2)).astype(np.float32)
  y = rng.normal(size=(131, 2)).astype(np.float32)
  first = jaxkl.knn_kl_estimate(x, y)
  size = _knn_ensemble._run._cache_size()
  again = jaxkl.knn_kl_estimate(x + 1, y + 1)
  assert _knn_ensemble._run._cache_size() == size
  # Translation invariance of the estimate (same distances up to rounding).
  np.testing.assert_allclose(again.value, first.value, rtol=1e-4)


def test_default_max_k_fits_the_samples_and_the_replicates():
  # The default K (sqrt(n) / 2 within [4, 100]) is capped by m, n - 1 and
  # the jackknife replicates' sizes; only an explicit max_k can be too large.
  assert default_max_k(10_000, 5, m=3) == 3
  assert default_max_k(10_000, 5, m=10**6) == 50
  rng = np.random.default_rng(0)
  x = rng.normal(size=(100, 2)).astype(np.float32)
  y3 = rng.normal(size=(3, 2)).astype(np.float32)
  est = jaxkl.knn_kl_estimate(x, y3, num_groups=None)
  # K = 3 ranks: the reference is the weighted sum of WKV estimates.
  weights = ensemble_weights(2, 3)
  wkv = [float(jaxkl.knn_kl(x, y3, k=k)) for k in (1, 2, 3)]
  np.testing.assert_allclose(float(est.value), np.dot(weights, wkv), rtol=1e-5)
  # m = 4 with 2 groups: each replicate keeps 2 points of y, so K = 2.
  y4 = rng.normal(size=(4, 2)).astype(np.float32)
  est = jaxkl.knn_kl_estimate(x, y4, num_groups=2)
  assert np.isfinite(est.value) and np.isfinite(est.stderr)
  with pytest.raises(ValueError, match="`y` needs at least 5"):
    jaxkl.knn_kl_estimate(x, y3, max_k=5, num_groups=None)
