"""Gaussian mixtures: ``jaxkl.GaussianMixture`` and ``kl_gaussian_mixture``.

References:

* the true divergence: ``mpmath.quad`` of :math:`p \\log(p/q)` (1-D, 30
  digits), ``scipy.integrate.quad`` (1-D, property test) and a 10**6-sample
  float64 Monte-Carlo estimate (2-D), allowed 4 standard errors;
* each deterministic method: the same formula evaluated in 50-digit mpmath
  from the rounded parameters (pairwise Gaussian divergences, product
  normalizers and entropies from covariance matrices, not from the Cholesky
  rearrangements the implementation uses);
* single components: ``jaxkl.kl_multivariate_normal``.
"""

import copy
import math
import pickle

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxkl
from jaxkl._closed_forms import mixture
from jaxkl._closed_forms.mixture import GaussianMixture
from jaxkl._closed_forms.mixture import kl_gaussian_mixture

DETERMINISTIC = ["variational", "lower", "upper", "upper_durrieu", "goldberger"]
UPPER = ["upper", "upper_durrieu"]


@jax.jit
def _all_methods(p, q):
  """Every deterministic method, compiled together (one compilation per
  shapes and dtype instead of five)."""
  return {method: kl_gaussian_mixture(p, q, method=method) for method in DETERMINISTIC}


def _tril(*entries):
  """A lower-triangular factor from its rows' entries (row-major)."""
  d = round((math.sqrt(8 * len(entries) + 1) - 1) / 2)
  out = np.zeros((d, d))
  out[np.tril_indices(d)] = entries
  return out


def _mix(logits, loc, tril, dtype=np.float64):
  return GaussianMixture(
    np.asarray(logits, dtype), np.asarray(loc, dtype), np.asarray(tril, dtype)
  )


def _uni(logits, loc, scale, dtype=np.float64):
  return GaussianMixture.univariate(
    np.asarray(loc, dtype), np.asarray(scale, dtype), logits=np.asarray(logits, dtype)
  )


# Named pairs (P, Q): 1-D and 2-D, different K on each side, overlapping and
# well separated, Q a single Gaussian.
def _cases():
  return {
    "1d_overlap_K2_M3": (
      _uni([0.0, 0.5], [-1.0, 1.0], [0.6, 0.8]),
      _uni([0.2, -0.3, 0.0], [-1.5, 0.2, 1.3], [1.0, 0.5, 0.7]),
    ),
    "1d_separated_K2_M3": (
      _uni([0.0, 0.3], [-10.0, 10.0], [1.0, 2.0]),
      _uni([0.0, 0.0, -1.0], [-9.0, 9.5, 0.0], [1.5, 1.5, 1.0]),
    ),
    "1d_bimodal_vs_single": (
      _uni([0.0, 0.0], [-1.0, 1.0], [0.5, 0.5]),
      _uni([0.0], [0.0], [1.0]),
    ),
    "2d_overlap_K3_M2": (
      _mix(
        [0.0, 0.4, -0.2],
        [[0.0, 0.0], [1.0, -0.5], [-1.0, 1.0]],
        [_tril(1.0, 0.3, 0.8), _tril(0.6, -0.2, 1.1), _tril(0.9, 0.0, 0.5)],
      ),
      _mix(
        [0.3, 0.0],
        [[0.5, 0.0], [-0.5, 0.5]],
        [_tril(1.2, 0.1, 1.0), _tril(0.7, 0.4, 0.9)],
      ),
    ),
    "2d_separated_K3_M2": (
      _mix(
        [0.0, 1.0, -0.5],
        [[-6.0, 0.0], [6.0, 1.0], [0.0, -6.0]],
        [_tril(1.0, 0.5, 1.0), _tril(0.5, 0.0, 0.5), _tril(0.8, -0.3, 0.6)],
      ),
      _mix(
        [0.0, 0.5],
        [[-5.0, 0.5], [6.5, 1.0]],
        [_tril(1.5, 0.0, 1.5), _tril(0.8, 0.2, 0.6)],
      ),
    ),
    "2d_mixture_vs_single": (
      _mix(
        [0.0, 0.0, 0.0],
        [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]],
        [_tril(0.7, 0.1, 0.7)] * 3,
      ),
      _mix([0.0], [[0.0, 0.5]], [_tril(2.0, 0.3, 2.0)]),
    ),
  }


CASES = list(_cases())  # four shape combinations (d, K, M): few compilations
CASES_1D = [name for name in CASES if name.startswith("1d")]


# ----------------------------------------------------------------------------
# mpmath references.

mp = mpmath.mp


def _mp_components(m):
  """(log weights, means, covariances) of a concrete mixture, in mpmath."""
  logits = np.asarray(m.logits, np.float64)
  loc = np.asarray(m.loc, np.float64)
  tril = np.tril(np.asarray(m.scale_tril, np.float64))
  top = max(mpmath.mpf(float(v)) for v in logits)
  norm = top + mpmath.log(sum(mpmath.exp(mpmath.mpf(float(v)) - top) for v in logits))
  log_w = [mpmath.mpf(float(v)) - norm for v in logits]
  means = [mpmath.matrix([mpmath.mpf(float(v)) for v in row]) for row in loc]
  covs = []
  for factor in tril:
    f = mpmath.matrix([[mpmath.mpf(float(v)) for v in row] for row in factor])
    covs.append(f * f.T)
  return log_w, means, covs


def _mp_kl(mu1, s1, mu2, s2):
  d = len(mu1)
  inv2 = s2**-1
  delta = mu1 - mu2
  trace = sum((inv2 * s1)[i, i] for i in range(d))
  quad = (delta.T * inv2 * delta)[0, 0]
  return (trace + quad - d + mpmath.log(mpmath.det(s2) / mpmath.det(s1))) / 2


def _mp_log_z_plus_entropy(mu1, s1, mu2, s2):
  """log N(mu1; mu2, s1 + s2) + H(N(mu1, s1))."""
  d = len(mu1)
  s = s1 + s2
  delta = mu1 - mu2
  log_z = (
    -(
      d * mpmath.log(2 * mpmath.pi)
      + mpmath.log(mpmath.det(s))
      + (delta.T * s**-1 * delta)[0, 0]
    )
    / 2
  )
  entropy = (d * mpmath.log(2 * mpmath.pi * mpmath.e) + mpmath.log(mpmath.det(s1))) / 2
  return log_z + entropy


def _mp_lse(values):
  values = list(values)
  top = max(values)
  return top + mpmath.log(sum(mpmath.exp(v - top) for v in values))


def _mp_method(p, q, method, iterations=mixture.UPPER_ITERATIONS):
  """The method's formula, 50 digits, from the rounded parameters."""
  with mpmath.workdps(50):
    lp, mp_, sp = _mp_components(p)
    lq, mq, sq = _mp_components(q)
    k, m = len(lp), len(lq)
    kl_pq = [[_mp_kl(mp_[a], sp[a], mq[b], sq[b]) for b in range(m)] for a in range(k)]
    kl_pp = [[_mp_kl(mp_[a], sp[a], mp_[c], sp[c]) for c in range(k)] for a in range(k)]
    if method == "goldberger":
      terms = [min(kl_pq[a][b] - lq[b] for b in range(m)) + lp[a] for a in range(k)]
    elif method == "upper":
      log_psi = [[lp[a] + lq[b] for b in range(m)] for a in range(k)]

      def phi_step(log_psi):
        out = []
        for a in range(k):
          row = [log_psi[a][b] - kl_pq[a][b] for b in range(m)]
          norm = _mp_lse(row)
          out.append([lp[a] + v - norm for v in row])
        return out

      def psi_step(log_phi):
        out = [[None] * m for _ in range(k)]
        for b in range(m):
          norm = _mp_lse(log_phi[a][b] for a in range(k))
          for a in range(k):
            out[a][b] = lq[b] + log_phi[a][b] - norm
        return out

      for _ in range(iterations):
        log_psi = psi_step(phi_step(log_psi))
      log_phi = phi_step(log_psi)
      log_psi = psi_step(log_phi)
      return max(
        sum(
          mpmath.exp(log_phi[a][b]) * (log_phi[a][b] - log_psi[a][b] + kl_pq[a][b])
          for a in range(k)
          for b in range(m)
        ),
        0,
      )
    else:
      if method in ("variational", "lower") or k == 1:
        self_t = [_mp_lse(lp[c] - kl_pp[a][c] for c in range(k)) for a in range(k)]
      else:
        self_t = [
          _mp_lse(
            lp[c] + _mp_log_z_plus_entropy(mp_[a], sp[a], mp_[c], sp[c])
            for c in range(k)
          )
          for a in range(k)
        ]
      if method in ("variational", "upper_durrieu") or m == 1:
        cross = [_mp_lse(lq[b] - kl_pq[a][b] for b in range(m)) for a in range(k)]
      else:
        cross = [
          _mp_lse(
            lq[b] + _mp_log_z_plus_entropy(mp_[a], sp[a], mq[b], sq[b])
            for b in range(m)
          )
          for a in range(k)
        ]
      terms = [self_t[a] - cross[a] for a in range(k)]
    return max(sum(mpmath.exp(lp[a]) * terms[a] for a in range(k)), 0)


def _mp_true_kl_1d(p, q):
  """int p log(p/q) by mpmath.quad (30 digits), split at the components."""
  with mpmath.workdps(30):
    lp, mp_, sp = _mp_components(p)
    lq, mq, sq = _mp_components(q)

    def log_density(x, log_w, means, covs):
      return _mp_lse(
        lw - (x - mu[0]) ** 2 / (2 * c[0, 0]) - mpmath.log(2 * mpmath.pi * c[0, 0]) / 2
        for lw, mu, c in zip(log_w, means, covs, strict=True)
      )

    def integrand(x):
      log_p = log_density(x, lp, mp_, sp)
      return mpmath.exp(log_p) * (log_p - log_density(x, lq, mq, sq))

    points = sorted({float(mu[0]) for mu in mp_ + mq})
    return float(mpmath.quad(integrand, [-mpmath.inf, *points, mpmath.inf]))


# ----------------------------------------------------------------------------
# Bounds against the true divergence.


@pytest.mark.parametrize(
  "name", ["1d_overlap_K2_M3", "2d_overlap_K3_M2", "2d_separated_K3_M2"]
)
def test_bounds_bracket_monte_carlo(x64, name):
  """lower <= MC + 4 SE and MC - 4 SE <= both upper bounds, with 10**6
  float64 samples (SE about 1e-3: the allowance is small against the gaps);
  the 1-D estimates also agree with mpmath.quad to 4 SE."""
  p, q = _cases()[name]
  est = kl_gaussian_mixture(
    p, q, method="monte_carlo", key=jax.random.key(7), num_samples=10**6
  )
  value, se = float(est.value), float(est.stderr)
  assert est.value.dtype == jnp.float64
  assert 0 < se < 1e-2
  values = _all_methods(p, q)
  assert float(values["lower"]) <= value + 4 * se
  for method in UPPER:
    assert value - 4 * se <= float(values[method]), method
  if name in CASES_1D:
    assert abs(value - _mp_true_kl_1d(p, q)) <= 4 * se


@pytest.mark.parametrize("name", CASES_1D)
def test_bounds_bracket_quadrature_1d(x64, name):
  """The bounds bracket the true divergence (mpmath.quad), to rounding."""
  p, q = _cases()[name]
  true = _mp_true_kl_1d(p, q)
  tol = 1e-12 * max(true, 1.0)
  values = _all_methods(p, q)
  assert float(values["lower"]) <= true + tol
  for method in UPPER:
    assert true <= float(values[method]) + tol, method


@settings(max_examples=20, deadline=None)
@given(
  st.integers(1, 3),
  st.integers(1, 3),
  st.lists(st.floats(-5, 5), min_size=6, max_size=6),
  st.lists(st.floats(0.2, 3.0), min_size=6, max_size=6),
  st.lists(st.floats(-3, 3), min_size=6, max_size=6),
)
def test_bounds_bracket_random_1d_mixtures(k, m, locs, scales, logits):
  """Random 1-D mixtures of 1 to 3 components (unused ones padded with a
  weight of 0, so that one compilation serves every example): lower <= true
  <= each upper bound, the true value from scipy.integrate.quad (absolute
  error ~1e-10), and every method finite and >= 0."""
  padded = np.array(logits)
  padded[k:3] = -np.inf
  padded[3 + m :] = -np.inf
  with jax.enable_x64(True):
    p = _uni(padded[:3], locs[:3], scales[:3])
    q = _uni(padded[3:], locs[3:], scales[3:])

    def log_density(x, log_w, loc, scale):
      comps = scipy.stats.norm.logpdf(x, loc, scale)
      return scipy.special.logsumexp(log_w[: len(loc)] + comps[: len(loc)])

    lw_p = scipy.special.log_softmax(padded[:k])
    lw_q = scipy.special.log_softmax(padded[3 : 3 + m])

    def integrand(x):
      lp = log_density(x, lw_p, np.array(locs[:k]), np.array(scales[:k]))
      lq = log_density(x, lw_q, np.array(locs[3 : 3 + m]), np.array(scales[3 : 3 + m]))
      return math.exp(lp) * (lp - lq)

    points = sorted(set(locs[:k] + locs[3 : 3 + m]))
    true, _ = scipy.integrate.quad(
      integrand, -40, 40, points=points, limit=200, epsabs=1e-12, epsrel=1e-12
    )
    tol = 1e-8 + 1e-8 * abs(true)
    values = {method: float(v) for method, v in _all_methods(p, q).items()}
    assert all(v >= 0 and math.isfinite(v) for v in values.values()), values
    assert values["lower"] <= true + tol, (values, true)
    assert true <= values["upper"] + tol, (values, true)
    assert true <= values["upper_durrieu"] + tol, (values, true)


# ----------------------------------------------------------------------------
# Each formula against its 50-digit evaluation.


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_formulas_match_mpmath(x64, name, dtype):
  """Relative error of every deterministic method vs its 50-digit value:
  <= 1e-12 in float64, 2e-5 in float32 (the references are computed from
  the rounded float32 parameters)."""
  p, q = _cases()[name]
  p, q = p.astype(dtype), q.astype(dtype)
  bound = 1e-12 if dtype == np.float64 else 2e-5
  for method, got in _all_methods(p, q).items():
    assert got.dtype == dtype
    want = _mp_method(p, q, method)
    assert abs(float(got) - float(want)) <= bound * float(want), (
      method,
      float(got),
      want,
    )


def test_lower_is_durrieu_for_single_gaussians(x64):
  """With M = 1 the cross term is exact (and equals the variational one);
  with M > 1 it is the product-of-Gaussians bound, which differs."""
  values = _all_methods(*_cases()["2d_mixture_vs_single"])
  assert values["lower"] == values["variational"]
  values = _all_methods(*_cases()["2d_overlap_K3_M2"])
  assert values["lower"] < values["variational"]


# ----------------------------------------------------------------------------
# Single components and identical mixtures.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_components_equal_kl_multivariate_normal(x64, dtype):
  """Every deterministic method is exact for single Gaussians (equal to
  kl_multivariate_normal to rounding), and Monte Carlo within 4 SE."""
  rng = np.random.default_rng(0)
  loc_p, loc_q = rng.normal(size=(2, 4, 3)).astype(dtype)
  eye = 2 * np.eye(3, dtype=dtype)
  tril_p = np.tril(rng.normal(size=(4, 3, 3))).astype(dtype) + eye
  tril_q = np.tril(rng.normal(size=(4, 3, 3))).astype(dtype) + eye
  want = jaxkl.kl_multivariate_normal(loc_p, tril_p, loc_q, tril_q)
  p = GaussianMixture.single(loc_p, tril_p)
  q = GaussianMixture.single(loc_q, tril_q)
  assert p.batch_shape == (4,) and p.num_components == 1
  for method, got in _all_methods(p, q).items():
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, err_msg=method)
  if dtype == np.float64:
    est = kl_gaussian_mixture(
      p, q, method="monte_carlo", key=jax.random.key(0), num_samples=20_000
    )
    assert np.all(np.abs(est.value - want) <= 4 * est.stderr)


@pytest.mark.parametrize("name", ["1d_overlap_K2_M3", "2d_overlap_K3_M2"])
def test_identical_mixtures_give_exact_zero(x64, name):
  p, _ = _cases()[name]
  twin = copy.deepcopy(p)
  for method, got in _all_methods(p, twin).items():
    assert float(got) == 0.0, method
  if name.startswith("1d"):
    return
  est = kl_gaussian_mixture(
    p, twin, method="monte_carlo", key=jax.random.key(1), num_samples=64
  )
  assert float(est.value) == 0.0 and float(est.stderr) == 0.0


def test_identical_and_near_equal_batch_entries(x64):
  """The zero is per batch element; a changed entry is positive (the lower
  bound, clamped at 0, may stay 0 for a small change); for near-equal
  mixtures (parameters 1e-6 apart) the error is absolute, ~1e-16."""
  p, _ = _cases()["1d_overlap_K2_M3"]
  batch = p.broadcast_to((3,))
  shift = np.array([0.0, 0.5, 1e-6])
  other = GaussianMixture(
    batch.logits + shift[:, None] * np.array([1.0, -1.0]),
    batch.loc + shift[:, None, None],
    batch.scale_tril * (1 + shift[:, None, None, None]),
  )
  for method, got in _all_methods(batch, other).items():
    got = np.asarray(got)
    assert got[0] == 0, method
    assert got[1] >= 0 if method == "lower" else got[1] > 0, method
    near = GaussianMixture(other.logits[2], other.loc[2], other.scale_tril[2])
    want = float(_mp_method(p, near, method))
    assert got[2] >= 0 and abs(got[2] - want) <= 1e-14, (method, got[2], want)


# ----------------------------------------------------------------------------
# Extreme configurations.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_far_apart_components_and_tiny_weights(x64, dtype):
  """Components 1e3 standard deviations apart and weights e^-1e4 neither
  under- nor overflow: each method matches its mpmath value."""
  p = _uni([0.0, -1e4, 0.0], [0.0, 500.0, 1000.0], [1.0, 1.0, 1.0], dtype)
  q = _uni([0.0, 0.0], [1.0, 999.0], [1.0, 2.0], dtype)
  for method, got in _all_methods(p, q).items():
    want = float(_mp_method(p, q, method))
    assert math.isfinite(float(got))
    bound = 1e-12 if dtype == np.float64 else 2e-5
    assert abs(float(got) - want) <= bound * want, method


def _stacked(p, q):
  return jnp.stack(list(_all_methods(p, q).values()))


def test_zero_weight_component_is_ignored(x64):
  """A zero weight (-inf logit, e.g. from_probs with 0) contributes exactly
  nothing, whatever its component, on either side; gradients stay finite."""
  p3 = GaussianMixture.from_probs(
    np.array([0.5, 0.0, 0.5]),
    np.array([[0.0], [1e30], [2.0]]),
    np.array([[[1.0]], [[1e-30]], [[0.5]]]),
  )
  p2 = GaussianMixture.from_probs(
    np.array([0.5, 0.5]), np.array([[0.0], [2.0]]), np.array([[[1.0]], [[0.5]]])
  )
  q = _uni([0.0, 0.3], [0.5, 1.5], [1.0, 0.7])
  for (a, b), (ref_a, ref_b) in [((p3, q), (p2, q)), ((q, p3), (q, p2))]:
    for method, got in _all_methods(a, b).items():
      want = float(_mp_method(ref_a, ref_b, method))
      assert abs(float(got) - want) <= 1e-12 * want, method
  grads = jax.grad(lambda p, q: jnp.sum(_stacked(p, q)), argnums=(0, 1))(p3, q)
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(leaf))


# ----------------------------------------------------------------------------
# Gradients.


def test_gradients_match_finite_differences(x64):
  """Reverse-mode gradients of all five methods (stacked: one compilation)
  against central differences, with respect to all six fields."""
  p, q = _cases()["2d_overlap_K3_M2"]
  check_grads(_stacked, (p, q), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_monte_carlo_gradient_finite_and_unbiased_in_weights(x64):
  """Score-function gradients: finite for every field, and the weights'
  gradient (which a pathwise estimate would miss) matches a finite
  difference of the mpmath.quad divergence within 4 standard errors."""
  p, q = _cases()["1d_overlap_K2_M3"]

  def value(p, key):
    return kl_gaussian_mixture(
      p, q, method="monte_carlo", key=key, num_samples=20_000
    ).value

  keys = jax.random.split(jax.random.key(3), 20)
  grads = jax.vmap(jax.grad(value), in_axes=(None, 0))(p, keys)
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(leaf))
  g = np.asarray(grads.logits[:, 1])
  mean, se = np.mean(g), np.std(g, ddof=1) / np.sqrt(len(g))
  h = 1e-4
  up = GaussianMixture(p.logits.at[1].add(h), p.loc, p.scale_tril)
  down = GaussianMixture(p.logits.at[1].add(-h), p.loc, p.scale_tril)
  fd = (_mp_true_kl_1d(up, q) - _mp_true_kl_1d(down, q)) / (2 * h)
  assert abs(mean - fd) <= 4 * se + 1e-6, (mean, se, fd)


# ----------------------------------------------------------------------------
# Batching, transformations, container behaviour.


def test_batches_broadcast_like_separate_calls(x64):
  rng = np.random.default_rng(1)
  p = GaussianMixture(
    rng.normal(size=(3, 1, 2)),
    rng.normal(size=(3, 1, 2, 2)),
    np.tril(rng.normal(size=(2, 2, 2))) + 2 * np.eye(2),  # batch () broadcasts
  )
  q = GaussianMixture(
    rng.normal(size=(4, 3)),
    rng.normal(size=(4, 3, 2)),
    np.tile(np.eye(2), (4, 3, 1, 1)),
  )
  assert p.batch_shape == (3, 1)
  got = _all_methods(p, q)
  for i in range(3):
    for j in range(4):
      pi = GaussianMixture(p.logits[i, 0], p.loc[i, 0], p.scale_tril)
      qj = GaussianMixture(q.logits[j], q.loc[j], q.scale_tril[j])
      for method, want in _all_methods(pi, qj).items():
        assert got[method].shape == (3, 4)
        np.testing.assert_allclose(got[method][i, j], want, rtol=1e-13, err_msg=method)


def test_jit_vmap_and_pytree_arguments(x64):
  p, q = _cases()["2d_overlap_K3_M2"]
  jitted = jax.jit(kl_gaussian_mixture, static_argnames="method")(p, q, method="upper")
  np.testing.assert_allclose(jitted, _all_methods(p, q)["upper"], rtol=1e-14)
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), p)
  mapped = jax.vmap(lambda p: kl_gaussian_mixture(p, q))(stacked)
  direct = [
    _all_methods(
      GaussianMixture(*(leaf[i] for leaf in jax.tree_util.tree_leaves(stacked))), q
    )["variational"]
    for i in range(2)
  ]
  np.testing.assert_allclose(mapped, direct, rtol=1e-14)
  # A GaussianMixture as jit argument and return value.
  out = jax.jit(lambda m: GaussianMixture(m.logits + 1, m.loc, m.scale_tril))(p)
  assert isinstance(out, GaussianMixture)
  np.testing.assert_array_equal(out.logits, p.logits + 1)
  # Monte Carlo under jit, batch shapes broadcast ((2,) against ()).
  est = jax.jit(
    lambda p, q, key: kl_gaussian_mixture(
      p, q, method="monte_carlo", key=key, num_samples=1000
    )
  )(stacked, q, jax.random.key(0))
  assert isinstance(est, jaxkl.KLEstimate)
  assert est.value.shape == est.stderr.shape == (2,)
  assert np.all(
    np.abs(est.value - np.asarray(direct)) < 0.5
  )  # variational vs 1000 draws


def test_copy_deepcopy_pickle_and_tree_structure():
  p, _ = _cases()["2d_overlap_K3_M2"]
  for other in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
    assert isinstance(other, GaussianMixture)
    for a, b in zip(
      jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(other), strict=True
    ):
      np.testing.assert_array_equal(a, b)
  leaves, treedef = jax.tree_util.tree_flatten(p)
  assert len(leaves) == 3
  paths = [
    jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(p)[0]
  ]
  assert paths == [".logits", ".loc", ".scale_tril"]
  assert jax.tree_util.tree_unflatten(treedef, leaves).num_components == 3
  with pytest.raises(dataclasses_frozen_error()):
    p.loc = p.loc  # type: ignore[misc]


def dataclasses_frozen_error():
  import dataclasses

  return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("dtype", [jnp.bfloat16])
def test_16_bit_computed_in_float32(x64, dtype):
  """16-bit fields are computed in float32 from the rounded parameters and
  rounded back (float32 and float64 results: test_formulas_match_mpmath)."""
  p, q = _cases()["1d_overlap_K2_M3"]
  rounded_p, rounded_q = p.astype(dtype), q.astype(dtype)
  want = _all_methods(rounded_p.astype(np.float32), rounded_q.astype(np.float32))
  for method, got in _all_methods(rounded_p, rounded_q).items():
    assert got.dtype == dtype
    assert got == want[method].astype(dtype), method
  est = kl_gaussian_mixture(
    rounded_p, rounded_q, method="monte_carlo", key=jax.random.key(0), num_samples=64
  )
  assert est.value.dtype == est.stderr.dtype == dtype
  assert rounded_p.log_prob(jnp.zeros((5, 1), dtype)).dtype == dtype
  assert rounded_p.sample(jax.random.key(0), (5,)).dtype == dtype


# ----------------------------------------------------------------------------
# The container's constructors and distribution methods.


def test_constructors_agree(x64):
  loc = np.array([[-1.0, 0.5], [2.0, 0.0]])
  scale = np.array([[0.5, 2.0], [1.0, 0.3]])
  probs = np.array([0.25, 0.75])
  diag = GaussianMixture.diagonal(loc, scale, probs=probs)
  full = GaussianMixture.from_probs(probs, loc, np.stack([np.diag(s) for s in scale]))
  for a, b in zip(
    jax.tree_util.tree_leaves(diag), jax.tree_util.tree_leaves(full), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  uni = GaussianMixture.univariate(loc[:, 0], scale[:, 0], logits=np.log(probs))
  assert uni.event_shape == (1,) and uni.loc.shape == (2, 1)
  np.testing.assert_array_equal(uni.scale_tril[:, 0, 0], scale[:, 0])
  single = GaussianMixture.single(loc[0], np.diag(scale[0]))
  assert single.num_components == 1 and single.batch_shape == ()


def test_log_prob_matches_scipy(x64):
  p, _ = _cases()["2d_overlap_K3_M2"]
  x = np.random.default_rng(2).normal(size=(7, 2)) * 2
  w = scipy.special.softmax(np.asarray(p.logits))
  covs = [f @ f.T for f in np.tril(np.asarray(p.scale_tril))]
  want = np.log(
    sum(
      wk * scipy.stats.multivariate_normal(mu, c).pdf(x)
      for wk, mu, c in zip(w, np.asarray(p.loc), covs, strict=True)
    )
  )
  np.testing.assert_allclose(p.log_prob(x), want, rtol=1e-13)
  batch = p.broadcast_to((3,))
  assert batch.log_prob(x[:, None, :]).shape == (7, 3)
  assert batch.log_prob(x[:3]).shape == (3,)


def test_sample_moments(x64):
  """Mean and second moment of 10**5 draws within 4 standard errors."""
  p, _ = _cases()["2d_overlap_K3_M2"]
  x = np.asarray(p.sample(jax.random.key(5), (100_000,)))
  assert x.shape == (100_000, 2)
  w = scipy.special.softmax(np.asarray(p.logits))
  loc = np.asarray(p.loc)
  covs = np.array([f @ f.T for f in np.tril(np.asarray(p.scale_tril))])
  mean = w @ loc
  second = np.einsum("k,kij->ij", w, covs + loc[:, :, None] * loc[:, None, :])
  assert np.all(np.abs(x.mean(0) - mean) <= 4 * x.std(0) / np.sqrt(len(x)))
  outer = x[:, :, None] * x[:, None, :]
  se = outer.std(0) / np.sqrt(len(x))
  assert np.all(np.abs(outer.mean(0) - second) <= 4 * se)
  assert p.broadcast_to((2,)).sample(jax.random.key(0), (4, 5)).shape == (4, 5, 2, 2)


# ----------------------------------------------------------------------------
# Errors.


def test_constructor_errors():
  with pytest.raises(ValueError, match="numbers of components K disagree"):
    GaussianMixture(np.zeros(3), np.zeros((2, 1)), np.ones((2, 1, 1)))
  with pytest.raises(ValueError, match="dimensions d disagree"):
    GaussianMixture(np.zeros(2), np.zeros((2, 3)), np.ones((2, 2, 2)))
  with pytest.raises(ValueError, match="square"):
    GaussianMixture(np.zeros(2), np.zeros((2, 2)), np.ones((2, 2, 3)))
  with pytest.raises(ValueError, match=r"`loc` must have shape \[..., K, d\]"):
    GaussianMixture(np.zeros(2), np.zeros(2), np.ones((2, 1, 1)))
  with pytest.raises(ValueError, match="do not broadcast"):
    GaussianMixture(np.zeros((3, 2)), np.zeros((4, 2, 1)), np.ones((2, 1, 1)))
  with pytest.raises(TypeError, match="real floating dtype"):
    GaussianMixture(np.zeros(2, np.int32), np.zeros((2, 1)), np.ones((2, 1, 1)))
  with pytest.raises(ValueError, match="exactly one of `logits` and `probs`"):
    GaussianMixture.univariate(np.zeros(2), np.ones(2))
  with pytest.raises(ValueError, match="exactly one of `logits` and `probs`"):
    GaussianMixture.diagonal(
      np.zeros((2, 1)), np.ones((2, 1)), logits=np.zeros(2), probs=np.ones(2) / 2
    )
  mix = GaussianMixture.univariate(np.zeros(2), np.ones(2), logits=np.zeros(2))
  with pytest.raises(ValueError, match=r"`x` must have shape \[..., 1\]"):
    mix.log_prob(np.zeros((3, 2)))


def test_kl_errors():
  p = GaussianMixture.univariate(np.zeros(2), np.ones(2), logits=np.zeros(2))
  q2 = GaussianMixture.diagonal(np.zeros((2, 2)), np.ones((2, 2)), logits=np.zeros(2))
  with pytest.raises(TypeError, match=r"must be a `jaxkl\.GaussianMixture`"):
    kl_gaussian_mixture(p, (np.zeros(2), np.ones(2)))
  with pytest.raises(ValueError, match="`method` must be one of"):
    kl_gaussian_mixture(p, p, method="exact")
  with pytest.raises(ValueError, match="different dimensions"):
    kl_gaussian_mixture(p, q2)
  with pytest.raises(ValueError, match="do not broadcast"):
    kl_gaussian_mixture(p.broadcast_to((2,)), p.broadcast_to((3,)))
  with pytest.raises(ValueError, match="needs `key` and `num_samples`; key missing"):
    kl_gaussian_mixture(p, p, method="monte_carlo", num_samples=10)
  with pytest.raises(ValueError, match="num_samples missing"):
    kl_gaussian_mixture(p, p, method="monte_carlo", key=jax.random.key(0))
  with pytest.raises(ValueError, match="only used by method='monte_carlo'"):
    kl_gaussian_mixture(p, p, key=jax.random.key(0))
  with pytest.raises(TypeError, match=r"jax\.random key"):
    kl_gaussian_mixture(p, p, method="monte_carlo", key=0, num_samples=10)


def test_no_registered_pairs():
  assert mixture.PAIRS == {}
