"""Discrete closed forms added for issue 14 (jaxkl/_closed_forms/discrete.py):
binomial (also with fewer trials than Q), geometric, continuous Bernoulli,
the cross pairs Bernoulli/Poisson/binomial, and the registry entries.

References: ``torch.distributions.kl_divergence`` in float64 where torch has
the pair, 50-digit mpmath elsewhere (exact sums, extreme and near-equal
parameters).
"""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxkl._closed_forms import discrete

td = torch.distributions
PAIRS = discrete.PAIRS
kl_binomial = discrete.kl_binomial
kl_geometric = discrete.kl_geometric
kl_cb = discrete.kl_continuous_bernoulli
inf = np.inf


def T(x):
  return torch.as_tensor(np.array(x, np.float64))


def _rel(got, want):
  got, want = float(got), float(want)
  return abs(got - want) / abs(want) if want != 0 else abs(got)


# ----------------------------------------------------------------------------
# 50-digit references.


def _mp_log_sigmoid(x):
  return -mpmath.log1p(mpmath.exp(-x))


def mp_binomial(n_p, a, n_q, b):
  """The exact sum over the support of P (extra digits for close logits:
  the result is O((b - a)^2), the terms O(|b - a|))."""
  gap = abs(float(a) - float(b))
  with mpmath.workdps(60 + 2 * max(0, int(-np.log10(gap))) if 0 < gap < 1 else 60):
    a, b = (x if isinstance(x, mpmath.mpf) else mpmath.mpf(float(x)) for x in (a, b))
    total = mpmath.mpf(0)
    for k in range(int(n_p) + 1):
      lp = (
        mpmath.log(mpmath.binomial(n_p, k))
        + k * _mp_log_sigmoid(a)
        + (n_p - k) * _mp_log_sigmoid(-a)
      )
      lq = (
        mpmath.log(mpmath.binomial(n_q, k))
        + k * _mp_log_sigmoid(b)
        + (n_q - k) * _mp_log_sigmoid(-b)
      )
      total += mpmath.exp(lp) * (lp - lq)
    return total


def mp_geometric(a, b):
  """log(p/q) + ((1 - p)/p) log((1 - p)/(1 - q)), (1 - p)/p = e^-a.

  The terms are O(|b - a|) and the result O((b - a)^2): the working
  precision grows with -log10 |b - a|.
  """
  gap = abs(float(a) - float(b))
  with mpmath.workdps(60 + 2 * max(0, int(-np.log10(gap))) if gap > 0 else 60):
    a, b = mpmath.mpf(float(a)), mpmath.mpf(float(b))
    return (_mp_log_sigmoid(a) - _mp_log_sigmoid(b)) + mpmath.exp(-a) * (
      _mp_log_sigmoid(-a) - _mp_log_sigmoid(-b)
    )


def mp_continuous_bernoulli(eta_p, eta_q):
  """Numerical integration of p log(p/q) over [0, 1] (densities
  eta e^(eta x) / expm1(eta), uniform at eta = 0)."""
  with mpmath.workdps(50):
    eta_p, eta_q = mpmath.mpf(float(eta_p)), mpmath.mpf(float(eta_q))

    def log_density(eta, x):
      if eta == 0:
        return mpmath.mpf(0)
      return mpmath.log(eta / mpmath.expm1(eta)) + eta * x

    def integrand(x):
      lp = log_density(eta_p, x)
      return mpmath.exp(lp) * (lp - log_density(eta_q, x))

    return mpmath.quad(integrand, [0, 0.5, 1])


def mp_cb_bregman(eta_p, eta_q):
  """The same as a Bregman divergence of A(eta) = log(expm1(eta)/eta)."""
  # Tiny logits: the terms are O(eta) and the result O(eta^2), so the
  # working precision grows with -log10 |eta|.
  smallest = min((abs(float(e)) for e in (eta_p, eta_q) if e != 0), default=1.0)
  with mpmath.workdps(60 + 2 * max(0, int(-np.log10(smallest)))):
    x, y = mpmath.mpf(float(eta_p)), mpmath.mpf(float(eta_q))

    def a(e):
      return mpmath.log(mpmath.expm1(e) / e) if e != 0 else mpmath.mpf(0)

    def mean(e):
      return 1 / (-mpmath.expm1(-e)) - 1 / e if e != 0 else mpmath.mpf(0.5)

    return a(y) - a(x) - (y - x) * mean(x)


# ----------------------------------------------------------------------------
# Against PyTorch (float64), through the registry.

rng0 = np.random.default_rng(0)
A = rng0.normal(0, 3, (4, 5))
B = rng0.normal(0, 3, (5,))
PROBS_A, PROBS_B = 1 / (1 + np.exp(-A)), 1 / (1 + np.exp(-B))
N = np.arange(20.0).reshape(4, 5)
RATE_A, RATE_B = rng0.uniform(0.1, 4, (4, 5)), rng0.uniform(0.1, 4, (5,))
LOGITS_K_A, LOGITS_K_B = rng0.normal(0, 2, (4, 1, 6)), rng0.normal(0, 2, (3, 6))

TORCH_CASES = {
  "bernoulli-logits": (
    ("bernoulli", "bernoulli"),
    {"logits": A},
    {"logits": B},
    td.Bernoulli(logits=T(A)),
    td.Bernoulli(logits=T(B)),
  ),
  "bernoulli-probs": (
    ("bernoulli", "bernoulli"),
    {"probs": PROBS_A},
    {"probs": PROBS_B},
    td.Bernoulli(probs=T(PROBS_A)),
    td.Bernoulli(probs=T(PROBS_B)),
  ),
  "bernoulli-mixed": (
    ("bernoulli", "bernoulli"),
    {"probs": PROBS_A},
    {"logits": B},
    td.Bernoulli(probs=T(PROBS_A)),
    td.Bernoulli(logits=T(B)),
  ),
  "categorical-logits": (
    ("categorical", "categorical"),
    {"logits": LOGITS_K_A},
    {"logits": LOGITS_K_B},
    td.Categorical(logits=T(LOGITS_K_A)),
    td.Categorical(logits=T(LOGITS_K_B)),
  ),
  "categorical-probs": (
    ("categorical", "categorical"),
    {"probs": scipy.special.softmax(LOGITS_K_A, axis=-1)},
    {"logits": LOGITS_K_B},
    td.Categorical(logits=T(LOGITS_K_A)),
    td.Categorical(logits=T(LOGITS_K_B)),
  ),
  "one-hot": (
    ("one_hot_categorical", "one_hot_categorical"),
    {"logits": LOGITS_K_A},
    {"probs": scipy.special.softmax(LOGITS_K_B, axis=-1)},
    td.OneHotCategorical(logits=T(LOGITS_K_A)),
    td.OneHotCategorical(logits=T(LOGITS_K_B)),
  ),
  "binomial": (
    ("binomial", "binomial"),
    {"total_count": N, "logits": A},
    {"total_count": N, "probs": np.broadcast_to(PROBS_B, (4, 5))},
    td.Binomial(T(N), logits=T(A)),
    td.Binomial(T(N), probs=T(np.broadcast_to(PROBS_B, (4, 5)))),
  ),
  "geometric": (
    ("geometric", "geometric"),
    {"logits": A},
    {"probs": PROBS_B},
    td.Geometric(logits=T(A)),
    td.Geometric(probs=T(PROBS_B)),
  ),
  "poisson": (
    ("poisson", "poisson"),
    {"rate": RATE_A},
    {"rate": RATE_B},
    td.Poisson(T(RATE_A)),
    td.Poisson(T(RATE_B)),
  ),
  "continuous-bernoulli": (
    ("continuous_bernoulli", "continuous_bernoulli"),
    {"logits": A},
    {"probs": PROBS_B},
    td.ContinuousBernoulli(logits=T(A)),
    td.ContinuousBernoulli(probs=T(PROBS_B)),
  ),
  "bernoulli-poisson": (
    ("bernoulli", "poisson"),
    {"logits": A},
    {"rate": RATE_B},
    td.Bernoulli(logits=T(A)),
    td.Poisson(T(RATE_B)),
  ),
  "bernoulli-poisson-probs": (
    ("bernoulli", "poisson"),
    {"probs": PROBS_A},
    {"rate": RATE_B},
    td.Bernoulli(probs=T(PROBS_A)),
    td.Poisson(T(RATE_B)),
  ),
  "poisson-bernoulli": (
    ("poisson", "bernoulli"),
    {"rate": RATE_A},
    {"logits": B},
    td.Poisson(T(RATE_A)),
    td.Bernoulli(logits=T(B)),
  ),
  "poisson-binomial": (
    ("poisson", "binomial"),
    {"rate": RATE_A},
    {"total_count": np.full(5, 7.0), "logits": B},
    td.Poisson(T(RATE_A)),
    td.Binomial(T(np.full(5, 7.0)), logits=T(B)),
  ),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_pairs_match_torch(x64, case):
  pair, p, q, tp, tq = TORCH_CASES[case]
  got = PAIRS[pair]({k: jnp.asarray(v) for k, v in p.items()}, q)
  shape = np.broadcast_shapes(tp.batch_shape, tq.batch_shape)
  want = td.kl_divergence(tp.expand(shape), tq.expand(shape)).numpy()
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14)


def test_registry_keys():
  assert set(PAIRS) == {
    ("bernoulli", "bernoulli"),
    ("categorical", "categorical"),
    ("one_hot_categorical", "one_hot_categorical"),
    ("binomial", "binomial"),
    ("geometric", "geometric"),
    ("poisson", "poisson"),
    ("continuous_bernoulli", "continuous_bernoulli"),
    ("bernoulli", "poisson"),
    ("poisson", "bernoulli"),
    ("poisson", "binomial"),
  }


# ----------------------------------------------------------------------------
# Binomial.


BINOMIAL_CASES = [
  (3, 0.3, 10, -0.4),
  (1, 0.0, 2, 0.0),
  (0, 1.0, 3, 2.0),  # P the point mass at 0
  (100, 0.2, 101, 0.2),  # near-equal: the three terms cancel
  (300, 3.0, 310, 3.2),
  (20, 30.0, 25, 31.0),  # extreme logits
  (20, -30.0, 25, -30.0),
  (40, 1e3, 41, 0.5),
  (500, -2.0, 500, -2.000001),  # same n: n kl_bernoulli
  (7, 1e-7, 7, 0.0),
]


@pytest.mark.parametrize("case", BINOMIAL_CASES)
def test_binomial_vs_mpmath(x64, case):
  n_p, a, n_q, b = case
  got = kl_binomial(float(n_p), a, float(n_q), b)
  assert _rel(got, mp_binomial(n_p, a, n_q, b)) < 1e-12
  args32 = [np.float32(x) for x in case]
  got32 = kl_binomial(*args32)
  assert got32.dtype == jnp.float32
  want32 = mp_binomial(n_p, args32[1], n_q, args32[3])
  # float32: ~n_p eps where the terms cancel (documented).
  assert _rel(got32, want32) < max(1e-5, 4 * n_p * 6e-8)


@settings(max_examples=30, deadline=None)
@given(
  st.integers(0, 40),
  st.integers(0, 8),
  st.one_of(st.floats(-40, 40), st.floats(-1e-6, 1e-6)),
  st.one_of(st.floats(-40, 40), st.floats(-1e-6, 1e-6)),
)
def test_binomial_property(n_p, extra, a, b):
  with jax.enable_x64(True):
    want = mp_binomial(n_p, a, n_p + extra, b)
    got = kl_binomial(float(n_p), a, float(n_p + extra), b)
    if want < 1e-300:
      assert abs(float(got) - float(want)) < 1e-300
    else:
      assert _rel(got, want) < 1e-11
    grads = jax.grad(kl_binomial, argnums=(1, 3))(float(n_p), a, float(n_p + extra), b)
    assert np.all(np.isfinite(grads))


def test_binomial_support_and_torch_refusal(x64):
  np.testing.assert_array_equal(kl_binomial(5.0, 0.3, 4.0, 0.3), inf)
  np.testing.assert_array_equal(kl_binomial(5.0, 0.3, 5.0, 0.3), 0.0)
  np.testing.assert_array_equal(kl_binomial(0.0, 0.3, 0.0, -1.0), 0.0)
  # Q certain of success with more trials: P's outcomes have no mass.
  assert kl_binomial(2.0, 0.3, 4.0, inf) == inf
  # Q certain of failure: finite only for P the point mass at 0.
  assert kl_binomial(2.0, -inf, 4.0, -inf) == 0
  assert kl_binomial(2.0, 0.0, 4.0, -inf) == inf
  # P certain of success: -log Q(n_p).
  want = -float(mpmath.log(mpmath.binomial(4, 2) * mpmath.mpf(0.5) ** 4))
  np.testing.assert_allclose(kl_binomial(2.0, inf, 4.0, 0.0), want, rtol=1e-14)
  with pytest.raises(NotImplementedError):  # what torch does for n_p < n_q
    td.kl_divergence(
      td.Binomial(T(2.0), logits=T(0.0)), td.Binomial(T(4.0), logits=T(0.0))
    )


def test_binomial_gradients(x64):
  # First derivatives (the custom JVP) against finite differences of the
  # mpmath sum, and jax's own checks in both modes.
  grads = jax.grad(kl_binomial, argnums=(0, 1, 2, 3))(3.0, 0.3, 10.0, -0.4)
  h = mpmath.mpf("1e-20")
  with mpmath.workdps(60):
    da = (mp_binomial(3, 0.3 + h, 10, -0.4) - mp_binomial(3, 0.3 - h, 10, -0.4)) / (
      2 * h
    )
    db = (mp_binomial(3, 0.3, 10, -0.4 + h) - mp_binomial(3, 0.3, 10, -0.4 - h)) / (
      2 * h
    )
  np.testing.assert_allclose([grads[1], grads[3]], [float(da), float(db)], rtol=1e-11)
  assert grads[0] == 0 and grads[2] == 0  # counts are not differentiated
  f = jax.jit(
    lambda a, b: kl_binomial(jnp.array([3.0, 6.0]), a, jnp.array([10.0, 6.0]), b)
  )
  check_grads(
    f, (jnp.array([0.3, 1.0]), jnp.array([-0.4, 0.5])), order=1, modes=("fwd", "rev")
  )
  # Forward-over-reverse second derivative.
  hess = jax.jacfwd(jax.grad(kl_binomial, argnums=1), argnums=1)(3.0, 0.3, 10.0, -0.4)
  with mpmath.workdps(60):
    h = mpmath.mpf("1e-12")
    d2 = (
      mp_binomial(3, 0.3 + h, 10, -0.4)
      - 2 * mp_binomial(3, 0.3, 10, -0.4)
      + mp_binomial(3, 0.3 - h, 10, -0.4)
    ) / h**2
  np.testing.assert_allclose(hess, float(d2), rtol=1e-8)


def test_binomial_traced_counts_jit_vmap_and_dtypes():
  n_p = jnp.array([3, 5, 2, 0])  # integer counts take the logits' dtype
  n_q = jnp.array([10, 5, 1, 2])
  a = jnp.array([0.3, 0.1, 0.0, 2.0])
  b = jnp.array([-0.4, 0.2, 0.0, 1.0])
  eager = kl_binomial(n_p, a, n_q, b)
  assert eager.dtype == jnp.float32
  assert eager[2] == inf
  jitted = jax.jit(jax.vmap(kl_binomial))(
    n_p.astype(jnp.float32), a, n_q.astype(jnp.float32), b
  )
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  got16 = kl_binomial(n_p, a.astype(jnp.bfloat16), n_q, b.astype(jnp.bfloat16))
  assert got16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got16, np.float32), eager, rtol=1e-2)
  # Broadcasting.
  assert kl_binomial(jnp.ones((2, 1)) * 3, a, 10.0, 0.0).shape == (2, 4)
  with pytest.raises(TypeError, match="`logits_p`"):
    kl_binomial(3.0, jnp.array([1, 2]), 3.0, 0.0)


# ----------------------------------------------------------------------------
# Geometric.


GEOMETRIC_CASES = [
  (0.0, 1e-8),
  (-25.0, -25.00001),
  (-100.0, -100.5),  # p = e^-100: the Bernoulli divergence underflows
  (-30.0, 40.0),
  (30.0, 30.5),
  (50.0, -50.0),
  (-21.0, -19.0),
  (-19.9, -20.1),  # both sides of the switch at a = -20
  (5.0, -5.0),
  (100.0, 100.0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", GEOMETRIC_CASES)
def test_geometric_vs_mpmath(x64, dtype, case):
  a, b = (dtype(x) for x in case)
  got = kl_geometric(a, b)
  assert got.dtype == dtype
  assert _rel(got, mp_geometric(a, b)) < (1e-13 if dtype == np.float64 else 2e-6)


@settings(max_examples=80, deadline=None)
@given(st.floats(-300, 300), st.floats(-300, 300))
def test_geometric_property(a, b):
  with jax.enable_x64(True):
    want = mp_geometric(a, b)
    got = kl_geometric(a, b)
    if want > 1e300:
      assert got == inf or _rel(got, want) < 1e-12
    else:
      if want < 1e-300:  # XLA flushes subnormal results to 0
        assert abs(float(got) - float(want)) < 1e-300
      else:
        assert _rel(got, want) < 1e-12
      grads = jax.grad(kl_geometric, argnums=(0, 1))(a, b)
      assert np.all(np.isfinite(grads))


def test_geometric_edges_and_gradients(x64):
  np.testing.assert_array_equal(
    kl_geometric(jnp.array([-50.0, 0.0, 3.0]), jnp.array([-50.0, 0.0, 3.0])), 0.0
  )
  assert kl_geometric(inf, 0.0) == pytest.approx(np.log(2))  # point mass at 0: -log q
  assert kl_geometric(0.0, inf) == inf  # Q the point mass at 0
  assert kl_geometric(-inf, 0.0) == inf  # p = 0: no distribution
  assert kl_geometric(-30.0, -inf) == inf
  points = (jnp.array([0.3, -25.0, -19.99]), jnp.array([-0.4, -24.0, -20.5]))
  check_grads(jax.jit(kl_geometric), points, order=1, modes=("fwd", "rev"))
  grads = jax.grad(kl_geometric, argnums=(0, 1))(1.5, 1.5)
  np.testing.assert_allclose(grads, 0.0, atol=1e-15)


def test_geometric_dtypes_broadcast_jit():
  a = jnp.array([[0.5], [-30.0]], jnp.bfloat16)
  b = jnp.array([0.0, 1.0, -29.0], jnp.bfloat16)
  got = kl_geometric(a, b)
  assert got.shape == (2, 3) and got.dtype == jnp.bfloat16
  want = kl_geometric(a.astype(jnp.float32), b.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)
  np.testing.assert_allclose(
    jax.jit(kl_geometric)(a.astype(jnp.float32), b.astype(jnp.float32)), want, rtol=1e-6
  )


# ----------------------------------------------------------------------------
# Continuous Bernoulli.

CB_CASES = [
  (0.0, 1e-8),  # the removable singularity at eta = 0
  (1e-9, -1e-9),
  (0.001, 0.0011),
  (0.0, 3.0),
  (3.0, 0.0),
  (-5.0, 5.0),
  (40.0, 41.0),
  (40.0, 40.0001),
  (1e4, 1.5e4),
  (1e4, 1e4 + 1),
  (-1e4, 0.5),
  (2.1, 5.9),
  (8.0, -30.0),
  (1.0, 2.999),
  (-200.0, -260.0),
  (0.5, 100.0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CB_CASES)
def test_continuous_bernoulli_vs_mpmath(x64, dtype, case):
  a, b = (dtype(x) for x in case)
  got = kl_cb(a, b)
  assert got.dtype == dtype
  assert _rel(got, mp_cb_bregman(a, b)) < (1e-13 if dtype == np.float64 else 2e-6)


def test_continuous_bernoulli_bregman_is_the_kl_integral():
  # The closed form (a Bregman divergence of the log-normaliser) against the
  # numerical integral of p log(p / q).
  for a, b in [(0.0, 1.5), (-2.0, 3.0), (4.0, 3.5), (0.1, 0.0)]:
    assert abs(mp_cb_bregman(a, b) / mp_continuous_bernoulli(a, b) - 1) < 1e-30


@settings(max_examples=80, deadline=None)
@given(
  st.one_of(st.floats(-50, 50), st.floats(-1e-3, 1e-3), st.floats(-1e5, 1e5)),
  st.one_of(st.floats(-50, 50), st.floats(-1e-3, 1e-3), st.floats(-1e5, 1e5)),
)
def test_continuous_bernoulli_property(a, b):
  with jax.enable_x64(True):
    want = mp_cb_bregman(a, b)
    got = kl_cb(a, b)
    if want < 1e-300:
      assert abs(float(got) - float(want)) < 1e-300
    else:
      assert _rel(got, want) < 1e-12
    grads = jax.grad(kl_cb, argnums=(0, 1))(a, b)
    assert np.all(np.isfinite(grads))


def test_continuous_bernoulli_edges_and_gradients(x64):
  np.testing.assert_array_equal(
    kl_cb(jnp.array([0.0, -7.0, 1e4]), jnp.array([0.0, -7.0, 1e4])), 0.0
  )
  np.testing.assert_array_equal(
    kl_cb(jnp.array([inf, inf, 0.0]), jnp.array([inf, 0.0, -inf])), [0.0, inf, inf]
  )
  # Gradient at eta_p = eta_q = 0 (the removable singularity): zero, finite.
  np.testing.assert_array_equal(jax.grad(kl_cb, argnums=(0, 1))(0.0, 0.0), [0.0, 0.0])
  # d/d eta_q = mean(eta_q) - mean(eta_p), an exponential-family identity.
  with mpmath.workdps(30):
    mean = lambda e: 1 / (-mpmath.expm1(-mpmath.mpf(e))) - 1 / mpmath.mpf(e)  # noqa: E731
    want = float(mean(2.5) - mean(-1.0))
  np.testing.assert_allclose(jax.grad(kl_cb, argnums=1)(-1.0, 2.5), want, rtol=1e-13)
  # One call per regime: near (quadrature), far with |t_p| < 1, far with
  # |t_p| >= 1 and the same sign, and with opposite signs.
  points = (
    jnp.array([0.3, 0.0, 1.0, 5.0, 6.0]),
    jnp.array([-0.4, 1e-3, 6.2, 50.0, -9.0]),
  )
  check_grads(jax.jit(kl_cb), points, order=2, modes=("rev",))
  grads = jax.jit(jax.grad(lambda a, b: jnp.sum(kl_cb(a, b)), argnums=(0, 1)))(
    jnp.array([710.0, -1e5, 1e-300]), jnp.array([0.0, 3.0, -2.0])
  )
  assert np.all(np.isfinite(grads))


def test_continuous_bernoulli_dtypes_broadcast():
  a = jnp.array([[0.5], [-3.0]], jnp.bfloat16)
  b = jnp.array([0.0, 1.0, 30.0], jnp.bfloat16)
  got = kl_cb(a, b)
  assert got.shape == (2, 3) and got.dtype == jnp.bfloat16
  want = kl_cb(a.astype(jnp.float32), b.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)
  a32, b32 = a.astype(jnp.float32)[:, 0], b.astype(jnp.float32)[:2]
  np.testing.assert_allclose(
    jax.jit(jax.vmap(kl_cb))(a32, b32), kl_cb(a32, b32), rtol=1e-6
  )
  probs = PAIRS[("continuous_bernoulli", "continuous_bernoulli")](
    {"probs": jnp.float32(0.5)}, {"probs": jnp.float32(0.5)}
  )
  assert probs == 0


# ----------------------------------------------------------------------------
# Cross pairs.


def test_bernoulli_poisson_edges(x64):
  f = PAIRS[("bernoulli", "poisson")]
  assert f({"probs": 0.0}, {"rate": 0.0}) == 0  # both the point mass at 0
  assert f({"probs": 0.3}, {"rate": 0.0}) == inf
  assert f({"logits": -inf}, {"rate": 2.0}) == 2.0  # -log Q(0)
  # Extreme but finite: p = sigmoid(-40), rate 1e-17.
  with mpmath.workdps(50):
    p = 1 / (1 + mpmath.exp(40))
    lam = mpmath.mpf(1e-17)
    want = p * mpmath.log(p) + (1 - p) * mpmath.log(1 - p) + lam - p * mpmath.log(lam)
  assert _rel(f({"logits": -40.0}, {"rate": 1e-17}), want) < 1e-13
  check_grads(
    lambda a, r: f({"logits": a}, {"rate": r}), (0.3, 1.5), order=1, modes=("rev",)
  )


def test_poisson_to_bounded_support(x64):
  # Infinite for a positive rate (torch's value); the point mass at 0
  # (rate 0) has the finite -log Q(0).
  f, g = PAIRS[("poisson", "bernoulli")], PAIRS[("poisson", "binomial")]
  np.testing.assert_array_equal(
    f({"rate": jnp.array([0.5, 0.0])}, {"logits": 0.0}), [inf, np.log(2)]
  )
  np.testing.assert_allclose(
    g({"rate": jnp.array([0.5, 0.0])}, {"total_count": 3, "probs": 0.5}),
    [inf, 3 * np.log(2)],
  )
  assert g({"rate": 0.0}, {"total_count": 0.0, "logits": 0.0}) == 0
