"""Accuracy of the 13 closed forms against 50-digit mpmath references.

The references are computed from the *rounded* parameters actually passed
(float32 or float64), so they measure the error of jaxkl's evaluation alone.
Each family is checked on a deterministic grid spanning parameters from 1e-3
to 1e8, with pairs that are equal, nearly equal (relative differences 1e-7 to
1e-1) and far apart, in float32 and float64; Gamma and Beta also on the full
product grid ``PRODUCT_VALUES ** 4`` (one call per family and dtype). The bounds asserted are the ones
documented in ``jaxkl/_closed_forms/``'s module docstring:

* float64: ``|got - want| <= 1e-11 * want`` (no absolute floor; measured
  at most 6e-13),
* float32: ``|got - want| <= 1e-4 * want`` (measured at most 3e-5), except
  Beta and Dirichlet: ``1e-3 * want`` (measured 1.8e-4, where a component of
  concentration 1e-3 sits next to one of order 1 and only the latter changes),

and every value is finite and non-negative (exactly 0 for P = Q).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import jaxkl

mp = mpmath.mp
DPS = 50

BOUNDS = {np.float32: 1e-4, np.float64: 1e-11}
LOOSER_FLOAT32 = {"beta": 1e-3, "beta_product": 1e-3, "dirichlet": 1e-3}
DTYPES = [np.float32, np.float64]

SCALES = [1e-3, 0.1, 1.0, 30.0, 1e4, 1e8]
RELATIVE = [0.0, 1e-7, -3e-6, 1e-4, -1e-2, 0.1]
FAR = [3.0, 1e-3 / 7, 1e3 + 0.5]


def _pairs(values=SCALES, relative=RELATIVE, far=FAR):
  """(p, q) pairs: q = p (1 + r) for the near ones, q = p f for the far."""
  out = []
  for v in values:
    out += [(v, v * (1 + r)) for r in relative]
    out += [(v, v * f) for f in far]
  return out


def _mpf(x):
  return mpmath.mpf(float(x))


# ----------------------------------------------------------------------------
# References (mpmath, from the rounded parameters).


def _ref_normal(mu_p, s_p, mu_q, s_q):
  mu_p, s_p, mu_q, s_q = map(_mpf, (mu_p, s_p, mu_q, s_q))
  return (
    mpmath.log(s_q / s_p)
    + (s_p**2 + (mu_p - mu_q) ** 2) / (2 * s_q**2)
    - mpmath.mpf(1) / 2
  )


def _ref_exponential(r_p, r_q):
  r_p, r_q = _mpf(r_p), _mpf(r_q)
  return mpmath.log(r_p / r_q) + r_q / r_p - 1


def _ref_poisson(r_p, r_q):
  r_p, r_q = _mpf(r_p), _mpf(r_q)
  return r_p * mpmath.log(r_p / r_q) - r_p + r_q


def _ref_laplace(mu_p, b_p, mu_q, b_q):
  mu_p, b_p, mu_q, b_q = map(_mpf, (mu_p, b_p, mu_q, b_q))
  delta = abs(mu_p - mu_q)
  return mpmath.log(b_q / b_p) + delta / b_q + b_p / b_q * mpmath.exp(-delta / b_p) - 1


def _ref_gamma(a_p, r_p, a_q, r_q):
  a_p, r_p, a_q, r_q = map(_mpf, (a_p, r_p, a_q, r_q))
  return (
    (a_p - a_q) * mpmath.digamma(a_p)
    - mpmath.loggamma(a_p)
    + mpmath.loggamma(a_q)
    + a_q * (mpmath.log(r_p) - mpmath.log(r_q))
    + a_p * (r_q - r_p) / r_p
  )


def _ref_dirichlet(alpha_p, alpha_q):
  a = [_mpf(x) for x in alpha_p]
  b = [_mpf(x) for x in alpha_q]
  a0, b0 = sum(a), sum(b)
  value = mpmath.loggamma(a0) - mpmath.loggamma(b0)
  for ak, bk in zip(a, b, strict=False):
    value += (
      mpmath.loggamma(bk)
      - mpmath.loggamma(ak)
      + (ak - bk) * (mpmath.digamma(ak) - mpmath.digamma(a0))
    )
  return value


def _ref_beta(a_p, b_p, a_q, b_q):
  return _ref_dirichlet([a_p, b_p], [a_q, b_q])


def _ref_categorical(logits_p, logits_q):
  def log_softmax(logits):
    xs = [_mpf(x) for x in logits]
    top = max(xs)
    lse = top + mpmath.log(sum(mpmath.exp(x - top) for x in xs))
    return [x - lse for x in xs]

  lp, lq = log_softmax(logits_p), log_softmax(logits_q)
  return sum(mpmath.exp(a) * (a - b) for a, b in zip(lp, lq, strict=False))


def _ref_bernoulli(a, b):
  return _ref_categorical([a, 0.0], [b, 0.0])


def _ref_bernoulli_probs(p, q):
  p, q = _mpf(p), _mpf(q)
  value = mpmath.mpf(0)
  if p > 0:
    value += p * mpmath.log(p / q)
  if p < 1:
    value += (1 - p) * mpmath.log((1 - p) / (1 - q))
  return value


def _ref_mvn(loc_p, cov_p, loc_q, cov_q):
  """From covariances (mpmath matrices of the rounded entries)."""
  d = len(loc_p)
  sp, sq = mpmath.matrix(cov_p), mpmath.matrix(cov_q)
  delta = mpmath.matrix([_mpf(a) - _mpf(b) for a, b in zip(loc_p, loc_q, strict=False)])
  sq_inv = sq**-1
  trace = sum((sq_inv * sp)[i, i] for i in range(d))
  maha = (delta.T * sq_inv * delta)[0, 0]
  return (
    trace + maha - d + mpmath.log(mpmath.det(sq)) - mpmath.log(mpmath.det(sp))
  ) / 2


def _mp_cov_from_tril(tril):
  t = mpmath.matrix([[_mpf(x) for x in row] for row in tril])
  return t * t.T


def _ref_mvn_tril(loc_p, tril_p, loc_q, tril_q):
  return _ref_mvn(loc_p, _mp_cov_from_tril(tril_p), loc_q, _mp_cov_from_tril(tril_q))


def _ref_mvn_cov(loc_p, cov_p, loc_q, cov_q):
  def as_mp(c):
    return mpmath.matrix([[_mpf(x) for x in row] for row in c])

  return _ref_mvn(loc_p, as_mp(cov_p), loc_q, as_mp(cov_q))


def _ref_mvn_diag(loc_p, s_p, loc_q, s_q):
  return sum(_ref_normal(*args) for args in zip(loc_p, s_p, loc_q, s_q, strict=False))


# ----------------------------------------------------------------------------
# Grids: lists of parameter tuples (P's then Q's), as float64 values that are
# rounded to the dtype under test before use.


def _grid_normal():
  out = []
  for s_p, s_q in _pairs():
    for mu_p, mu_q in [(0.0, 0.0), (1.0, 1.0 + 1e-6), (-3e3, 2.5)]:
      out.append((mu_p * s_p, s_p, mu_q * s_p, s_q))
  return out


def _grid_two(values=SCALES):
  return [(p, q) for p, q in _pairs(values)]


def _grid_gamma():
  out = []
  for a_p, a_q in _pairs():
    for r_p in [1e-3, 1.0, 1e8]:
      for rel in [0.0, 1e-7, 1e-4, -0.1, 5.0]:
        out.append((a_p, r_p, a_q, r_p * (1 + rel)))
  # The same relative change of shape and rate (w = 0 up to rounding).
  for a in SCALES:
    for rel in RELATIVE[1:]:
      out.append((a, 2.0, a * (1 + rel), 2.0 * (1 + rel)))
  return out


def _grid_beta():
  out = []
  for a_p, a_q in _pairs(relative=RELATIVE, far=[3.0]):
    for b_p in [1e-3, 1.0, 1e4, 1e8]:
      for rel in [0.0, -3e-6, 0.1]:
        out.append((a_p, b_p, a_q, b_p * (1 + rel)))
  return out


# Every combination of these values for the four parameters (far-apart pairs
# with huge and tiny parameters, where rearrangements made for near-equal
# pairs would overflow or cancel).
PRODUCT_VALUES = [1e-3, 0.05, 1.0, 30.0, 1e3, 1e5, 1e8]


def _grid_product():
  return list(itertools.product(PRODUCT_VALUES, repeat=4))


def _grid_dirichlet():
  out = []
  # Far-apart three-component pairs with extreme concentrations.
  extremes = [[1e8, 1.0, 1.0], [1e-3, 1e5, 1.0], [1e5, 1e-3, 1e8], [1e-3, 30.0, 0.05]]
  for a, b in itertools.product([*extremes, [1.0, 1.0, 1.0], [1e-3] * 3], repeat=2):
    out.append((np.array(a), np.array(b)))
  bases = [
    [1.0, 1.0, 1.0],
    [1e-3, 0.5, 30.0],
    [1e6] * 3,
    [1e8, 1e-3, 7.0],
    [1e4, 1e4, 2e4],
  ]
  for base in bases:
    base = np.array(base)
    for rel in RELATIVE:
      out.append((base, base * np.array([1.0, 1.0, 1 + rel])))
      out.append((base, base * (1 + rel)))
    out.append((base, base[::-1].copy()))
  return out


def _grid_laplace():
  out = []
  for b_p, b_q in _pairs():
    for mu_p, mu_q in [(0.0, 0.0), (1.0, 1.0 + 1e-6), (2.0, -5e3)]:
      out.append((mu_p * b_p, b_p, mu_q * b_p, b_q))
  return out


def _grid_logits():
  out = []
  for a in [-30.0, -3.0, 0.0, 1e-3, 2.0, 25.0]:
    for rel in [0.0, 1e-7, -1e-4, 1e-2, 0.5]:
      out.append((a, a + rel * (1 + abs(a))))
    out.append((a, -a + 1.0))
  return out


def _grid_probs():
  out = []
  for p in [1e-6, 1e-3, 0.3, 0.5, 0.9, 1 - 1e-4]:
    for rel in [0.0, 1e-7, -1e-4, 1e-2, -0.5]:
      out.append((p, p + rel * min(p, 1 - p)))
    out.append((p, 1 - p))
  return out


def _grid_categorical():
  out = []
  base = np.array([0.0, -1.0, 2.0, 0.5])
  for scale in [1e-3, 1.0, 10.0]:
    for rel in [0.0, 1e-7, 1e-4, 1e-2, 0.3]:
      out.append((base * scale, base * scale + rel * np.array([1, -2, 0, 3])))
  out.append((np.array([30.0, 0.0, -30.0, 1.0]), np.array([30.0, 1e-5, -30.0, 1.0])))
  out.append(
    (
      np.array([1e3, 1e3 + 1, 1e3 - 2, 1e3]),
      np.array([1e3, 1e3 + 1, 1e3 - 2 + 1e-3, 1e3]),
    )
  )
  out.append((np.array([0.0, 5.0, -1.0, 0.0]), np.array([40.0, -40.0, 0.0, 3.0])))
  return out


def _grid_mvn(kind):
  """Cholesky factors / covariances of near-equal and far Gaussians (d=2)."""
  out = []
  tril = np.array([[1.5, 0.0], [0.4, 0.7]])
  for scale in [1e-3, 1.0, 1e4]:
    for rel in [0.0, 1e-7, -1e-5, 1e-3, 0.1, 2.0]:
      t_p = tril * scale
      t_q = t_p * np.array([[1.0, 0.0], [1 + rel, 1.0]])
      t_q = t_q + rel * scale * np.array([[0.5, 0.0], [0.0, -0.25]])
      for mu in [0.0, 1e-4]:
        loc_p = np.array([1.0, -2.0]) * scale
        loc_q = loc_p + mu * scale * np.array([1.0, 1.0])
        if kind == "tril":
          out.append((loc_p, t_p, loc_q, t_q))
        elif kind == "cov":
          out.append((loc_p, t_p @ t_p.T, loc_q, t_q @ t_q.T))
        else:
          out.append((loc_p, np.diagonal(t_p), loc_q, np.diagonal(t_q)))
  return out


FAMILIES = {
  "normal": (jaxkl.kl_normal, _ref_normal, _grid_normal),
  "exponential": (jaxkl.kl_exponential, _ref_exponential, _grid_two),
  "poisson": (jaxkl.kl_poisson, _ref_poisson, _grid_two),
  "gamma": (jaxkl.kl_gamma, _ref_gamma, _grid_gamma),
  "beta": (jaxkl.kl_beta, _ref_beta, _grid_beta),
  "gamma_product": (jaxkl.kl_gamma, _ref_gamma, _grid_product),
  "beta_product": (jaxkl.kl_beta, _ref_beta, _grid_product),
  "dirichlet": (jaxkl.kl_dirichlet, _ref_dirichlet, _grid_dirichlet),
  "laplace": (jaxkl.kl_laplace, _ref_laplace, _grid_laplace),
  "bernoulli": (jaxkl.kl_bernoulli, _ref_bernoulli, _grid_logits),
  "bernoulli_probs": (jaxkl.kl_bernoulli_probs, _ref_bernoulli_probs, _grid_probs),
  "categorical": (jaxkl.kl_categorical, _ref_categorical, _grid_categorical),
  "mvn_diag": (
    jaxkl.kl_multivariate_normal_diag,
    _ref_mvn_diag,
    lambda: _grid_mvn("diag"),
  ),
  "mvn_tril": (jaxkl.kl_multivariate_normal, _ref_mvn_tril, lambda: _grid_mvn("tril")),
  "mvn_cov": (
    jaxkl.kl_multivariate_normal_from_covariance,
    _ref_mvn_cov,
    lambda: _grid_mvn("cov"),
  ),
}


@functools.cache
def _cases(family, dtype):
  """(stacked rounded parameters, mpmath reference values as float64)."""
  _, ref, grid = FAMILIES[family]
  rows = grid()
  columns = list(zip(*rows, strict=False))
  stacked = [
    np.stack([np.asarray(x, np.float64) for x in col]).astype(dtype) for col in columns
  ]
  with mpmath.workdps(DPS):
    want = np.array(
      [float(ref(*[col[i] for col in stacked])) for i in range(len(rows))]
    )
  return stacked, want


def _check(family, dtype, got, want):
  rtol = BOUNDS[dtype]
  if dtype == np.float32:
    rtol = LOOSER_FLOAT32.get(family, rtol)
  got = np.asarray(got, np.float64)
  assert np.all(np.isfinite(got)), family
  assert np.all(got >= 0), (family, got[got < 0])
  err = np.abs(got - want)
  bad = err > rtol * want
  assert not np.any(bad), (
    family,
    np.flatnonzero(bad),
    got[bad],
    want[bad],
    (err / np.maximum(want, 1e-300))[bad],
  )


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_matches_mpmath(family, dtype):
  params, want = _cases(family, dtype)
  fn = FAMILIES[family][0]
  with jax.enable_x64(dtype == np.float64):
    got = fn(*[jnp.asarray(p) for p in params])
    assert got.dtype == dtype
  _check(family, dtype, got, want)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_self_divergence_is_exactly_zero(family):
  """KL(P || P) = 0 exactly over the whole grid, float32 and float64."""
  fn = FAMILIES[family][0]
  for dtype in DTYPES:
    params, _ = _cases(family, dtype)
    half = len(params) // 2
    with jax.enable_x64(dtype == np.float64):
      got = np.asarray(fn(*[jnp.asarray(p) for p in params[:half]] * 2))
    if family in ("mvn_tril", "mvn_cov"):
      assert np.all(got == 0) or np.max(np.abs(got)) < 1e-30, got
    else:
      assert np.all(got == 0), (family, dtype, got)


# ----------------------------------------------------------------------------
# Categorical with large, nearly equal logits (the precise evaluation must not
# fall back to the cancelling textbook sum when a class's p underflows).


def _categorical_rows(rng, n, scale, k=4):
  logits_p = (scale * rng.uniform(-1, 1, (n, k))).astype(np.float32)
  rel = 10.0 ** rng.uniform(-9, -2, (n, 1))
  change = rng.normal(size=(n, k)) * rel * np.abs(logits_p) * (rng.random((n, k)) < 0.5)
  logits_q = (logits_p + change).astype(np.float32)
  return logits_p, logits_q


def _check_categorical(logits_p, logits_q, got):
  got = np.asarray(got, np.float64)
  # Digits enough for values down to 1e-250 (the reference sum cancels).
  with mpmath.workdps(300):
    want = np.array(
      [float(_ref_categorical(a, b)) for a, b in zip(logits_p, logits_q, strict=True)]
    )
  assert np.all(got >= 0), got[got < 0]
  err = np.abs(got - want)
  # Values below float32's normal range underflow (flushed to 0).
  tiny = float(np.finfo(np.float32).tiny)
  assert np.all(err <= 1e-4 * want + tiny), (err / np.maximum(want, 1e-300)).max()


@settings(max_examples=40, deadline=None)
@given(
  seed=st.integers(0, 2**31 - 1),
  scale=st.sampled_from([1.0, 1e2, 1e3, 1e4]),
)
def test_categorical_large_near_equal_logits_property(seed, scale):
  """float32, one row at a time: >= 0 and within 1e-4 of mpmath."""
  logits_p, logits_q = _categorical_rows(np.random.default_rng(seed), 1, scale)
  got = jaxkl.kl_categorical(jnp.asarray(logits_p[0]), jnp.asarray(logits_q[0]))
  _check_categorical(logits_p, logits_q, got[None])


def test_categorical_large_near_equal_logits_batched():
  """The reported row, and 400 rows at logit scale 100 in one call, agree
  with mpmath (and the row alone equals the row in the batch)."""
  row_p = np.array([63.1, 49.6, -44.7, 35.8], np.float32)
  row_q = np.array([63.101, 49.6, -44.7, 35.8], np.float32)
  logits_p, logits_q = _categorical_rows(np.random.default_rng(0), 400, 100.0)
  logits_p = np.concatenate([row_p[None], logits_p])
  logits_q = np.concatenate([row_q[None], logits_q])
  got = jaxkl.kl_categorical(jnp.asarray(logits_p), jnp.asarray(logits_q))
  _check_categorical(logits_p, logits_q, got)
  alone = jaxkl.kl_categorical(jnp.asarray(row_p), jnp.asarray(row_q))
  np.testing.assert_allclose(float(alone), float(got[0]), rtol=1e-5)


# ----------------------------------------------------------------------------
# Degenerate multivariate normals (zero or subnormal scales).


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_degenerate_multivariate_normals(dtype):
  """A zero or subnormal diagonal of a Cholesky factor or covariance: 0
  against identical parameters (value and gradient), +inf against a proper
  normal, as kl_normal and kl_multivariate_normal_diag."""
  with jax.enable_x64(dtype == np.float64):
    for tiny in [0.0, 1e-40 if dtype == np.float32 else 1e-309]:
      scale = jnp.asarray([tiny, 1.0], dtype)
      low = jnp.diag(scale)
      eye = jnp.eye(2, dtype=dtype)
      z = jnp.zeros(2, dtype)
      tril = jaxkl.kl_multivariate_normal
      cov = jaxkl.kl_multivariate_normal_from_covariance
      assert float(jaxkl.kl_multivariate_normal_diag(z, scale, z, scale)) == 0
      assert float(tril(z, low, z, low)) == 0
      assert float(cov(z, low, z, low)) == 0
      grad = jax.grad(lambda m, lo=low, z=z, f=tril: f(z, m, z, lo))(low)
      assert np.all(np.asarray(grad) == 0)
      for fn in (tril, cov):
        assert float(fn(z, low, z, eye)) == np.inf
        assert float(fn(z, eye, z, low)) == np.inf
        assert float(fn(z, low, z + 1, low)) == np.inf
        assert np.isfinite(float(fn(z, eye, z + 1, 2 * eye)))
