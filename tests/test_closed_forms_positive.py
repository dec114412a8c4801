"""Closed forms added to jaxkl/_closed_forms/positive.py for issue 14 (Weibull,
chi-square, von Mises) and the module's registry ``PAIRS``.

References: TFP on JAX (``tfp.substrates.jax``) for Weibull and von Mises,
``torch.distributions.kl_divergence`` in float64 for chi-square (and the
chi-square/gamma pairs), the textbook formulas evaluated by mpmath at 50+
digits on the rounded parameters, and mpmath numerical integration
(``mpmath.quad``, 40 digits) at extreme and near-equal parameters.
"""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from tensorflow_probability.substrates import jax as tfp

import jaxkl
from jaxkl._closed_forms import positive as ps

td = torch.distributions
tfd = tfp.distributions
inf = np.inf
TINY64 = float(np.finfo(np.float64).tiny)


def _mpf(x):
  return mpmath.mpf(float(x))


# ----------------------------------------------------------------------------
# mpmath references (textbook formulas, rounded parameters).


def _ref_weibull(lp, kp, lq, kq):
  """Bauckhage (2013)."""
  lp, kp, lq, kq = map(_mpf, (lp, kp, lq, kq))
  g = mpmath.euler
  return (
    mpmath.log(kp)
    - kp * mpmath.log(lp)
    - (mpmath.log(kq) - kq * mpmath.log(lq))
    + (kp - kq) * (mpmath.log(lp) - g / kp)
    + mpmath.exp(kq * mpmath.log(lp / lq) + mpmath.loggamma(kq / kp + 1))
    - 1
  )


def _ref_gamma(ap, bp, aq, bq):
  ap, bp, aq, bq = map(_mpf, (ap, bp, aq, bq))
  return (
    (ap - aq) * mpmath.digamma(ap)
    - mpmath.loggamma(ap)
    + mpmath.loggamma(aq)
    + aq * (mpmath.log(bp) - mpmath.log(bq))
    + ap * (bq - bp) / bp
  )


def _ref_chi2(np_, nq):
  return _ref_gamma(_mpf(np_) / 2, 0.5, _mpf(nq) / 2, 0.5)


def _ref_von_mises(mp_, kp, mq, kq):
  mp_, kp, mq, kq = map(_mpf, (mp_, kp, mq, kq))
  i0p, i0q = mpmath.besseli(0, kp), mpmath.besseli(0, kq)
  a = mpmath.besseli(1, kp) / i0p
  return mpmath.log(i0q / i0p) + a * (kp - kq * mpmath.cos(mp_ - mq))


REFS = {"weibull": _ref_weibull, "chi2": _ref_chi2, "von_mises": _ref_von_mises}
FUNCS = {"weibull": ps.kl_weibull, "chi2": ps.kl_chi2, "von_mises": ps.kl_von_mises}


def _reference(family, *params):
  """60 digits; more where the textbook formula cancels below 1e-20."""
  with mpmath.workdps(60):
    value = REFS[family](*params)
  if abs(value) < 1e-20:
    with mpmath.workdps(400):
      value = REFS[family](*params)
  return float(value)


def _references(family, params):
  params = np.broadcast_arrays(*[np.asarray(p, np.float64) for p in params])
  flat = [p.ravel() for p in params]
  out = [_reference(family, *vals) for vals in zip(*flat, strict=True)]
  return np.array(out).reshape(params[0].shape)


# ----------------------------------------------------------------------------
# Other libraries.


def _random_params(family, shapes, seed):
  rng = np.random.default_rng(seed)
  if family == "chi2":
    return [rng.uniform(0.3, 12.0, s) for s in shapes]
  if family == "weibull":
    return [rng.uniform(0.3, 4.0, s) for s in shapes]
  return [
    rng.uniform(-np.pi, np.pi, shapes[0]),
    rng.uniform(0.0, 8.0, shapes[1]),
    rng.uniform(-np.pi, np.pi, shapes[2]),
    rng.uniform(0.0, 8.0, shapes[3]),
  ]


def _library_kl(family, params):
  params = np.broadcast_arrays(*[np.array(p, np.float64) for p in params])
  if family == "chi2":
    t = [torch.as_tensor(np.array(p)) for p in params]
    return td.kl_divergence(td.Chi2(t[0]), td.Chi2(t[1])).numpy()
  with jax.enable_x64(True):
    j = [jnp.asarray(p) for p in params]
    if family == "weibull":
      p, q = tfd.Weibull(j[1], j[0]), tfd.Weibull(j[3], j[2])
    else:
      p, q = tfd.VonMises(j[0], j[1]), tfd.VonMises(j[2], j[3])
    return np.asarray(tfd.kl_divergence(p, q))


FAMILIES = ["weibull", "chi2", "von_mises"]


def _shapes(family):
  if family == "chi2":
    return [((7,), (7,)), ((2, 1), (3,)), ((), (2, 3))]
  return [((7,),) * 4, ((2, 1), (3,), (), (2, 3))]


@pytest.mark.parametrize(
  ("family", "shapes"), [(f, s) for f in FAMILIES for s in _shapes(f)]
)
def test_matches_tfp_and_torch(x64, family, shapes):
  params = _random_params(family, shapes, FAMILIES.index(family))
  got = np.asarray(FUNCS[family](*params))
  want = _library_kl(family, params)
  assert got.shape == want.shape == np.broadcast_shapes(*shapes)
  # (torch's and TFP's textbook formulas cancel: ~1e-16 absolute)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_von_mises_matches_tfp_at_large_concentrations(x64):
  # TFP evaluates log I0 with i0e as well: comparable where it does not
  # cancel (different locations, or concentrations apart).
  kp = np.array([1e-6, 1e-3, 50.0, 1e3, 1e5, 1e6, 2e6])
  kq = np.array([3.0, 1e-2, 80.0, 3e3, 1e4, 3e6, 1e6])
  args = [np.zeros(7), kp, np.full(7, 0.3), kq]
  np.testing.assert_allclose(
    np.asarray(ps.kl_von_mises(*args)), _library_kl("von_mises", args), rtol=1e-9
  )


def test_chi2_gamma_pairs_match_torch(x64):
  rng = np.random.default_rng(4)
  df = rng.uniform(0.5, 9, 7)
  a, b = rng.uniform(0.3, 5, (2, 7))
  T = torch.as_tensor
  got = ps.PAIRS[("chi2", "gamma")](
    {"df": jnp.asarray(df)}, {"concentration": jnp.asarray(a), "rate": jnp.asarray(b)}
  )
  want = td.kl_divergence(td.Chi2(T(df)), td.Gamma(T(a), T(b))).numpy()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
  got = ps.PAIRS[("gamma", "chi2")](
    {"concentration": jnp.asarray(a), "rate": jnp.asarray(b)}, {"df": jnp.asarray(df)}
  )
  want = td.kl_divergence(td.Gamma(T(a), T(b)), td.Chi2(T(df))).numpy()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


# ----------------------------------------------------------------------------
# Accuracy against mpmath on extreme and near-equal grids.

RELATIVE = [0.0, 1e-7, -3e-6, 1e-4, -1e-2, 0.1]


def _near_far(v, far=(3.0, 1 / 7, 30.0)):
  return [v * (1 + r) for r in RELATIVE] + [v * f for f in far]


def _grid(family):
  out = []
  if family == "chi2":
    for v in [1e-3, 0.1, 1.0, 30.0, 1e3, 1e6]:
      out += [(v, w) for w in _near_far(v)]
    return out
  if family == "weibull":
    for lam in [1e-2, 1.0, 1e2]:
      for k in [1e-2, 0.5, 1.0, 7.0, 1e2]:
        for kq in _near_far(k, far=(3.0, 1 / 7)):
          for lq in [lam, lam * (1 + 1e-6), lam * 1.3, lam / 2]:
            out.append((lam, k, lq, kq))
    return out
  for k in [0.0, 1e-6, 1e-3, 0.5, 2.0, 11.0, 13.0, 29.0, 31.0, 100.0, 1e4, 1e6]:
    others = _near_far(k) if k > 0 else [0.0, 1e-6, 0.3, 5.0, 1e3]
    for kq in others:
      for shift in [0.0, 1e-6, 0.3, 3.0]:
        out.append((0.1, k, 0.1 + shift, kq))
  return out


# Documented bounds (the docstrings): relative error vs mpmath.
BOUNDS = {
  "weibull": {np.float64: 2e-14, np.float32: 5e-6},
  "chi2": {np.float64: 1e-11, np.float32: 1e-4},  # kl_gamma's (module docs)
  "von_mises": {np.float64: 1e-12, np.float32: 1e-4},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_accuracy_against_mpmath(x64, family, dtype):
  grid = np.array(_grid(family), dtype=dtype)
  params = [grid[:, i] for i in range(grid.shape[1])]
  got = np.asarray(FUNCS[family](*params)).astype(np.float64)
  want = _references(family, params)
  finite = want <= np.finfo(dtype).max  # beyond: inf in this dtype
  assert np.array_equal(np.isfinite(got), finite)
  assert (got >= 0).all()
  err = np.abs(got - want)[finite]
  rel = err / np.where(want[finite] > 0, want[finite], 1)
  worst = int(np.argmax(rel))
  assert (err <= BOUNDS[family][dtype] * want[finite]).all(), (
    family,
    rel[worst],
    grid[finite][worst],
  )


def _quad_density(logp, logq, points):
  """``int p phi(q/p) = int (p log(p/q) + q - p)`` by mpmath.quad (40
  digits), ``points`` splitting the range."""
  with mpmath.workdps(40):

    def integrand(x):
      lp, lq = logp(x), logq(x)
      d = lq - lp
      if d > 1:  # q >> p: no cancellation
        return mpmath.exp(lq) - mpmath.exp(lp) * (1 + d)
      return mpmath.exp(lp) * (mpmath.expm1(d) - d)

    return float(mpmath.quad(integrand, sorted(set(points))))


def _quad_weibull(lp, kp, lq, kq):
  """In t = log x: density k exp(k (t - log l) - exp(k (t - log l)))."""
  lp, kp, lq, kq = map(_mpf, (lp, kp, lq, kq))

  def logpdf(t, lam, k):
    u = k * (t - mpmath.log(lam))
    return mpmath.log(k) + u - mpmath.exp(u)

  steps = [-30, -10, -3, -1, 0, 1, 2, 4]
  points = [mpmath.log(lam) + s / k for lam, k in ((lp, kp), (lq, kq)) for s in steps]
  return _quad_density(lambda t: logpdf(t, lp, kp), lambda t: logpdf(t, lq, kq), points)


def _quad_von_mises(mp_, kp, mq, kq):
  mp_, kp, mq, kq = map(_mpf, (mp_, kp, mq, kq))

  with mpmath.workdps(40):
    log_norm = {
      k: mpmath.log(2 * mpmath.pi * mpmath.besseli(0, k) * mpmath.exp(-k))
      for k in (kp, kq)
    }

  def logpdf(x, m, k):
    return k * (mpmath.cos(x - m) - 1) - log_norm[k]

  width = 1 / mpmath.sqrt(max(kp, kq, 1))
  points = [mp_ - mpmath.pi, mp_ + mpmath.pi]
  points += [c + s * width for c in (mp_, mq) for s in (-30, -5, -1, 0, 1, 5, 30)]
  points = [x for x in points if mp_ - mpmath.pi <= x <= mp_ + mpmath.pi]
  return _quad_density(
    lambda x: logpdf(x, mp_, kp), lambda x: logpdf(x, mq, kq), points
  )


QUAD_CASES = {
  "weibull": (
    _quad_weibull,
    [(1.0, 2.0, 1.0 + 1e-6, 2.0 + 3e-6), (2.0, 0.7, 1.0, 3.0), (1.0, 30.0, 1.5, 2.0)],
  ),
  "von_mises": (
    _quad_von_mises,
    [
      (0.1, 2.0, 0.1 + 1e-6, 2.0 + 1e-6),
      (0.1, 1e-6, 2.0, 3.0),
      (0.1, 1e4, 0.1 + 1e-3, 1.2e4),
      (0.1, 1e6, 0.1, 1e6 * (1 + 1e-5)),
      (0.0, 40.0, 3.0, 0.5),
    ],
  ),
}


@pytest.mark.parametrize("family", sorted(QUAD_CASES))
def test_matches_numerical_integration(x64, family):
  quad, cases = QUAD_CASES[family]
  for params in cases:
    want = quad(*params)
    got = float(FUNCS[family](*[np.float64(v) for v in params]))
    assert want > 0
    # (the quadrature of a near-equal pair's small integrand is good to
    # ~1e-11; the closed-form reference, checked here, to 50 digits)
    np.testing.assert_allclose(got, want, rtol=1e-10, err_msg=str(params))
    np.testing.assert_allclose(_reference(family, *params), want, rtol=1e-10)
    np.testing.assert_allclose(got, _reference(family, *params), rtol=1e-13)


# ----------------------------------------------------------------------------
# Zeros, degenerate parameters, gradients, dtypes.


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_identical_parameters_give_exact_zero(x64, family, dtype):
  n = 2 if family == "chi2" else 4
  params = _random_params(family, [(7,)] * n, 3)
  for scale in (1.0, 1e4, 1e-4):
    p = [jnp.asarray(v * scale, dtype) for v in params[: n // 2]]
    out = FUNCS[family](*p, *p)
    assert out.dtype == dtype
    assert (np.asarray(out, np.float64) == 0).all()


def test_von_mises_zero_and_infinite_concentrations(x64):
  f64 = np.float64
  # uniform vs von Mises: log I0(k); von Mises vs uniform: k A(k) - log I0(k)
  k = 2.5
  i0, i1 = mpmath.besseli(0, k), mpmath.besseli(1, k)
  np.testing.assert_allclose(
    float(ps.kl_von_mises(f64(0), f64(0), f64(1), f64(k))),
    float(mpmath.log(i0)),
    rtol=1e-14,
  )
  np.testing.assert_allclose(
    float(ps.kl_von_mises(f64(0), f64(k), f64(1), f64(0))),
    float(k * i1 / i0 - mpmath.log(i0)),
    rtol=1e-14,
  )
  got = ps.kl_von_mises(
    jnp.zeros(3),
    jnp.array([inf, inf, 1.0]),
    jnp.array([0.0, 1.0, 0.0]),
    jnp.array([inf, inf, inf]),
  )
  np.testing.assert_array_equal(np.asarray(got), [0.0, inf, inf])


def test_weibull_degenerate_and_overflow(x64):
  got = ps.kl_weibull(
    jnp.array([0.0, 0.0, 1.0, 1.0]),
    jnp.array([1.0, 1.0, 1.0, 1e-3]),
    jnp.array([0.0, 1.0, 1.0, 1.0]),
    jnp.array([1.0, 1.0, 0.0, 10.0]),
  )
  # point mass vs itself: 0; vs a Weibull: inf; k_q = 0: inf; Gamma(1 + 1e4)
  # overflows: inf (not NaN)
  np.testing.assert_array_equal(np.asarray(got), [0.0, inf, inf, inf])


GRAD_POINTS = {
  "weibull": (1.3, 2.0, 0.8, 1.5),
  "chi2": (2.5, 4.0),
  "von_mises": (0.2, 50.0, 0.3, 60.0),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients(x64, family):
  point = tuple(np.float64(v) for v in GRAD_POINTS[family])
  check_grads(FUNCS[family], point, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
  # At P = Q: zero gradient (a minimum), finite.
  half = len(point) // 2
  grad = jax.grad(FUNCS[family], argnums=tuple(range(len(point))))(*point[:half] * 2)
  np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-10)


def test_gradients_match_tfp(x64):
  # Weibull with equal scales (the scale's gradient is not 0 there).
  point = [np.float64(v) for v in (1.3, 2.0, 1.3, 1.5)]
  got = jax.grad(ps.kl_weibull, argnums=(0, 1, 2, 3))(*point)
  want = jax.grad(
    lambda a, b, c, d: tfd.kl_divergence(tfd.Weibull(b, a), tfd.Weibull(d, c)),
    argnums=(0, 1, 2, 3),
  )(*point)
  assert np.asarray(want)[0] != 0
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10)
  for point in [(0.2, 3.0, -0.4, 1.5), (0.2, 1e-3, 1.0, 2.0)]:
    point = [np.float64(v) for v in point]
    got = jax.grad(ps.kl_von_mises, argnums=(0, 1, 2, 3))(*point)
    want = jax.grad(
      lambda a, b, c, d: tfd.kl_divergence(tfd.VonMises(a, b), tfd.VonMises(c, d)),
      argnums=(0, 1, 2, 3),
    )(*point)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9)
  # The uniform distribution (concentration 0) as P or Q: finite gradients.
  for point in [(0.2, 0.0, 0.3, 1.5), (0.2, 1.5, 0.3, 0.0)]:
    grad = jax.grad(ps.kl_von_mises, argnums=(0, 1, 2, 3))(*map(np.float64, point))
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("family", FAMILIES)
def test_low_precision_dtypes(x64, family, dtype):
  n = 2 if family == "chi2" else 4
  params = _random_params(family, [(7,)] * n, 11)
  low = [jnp.asarray(v, dtype) for v in params]
  got = FUNCS[family](*low)
  assert got.dtype == dtype
  want = _library_kl(family, [np.asarray(v, np.float64) for v in low])
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=1e-7)


def test_jit_vmap_and_broadcasting(x64):
  loc = jnp.linspace(-1, 1, 4)
  kappa = jnp.linspace(0.5, 40, 4)
  eager = ps.kl_von_mises(loc, kappa, 0.3, 1.1)
  jitted = jax.jit(ps.kl_von_mises)(loc, kappa, 0.3, 1.1)
  mapped = jax.vmap(ps.kl_von_mises, in_axes=(0, 0, None, None))(loc, kappa, 0.3, 1.1)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-14)
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(eager), rtol=1e-14)
  assert ps.kl_chi2(jnp.ones((2, 1)), jnp.ones(3)).shape == (2, 3)
  with pytest.raises(ValueError, match="broadcast"):
    ps.kl_weibull(jnp.ones(2), jnp.ones(3), 1.0, 1.0)
  with pytest.raises(TypeError, match="floating"):
    ps.kl_chi2(1, 2.0)


def test_registry_pairs(x64):
  assert set(ps.PAIRS) == {
    ("exponential", "exponential"),
    ("gamma", "gamma"),
    ("chi2", "chi2"),
    ("chi2", "gamma"),
    ("gamma", "chi2"),
    ("beta", "beta"),
    ("dirichlet", "dirichlet"),
    ("laplace", "laplace"),
    ("weibull", "weibull"),
    ("von_mises", "von_mises"),
  }
  rng = np.random.default_rng(0)
  x = [jnp.asarray(v) for v in rng.uniform(0.5, 3.0, (4, 7))]
  vec = [jnp.asarray(v) for v in rng.uniform(0.5, 3.0, (2, 7, 4))]
  cases = {
    "exponential": ({"rate": x[0]}, {"rate": x[1]}, jaxkl.kl_exponential(x[0], x[1])),
    "gamma": (
      {"concentration": x[0], "rate": x[1]},
      {"concentration": x[2], "rate": x[3]},
      jaxkl.kl_gamma(*x),
    ),
    "chi2": ({"df": x[0]}, {"df": x[1]}, ps.kl_chi2(x[0], x[1])),
    "beta": (
      {"concentration1": x[0], "concentration0": x[1]},
      {"concentration1": x[2], "concentration0": x[3]},
      jaxkl.kl_beta(*x),
    ),
    "dirichlet": (
      {"concentration": vec[0]},
      {"concentration": vec[1]},
      jaxkl.kl_dirichlet(*vec),
    ),
    "laplace": (
      {"loc": x[0], "scale": x[1]},
      {"loc": x[2], "scale": x[3]},
      jaxkl.kl_laplace(*x),
    ),
    "weibull": (
      {"scale": x[0], "concentration": x[1]},
      {"scale": x[2], "concentration": x[3]},
      ps.kl_weibull(*x),
    ),
    "von_mises": (
      {"loc": x[0], "concentration": x[1]},
      {"loc": x[2], "concentration": x[3]},
      ps.kl_von_mises(*x),
    ),
  }
  for family, (p, q, want) in cases.items():
    got = ps.PAIRS[(family, family)](p, q)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  got = ps.PAIRS[("chi2", "gamma")]({"df": x[0]}, {"concentration": x[1], "rate": x[2]})
  np.testing.assert_array_equal(
    np.asarray(got), np.asarray(jaxkl.kl_gamma(x[0] / 2, jnp.full(7, 0.5), x[1], x[2]))
  )


# ----------------------------------------------------------------------------
# Hypothesis: wide parameter ranges.

rel = st.one_of(st.just(0.0), st.floats(-0.5, 0.5), st.floats(-1e-6, 1e-6))


def _check_against_reference(family, args, bound=1e-11):
  # XLA reads subnormal inputs as 0 (documented): so does the reference.
  args = tuple(0.0 if abs(a) < TINY64 else a for a in args)
  with jax.enable_x64(True):
    got = float(FUNCS[family](*[np.float64(a) for a in args]))
  want = _reference(family, *args)
  assert got >= 0
  if want == inf:
    assert got == inf
  else:
    # (results below float64's smallest normal number are flushed to 0)
    assert abs(got - want) <= bound * want + 2.3e-308, (args, got, want)


@settings(max_examples=30, deadline=None)
@given(st.floats(-2, 2), st.floats(-1.5, 1.5), rel, st.floats(-1, 1), rel)
def test_property_weibull(l_lam, l_k, r_k, l_lq, r_lq):
  lam, k = 10.0**l_lam, 10.0**l_k
  kq = k * (1 + r_k) if abs(r_k) < 0.4 else k * 10.0**r_k
  lq = lam * 10.0 ** (l_lq / 4) * (1 + r_lq)
  _check_against_reference("weibull", (lam, k, lq, kq))
  assert float(ps.kl_weibull(lam, k, lam, k)) == 0


@settings(max_examples=30, deadline=None)
@given(st.floats(-3, 6), rel, st.floats(-3, 3))
def test_property_chi2(l_df, r, l_far):
  df = 10.0**l_df
  _check_against_reference("chi2", (df, df * (1 + r)))
  _check_against_reference("chi2", (df, df * 10.0**l_far))
  assert float(ps.kl_chi2(df, df)) == 0


@settings(max_examples=30, deadline=None)
@given(st.floats(-6, 6), rel, st.floats(-4, 4), st.floats(-3.2, 3.2))
def test_property_von_mises(l_k, r, l_far, shift):
  k = 10.0**l_k
  _check_against_reference("von_mises", (0.2, k, 0.2, k * (1 + r)))
  _check_against_reference("von_mises", (0.2, k, 0.2 + shift, k * 10.0**l_far))
  _check_against_reference("von_mises", (0.2, k, 0.2 + shift * 1e-4, k * (1 + r)))
  assert float(ps.kl_von_mises(shift, k, shift, k)) == 0
