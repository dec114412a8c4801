"""Continuous families with positive parameters: exponential, gamma,
beta, Dirichlet, Laplace."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _special
from jaxkl._closed_forms._base import _kl
from jaxkl._closed_forms._base import _phi
from jaxkl._closed_forms._base import _standardized

# ----------------------------------------------------------------------------
# Continuous families with positive parameters.


def kl_exponential(rate_p: ArrayLike, rate_q: ArrayLike) -> jax.Array:
  r"""KL divergence between exponential distributions.

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \log\frac{\lambda_p}{\lambda_q}
       + \frac{\lambda_q}{\lambda_p} - 1
       = \operatorname{expm1}(u) - u, \qquad
       u = \log\frac{\lambda_q}{\lambda_p}.

  Args:
    rate_p: rate :math:`\lambda_p > 0` of :math:`P` (mean
      :math:`1/\lambda_p`), any shape.
    rate_q: rate :math:`\lambda_q > 0` of :math:`Q`.

  Returns:
    The divergence, shape: the two shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jaxkl
    >>> jaxkl.kl_exponential(1.0, 2.0)  # 1 - log 2
    Array(0.30685282, dtype=float32)

  References:
    Gil, Alajaji & Linder, "Rényi divergence measures for commonly used
    univariate continuous distributions", Information Sciences 249, 2013
    (the Gamma case with shape 1).
  """
  return _kl(_kl_exponential, [("rate_p", rate_p), ("rate_q", rate_q)], (0, 0))


def _kl_exponential(rate_p: jax.Array, rate_q: jax.Array) -> jax.Array:
  return _phi(rate_p, rate_q)


def kl_gamma(
  concentration_p: ArrayLike,
  rate_p: ArrayLike,
  concentration_q: ArrayLike,
  rate_q: ArrayLike,
) -> jax.Array:
  r"""KL divergence between gamma distributions (shape and rate).

  For densities :math:`\beta^\alpha x^{\alpha-1} e^{-\beta x} / \Gamma(\alpha)`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = (\alpha_p - \alpha_q)\,\psi(\alpha_p)
       - \log\Gamma(\alpha_p) + \log\Gamma(\alpha_q)
       + \alpha_q \log\frac{\beta_p}{\beta_q}
       + \alpha_p \frac{\beta_q - \beta_p}{\beta_p},

  :math:`\psi` the digamma function, evaluated as the sum of two
  non-negative terms

  .. math::

     B_h(\alpha_q; \alpha_p) + \alpha_q\,(e^w - 1 - w), \qquad
     w = \log\frac{\beta_q\,\alpha_p}{\beta_p\,\alpha_q},

  where :math:`B_h` is the Bregman divergence of the convex
  :math:`h(x) = \log\Gamma(x) - x\log x + x`
  (:func:`jaxkl._special.bregman_h`, from Stirling's series and the
  recurrence of :math:`\Gamma`) and :math:`w` comes from an exactly
  cancelling product difference: accurate for near-equal and for huge
  shapes (``kl_gamma(1e6, 1., 1e6 + 1, 1.)`` is 5.0e-7 in float32).

  Args:
    concentration_p: shape :math:`\alpha_p > 0` of :math:`P`, any shape.
    rate_p: rate :math:`\beta_p > 0` of :math:`P` (inverse scale).
    concentration_q: shape :math:`\alpha_q > 0` of :math:`Q`.
    rate_q: rate :math:`\beta_q > 0` of :math:`Q`.

  Returns:
    The divergence, shape: the four shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jaxkl
    >>> jaxkl.kl_gamma(2.0, 1.0, 2.0, 2.0)  # 2 (1 - log 2)
    Array(0.61370564, dtype=float32)

  References:
    Penny, "KL-Divergences of Normal, Gamma, Dirichlet and Wishart densities",
    2001 (there with scale :math:`1/\beta`). Gil, Alajaji & Linder, "Rényi
    divergence measures for commonly used univariate continuous
    distributions", Information Sciences 249, 2013.
  """
  return _kl(
    _kl_gamma,
    [
      ("concentration_p", concentration_p),
      ("rate_p", rate_p),
      ("concentration_q", concentration_q),
      ("rate_q", rate_q),
    ],
    (0, 0, 0, 0),
  )


def _gamma_log_mismatch(
  a_p: jax.Array, rate_p: jax.Array, a_q: jax.Array, rate_q: jax.Array
) -> jax.Array:
  """``w = log((rate_q / rate_p) / (a_q / a_p))``, accurate near 0.

  Where the two ratios are close, from the exactly cancelling product
  difference ``rate_q a_p - rate_p a_q``; elsewhere as the difference of the
  two log-ratios. Exactly 0 where both pairs are equal.
  """
  d_a = _special.difference(a_p, a_q)
  d_rate = _special.difference(rate_p, rate_q)
  apart = _special.log_ratio(rate_p, d_rate, rate_q) - _special.log_ratio(a_p, d_a, a_q)
  finite = (
    jnp.isfinite(a_p) & jnp.isfinite(a_q) & jnp.isfinite(rate_p) & jnp.isfinite(rate_q)
  )
  tiny = _checks.finfo(a_p.dtype).tiny
  bound = jnp.sqrt(_checks.finfo(a_p.dtype).max) * 0.5
  usable = (
    finite
    & (a_p > tiny)
    & (a_q > tiny)
    & (rate_p > tiny)
    & (rate_q > tiny)
    & (jnp.maximum(a_p, rate_q) < bound)
    & (jnp.maximum(a_q, rate_p) < bound)
    & (
      jnp.minimum(a_p * rate_q, a_q * rate_p)
      > tiny / float(_checks.finfo(a_p.dtype).eps)
    )
  )
  safe = [jnp.where(usable, v, 1) for v in (rate_q, a_p, rate_p, a_q)]
  numerator = _special.product_difference(*safe)
  denominator = safe[2] * safe[3]
  near = usable & (jnp.abs(numerator) <= 0.5 * denominator)
  close = _special.log1p(jnp.where(near, numerator / denominator, 0))
  both_equal = (d_a == 0) & (d_rate == 0) & ~near
  return jnp.where(both_equal, 0, jnp.where(near, close, apart))


def _kl_gamma(
  a_p: jax.Array, rate_p: jax.Array, a_q: jax.Array, rate_q: jax.Array
) -> jax.Array:
  # B_h(a_q; a_p) + a_q phi(e^w): both non-negative (see kl_gamma).
  w = _gamma_log_mismatch(a_p, rate_p, a_q, rate_q)
  big = w > 40
  w_small = jnp.where(big, 0, w)
  w_big = jnp.where(big, w, 41)
  mismatch = jnp.where(
    big,
    jnp.exp(w_big + jnp.log(a_q)) - a_q * (1 + w_big),
    a_q * _special.expm1_minus(w_small),
  )
  return _special.bregman_h(a_p, _special.difference(a_p, a_q), a_q) + mismatch


def kl_beta(
  a_p: ArrayLike, b_p: ArrayLike, a_q: ArrayLike, b_q: ArrayLike
) -> jax.Array:
  r"""KL divergence between beta distributions.

  For densities :math:`x^{a-1} (1 - x)^{b-1} / B(a, b)`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) &= \log\frac{B(a_q, b_q)}{B(a_p, b_p)}
       + (a_p - a_q)\,\psi(a_p) \\
       &\quad + (b_p - b_q)\,\psi(b_p)
       + (a_q - a_p + b_q - b_p)\,\psi(a_p + b_p),

  with :math:`\psi` the digamma function, evaluated as the two-component
  :func:`kl_dirichlet` (sums of non-negative terms, accurate for large and
  near-equal concentrations).

  Args:
    a_p: first concentration :math:`a_p > 0` of :math:`P` (``alpha``), any
      shape.
    b_p: second concentration :math:`b_p > 0` of :math:`P` (``beta``).
    a_q: first concentration :math:`a_q > 0` of :math:`Q`.
    b_q: second concentration :math:`b_q > 0` of :math:`Q`.

  Returns:
    The divergence, shape: the four shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jaxkl
    >>> jaxkl.kl_beta(1.0, 1.0, 2.0, 1.0)  # uniform vs density 2x: 1 - log 2
    Array(0.30685, dtype=float32)

  References:
    Gil, Alajaji & Linder, "Rényi divergence measures for commonly used
    univariate continuous distributions", Information Sciences 249, 2013.
    Penny, 2001 (the Dirichlet with two components).
  """
  return _kl(
    _kl_beta, [("a_p", a_p), ("b_p", b_p), ("a_q", a_q), ("b_q", b_q)], (0, 0, 0, 0)
  )


def _kl_beta(
  a_p: jax.Array, b_p: jax.Array, a_q: jax.Array, b_q: jax.Array
) -> jax.Array:
  return _kl_dirichlet(jnp.stack([a_p, b_p], -1), jnp.stack([a_q, b_q], -1))


def kl_dirichlet(concentration_p: ArrayLike, concentration_q: ArrayLike) -> jax.Array:
  r"""KL divergence between Dirichlet distributions.

  With :math:`\alpha_0 = \sum_k \alpha_k`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) &= \log\Gamma(\alpha_{p,0})
       - \log\Gamma(\alpha_{q,0})
       - \sum_k \big(\log\Gamma(\alpha_{p,k}) - \log\Gamma(\alpha_{q,k})\big) \\
       &\quad + \sum_k (\alpha_{p,k} - \alpha_{q,k})
         \big(\psi(\alpha_{p,k}) - \psi(\alpha_{p,0})\big),

  evaluated, with :math:`a = \alpha_p`, :math:`b = \alpha_q`,
  :math:`t_k = (a_k / a_0) / (b_k / b_0)` and :math:`h` as in
  :func:`kl_gamma`, as

  .. math::

     \sum_k b_k\,(t_k - 1 - \log t_k)
       + \Big(\sum_k B_h(b_k; a_k) - B_h(b_0; a_0)\Big),

  the first sum :math:`b_0\,\mathrm{KL}(\hat b \,\|\, \hat a)` of the
  normalized means, the second the remaining shape term, both from
  differences of the parameters (``kl_dirichlet([1e6]*5, [1e6]*4 +
  [1.001e6])`` is 0.3998 in float32). A final ``max(., 0)`` only guards the
  last ulp.

  Args:
    concentration_p: concentrations :math:`\alpha_p > 0` of :math:`P`, shape
      ``[..., K]`` (event axis last).
    concentration_q: concentrations :math:`\alpha_q > 0` of :math:`Q`, shape
      ``[..., K]``.

  Returns:
    The divergence, shape: the batch shapes ``[...]`` broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: a 0-d argument, different numbers of components ``K``, or
      batch shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> jaxkl.kl_dirichlet(jnp.ones(2), jnp.array([2.0, 1.0]))  # as kl_beta
    Array(0.30685, dtype=float32)

  References:
    Penny, "KL-Divergences of Normal, Gamma, Dirichlet and Wishart densities",
    2001.
  """
  return _kl(
    _kl_dirichlet,
    [("concentration_p", concentration_p), ("concentration_q", concentration_q)],
    (1, 1),
  )


def _kl_dirichlet(alpha_p: jax.Array, alpha_q: jax.Array) -> jax.Array:
  # sum_k b_k phi(t_k) + sum_k B_h(b_k; a_k) - B_h(b_0; a_0) with a = alpha_p,
  # b = alpha_q, t_k = (a_k / a_0) / (b_k / b_0) (see kl_dirichlet).
  d = _special.difference(alpha_p, alpha_q)
  total_p = jnp.sum(alpha_p, axis=-1)
  total_q = jnp.sum(alpha_q, axis=-1)
  d_total = jnp.sum(d, axis=-1)
  log_t = _special.log_ratio(total_p, d_total, total_q)[..., None] - _special.log_ratio(
    alpha_p, d, alpha_q
  )
  mean_part = jnp.sum(alpha_q * _special.expm1_minus(log_t), axis=-1)
  # One call for the components and the totals: one copy of bregman_h.
  bregman = _special.bregman_h(
    jnp.concatenate([alpha_p, total_p[..., None]], -1),
    jnp.concatenate([d, d_total[..., None]], -1),
    jnp.concatenate([alpha_q, total_q[..., None]], -1),
  )
  shape_part = jnp.sum(bregman[..., :-1], axis=-1) - bregman[..., -1]
  return jnp.maximum(mean_part + shape_part, 0)


def kl_laplace(
  loc_p: ArrayLike, scale_p: ArrayLike, loc_q: ArrayLike, scale_q: ArrayLike
) -> jax.Array:
  r"""KL divergence between Laplace distributions.

  For densities :math:`\exp(-|x - \mu| / b) / (2 b)`, with
  :math:`\delta = |\mu_p - \mu_q|`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \log\frac{b_q}{b_p} + \frac{\delta}{b_q}
       + \frac{b_p}{b_q} e^{-\delta / b_p} - 1,

  evaluated with :math:`r = b_p / b_q` and :math:`t = \delta / b_p` as the
  sum of non-negative terms
  :math:`(\operatorname{expm1}(\log r) - \log r)
  + r\,(t + \operatorname{expm1}(-t))`.

  Args:
    loc_p: location :math:`\mu_p` of :math:`P`, any shape.
    scale_p: scale :math:`b_p > 0` of :math:`P`.
    loc_q: location :math:`\mu_q` of :math:`Q`.
    scale_q: scale :math:`b_q > 0` of :math:`Q`.

  Returns:
    The divergence, shape: the four shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jaxkl
    >>> jaxkl.kl_laplace(0.0, 1.0, 1.0, 1.0)  # 1 / e
    Array(0.36787945, dtype=float32)

  References:
    Gil, Alajaji & Linder, "Rényi divergence measures for commonly used
    univariate continuous distributions", Information Sciences 249, 2013.
  """
  return _kl(
    _kl_laplace,
    [("loc_p", loc_p), ("scale_p", scale_p), ("loc_q", loc_q), ("scale_q", scale_q)],
    (0, 0, 0, 0),
  )


def _kl_laplace(
  loc_p: jax.Array, scale_p: jax.Array, loc_q: jax.Array, scale_q: jax.Array
) -> jax.Array:
  t = jnp.abs(_standardized(loc_p, loc_q, scale_p))
  ratio_part = _phi(scale_q, scale_p)
  r = jnp.exp(
    _special.log_ratio(scale_q, _special.difference(scale_q, scale_p), scale_p)
  )
  shift_part = jnp.where(t == 0, 0, r) * _special.expm1_minus(-t)
  return ratio_part + shift_part
