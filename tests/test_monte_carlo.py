"""Monte-Carlo KL: kl_estimator_terms, kl_from_samples, monte_carlo_kl.

Statistical tests use fixed keys, so they are deterministic; each states the
tolerance it uses. "Within 4 SE" for a single Gaussian estimate fails by
chance with probability 6e-5 for a correct estimator, so a failure means a
bug, not bad luck. Closed forms are computed here (not with jaxkl._closed_forms),
so these tests stand on their own.
"""

import dataclasses
import functools
import math
import subprocess
import sys
import warnings

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

import jaxkl

numpyro = pytest.importorskip("numpyro")
dist = pytest.importorskip("numpyro.distributions")

norm_logpdf = jax.scipy.stats.norm.logpdf


@pytest.fixture(autouse=True)
def _fast_compiling_threefry():
  """Non-partitionable threefry while these tests run.

  XLA:CPU compiles the partitionable threefry (JAX's default) for a 2-D
  shape such as NumPyro's [n, K] draws 3-4x more slowly (about 5 s each on
  a loaded 2-core machine); the numbers differ but are just as random.
  """
  with jax.threefry_partitionable(False):
    yield


# ----------------------------------------------------------------------------
# Closed forms.


def kl_normal(m1, s1, m2, s2):
  return jnp.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def kl_mvn(m1, c1, m2, c2):
  k = m1.shape[-1]
  c2_inv = np.linalg.inv(c2)
  d = m2 - m1
  return 0.5 * (
    np.trace(c2_inv @ c1)
    + d @ c2_inv @ d
    - k
    + np.linalg.slogdet(c2)[1]
    - np.linalg.slogdet(c1)[1]
  )


def kl_gamma(a1, b1, a2, b2):  # shape a, rate b
  return (
    (a1 - a2) * scipy.special.digamma(a1)
    - scipy.special.gammaln(a1)
    + scipy.special.gammaln(a2)
    + a2 * (np.log(b1) - np.log(b2))
    + a1 * (b2 - b1) / b1
  )


def within(estimate, truth, k=4.0):
  """|value - truth| <= k standard errors (elementwise, as NumPy arrays)."""
  value, se = np.asarray(estimate.value), np.asarray(estimate.stderr)
  assert np.all(np.isfinite(se)) and np.all(se > 0)
  return np.all(np.abs(value - np.asarray(truth)) <= k * se)


def mc(key, p, q, **kwargs):
  """``jaxkl.monte_carlo_kl`` compiled as one XLA program.

  For the sample sizes here this is several times faster than eager,
  op-by-op dispatch (which compiles every primitive of NumPyro's samplers).
  """
  return jax.jit(lambda k: jaxkl.monte_carlo_kl(k, p, q, **kwargs))(key)


def mc_each(key, p, q, estimators, **kwargs):
  """``mc`` for several estimators in one program (same key, same samples)."""
  return jax.jit(
    lambda k: [jaxkl.monte_carlo_kl(k, p, q, estimator=e, **kwargs) for e in estimators]
  )(key)


def gaussian_pair(loc, scale):
  """P = N(loc, scale^2) as a (sampler, log_prob) pair of callables."""
  return (
    lambda key, n: loc + scale * jax.random.normal(key, (n, *jnp.shape(loc))),
    lambda x: norm_logpdf(x, loc, scale),
  )


# ----------------------------------------------------------------------------
# Per-sample terms.


def test_terms_match_formulas(x64):
  rng = np.random.default_rng(0)
  log_p, log_q = rng.normal(size=(2, 50)) * 3
  d = log_q - log_p
  expected = {"k1": -d, "k2": 0.5 * d**2, "k3": np.exp(d) - 1 - d}
  for name, want in expected.items():
    got = jaxkl.kl_estimator_terms(log_p, log_q, estimator=name)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
  assert np.all(np.asarray(expected["k3"]) >= 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k3_is_accurate_where_expm1_minus_d_cancels(dtype):
  """Relative error vs mpmath below 8 ulp for 1e-8 <= |log r| <= 30."""
  mags = np.logspace(-8, math.log10(30), 60)
  d = np.concatenate([mags, -mags]).astype(dtype)
  with jax.enable_x64(dtype == np.float64):
    got = np.asarray(jaxkl.kl_estimator_terms(np.zeros_like(d), d, estimator="k3"))
  mpmath.mp.dps = 50
  want = np.array(
    [float(mpmath.expm1(mpmath.mpf(float(v))) - mpmath.mpf(float(v))) for v in d]
  )
  eps = np.finfo(dtype).eps
  np.testing.assert_array_less(np.abs(got - want) / want, 8 * eps)


def test_k3_extremes_and_gradient():
  d = jnp.array([-jnp.inf, -1e30, 100.0, jnp.inf, 0.0], jnp.float32)
  k3 = jaxkl.kl_estimator_terms(jnp.zeros_like(d), d, estimator="k3")
  # q = 0 at a sample of P: infinite KL; float32 overflow above 88.7 is the
  # correctly rounded +inf; log r = 0 gives exactly 0.
  np.testing.assert_array_equal(
    k3, np.array([np.inf, 1e30, np.inf, np.inf, 0.0], np.float32)
  )
  x = jnp.array([-3.0, -1e-4, 0.0, 1e-4, 2.0])
  k3 = lambda v: jaxkl.kl_estimator_terms(0.0 * v, v, estimator="k3")  # noqa: E731
  grad = jax.jit(jax.vmap(jax.grad(k3)))(x)
  np.testing.assert_allclose(grad, np.expm1(np.asarray(x)), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.hessian(k3))(0.3), np.exp(0.3), rtol=1e-6)


def test_bfloat16_inputs_are_computed_in_float32():
  log_p = jnp.array([-1.0, -2.0], jnp.bfloat16)
  log_q = jnp.array([-1.5, -1.0], jnp.bfloat16)
  got = jaxkl.kl_from_samples(log_p, log_q, estimator="k3")
  assert got.dtype == jnp.bfloat16
  d = np.array([-0.5, 1.0])
  np.testing.assert_allclose(float(got), np.mean(np.expm1(d) - d), rtol=1e-2)


# ----------------------------------------------------------------------------
# kl_from_samples: reductions, masks, standard errors, control variate, IS.


def test_from_samples_mean_axis_mask_and_stderr(x64):
  rng = np.random.default_rng(1)
  log_p, log_q = rng.normal(size=(2, 4, 30))
  mask = rng.uniform(size=(4, 30)) < 0.7
  poisoned_q = np.where(mask, log_q, np.nan)  # masked entries never matter
  for name in ("k1", "k2", "k3"):
    terms = np.asarray(jaxkl.kl_estimator_terms(log_p, log_q, estimator=name))
    value, se = jaxkl.kl_from_samples(
      log_p, poisoned_q, estimator=name, axis=1, where=mask, return_stderr=True
    )
    for row in range(4):
      kept = terms[row][mask[row]]
      np.testing.assert_allclose(value[row], kept.mean(), rtol=1e-12)
      np.testing.assert_allclose(
        se[row], kept.std(ddof=1) / np.sqrt(kept.size), rtol=1e-12
      )
  # Row mask of the result's shape; a fully masked row gives 0.
  row_mask = np.array([True, False, True, True])
  got = jaxkl.kl_from_samples(log_p, log_q, axis=-1, where=row_mask)
  assert got.shape == (4,) and got[1] == 0
  # axis=None averages everything.
  np.testing.assert_allclose(
    jaxkl.kl_from_samples(log_p, log_q), np.mean(log_p - log_q), rtol=1e-12
  )
  # Gradients never see the masked NaNs.
  grad = jax.grad(
    lambda lq: jaxkl.kl_from_samples(
      log_p, lq, estimator="k3", axis=1, where=mask
    ).sum()
  )(poisoned_q)
  assert np.all(np.isfinite(grad)) and np.all(grad[~mask] == 0)


def test_control_variate_is_least_squares_and_k3_is_lambda_one(x64):
  rng = np.random.default_rng(2)
  x = rng.normal(size=5000)
  log_p = scipy.stats.norm.logpdf(x)
  log_q = scipy.stats.norm.logpdf(x, 0.4, 1.1)
  k1, c = log_p - log_q, np.expm1(log_q - log_p)
  slope = np.polyfit(c, k1, 1)[0]  # k1 ~ a + slope * c  =>  lambda = -slope
  residual = k1 - slope * c
  value, se = jaxkl.kl_from_samples(log_p, log_q, estimator="cv", return_stderr=True)
  np.testing.assert_allclose(value, k1.mean() - slope * c.mean(), rtol=1e-10)
  np.testing.assert_allclose(
    se,
    np.sqrt(np.sum((residual - residual.mean()) ** 2) / (x.size - 2) / x.size),
    rtol=1e-10,
  )
  np.testing.assert_allclose(
    jaxkl.kl_from_samples(log_p, log_q, estimator="k3"),
    k1.mean() + c.mean(),
    rtol=1e-10,
  )
  # Near P = Q the optimal coefficient is close to k3's lambda = 1.
  assert 0.5 < -slope < 1.5


def crossfit_reference(k, c, a):
  """Leave-one-out cross-fitted CV by brute force (float64 NumPy).

  ``k``, ``c``: terms and controls (importance-weighted already where the
  estimator weights them); ``a``: weights summing to 1. Returns the estimate
  and the standard error sqrt(n/(n-1) sum a^2 (y - D)^2 + (D_cv - D)^2).
  """

  def fit(idx):
    w = a[idx] / a[idx].sum()
    v, cc = k[idx] - w @ k[idx], c[idx] - w @ c[idx]
    b = a[idx] ** 2
    return -np.sum(b * v * cc) / np.sum(b * cc * cc)

  n = k.size
  lam = np.array([fit(np.arange(n) != i) for i in range(n)])
  y = k + lam * c
  est = a @ y
  cv = a @ k + fit(np.ones(n, bool)) * (a @ c)
  se = np.sqrt(np.sum(a**2 * (y - est) ** 2) * n / (n - 1) + (cv - est) ** 2)
  return est, se


def test_cv_crossfit_matches_a_brute_force_reference(x64):
  """Masks along axis 1, plain and importance-weighted (both kinds)."""
  rng = np.random.default_rng(7)
  x = rng.normal(size=(3, 25))
  log_p = scipy.stats.norm.logpdf(x)
  log_q = scipy.stats.norm.logpdf(x, 0.7, 0.9)
  log_w = rng.normal(size=(3, 25)) * 0.5
  mask = rng.uniform(size=(3, 25)) < 0.8
  poisoned = np.where(mask, log_q, np.nan)
  k1, c = log_p - log_q, np.expm1(log_q - log_p)
  for weights in ("none", "plain", "self_normalized"):
    kwargs = {}
    if weights != "none":
      kwargs = dict(log_weights=log_w, self_normalized=weights == "self_normalized")
    value, se = jaxkl.kl_from_samples(
      log_p,
      poisoned,
      estimator="cv_crossfit",
      axis=1,
      where=mask,
      return_stderr=True,
      **kwargs,
    )
    for row in range(3):
      m = mask[row]
      k, cc, w = k1[row][m], c[row][m], np.exp(log_w[row][m])
      if weights == "plain":
        k, cc = w * k, w * cc
      a = w / w.sum() if weights == "self_normalized" else np.full(k.size, 1 / k.size)
      want, want_se = crossfit_reference(k, cc, a)
      np.testing.assert_allclose(value[row], want, rtol=1e-10)
      np.testing.assert_allclose(se[row], want_se, rtol=1e-10)
  # Two sample axes, no mask: the same as flattening them.
  flat = jaxkl.kl_from_samples(log_p[:2], log_q[:2], estimator="cv_crossfit")
  want = crossfit_reference(k1[:2].ravel(), c[:2].ravel(), np.full(50, 1 / 50))[0]
  np.testing.assert_allclose(flat, want, rtol=1e-10)


def test_cv_crossfit_is_accurate_with_a_dominant_sample():
  """float32, one log r = 12 (r = 1.6e5 against a bulk near 1).

  Computing the leave-one-out sums as total minus own term would cancel
  catastrophically for that sample (its coefficient comes out as -15
  instead of 0.87); prefix and suffix sums keep float32 accuracy.
  """
  rng = np.random.default_rng(8)
  log_r = rng.normal(size=200) * 0.5
  log_r[37] = 12.0
  a = np.full(200, 1 / 200)
  want, want_se = crossfit_reference(-log_r, np.expm1(log_r), a)
  value, se = jaxkl.kl_from_samples(
    np.zeros(200, np.float32),
    log_r.astype(np.float32),
    estimator="cv_crossfit",
    return_stderr=True,
  )
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, want, rtol=2e-5)
  np.testing.assert_allclose(se, want_se, rtol=2e-5)


def test_importance_weights(x64):
  rng = np.random.default_rng(3)
  log_p, log_q, log_w = rng.normal(size=(3, 40))
  k3 = np.asarray(jaxkl.kl_estimator_terms(log_p, log_q, estimator="k3"))
  w = np.exp(log_w)
  plain = jaxkl.kl_from_samples(log_p, log_q, estimator="k3", log_weights=log_w)
  np.testing.assert_allclose(plain, np.mean(w * k3), rtol=1e-12)
  snis, se = jaxkl.kl_from_samples(
    log_p,
    log_q,
    estimator="k3",
    log_weights=log_w,
    self_normalized=True,
    return_stderr=True,
  )
  mu = np.sum(w * k3) / np.sum(w)
  np.testing.assert_allclose(snis, mu, rtol=1e-12)
  a = w / w.sum()
  np.testing.assert_allclose(
    se, np.sqrt(np.sum(a**2 * (k3 - mu) ** 2) * 40 / 39), rtol=1e-12
  )
  shifted = jaxkl.kl_from_samples(
    log_p, log_q, estimator="k3", log_weights=log_w + 700.0, self_normalized=True
  )
  np.testing.assert_allclose(shifted, mu, rtol=1e-12)


def test_from_samples_validation():
  a = jnp.zeros(4)
  with pytest.raises(ValueError, match="estimator"):
    jaxkl.kl_from_samples(a, a, estimator="k4")
  with pytest.raises(ValueError, match="per-sample"):
    jaxkl.kl_estimator_terms(a, a, estimator="cv")
  with pytest.raises(ValueError, match="per-sample"):
    jaxkl.kl_estimator_terms(a, a, estimator="cv_crossfit")
  with pytest.raises(ValueError, match="shape"):
    jaxkl.kl_from_samples(a, jnp.zeros(3))
  with pytest.raises(ValueError, match="log_weights"):
    jaxkl.kl_from_samples(a, a, self_normalized=True)
  with pytest.raises(TypeError, match="floating"):
    jaxkl.kl_from_samples(jnp.zeros(4, jnp.int32), a)
  with pytest.raises(TypeError, match="bool"):
    jaxkl.kl_from_samples(a, a, return_stderr=1)
  _, se = jaxkl.kl_from_samples(jnp.zeros(1), jnp.zeros(1), return_stderr=True)
  assert np.isnan(se)


def test_fixed_sample_gradients_follow_tang_and_munos(x64):
  """Samples held fixed: d/dtheta mean(k) estimates 0, grad KL(P||Q), grad KL(Q||P).

  theta = (mean, log scale) of P = N(0.5, 0.8^2); Q = N(0, 1). Per-sample
  derivatives from forward mode; each claim checked within 4 SE with 2e5
  samples (the two KL gradients differ by more than 30 SE).
  """
  theta = jnp.array([0.5, math.log(0.8)])
  phi = jnp.array([0.0, 0.0])
  x = theta[0] + jnp.exp(theta[1]) * jax.random.normal(
    jax.random.key(0), (200_000,), jnp.float64
  )

  def terms(th, ph, est):
    log_p = norm_logpdf(x, th[0], jnp.exp(th[1]))
    log_q = norm_logpdf(x, ph[0], jnp.exp(ph[1]))
    return jaxkl.kl_estimator_terms(log_p, log_q, estimator=est)

  def kl(a, b):
    return kl_normal(a[0], jnp.exp(a[1]), b[0], jnp.exp(b[1]))

  forward = jax.grad(kl)(theta, phi)  # d/dtheta KL(P||Q)
  reverse = jax.grad(lambda t: kl(phi, t))(theta)  # d/dtheta KL(Q||P)
  wrt_q = jax.grad(kl, argnums=1)(theta, phi)  # d/dphi KL(P||Q)
  expectations = [
    ("k1", 0, np.zeros(2)),
    ("k2", 0, forward),
    ("k3", 0, reverse),
    ("k1", 1, wrt_q),
    ("k3", 1, wrt_q),
  ]

  @jax.jit
  def moments(th, ph):
    out = []
    for est, argnum, _ in expectations:
      per_sample = jax.jacfwd(terms, argnums=argnum)(th, ph, est)
      out.append((per_sample.mean(0), per_sample.std(0) / np.sqrt(x.size)))
    return out

  for (est, argnum, want), (mean, se) in zip(
    expectations, moments(theta, phi), strict=False
  ):
    assert np.all(np.abs(mean - want) <= 4 * se + 1e-12), (est, argnum, mean, want, se)
  assert np.all(np.abs(forward - reverse) > 0.1)


# ----------------------------------------------------------------------------
# monte_carlo_kl: accuracy against closed forms.


def test_one_and_ten_dimensional_gaussians_callables():
  """Form (c): (sampler, log_prob) pairs and a log_prob callable for Q."""
  estimators = ("k1", "k3", "cv")
  p = gaussian_pair(0.3, 1.2)
  q = lambda x: norm_logpdf(x, -0.4, 1.0)  # noqa: E731
  for name, est in zip(
    estimators,
    mc_each(jax.random.key(1), p, q, estimators, num_samples=50_000),
    strict=False,
  ):
    assert est.num_samples == 50_000 and est.estimator == name
    assert within(est, kl_normal(0.3, 1.2, -0.4, 1.0)), name
  rng = np.random.default_rng(4)
  m1, m2 = rng.normal(0, 0.3, size=(2, 10))
  s1, s2 = rng.uniform(0.8, 1.2, size=(2, 10))
  m1, m2, s1, s2 = (np.float32(a)[None, :] for a in (m1, m2, s1, s2))
  p10 = (
    lambda key, n: m1 + s1 * jax.random.normal(key, (n * 10,)).reshape(n, 10),
    lambda x: norm_logpdf(x, m1, s1).sum(-1),
  )
  q10 = lambda x: norm_logpdf(x, m2, s2).sum(-1)  # noqa: E731
  for name, est in zip(
    estimators,
    mc_each(jax.random.key(2), p10, q10, estimators, num_samples=50_000),
    strict=False,
  ):
    assert within(est, np.sum(kl_normal(m1, s1, m2, s2))), name


def test_numpyro_gaussians_batched_and_full_covariance():
  """Form (a): a batch of 1-D Normals and a 10-D MultivariateNormal.

  The 10-D case uses antithetic pairs: NumPyro's own [n, 10] normal sampler
  takes seconds to compile on CPU; pairs are drawn by jaxkl.
  """
  p = dist.Normal(jnp.array([0.0, 1.0, -2.0]), jnp.array([1.0, 2.0, 0.7]))
  q = dist.Normal(0.5, 1.5)
  est = mc(jax.random.key(3), p, q, num_samples=50_000)
  assert est.value.shape == (3,)
  assert within(est, kl_normal(p.loc, p.scale, 0.5, 1.5))
  rng = np.random.default_rng(5)
  a1, a2 = rng.normal(size=(2, 10, 10)) * 0.15
  c1 = np.eye(10) * 0.9 + a1 @ a1.T
  c2 = np.eye(10) * 1.1 + a2 @ a2.T
  m1, m2 = rng.normal(0, 0.3, size=(2, 10))
  p = dist.MultivariateNormal(m1.astype(np.float32), c1.astype(np.float32))
  q = dist.MultivariateNormal(m2.astype(np.float32), c2.astype(np.float32))
  est = mc(jax.random.key(4), p, q, num_samples=50_000, estimator="cv", antithetic=True)
  assert within(est, kl_mvn(m1, c1, m2, c2))


def test_gamma_and_exponential():
  # A batch: Gamma || Gamma and Gamma || Gamma(1, 1) = Exponential(1) (one
  # compilation of the Gamma sampler, the slowest part of this file).
  conc, rate = np.array([2.0, 3.0]), np.array([3.0, 2.0])
  conc_q, rate_q = np.array([1.5, 1.0]), np.array([2.0, 1.0])
  p = dist.Gamma(jnp.asarray(conc, jnp.float32), jnp.asarray(rate, jnp.float32))
  q = dist.Gamma(jnp.asarray(conc_q, jnp.float32), jnp.asarray(rate_q, jnp.float32))
  truth = kl_gamma(conc, rate, conc_q, rate_q)
  for name, est in zip(
    ("k1", "k3"),
    mc_each(jax.random.key(10), p, q, ("k1", "k3"), num_samples=40_000),
    strict=False,
  ):
    assert within(est, truth), (name, est, truth)
  est = mc(
    jax.random.key(11),
    dist.Exponential(2.0),
    dist.Exponential(1.5),
    num_samples=40_000,
    estimator="cv",
  )
  assert within(est, np.log(2.0 / 1.5) + 1.5 / 2.0 - 1)


def test_gaussian_mixture_against_quadrature():
  """No closed form: the reference is adaptive quadrature (error < 1e-9)."""
  weights, locs, scales = [0.3, 0.7], [-1.0, 1.5], [0.5, 0.8]
  p = dist.MixtureSameFamily(
    dist.Categorical(probs=jnp.array(weights)),
    dist.Normal(jnp.array(locs), jnp.array(scales)),
  )
  q = dist.Normal(0.5, 1.5)

  def integrand(x):
    px = sum(
      w * scipy.stats.norm.pdf(x, m, s)
      for w, m, s in zip(weights, locs, scales, strict=False)
    )
    return px * (np.log(px) - scipy.stats.norm.logpdf(x, 0.5, 1.5))

  truth, error = scipy.integrate.quad(integrand, -12, 14, epsabs=1e-12, limit=200)
  assert error < 1e-9
  # No rsample for a mixture: gradient='auto' samples without it.
  est = mc(jax.random.key(20), p, q, num_samples=50_000)
  assert within(est, truth)
  with pytest.raises(ValueError, match="pathwise"):
    jaxkl.monte_carlo_kl(jax.random.key(20), p, q, num_samples=10, gradient="pathwise")


def test_k3_is_biased_when_q_has_mass_outside_p():
  """P = Exp(1), Q = N(0, 1): E[k3] = KL - Q(x < 0) = log(2 pi)/2 - 1/2."""
  kl = 0.5 * math.log(2 * math.pi)
  q = dist.Normal(0.0, 1.0)
  k1, k3 = mc_each(
    jax.random.key(30), dist.Exponential(1.0), q, ("k1", "k3"), num_samples=50_000
  )
  assert within(k1, kl) and within(k3, kl - 0.5)


# ----------------------------------------------------------------------------
# Statistical properties over many independent runs (vmap over keys).


@pytest.mark.parametrize(
  "config",
  [
    dict(estimator="k1"),
    dict(estimator="k3"),
    dict(estimator="cv", antithetic=True),
    dict(estimator="cv_crossfit"),
    dict(estimator="k1", proposal="wide", self_normalized=True),
  ],
)
def test_confidence_interval_coverage(config):
  """The 95% interval covers the truth in 93-97% of 2000 runs (n = 1000).

  With 2000 runs the binomial SD of the coverage is 0.49%, so 93-97% is
  +-4 SD around 95%; P = N(0.3, 1.2^2), Q = N(-0.2, 1), so every estimator
  has finite variance.
  """
  config = dict(config)
  truth = float(kl_normal(0.3, 1.2, -0.2, 1.0))
  p = jaxkl.StandardNormalPushforward(
    lambda z: 0.3 + 1.2 * z, lambda x: norm_logpdf(x, 0.3, 1.2)
  )
  if config.pop("proposal", None):
    config["proposal"] = jaxkl.StandardNormalPushforward(
      lambda z: 0.0 + 1.6 * z, lambda x: norm_logpdf(x, 0.0, 1.6)
    )
  q = lambda x: norm_logpdf(x, -0.2, 1.0)  # noqa: E731

  @jax.jit
  def covered(keys):
    def one(key):
      est = jaxkl.monte_carlo_kl(key, p, q, num_samples=1000, **config)
      low, high = est.confidence_interval(0.95)
      return (low <= truth) & (truth <= high)

    return jax.vmap(one)(keys)

  coverage = float(jnp.mean(covered(jax.random.split(jax.random.key(40), 2000))))
  assert 0.93 <= coverage <= 0.97, coverage


def test_k1_k3_unbiased_and_k2_bias_matches_theory():
  """P = N(0, 1), Q = N(mu, 1), mu = 1: KL = mu^2/2 = 0.5.

  log r = mu x - mu^2/2, so E[k2] = E[(mu x - mu^2/2)^2]/2
  = (mu^2 + mu^4/4)/2 = 0.625: a bias of mu^4/8. 4000 runs of n = 8; the
  mean over runs must lie within 4 SE of the theory (SE from the runs), and
  k2's bias is more than 20 SE.
  """
  mu = 1.0
  p = gaussian_pair(0.0, 1.0)
  q = lambda x: norm_logpdf(x, mu, 1.0)  # noqa: E731

  @jax.jit
  def runs(keys):
    return {
      e: jax.vmap(
        lambda k, e=e: jaxkl.monte_carlo_kl(k, p, q, num_samples=8, estimator=e).value
      )(keys)
      for e in ("k1", "k2", "k3")
    }

  values = runs(jax.random.split(jax.random.key(50), 4000))
  expected = {"k1": mu**2 / 2, "k2": (mu**2 + mu**4 / 4) / 2, "k3": mu**2 / 2}
  for name, v in values.items():
    v = np.asarray(v, np.float64)
    se = v.std(ddof=1) / np.sqrt(v.size)
    assert abs(v.mean() - expected[name]) <= 4 * se, (name, v.mean(), se)
    if name == "k2":
      assert v.mean() - mu**2 / 2 > 20 * se


def test_cv_crossfit_removes_the_small_sample_bias_of_cv():
  """P = N(0, 1), Q = N(1, 1), KL = 0.5; 4000 runs of n = 20.

  'cv_crossfit''s mean over runs lies within 4 SE (of that mean) of 0.5;
  'cv' fits its coefficient to the samples it corrects and is biased by
  about -0.084 here (a 2e5-run simulation), about 30 SE of the mean over
  4000 runs: we require more than 10 SE, which a correct (unbiased) 'cv'
  would reach with probability below 1e-20. The reported SE of
  'cv_crossfit' is honest: the mean of SE^2 over runs matches the variance
  of the estimates (1.18x in that simulation: conservative; without the
  (cv - crossfit)^2 term it would be 0.75x). At n = 100 (1000 runs) the
  cross-fitted variance is 0.57x that of k1 in that simulation; we
  require below 0.8x.
  """
  p = gaussian_pair(0.0, 1.0)
  q = lambda x: norm_logpdf(x, 1.0, 1.0)  # noqa: E731

  @functools.partial(jax.jit, static_argnums=1)
  def runs(keys, n):
    return {
      e: jax.vmap(
        lambda k, e=e: jaxkl.monte_carlo_kl(k, p, q, num_samples=n, estimator=e)
      )(keys)
      for e in ("k1", "cv", "cv_crossfit")
    }

  small = runs(jax.random.split(jax.random.key(52), 4000), 20)
  mean_se = {}
  for name, est in small.items():
    v = np.asarray(est.value, np.float64)
    mean_se[name] = v.mean(), v.std(ddof=1) / np.sqrt(v.size)
  value, se = mean_se["cv_crossfit"]
  assert abs(value - 0.5) <= 4 * se, (value, se)
  value, se = mean_se["cv"]
  assert value - 0.5 < -10 * se, (value, se)
  crossfit = small["cv_crossfit"]
  ratio = np.mean(np.asarray(crossfit.stderr, np.float64) ** 2) / np.var(
    np.asarray(crossfit.value, np.float64), ddof=1
  )
  assert 0.95 < ratio < 1.5, ratio

  moderate = runs(jax.random.split(jax.random.key(53), 1000), 100)
  variance = {
    e: np.var(np.asarray(est.value, np.float64)) for e, est in moderate.items()
  }
  assert variance["cv_crossfit"] < 0.8 * variance["k1"], variance


def test_k2_mean_matches_quadrature_with_unequal_scales(x64):
  """E_P[k2] for P = N(0.3, 1.2^2), Q = N(-0.5, 0.8^2) by quadrature."""

  def integrand(x):
    d = scipy.stats.norm.logpdf(x, -0.5, 0.8) - scipy.stats.norm.logpdf(x, 0.3, 1.2)
    return scipy.stats.norm.pdf(x, 0.3, 1.2) * 0.5 * d * d

  truth = scipy.integrate.quad(integrand, -20, 20, epsabs=1e-12)[0]
  est = mc(
    jax.random.key(51),
    gaussian_pair(0.3, 1.2),
    lambda x: norm_logpdf(x, -0.5, 0.8),
    num_samples=100_000,
    estimator="k2",
  )
  assert within(est, truth)
  assert est.value.dtype == jnp.float64
  assert abs(truth - float(kl_normal(0.3, 1.2, -0.5, 0.8))) > 0.1


# ----------------------------------------------------------------------------
# Gradients.


def _gaussian_kl_closed(params):
  m, ls, mq, lsq = params
  return kl_normal(m, jnp.exp(ls), mq, jnp.exp(lsq))


@pytest.mark.parametrize(
  "gradient,estimator,extra",
  [
    ("pathwise", "k1", {}),
    ("pathwise", "k3", {}),
    ("pathwise", "cv", {"antithetic": True}),
    ("score_function", "k1", {}),
    ("score_function", "k3", {"antithetic": True}),
    ("score_function", "cv", {"proposal": True}),
    ("pathwise", "cv_crossfit", {}),
    ("score_function", "cv_crossfit", {"antithetic": True}),
  ],
)
def test_gradient_matches_closed_form(gradient, estimator, extra):
  """Mean over 256 runs (n = 512) of grad(value) within 4 SE of the truth.

  Parameters (mean, log scale) of P = N(0.4, 1.1^2) and of Q = N(-0.3, 0.9^2);
  P is a NumPyro Normal (rsample for pathwise). The SE is that of the mean
  over runs; we also require it to be small (< 10% of the largest component)
  so that the test has power. With sigma_Q < sigma_P, r = q/p has all
  moments, and the O(1/n) bias of 'cv' (its coefficient is fitted to the
  same samples) is below 1 SE here (with sigma_Q = 1.1, sigma_P = 0.9 it is
  12 SE: E_P[r^4] is infinite, and the bias decays like n^-1/2).
  """
  extra = dict(extra)
  if extra.pop("proposal", False):
    extra["proposal"] = dist.Normal(0.0, 1.5)
  params = jnp.array([0.4, math.log(1.1), -0.3, math.log(0.9)])
  truth = np.asarray(jax.grad(_gaussian_kl_closed)(params))

  def value(prm, key):
    p = dist.Normal(prm[0], jnp.exp(prm[1]))
    q = dist.Normal(prm[2], jnp.exp(prm[3]))
    return jaxkl.monte_carlo_kl(
      key, p, q, num_samples=512, estimator=estimator, gradient=gradient, **extra
    ).value

  grads = jax.jit(jax.vmap(jax.grad(value), in_axes=(None, 0)))(
    params, jax.random.split(jax.random.key(60), 256)
  )
  grads = np.asarray(grads, np.float64)
  mean, se = grads.mean(0), grads.std(0, ddof=1) / np.sqrt(grads.shape[0])
  # 1e-5: float32 rounding, visible where antithetic pairs make SE ~ 1e-8.
  assert np.all(np.abs(mean - truth) <= 4 * se + 1e-5), (mean, truth, se)
  assert np.all(se < 0.1 * np.max(np.abs(truth))), se


def test_score_function_gradient_for_a_categorical():
  """Discrete P: no pathwise gradient, yet the score function is unbiased.

  P = Categorical(logits), Q = Categorical(probs) over 5 classes; the exact
  KL is a finite sum. Mean over 256 runs (n = 256) within 4 SE.
  """
  logits = jnp.array([0.5, -1.0, 0.0, 1.2, -0.3])
  q_probs = jnp.array([0.1, 0.2, 0.3, 0.25, 0.15])

  def exact(lg):
    lp = jax.nn.log_softmax(lg)
    return jnp.sum(jnp.exp(lp) * (lp - jnp.log(q_probs)))

  truth = np.asarray(jax.grad(exact)(logits))
  q = dist.Categorical(probs=q_probs)

  def value(lg, key):
    return jaxkl.monte_carlo_kl(
      key, dist.Categorical(logits=lg), q, num_samples=256
    ).value  # 'auto'

  grads = np.asarray(
    jax.jit(jax.vmap(jax.grad(value), in_axes=(None, 0)))(
      logits, jax.random.split(jax.random.key(70), 256)
    ),
    np.float64,
  )
  mean, se = grads.mean(0), grads.std(0, ddof=1) / np.sqrt(grads.shape[0])
  assert np.all(np.abs(mean - truth) <= 4 * se), (mean, truth, se)
  assert np.all(se < 0.1 * np.max(np.abs(truth)))
  with pytest.raises(ValueError, match="pathwise"):
    jaxkl.monte_carlo_kl(
      jax.random.key(0),
      dist.Categorical(logits=logits),
      q,
      num_samples=4,
      gradient="pathwise",
    )


# ----------------------------------------------------------------------------
# Variance reduction, transformations, accepted forms.


def test_antithetic_pairs():
  """Equal scales: k1 = m^2/2 + m z is odd in z, so pairs are exact."""
  p = dist.Normal(0.7, 1.0)
  q = dist.Normal(0.0, 1.0)
  est = mc(jax.random.key(80), p, q, num_samples=1000, antithetic=True)
  np.testing.assert_allclose(est.value, 0.7**2 / 2, rtol=1e-5)
  assert est.stderr < 1e-5
  # Unequal scales, 10-D diagonal (Independent) and LogNormal: still within
  # 4 SE. For the 10-D k1 the part odd in z has variance sum(loc^2 scale^2)
  # ~ 4, the even part sum((scale^2 - 1)^2)/2 ~ 0.03: pairs cut the SE ~10x.
  loc, scale = jnp.linspace(-1.0, 1.0, 10), jnp.linspace(0.9, 1.1, 10)
  p10 = dist.Normal(loc, scale).to_event(1)
  q10 = dist.Normal(jnp.zeros(10), jnp.ones(10)).to_event(1)
  truth = np.sum(kl_normal(loc, scale, 0.0, 1.0))
  pairs = mc(jax.random.key(81), p10, q10, num_samples=20_000, antithetic=True)
  # The same P without pairs (a pushforward: NumPyro's own [n, 10] sampler is
  # slow to compile on CPU).
  p10_plain = jaxkl.StandardNormalPushforward(
    lambda z: loc[None, :] + scale[None, :] * z,
    lambda x: norm_logpdf(x, loc[None, :], scale[None, :]).sum(-1),
    (10,),
  )
  plain = mc(jax.random.key(81), p10_plain, q10, num_samples=20_000)
  assert within(pairs, truth) and within(plain, truth)
  assert pairs.stderr < 0.3 * plain.stderr
  lognormal = mc(
    jax.random.key(82),
    dist.LogNormal(0.2, 0.9),
    dist.LogNormal(0.0, 1.0),
    num_samples=20_000,
    antithetic=True,
  )
  assert within(lognormal, kl_normal(0.2, 0.9, 0.0, 1.0))
  with pytest.raises(ValueError, match="antithetic"):
    jaxkl.monte_carlo_kl(
      jax.random.key(0), dist.Gamma(2.0, 1.0), q, num_samples=8, antithetic=True
    )
  with pytest.raises(ValueError, match="antithetic"):
    jaxkl.monte_carlo_kl(
      jax.random.key(0), gaussian_pair(0.0, 1.0), q, num_samples=8, antithetic=True
    )
  with pytest.raises(ValueError, match="even"):
    jaxkl.monte_carlo_kl(jax.random.key(0), p, q, num_samples=7, antithetic=True)


def test_importance_sampling_and_control_variate_reduce_variance():
  """P = N(0, 1) vs Q = N(0.2, 0.95): the CV beats k1; IS estimates agree."""
  p = dist.Normal(0.0, 1.0)
  q = dist.Normal(0.2, 0.95)
  truth = kl_normal(0.0, 1.0, 0.2, 0.95)
  k1, cv = mc_each(jax.random.key(90), p, q, ("k1", "cv"), num_samples=20_000)
  assert within(k1, truth) and within(cv, truth)
  assert cv.stderr < 0.5 * k1.stderr
  proposal = dist.Normal(0.2, 1.4)
  # With a proposal, p only needs a log-density.
  log_p = lambda x: norm_logpdf(x, 0.0, 1.0)  # noqa: E731
  estimates = jax.jit(
    lambda k: [
      jaxkl.monte_carlo_kl(
        k, log_p, q, num_samples=20_000, proposal=proposal, self_normalized=normalized
      )
      for normalized in (False, True)
    ]
  )(jax.random.key(91))
  for est in estimates:
    assert within(est, truth)
    assert 0.5 * 20_000 < est.effective_sample_size < 20_000


def test_vmap_over_parameters_and_jit():
  locs = jnp.linspace(-1.0, 1.0, 5)
  q = dist.Normal(0.0, 1.3)

  def kl(loc, key):
    return jaxkl.monte_carlo_kl(
      key, dist.Normal(loc, 0.8), q, num_samples=20_000, estimator="k3"
    )

  key = jax.random.key(100)
  batched = jax.jit(jax.vmap(kl, in_axes=(0, None)))(locs, key)
  assert isinstance(batched, jaxkl.KLEstimate)
  assert batched.value.shape == (5,) and batched.num_samples == 20_000
  assert within(batched, kl_normal(locs, 0.8, 0.0, 1.3))
  # NumPyro distributions are pytrees: they can be jit arguments.
  f = jax.jit(
    lambda k, p: jaxkl.monte_carlo_kl(k, p, q, num_samples=20_000, estimator="k3")
  )
  one = f(key, dist.Normal(locs[3], 0.8))
  np.testing.assert_allclose(batched.value[3], one.value, rtol=1e-5)
  # sigma_Q^2 = 1.69 > 2 sigma_P^2 = 1.28: E_P[r^2] = inf, k3's variance is
  # infinite, and the tail diagnostic says so.
  assert np.all(np.asarray(batched.pareto_k) >= 0.5), batched.pareto_k
  with pytest.warns(RuntimeWarning, match="infinite variance"):
    low, high = one.confidence_interval(0.9)
  np.testing.assert_allclose(high - one.value, 1.6448536 * one.stderr, rtol=1e-5)
  np.testing.assert_allclose(one.value - low, 1.6448536 * one.stderr, rtol=1e-5)


class TfpStyleNormal:
  """Duck-typed TFP/Distrax convention: sample(seed=, sample_shape=)."""

  def __init__(self, loc, scale, reparameterized=True):
    self.loc, self.scale = loc, scale
    self.reparameterization_type = (
      "FULLY_REPARAMETERIZED" if reparameterized else "NOT_REPARAMETERIZED"
    )

  def sample(self, sample_shape=(), seed=None):
    return self.loc + self.scale * jax.random.normal(seed, sample_shape)

  def log_prob(self, x):
    return norm_logpdf(x, self.loc, self.scale)


def test_tfp_style_objects_and_pushforward():
  truth = kl_normal(0.2, 1.1, 0.0, 1.0)
  est = mc(
    jax.random.key(110),
    TfpStyleNormal(0.2, 1.1),
    TfpStyleNormal(0.0, 1.0),
    num_samples=20_000,
  )
  assert within(est, truth)
  grad = jax.jit(
    jax.grad(
      lambda m: (
        jaxkl.monte_carlo_kl(
          jax.random.key(111), TfpStyleNormal(m, 1.0), norm_logpdf, num_samples=20_000
        ).value
      )
    )
  )(0.6)
  assert abs(grad - 0.6) < 0.05
  with pytest.raises(ValueError, match="pathwise"):
    jaxkl.monte_carlo_kl(
      jax.random.key(0),
      TfpStyleNormal(0.0, 1.0, False),
      norm_logpdf,
      num_samples=4,
      gradient="pathwise",
    )


def test_distrax_and_tfp_distributions():
  """Form (b) with the real libraries: Distrax and TFP's JAX substrate.

  Values within 4 SE of the closed forms; the pathwise gradient through
  distrax samples (mean over 128 runs of n = 512) within 4 SE of the
  closed-form gradient. Distrax's MultivariateNormalDiag needs rank
  promotion, which this suite sets to 'raise': jaxkl scopes the library's
  calls, while the caller's own callables keep the caller's settings.
  """
  distrax = pytest.importorskip("distrax")
  tfp = pytest.importorskip("tensorflow_probability.substrates.jax")
  tfd = tfp.distributions
  key = jax.random.key(120)
  est = mc(
    key,
    distrax.Normal(0.3, 1.2),
    distrax.Normal(-0.4, 1.0),
    num_samples=20_000,
    estimator="k3",
  )
  assert within(est, kl_normal(0.3, 1.2, -0.4, 1.0))
  loc, scale = jnp.linspace(-1.0, 1.0, 10), jnp.linspace(0.8, 1.2, 10)
  p10 = distrax.MultivariateNormalDiag(loc, scale)
  q10 = distrax.MultivariateNormalDiag(jnp.zeros(10), jnp.ones(10))
  est = mc(key, p10, q10, num_samples=20_000, estimator="cv_crossfit")
  assert est.value.shape == ()
  assert within(est, np.sum(kl_normal(loc, scale, 0.0, 1.0)))
  # Integer samples: 'auto' uses the score function; the value is exact-ish.
  logits = jnp.array([0.5, -1.0, 0.0, 1.2])
  q_probs = jnp.array([0.1, 0.2, 0.3, 0.4])
  est = mc(
    key,
    distrax.Categorical(logits=logits),
    distrax.Categorical(probs=q_probs),
    num_samples=20_000,
  )
  lp = jax.nn.log_softmax(logits)
  assert within(est, jnp.sum(jnp.exp(lp) * (lp - jnp.log(q_probs))))
  # TFP: a reparameterized Normal, and a Poisson that TFP marks as not.
  est = mc(key, tfd.Normal(0.2, 1.1), tfd.Normal(0.0, 1.0), num_samples=20_000)
  assert within(est, kl_normal(0.2, 1.1, 0.0, 1.0))
  with pytest.raises(ValueError, match="pathwise"):
    jaxkl.monte_carlo_kl(
      key, tfd.Poisson(3.0), tfd.Poisson(2.0), num_samples=4, gradient="pathwise"
    )
  with pytest.raises(ValueError, match="rank_promotion"):
    jaxkl.monte_carlo_kl(
      key,
      distrax.Normal(jnp.zeros(3), 1.0),
      lambda x: norm_logpdf(x, jnp.zeros(3)),
      num_samples=4,
    )

  params = jnp.array([0.4, math.log(1.1), -0.3, math.log(0.9)])
  truth = np.asarray(jax.grad(_gaussian_kl_closed)(params))

  def value(prm, k):
    return jaxkl.monte_carlo_kl(
      k,
      distrax.Normal(prm[0], jnp.exp(prm[1])),
      distrax.Normal(prm[2], jnp.exp(prm[3])),
      num_samples=512,
      gradient="pathwise",
    ).value

  grads = np.asarray(
    jax.jit(jax.vmap(jax.grad(value), in_axes=(None, 0)))(
      params, jax.random.split(jax.random.key(121), 128)
    ),
    np.float64,
  )
  mean, se = grads.mean(0), grads.std(0, ddof=1) / np.sqrt(grads.shape[0])
  assert np.all(np.abs(mean - truth) <= 4 * se), (mean, truth, se)
  assert np.all(se < 0.1 * np.max(np.abs(truth))), se


def test_monte_carlo_validation():
  p, q = gaussian_pair(0.0, 1.0), norm_logpdf
  key = jax.random.key(0)
  with pytest.raises(TypeError, match="num_samples"):
    jaxkl.monte_carlo_kl(key, p, q, num_samples=10.0)
  with pytest.raises(ValueError, match="at least 2"):
    jaxkl.monte_carlo_kl(key, p, q, num_samples=1)
  with pytest.raises(ValueError, match="gradient"):
    jaxkl.monte_carlo_kl(key, p, q, num_samples=4, gradient="reinforce")
  with pytest.raises(ValueError, match="estimator"):
    jaxkl.monte_carlo_kl(key, p, q, num_samples=4, estimator="k4")
  with pytest.raises(ValueError, match="proposal"):
    jaxkl.monte_carlo_kl(key, p, q, num_samples=4, self_normalized=True)
  with pytest.raises(TypeError, match="sampled"):
    jaxkl.monte_carlo_kl(key, norm_logpdf, q, num_samples=4)
  with pytest.raises(TypeError, match="callable"):
    jaxkl.monte_carlo_kl(key, p, 3.0, num_samples=4)
  with pytest.raises(TypeError, match="bool"):
    jaxkl.monte_carlo_kl(key, p, q, num_samples=4, antithetic="yes")
  with pytest.raises(ValueError, match="leading axis"):
    jaxkl.monte_carlo_kl(key, p, lambda x: jnp.sum(x), num_samples=4)
  estimate = jaxkl.KLEstimate(
    jnp.float32(0.1), jnp.float32(0.01), jnp.float32(4), num_samples=4, estimator="k1"
  )
  with pytest.raises(ValueError, match="level"):
    estimate.confidence_interval(1.5)
  with pytest.raises(TypeError, match="level"):
    estimate.confidence_interval("95%")


def test_numpyro_is_not_imported_by_jaxkl():
  code = "import sys, jaxkl; assert 'numpyro' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------
# The tail diagnostic pareto_k (PSIS's k-hat).


def zhang_stephens_reference(x):
  """GPD shape from exceedances ``x`` (NumPy, float64), written from the paper.

  Zhang & Stephens (2009), in their parameterization
  F(x) = 1 - (1 - b x)^(1/k) (shape xi = -k): for each b in the
  grid b_j = 1/x_(n) + (1 - sqrt(m / (j - 1/2))) / (3 x_(q)), k(b) = -mean
  log(1 - b x) and l(b) = n (log(b / k) + k - 1); b-hat is the mean of b_j
  weighted by exp(l(b_j)) (normalized as 1 / sum_i exp(l_i - l_j)); the
  shape is xi = -k(b-hat) = mean log(1 - b-hat x). PSIS (Vehtari et al.
  2024) then shrinks: (n xi + 10 * 0.5) / (n + 10).
  """
  x = np.sort(np.asarray(x, np.float64))
  n = x.size
  m = 30 + int(np.sqrt(n))
  q = int(np.floor(n / 4 + 0.5))
  b = 1 / x[-1] + (1 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))) / (3 * x[q - 1])
  k = np.array([-np.mean(np.log1p(-bj * x)) for bj in b])
  loglik = n * (np.log(b / k) + k - 1)
  with np.errstate(over="ignore"):  # exp overflow: a weight of 1/inf = 0
    weights = np.array([1 / np.sum(np.exp(loglik - lj)) for lj in loglik])
  b_hat = np.sum(weights * b) / np.sum(weights)
  xi = np.mean(np.log1p(-b_hat * x))
  return (n * xi + 10 * 0.5) / (n + 10)


def pareto_k(values):
  """jaxkl's k-hat of the upper tail of ``values`` (last axis)."""
  from jaxkl import _estimators  # pylint: disable=import-outside-toplevel

  return _estimators.pareto_k_of_rows(jnp.asarray(values)[None])


def genpareto(key, shape, xi):
  """GPD(shape xi, scale 1) by inversion: ((1 - U)^-xi - 1) / xi."""
  u = jax.random.uniform(key, shape, jnp.float64)
  return jnp.where(xi == 0, -jnp.log1p(-u), jnp.expm1(-xi * jnp.log1p(-u)) / xi)


def test_gpd_fit_matches_an_independent_numpy_reference(x64):
  from jaxkl import _estimators  # pylint: disable=import-outside-toplevel

  for i, (xi, size) in enumerate(
    # 20000 exceedances x 171 grid points is past _GRID_ELEMENTS: the grid
    # is then evaluated point by point (O(M) memory).
    [(0.2, 300), (0.7, 300), (-0.3, 57), (1.2, 1000), (0.0, 20), (0.4, 20_000)]
  ):
    x = np.sort(np.asarray(genpareto(jax.random.key(i), (size,), xi)))
    got = float(jax.jit(_estimators.gpd_shape)(jnp.asarray(x)))
    np.testing.assert_allclose(
      got,
      zhang_stephens_reference(x),
      rtol=1e-9,
      atol=1e-12,
      err_msg=f"xi={xi}, M={size}",
    )


@pytest.mark.parametrize("xi", [-0.3, 0.0, 0.2, 0.7, 1.0])
def test_pareto_k_recovers_the_shape_of_a_generalized_pareto(xi, x64):
  """k-hat of n = 10^4 GPD draws, 200 seeds: mean within 0.03 of xi.

  The tail has M = 300 values, so one k-hat has an SD of about
  (1 + xi) / sqrt(M) <= 0.12 (asserted below 0.13), and the mean over 200
  seeds an SD below 0.009; PSIS's prior pulls k-hat towards 0.5 by
  10 / 310 * (0.5 - xi), so the mean is compared with xi shifted by that.
  """
  draws = genpareto(jax.random.key(11), (200, 10_000), xi)
  k = np.asarray(jax.jit(jax.vmap(pareto_k))(draws))
  shrunk = xi + 10 / 310 * (0.5 - xi)
  assert abs(k.mean() - shrunk) < 0.03, (k.mean(), xi)
  assert k.std() < 0.13, k.std()


def test_long_tails_fitted_point_by_point_equal_the_padded_fit(x64):
  # The traced-size fit (the last `size` entries of a zero-padded row) of a
  # long tail, point by point, equals the plain fit of those entries.
  from jaxkl import _estimators  # pylint: disable=import-outside-toplevel

  x = np.sort(np.asarray(genpareto(jax.random.key(3), (12_000,), 0.3)))
  assert (30 + 109) * len(x) > _estimators._GRID_ELEMENTS
  padded = jnp.concatenate([jnp.zeros(3000), jnp.asarray(x)])
  got = jax.jit(_estimators.gpd_shape)(padded, jnp.asarray(len(x)))
  want = zhang_stephens_reference(x)
  np.testing.assert_allclose(float(got), want, rtol=1e-9, atol=1e-12)


def test_vectorized_tail_sizes_equal_the_scalar_rule():
  from jaxkl import _estimators  # pylint: disable=import-outside-toplevel

  counts = np.concatenate(
    [np.arange(0, 300_000), np.array([2**31 - 1, 10**9, 123_456_789, 4 * 10**8])]
  )
  # PSIS's rule, M = ceil(min(S / 5, 3 sqrt(S))) in Python floats, 0 below 25.
  want = [0 if c < 25 else math.ceil(min(0.2 * c, 3.0 * math.sqrt(c))) for c in counts]
  np.testing.assert_array_equal(_estimators.pareto_tail_sizes(counts), want)
  assert [_estimators.pareto_tail_size(int(c)) for c in counts[::997]] == want[::997]


def test_pareto_k_edge_cases():
  from jaxkl import _estimators  # pylint: disable=import-outside-toplevel

  assert _estimators.pareto_tail_size(24) == 0
  assert _estimators.pareto_tail_size(25) == 5
  assert _estimators.pareto_tail_size(10_000) == 300
  assert _estimators.pareto_tail_size(100) == 20
  assert float(pareto_k(jnp.zeros(100))) == -np.inf  # constant tail
  assert np.isnan(float(pareto_k(jnp.ones(24))))  # too few terms
  assert np.isnan(float(pareto_k(jnp.array([jnp.inf] + [0.0] * 99))))
  # Ties (discrete terms: exponential draws rounded to 1/2): a light tail.
  ties = jnp.floor(2 * jax.random.exponential(jax.random.key(1), (5, 1000)))
  k = np.asarray(jax.vmap(pareto_k)(ties / 2))
  assert np.all(np.isfinite(k)) and np.all(k < 0.5), k
  # P == Q: every term 0, the interval is exact, nothing is flagged.
  p = gaussian_pair(0.0, 1.0)
  est = mc(jax.random.key(0), p, p[1], num_samples=1000, estimator="k3")
  assert float(est.value) == 0.0 and float(est.pareto_k) < 0.5
  est = mc(jax.random.key(0), p, p[1], num_samples=1000, tail_diagnostic=False)
  assert np.isnan(float(est.pareto_k))
  est = mc(jax.random.key(0), p, norm_logpdf, num_samples=24)
  assert np.isnan(float(est.pareto_k))
  with pytest.raises(TypeError, match="tail_diagnostic"):
    jaxkl.monte_carlo_kl(
      jax.random.key(0), p, norm_logpdf, num_samples=64, tail_diagnostic=1
    )


def test_pareto_k_is_minus_inf_for_a_constant_tail_the_limit_of_bounded_ones(x64):
  """k-hat = -inf when P == Q: the limit of ever more bounded tails, "trust".

  A GPD with shape xi < 0 has a bounded tail, the more so as xi falls; a
  constant tail (a point mass) is the limit xi -> -inf. k-hat follows xi
  down (the mean over 50 seeds of n = 2000 draws falls with xi; at
  xi = -0.5 it is within 0.1 of xi shrunk by PSIS's prior, M = 135:
  10 / 145 of the way to 0.5), and the constant tail gives -inf, below
  every finite value: never flagged. For P == Q,
  every estimator's terms are 0 (KL = 0, the closed form), with or
  without antithetic pairs and for any batch entry with P == Q: the value
  and the standard error are exactly 0, k-hat is -inf, and the interval
  is [0, 0] without a warning.
  """
  means = []
  for i, xi in enumerate([-0.5, -1.0, -2.0, -4.0]):
    k = np.asarray(
      jax.jit(jax.vmap(pareto_k))(genpareto(jax.random.key(i), (50, 2000), xi))
    )
    assert np.all(np.isfinite(k)), xi
    if xi == -0.5:  # below -1 the fit is biased towards 0.5, but it still falls
      assert abs(k.mean() - (xi + 10 / 145 * (0.5 - xi))) < 0.1, k.mean()
    means.append(k.mean())
  assert np.all(np.diff(means) < -0.2), means
  assert float(pareto_k(jnp.full(2000, 3.7))) == -np.inf < means[-1]
  estimators = ("k1", "k2", "k3", "cv", "cv_crossfit")
  locs = jnp.array([0.0, 0.5, 0.0])  # P == Q in entries 0 and 2
  shift = lambda z: z + locs[None]  # noqa: E731
  log_p = lambda x: norm_logpdf(x, locs[None], 1.0)  # noqa: E731
  p = (lambda key, n: shift(jax.random.normal(key, (n, 3))), log_p)
  q = lambda x: norm_logpdf(x, 0.0, 1.0)  # noqa: E731
  pushforward = jaxkl.StandardNormalPushforward(shift, log_p, [3])
  truth = np.asarray(kl_normal(locs, 1.0, 0.0, 1.0))
  assert truth[0] == truth[2] == 0.0
  for dist, antithetic in ((p, False), (pushforward, True)):
    ests = mc_each(
      jax.random.key(5), dist, q, estimators, num_samples=400, antithetic=antithetic
    )
    for name, est in zip(estimators, ests, strict=True):
      for i in (0, 2):
        assert float(est.value[i]) == truth[i] == 0.0, name
        assert float(est.stderr[i]) == 0.0, name
        assert float(est.pareto_k[i]) == -np.inf, name
      if antithetic and name == "k1":
        # log r is linear in x: every pair's mean is the same (up to
        # rounding), a constant tail (see the rounding test below).
        assert float(est.pareto_k[1]) == -np.inf, name
      else:
        assert np.isfinite(float(est.pareto_k[1])), name  # P != Q: a real fit
      with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = est.confidence_interval()
      assert float(low[0]) == float(high[0]) == 0.0, name


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
  loc=st.floats(-3.0, 3.0),
  scale=st.floats(0.1, 10.0),
  seed=st.integers(0, 2**16),
  x64_on=st.booleans(),
)
def test_terms_equal_up_to_rounding_read_as_a_constant_tail(loc, scale, seed, x64_on):
  """Antithetic pairs of a linear log-ratio (equal-variance Gaussians) give
  pair means that are equal in exact arithmetic: the tail diagnostic must
  read rounding noise as ties (-inf, trust), not fit a tail to it, whatever
  the dtype and the fused arithmetic that produced the noise."""
  with jax.enable_x64(x64_on):
    dist = jaxkl.StandardNormalPushforward(
      lambda z: z * scale + loc, lambda x: norm_logpdf(x, loc, scale), [1]
    )
    q = lambda x: norm_logpdf(x, 0.0, scale)  # noqa: E731
    est = jaxkl.monte_carlo_kl(
      jax.random.key(seed), dist, q, num_samples=400, antithetic=True
    )
    assert float(est.pareto_k[0]) == -np.inf
    truth = float(kl_normal(loc, scale, 0.0, scale))
    np.testing.assert_allclose(float(est.value[0]), truth, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      est.confidence_interval()


def student_t3_truth():
  """KL(N(0, 1) || t_3) by quadrature."""
  return scipy.integrate.quad(
    lambda x: (
      scipy.stats.norm.pdf(x)
      * (scipy.stats.norm.logpdf(x) - scipy.stats.t.logpdf(x, 3))
    ),
    -np.inf,
    np.inf,
    epsabs=1e-13,
  )[0]


ESTIMATORS = ("k1", "k3", "cv", "cv_crossfit")


def repeated(p, q, truth, seeds, key, n=10_000):
  """Coverage of the 95% interval and pareto_k, per estimator and seed."""

  @jax.jit
  def run(keys):
    def one(key):
      out = {}
      for name in ESTIMATORS:
        est = jaxkl.monte_carlo_kl(key, p, q, num_samples=n, estimator=name)
        z = 1.959963984540054
        covered = jnp.abs(est.value - truth) <= z * est.stderr
        out[name] = (covered, est.pareto_k)
      return out

    return jax.lax.map(one, keys, batch_size=100)

  result = run(jax.random.split(key, seeds))
  return {name: (np.asarray(c), np.asarray(k)) for name, (c, k) in result.items()}


@pytest.fixture(scope="module")
def student_t_runs():
  with jax.threefry_partitionable(False):
    return repeated(
      gaussian_pair(0.0, 1.0),
      lambda x: jax.scipy.stats.t.logpdf(x, 3.0),
      student_t3_truth(),
      1000,
      jax.random.key(70),
    )


@pytest.fixture(scope="module")
def gaussian_runs():
  with jax.threefry_partitionable(False):
    return repeated(
      gaussian_pair(0.0, 1.0),
      lambda x: norm_logpdf(x, 1.0),
      0.5,
      2000,
      jax.random.key(71),
    )


def test_pareto_k_flags_infinite_variance(student_t_runs):
  """P = N(0, 1), Q = t_3: r = q/p has a Pareto-like tail (index 1).

  k3, cv and cv_crossfit need E_P[r^2] < inf and their intervals cover the
  truth far less than 95% (the issue measured 41%, 50%, 59%); k-hat flags
  them in >= 90% of 1000 runs at n = 10^4 (measured: 96%; with that rate
  the binomial SD is 0.6%, so 90% is 10 SD away). k1 has finite variance:
  flagged in none of the runs, and its unflagged coverage is within
  93-97% (binomial SD 0.69% at 1000 runs: the band is +-2.9 SD).
  """
  for name in ("k3", "cv", "cv_crossfit"):
    covered, k = student_t_runs[name]
    assert covered.mean() < 0.8, (name, covered.mean())
    assert (k >= 0.5).mean() >= 0.9, (name, (k >= 0.5).mean())
  covered, k = student_t_runs["k1"]
  assert np.all(k < 0.5), k.max()
  assert 0.93 <= covered[k < 0.5].mean() <= 0.97, covered.mean()


def test_pareto_k_does_not_flag_gaussians_and_coverage_holds(gaussian_runs):
  """P = N(0, 1), Q = N(1, 1), n = 10^4, 2000 runs: every variance finite.

  Not flagged in >= 99% of runs for every estimator (measured: none of
  them; k-hat averages -0.06 for k1 and 0.25 for the others). Among
  unflagged runs the 95% interval's coverage is within 93-97%: with 2000
  runs the binomial SD is 0.49%, so the band is +-4 SD around 95%.
  """
  for name in ESTIMATORS:
    covered, k = gaussian_runs[name]
    assert (k >= 0.5).mean() <= 0.01, (name, (k >= 0.5).mean())
    assert 0.93 <= covered[k < 0.5].mean() <= 0.97, (name, covered.mean())


def test_confidence_interval_warns_only_when_flagged_and_concrete():
  p = gaussian_pair(0.0, 1.0)
  t3 = lambda x: jax.scipy.stats.t.logpdf(x, 3.0)  # noqa: E731
  with jax.threefry_partitionable(False):
    heavy = mc(jax.random.key(72), p, t3, num_samples=10_000, estimator="k3")
    light = mc(jax.random.key(72), p, t3, num_samples=10_000, estimator="k1")
  assert float(heavy.pareto_k) >= 0.5 > float(light.pareto_k)
  with pytest.warns(
    RuntimeWarning,
    match=r"pareto_k = \d\.\d\d >= 0\.5.*"
    "infinite variance.*estimator='k1'",
  ):
    low, high = heavy.confidence_interval()
  np.testing.assert_allclose(
    [low, high],
    [heavy.value - 1.96 * heavy.stderr, heavy.value + 1.96 * heavy.stderr],
    rtol=1e-3,
  )
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    light.confidence_interval()
    # Under jit the values are not known: no warning (documented).
    jax.jit(lambda e: e.confidence_interval())(heavy)
  # A batch: the message counts the flagged entries.
  batch = dataclasses.replace(
    heavy,
    **{
      name: jnp.stack([getattr(heavy, name), getattr(light, name)])
      for name in ("value", "stderr", "effective_sample_size", "pareto_k")
    },
  )
  with pytest.warns(RuntimeWarning, match="for 1 of 2 entries"):
    batch.confidence_interval()


def test_pareto_k_importance_weights_and_antithetic_pairs():
  """Importance weights w = p/rho, rho = N(0, s^2), P = N(0, 1), Q = N(.5, 1).

  Under rho, w has a Pareto tail with shape 1 - s^2 when s < 1 (bounded
  weights when s >= 1), so E[w^2] = inf iff s^2 <= 1/2: s = 0.6 (shape
  0.64) is flagged in >= 90% of 50 runs, s = 1.5 in at most 1 of them,
  with and without self-normalization.
  """
  p = gaussian_pair(0.0, 1.0)
  q = lambda x: norm_logpdf(x, 0.5)  # noqa: E731
  narrow, wide = gaussian_pair(0.0, 0.6), gaussian_pair(0.0, 1.5)
  keys = jax.random.split(jax.random.key(73), 50)

  def khat(proposal, self_normalized):
    return np.asarray(
      jax.jit(
        jax.vmap(
          lambda k: (
            jaxkl.monte_carlo_kl(
              k,
              p,
              q,
              num_samples=10_000,
              proposal=proposal,
              self_normalized=self_normalized,
            ).pareto_k
          )
        )
      )(keys)
    )

  for sn in (False, True):
    assert np.mean(khat(narrow, sn) >= 0.5) >= 0.9
    assert np.mean(khat(wide, sn) >= 0.5) <= 0.02
  # Antithetic pairs: k-hat of the pair means, computed on n/2 = 5000 pairs.
  push = jaxkl.StandardNormalPushforward(lambda z: z, norm_logpdf)
  t3 = lambda x: jax.scipy.stats.t.logpdf(x, 3.0)  # noqa: E731
  k = jax.jit(
    jax.vmap(
      lambda k: (
        jaxkl.monte_carlo_kl(
          k, push, t3, num_samples=10_000, antithetic=True, estimator="k3"
        ).pareto_k
      )
    )
  )(keys)
  assert np.mean(np.asarray(k) >= 0.5) >= 0.9


def test_sharded_pareto_k_equals_one_device():
  """The gathered global tail gives monte_carlo_kl's k-hat exactly.

  The devices are emulated with ``vmap(axis_name=...)``, under which
  ``psum``, ``all_gather`` and ``axis_index`` behave as in ``shard_map``
  (tests/test_sharding.py runs the real thing on 8 devices).
  """
  devices, n = 4, 4096
  t3 = lambda x: jax.scipy.stats.t.logpdf(x, 3.0)  # noqa: E731
  sample, log_p = gaussian_pair(0.0, 1.0)
  key = jax.random.key(74)
  for estimator in ("k1", "k3", "cv"):
    local = functools.partial(
      jaxkl.sharded_monte_carlo_kl,
      p=(sample, log_p),
      q=t3,
      num_samples=n,
      axis_name="samples",
      estimator=estimator,
    )
    got = jax.jit(
      jax.vmap(local, in_axes=None, axis_size=devices, axis_name="samples")
    )(key)

    def draw(k, m):
      return jnp.concatenate(
        [sample(jax.random.fold_in(k, d), m // devices) for d in range(devices)]
      )

    want = mc(key, (draw, log_p), t3, num_samples=n, estimator=estimator)
    np.testing.assert_allclose(
      got.pareto_k, np.full(devices, want.pareto_k), rtol=1e-5, err_msg=estimator
    )
    np.testing.assert_allclose(
      got.value, np.full(devices, want.value), rtol=1e-5, err_msg=estimator
    )
    off = jax.jit(
      jax.vmap(
        functools.partial(local, tail_diagnostic=False),
        in_axes=None,
        axis_size=devices,
        axis_name="samples",
      )
    )(key)
    assert np.all(np.isnan(off.pareto_k))


# ----------------------------------------------------------------------------
# Errors about the key.


@pytest.mark.parametrize("function", ["monte_carlo_kl", "sharded_monte_carlo_kl"])
def test_key_errors_name_the_argument_and_the_fix(function):
  p, q = dist.Normal(0.0, 1.0), dist.Normal(1.0, 1.0)
  kw = dict(num_samples=8)
  if function == "sharded_monte_carlo_kl":
    kw["axis_name"] = "samples"
  fn = getattr(jaxkl, function)
  with pytest.raises(
    TypeError,
    match=r"`key` is missing.*Normal.*"
    r"jax\.random\.key\(0\), p, q",
  ):
    fn(p, q, **kw)
  with pytest.raises(
    TypeError,
    match=r"`key` must be a jax\.random key.*"
    r"got the int 0\. Pass `jax\.random\.key\(0\)`",
  ):
    fn(0, p, q, **kw)
  with pytest.raises(TypeError, match=r"got the int 7.*jax\.random\.key\(7\)"):
    fn(np.int64(7), p, q, **kw)
  with pytest.raises(TypeError, match="shape \\(2,\\) and dtype float32"):
    fn(jnp.zeros(2, jnp.float32), p, q, **kw)
  with pytest.raises(ValueError, match=r"shape \(3,\).*vmap"):
    fn(jax.random.split(jax.random.key(0), 3), p, q, **kw)
  with pytest.raises(TypeError, match="missing the argument `q`"):
    fn(jax.random.key(0), p, **kw)


def test_legacy_and_traced_keys_are_accepted():
  p, q = gaussian_pair(0.0, 1.0), norm_logpdf
  new = jaxkl.monte_carlo_kl(jax.random.key(3), p, q, num_samples=64)
  legacy = jaxkl.monte_carlo_kl(jax.random.PRNGKey(3), p, q, num_samples=64)
  np.testing.assert_array_equal(new.value, legacy.value)
  traced = jax.jit(lambda k: jaxkl.monte_carlo_kl(k, p, q, num_samples=64))
  np.testing.assert_array_equal(traced(jax.random.PRNGKey(3)).value, legacy.value)
  batched = jax.vmap(lambda k: jaxkl.monte_carlo_kl(k, p, q, num_samples=64))
  assert batched(jax.random.split(jax.random.key(3), 3)).value.shape == (3,)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  n=st.sampled_from([25, 100, 999, 3000]),  # few shapes: few compiles
  xi=st.sampled_from([-0.5, 0.0, 0.3, 0.8]),
  scale=st.floats(1e-3, 1e3),
  shift=st.floats(-1e3, 1e3),
  split=st.integers(1, 24),
)
def test_pareto_k_is_affine_and_permutation_invariant_and_splits(
  seed, n, xi, scale, shift, split
):
  """k-hat depends only on the tail's shape, and on no ordering or device.

  For any data: a positive scale and a shift of the terms leave it
  unchanged (the exceedances scale, and Zhang & Stephens' fit is scale
  equivariant), so does a permutation, and the top of the union of the
  parts' tops (``sharded_monte_carlo_kl``'s gather) gives the same value.
  """
  from jaxkl import _estimators  # pylint: disable=import-outside-toplevel

  with jax.enable_x64(True):
    check_invariances(_estimators, seed, n, xi, scale, shift, split)


def check_invariances(_estimators, seed, n, xi, scale, shift, split):
  x = np.asarray(genpareto(jax.random.key(seed), (n,), xi))
  base = float(pareto_k(x))
  assert np.isfinite(base)
  np.testing.assert_allclose(float(pareto_k(scale * x + shift)), base, atol=1e-6)
  perm = np.random.default_rng(seed).permutation(n)
  assert float(pareto_k(x[perm])) == base
  tail = _estimators.pareto_tail_size(n)
  parts = np.array_split(x[perm], min(split, n))
  tops = np.concatenate([np.sort(part)[::-1][: tail + 1] for part in parts])
  got = float(_estimators.pareto_k_from_tops(jnp.asarray(tops)[None], tail))
  assert got == base
