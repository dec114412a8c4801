r"""Cancellation-free building blocks for the closed-form divergences.

Closed-form KL divergences are small differences of large quantities when
the two distributions are close or their parameters are large. The helpers
here compute such differences from *small* quantities only, so that their
relative error stays a few ``finfo.eps`` however small the result:

* :func:`x_minus_log1p`: :math:`x - \log(1 + x) \ge 0`, by a series near 0;
* :func:`expm1_minus`: :math:`e^u - 1 - u \ge 0`;
* :func:`log_ratio`: :math:`\log(y / x)` from the difference :math:`y - x`;
* :func:`x_phi`: :math:`x\,\varphi(y / x) = y - x - x \log(y / x) \ge 0`
  with :math:`\varphi(t) = t - 1 - \log t` (the generalized KL term);
* :func:`bregman_h`: the Bregman divergence of
  :math:`h(x) = \log\Gamma(x) - x \log x + x` (convex), the part of
  :math:`\log\Gamma(y) - \log\Gamma(x) - (y - x)\psi(x)` that the Gamma,
  Beta and Dirichlet divergences cannot express through :math:`\varphi`.

Every function takes the difference ``d = y - x`` as its own argument, so that
a caller that knows it exactly (``y - x`` of two close floats is exact by
Sterbenz's lemma) does not lose it by re-forming it from rounded values.
All are elementwise, differentiable (to any order) and NaN-free at
``x == y``; none allocates more than a few elementwise temporaries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxkl._checks import finfo


def _is_double(x: jax.Array) -> bool:
  return finfo(x.dtype).bits > 32


def log1p(x: jax.Array) -> jax.Array:
  """``log(1 + x)``, to about an ulp of the result.

  XLA's ``log1p`` is accurate near 0 but is off by up to ~40 float64 ulps
  around ``x = -0.4``; for ``|x| > 0.2``, ``log(1 + x)`` (the rounding of
  ``1 + x`` costs at most half an ulp of a result ``>= 0.18`` in magnitude)
  is used instead.
  """
  near = jnp.abs(x) <= 0.2
  return jnp.where(
    near, jnp.log1p(jnp.where(near, x, 0)), jnp.log(1 + jnp.where(near, 0, x))
  )


def x_minus_log1p(x: jax.Array) -> jax.Array:
  r""":math:`x - \log(1 + x)` for :math:`x > -1`, non-negative, accurate.

  With :math:`s = x / (2 + x)`, :math:`\log(1 + x) = 2\operatorname{atanh}
  s`, hence :math:`x - \log(1 + x) = x s - 2 s^3 \sum_{k \ge 0} s^{2k} /
  (2k + 3)`, used for :math:`|x| \le 1/4` (:math:`|s| \le 1/7`: every term
  is small, and the two parts differ by a factor of at least 10). Elsewhere
  the direct difference loses at most a factor of about 10 to cancellation.
  :math:`x = +\infty` gives :math:`+\infty`, :math:`x = -1` gives
  :math:`+\infty`.
  """
  near = jnp.abs(x) <= 0.25
  xs = jnp.where(near, x, 0)
  s = xs / (2 + xs)
  s2 = s * s
  terms = 10 if _is_double(x) else 5
  series = jnp.zeros_like(s)
  for k in reversed(range(terms)):
    series = series * s2 + 1.0 / (2 * k + 3)
  small = xs * s - 2 * s * s2 * series
  xf = jnp.where(near, 1, x)
  far = jnp.where(xf == jnp.inf, jnp.inf, xf - jnp.log(1 + xf))
  return jnp.where(near, small, far)


def expm1_minus(u: jax.Array) -> jax.Array:
  r""":math:`e^u - 1 - u \ge 0`, accurate near :math:`u = 0`.

  Equal to :func:`x_minus_log1p` at :math:`x = \operatorname{expm1}(u)`, used
  for :math:`|u| \le 0.22` (:math:`|x| \le 1/4`); the direct difference
  elsewhere (cancelling at most a factor of 10).
  :math:`u = \pm\infty` gives :math:`+\infty`.
  """
  near = jnp.abs(u) <= 0.22
  small = x_minus_log1p(jnp.expm1(jnp.where(near, u, 0)))
  uf = jnp.where(near, 1, u)
  far = jnp.where(uf == jnp.inf, jnp.inf, jnp.expm1(uf) - uf)
  return jnp.where(near, small, far)


def _safe_log_quotient(x: jax.Array, y: jax.Array) -> jax.Array:
  """``log(y / x)`` for positive ``x``, ``y``, also where ``y / x`` over- or
  underflows (then as ``log y - log x``)."""
  t = y / x
  ok = jnp.isfinite(t) & (t >= finfo(t.dtype).tiny)
  direct = jnp.log(jnp.where(ok, t, 1))
  return jnp.where(ok, direct, jnp.log(y) - jnp.log(x))


def _regular(x: jax.Array) -> jax.Array:
  """``x`` is positive and finite (a subnormal ``x`` counts as 0)."""
  return jnp.logical_and(x >= finfo(x.dtype).tiny, x < jnp.inf)


def difference(x: jax.Array, y: jax.Array) -> jax.Array:
  """``y - x``, and 0 (not NaN) where ``x == y`` are infinite."""
  both_inf = (x == y) & ~jnp.isfinite(x)
  return jnp.where(both_inf, 0, jnp.where(both_inf, 0, y) - jnp.where(both_inf, 0, x))


def log_ratio(x: jax.Array, d: jax.Array, y: jax.Array) -> jax.Array:
  r""":math:`\log(y / x)` for :math:`x, y > 0` given :math:`d = y - x`.

  :math:`\operatorname{log1p}(d / x)` where :math:`|d| \le x / 5` (relative
  accuracy however close :math:`y` is to :math:`x`), :math:`\log(y / x)`
  elsewhere. Exactly 0 where ``d == 0``, also for ``x == y == 0`` or
  ``inf`` (callers pass :func:`difference`), with the derivatives of
  ``log1p(d / x)`` at positive finite ``x``.
  """
  equal = (d == 0) & ~_regular(x)
  near = (jnp.abs(d) <= 0.2 * x) & _regular(x)
  xs = jnp.where(near, x, 1)
  small = jnp.log1p(jnp.where(near, d, 0) / xs)
  xf = jnp.where(near | equal, 1, x)
  yf = jnp.where(near | equal, 1, y)
  far = _safe_log_quotient(xf, yf)
  return jnp.where(equal, 0, jnp.where(near, small, far))


def phi(x: jax.Array, d: jax.Array, y: jax.Array) -> jax.Array:
  r""":math:`\varphi(y/x) = y/x - 1 - \log(y/x) \ge 0` given :math:`d = y - x`.

  0 where ``d == 0``; :math:`+\infty` where :math:`y = 0 < x`.
  """
  return expm1_minus(log_ratio(x, d, y))


def x_phi(x: jax.Array, d: jax.Array, y: jax.Array) -> jax.Array:
  r""":math:`x\,\varphi(y / x) = y - x - x \log(y / x) \ge 0`, :math:`d = y - x`.

  For :math:`x = 0` this is :math:`y` (the limit), with derivatives
  :math:`-1` in :math:`x` and :math:`1` in :math:`y` (the derivative of
  :math:`x \log x` at 0 taken as 0, as :func:`jax.scipy.special.rel_entr`).
  :math:`y = 0 < x` gives :math:`+\infty`. Where :math:`|d| \le x / 2`,
  :math:`x \cdot` :func:`x_minus_log1p` :math:`(d / x)`; elsewhere
  :math:`d - x \log(y / x)` (no cancellation worse than a factor of 5).
  """
  positive = x > 0
  equal = (d == 0) & ~_regular(x)
  near = (jnp.abs(d) <= 0.5 * x) & _regular(x)
  xs = jnp.where(near, x, 1)
  small = xs * x_minus_log1p(jnp.where(near, d, 0) / xs)
  far_ok = positive & ~near & ~equal
  xf = jnp.where(far_ok, x, 1)
  yf = jnp.where(far_ok, y, 1)
  df = jnp.where(far_ok, d, 0)
  log_t = _safe_log_quotient(xf, yf)
  far = jnp.where(yf == 0, jnp.inf, df - xf * log_t)
  zero = x < finfo(x.dtype).tiny  # 0, or subnormal (flushed)
  return jnp.where(zero, y - x, jnp.where(equal, 0, jnp.where(near, small, far)))


# ----------------------------------------------------------------------------
# Bregman divergence of h(x) = lgamma(x) - x log x + x.

# c_k = B_{2k} / (2k (2k - 1)): Stirling's series for Binet's function
# mu(x) = lgamma(x) - (x - 1/2) log x + x - log(2 pi) / 2 ~ sum c_k x^(1 - 2k).
_BERNOULLI_2K = [
  (1, 6),
  (-1, 30),
  (1, 42),
  (-1, 30),
  (5, 66),
  (-691, 2730),
  (7, 6),
  (-3617, 510),
  (43867, 798),
  (-174611, 330),
  (854513, 138),
  (-236364091, 2730),
]
_STIRLING = [
  n / d / ((2 * k + 2) * (2 * k + 1)) for k, (n, d) in enumerate(_BERNOULLI_2K)
]


def _stirling_setup(x: jax.Array) -> tuple[int, int]:
  """(shift threshold N0, number of Stirling terms K) for x's dtype.

  The series, truncated after K terms, is used for arguments >= N0: the
  relative error of its Bregman divergence is then below ~3e-17 (float64:
  N0 = 20, K = 7) or ~5e-9 (float32: N0 = 7, K = 5).
  """
  return (20, 7) if _is_double(x) else (7, 5)


def _binet(x: jax.Array, terms: int) -> tuple[jax.Array, jax.Array]:
  """Binet's mu(x) and mu'(x) from Stirling's series (x >= N0)."""
  z = 1 / x
  z2 = z * z
  value = jnp.zeros_like(x)
  slope = jnp.zeros_like(x)
  for k in reversed(range(terms)):
    value = value * z2 + _STIRLING[k]
    slope = slope * z2 + _STIRLING[k] * (1 - 2 * (k + 1))
  return value * z, slope * z2


def _bregman_binet(x: jax.Array, d: jax.Array, y: jax.Array, terms: int) -> jax.Array:
  """B_mu(y; x) for x, y = x + d >= N0, without cancellation.

  Each term c x^-m of Stirling's series (m = 2k - 1) contributes
  c x^-m g_m(r), r = d / x, with g_m(r) = (1 + r)^-m - 1 + m r
  = r^2 q sum_{l<m} (m - l) q^l, q = 1 / (1 + r): a sum of positive terms,
  used for |r| <= 1/2. Elsewhere mu(y) - mu(x) - d mu'(x) directly (no
  cancellation beyond a small factor there).
  """
  r = d / x
  near = jnp.abs(r) <= 0.5
  rs = jnp.where(near, r, 0)
  q = 1 / (1 + rs)
  z = 1 / x
  z2 = z * z
  # sum_k c_k z^(2k-1) P_{2k-1}(q), by Horner in z^2 (highest k first).
  total = jnp.zeros_like(x)
  for k in reversed(range(terms)):
    m = 2 * k + 1
    poly = jnp.zeros_like(q)
    for coefficient in range(1, m + 1):  # (m - l) for l = m-1 .. 0
      poly = poly * q + coefficient
    total = total * z2 + _STIRLING[k] * poly
  small = rs * rs * q * z * total
  mu_x, dmu_x = _binet(x, terms)
  mu_y, _ = _binet(jnp.where(near, 2 * x, y), terms)
  far = mu_y - mu_x - d * dmu_x
  return jnp.where(near, small, far)


_HALF_LOG_2PI = 0.5 * float(np.log(2 * np.pi))
# max(x, y) / min(x, y) above which bregman_h uses the direct difference.
_DIRECT_RATIO = 2.0


def _h_and_slope(z: jax.Array, n0: int, terms: int) -> tuple[jax.Array, jax.Array]:
  """``h(z) = lgamma(z) - z log z + z`` and ``h'(z) = psi(z) - log z``.

  For ``z >= N0`` from Stirling's series, ``h = -log(z) / 2 + log(2 pi) / 2
  + mu(z)`` and ``h' = -1 / (2 z) + mu'(z)`` (no cancellation: both are
  small, accurate relative to themselves); below, from ``lgamma`` and
  ``digamma`` (absolute error a few ulps of ``|lgamma(z)| + |z log z|``,
  at most ~``2 N0 log N0`` ulps).
  """
  big = z >= n0
  zb = jnp.where(big, z, n0)
  mu, dmu = _binet(zb, terms)
  h_big = -0.5 * jnp.log(zb) + _HALF_LOG_2PI + mu
  slope_big = -0.5 / zb + dmu
  zs = jnp.where(big, 1, z)
  log_zs = jnp.log(zs)
  h_small = jax.lax.lgamma(zs) - zs * log_zs + zs
  slope_small = jax.lax.digamma(zs) - log_zs
  return jnp.where(big, h_big, h_small), jnp.where(big, slope_big, slope_small)


def bregman_h(x: jax.Array, d: jax.Array, y: jax.Array | None = None) -> jax.Array:
  r"""Bregman divergence :math:`B_h(y; x) = h(y) - h(x) - (y - x) h'(x) \ge 0`
  of :math:`h(x) = \log\Gamma(x) - x\log x + x`, with :math:`y = x + d`.

  :math:`h'' = \psi' - 1/x > 0`, so :math:`B_h \ge 0`; in terms of the
  log-gamma function,

  .. math::

     B_h(y; x) = \log\Gamma(y) - \log\Gamma(x) - (y - x)\psi(x)
       - y\,\varphi(x / y).

  For :math:`x, y \ge N_0` (20 in float64, 7 in float32), with Binet's
  function :math:`\mu` (Stirling's series),
  :math:`B_h(y; x) = \tfrac12 \varphi(y/x) + B_\mu(y; x)`, two non-negative
  terms computed from :math:`d` and :math:`d/x`. Below, the recurrence
  :math:`\log\Gamma(x) = \log\Gamma(x + n) - \sum_{j<n} \log(x + j)`
  shifts both arguments by the same integer :math:`n`:

  .. math::

     B_h(y; x) = \sum_{j<n} \varphi\Big(\frac{y + j}{x + j}\Big)
       + (y + n)\,\varphi\Big(\frac{x + n}{y + n}\Big)
       - y\,\varphi\Big(\frac{x}{y}\Big) + B_h(y + n; x + n),

  all from :math:`d` (the shifted arguments' difference is still
  :math:`d`); the subtraction cancels at most a factor of about
  :math:`2 N_0`. Exactly 0 where :math:`d = 0` (also for :math:`x = 0` or
  :math:`\infty`), with the correct derivatives (second ones included) at
  positive finite :math:`x`.

  Args:
    x: positive array.
    d: ``y - x`` (``y > 0``), the same shape.
    y: ``y`` itself, the same shape (default ``x + d``). Pass it when
      ``y`` is much smaller than ``x``: ``x + d`` then loses its relative
      accuracy (or its sign) to the rounding of ``d``.

  Returns:
    :math:`B_h(x + d; x)`, the same shape and dtype.
  """
  n0, terms = _stirling_setup(x)
  if y is None:
    y = x + d
  zero = (d == 0) & ~_regular(x)
  x = jnp.where(zero, 1, x)
  y = jnp.where(zero, 1, y)
  d = jnp.where(zero, 0, d)
  low = jnp.minimum(x, y)
  # Far apart with one argument below N0: the recurrence's two x_phi terms
  # would both be of the size of the larger argument and cancel; the direct
  # difference of h values is well conditioned there (see _h_and_slope).
  direct = (low < n0) & (jnp.maximum(x, y) > _DIRECT_RATIO * low)
  xd = jnp.where(direct, x, 1)
  yd = jnp.where(direct, y, 1)
  h_x, slope_x = _h_and_slope(xd, n0, terms)
  h_y, _ = _h_and_slope(yd, n0, terms)
  direct_value = jnp.maximum((h_y - h_x) - jnp.where(direct, d, 0) * slope_x, 0)
  x = jnp.where(direct, 1, x)
  y = jnp.where(direct, 1, y)
  d = jnp.where(direct, 0, d)
  low = jnp.minimum(x, y)
  shift = jnp.maximum(jnp.ceil(n0 - low), 0)

  def step(j: jax.Array, total: jax.Array) -> jax.Array:
    active = shift > j
    xj = jnp.where(active, x + j, 1)
    yj = jnp.where(active, y + j, 1)
    return total + jnp.where(active, phi(xj, jnp.where(active, d, 0), yj), 0)

  # A loop, not unrolled: one copy of phi in the compiled program.
  total = jax.lax.fori_loop(0, n0, step, jnp.zeros_like(x))
  shifted = shift > 0
  xn = x + shift
  yn = y + shift
  total = total + jnp.where(shifted, x_phi(yn, -d, xn) - x_phi(y, -d, x), 0)
  total = total + 0.5 * phi(xn, d, yn) + _bregman_binet(xn, d, yn, terms)
  return jnp.where(zero, 0, jnp.where(direct, direct_value, total))


# ----------------------------------------------------------------------------
# Exact products (float32).


def _split(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``a = hi + lo`` by masking low significand bits (no rounding).

  float32: ``hi`` keeps 12 significant bits and ``lo`` has at most 12;
  float64: 26 and at most 27. Bit masking cannot be undone by compiler
  reassociation (unlike Veltkamp's splitting by ``(2^s + 1) a``).
  """
  if _is_double(a):
    bits = jax.lax.bitcast_convert_type(a, jnp.uint64)
    mask = np.uint64(0xFFFFFFFFFFFFFFFF ^ ((1 << 27) - 1))
    hi = jax.lax.bitcast_convert_type(bits & mask, jnp.float64)
  else:
    bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
    hi = jax.lax.bitcast_convert_type(bits & np.uint32(0xFFFFF000), jnp.float32)
  return hi, a - hi


def _two_product(u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(p, e)`` with ``p = fl(u v)`` and ``u v = p + e`` (to ~eps^2 u v)."""
  p = u * v
  uh, ul = _split(u)
  vh, vl = _split(v)
  return p, ((uh * vh - p) + uh * vl + ul * vh) + ul * vl


def product_difference(
  a: jax.Array, b: jax.Array, c: jax.Array, e: jax.Array
) -> jax.Array:
  r""":math:`a b - c e`, accurate to a few ulps of the *result*.

  Both products are split into a rounded product and its rounding error
  (Dekker's two-product on bit-masked halves), so that near-equal products
  cancel exactly and the result keeps its relative accuracy. Operands must
  be finite and their products normal numbers well inside the float range.
  """
  p1, e1 = _two_product(a, b)
  p2, e2 = _two_product(c, e)
  return (p1 - p2) + (e1 - e2)
