"""jaxkl.kl: dispatch on distribution objects (NumPyro, Distrax, TFP on JAX).

References: each adapter's reading of a library object is checked against
an independent scipy log-density of the canonical family at points of the
support (the library's own ``log_prob`` must agree: this pins the parameter
conventions); the KL values against the library's own ``kl_divergence`` in
float64 where it has the pair; structural wrappers against the libraries'
own rules; Monte Carlo against scipy quadrature.
"""

from __future__ import annotations

import collections
import contextlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
from jax.test_util import check_grads

import jaxkl
from jaxkl._closed_forms import _adapters
from jaxkl._closed_forms import _registry
from jaxkl._closed_forms._adapters import as_gaussian_mixture
from jaxkl._closed_forms._registry import register_kl
from jaxkl._closed_forms.mixture import GaussianMixture
from jaxkl._kl import kl

distrax = pytest.importorskip("distrax")
tfp = pytest.importorskip("tensorflow_probability.substrates.jax")
tfd = tfp.distributions
tfb = tfp.bijectors


@contextlib.contextmanager
def library():
  """The promotion rules the libraries' own code needs."""
  with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
    yield


def f64(*values):
  out = [jnp.asarray(np.asarray(v, np.float64)) for v in values]
  return out[0] if len(out) == 1 else out


L2 = [[1.3, 0.0], [0.4, 0.7]]
L2B = [[0.9, 0.0], [-0.3, 1.4]]

# ----------------------------------------------------------------------------
# Independent reference densities of the canonical families (scipy, float64).


def _probs(params):
  if "logits" in params:
    logits = np.asarray(params["logits"])
    if logits.ndim == 0:
      return scipy.special.expit(logits)
    return scipy.special.softmax(logits, axis=-1)
  probs = np.asarray(params["probs"])
  return probs if probs.ndim == 0 else probs / probs.sum(-1, keepdims=True)


def reference_log_prob(family, params, x):
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  x = np.asarray(x, np.float64)
  st = scipy.stats
  if family == "normal":
    return st.norm.logpdf(x, p["loc"], p["scale"])
  if family in ("mvn", "mvn_diag", "mvn_low_rank"):
    if family == "mvn":
      cov = p["scale_tril"] @ p["scale_tril"].T
    elif family == "mvn_diag":
      cov = np.diag(p["scale_diag"] ** 2)
    else:
      cov = p["cov_factor"] @ p["cov_factor"].T + np.diag(p["cov_diag"])
    return st.multivariate_normal.logpdf(x, p["loc"], cov)
  if family == "bernoulli":
    return st.bernoulli.logpmf(x, _probs(p))
  if family == "categorical":
    return np.log(_probs(p))[x.astype(int)]
  if family == "one_hot_categorical":
    return np.log(_probs(p))[np.argmax(x, -1)]
  if family == "binomial":
    return st.binom.logpmf(x, p["total_count"], _probs(p))
  if family == "geometric":  # failures before the first success
    return st.geom.logpmf(x + 1, _probs(p))
  if family == "poisson":
    return st.poisson.logpmf(x, p["rate"])
  if family == "exponential":
    return st.expon.logpdf(x, scale=1 / p["rate"])
  if family == "gamma":
    return st.gamma.logpdf(x, p["concentration"], scale=1 / p["rate"])
  if family == "chi2":
    return st.chi2.logpdf(x, p["df"])
  if family == "beta":
    return st.beta.logpdf(x, p["concentration1"], p["concentration0"])
  if family == "dirichlet":
    return np.array([st.dirichlet.logpdf(xi, p["concentration"]) for xi in x])
  if family == "laplace":
    return st.laplace.logpdf(x, p["loc"], p["scale"])
  if family == "gumbel":
    return st.gumbel_r.logpdf(x, p["loc"], p["scale"])
  if family == "half_normal":
    return st.halfnorm.logpdf(x, scale=p["scale"])
  if family == "cauchy":
    return st.cauchy.logpdf(x, p["loc"], p["scale"])
  if family == "log_normal":
    return st.lognorm.logpdf(x, p["scale"], scale=np.exp(p["loc"]))
  if family == "uniform":
    return st.uniform.logpdf(x, p["low"], p["high"] - p["low"])
  if family == "pareto":
    return st.pareto.logpdf(x, p["alpha"], scale=p["scale"])
  if family == "weibull":
    return st.weibull_min.logpdf(x, p["concentration"], scale=p["scale"])
  if family == "von_mises":
    return st.vonmises.logpdf(x, p["concentration"], loc=p["loc"])
  if family == "kumaraswamy":
    a, b = p["concentration1"], p["concentration0"]
    return np.log(a * b) + (a - 1) * np.log(x) + (b - 1) * np.log1p(-(x**a))
  if family == "continuous_bernoulli":
    lam = _probs(p)
    log_c = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
    return log_c + x * np.log(lam) + (1 - x) * np.log1p(-lam)
  raise AssertionError(family)


# ----------------------------------------------------------------------------
# The adapters' cases: (id, family, make(v) for two parameter sets v = 0, 1,
# points of the support, partner(v) for the KL check or None for `make`).

R3 = [-1.1, 0.4, 2.5]
POS = [0.2, 1.1, 3.7]
UNIT = [0.1, 0.45, 0.9]
SIMPLEX = [[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]
MV = [[0.1, -0.4], [1.5, 0.8]]
MV3 = [[0.1, -0.4, 0.3], [1.5, 0.8, -1.0]]


def _v(v, a, b):
  return f64(a if v == 0 else b)


NUMPYRO = [
  ("Normal", "normal", lambda v: nd.Normal(_v(v, 0.3, -0.2), _v(v, 1.7, 0.9)), R3),
  (
    "MultivariateNormal",
    "mvn",
    lambda v: nd.MultivariateNormal(
      _v(v, [0.1, 0.2], [0.0, -0.5]), scale_tril=_v(v, L2, L2B)
    ),
    MV,
  ),
  (
    "LowRankMultivariateNormal",
    "mvn_low_rank",
    lambda v: nd.LowRankMultivariateNormal(
      _v(v, [0.1, 0.2], [0.0, -0.5]),
      _v(v, [[0.5], [1.0]], [[0.2], [-0.3]]),
      _v(v, [1.0, 2.0], [0.5, 1.5]),
    ),
    MV,
  ),
  (
    "BernoulliLogits",
    "bernoulli",
    lambda v: nd.BernoulliLogits(_v(v, 0.4, -1.2)),
    [0.0, 1.0],
  ),
  (
    "BernoulliProbs",
    "bernoulli",
    lambda v: nd.BernoulliProbs(_v(v, 0.3, 0.8)),
    [0.0, 1.0],
  ),
  (
    "CategoricalLogits",
    "categorical",
    lambda v: nd.CategoricalLogits(_v(v, [0.1, -0.5, 1.2], [0.0, 0.3, -0.4])),
    [0, 1, 2],
  ),
  (
    "CategoricalProbs",
    "categorical",
    lambda v: nd.CategoricalProbs(_v(v, [0.2, 0.3, 0.5], [0.6, 0.3, 0.1])),
    [0, 1, 2],
  ),
  (
    "BinomialLogits",
    "binomial",
    lambda v: nd.BinomialLogits(_v(v, 0.2, -0.7), total_count=5),
    [0.0, 2.0, 5.0],
  ),
  (
    "BinomialProbs",
    "binomial",
    lambda v: nd.BinomialProbs(_v(v, 0.3, 0.6), total_count=5),
    [0.0, 2.0, 5.0],
  ),
  (
    "GeometricLogits",
    "geometric",
    lambda v: nd.GeometricLogits(_v(v, -0.3, 0.5)),
    [0.0, 1.0, 4.0],
  ),
  (
    "GeometricProbs",
    "geometric",
    lambda v: nd.GeometricProbs(_v(v, 0.4, 0.7)),
    [0.0, 1.0, 4.0],
  ),
  ("Poisson", "poisson", lambda v: nd.Poisson(_v(v, 2.5, 0.7)), [0.0, 1.0, 5.0]),
  ("Exponential", "exponential", lambda v: nd.Exponential(_v(v, 1.7, 0.4)), POS),
  ("Gamma", "gamma", lambda v: nd.Gamma(_v(v, 2.5, 1.2), _v(v, 1.5, 0.6)), POS),
  ("Chi2", "chi2", lambda v: nd.Chi2(_v(v, 3.5, 1.5)), POS),
  ("Beta", "beta", lambda v: nd.Beta(_v(v, 2.0, 0.7), _v(v, 3.0, 1.4)), UNIT),
  (
    "Dirichlet",
    "dirichlet",
    lambda v: nd.Dirichlet(_v(v, [1.5, 2.0, 3.0], [0.7, 1.0, 4.0])),
    SIMPLEX,
  ),
  ("Laplace", "laplace", lambda v: nd.Laplace(_v(v, 0.3, -0.5), _v(v, 1.2, 0.5)), R3),
  ("Gumbel", "gumbel", lambda v: nd.Gumbel(_v(v, 0.3, -0.5), _v(v, 1.2, 0.5)), R3),
  ("HalfNormal", "half_normal", lambda v: nd.HalfNormal(_v(v, 1.3, 0.6)), POS),
  ("Cauchy", "cauchy", lambda v: nd.Cauchy(_v(v, 0.3, -0.5), _v(v, 1.2, 0.5)), R3),
  (
    "LogNormal",
    "log_normal",
    lambda v: nd.LogNormal(_v(v, 0.3, -0.5), _v(v, 0.8, 1.3)),
    POS,
  ),
  (
    "Uniform",
    "uniform",
    lambda v: nd.Uniform(_v(v, -1.0, -2.0), _v(v, 2.0, 3.0)),
    [-0.5, 0.0, 1.5],
  ),
  (
    "Pareto",
    "pareto",
    lambda v: nd.Pareto(_v(v, 1.5, 1.2), _v(v, 2.5, 1.5)),
    [1.6, 2.0, 5.0],
  ),
  ("Weibull", "weibull", lambda v: nd.Weibull(_v(v, 1.5, 0.8), _v(v, 2.5, 1.3)), POS),
  (
    "VonMises",
    "von_mises",
    lambda v: nd.VonMises(_v(v, 0.3, -0.5), _v(v, 2.0, 0.7)),
    [-2.0, 0.1, 1.5],
  ),
  (
    "Kumaraswamy",
    "kumaraswamy",
    lambda v: nd.Kumaraswamy(_v(v, 2.0, 1.5), _v(v, 3.0, 0.8)),
    UNIT,
  ),
  (
    "Independent(Normal)",
    "mvn_diag",
    lambda v: nd.Normal(
      _v(v, [0.1, 0.2, -0.3], [0.0, 1.0, 0.5]), _v(v, [1.0, 2.0, 0.5], [0.7, 1.1, 1.3])
    ).to_event(1),
    MV3,
  ),
]

DISTRAX = [
  ("Normal", "normal", lambda v: distrax.Normal(_v(v, 0.3, -0.2), _v(v, 1.7, 0.9)), R3),
  (
    "LogStddevNormal",
    "normal",
    lambda v: distrax.LogStddevNormal(_v(v, 0.3, -0.2), _v(v, 0.5, -0.1)),
    R3,
  ),
  (
    "MultivariateNormalDiag",
    "mvn_diag",
    lambda v: distrax.MultivariateNormalDiag(
      _v(v, [0.1, 0.2], [0.0, -0.5]), _v(v, [1.0, 2.0], [0.5, 1.5])
    ),
    MV,
  ),
  (
    "MultivariateNormalTri",
    "mvn",
    lambda v: distrax.MultivariateNormalTri(
      _v(v, [0.1, 0.2], [0.0, -0.5]), _v(v, L2, L2B)
    ),
    MV,
  ),
  (
    "MultivariateNormalTri(upper)",
    "mvn",
    lambda v: distrax.MultivariateNormalTri(
      _v(v, [0.1, 0.2], [0.0, -0.5]),
      _v(v, np.transpose(L2), np.transpose(L2B)),
      is_lower=False,
    ),
    MV,
  ),
  (
    "MultivariateNormalFullCovariance",
    "mvn",
    lambda v: distrax.MultivariateNormalFullCovariance(
      _v(v, [0.1, 0.2], [0.0, -0.5]),
      _v(v, [[2.0, 0.5], [0.5, 1.0]], [[1.0, -0.2], [-0.2, 3.0]]),
    ),
    MV,
  ),
  (
    "MultivariateNormalDiagPlusLowRank",
    "mvn",
    lambda v: distrax.MultivariateNormalDiagPlusLowRank(
      _v(v, [0.1, 0.2], [0.0, -0.5]),
      _v(v, [1.0, 2.0], [0.5, 1.5]),
      _v(v, [[0.5], [1.0]], [[0.2], [-0.3]]),
      _v(v, [[0.3], [-0.4]], [[1.0], [0.5]]),
    ),
    MV,
  ),
  (
    "Bernoulli(logits)",
    "bernoulli",
    lambda v: distrax.Bernoulli(logits=_v(v, 0.4, -1.2)),
    [0.0, 1.0],
  ),
  (
    "Bernoulli(probs)",
    "bernoulli",
    lambda v: distrax.Bernoulli(probs=_v(v, 0.3, 0.8)),
    [0.0, 1.0],
  ),
  (
    "Categorical(logits)",
    "categorical",
    lambda v: distrax.Categorical(logits=_v(v, [0.1, -0.5, 1.2], [0.0, 0.3, -0.4])),
    [0, 1, 2],
  ),
  (
    "Categorical(probs)",
    "categorical",
    lambda v: distrax.Categorical(probs=_v(v, [0.2, 0.3, 0.5], [0.6, 0.3, 0.1])),
    [0, 1, 2],
  ),
  (
    "OneHotCategorical",
    "one_hot_categorical",
    lambda v: distrax.OneHotCategorical(probs=_v(v, [0.2, 0.3, 0.5], [0.6, 0.3, 0.1])),
    np.eye(3),
  ),
  ("Beta", "beta", lambda v: distrax.Beta(_v(v, 2.0, 0.7), _v(v, 3.0, 1.4)), UNIT),
  ("Gamma", "gamma", lambda v: distrax.Gamma(_v(v, 2.5, 1.2), _v(v, 1.5, 0.6)), POS),
  (
    "Dirichlet",
    "dirichlet",
    lambda v: distrax.Dirichlet(_v(v, [1.5, 2.0, 3.0], [0.7, 1.0, 4.0])),
    SIMPLEX,
  ),
  (
    "Laplace",
    "laplace",
    lambda v: distrax.Laplace(_v(v, 0.3, -0.5), _v(v, 1.2, 0.5)),
    R3,
  ),
  ("Gumbel", "gumbel", lambda v: distrax.Gumbel(_v(v, 0.3, -0.5), _v(v, 1.2, 0.5)), R3),
  (
    "Uniform",
    "uniform",
    lambda v: distrax.Uniform(_v(v, -1.0, -2.0), _v(v, 2.0, 3.0)),
    [-0.5, 0.0, 1.5],
  ),
  (
    "VonMises",
    "von_mises",
    lambda v: distrax.VonMises(_v(v, 0.3, -0.5), _v(v, 2.0, 0.7)),
    [-2.0, 0.1, 1.5],
  ),
  (
    "Independent(Normal)",
    "mvn_diag",
    lambda v: distrax.Independent(
      distrax.Normal(
        _v(v, [0.1, 0.2, -0.3], [0.0, 1.0, 0.5]),
        _v(v, [1.0, 2.0, 0.5], [0.7, 1.1, 1.3]),
      ),
      1,
    ),
    MV3,
  ),
  (
    "Independent(tfd.Normal)",
    "mvn_diag",
    lambda v: distrax.Independent(
      tfd.Normal(
        _v(v, [0.1, 0.2, -0.3], [0.0, 1.0, 0.5]),
        _v(v, [1.0, 2.0, 0.5], [0.7, 1.1, 1.3]),
      ),
      1,
    ),
    MV3,
  ),
]

TFP = [
  ("Normal", "normal", lambda v: tfd.Normal(_v(v, 0.3, -0.2), _v(v, 1.7, 0.9)), R3),
  (
    "MultivariateNormalDiag",
    "mvn_diag",
    lambda v: tfd.MultivariateNormalDiag(
      _v(v, [0.1, 0.2], [0.0, -0.5]), _v(v, [1.0, 2.0], [0.5, 1.5])
    ),
    MV,
  ),
  (
    "MultivariateNormalDiag(loc=None)",
    "mvn_diag",
    lambda v: tfd.MultivariateNormalDiag(scale_diag=_v(v, [1.0, 2.0], [0.5, 1.5])),
    MV,
  ),
  (
    "MultivariateNormalTriL",
    "mvn",
    lambda v: tfd.MultivariateNormalTriL(
      _v(v, [0.1, 0.2], [0.0, -0.5]), _v(v, L2, L2B)
    ),
    MV,
  ),
  (
    "MultivariateNormalFullCovariance",
    "mvn",
    lambda v: tfd.MultivariateNormalFullCovariance(
      _v(v, [0.1, 0.2], [0.0, -0.5]),
      _v(v, [[2.0, 0.5], [0.5, 1.0]], [[1.0, -0.2], [-0.2, 3.0]]),
    ),
    MV,
  ),
  (
    "MultivariateNormalDiagPlusLowRank",
    "mvn",
    lambda v: tfd.MultivariateNormalDiagPlusLowRank(
      _v(v, [0.1, 0.2], [0.0, -0.5]),
      _v(v, [1.0, 2.0], [0.5, 1.5]),
      _v(v, [[0.5], [1.0]], [[0.2], [-0.3]]),
    ),
    MV,
  ),
  (
    "MultivariateNormalDiagPlusLowRankCovariance",
    "mvn_low_rank",
    lambda v: tfd.MultivariateNormalDiagPlusLowRankCovariance(
      _v(v, [0.1, 0.2], [0.0, -0.5]),
      _v(v, [1.0, 2.0], [0.5, 1.5]),
      _v(v, [[0.5], [1.0]], [[0.2], [-0.3]]),
    ),
    MV,
  ),
  (
    "Bernoulli(logits)",
    "bernoulli",
    lambda v: tfd.Bernoulli(logits=_v(v, 0.4, -1.2)),
    [0, 1],
  ),
  (
    "Bernoulli(probs)",
    "bernoulli",
    lambda v: tfd.Bernoulli(probs=_v(v, 0.3, 0.8)),
    [0, 1],
  ),
  (
    "Categorical",
    "categorical",
    lambda v: tfd.Categorical(logits=_v(v, [0.1, -0.5, 1.2], [0.0, 0.3, -0.4])),
    [0, 1, 2],
  ),
  (
    "OneHotCategorical",
    "one_hot_categorical",
    lambda v: tfd.OneHotCategorical(probs=_v(v, [0.2, 0.3, 0.5], [0.6, 0.3, 0.1])),
    np.eye(3, dtype=np.int32),
  ),
  (
    "Binomial",
    "binomial",
    lambda v: tfd.Binomial(f64(5.0), logits=_v(v, 0.2, -0.7)),
    [0.0, 2.0, 5.0],
  ),
  (
    "Geometric",
    "geometric",
    lambda v: tfd.Geometric(probs=_v(v, 0.4, 0.7)),
    [0.0, 1.0, 4.0],
  ),
  (
    "Poisson(log_rate)",
    "poisson",
    lambda v: tfd.Poisson(log_rate=_v(v, 0.9, -0.3)),
    [0.0, 1.0, 5.0],
  ),
  ("Exponential", "exponential", lambda v: tfd.Exponential(_v(v, 1.7, 0.4)), POS),
  (
    "Gamma(log_rate)",
    "gamma",
    lambda v: tfd.Gamma(_v(v, 2.5, 1.2), log_rate=_v(v, 0.4, -0.5)),
    POS,
  ),
  ("Chi2", "chi2", lambda v: tfd.Chi2(_v(v, 3.5, 1.5)), POS),
  ("Beta", "beta", lambda v: tfd.Beta(_v(v, 2.0, 0.7), _v(v, 3.0, 1.4)), UNIT),
  (
    "Dirichlet",
    "dirichlet",
    lambda v: tfd.Dirichlet(_v(v, [1.5, 2.0, 3.0], [0.7, 1.0, 4.0])),
    SIMPLEX,
  ),
  ("Laplace", "laplace", lambda v: tfd.Laplace(_v(v, 0.3, -0.5), _v(v, 1.2, 0.5)), R3),
  ("Gumbel", "gumbel", lambda v: tfd.Gumbel(_v(v, 0.3, -0.5), _v(v, 1.2, 0.5)), R3),
  ("HalfNormal", "half_normal", lambda v: tfd.HalfNormal(_v(v, 1.3, 0.6)), POS),
  ("Cauchy", "cauchy", lambda v: tfd.Cauchy(_v(v, 0.3, -0.5), _v(v, 1.2, 0.5)), R3),
  (
    "LogNormal",
    "log_normal",
    lambda v: tfd.LogNormal(_v(v, 0.3, -0.5), _v(v, 0.8, 1.3)),
    POS,
  ),
  (
    "Uniform",
    "uniform",
    lambda v: tfd.Uniform(_v(v, -1.0, -2.0), _v(v, 2.0, 3.0)),
    [-0.5, 0.0, 1.5],
  ),
  (
    "Pareto",
    "pareto",
    lambda v: tfd.Pareto(_v(v, 2.5, 1.5), _v(v, 1.5, 1.2)),
    [1.6, 2.0, 5.0],
  ),
  ("Weibull", "weibull", lambda v: tfd.Weibull(_v(v, 2.5, 1.3), _v(v, 1.5, 0.8)), POS),
  (
    "VonMises",
    "von_mises",
    lambda v: tfd.VonMises(_v(v, 0.3, -0.5), _v(v, 2.0, 0.7)),
    [-2.0, 0.1, 1.5],
  ),
  (
    "Kumaraswamy",
    "kumaraswamy",
    lambda v: tfd.Kumaraswamy(_v(v, 2.0, 1.5), _v(v, 3.0, 0.8)),
    UNIT,
  ),
  (
    "ContinuousBernoulli",
    "continuous_bernoulli",
    lambda v: tfd.ContinuousBernoulli(logits=_v(v, 0.7, -1.3)),
    UNIT,
  ),
  (
    "Independent(Normal)",
    "mvn_diag",
    lambda v: tfd.Independent(
      tfd.Normal(
        _v(v, [0.1, 0.2, -0.3], [0.0, 1.0, 0.5]),
        _v(v, [1.0, 2.0, 0.5], [0.7, 1.1, 1.3]),
      ),
      1,
    ),
    MV3,
  ),
]

CASES = (
  [pytest.param("numpyro", *c[1:], id=f"numpyro-{c[0]}") for c in NUMPYRO]
  + [pytest.param("distrax", *c[1:], id=f"distrax-{c[0]}") for c in DISTRAX]
  + [pytest.param("tfp", *c[1:], id=f"tfp-{c[0]}") for c in TFP]
)


@pytest.mark.parametrize(("lib", "family", "make", "points"), CASES)
def test_adapter_reads_the_library_convention(x64, lib, family, make, points):
  """canonical(obj) is the family whose scipy density is obj.log_prob."""
  with library():
    obj = make(0)
    x = jnp.asarray(np.asarray(points))
    if lib == "tfp" and family in ("bernoulli", "categorical"):
      x = x.astype(jnp.int32)
    theirs = np.asarray(obj.log_prob(x))
  found = _adapters.canonical(obj)
  assert found is not None
  assert found.family == family
  assert found.batch_shape == tuple(obj.batch_shape)
  ours = reference_log_prob(family, found.params, points)
  np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-10)


def _library_kl(lib, p, q):
  with library():
    if lib == "numpyro":
      return nd.kl_divergence(p, q)
    if lib == "distrax":
      return p.kl_divergence(q)
    return tfd.kl_divergence(p, q)


# Pairs each library registers (checked to exist below), by case id.
LIBRARY_KL = {
  "numpyro": [
    "Normal",
    "MultivariateNormal",
    "CategoricalProbs",
    "Gamma",
    "Beta",
    "Dirichlet",
  ],
  "distrax": [
    "Normal",
    "LogStddevNormal",
    "MultivariateNormalDiag",
    "MultivariateNormalTri",
    "MultivariateNormalFullCovariance",
    "Bernoulli(logits)",
    "Bernoulli(probs)",
    "Categorical(logits)",
    "Categorical(probs)",
    "OneHotCategorical",
    "Beta",
    "Gamma",
    "Laplace",
    "Dirichlet",
  ],
  # TFP has no Binomial, Geometric, Poisson or low-rank-covariance pair.
  "tfp": [
    c[0]
    for c in TFP
    if c[0].split("(")[0]
    not in (
      "Kumaraswamy",
      "ContinuousBernoulli",
      "Binomial",
      "Geometric",
      "Poisson",
      "MultivariateNormalDiagPlusLowRankCovariance",
    )
  ],
}
KL_CASES = [
  pytest.param(lib, *case[1:3], id=f"{lib}-{case[0]}")
  for lib, cases in (("numpyro", NUMPYRO), ("distrax", DISTRAX), ("tfp", TFP))
  for case in cases
  if case[0] in LIBRARY_KL[lib]
]


@pytest.mark.parametrize(("lib", "family", "make"), KL_CASES)
def test_kl_matches_the_library(x64, lib, family, make):
  """jaxkl.kl(p, q) equals the library's own kl_divergence (float64)."""
  with library():
    p, q = make(0), make(1)
  theirs = np.asarray(_library_kl(lib, p, q))
  ours = kl(p, q)
  assert ours.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-8)
  np.testing.assert_array_equal(np.asarray(kl(p, p)), 0.0)


@pytest.mark.parametrize(
  ("lib", "make_p", "make_q"),
  [
    pytest.param(
      "numpyro",
      lambda: nd.Weibull(f64(1.5), f64(2.5)),
      lambda: nd.Gamma(f64(2.0), f64(1.3)),
      id="numpyro-Weibull-Gamma",
    ),
    pytest.param(
      "tfp",
      lambda: tfd.ContinuousBernoulli(logits=f64(0.7)),
      lambda: tfd.ContinuousBernoulli(probs=f64(0.2)),
      id="tfp-ContinuousBernoulli",
    ),
    pytest.param(
      "tfp",
      lambda: tfd.Exponential(f64(1.5)),
      lambda: tfd.Gamma(f64(2.0), f64(1.3)),
      id="tfp-Exponential-Gamma",
    ),
  ],
)
def test_cross_and_extra_pairs_match_the_library(x64, lib, make_p, make_q):
  with library():
    p, q = make_p(), make_q()
  theirs = np.asarray(_library_kl(lib, p, q))
  np.testing.assert_allclose(np.asarray(kl(p, q)), theirs, rtol=1e-6)


def test_kumaraswamy_beta_against_quadrature(x64):
  # NumPyro's own value truncates a series (KL_KUMARASWAMY_BETA_TAYLOR_ORDER
  # = 10) and is 13% low here (0.0788); the integral is 0.0889006328376.
  def integrand(x):
    log_k = np.log(6.0) + np.log(x) + 2 * np.log1p(-(x**2))
    return np.exp(log_k) * (log_k - scipy.stats.beta.logpdf(x, 1.5, 2.5))

  exact = scipy.integrate.quad(integrand, 0, 1, epsabs=1e-14, limit=200)[0]
  for p in (nd.Kumaraswamy(f64(2.0), f64(3.0)), tfd.Kumaraswamy(f64(2.0), f64(3.0))):
    np.testing.assert_allclose(
      np.asarray(kl(p, nd.Beta(f64(1.5), f64(2.5)))), exact, rtol=1e-9
    )


def test_objects_of_different_libraries_mix(x64):
  a, b, c, d = f64(2.5, 1.5, 1.2, 0.6)
  expected = jaxkl.kl_normal(a, b, c, d)
  with library():
    objects_p = [nd.Normal(a, b), distrax.Normal(a, b), tfd.Normal(a, b)]
    objects_q = [nd.Normal(c, d), distrax.Normal(c, d), tfd.Normal(c, d)]
  for p in objects_p:
    for q in objects_q:
      np.testing.assert_array_equal(np.asarray(kl(p, q)), np.asarray(expected))


def test_no_pair_is_registered_twice():
  pairs = _registry.builtin_pairs(strict=True)
  for (fp, fq), function in pairs.items():
    assert isinstance(fp, str) and isinstance(fq, str) and callable(function)


def test_supported_types_lists_every_library():
  table = _adapters.supported_types()
  assert table["numpyro"]["Pareto"] == "pareto"
  assert table["tfp"]["ContinuousBernoulli"] == "continuous_bernoulli"
  assert table["distrax"]["Beta"] == "beta"
  families = {f for names in table.values() for f in names.values()}
  expected = {
    "normal", "mvn", "mvn_diag", "mvn_low_rank", "bernoulli", "categorical",
    "one_hot_categorical", "binomial", "geometric", "poisson", "exponential",
    "gamma", "chi2", "beta", "dirichlet", "laplace", "gumbel", "half_normal",
    "cauchy", "log_normal", "uniform", "pareto", "weibull", "von_mises",
    "kumaraswamy", "continuous_bernoulli",
  }  # fmt: skip
  assert expected <= {f.split(" ")[0] for f in families}


# ----------------------------------------------------------------------------
# Batches, jit, grad, the compiled computation.


def test_batch_shapes_broadcast(x64):
  a = f64(np.linspace(0.5, 3.0, 4).reshape(4, 1))
  c = f64([0.7, 1.0, 2.0])
  p, q = nd.Normal(a, f64(1.5)), nd.Normal(c, f64(0.5))
  result = kl(p, q)
  assert result.shape == (4, 3)
  expected = jaxkl.kl_normal(a, f64(1.5), c, f64(0.5))
  np.testing.assert_array_equal(np.asarray(result), np.asarray(expected))
  with pytest.raises(ValueError, match="batch shapes"):
    kl(nd.Normal(f64([1.0, 2.0]), 1.0), nd.Normal(f64([1.0, 2.0, 3.0]), 1.0))


def test_event_shapes_must_match(x64):
  with pytest.raises(ValueError, match="event shapes"):
    kl(nd.Dirichlet(f64([1.0, 2.0, 3.0])), nd.Dirichlet(f64([1.0, 2.0])))


@pytest.mark.parametrize("lib", ["numpyro", "distrax", "tfp"])
def test_jit_with_distribution_pytrees(x64, lib):
  module = {"numpyro": nd, "distrax": distrax, "tfp": tfd}[lib]
  a, b = f64([1.0, 2.5]), f64([0.5, 3.0])
  with library():
    p, q = module.Normal(a, b), module.Normal(b, a)
  jitted = jax.jit(lambda p, q: kl(p, q))(p, q)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(kl(p, q)), rtol=1e-14)


def test_dtypes_and_vmap():
  for dtype in (jnp.bfloat16, jnp.float32):
    p = nd.Normal(jnp.asarray(0.0, dtype), jnp.asarray(1.0, dtype))
    q = nd.Normal(jnp.asarray(1.0, dtype), jnp.asarray(2.0, dtype))
    value = kl(p, q)
    assert value.dtype == dtype
    expected = np.log(2.0) + 2 / 8 - 0.5
    np.testing.assert_allclose(
      float(value), expected, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6
    )
  locs = jnp.linspace(-1.0, 1.0, 5)
  mapped = jax.vmap(lambda m: kl(nd.Normal(m, 1.0), nd.Normal(0.0, 1.0)))(locs)
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(locs) ** 2 / 2, rtol=1e-6)


def test_grad_through_parameters(x64):
  def f(loc, scale):
    return kl(nd.Normal(loc, scale), nd.Normal(f64(2.0), f64(1.0)))

  check_grads(f, (f64(1.3), f64(0.7)), order=1, modes=("rev",))
  value, grad = jax.value_and_grad(lambda a: kl(nd.Normal(a, a), nd.Normal(a, a)))(
    f64(1.5)
  )
  assert value == 0.0 and np.isfinite(grad)


def _ops(text):
  return collections.Counter(re.findall(r"\b(?:stablehlo|chlo|mhlo)\.[a-z_]+", text))


def test_dispatch_compiles_to_the_same_computation():
  a, b = jnp.array([1.0, 2.0, 3.0]), jnp.array([2.0, 2.0, 0.5])
  dispatched = jax.jit(lambda p, q: kl(p, q)).lower(nd.Gamma(a, b), nd.Gamma(b, a))
  direct = jax.jit(jaxkl.kl_gamma).lower(a, b, b, a)
  ops = _ops(dispatched.as_text())
  assert ops == _ops(direct.as_text())
  assert sum(ops.values()) > 20


# ----------------------------------------------------------------------------
# Structural wrappers.


def test_independent_sums_the_reinterpreted_dimensions(x64):
  a, b = f64(np.linspace(0.5, 2.0, 12).reshape(4, 3)), f64([1.0, 2.0, 3.0])
  p = nd.Normal(a, f64(1.5)).to_event(1)
  q = nd.Normal(b, f64(0.5)).to_event(1)
  expected = np.asarray(_library_kl("numpyro", p, q))
  np.testing.assert_allclose(np.asarray(kl(p, q)), expected, rtol=1e-12)
  # Nested wrappers count together.
  p2 = nd.Normal(a, f64(1.5)).to_event(1).to_event(1)
  q2 = nd.Independent(nd.Normal(jnp.broadcast_to(b, (4, 3)), f64(0.5)), 2)
  np.testing.assert_allclose(np.asarray(kl(p2, q2)), expected.sum(), rtol=1e-12)
  with library():
    tp = tfd.Independent(tfd.Normal(a, f64(1.5)), 1)
    tq = tfd.Independent(tfd.Normal(b, f64(0.5)), 1)
    dp = distrax.Independent(distrax.Normal(a, f64(1.5)), 1)
    dq = distrax.Independent(distrax.Normal(b, f64(0.5)), 1)
  np.testing.assert_allclose(
    np.asarray(kl(tp, tq)), np.asarray(_library_kl("tfp", tp, tq)), rtol=1e-12
  )
  np.testing.assert_allclose(
    np.asarray(kl(dp, dq)), np.asarray(_library_kl("distrax", dp, dq)), rtol=1e-12
  )


def test_independent_normal_is_a_diagonal_normal(x64):
  loc, scale = f64([0.1, 0.2, -0.3], [1.0, 2.0, 0.5])
  tril = f64(np.tril(np.full((3, 3), 0.3)) + np.eye(3))
  expected = jaxkl.kl_multivariate_normal(loc, jnp.diag(scale), jnp.zeros(3), tril)
  mvn = nd.MultivariateNormal(f64(np.zeros(3)), scale_tril=tril)
  np.testing.assert_allclose(
    np.asarray(kl(nd.Normal(loc, scale).to_event(1), mvn)),
    np.asarray(expected),
    rtol=1e-12,
  )
  # NumPyro's prior idiom: an expanded scalar normal.
  prior = nd.Normal(f64(0.0), f64(1.0)).expand([3]).to_event(1)
  expected = jaxkl.kl_multivariate_normal(jnp.zeros(3), jnp.eye(3), jnp.zeros(3), tril)
  np.testing.assert_allclose(
    np.asarray(kl(prior, mvn)), np.asarray(expected), rtol=1e-12
  )


def test_independent_with_different_counts_has_no_closed_form(x64):
  p = nd.Normal(f64(np.zeros((2, 3))), f64(1.0)).to_event(2)
  mvn = nd.MultivariateNormal(f64(np.zeros((2, 3))), scale_tril=f64(np.eye(3)))
  q = nd.Independent(mvn, 1)
  assert p.event_shape == q.event_shape == (2, 3)
  with pytest.raises(NotImplementedError, match="reinterprets 2 batch"):
    kl(p, q)


def test_expanded_broadcasts(x64):
  p = nd.Normal(f64(2.0), f64(1.5)).expand([2, 3])
  q = nd.Normal(f64([1.0, 2.0, 3.0]), f64(0.5))
  expected = _library_kl("numpyro", p, q)
  assert kl(p, q).shape == (2, 3)
  np.testing.assert_allclose(np.asarray(kl(p, q)), np.asarray(expected), rtol=1e-12)
  np.testing.assert_allclose(
    np.asarray(kl(q, p)), np.asarray(_library_kl("numpyro", q, p)), rtol=1e-12
  )
  with library():
    tp = tfd.BatchBroadcast(tfd.Normal(f64(2.0), f64(1.5)), [2, 3])
    tq = tfd.Normal(f64([1.0, 2.0, 3.0]), f64(0.5))
  np.testing.assert_allclose(np.asarray(kl(tp, tq)), np.asarray(expected), rtol=1e-12)


def test_numpyro_masks(x64):
  base_p = nd.Normal(f64([1.0, 2.0, 3.0]), f64(1.5))
  base_q = nd.Normal(f64([2.0, 2.0, 1.0]), f64(0.5))
  m1, m2 = jnp.array([True, False, True]), jnp.array([True, True, False])
  p, q = base_p.mask(m1), base_q.mask(m2)
  np.testing.assert_allclose(
    np.asarray(kl(p, q)), np.asarray(_library_kl("numpyro", p, q)), rtol=1e-12
  )
  full = np.asarray(kl(base_p, base_q))
  assert np.all(full > 0)
  np.testing.assert_array_equal(np.asarray(kl(p, base_q)), np.where(m1, full, 0))
  np.testing.assert_array_equal(np.asarray(kl(base_p, base_q.mask(False))), 0.0)
  np.testing.assert_array_equal(np.asarray(kl(base_p.mask(True), base_q)), full)


def test_tfp_masks(x64):
  valid_p = jnp.array([True, False, True, False])
  valid_q = jnp.array([True, False, False, True])
  with library():
    p = tfd.Masked(tfd.Normal(f64([1.0, 2.0, 3.0, 4.0]), f64(1.5)), valid_p)
    q = tfd.Masked(tfd.Normal(f64([2.0, 2.0, 1.0, 1.0]), f64(0.5)), valid_q)
  theirs = np.asarray(_library_kl("tfp", p, q))
  ours = np.asarray(kl(p, q))
  assert ours[0] > 0 and ours[1] == 0 and np.isnan(ours[2:]).all()
  np.testing.assert_allclose(ours, theirs, rtol=1e-12, equal_nan=True)


def test_point_mass_as_p(x64):
  q = nd.Normal(f64(2.0), f64(1.5))
  p = nd.Delta(f64(0.7), log_density=f64(0.3))
  np.testing.assert_allclose(
    np.asarray(kl(p, q)), np.asarray(_library_kl("numpyro", p, q)), rtol=1e-12
  )
  expected = -scipy.stats.norm.logpdf(0.7, 2.0, 1.5) + 0.3
  np.testing.assert_allclose(np.asarray(kl(p, q)), expected, rtol=1e-12)
  with library():
    tp, tq = tfd.Deterministic(f64([0.7, 1.5])), tfd.Normal(f64(2.0), f64(1.5))
    dp = distrax.Deterministic(f64(0.7))
  np.testing.assert_allclose(
    np.asarray(kl(tp, tq)), np.asarray(_library_kl("tfp", tp, tq)), rtol=1e-12
  )
  np.testing.assert_allclose(np.asarray(kl(dp, q)), expected - 0.3, rtol=1e-12)
  # A discrete Q: the exact KL of a point mass, -log q(v).
  cat = nd.CategoricalProbs(f64([0.2, 0.5, 0.3]))
  np.testing.assert_allclose(
    np.asarray(kl(nd.Delta(jnp.asarray(1)), cat)), -np.log(0.5)
  )


def test_transformed_with_the_same_transform(x64):
  gp, gq = nd.Normal(f64(2.0), f64(1.5)), nd.Normal(f64(1.0), f64(0.5))
  expected = np.asarray(kl(gp, gq))
  shared = nd.transforms.AffineTransform(f64(1.0), f64(2.0))
  p = nd.TransformedDistribution(gp, shared)
  for transform in (shared, nd.transforms.AffineTransform(f64(1.0), f64(2.0))):
    q = nd.TransformedDistribution(gq, transform)
    np.testing.assert_array_equal(np.asarray(kl(p, q)), expected)
  chain = [
    nd.transforms.ExpTransform(),
    nd.transforms.AffineTransform(f64(1.0), f64(2.0)),
  ]
  np.testing.assert_array_equal(
    np.asarray(
      kl(
        nd.TransformedDistribution(gp, chain),
        nd.TransformedDistribution(gq, list(chain)),
      )
    ),
    expected,
  )
  with library():
    tp = tfd.TransformedDistribution(tfd.Normal(f64(2.0), f64(1.5)), tfb.Exp())
    tq = tfd.TransformedDistribution(tfd.Normal(f64(1.0), f64(0.5)), tfb.Exp())
    dp = distrax.Transformed(
      distrax.Normal(f64(2.0), f64(1.5)), distrax.ScalarAffine(f64(1.0), f64(2.0))
    )
    dq = distrax.Transformed(
      distrax.Normal(f64(1.0), f64(0.5)), distrax.ScalarAffine(f64(1.0), f64(2.0))
    )
  np.testing.assert_allclose(np.asarray(kl(tp, tq)), expected, rtol=1e-14)
  np.testing.assert_allclose(np.asarray(kl(dp, dq)), expected, rtol=1e-14)


def test_transformed_refusals(x64):
  gp, gq = nd.Normal(f64(2.0), f64(1.5)), nd.Normal(f64(1.0), f64(0.5))
  p = nd.TransformedDistribution(gp, nd.transforms.AffineTransform(f64(1.0), f64(2.0)))
  q = nd.TransformedDistribution(gq, nd.transforms.AffineTransform(f64(1.0), f64(3.0)))
  with pytest.raises(NotImplementedError, match="transforms differ"):
    kl(p, q)
  abs_p = nd.TransformedDistribution(gp, nd.transforms.AbsTransform())
  abs_q = nd.TransformedDistribution(gq, nd.transforms.AbsTransform())
  with pytest.raises(NotImplementedError, match="not one-to-one"):
    kl(abs_p, abs_q)
  with library():
    tp = tfd.TransformedDistribution(
      tfd.Normal(f64(0.0), f64(1.0)), tfb.AbsoluteValue()
    )
    tq = tfd.TransformedDistribution(
      tfd.Normal(f64(1.0), f64(1.0)), tfb.AbsoluteValue()
    )
  with pytest.raises(NotImplementedError, match="not one-to-one"):
    kl(tp, tq)
  # Under jit the transforms' parameters are traced: undecidable.
  same = nd.transforms.AffineTransform(f64(1.0), f64(2.0))
  p, q = nd.TransformedDistribution(gp, same), nd.TransformedDistribution(gq, same)
  with pytest.raises(NotImplementedError, match="cannot decide"):
    jax.jit(lambda p, q: kl(p, q))(p, q)
  # ... then a key gives a Monte-Carlo estimate.
  estimate = jax.jit(lambda p, q, key: kl(p, q, key=key, num_samples=4000))(
    p, q, jax.random.key(1)
  )
  assert isinstance(estimate, jaxkl.KLEstimate)
  exact = float(kl(gp, gq))
  assert abs(float(estimate.value) - exact) < 4 * float(estimate.stderr)


def test_tfp_sample(x64):
  with library():
    p = tfd.Sample(tfd.Normal(f64([1.0, 2.0]), f64(1.5)), [3, 2])
    q = tfd.Sample(tfd.Normal(f64([2.0, 0.5]), f64(0.5)), [3, 2])
  np.testing.assert_allclose(
    np.asarray(kl(p, q)), np.asarray(_library_kl("tfp", p, q)), rtol=1e-12
  )


# ----------------------------------------------------------------------------
# Gaussian mixtures.


LOGITS3 = [0.3, -0.2, 0.5]
LOC3 = [[0.0, 1.0], [-1.0, 0.5], [2.0, -1.0]]
SCALE3 = [[0.5, 1.0], [1.5, 0.7], [0.9, 1.2]]
TRILS3 = [L2, L2B, [[0.6, 0.0], [0.2, 0.8]]]
FACTOR3 = [[[0.5], [1.0]], [[0.2], [-0.3]], [[0.0], [0.7]]]


def _mixtures():
  """(name, mixture, loc [K, d], covariances [K, d, d]) for known parameters."""
  logits, loc, scale = f64(LOGITS3, LOC3, SCALE3)
  trils, factor = f64(TRILS3, FACTOR3)
  cov_tril = np.einsum("kij,klj->kil", TRILS3, TRILS3)
  cov_diag = np.array([np.diag(s) for s in np.square(SCALE3)])
  cov_low = np.einsum("kir,kjr->kij", FACTOR3, FACTOR3) + np.array(
    [np.diag(s) for s in SCALE3]
  )
  column = np.asarray(SCALE3)[:, :1, None] ** 2
  return [
    ("numpyro-normal", nd.MixtureSameFamily(nd.CategoricalLogits(logits), nd.Normal(loc[:, 0], scale[:, 0])), np.asarray(LOC3)[:, :1], column),
    ("numpyro-mvn", nd.MixtureSameFamily(nd.CategoricalProbs(jax.nn.softmax(logits)), nd.MultivariateNormal(loc, scale_tril=trils)), LOC3, cov_tril),
    ("numpyro-low-rank", nd.MixtureSameFamily(nd.CategoricalLogits(logits), nd.LowRankMultivariateNormal(loc, factor, scale)), LOC3, cov_low),
    ("tfp-diag", tfd.MixtureSameFamily(tfd.Categorical(logits=logits), tfd.MultivariateNormalDiag(loc, scale)), LOC3, cov_diag),
    ("tfp-tril", tfd.MixtureSameFamily(tfd.Categorical(probs=jax.nn.softmax(logits)), tfd.MultivariateNormalTriL(loc, trils)), LOC3, cov_tril),
    ("distrax-normal", distrax.MixtureSameFamily(distrax.Categorical(logits=logits), distrax.Normal(loc[:, 0], scale[:, 0])), np.asarray(LOC3)[:, :1], column),
  ]  # fmt: skip


def test_gaussian_mixture_conversion(x64):
  """The container holds the mixture's weights, means and covariances."""
  with library():
    mixtures = _mixtures()
  weights = scipy.special.softmax(LOGITS3)
  for name, mixture, loc, cov in mixtures:
    converted = as_gaussian_mixture(mixture)
    np.testing.assert_allclose(
      scipy.special.softmax(np.asarray(converted.logits)),
      weights,
      rtol=1e-14,
      err_msg=name,
    )
    np.testing.assert_allclose(np.asarray(converted.loc), loc, rtol=1e-15, err_msg=name)
    tril = np.asarray(converted.scale_tril)
    np.testing.assert_array_equal(tril, np.tril(tril), err_msg=name)
    assert np.all(np.diagonal(tril, axis1=-2, axis2=-1) > 0), name
    np.testing.assert_allclose(
      tril @ np.swapaxes(tril, -1, -2), cov, rtol=1e-13, err_msg=name
    )
  single = as_gaussian_mixture(
    nd.MultivariateNormal(f64([0.1, 0.2]), scale_tril=f64(L2))
  )
  assert single.num_components == 1
  np.testing.assert_array_equal(np.asarray(single.scale_tril[0]), np.asarray(L2))
  x = f64([[0.3, -0.2]])
  expected = scipy.stats.multivariate_normal.logpdf(
    x[0], [0.1, 0.2], np.asarray(L2) @ np.asarray(L2).T
  )
  np.testing.assert_allclose(np.asarray(single.log_prob(x)), [expected], rtol=1e-12)
  with pytest.raises(TypeError, match="as_gaussian_mixture"):
    as_gaussian_mixture(nd.Gamma(1.0, 1.0))


def test_mixture_without_key_points_to_kl_gaussian_mixture(x64):
  logits, loc = f64(LOGITS3, LOC3)
  with library():
    mixture = nd.MixtureSameFamily(
      nd.CategoricalLogits(logits), nd.Normal(loc[:, 0], 1.0)
    )
  with pytest.raises(NotImplementedError, match="kl_gaussian_mixture"):
    kl(mixture, nd.Normal(f64(0.0), f64(1.0)))


def test_jaxkl_gaussian_mixture_objects(x64):
  mixture = GaussianMixture.univariate(
    f64([-1.0, 1.0]), f64([0.5, 0.5]), logits=f64([0.0, 0.0])
  )
  with pytest.raises(NotImplementedError, match="kl_gaussian_mixture"):
    kl(mixture, mixture)
  estimate = kl(mixture, mixture, key=jax.random.key(0), num_samples=100)
  assert float(estimate.value) == 0.0


# ----------------------------------------------------------------------------
# Monte-Carlo fallback and errors.


def test_monte_carlo_fallback_within_four_standard_errors(x64):
  p, q = nd.Normal(f64(0.0), f64(1.0)), nd.StudentT(f64(3.0), f64(0.5), f64(1.2))

  def integrand(x):
    log_p = scipy.stats.norm.logpdf(x)
    return np.exp(log_p) * (log_p - scipy.stats.t.logpdf(x, 3.0, 0.5, 1.2))

  exact = scipy.integrate.quad(integrand, -np.inf, np.inf, epsabs=1e-13)[0]
  estimate = kl(p, q, key=jax.random.key(3), num_samples=20_000)
  assert isinstance(estimate, jaxkl.KLEstimate)
  assert estimate.num_samples == 20_000 and estimate.estimator == "k1"
  assert 0 < float(estimate.stderr) < 0.01
  assert abs(float(estimate.value) - exact) < 4 * float(estimate.stderr)
  k3 = kl(p, q, key=jax.random.key(3), num_samples=20_000, estimator="k3")
  assert k3.estimator == "k3"


def test_no_closed_form_without_key_explains(x64):
  p, q = nd.Normal(f64(0.0), f64(1.0)), nd.StudentT(f64(3.0))
  with pytest.raises(NotImplementedError) as info:
    kl(p, q)
  message = str(info.value)
  for part in (
    "NumPyro Normal",
    "NumPyro StudentT",
    "key=jax.random.key(0)",
    "num_samples",
    "monte_carlo_kl",
    "register_kl",
  ):
    assert part in message, part


def test_key_and_num_samples_go_together(x64):
  p, q = nd.Normal(f64(1.0), f64(1.0)), nd.Normal(f64(2.0), f64(1.0))
  with pytest.raises(ValueError, match="without `num_samples`"):
    kl(p, q, key=jax.random.key(0))
  with pytest.raises(ValueError, match="without `key`"):
    kl(p, q, num_samples=100)
  with pytest.raises(TypeError, match=r"jax\.random key"):
    kl(p, q, key=0, num_samples=100)
  # With a closed form the key is not used: the exact value comes back.
  exact = kl(p, q, key=jax.random.key(0), num_samples=100)
  assert isinstance(exact, jax.Array)
  np.testing.assert_array_equal(np.asarray(exact), np.asarray(kl(p, q)))


def test_not_a_distribution():
  with pytest.raises(TypeError, match="must be a distribution"):
    kl(jnp.zeros(3), nd.Normal(0.0, 1.0))


def test_support_mismatch_is_inf(x64):
  p, q = nd.Uniform(f64(0.0), f64(2.0)), nd.Uniform(f64(0.0), f64(1.0))
  assert float(kl(p, q)) == np.inf
  assert float(kl(q, p)) == pytest.approx(np.log(2.0), rel=1e-14)


# ----------------------------------------------------------------------------
# User registrations and precedence.


class _Toy:
  batch_shape = ()
  event_shape = ()


class _ToySub(_Toy):
  pass


@pytest.fixture
def clean_registry(monkeypatch):
  monkeypatch.setattr(_registry, "_USER", dict(_registry._USER))


def test_most_specific_registration_wins(clean_registry):
  register_kl(_Toy, _Toy)(lambda p, q: jnp.asarray(1.0))
  register_kl(_ToySub, _Toy)(lambda p, q: jnp.asarray(2.0))
  assert float(kl(_Toy(), _Toy())) == 1.0
  assert float(kl(_ToySub(), _Toy())) == 2.0
  assert float(kl(_ToySub(), _ToySub())) == 2.0
  assert float(kl(_Toy(), _ToySub())) == 1.0
  register_kl(_Toy, _ToySub)(lambda p, q: jnp.asarray(3.0))
  with pytest.raises(TypeError, match="ambiguous") as info:
    kl(_ToySub(), _ToySub())
  assert "_ToySub, " in str(info.value) and "_Toy)" in str(info.value)
  assert str(info.value).count("test_kl_dispatch._Toy") >= 2
  register_kl(_ToySub, _ToySub)(lambda p, q: jnp.asarray(4.0))
  assert float(kl(_ToySub(), _ToySub())) == 4.0
  assert (_ToySub, _ToySub) in _registry.registered_pairs()


def test_registration_shadows_the_builtin(clean_registry, x64):
  class MyNormal(nd.Normal):
    pass

  p, q = MyNormal(f64(2.0), f64(1.0)), nd.Normal(f64(1.0), f64(1.0))
  # An unregistered subclass is read as its base class.
  np.testing.assert_array_equal(
    np.asarray(kl(p, q)), np.asarray(kl(nd.Normal(f64(2.0), f64(1.0)), q))
  )

  @register_kl(MyNormal, nd.Normal)
  def _mine(p, q):
    return jnp.full(jnp.broadcast_shapes(p.batch_shape, q.batch_shape), 42.0)

  assert float(kl(p, q)) == 42.0
  assert float(kl(q, q)) == 0.0
  # Registrations apply inside wrappers too.
  assert float(kl(p.expand([2]).to_event(1), q.expand([2]).to_event(1))) == 84.0


def test_register_kl_checks_its_arguments():
  with pytest.raises(TypeError, match="takes a class"):
    register_kl("Normal", _Toy)
  with pytest.raises(TypeError, match="decorates a function"):
    register_kl(_Toy, _Toy)(3)


def test_jaxkl_imports_without_the_libraries():
  code = textwrap.dedent(
    """
    import sys
    for name in ("numpyro", "distrax", "tensorflow_probability"):
      sys.modules[name] = None  # any import of them fails
    import jax.numpy as jnp
    import jaxkl
    from jaxkl._closed_forms._registry import register_kl
    from jaxkl._kl import kl

    class A:
      batch_shape = ()
      event_shape = ()

    register_kl(A, A)(lambda p, q: jnp.zeros(()))
    print(float(kl(A(), A())))
    """
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=False
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "0.0"
