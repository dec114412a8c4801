"""Closed-form KL divergences (jaxkl/_closed_forms/).

References: ``torch.distributions.kl_divergence`` (float64), Monte-Carlo
estimates (NumPy samples, SciPy log-densities), and mpmath at 50 digits for
the numerically delicate cases.
"""

import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from jax.test_util import check_grads

import jaxkl

td = torch.distributions
inf = np.inf
D = 3  # event size of the multivariate families

# ----------------------------------------------------------------------------
# Families: parameter kinds (P's then Q's), the jaxkl function, the torch
# distributions.


def _tril(rng, shape):
  lower = np.tril(rng.normal(size=shape) * 0.5, -1)
  diag = rng.uniform(0.5, 2.0, size=shape[:-1])
  return lower + diag[..., None] * np.eye(shape[-1])


def _cov(rng, shape):
  tril = _tril(rng, shape)
  return tril @ np.swapaxes(tril, -1, -2)


# kind -> (event shape, sampler)
KINDS = {
  "real": ((), lambda rng, s: rng.normal(0.0, 1.5, s)),
  "pos": ((), lambda rng, s: rng.uniform(0.5, 3.0, s)),
  "prob": ((), lambda rng, s: rng.uniform(0.02, 0.98, s)),
  "logit": ((), lambda rng, s: rng.normal(0.0, 3.0, s)),
  "real_vec": ((D,), lambda rng, s: rng.normal(0.0, 1.5, s)),
  "pos_vec": ((D,), lambda rng, s: rng.uniform(0.5, 3.0, s)),
  "logit_vec": ((D,), lambda rng, s: rng.normal(0.0, 2.0, s)),
  "tril": ((D, D), _tril),
  "cov": ((D, D), _cov),
}


def T(x):
  if isinstance(x, torch.Tensor):
    return x
  return torch.as_tensor(np.array(x, np.float64))


FAMILIES = {
  "normal": (jaxkl.kl_normal, ("real", "pos"), lambda l, s: td.Normal(T(l), T(s))),
  "exponential": (jaxkl.kl_exponential, ("pos",), lambda r: td.Exponential(T(r))),
  "gamma": (jaxkl.kl_gamma, ("pos", "pos"), lambda c, r: td.Gamma(T(c), T(r))),
  "beta": (jaxkl.kl_beta, ("pos", "pos"), lambda a, b: td.Beta(T(a), T(b))),
  "laplace": (jaxkl.kl_laplace, ("real", "pos"), lambda l, s: td.Laplace(T(l), T(s))),
  "poisson": (jaxkl.kl_poisson, ("pos",), lambda r: td.Poisson(T(r))),
  "bernoulli": (jaxkl.kl_bernoulli, ("logit",), lambda a: td.Bernoulli(logits=T(a))),
  "bernoulli_probs": (
    jaxkl.kl_bernoulli_probs,
    ("prob",),
    lambda p: td.Bernoulli(probs=T(p)),
  ),
  "categorical": (
    jaxkl.kl_categorical,
    ("logit_vec",),
    lambda a: td.Categorical(logits=T(a)),
  ),
  "dirichlet": (jaxkl.kl_dirichlet, ("pos_vec",), lambda a: td.Dirichlet(T(a))),
  "mvn_diag": (
    jaxkl.kl_multivariate_normal_diag,
    ("real_vec", "pos_vec"),
    lambda l, s: td.Independent(td.Normal(T(l), T(s)), 1),
  ),
  "mvn_tril": (
    jaxkl.kl_multivariate_normal,
    ("real_vec", "tril"),
    lambda l, s: td.MultivariateNormal(T(l), scale_tril=T(s)),
  ),
  "mvn_cov": (
    jaxkl.kl_multivariate_normal_from_covariance,
    ("real_vec", "cov"),
    lambda l, c: td.MultivariateNormal(T(l), covariance_matrix=T(c)),
  ),
}

# Batch shapes of the arguments (P's then Q's), by number of arguments.
BATCH_CASES = {
  2: [((4,), (4,)), ((2, 1), ()), ((), (2, 3))],
  4: [((4,),) * 4, ((2, 1), (3,), (), (2, 3))],
}


def make_params(family, batch_shapes, seed):
  """Random parameters of P then Q with the given batch shapes (NumPy)."""
  kinds = FAMILIES[family][1] * 2
  rng = np.random.default_rng(seed)
  out = []
  for kind, batch in zip(kinds, batch_shapes, strict=False):
    event, sampler = KINDS[kind]
    out.append(sampler(rng, tuple(batch) + event))
  return out


def broadcast_params(family, params):
  """The parameters with their batch dimensions broadcast (for torch)."""
  kinds = FAMILIES[family][1] * 2
  events = [KINDS[k][0] for k in kinds]
  batch = np.broadcast_shapes(
    *[p.shape[: p.ndim - len(e)] for p, e in zip(params, events, strict=False)]
  )
  return [np.broadcast_to(p, batch + e) for p, e in zip(params, events, strict=False)]


def torch_kl(family, params):
  make = FAMILIES[family][2]
  params = broadcast_params(family, params)
  half = len(params) // 2
  return td.kl_divergence(make(*params[:half]), make(*params[half:])).numpy()


def _cases():
  for family, (_, kinds, _) in FAMILIES.items():
    for i, batch in enumerate(BATCH_CASES[2 * len(kinds)]):
      yield pytest.param(family, batch, id=f"{family}-{i}")


# ----------------------------------------------------------------------------
# Against PyTorch.


@pytest.mark.parametrize("family,batch_shapes", list(_cases()))
def test_matches_torch(x64, family, batch_shapes):
  params = make_params(family, batch_shapes, seed=len(family))
  got = FAMILIES[family][0](*params)
  want = torch_kl(family, params)
  assert got.dtype == jnp.float64
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------
# Against Monte Carlo: mean of log p(x) - log q(x) over x ~ P.
#
# Samples come from NumPy's Generator and log-densities from SciPy (or by
# hand in NumPy): an implementation independent of JAX, and free of the
# compile time that jax.random's rejection samplers cost on a small CPU.

N_SAMPLES = 200_000


def _mvn_sample(rng, loc, tril, n):
  z = rng.standard_normal((n, *loc.shape))
  return loc + np.einsum("...ij,n...j->n...i", tril, z)


def _mvn_logpdf(x, loc, tril):
  z = np.einsum("...ij,n...j->n...i", np.linalg.inv(tril), x - loc)
  log_det = np.sum(np.log(np.diagonal(tril, 0, -2, -1)), -1)
  return -0.5 * np.sum(z * z, -1) - log_det - 0.5 * D * math.log(2 * math.pi)


def _categorical_sample(rng, logits, n):
  gumbel = rng.gumbel(size=(n, *logits.shape))
  return np.argmax(logits + gumbel, -1)  # Gumbel-max trick


def _categorical_logpmf(k, logits):
  log_p = scipy.special.log_softmax(logits, -1)
  log_p = np.broadcast_to(log_p, k.shape + log_p.shape[-1:])
  return np.take_along_axis(log_p, k[..., None], -1)[..., 0]


def _dirichlet_sample(rng, alpha, n):
  return np.stack([rng.dirichlet(a, size=n) for a in alpha], 1)


def _dirichlet_logpdf(x, alpha):
  gammaln = scipy.special.gammaln
  norm = np.sum(gammaln(alpha), -1) - gammaln(np.sum(alpha, -1))
  return np.sum((alpha - 1) * np.log(x), -1) - norm


def _bernoulli_logpmf(x, logits):
  return -np.logaddexp(0.0, np.where(x, -logits, logits))


# family -> (sample(rng, P's params, n), logpdf(x, params))
MONTE_CARLO = {
  "normal": (
    lambda g, l, s, n: g.normal(l, s, (n, *l.shape)),
    scipy.stats.norm.logpdf,
  ),
  "exponential": (
    lambda g, r, n: g.exponential(1 / r, (n, *r.shape)),
    lambda x, r: scipy.stats.expon.logpdf(x, scale=1 / r),
  ),
  "gamma": (
    lambda g, c, r, n: g.gamma(c, 1 / r, (n, *c.shape)),
    lambda x, c, r: scipy.stats.gamma.logpdf(x, c, scale=1 / r),
  ),
  "beta": (lambda g, a, b, n: g.beta(a, b, (n, *a.shape)), scipy.stats.beta.logpdf),
  "laplace": (
    lambda g, l, s, n: g.laplace(l, s, (n, *l.shape)),
    scipy.stats.laplace.logpdf,
  ),
  "poisson": (lambda g, r, n: g.poisson(r, (n, *r.shape)), scipy.stats.poisson.logpmf),
  "bernoulli": (
    lambda g, a, n: g.random((n, *a.shape)) < scipy.special.expit(a),
    _bernoulli_logpmf,
  ),
  "bernoulli_probs": (
    lambda g, p, n: g.random((n, *p.shape)) < p,
    lambda x, p: np.where(x, np.log(p), np.log1p(-p)),
  ),
  "categorical": (_categorical_sample, _categorical_logpmf),
  "dirichlet": (_dirichlet_sample, _dirichlet_logpdf),
  "mvn_diag": (
    lambda g, l, s, n: g.normal(l, s, (n, *l.shape)),
    lambda x, l, s: np.sum(scipy.stats.norm.logpdf(x, l, s), -1),
  ),
  "mvn_tril": (_mvn_sample, _mvn_logpdf),
  "mvn_cov": (
    lambda g, l, c, n: _mvn_sample(g, l, np.linalg.cholesky(c), n),
    lambda x, l, c: _mvn_logpdf(x, l, np.linalg.cholesky(c)),
  ),
}


@pytest.mark.parametrize("family", list(MONTE_CARLO))
def test_matches_monte_carlo(x64, family):
  """|MC mean - KL| < 5 standard errors.

  By the central limit theorem a correct KL fails this with probability
  about 6e-7 per batch entry (two-sided normal tail beyond 5 sigma); the
  seeds are fixed, so the test is deterministic.
  """
  n_args = 2 * len(FAMILIES[family][1])
  params = make_params(family, [(3,)] * n_args, seed=100 + len(family))
  half = n_args // 2
  sample, logpdf = MONTE_CARLO[family]
  x = sample(np.random.default_rng(len(family)), *params[:half], N_SAMPLES)
  log_ratio = logpdf(x, *params[:half]) - logpdf(x, *params[half:])
  estimate = np.mean(log_ratio, 0)
  stderr = np.std(log_ratio, 0) / math.sqrt(N_SAMPLES)
  got = np.asarray(FAMILIES[family][0](*params))
  assert np.all(np.isfinite(estimate)) and np.all(stderr > 0)
  assert np.all(np.abs(estimate - got) < 5 * stderr), (estimate, got, stderr)


# ----------------------------------------------------------------------------
# KL(P || P) = 0, gradients.


@pytest.mark.parametrize("family", list(FAMILIES))
def test_self_divergence_is_zero(x64, family):
  n_args = 2 * len(FAMILIES[family][1])
  params = make_params(family, [(4,)] * n_args, seed=7)[: n_args // 2]
  got = FAMILIES[family][0](*params, *params)
  np.testing.assert_allclose(got, np.zeros(4), atol=1e-14)
  assert np.all(got >= -1e-15)


@pytest.mark.parametrize(
  "family,order",
  [("normal", 2), ("bernoulli", 1), ("gamma", 1), ("categorical", 1), ("mvn_tril", 1)],
)
def test_gradients_match_finite_differences(x64, family, order):
  n_args = 2 * len(FAMILIES[family][1])
  params = make_params(family, [(2,)] * n_args, seed=11)
  fn = FAMILIES[family][0]
  check_grads(
    lambda *a: jnp.sum(fn(*a)), params, order=order, modes=("fwd", "rev"), eps=1e-5
  )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_match_torch_autograd(x64, family):
  """Gradients of the rearranged formulas equal torch's (float64 autograd of
  the textbook formulas, accurate at these moderate parameters)."""
  n_args = 2 * len(FAMILIES[family][1])
  params = make_params(family, [(2,)] * n_args, seed=21)
  if family == "mvn_cov":
    return  # torch differentiates through its own Cholesky; see mvn_tril
  got = jax.grad(
    lambda *a: jnp.sum(FAMILIES[family][0](*a)), argnums=tuple(range(n_args))
  )(*params)
  tensors = [T(p).requires_grad_() for p in broadcast_params(family, params)]
  make = FAMILIES[family][2]
  half = n_args // 2
  td.kl_divergence(make(*tensors[:half]), make(*tensors[half:])).sum().backward()
  for g, tensor in zip(got, tensors, strict=False):
    want = tensor.grad.numpy()
    if family == "mvn_tril" and want.ndim == 3:
      want = np.tril(want)  # jaxkl reads only the lower triangle
    np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", ["gamma", "categorical", "mvn_tril"])
def test_gradient_vanishes_at_p_equals_q(x64, family):
  n_args = 2 * len(FAMILIES[family][1])
  p = make_params(family, [(3,)] * n_args, seed=5)[: n_args // 2]
  fn = FAMILIES[family][0]
  grads = jax.grad(lambda *q: jnp.sum(fn(*p, *q)), argnums=tuple(range(len(p))))(*p)
  for g in grads:
    np.testing.assert_allclose(g, np.zeros_like(g), atol=1e-12)


# ----------------------------------------------------------------------------
# Accuracy where the textbook formula cancels.


def test_nearly_equal_parameters_keep_relative_accuracy(x64):
  mpmath.mp.dps = 50
  sigma = 1 + 1e-7
  # KL(N(0, 1) || N(0, sigma^2)): the textbook formula loses ~9 digits here.
  want = float(mpmath.log(sigma) + 1 / (2 * mpmath.mpf(sigma) ** 2) - 0.5)
  np.testing.assert_allclose(jaxkl.kl_normal(0.0, 1.0, 0.0, sigma), want, rtol=1e-7)
  np.testing.assert_allclose(
    jaxkl.kl_multivariate_normal(
      jnp.zeros(2), jnp.eye(2), jnp.zeros(2), sigma * jnp.eye(2)
    ),
    2 * want,
    rtol=1e-7,
  )
  rate = mpmath.mpf(1 + 1e-7)
  want = float(mpmath.log(1 / rate) + rate - 1)
  np.testing.assert_allclose(jaxkl.kl_exponential(1.0, 1 + 1e-7), want, rtol=1e-7)
  np.testing.assert_allclose(
    jaxkl.kl_gamma(3.0, 1.0, 3.0, 1 + 1e-7), 3 * want, rtol=1e-7
  )


# ----------------------------------------------------------------------------
# Edge cases.

EXTREME_LOGITS = [-inf, -1e30, -800.0, -40.0, -1e-3, 0.0, 2.5, 40.0, 800.0, 1e30, inf]


def _mp_bernoulli_kl(a, b):
  """50-digit KL between Bernoulli(sigmoid(a)) and Bernoulli(sigmoid(b)).

  The library's zero-mass rule: an outcome whose probability is 0 in float64
  (below the smallest normal number: XLA flushes subnormals) contributes 0,
  whatever Q gives it.
  """

  def log_sigmoid(x):
    if x == inf:
      return mpmath.mpf(0)
    if x == -inf:
      return mpmath.mpf("-inf")
    x = mpmath.mpf(x)
    return -mpmath.log1p(mpmath.exp(-x)) if x > 0 else x - mpmath.log1p(mpmath.exp(x))

  total = mpmath.mpf(0)
  for la, lb in ((log_sigmoid(a), log_sigmoid(b)), (log_sigmoid(-a), log_sigmoid(-b))):
    if la == -inf or mpmath.exp(la) < np.finfo(np.float64).tiny:
      continue  # zero probability under P: contributes 0
    total += mpmath.exp(la) * (la - lb)
  return float(total)


def test_bernoulli_extreme_logits(x64):
  mpmath.mp.dps = 50
  a, b = np.meshgrid(EXTREME_LOGITS, EXTREME_LOGITS, indexing="ij")
  want = np.vectorize(_mp_bernoulli_kl)(a, b)
  got = np.asarray(jaxkl.kl_bernoulli(a, b))
  assert not np.any(np.isnan(got))
  # Absolute accuracy ~eps where P ~ Q (the two terms cancel there).
  np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
  # Infinities exactly where a point mass of Q misses P's support.
  assert np.array_equal(np.isinf(got), np.isinf(want))
  # Gradients finite for every finite pair, and wherever the value is finite.
  grads = jax.grad(lambda x, y: jnp.sum(jaxkl.kl_bernoulli(x, y)), argnums=(0, 1))(
    jnp.asarray(a), jnp.asarray(b)
  )
  finite = np.isfinite(a) & np.isfinite(b)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)[finite]))
  # float32: no NaN either, infinities in the same places.
  got32 = np.asarray(jaxkl.kl_bernoulli(a.astype(np.float32), b.astype(np.float32)))
  assert not np.any(np.isnan(got32))
  assert np.array_equal(np.isinf(got32), np.isinf(want))


def test_bernoulli_probs_boundaries():
  p = jnp.array([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.25])
  q = jnp.array([0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.25])
  got = jaxkl.kl_bernoulli_probs(p, q)
  np.testing.assert_allclose(got, [0, inf, inf, 0, math.log(2), math.log(2), 0])
  # Gradients are finite wherever the value is (point masses included).
  finite = np.isfinite(np.asarray(got))
  grads = jax.grad(
    lambda x, y: jnp.sum(jaxkl.kl_bernoulli_probs(x, y)), argnums=(0, 1)
  )(p[finite], q[finite])
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_categorical_with_minus_inf_logits(x64):
  logits_p = jnp.array([[-inf, 0.0, 1.0, -inf], [-inf, 0.0, 1.0, 2.0]])
  logits_q = jnp.array([[-inf, 3.0, -1.0, 0.5], [0.0, 0.0, -inf, 0.0]])
  got = jaxkl.kl_categorical(logits_p, logits_q)
  p = np.exp(np.asarray(jax.nn.log_softmax(logits_p[0, 1:3])))
  q = np.exp(np.asarray(jax.nn.log_softmax(logits_q[0])))[1:3]
  np.testing.assert_allclose(got[0], np.sum(p * np.log(p / q)), rtol=1e-13)
  assert got[1] == inf  # p > 0 where q = 0
  # Torch agrees (it also special-cases zero probabilities).
  want = td.kl_divergence(
    td.Categorical(logits=T(logits_p)), td.Categorical(logits=T(logits_q))
  ).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # Gradients are finite where the value is, and 0 on the impossible
  # classes of P.
  g_p, g_q = jax.grad(jaxkl.kl_categorical, argnums=(0, 1))(logits_p[0], logits_q[0])
  assert np.all(np.isfinite(g_p)) and np.all(np.isfinite(g_q))
  assert g_p[0] == 0 and g_p[3] == 0 and g_q[0] == 0
  # KL(P || P) = 0 with -inf logits; point masses.
  assert jaxkl.kl_categorical(logits_p, logits_p).tolist() == [0.0, 0.0]
  one_hot = jnp.array([-inf, 0.0, -inf])
  np.testing.assert_allclose(
    jaxkl.kl_categorical(one_hot, jnp.zeros(3)), math.log(3), rtol=1e-15
  )


def test_categorical_extreme_finite_logits(x64):
  logits_p = jnp.array([1e30, 0.0, -1e30])
  logits_q = jnp.array([0.0, 1e30, 0.0])
  # P is a point mass on class 0, where log q = -1e30.
  np.testing.assert_allclose(jaxkl.kl_categorical(logits_p, logits_q), 1e30, rtol=1e-15)
  got32 = jaxkl.kl_categorical(
    logits_p.astype(jnp.float32), jnp.array([0.0, 80.0, 0.0], jnp.float32)
  )
  np.testing.assert_allclose(got32, 80.0, rtol=1e-6)
  # exp(-800) is 0 in float64: the class has zero mass under P (the
  # library-wide rule; torch.distributions, TFP and distrax agree).
  assert jaxkl.kl_categorical(jnp.array([0.0, -800.0]), jnp.array([0.0, -inf])) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16])
def test_zero_mass_rule(dtype):
  """A class whose probability underflows to 0 contributes 0 (zero gradient).

  Checked against torch.distributions (which returns 0 as well) and across
  the from-logits path; positive mass where Q has none gives +inf.
  """
  with jax.enable_x64(dtype == np.float64):
    cutoff = -1000.0 if dtype == np.float64 else -200.0
    logits_p = jnp.array([[0.0, cutoff], [0.0, -1.0]], dtype)
    logits_q = jnp.array([[0.0, -inf], [0.0, -inf]], dtype)
    got = jaxkl.kl_categorical(logits_p, logits_q)
    assert got.dtype == dtype
    assert np.asarray(got, np.float64).tolist() == [0.0, inf]
    # torch in the computation dtype (float32 for bfloat16).
    compute = np.float64 if dtype == np.float64 else np.float32

    def as_torch(x):
      return torch.as_tensor(np.array(x, compute))

    want = td.kl_divergence(
      td.Categorical(logits=as_torch(logits_p)),
      td.Categorical(logits=as_torch(logits_q)),
    ).numpy()
    assert want.tolist() == [0.0, inf]
    np.testing.assert_array_equal(
      np.asarray(jaxkl.kl_divergence_from_logits(logits_q[0], logits_p[0]), np.float64),
      0.0,
    )
    grads = jax.grad(
      lambda a, b: jaxkl.kl_categorical(a, b).astype(jnp.float32), argnums=(0, 1)
    )(logits_p[0], logits_q[0])
    for g in grads:
      assert np.all(np.asarray(g, np.float64) == 0)
    # Bernoulli: a logit whose sigmoid underflows is a point mass.
    np.testing.assert_array_equal(
      np.asarray(
        jaxkl.kl_bernoulli(jnp.asarray(cutoff, dtype), jnp.asarray(-inf, dtype)),
        np.float64,
      ),
      0.0,
    )
    assert (
      np.asarray(jaxkl.kl_bernoulli(jnp.asarray(-1.0, dtype), jnp.asarray(-inf, dtype)))
      == inf
    )


def test_categorical_axis(x64):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 4, 5))
  np.testing.assert_allclose(
    jaxkl.kl_categorical(a, b, axis=0), jaxkl.kl_categorical(a.T, b.T), rtol=1e-15
  )


def test_poisson_zero_rates():
  got = jaxkl.kl_poisson(
    jnp.array([0.0, 0.0, 2.0, 0.0]), jnp.array([2.5, 1e-30, 0.0, 0.0])
  )
  np.testing.assert_allclose(got, [2.5, 1e-30, inf, 0.0])
  g_p, g_q = jax.grad(lambda p, q: jaxkl.kl_poisson(p, q), argnums=(0, 1))(0.0, 2.5)
  # d/dp of p log(p/q) is taken as 0 at p = 0 (rel_entr's convention).
  assert g_p == -1.0 and g_q == 1.0
  g_p, g_q = jax.grad(lambda p, q: jaxkl.kl_poisson(p, q), argnums=(0, 1))(0.0, 0.0)
  assert g_p == -1.0 and g_q == 1.0


def test_multivariate_normal_reads_the_lower_triangle(x64):
  params = make_params("mvn_tril", [(2,)] * 4, seed=3)
  noisy = list(params)
  for i in (1, 3):
    noisy[i] = params[i] + np.triu(np.full((D, D), 7.0), 1)
  np.testing.assert_allclose(
    jaxkl.kl_multivariate_normal(*noisy),
    jaxkl.kl_multivariate_normal(*params),
    rtol=1e-15,
  )
  # A negative diagonal (a column's sign flipped) leaves the covariance.
  flipped = params[1] * np.array([1.0, -1.0, 1.0])
  np.testing.assert_allclose(
    jaxkl.kl_multivariate_normal(params[0], flipped, *params[2:]),
    jaxkl.kl_multivariate_normal(*params),
    rtol=1e-12,
  )


def test_covariance_and_scale_tril_agree(x64):
  params = make_params("mvn_tril", [(3,)] * 4, seed=4)
  loc_p, tril_p, loc_q, tril_q = params
  cov_p = tril_p @ np.swapaxes(tril_p, -1, -2)
  cov_q = tril_q @ np.swapaxes(tril_q, -1, -2)
  np.testing.assert_allclose(
    jaxkl.kl_multivariate_normal_from_covariance(loc_p, cov_p, loc_q, cov_q),
    jaxkl.kl_multivariate_normal(*params),
    rtol=1e-12,
  )
  # Diagonal factors give the diagonal family.
  s_p, s_q = np.diagonal(tril_p, 0, -2, -1), np.diagonal(tril_q, 0, -2, -1)
  np.testing.assert_allclose(
    jaxkl.kl_multivariate_normal(
      loc_p, s_p[..., None] * np.eye(D), loc_q, s_q[..., None] * np.eye(D)
    ),
    jaxkl.kl_multivariate_normal_diag(loc_p, s_p, loc_q, s_q),
    rtol=1e-13,
  )


def test_beta_is_two_component_dirichlet(x64):
  a_p, b_p, a_q, b_q = make_params("beta", [(5,)] * 4, seed=9)
  np.testing.assert_allclose(
    jaxkl.kl_beta(a_p, b_p, a_q, b_q),
    jaxkl.kl_dirichlet(np.stack([a_p, b_p], -1), np.stack([a_q, b_q], -1)),
    rtol=1e-11,
  )


# ----------------------------------------------------------------------------
# Transformations and dtypes.


def test_jit_and_vmap():
  params = [
    jnp.asarray(p, jnp.float32) for p in make_params("mvn_tril", [(4,)] * 4, seed=2)
  ]
  eager = jaxkl.kl_multivariate_normal(*params)
  np.testing.assert_allclose(
    jax.jit(jax.vmap(jaxkl.kl_multivariate_normal))(*params), eager, rtol=1e-5
  )
  logits = jax.random.normal(jax.random.key(0), (2, 6, 5))
  by_row = jax.vmap(jax.jit(jaxkl.kl_categorical))(logits[0], logits[1])
  np.testing.assert_allclose(by_row, jaxkl.kl_categorical(*logits), rtol=1e-6)
  # vmap over Q only, P fixed (in_axes=None broadcasts).
  kl = jax.vmap(jaxkl.kl_gamma, in_axes=(None, None, 0, 0))(
    2.0, 1.0, jnp.arange(1.0, 4.0), jnp.ones(3)
  )
  np.testing.assert_allclose(
    kl, jaxkl.kl_gamma(2.0, 1.0, jnp.arange(1.0, 4.0), 1.0), rtol=1e-6
  )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("family", ["gamma", "bernoulli", "mvn_tril"])
def test_16_bit_inputs(family, dtype):
  n_args = 2 * len(FAMILIES[family][1])
  params = make_params(family, [(3,)] * n_args, seed=1)
  fn = FAMILIES[family][0]
  got = fn(*[jnp.asarray(p, dtype) for p in params])
  assert got.dtype == dtype
  # Reference: the same rounded inputs in float32.
  want = fn(*[jnp.asarray(p, dtype).astype(jnp.float32) for p in params])
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)


# ----------------------------------------------------------------------------
# Bad inputs.


def test_non_floating_inputs_raise_type_error():
  with pytest.raises(TypeError, match=r"`scale_q`.*int32"):
    jaxkl.kl_normal(0.0, 1.0, 0.0, jnp.array([1, 2]))
  with pytest.raises(TypeError, match=r"`logits_p`.*bool"):
    jaxkl.kl_bernoulli(jnp.array([True]), jnp.array([0.0]))
  with pytest.raises(TypeError, match="`concentration_q`"):
    jaxkl.kl_dirichlet(jnp.ones(3), jnp.ones(3, jnp.int32))
  with pytest.raises(TypeError, match=r"`rate_p`.*complex"):
    jaxkl.kl_poisson(jnp.ones(2, jnp.complex64), jnp.ones(2))
  with pytest.raises(TypeError, match="`axis` must be an int"):
    jaxkl.kl_categorical(jnp.zeros(3), jnp.zeros(3), axis=(0,))


def test_shape_errors():
  with pytest.raises(ValueError, match=r"`loc_p`: \(2,\), `scale_p`: \(3,\)"):
    jaxkl.kl_normal(jnp.zeros(2), jnp.ones(3), 0.0, 1.0)
  with pytest.raises(
    ValueError,
    match=r"`loc_p` has shape \(3,\).*`scale_tril_q` has "
    r"shape \(2, 2\)",
  ):
    jaxkl.kl_multivariate_normal(jnp.zeros(3), jnp.eye(3), jnp.zeros(3), jnp.eye(2))
  with pytest.raises(
    ValueError,
    match=r"`scale_tril_p` must have shape "
    r"\[\.\.\., d, d\]; got shape \(3, 2\)",
  ):
    jaxkl.kl_multivariate_normal(
      jnp.zeros(3), jnp.ones((3, 2)), jnp.zeros(3), jnp.eye(3)
    )
  with pytest.raises(ValueError, match=r"`loc_q` must have shape \[\.\.\., d\]"):
    jaxkl.kl_multivariate_normal_diag(jnp.zeros(3), jnp.ones(3), 0.0, jnp.ones(3))
  with pytest.raises(ValueError, match="batch shapes"):
    jaxkl.kl_multivariate_normal(
      jnp.zeros((2, 3)), jnp.eye(3), jnp.zeros((4, 3)), jnp.eye(3)
    )
  with pytest.raises(ValueError, match=r"`concentration_q` has shape \(1,\)"):
    jaxkl.kl_dirichlet(jnp.ones(3), jnp.ones(1))
  with pytest.raises(ValueError, match="`logits_q` has shape"):
    jaxkl.kl_categorical(jnp.zeros((2, 4)), jnp.zeros(3))
  with pytest.raises(ValueError, match="out of range for `logits_p`"):
    jaxkl.kl_categorical(jnp.zeros(()), jnp.zeros(()))
  with pytest.raises(ValueError, match=r"`cov_q` must have shape"):
    jaxkl.kl_multivariate_normal_from_covariance(
      jnp.zeros(2), jnp.eye(2), jnp.zeros(2), jnp.ones(2)
    )
