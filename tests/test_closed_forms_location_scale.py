"""Closed forms of jaxkl/_closed_forms/location_scale.py: Gumbel, Cauchy,
half-normal, log-normal, uniform, Pareto.

References: ``torch.distributions.kl_divergence`` in float64 (every pair here
is registered there), the textbook formulas evaluated by mpmath at 50 digits
on the rounded parameters, and mpmath numerical integration (``mpmath.quad``
at 40 digits) of :math:`\\int p\\,\\varphi(q/p)`, :math:`\\varphi(t) = t - 1 -
\\log t`, at extreme and near-equal parameters (which also checks the
textbook formulas themselves).
"""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import torch
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxkl._closed_forms import location_scale as ls

td = torch.distributions
mp = mpmath.mp
inf = np.inf
TINY64 = float(np.finfo(np.float64).tiny)


def _mpf(x):
  return mpmath.mpf(float(x))


# ----------------------------------------------------------------------------
# mpmath references (textbook formulas, 50 digits, rounded parameters).


def _ref_gumbel(lp, sp, lq, sq):
  lp, sp, lq, sq = map(_mpf, (lp, sp, lq, sq))
  r = sp / sq
  delta = (lp - lq) / sq
  return (
    -mpmath.log(r)
    + delta
    + mpmath.euler * (r - 1)
    + mpmath.exp(-delta + mpmath.loggamma(1 + r))
    - 1
  )


def _ref_cauchy(lp, sp, lq, sq):
  lp, sp, lq, sq = map(_mpf, (lp, sp, lq, sq))
  return mpmath.log(((sp + sq) ** 2 + (lp - lq) ** 2) / (4 * sp * sq))


def _ref_half_normal(sp, sq):
  sp, sq = _mpf(sp), _mpf(sq)
  return mpmath.log(sq / sp) + sp**2 / (2 * sq**2) - mpmath.mpf(1) / 2


def _ref_log_normal(lp, sp, lq, sq):
  lp, sp, lq, sq = map(_mpf, (lp, sp, lq, sq))
  return (
    mpmath.log(sq / sp) + (sp**2 + (lp - lq) ** 2) / (2 * sq**2) - mpmath.mpf(1) / 2
  )


def _ref_uniform(ap, bp, aq, bq):
  ap, bp, aq, bq = map(_mpf, (ap, bp, aq, bq))
  if aq > ap or bp > bq:
    return mpmath.inf
  return mpmath.log((bq - aq) / (bp - ap))


def _ref_pareto(xp, ap, xq, aq):
  xp, ap, xq, aq = map(_mpf, (xp, ap, xq, aq))
  if xp < xq:
    return mpmath.inf
  t = aq / ap
  return aq * mpmath.log(xp / xq) + t - 1 - mpmath.log(t)


REFS = {
  "gumbel": _ref_gumbel,
  "cauchy": _ref_cauchy,
  "half_normal": _ref_half_normal,
  "log_normal": _ref_log_normal,
  "uniform": _ref_uniform,
  "pareto": _ref_pareto,
}

FUNCS = {
  "gumbel": ls.kl_gumbel,
  "cauchy": ls.kl_cauchy,
  "half_normal": ls.kl_half_normal,
  "log_normal": ls.kl_log_normal,
  "uniform": ls.kl_uniform,
  "pareto": ls.kl_pareto,
}


def _reference(family, *params):
  """50 digits; more where the textbook formula cancels below 1e-20."""
  with mpmath.workdps(50):
    value = REFS[family](*params)
  if abs(value) < 1e-20:
    with mpmath.workdps(400):
      value = REFS[family](*params)
  return float(value)


def _references(family, params):
  """Elementwise mpmath references of broadcast NumPy parameters."""
  params = np.broadcast_arrays(*[np.asarray(p, np.float64) for p in params])
  flat = [p.ravel() for p in params]
  out = [_reference(family, *vals) for vals in zip(*flat, strict=True)]
  return np.array(out).reshape(params[0].shape)


# ----------------------------------------------------------------------------
# Torch, float64.


def T(x):
  return torch.as_tensor(np.array(x, np.float64))


def _torch_kl(family, params):
  def make(args):
    if family == "gumbel":
      return td.Gumbel(T(args[0]), T(args[1]))
    if family == "cauchy":
      return td.Cauchy(T(args[0]), T(args[1]))
    if family == "half_normal":
      return td.HalfNormal(T(args[0]))
    if family == "log_normal":
      return td.LogNormal(T(args[0]), T(args[1]))
    if family == "uniform":
      return td.Uniform(T(args[0]), T(args[1]), validate_args=False)
    return td.Pareto(T(args[0]), T(args[1]))

  half = len(params) // 2
  params = np.broadcast_arrays(*[np.asarray(p, np.float64) for p in params])
  return td.kl_divergence(make(params[:half]), make(params[half:])).numpy()


def _random_params(family, shapes, seed):
  rng = np.random.default_rng(seed)
  if family == "half_normal":
    return [rng.uniform(0.2, 4.0, s) for s in shapes]
  if family == "uniform":
    a_p = rng.uniform(0, 1, shapes[0])
    b_p = a_p + rng.uniform(0.1, 1, shapes[1])
    a_q = rng.uniform(-1, 0.5, shapes[2])
    b_q = a_q + rng.uniform(1, 3, shapes[3])
    return [a_p, b_p, a_q, b_q]  # some inside (finite), some not (inf)
  if family == "pareto":
    return [
      rng.uniform(0.5, 3, shapes[0]),
      rng.uniform(0.2, 5, shapes[1]),
      rng.uniform(0.5, 3, shapes[2]),
      rng.uniform(0.2, 5, shapes[3]),
    ]
  return [
    rng.normal(0, 1.5, shapes[0]),
    rng.uniform(0.2, 4.0, shapes[1]),
    rng.normal(0, 1.5, shapes[2]),
    rng.uniform(0.2, 4.0, shapes[3]),
  ]


FOUR = ["gumbel", "cauchy", "log_normal", "uniform", "pareto"]
ALL = [*FOUR, "half_normal"]


def _shapes(family):
  if family == "half_normal":
    return [((7,), (7,)), ((2, 1), (3,)), ((), (2, 3))]
  if family == "uniform":
    return [((7,),) * 4, ((2, 1), (2, 1), (3,), (3,))]
  return [((7,),) * 4, ((2, 1), (3,), (), (2, 3))]


@pytest.mark.parametrize(
  ("family", "shapes"), [(f, s) for f in ALL for s in _shapes(f)]
)
def test_matches_torch(x64, family, shapes):
  params = _random_params(family, shapes, seed=ALL.index(family))
  got = np.asarray(FUNCS[family](*params))
  want = _torch_kl(family, params)
  assert got.shape == want.shape == np.broadcast_shapes(*shapes)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
  if family in ("uniform", "pareto") and len(set(shapes)) == 1:
    assert np.isinf(want).any() and np.isfinite(want).any()


# ----------------------------------------------------------------------------
# Accuracy against mpmath on extreme and near-equal grids.

RELATIVE = [0.0, 1e-7, -3e-6, 1e-4, -1e-2, 0.1]
FAR = [3.0, 1 / 7, 30.0]
SCALES = [1e-3, 0.1, 1.0, 30.0, 1e3]


def _near_far(v):
  return [v * (1 + r) for r in RELATIVE] + [v * f for f in FAR]


def _grid(family):
  """Parameter tuples (P then Q) spanning extreme and near-equal pairs."""
  out = []
  if family == "half_normal":
    for s in [1e-6, *SCALES, 1e6]:
      out += [(s, t) for t in _near_far(s)]
    return out
  if family == "uniform":
    for a in [-1e3, -1.0, 0.0, 0.5]:
      for w in [1e-3, 1.0, 1e3]:
        for r in [0.0, 1e-7, 1e-4, 0.3, 10.0]:
          out.append((a, a + w, a - r * w / 2, a + w + r * w / 2))
          out.append((a, a + w, a, a + w * (1 + r)))
    return out
  if family == "pareto":
    for x in [1e-3, 1.0, 1e3]:
      for a in [1e-2, 1.0, 1e2]:
        for xq in _near_far(x):
          if xq <= x:
            out += [(x, a, xq, b) for b in _near_far(a)[::2]]
    return out
  # location-scale: locations 0 or shifted relative to the scale.
  if family == "gumbel":
    scales = [1e-2, 0.1, 1.0, 30.0, 1e3]
    far = [1.7, 1 / 7, 20.0]
  else:
    scales = SCALES
    far = FAR
  for s in scales:
    for t in [s * (1 + r) for r in RELATIVE] + [s * f for f in far]:
      for shift in [0.0, 1e-7, -1e-3, 0.5, -3.0]:
        out.append((0.0, s, shift * s, t))
  out.append((1e6, 1.0, 1e6 + 1.0, 1.0))
  return out


# Documented bounds (the docstrings): relative error vs mpmath.
TIGHT = {np.float64: 1e-15, np.float32: 5e-7}
BOUNDS = {
  "gumbel": {np.float64: 2e-14, np.float32: 5e-6},
  "cauchy": TIGHT,
  "half_normal": TIGHT,
  "log_normal": TIGHT,
  "uniform": TIGHT,
  "pareto": TIGHT,
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("family", ALL)
def test_accuracy_against_mpmath(x64, family, dtype):
  grid = np.array(_grid(family), dtype=dtype)
  params = [grid[:, i] for i in range(grid.shape[1])]
  got = np.asarray(FUNCS[family](*params)).astype(np.float64)
  want = _references(family, params)
  finite = np.isfinite(want)
  assert np.array_equal(np.isfinite(got), finite)
  assert (got >= 0).all()
  err = np.abs(got[finite] - want[finite])
  assert (err <= BOUNDS[family][dtype] * want[finite]).all(), (
    family,
    np.max(err / np.where(want[finite] > 0, want[finite], 1)),
    grid[finite][np.argmax(err / np.where(want[finite] > 0, want[finite], 1))],
  )


def _quad_kl(sample, log_ratio, points, weight=None):
  """``int phi(q/p)(x(u)) w(u) du`` by mpmath.quad (40 digits), ``x(u)`` a
  parametrization of P (its quantile function, ``w = 1``, by default).

  Points so far in a tail that ``x(u)`` rounds to an infinite value carry
  negligible weight and are skipped.
  """
  with mpmath.workdps(40):

    def integrand(u):
      x = sample(u)
      if not mpmath.isfinite(x):
        return mpmath.mpf(0)
      lr = log_ratio(x)
      if not mpmath.isfinite(lr):
        return mpmath.mpf(0)
      value = mpmath.expm1(lr) - lr
      return value if weight is None else value * weight(u)

    return float(mpmath.quad(integrand, points))


def _quantile_points():
  e = mpmath.mpf
  return [0, e("1e-12"), e("1e-4"), 0.1, 0.5, 0.9, 1 - e("1e-4"), 1]


def _normal_points():
  return [-mpmath.inf, -12, -4, -1, 0, 1, 4, 12, mpmath.inf]


def _normal_weight(z):
  return mpmath.exp(-(z**2) / 2) / mpmath.sqrt(2 * mpmath.pi)


def _quad_density(logp, logq, points):
  """``int p phi(q/p) dx = int (p log(p/q) + q - p) dx`` over the union of
  the supports (``logp = -inf`` outside P's: there the integrand is ``q``),
  by mpmath.quad (40 digits) with ``points`` splitting the real line."""
  with mpmath.workdps(40):

    def integrand(x):
      lp, lq = logp(x), logq(x)
      if lp == -mpmath.inf:
        return mpmath.exp(lq)
      d = lq - lp
      if d > 1:  # q >> p: no cancellation, and e^lp e^d would lose q
        return mpmath.exp(lq) - mpmath.exp(lp) * (1 + d)
      return mpmath.exp(lp) * (mpmath.expm1(d) - d)

    return float(mpmath.quad(integrand, sorted(set(points))))


def _quad_gumbel(lp, sp, lq, sq):
  lp, sp, lq, sq = map(_mpf, (lp, sp, lq, sq))

  def logpdf(x, l, s):
    z = (x - l) / s
    return -mpmath.log(s) - z - mpmath.exp(-z)

  # Both densities are below e^-140 outside [min(l - 5 s), max(l + 150 s)]
  # (and exp(-exp(-z)) cannot be evaluated far to the left).
  steps = [-5, -3, -1, 0, 1, 3, 10, 30, 150]
  points = [l + s * k for l, s in ((lp, sp), (lq, sq)) for k in steps]
  lo = min(lp - 5 * sp, lq - 5 * sq)
  hi = max(lp + 150 * sp, lq + 150 * sq)
  return _quad_density(
    lambda x: logpdf(x, lp, sp),
    lambda x: logpdf(x, lq, sq),
    [x for x in points if lo <= x <= hi],
  )


def _quad_cauchy(lp, sp, lq, sq):
  lp, sp, lq, sq = map(_mpf, (lp, sp, lq, sq))

  def logpdf(x, l, s):
    return -mpmath.log(mpmath.pi * s * (1 + ((x - l) / s) ** 2))

  return _quad_kl(
    lambda u: lp + sp * mpmath.tan(mpmath.pi * (u - mpmath.mpf(1) / 2)),
    lambda x: logpdf(x, lq, sq) - logpdf(x, lp, sp),
    _quantile_points(),
  )


def _quad_half_normal(sp, sq):
  sp, sq = _mpf(sp), _mpf(sq)
  return _quad_kl(
    lambda z: sp * z,
    lambda x: mpmath.log(sp / sq) - x**2 / (2 * sq**2) + x**2 / (2 * sp**2),
    [0, 1, 4, 12, mpmath.inf],
    lambda z: 2 * _normal_weight(z),
  )


def _quad_log_normal(lp, sp, lq, sq):
  lp, sp, lq, sq = map(_mpf, (lp, sp, lq, sq))

  def logpdf(y, l, s):  # in y = log x (the Jacobian 1/x cancels in q/p)
    return -mpmath.log(s) - (y - l) ** 2 / (2 * s**2)

  return _quad_kl(
    lambda z: lp + sp * z,
    lambda y: logpdf(y, lq, sq) - logpdf(y, lp, sp),
    _normal_points(),
    _normal_weight,
  )


def _quad_pareto(xp, ap, xq, aq):
  """In t = log x (densities a exp(-a (t - log x_m)) on t >= log x_m)."""
  xp, ap, xq, aq = map(_mpf, (xp, ap, xq, aq))
  tp, tq = mpmath.log(xp), mpmath.log(xq)

  def logpdf(t, t0, a):
    return mpmath.log(a) - a * (t - t0) if t >= t0 else -mpmath.inf

  steps = [0, 0.1, 1, 3, 10, 30, 100, 300]
  points = [t0 + k / a for t0, a in ((tp, ap), (tq, aq)) for k in steps]
  return _quad_density(
    lambda t: logpdf(t, tp, ap),
    lambda t: logpdf(t, tq, aq),
    [*points, mpmath.inf],
  )


QUAD_CASES = {
  "gumbel": (
    _quad_gumbel,
    [(0.0, 1.0, 1e-6, 1.0 + 1e-6), (0.0, 1e-2, 0.0, 1.0), (0.5, 3.0, -0.5, 0.7)],
  ),
  "cauchy": (
    _quad_cauchy,
    [(0.0, 1.0, 1e-5, 1.0 + 1e-6), (0.0, 1e-3, 50.0, 1e3), (1.0, 2.0, -1.0, 0.5)],
  ),
  "half_normal": (_quad_half_normal, [(1.0, 1.0 + 1e-6), (1e-3, 1.0), (2.0, 0.5)]),
  "log_normal": (
    _quad_log_normal,
    [(0.0, 1.0, 1e-6, 1.0 + 2e-6), (0.0, 0.01, 0.5, 2.0), (1.0, 0.5, -1.0, 0.4)],
  ),
  "pareto": (
    _quad_pareto,
    [(1.0, 2.0, 1.0 - 1e-7, 2.0 + 1e-6), (100.0, 0.5, 1.0, 3.0), (2.0, 30.0, 1.0, 0.1)],
  ),
}


@pytest.mark.parametrize("family", sorted(QUAD_CASES))
def test_matches_numerical_integration(x64, family):
  quad, cases = QUAD_CASES[family]
  for params in cases:
    want = quad(*params)
    got = float(FUNCS[family](*[np.float64(v) for v in params]))
    assert want > 0
    np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=str(params))
    np.testing.assert_allclose(_reference(family, *params), want, rtol=1e-12)


# ----------------------------------------------------------------------------
# Exact zeros, support mismatch, degenerate parameters.


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
@pytest.mark.parametrize("family", ALL)
def test_identical_parameters_give_exact_zero(x64, family, dtype):
  params = _random_params(family, [(7,)] * (2 if family == "half_normal" else 4), 3)
  half = len(params) // 2
  p = [jnp.asarray(v, dtype) for v in params[:half]]
  big = [jnp.asarray(v * 1e4, dtype) for v in params[:half]]
  for ps in (p, big):
    out = FUNCS[family](*ps, *ps)
    assert out.dtype == dtype
    assert (np.asarray(out, np.float64) == 0).all()


def test_support_mismatch_is_inf(x64):
  # Uniform: P's interval not inside Q's.
  got = ls.kl_uniform(
    jnp.array([0.0, -0.1, 0.0, 0.0]),
    jnp.array([2.0, 1.0, 1.0, 1.0 + 1e-12]),
    jnp.array([0.0, 0.0, 0.0, 0.0]),
    jnp.array([1.0, 1.0, 1.0, 1.0]),
  )
  np.testing.assert_array_equal(np.asarray(got), [inf, inf, 0.0, inf])
  # Pareto: P's minimum below Q's (torch's rule).
  got = ls.kl_pareto(
    jnp.array([1.0, 1.0 - 1e-12, 2.0]),
    jnp.array([2.0, 2.0, 2.0]),
    jnp.array([1.0, 1.0, 1.0]),
    jnp.array([2.0, 2.0, 2.0]),
  )
  assert got[0] == 0 and got[1] == inf and 0 < got[2] < inf
  # The gradient is finite where the value is, also next to infinite ones.
  grad = jax.grad(
    lambda a: jnp.sum(
      jnp.where(
        jnp.isfinite(
          v := ls.kl_pareto(
            jnp.array([1.0, 2.0]), a, jnp.array([1.5, 1.0]), jnp.array([1.0, 3.0])
          )
        ),
        v,
        0,
      )
    )
  )(jnp.array([2.0, 2.0]))
  assert np.isfinite(np.asarray(grad)).all()


def test_point_masses(x64):
  zero = jnp.zeros(3)
  one = jnp.ones(3)
  locs = jnp.array([0.0, 1.0, 0.0])
  scales = jnp.array([0.0, 0.0, 1.0])
  for f in (ls.kl_gumbel, ls.kl_cauchy, ls.kl_log_normal):
    got = np.asarray(f(zero, jnp.array([0.0, 0.0, 0.0]), locs, scales))
    np.testing.assert_array_equal(got, [0.0, inf, inf])
    assert np.asarray(f(zero, one, zero, jnp.zeros(3)) == inf).all()
  np.testing.assert_array_equal(
    np.asarray(
      ls.kl_half_normal(jnp.array([0.0, 0.0, 1.0]), jnp.array([0.0, 1.0, 0.0]))
    ),
    [0.0, inf, inf],
  )
  # zero-width uniform P inside Q
  assert ls.kl_uniform(0.5, 0.5, 0.0, 1.0) == inf
  assert ls.kl_uniform(0.5, 0.5, 0.5, 0.5) == 0


def test_cauchy_overflowing_arguments(x64):
  # a^2 + b^2 overflows: log1p from logarithms.
  for args in [
    (1e300, 1e-300, -1e300, 1.0),
    (0.0, 1e300, 0.0, 1e-300),
    (0.0, 1e-200, 1e200, 1e-200),
  ]:
    got = float(ls.kl_cauchy(*args))
    np.testing.assert_allclose(got, _reference("cauchy", *args), rtol=1e-14)
  got32 = float(
    ls.kl_cauchy(np.float32(0), np.float32(1e-30), np.float32(1e30), np.float32(1))
  )
  np.testing.assert_allclose(got32, _reference("cauchy", 0, 1e-30, 1e30, 1), rtol=1e-6)


def test_gumbel_huge_values_overflow_to_inf(x64):
  # Gamma(1 + r) e^{-delta} beyond the float range: inf, not NaN.
  f64 = np.float64
  assert ls.kl_gumbel(f64(0), f64(1e3), f64(0), f64(1)) == inf
  assert ls.kl_gumbel(f64(0), f64(1), f64(1e3), f64(1)) == inf
  # ... but a large ratio compensated by a shift stays finite.
  args = (1e4, 200.0, 0.0, 1.0)
  got = float(ls.kl_gumbel(*map(f64, args)))
  np.testing.assert_allclose(got, _reference("gumbel", *args), rtol=1e-12)


# ----------------------------------------------------------------------------
# Gradients, dtypes, transformations.

GRAD_POINTS = {
  "gumbel": (0.3, 1.2, -0.4, 0.8),
  "cauchy": (0.3, 1.2, -0.4, 0.8),
  "half_normal": (1.2, 0.8),
  "log_normal": (0.3, 1.2, -0.4, 0.8),
  "uniform": (0.1, 0.9, -0.2, 1.5),
  "pareto": (1.2, 2.0, 1.0, 0.7),
}


@pytest.mark.parametrize("family", ALL)
def test_gradients(x64, family):
  point = tuple(np.float64(v) for v in GRAD_POINTS[family])
  check_grads(FUNCS[family], point, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
  # At P = Q: a minimum, zero gradient (finite, not NaN), except for the
  # uniform and Pareto, whose minimum lies on the support constraint.
  half = len(point) // 2
  same = point[:half] * 2
  grad = np.asarray(jax.grad(FUNCS[family], argnums=tuple(range(len(point))))(*same))
  if family in ("uniform", "pareto"):
    assert np.isfinite(grad).all() and (grad != 0).any()
  else:
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)


def test_gradient_matches_torch_autograd(x64):
  for family in ("gumbel", "cauchy", "log_normal", "pareto"):
    point = [np.float64(v) for v in GRAD_POINTS[family]]
    got = jax.grad(FUNCS[family], argnums=(0, 1, 2, 3))(*point)
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in point]
    make = {
      "gumbel": td.Gumbel,
      "cauchy": td.Cauchy,
      "log_normal": td.LogNormal,
      "pareto": td.Pareto,
    }[family]
    td.kl_divergence(make(*tensors[:2]), make(*tensors[2:])).backward()
    want = [t.grad.item() for t in tensors]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("family", ALL)
def test_low_precision_dtypes(x64, family, dtype):
  shapes = [(7,)] * (2 if family == "half_normal" else 4)
  params = _random_params(family, shapes, 11)
  low = [jnp.asarray(v, dtype) for v in params]
  got = FUNCS[family](*low)
  assert got.dtype == dtype
  want = _torch_kl(family, [np.asarray(v, np.float64) for v in low])
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=0)


def test_jit_vmap_and_broadcasting(x64):
  loc = jnp.linspace(-1, 1, 4)
  scale = jnp.linspace(0.5, 2, 4)
  eager = ls.kl_cauchy(loc, scale, 0.3, 1.1)
  jitted = jax.jit(ls.kl_cauchy)(loc, scale, 0.3, 1.1)
  mapped = jax.vmap(ls.kl_cauchy, in_axes=(0, 0, None, None))(loc, scale, 0.3, 1.1)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-15)
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(eager), rtol=1e-15)
  out = ls.kl_cauchy(jnp.zeros((2, 1)), jnp.ones(3), 0.0, jnp.full((2, 3), 2.0))
  assert out.shape == (2, 3)
  with pytest.raises(ValueError, match="broadcast"):
    ls.kl_uniform(jnp.zeros(2), jnp.ones(3), 0.0, 1.0)
  with pytest.raises(TypeError, match="floating"):
    ls.kl_pareto(1, 1.0, 1.0, 1.0)


def test_registry_pairs(x64):
  expected = {"gumbel", "cauchy", "half_normal", "log_normal", "uniform", "pareto"}
  assert set(ls.PAIRS) == {(f, f) for f in expected}
  names = {
    "gumbel": ("loc", "scale"),
    "cauchy": ("loc", "scale"),
    "half_normal": ("scale",),
    "log_normal": ("loc", "scale"),
    "uniform": ("low", "high"),
    "pareto": ("scale", "alpha"),
  }
  for family, keys in names.items():
    shapes = [(3,)] * (2 * len(keys))
    params = [jnp.asarray(v) for v in _random_params(family, shapes, 5)]
    p = dict(zip(keys, params[: len(keys)], strict=True))
    q = dict(zip(keys, params[len(keys) :], strict=True))
    got = ls.PAIRS[(family, family)](p, q)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(FUNCS[family](*params)))


# ----------------------------------------------------------------------------
# Hypothesis: wide parameter ranges.

log_scale = st.floats(-6.0, 6.0)
rel = st.one_of(st.just(0.0), st.floats(-0.5, 0.5), st.floats(-1e-6, 1e-6))


def _check_against_reference(family, args):
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
    assert abs(got - want) <= 1e-11 * want + 2.3e-308, (args, got, want)


@settings(max_examples=40, deadline=None)
@given(log_scale, rel, st.floats(-5, 5), rel)
def test_property_gumbel(ls_p, r, shift, rl):
  sp = 10.0**ls_p / 30  # scales 3e-8 .. 3e4
  sq = sp * (1 + r) if abs(r) < 0.4 else sp * 10.0 ** (2 * r)
  args = (0.0, sp, shift * sq * (1 + rl), sq)
  _check_against_reference("gumbel", args)
  _check_against_reference("gumbel", (shift, sp, shift, sp))
  assert float(ls.kl_gumbel(shift, sp, shift, sp)) == 0


@settings(max_examples=40, deadline=None)
@given(log_scale, log_scale, st.floats(-1e6, 1e6), rel)
def test_property_cauchy(ls_p, ls_q, shift, r):
  sp, sq = 10.0**ls_p, 10.0**ls_q * (1 + r)
  _check_against_reference("cauchy", (0.0, sp, shift, sq))
  _check_against_reference("cauchy", (0.0, sp, shift * 1e-8, sp * (1 + r)))
  assert float(ls.kl_cauchy(shift, sp, shift, sp)) == 0


@settings(max_examples=40, deadline=None)
@given(log_scale, rel, st.floats(-30, 30))
def test_property_half_and_log_normal(ls_p, r, shift):
  sp = 10.0**ls_p
  sq = sp * (1 + r)
  _check_against_reference("half_normal", (sp, sq))
  _check_against_reference("half_normal", (sp, sp * 10.0**shift / 3))
  _check_against_reference("log_normal", (0.0, sp, shift * sp * 1e-3, sq))
  assert float(ls.kl_half_normal(sp, sp)) == 0


@settings(max_examples=40, deadline=None)
@given(st.floats(-1e3, 1e3), log_scale, st.floats(0, 1e-3), st.floats(-1e-3, 1.0))
@example(a=0.0, lw=0.0, extra=0.0, shift=5e-324)  # a subnormal shift: read as 0
def test_property_uniform(a, lw, extra, shift):
  w = 10.0**lw
  args = (a, a + w, a - extra * w + shift * w, a + w + extra * w)
  _check_against_reference("uniform", args)
  assert float(ls.kl_uniform(a, a + w, a, a + w)) == 0


@settings(max_examples=40, deadline=None)
@given(log_scale, log_scale, st.floats(-1e-3, 0.5), rel)
def test_property_pareto(lx, la, shrink, r):
  x, a = 10.0**lx, 10.0**la
  _check_against_reference("pareto", (x, a, x * (1 - shrink), a * (1 + r)))
  assert float(ls.kl_pareto(x, a, x, a)) == 0
