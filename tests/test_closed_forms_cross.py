"""Cross-family closed forms (jaxkl/_closed_forms/cross.py).

References: ``torch.distributions.kl_divergence`` in float64 for every pair
torch registers; 30-50 digit mpmath (the textbook formula, or ``mpmath.quad``
numerical integration) for Weibull-Gamma, Kumaraswamy-Beta, near-coincident
members (where the textbook formula, torch's included, cancels) and extreme
parameters.
"""

import math
import zlib

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import torch
import torch.distributions as td
from jax.test_util import check_grads

from jaxkl._closed_forms._registry import builtin_pairs
from jaxkl._closed_forms.cross import PAIRS

torch.set_default_dtype(torch.float64)

# Pairs whose value is +inf whatever the parameters.
ALWAYS_INF = sorted(
  pair
  for pair in PAIRS
  if (
    pair[0] in ("normal", "laplace", "gumbel")
    and pair[1] not in ("normal", "laplace", "gumbel")
  )
  or (
    pair[1] in ("beta", "continuous_bernoulli", "pareto", "uniform")
    and pair[0] in ("exponential", "gamma", "chi2", "pareto")
  )
  or pair in (("beta", "pareto"), ("continuous_bernoulli", "pareto"))
)
EXTRAS = ("weibull", "kumaraswamy")
TORCH_FINITE = sorted(
  pair for pair in PAIRS if pair not in ALWAYS_INF and pair[0] not in EXTRAS
)


def _params(family, rng, n):
  """Random canonical float64 parameters, ``n`` of each."""

  def log_uniform(lo, hi):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))

  if family == "beta":
    return {
      "concentration1": log_uniform(0.1, 50),
      "concentration0": log_uniform(0.1, 50),
    }
  if family == "continuous_bernoulli":
    # torch's CB switches to a Taylor expansion in (0.499, 0.501): keep out.
    p = rng.uniform(0.02, 0.48, n)
    return {"probs": np.where(rng.uniform(size=n) < 0.5, p, 1 - p)}
  if family == "exponential":
    return {"rate": log_uniform(0.1, 10)}
  if family == "gamma":
    return {"concentration": log_uniform(0.1, 50), "rate": log_uniform(0.1, 10)}
  if family == "chi2":
    return {"df": log_uniform(0.2, 50)}
  if family in ("gumbel", "laplace", "normal"):
    return {"loc": rng.uniform(-3, 3, n), "scale": log_uniform(0.2, 5)}
  if family == "pareto":
    return {"scale": log_uniform(0.1, 3), "alpha": log_uniform(0.5, 10)}
  if family == "uniform":
    low = rng.uniform(-1, 2, n)
    return {"low": low, "high": low + log_uniform(0.05, 3)}
  if family == "weibull":
    return {"scale": log_uniform(0.1, 5), "concentration": log_uniform(0.3, 5)}
  assert family == "kumaraswamy"
  return {
    "concentration1": log_uniform(0.1, 10),
    "concentration0": log_uniform(0.1, 10),
  }


def _torch(family, params):
  t = {k: torch.as_tensor(np.asarray(v, np.float64)) for k, v in params.items()}
  return {
    "beta": lambda: td.Beta(t["concentration1"], t["concentration0"]),
    "continuous_bernoulli": lambda: td.ContinuousBernoulli(probs=t["probs"]),
    "exponential": lambda: td.Exponential(t["rate"]),
    "gamma": lambda: td.Gamma(t["concentration"], t["rate"]),
    "chi2": lambda: td.Chi2(t["df"]),
    "gumbel": lambda: td.Gumbel(t["loc"], t["scale"]),
    "laplace": lambda: td.Laplace(t["loc"], t["scale"]),
    "normal": lambda: td.Normal(t["loc"], t["scale"]),
    "pareto": lambda: td.Pareto(t["scale"], t["alpha"]),
    "uniform": lambda: td.Uniform(t["low"], t["high"]),
  }[family]()


def _kl(pair, p, q, dtype=jnp.float64):
  cast = lambda d: {k: jnp.asarray(v, dtype) for k, v in d.items()}  # noqa: E731
  return builtin_pairs()[pair](cast(p), cast(q))


# ----------------------------------------------------------------------------
# Against torch.distributions (float64).


@pytest.mark.parametrize("pair", TORCH_FINITE, ids="|".join)
def test_against_torch(x64, pair):
  rng = np.random.default_rng(zlib.crc32("|".join(pair).encode()))
  p, q = _params(pair[0], rng, 64), _params(pair[1], rng, 64)
  # Mix supported and unsupported cases about evenly.
  if pair[1] == "uniform":
    q = {"low": rng.uniform(-1, 0.2, 64), "high": rng.uniform(0.8, 2, 64)}
  if pair[0] == "uniform" and pair[1] in ("beta", "continuous_bernoulli"):
    p = {"low": rng.uniform(-0.1, 0.5, 64), "high": rng.uniform(0.55, 1.1, 64)}
  expected = td.kl_divergence(_torch(pair[0], p), _torch(pair[1], q)).numpy()
  got = np.asarray(_kl(pair, p, q))
  assert got.dtype == np.float64 and got.shape == (64,)
  np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
  finite = np.isfinite(expected)
  assert finite.sum() >= 8, "too few finite samples to test"
  np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-11, atol=0)
  assert np.all(got >= 0)


@pytest.mark.parametrize("pair", ALWAYS_INF, ids="|".join)
def test_always_infinite(pair):
  rng = np.random.default_rng(0)
  p = {k: v[:3].reshape(3, 1) for k, v in _params(pair[0], rng, 3).items()}
  q = {k: v[:2] for k, v in _params(pair[1], rng, 2).items()}
  for dtype in (jnp.float32, jnp.bfloat16):
    got = _kl(pair, p, q, dtype)
    assert got.dtype == dtype and got.shape == (3, 2)
    assert bool(jnp.all(got == jnp.inf))
  if pair[0] not in EXTRAS and pair[1] not in EXTRAS:
    with torch.no_grad():
      ref = td.kl_divergence(_torch(pair[0], p), _torch(pair[1], q))
    assert bool(torch.all(ref == math.inf))


def test_pairs_cover_torch_registry():
  families = {
    td.Beta: "beta",
    td.ContinuousBernoulli: "continuous_bernoulli",
    td.Exponential: "exponential",
    td.Gamma: "gamma",
    td.Gumbel: "gumbel",
    td.Laplace: "laplace",
    td.Normal: "normal",
    td.Pareto: "pareto",
    td.Uniform: "uniform",
  }
  registered = {
    (families[p], families[q])
    for p, q in td.kl._KL_REGISTRY
    if p in families and q in families and p is not q
  }
  assert len(registered) == 59
  assert registered <= set(PAIRS)


@pytest.mark.parametrize(
  ("pair", "p", "q", "finite"),
  [
    # Uniform and ContinuousBernoulli share [0, 1]: torch says inf (its
    # support test is strict), the divergence is finite.
    (
      ("uniform", "continuous_bernoulli"),
      {"low": 0.0, "high": 1.0},
      {"logits": 0.5},
      True,
    ),
    (
      ("continuous_bernoulli", "uniform"),
      {"logits": 0.5},
      {"low": 0.0, "high": 1.0},
      True,
    ),
    (
      ("uniform", "continuous_bernoulli"),
      {"low": -0.1, "high": 1.0},
      {"logits": 0.5},
      False,
    ),
    (
      ("continuous_bernoulli", "uniform"),
      {"probs": 0.3},
      {"low": 0.01, "high": 2.0},
      False,
    ),
    (
      ("uniform", "beta"),
      {"low": 0.0, "high": 1.0},
      {"concentration1": 2.0, "concentration0": 3.0},
      True,
    ),
    (
      ("uniform", "beta"),
      {"low": 0.5, "high": 1.5},
      {"concentration1": 2.0, "concentration0": 3.0},
      False,
    ),
    (
      ("beta", "uniform"),
      {"concentration1": 2.0, "concentration0": 3.0},
      {"low": -1.0, "high": 0.99},
      False,
    ),
    (
      ("uniform", "pareto"),
      {"low": 1.0, "high": 2.0},
      {"scale": 1.0, "alpha": 3.0},
      True,
    ),
    (
      ("uniform", "pareto"),
      {"low": 0.99, "high": 2.0},
      {"scale": 1.0, "alpha": 3.0},
      False,
    ),
    (
      ("uniform", "gamma"),
      {"low": 0.0, "high": 2.0},
      {"concentration": 0.5, "rate": 3.0},
      True,
    ),
    (("uniform", "exponential"), {"low": -1e-9, "high": 2.0}, {"rate": 3.0}, False),
    (("pareto", "exponential"), {"scale": 1.0, "alpha": 1.0}, {"rate": 3.0}, False),
    (
      ("pareto", "gamma"),
      {"scale": 1.0, "alpha": 1.0001},
      {"concentration": 2.0, "rate": 3.0},
      True,
    ),
    (
      ("pareto", "normal"),
      {"scale": 1.0, "alpha": 2.0},
      {"loc": 0.0, "scale": 1.0},
      False,
    ),
    (
      ("pareto", "normal"),
      {"scale": 1.0, "alpha": 2.001},
      {"loc": 0.0, "scale": 1.0},
      True,
    ),
  ],
)
def test_elementwise_support(x64, pair, p, q, finite):
  value = float(_kl(pair, p, q))
  assert math.isfinite(value) == finite
  if finite:
    assert value > 0
    grads = jax.grad(lambda p_: PAIRS[pair](p_, q))(
      {k: jnp.float64(v) for k, v in p.items()}
    )
    assert all(bool(jnp.isfinite(g)) for g in jax.tree.leaves(grads))


# ----------------------------------------------------------------------------
# mpmath references.

mpmath.mp.dps = 30


def _weibull_gamma_mp(lam, k, a, rate):
  # Zhang et al. 2018 (checked against mpmath.quad in test_weibull_gamma).
  lam, k, a, rate = map(mpmath.mpf, (lam, k, a, rate))
  return (
    mpmath.euler * a / k
    - a * mpmath.log(rate * lam)
    + mpmath.log(k)
    - mpmath.euler
    - 1
    + mpmath.loggamma(a)
    + rate * lam * mpmath.gamma(1 + 1 / k)
  )


def _kumaraswamy_beta_mp(a, b, alpha, beta):
  a, b, alpha, beta = map(mpmath.mpf, (a, b, alpha, beta))
  # -E log(1 - X) with X = (1 - V^(1/b))^(1/a), V uniform (the naive
  # integrand (1 - x^a)^b / (1 - x) defeats mpmath.quad for small b).
  log1m = mpmath.quad(
    lambda v: -mpmath.log(-mpmath.expm1(mpmath.log1p(-(v ** (1 / b))) / a)),
    [0, mpmath.mpf("1e-30"), mpmath.mpf("1e-10"), mpmath.mpf("1e-3"), 0.5, 1],
  )
  return (
    (a - alpha) / a * (-mpmath.euler - mpmath.digamma(b) - 1 / b)
    + mpmath.log(a * b)
    + mpmath.log(mpmath.beta(alpha, beta))
    - (b - 1) / b
    + (beta - 1) * log1m
  )


def _quad_kl(log_p, log_q, points):
  return mpmath.quad(lambda x: mpmath.exp(log_p(x)) * (log_p(x) - log_q(x)), points)


def test_weibull_gamma(x64):
  # The closed form itself, by numerical integration, at one point.
  lam, k, a, rate = map(mpmath.mpf, (1.3, 0.7, 2.2, 0.9))
  by_quad = _quad_kl(
    lambda x: mpmath.log(k / lam) + (k - 1) * mpmath.log(x / lam) - (x / lam) ** k,
    lambda x: (
      a * mpmath.log(rate) - mpmath.loggamma(a) + (a - 1) * mpmath.log(x) - rate * x
    ),
    [0, 1, mpmath.inf],
  )
  assert abs(by_quad - _weibull_gamma_mp(lam, k, a, rate)) < 1e-20
  rng = np.random.default_rng(3)
  p = {
    "scale": np.exp(rng.uniform(-3, 3, 40)),
    "concentration": np.exp(rng.uniform(-2, 2.5, 40)),
  }
  q = {
    "concentration": np.exp(rng.uniform(-3, 4, 40)),
    "rate": np.exp(rng.uniform(-3, 3, 40)),
  }
  expected = [
    float(_weibull_gamma_mp(*v))
    for v in zip(
      p["scale"], p["concentration"], q["concentration"], q["rate"], strict=True
    )
  ]
  got = np.asarray(_kl(("weibull", "gamma"), p, q))
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  got32 = np.asarray(_kl(("weibull", "gamma"), p, q, jnp.float32))
  np.testing.assert_allclose(got32, expected, rtol=2e-4)
  # Exponential and Chi2 are Gamma members.
  exp = _kl(
    ("weibull", "exponential"), {"scale": 2.0, "concentration": 1.5}, {"rate": 0.7}
  )
  chi = _kl(("weibull", "chi2"), {"scale": 2.0, "concentration": 1.5}, {"df": 3.0})
  assert float(exp) == pytest.approx(
    float(_weibull_gamma_mp(2, 1.5, 1, 0.7)), rel=1e-13
  )
  assert float(chi) == pytest.approx(
    float(_weibull_gamma_mp(2, 1.5, 1.5, 0.5)), rel=1e-13
  )


def test_kumaraswamy_beta(x64):
  # The closed form itself, by numerical integration, at one point.
  a, b, alpha, beta = map(mpmath.mpf, (2.0, 3.0, 1.5, 2.5))
  by_quad = _quad_kl(
    lambda x: (
      mpmath.log(a * b) + (a - 1) * mpmath.log(x) + (b - 1) * mpmath.log(1 - x**a)
    ),
    lambda x: (
      (alpha - 1) * mpmath.log(x)
      + (beta - 1) * mpmath.log(1 - x)
      - mpmath.log(mpmath.beta(alpha, beta))
    ),
    [0, 0.5, 1],
  )
  assert abs(by_quad - _kumaraswamy_beta_mp(a, b, alpha, beta)) < 1e-20
  # The stated domain a, b in [0.05, 100], Beta parameters in [0.3, 30].
  grid = [0.05, 0.4, 2.0, 15.0, 100.0]
  rng = np.random.default_rng(4)
  p = {
    "concentration1": np.repeat(grid, len(grid)),
    "concentration0": np.tile(grid, len(grid)),
  }
  q = {
    "concentration1": np.exp(rng.uniform(-1.2, 3.4, 25)),
    "concentration0": np.exp(rng.uniform(-1.2, 3.4, 25)),
  }
  expected = [
    float(_kumaraswamy_beta_mp(*v)) for v in zip(*p.values(), *q.values(), strict=True)
  ]
  got = np.asarray(_kl(("kumaraswamy", "beta"), p, q))
  np.testing.assert_allclose(got, expected, rtol=1e-11)
  got32 = np.asarray(_kl(("kumaraswamy", "beta"), p, q, jnp.float32))
  np.testing.assert_allclose(got32, expected, rtol=2e-3)


# Shared members: exactly 0; nearby, relative accuracy vs 50-digit mpmath of
# the textbook formula (which torch evaluates with cancellation).
ZEROS = [
  (("exponential", "gamma"), {"rate": 2.0}, {"concentration": 1.0, "rate": 2.0}),
  (("gamma", "exponential"), {"concentration": 1.0, "rate": 2.0}, {"rate": 2.0}),
  (("chi2", "exponential"), {"df": 2.0}, {"rate": 0.5}),
  (("chi2", "gamma"), {"df": 5.0}, {"concentration": 2.5, "rate": 0.5}),
  (
    ("weibull", "gamma"),
    {"scale": 0.5, "concentration": 1.0},
    {"concentration": 1.0, "rate": 2.0},
  ),
  (
    ("beta", "uniform"),
    {"concentration1": 1.0, "concentration0": 1.0},
    {"low": 0.0, "high": 1.0},
  ),
  (
    ("uniform", "beta"),
    {"low": 0.0, "high": 1.0},
    {"concentration1": 1.0, "concentration0": 1.0},
  ),
  (("continuous_bernoulli", "uniform"), {"probs": 0.5}, {"low": 0.0, "high": 1.0}),
  (("uniform", "continuous_bernoulli"), {"low": 0.0, "high": 1.0}, {"logits": 0.0}),
  (
    ("beta", "continuous_bernoulli"),
    {"concentration1": 1.0, "concentration0": 1.0},
    {"probs": 0.5},
  ),
]


@pytest.mark.parametrize(
  ("pair", "p", "q"), ZEROS, ids=lambda v: "|".join(v) if isinstance(v, tuple) else None
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_shared_member_is_zero(x64, pair, p, q, dtype):
  assert float(_kl(pair, p, q, dtype)) == 0.0


def test_kumaraswamy_beta_shared_member(x64):
  # Kumaraswamy(a, 1) = Beta(a, 1) and Kumaraswamy(1, b) = Beta(1, b).
  got = _kl(
    ("kumaraswamy", "beta"),
    {"concentration1": [3.0, 1.0], "concentration0": [1.0, 4.0]},
    {"concentration1": [3.0, 1.0], "concentration0": [1.0, 4.0]},
  )
  assert float(jnp.max(got)) < 1e-14


def _mp_cb(eta):
  """(log normalizer A, mean, -entropy) of CB with logit eta, mpmath."""
  eta = mpmath.mpf(eta)
  big_a = mpmath.log(mpmath.expm1(eta) / eta)
  mean = 1 / (1 - mpmath.exp(-eta)) - 1 / eta
  return big_a, mean, eta * mean - big_a


def _mp_neg_entropy_beta(a, b):
  a, b = mpmath.mpf(a), mpmath.mpf(b)
  n = a + b
  return (
    -mpmath.log(mpmath.beta(a, b))
    + (a - 1) * mpmath.digamma(a)
    + (b - 1) * mpmath.digamma(b)
    - (n - 2) * mpmath.digamma(n)
  )


def _mp_uniform_beta(low, high, a, b):
  low, high, a, b = map(mpmath.mpf, (low, high, a, b))
  w = high - low
  xlogx = lambda x: x * mpmath.log(x) if x > 0 else mpmath.mpf(0)  # noqa: E731
  mean_log = (xlogx(high) - xlogx(low)) / w - 1
  mean_log1m = (xlogx(1 - low) - xlogx(1 - high)) / w - 1
  return (
    -mpmath.log(w)
    + mpmath.log(mpmath.beta(a, b))
    - (a - 1) * mean_log
    - (b - 1) * mean_log1m
  )


NEAR = [
  (
    ("beta", "uniform"),
    {"concentration1": 1 + 1e-7, "concentration0": 1.0},
    {"low": 0.0, "high": 1.0},
    lambda: _mp_neg_entropy_beta(mpmath.mpf(1) + mpmath.mpf(1e-7), 1),
  ),
  (
    ("uniform", "beta"),
    {"low": 0.0, "high": 1 - 2.0**-30},
    {"concentration1": 1.0, "concentration0": 1 + 1e-6},
    lambda: _mp_uniform_beta(0, 1 - mpmath.mpf(2) ** -30, 1, 1 + mpmath.mpf(1e-6)),
  ),
  (
    ("continuous_bernoulli", "uniform"),
    {"logits": 1e-5},
    {"low": 0.0, "high": 1.0},
    lambda: _mp_cb(mpmath.mpf(1e-5))[2],
  ),
  (
    ("uniform", "continuous_bernoulli"),
    {"low": 0.0, "high": 1.0},
    {"logits": -3e-4},
    lambda: _mp_cb(mpmath.mpf(-3e-4))[0] - mpmath.mpf(-3e-4) / 2,
  ),
  (
    ("beta", "continuous_bernoulli"),
    {"concentration1": 1.0, "concentration0": 1 + 1e-6},
    {"logits": 2e-6},
    lambda: (
      _mp_neg_entropy_beta(1, 1 + mpmath.mpf(1e-6))
      + _mp_cb(mpmath.mpf(2e-6))[0]
      - mpmath.mpf(2e-6) / (2 + mpmath.mpf(1e-6))
    ),
  ),
  (
    ("weibull", "gamma"),
    {"scale": 1.0, "concentration": 1 + 1e-6},
    {"concentration": 1 + 2e-6, "rate": 1.0},
    lambda: _weibull_gamma_mp(1, 1 + mpmath.mpf(1e-6), 1 + mpmath.mpf(2e-6), 1),
  ),
  (
    # Exponential truncated at 1 (CB logit -40) against the exponential.
    ("continuous_bernoulli", "exponential"),
    {"logits": -40.0},
    {"rate": 40.0},
    lambda: -mpmath.log1p(-mpmath.exp(-40)),
  ),
]


@pytest.mark.parametrize(
  ("pair", "p", "q", "reference"), NEAR, ids=[v[0][0] + "|" + v[0][1] for v in NEAR]
)
def test_near_shared_member(x64, pair, p, q, reference):
  mpmath.mp.dps = 50
  try:
    expected = float(reference())
  finally:
    mpmath.mp.dps = 30
  assert 0 < expected < 1e-5
  assert float(_kl(pair, p, q)) == pytest.approx(expected, rel=1e-9)


def _mp_gamma_normal(a, rate, loc, scale):
  a, rate, loc, scale = map(mpmath.mpf, (a, rate, loc, scale))
  neg_entropy = (a - 1) * mpmath.digamma(a) - mpmath.loggamma(a) - a + mpmath.log(rate)
  second = (a / rate**2 + (a / rate - loc) ** 2) / (2 * scale**2)
  return neg_entropy + mpmath.log(scale * mpmath.sqrt(2 * mpmath.pi)) + second


def _mp_beta_normal(a, b, loc, scale):
  a, b, loc, scale = map(mpmath.mpf, (a, b, loc, scale))
  n = a + b
  var = a * b / (n**2 * (n + 1))
  second = (var + (a / n - loc) ** 2) / (2 * scale**2)
  return (
    _mp_neg_entropy_beta(a, b) + mpmath.log(scale * mpmath.sqrt(2 * mpmath.pi)) + second
  )


@pytest.mark.parametrize(
  ("pair", "p", "q", "reference"),
  [
    # Large concentrations: the gamma and beta tend to normals, KL -> 0.
    (
      ("gamma", "normal"),
      {"concentration": 1e6, "rate": 1.0},
      {"loc": 1e6, "scale": 1e3},
      lambda: _mp_gamma_normal(1e6, 1, 1e6, 1e3),
    ),
    (
      ("gamma", "normal"),
      {"concentration": 30.0, "rate": 2.0},
      {"loc": 15.0, "scale": 2.7},
      lambda: _mp_gamma_normal(30, 2, 15, 2.7),
    ),
    (
      ("beta", "normal"),
      {"concentration1": 1e5, "concentration0": 3e5},
      {"loc": 0.25, "scale": 6.8e-4},
      lambda: _mp_beta_normal(1e5, 3e5, 0.25, 6.8e-4),
    ),
    (
      ("beta", "normal"),
      {"concentration1": 25.0, "concentration0": 40.0},
      {"loc": 0.4, "scale": 0.06},
      lambda: _mp_beta_normal(25, 40, 0.4, 0.06),
    ),
  ],
)
def test_extreme_parameters(x64, pair, p, q, reference):
  mpmath.mp.dps = 50
  try:
    expected = float(reference())
  finally:
    mpmath.mp.dps = 30
  assert float(_kl(pair, p, q)) == pytest.approx(expected, rel=1e-11)
  assert float(_kl(pair, p, q, jnp.float32)) == pytest.approx(expected, rel=1e-4)


# ----------------------------------------------------------------------------
# Gradients, dtypes, broadcasting, transformations.

FINITE = sorted(pair for pair in PAIRS if pair not in ALWAYS_INF)
# One pair per formula (Exponential and Chi2 reach the Gamma formulas through
# a parameter map, checked against torch above): keeps compilation time low.
REPRESENTATIVE = [
  pair
  for pair in FINITE
  if not {"chi2", "exponential"} & set(pair)
  or pair in (("continuous_bernoulli", "exponential"), ("exponential", "gamma"))
]


def _finite_params(pair, n):
  """Parameters with finite divergence (support conditions met)."""
  rng = np.random.default_rng(7)
  p, q = _params(pair[0], rng, n), _params(pair[1], rng, n)
  if pair[0] == "uniform" and pair[1] in ("beta", "continuous_bernoulli"):
    p = {"low": rng.uniform(0.05, 0.4, n), "high": rng.uniform(0.5, 0.95, n)}
  elif pair[0] == "uniform" and pair[1] == "pareto":
    p = {"low": q["scale"] * 1.5, "high": q["scale"] * 3}
  elif pair[0] == "uniform" and pair[1] in ("gamma", "exponential", "chi2"):
    p = {"low": rng.uniform(0.05, 1, n), "high": rng.uniform(1.5, 3, n)}
  elif pair[1] == "uniform":
    q = {"low": rng.uniform(-2, -0.5, n), "high": rng.uniform(1.5, 3, n)}
  if pair[0] == "pareto":
    p["alpha"] = p["alpha"] + 2.5
  return p, q


BF16_PAIRS = [("gamma", "gumbel"), ("uniform", "normal"), ("weibull", "gamma")]


@pytest.mark.parametrize("pair", REPRESENTATIVE, ids="|".join)
def test_gradients_and_dtypes(x64, pair):
  p, q = _finite_params(pair, 6)
  value = _kl(pair, p, q)
  assert bool(jnp.all(jnp.isfinite(value))) and bool(jnp.all(value >= 0))
  grads = jax.grad(lambda p_, q_: jnp.sum(PAIRS[pair](p_, q_)), argnums=(0, 1))(
    *({k: jnp.asarray(v) for k, v in d.items()} for d in (p, q))
  )
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  # float32: relative error <= 1e-4 (Kumaraswamy-Beta 1e-3); bfloat16 computed
  # in float32 and rounded.
  value32 = _kl(pair, p, q, jnp.float32)
  assert value32.dtype == jnp.float32
  rtol = 1e-3 if pair[0] == "kumaraswamy" else 1e-4
  np.testing.assert_allclose(np.asarray(value32), np.asarray(value), rtol=rtol)
  if pair not in BF16_PAIRS:
    return
  value16 = _kl(pair, p, q, jnp.bfloat16)
  assert value16.dtype == jnp.bfloat16
  p16 = {k: np.asarray(jnp.asarray(v, jnp.bfloat16), np.float64) for k, v in p.items()}
  q16 = {k: np.asarray(jnp.asarray(v, jnp.bfloat16), np.float64) for k, v in q.items()}
  ref16 = np.asarray(_kl(pair, p16, q16))
  np.testing.assert_allclose(np.asarray(value16, np.float64), ref16, rtol=1e-2)


@pytest.mark.parametrize(
  "pair",
  [
    ("gamma", "gumbel"),
    ("beta", "gamma"),
    ("normal", "laplace"),
    ("uniform", "beta"),
    ("continuous_bernoulli", "exponential"),
    ("weibull", "gamma"),
    ("kumaraswamy", "beta"),
    ("pareto", "normal"),
  ],
  ids="|".join,
)
def test_gradients_numerical(x64, pair):
  p, q = _finite_params(pair, 2)
  if pair[1] == "continuous_bernoulli" or pair[0] == "continuous_bernoulli":
    key = "probs"
    side = p if pair[0] == "continuous_bernoulli" else q
    side[key] = np.clip(side[key], 0.2, 0.8)
  keys_p, keys_q = list(p), list(q)

  def f(*args):
    pp = dict(zip(keys_p, args[: len(keys_p)], strict=True))
    qq = dict(zip(keys_q, args[len(keys_p) :], strict=True))
    return PAIRS[pair](pp, qq)

  args = [jnp.asarray(v) for v in (*p.values(), *q.values())]
  check_grads(f, args, order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_continuous_bernoulli_probs_and_logits(x64):
  probs = np.array([0.01, 0.3, 0.4999, 0.5, 0.7, 0.99])
  logits = np.log(probs / (1 - probs))
  beta = {"concentration1": 2.0, "concentration0": 3.0}
  by_probs = _kl(("beta", "continuous_bernoulli"), beta, {"probs": probs})
  by_logits = _kl(("beta", "continuous_bernoulli"), beta, {"logits": logits})
  np.testing.assert_allclose(by_probs, by_logits, rtol=1e-13)
  normal = {"loc": 0.3, "scale": 0.4}
  np.testing.assert_allclose(
    _kl(("continuous_bernoulli", "normal"), {"probs": probs}, normal),
    _kl(("continuous_bernoulli", "normal"), {"logits": logits}, normal),
    rtol=1e-13,
  )


def test_broadcasting_jit_vmap(x64):
  pair = ("gamma", "gumbel")
  p = {"concentration": jnp.array([[0.5], [2.0], [9.0]]), "rate": jnp.array(1.5)}
  q = {
    "loc": jnp.array([-1.0, 0.0, 2.0, 5.0]),
    "scale": jnp.array([1.0, 2.0, 0.5, 3.0]),
  }
  got = PAIRS[pair](p, q)
  assert got.shape == (3, 4)
  for i in range(3):
    for j in range(4):
      one = PAIRS[pair](
        {"concentration": p["concentration"][i, 0], "rate": p["rate"]},
        {"loc": q["loc"][j], "scale": q["scale"][j]},
      )
      assert float(got[i, j]) == float(one)
  jitted = jax.jit(PAIRS[pair])(p, q)
  np.testing.assert_array_equal(jitted, got)
  mapped = jax.vmap(lambda c: PAIRS[pair]({"concentration": c, "rate": p["rate"]}, q))(
    p["concentration"][:, 0]
  )
  np.testing.assert_allclose(mapped, got, rtol=1e-15)
  with pytest.raises(ValueError, match="broadcast"):
    PAIRS[pair]({"concentration": jnp.ones(3), "rate": jnp.ones(2)}, q)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  pair=st.sampled_from(REPRESENTATIVE),
  log_scale=st.floats(-6, 6),
)
def test_property_nonnegative_and_finite(pair, log_scale):
  """Scaled parameters far from the usual range: never NaN, never negative."""
  with jax.enable_x64(True):
    p, q = _finite_params(pair, 6)  # shape of the compiled gradient test
    scale = math.exp(log_scale)
    for d in (p, q):
      for k in d:
        if k in (
          "concentration",
          "concentration1",
          "concentration0",
          "df",
          "alpha",
          "rate",
        ):
          d[k] = d[k] * scale if k != "alpha" else d[k] * max(scale, 1.0)
    value = np.asarray(_kl(pair, p, q))
    assert not np.any(np.isnan(value))
    assert np.all(value >= 0)
