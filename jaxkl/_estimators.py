r"""Monte-Carlo estimators of the KL divergence from log-densities at samples.

Given samples :math:`x_i \sim P` and the log-densities :math:`\log p(x_i)`,
:math:`\log q(x_i)`, write :math:`\log r = \log q(x) - \log p(x)` (so
:math:`r = q/p`) and estimate

.. math::

   D_{\mathrm{KL}}(P \,\|\, Q) = \mathbb{E}_{x \sim P}[-\log r(x)]

by the mean of one of Schulman's (2020) per-sample estimators:

* ``'k1'``: :math:`-\log r`. Unbiased; negative for about half the samples
  when :math:`P \approx Q`, hence high variance.
* ``'k2'``: :math:`\tfrac12 (\log r)^2`. Non-negative, low variance, biased:
  its mean is the f-divergence with :math:`f(u) = \tfrac12 (\log u)^2`, which
  agrees with the KL divergence to second order as :math:`Q \to P`.
* ``'k3'``: :math:`(r - 1) - \log r`. Non-negative and unbiased when
  :math:`Q \ll P` (``Q`` puts no mass outside the support of ``P``), because
  then :math:`\mathbb{E}_P[r - 1] = 0`; it is ``k1`` plus the control variate
  :math:`r - 1` with coefficient 1. Otherwise
  :math:`\mathbb{E}_P[\mathrm{k3}] = D_{\mathrm{KL}} - Q(\text{outside supp } P)`.
* ``'cv'`` (estimates only, not per-sample): ``k1`` plus the control variate
  with the *estimated optimal* coefficient,
  :math:`\overline{\mathrm{k1}} + \hat\lambda\, \overline{(r - 1)}` with
  :math:`\hat\lambda = -\widehat{\mathrm{Cov}}(-\log r,\, r - 1) /
  \widehat{\mathrm{Var}}(r - 1)` (least squares); ``k3`` is the fixed choice
  :math:`\lambda = 1`, close to optimal when :math:`P \approx Q` since then
  :math:`-\log r \approx 1 - r`. Same support condition as ``k3``;
  :math:`\hat\lambda` is fitted to the same samples and carries no
  gradient, so the estimate and its gradients have a bias of order
  :math:`1/n` when :math:`\mathbb{E}_P[r^4] < \infty`, vanishing more slowly
  with heavier tails (for 1-D Gaussians :math:`\mathbb{E}_P[r^k] < \infty`
  iff :math:`\sigma_Q^2 < k \sigma_P^2 / (k - 1)`).
* ``'cv_crossfit'`` (estimates only): the cross-fitted control variate,
  unbiased at every :math:`n`. Each sample gets the coefficient fitted to the
  *other* samples (leave-one-out cross-fitting, i.e. :math:`n` folds):
  :math:`\hat D = \frac1n \sum_i [-\log r_i + \hat\lambda_{-i}(r_i - 1)]`.
  As :math:`\hat\lambda_{-i}` is independent of :math:`x_i` and
  :math:`\mathbb{E}_P[r - 1] = 0`, every term has mean
  :math:`D_{\mathrm{KL}}` (same support condition as ``k3``); the same
  argument makes its pathwise and score-function gradients unbiased. Its
  variance approaches that of ``'cv'`` as :math:`n` grows; the fitted
  coefficients are noisy at small :math:`n` (for :math:`N(0, 1)` vs
  :math:`N(1, 1)`: above ``k1``'s variance at :math:`n = 20`, below it from
  :math:`n \approx 30`, below ``k3``'s from :math:`n \approx 50`, 0.64 of
  ``k1``'s at :math:`n = 70`, 0.45 at :math:`n = 1000`).

Gradients with the samples held fixed
-------------------------------------
Estimators are often used as *losses*, differentiated with respect to the
parameters :math:`\theta` of :math:`P_\theta` (the sampling distribution, e.g.
an RL policy) while the samples are treated as constants. Then, with
:math:`s = \nabla_\theta \log p_\theta(x)` and
:math:`\mathbb{E}_P[s] = 0` (Tang & Munos, 2025, who point out that this
practice does *not* in general give the gradient of the estimated KL):

* ``k1``: :math:`\mathbb{E}_P[s] = 0`: no signal at all;
* ``k2``: :math:`\mathbb{E}_P[-\log r \cdot s] =
  \nabla_\theta D_{\mathrm{KL}}(P_\theta \,\|\, Q)`: the gradient of the KL
  divergence being estimated (the "reverse" KL of RLHF, policy ‖ reference);
* ``k3``: :math:`\mathbb{E}_P[(1 - r) s] = -\mathbb{E}_Q[s] =
  \nabla_\theta D_{\mathrm{KL}}(Q \,\|\, P_\theta)`: the gradient of the
  *other* direction (the "forward" KL of RLHF, reference ‖ policy).

With respect to parameters of ``Q`` only (samples fixed, :math:`P` fixed),
``k1`` and ``k3`` both give unbiased gradients of
:math:`D_{\mathrm{KL}}(P \,\|\, Q)` and ``k2`` does not. For unbiased
gradients with respect to the sampling distribution, use
``jaxkl.monte_carlo_kl`` with ``gradient='pathwise'`` or
``gradient='score_function'``.

References:
  J. Schulman, "Approximating KL Divergence", 2020,
  http://joschu.net/blog/kl-approx.html.
  Y. Tang and R. Munos, "On a few pitfalls in KL divergence gradient
  estimation for RL", 2025, arXiv:2506.09477.
  V. Chernozhukov, D. Chetverikov, M. Demirer, E. Duflo, C. Hansen,
  W. Newey and J. Robins, "Double/debiased machine learning for treatment
  and structural parameters", The Econometrics Journal 21(1), 2018
  (cross-fitting).
"""

from __future__ import annotations

import functools
import math
from typing import Literal
from typing import NamedTuple
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl._per_example import Axis
from jaxkl._per_example import broadcast_mask
from jaxkl._per_example import normalize_axis

Estimator = Literal["k1", "k2", "k3", "cv", "cv_crossfit"]
_T = TypeVar("_T")

#: Per-sample estimators (``kl_estimator_terms``).
TERM_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
#: Estimators of the mean (``kl_from_samples``, ``monte_carlo_kl``).
ESTIMATORS: tuple[str, ...] = (*TERM_ESTIMATORS, "cv", "cv_crossfit")

# |log r| below which k3 = e^d - 1 - d is summed as a series (see _k3).
_K3_SERIES_BOUND = 1.0


def validate_estimator(estimator: _T, allowed: tuple[str, ...] = ESTIMATORS) -> _T:
  """Returns ``estimator`` (unchanged) if it is one of ``allowed``, else raises."""
  if isinstance(estimator, str) and estimator in allowed:
    return estimator
  hint = ""
  if estimator in ("cv", "cv_crossfit"):
    hint = (
      f" {estimator!r} fits its coefficients to the other samples, so "
      "it has no per-sample terms of its own; use "
      f"`jaxkl.kl_from_samples(..., estimator={estimator!r})`."
    )
  raise ValueError(
    f"`estimator` must be one of {', '.join(map(repr, allowed))}; got "
    f"{estimator!r}.{hint}"
  )


def _k3_series_degree(dtype: np.dtype) -> int:
  """Highest power of the series for e^d - 1 - d on |d| < 1.

  The first omitted term, relative to d^2 / 2, is below 2 / 12! < 2^-27
  (float32) or 2 / 19! < 2^-55 (float64) on the whole interval.
  """
  return 11 if _checks.finfo(dtype).bits <= 32 else 18


def _k3_and_slope(log_r: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(k3, d k3 / d log r) = (e^d - 1 - d, e^d - 1)``, one ``exp`` for both.

  For ``|d| < 1`` the Taylor series ``s = sum_{k>=2} d^k / k!`` (no
  cancellation: ``expm1(d) - d`` loses a tenth of float32's digits at
  ``d = 1e-3``), and the slope ``d + s``; beyond, ``e^d - 1 - d`` and
  ``e^d - 1`` lose at most 2 bits (max error measured against mpmath: 1.9
  float32 ulps). ``d = +inf`` gives ``(+inf, +inf)``, ``d = -inf`` gives
  ``(+inf, -1)``.
  """
  small = jnp.abs(log_r) < _K3_SERIES_BOUND
  d = jnp.where(small, log_r, 0)
  degree = _k3_series_degree(log_r.dtype)
  poly = jnp.full_like(d, 1.0 / math.factorial(degree))
  for k in range(degree - 1, 1, -1):
    poly = poly * d + 1.0 / math.factorial(k)
  series = d * d * poly
  e_minus_1 = jnp.exp(jnp.where(small, 0, log_r)) - 1
  direct = jnp.where(log_r == jnp.inf, jnp.inf, e_minus_1 - log_r)
  return jnp.where(small, series, direct), jnp.where(small, d + series, e_minus_1)


@jax.custom_jvp
def _k3(log_r: jax.Array) -> jax.Array:
  r"""``k3 = e^d - 1 - d`` for ``d = log r``, accurate for every ``d``.

  One ``exp`` and a polynomial per element (``_k3_and_slope``), for the
  value and the derivative ``e^d - 1`` alike; the derivative rule is itself
  differentiable (second derivative ``e^d``, exact). ``d = +inf`` gives
  ``+inf`` (not ``inf - inf``), and so does ``d = -inf`` (``q = 0`` at a
  sample of ``P``: the divergence is infinite). In float32, finite
  ``d > 88.7`` overflows to ``+inf``: the true value exceeds the largest
  float32, so ``+inf`` is the correctly rounded result.
  """
  return _k3_and_slope(log_r)[0]


@_k3.defjvp
def _k3_jvp(
  primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
  (log_r,), (tangent,) = primals, tangents
  value, slope = _k3_and_slope(log_r)
  return value, slope * tangent


@functools.partial(jax.jit, static_argnames=("estimator",))
def _log_ratio_terms(log_r: jax.Array, estimator: str) -> jax.Array:
  """The per-sample estimator as a function of ``log r = log q - log p``."""
  if estimator in ("k1", "cv", "cv_crossfit"):
    return -log_r
  if estimator == "k2":
    return 0.5 * log_r * log_r
  return _k3(log_r)


def kl_estimator_terms(
  log_p: ArrayLike,
  log_q: ArrayLike,
  *,
  estimator: Literal["k1", "k2", "k3"] = "k1",
) -> jax.Array:
  r"""Per-sample Monte-Carlo KL estimators, e.g. per-token RLHF penalties.

  With :math:`\log r = \log q(x) - \log p(x)` at a sample :math:`x \sim P`:

  .. math::

     \mathrm{k1} = -\log r, \qquad
     \mathrm{k2} = \tfrac12 (\log r)^2, \qquad
     \mathrm{k3} = (r - 1) - \log r
     = \operatorname{expm1}(\log r) - \log r.

  ``k1`` and ``k3`` are unbiased for :math:`D_{\mathrm{KL}}(P \,\|\, Q)`
  (``k3`` when ``Q`` has no mass outside the support of ``P``), ``k2`` is
  biased with low variance, ``k2`` and ``k3`` are non-negative. Their
  gradients *with the samples held fixed* estimate different things (``k1``:
  zero; ``k2``: the gradient of :math:`D_{\mathrm{KL}}(P\|Q)`; ``k3``: that of
  :math:`D_{\mathrm{KL}}(Q\|P)`, with respect to the parameters of ``P``);
  see :ref:`estimator-notes` (also ``help(jaxkl._estimators)``) and Tang &
  Munos (2025).

  ``k3`` is computed without cancellation (a series for :math:`|\log r| <
  1/2`) and is :math:`+\infty` for :math:`\log r = \pm\infty`; in float32 it
  overflows to :math:`+\infty` for :math:`\log r > 88.7`, where the true
  value exceeds the float32 range. For very negative :math:`\log r` it is
  :math:`\approx -\log r - 1`, accurate.

  In RLHF with policy :math:`\pi` sampling the tokens and reference
  :math:`\pi_{\text{ref}}`: ``log_p`` is the policy's token log-probability
  and ``log_q`` the reference's, so the mean estimates
  :math:`D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})`.

  Args:
    log_p: :math:`\log p(x_i)` of the samples under the sampling distribution
      ``P``; any shape.
    log_q: :math:`\log q(x_i)`, same shape as ``log_p``.
    estimator: ``'k1' | 'k2' | 'k3'``. Static.

  Returns:
    The per-sample terms, shape of ``log_p``, in the promoted input dtype
    (16-bit inputs are computed in float32).

  Raises:
    ValueError: unknown ``estimator`` or shapes that differ.
    TypeError: non-floating inputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> log_p = jnp.log(jnp.array([0.5, 0.25]))
    >>> log_q = jnp.log(jnp.array([0.25, 0.5]))
    >>> jaxkl.kl_estimator_terms(log_p, log_q, estimator="k1")  # log 2, -log 2
    Array([ 0.6931472, -0.6931472], dtype=float32)
    >>> jaxkl.kl_estimator_terms(log_p, log_q, estimator="k3")  # r - 1 - log r
    Array([0.19314718, 0.30685282], dtype=float32)

  References:
    J. Schulman, "Approximating KL Divergence", 2020.
    Y. Tang and R. Munos, "On a few pitfalls in KL divergence gradient
    estimation for RL", 2025, arXiv:2506.09477.
  """
  estimator = validate_estimator(estimator, TERM_ESTIMATORS)
  log_p = _checks.as_float_array(log_p, "log_p")
  log_q = _checks.as_float_array(log_q, "log_q")
  _checks.check_same_shape(log_p, log_q, "log_p", "log_q")
  out_dtype, compute_dtype = _checks.result_dtype(log_p, log_q)
  log_r = log_q.astype(compute_dtype) - log_p.astype(compute_dtype)
  terms: jax.Array = _log_ratio_terms(log_r, estimator)
  return terms.astype(out_dtype)


# ----------------------------------------------------------------------------
# Means, control variates and standard errors.


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """``num / den``, and 0 where ``den == 0`` (with a zero gradient there)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def infinite_or(plain: jax.Array, adjusted: jax.Array) -> jax.Array:
  """``plain`` where it is ``+inf`` (an infinite KL), else ``adjusted``.

  A control variate cannot make an infinite mean finite; its fitted
  coefficient is NaN there (``inf - inf``).
  """
  return jnp.where(plain == jnp.inf, plain, adjusted)


def weighted_estimate(
  values: jax.Array,
  weights: jax.Array,
  count: jax.Array,
  axes: tuple[int, ...],
  control: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Weighted mean, optional control variate, and its standard error.

  With weights :math:`a_i \ge 0` summing to 1 over ``axes`` (``1/n`` for a
  plain mean; self-normalized importance weights otherwise) the estimate is
  :math:`\hat\mu = \sum_i a_i v_i` and its (delta-method) variance
  :math:`\sum_i a_i^2 (v_i - \hat\mu)^2`, scaled by :math:`n / (n - 1)` (or
  :math:`n / (n - 2)` with a control variate), which is the usual unbiased
  sample variance over :math:`n` for a plain mean.

  A control variate :math:`c` with known mean 0 is added with the coefficient
  minimizing that variance (weighted least squares, weights :math:`a_i^2`):
  :math:`\hat\lambda = -\sum a_i^2 V_i C_i / \sum a_i^2 C_i^2` with
  :math:`V, C` the centred values and controls; :math:`\hat\lambda` is
  treated as a constant for differentiation.

  Returns:
    ``(estimate, stderr, lam)`` with ``axes`` removed (``lam`` is 0 without a
    control). ``stderr`` is NaN when ``count`` is too small and carries no
    gradient.
  """
  mean = jnp.sum(weights * values, axis=axes, keepdims=True)
  centred = values - mean
  a2 = weights * weights
  lam = jnp.zeros_like(mean)
  ddof = 1
  plain = mean
  if control is not None:
    ddof = 2
    control_mean = jnp.sum(weights * control, axis=axes, keepdims=True)
    control_centred = control - control_mean
    lam = jax.lax.stop_gradient(
      -_safe_divide(
        jnp.sum(a2 * centred * control_centred, axis=axes, keepdims=True),
        jnp.sum(a2 * control_centred * control_centred, axis=axes, keepdims=True),
      )
    )
    # An infinite mean (an infinite KL) stays infinite: the fit is NaN there.
    mean = infinite_or(plain, mean + lam * control_mean)
    centred = centred + lam * control_centred
  sq = jax.lax.stop_gradient(jnp.sum(a2 * centred * centred, axis=axes, keepdims=True))
  count = jnp.reshape(count, mean.shape).astype(mean.dtype)
  stderr = standard_error(sq, count, ddof)

  def squeeze(a: jax.Array) -> jax.Array:
    return jnp.squeeze(a, axis=axes)

  return squeeze(mean), squeeze(stderr), squeeze(lam)


def standard_error(sq: jax.Array, count: jax.Array, ddof: int) -> jax.Array:
  r"""``sqrt(sq * n / (n - ddof))``, NaN where ``n <= ddof``.

  ``sq`` is :math:`\sum_i a_i^2 (y_i - \hat\mu)^2` (normalized weights
  :math:`a_i`) and ``count`` the number :math:`n` of independent terms, of
  the same shape and dtype.
  """
  enough = count > ddof
  correction = count / jnp.where(enough, count - ddof, 1)
  return jnp.where(enough, jnp.sqrt(sq * correction), jnp.nan)


def _exclusive_sums(a: jax.Array) -> jax.Array:
  """``sum_{j != i} a_j`` along axis 0 of a 2-D ``a``, without subtracting.

  The sum of the samples before ``i`` plus that of those after it: when one
  sample dominates the total (a heavy-tailed ``r``), ``total - a_i`` would
  cancel catastrophically, these sums do not.
  """
  # One cumsum of [a, reversed a] (XLA:CPU compiles each cumsum slowly).
  both = jnp.cumsum(jnp.concatenate([a, a[::-1]], axis=1), axis=0)
  k = a.shape[1]
  zero = jnp.zeros_like(a[:1])
  before = jnp.concatenate([zero, both[:-1, :k]], axis=0)
  after = jnp.concatenate([both[:-1, k:][::-1], zero], axis=0)
  return before + after


def leave_one_out_coefficients(
  values: jax.Array,
  control: jax.Array,
  weights: jax.Array,
  axes: tuple[int, ...],
) -> jax.Array:
  r"""The control-variate coefficient of each sample, fitted to the others.

  :math:`\hat\lambda_{-i}` is ``weighted_estimate``'s coefficient computed
  from all samples but :math:`i`: with :math:`b_j = a_j^2` and the means
  :math:`\bar v_{-i}, \bar c_{-i}` weighted by :math:`a_j`, :math:`j \ne i`,

  .. math::

     \hat\lambda_{-i} = -\frac{\sum_{j \ne i} b_j (v_j - \bar v_{-i})
     (c_j - \bar c_{-i})}{\sum_{j \ne i} b_j (c_j - \bar c_{-i})^2}

  (0 where the denominator vanishes). The sums over :math:`j \ne i` come from
  prefix and suffix sums of values shifted by their median, so neither a
  dominant sample nor a large common offset cancels. Masked samples (weight
  0) do not count. No gradient.

  Returns:
    The coefficients, of the shape of ``values``.
  """
  values, control, weights = (
    jax.lax.stop_gradient(a) for a in (values, control, weights)
  )
  lead = tuple(range(len(axes)))

  def flat(a: jax.Array) -> jax.Array:
    moved = jnp.moveaxis(a, axes, lead)
    return jnp.reshape(moved, (-1, *moved.shape[len(axes) :]))

  a = flat(weights)
  kept = a > 0
  # Shift values and controls by their (lower) medians over the kept samples.
  vc = jnp.stack([flat(values), flat(control)], axis=1)
  kept2 = kept[:, None]
  ordered = jnp.sort(jnp.where(kept2, vc, jnp.inf), axis=0)
  middle = (jnp.maximum(jnp.sum(kept2, axis=0, keepdims=True), 1) - 1) // 2
  pivot = jnp.take_along_axis(ordered, middle, axis=0)
  pivot = jnp.where(jnp.isfinite(pivot), pivot, 0)
  vc = jnp.where(kept2, vc - pivot, 0)
  v, c = vc[:, 0], vc[:, 1]
  b = a * a
  # One scan for all eight sums (stacked with the data, so that XLA does not
  # constant-fold the scans of the weights, which is very slow).
  sums = _exclusive_sums(
    jnp.stack([a, a * v, a * c, b, b * v, b * c, b * v * c, b * c * c], axis=1)
  )
  a_sum, av, ac, b_sum, bv, bc, bvc, bcc = (sums[:, k] for k in range(8))
  v_mean = _safe_divide(av, a_sum)
  c_mean = _safe_divide(ac, a_sum)
  cov = bvc - c_mean * bv - v_mean * bc + v_mean * c_mean * b_sum
  var = bcc - 2 * c_mean * bc + c_mean * c_mean * b_sum
  # Rounding can leave a tiny (or negative) variance where the others' c are
  # all equal: no usable fit, so no control.
  eps = _checks.finfo(var.dtype).eps
  ok = var > 16 * eps * (bcc + c_mean * c_mean * b_sum)
  lam = jnp.where(ok, -cov / jnp.where(ok, var, 1), 0)
  moved_shape = tuple(jnp.moveaxis(values, axes, lead).shape)
  return jnp.moveaxis(jnp.reshape(lam, moved_shape), lead, axes)


def kl_from_samples(
  log_p: ArrayLike,
  log_q: ArrayLike,
  *,
  estimator: Estimator = "k1",
  axis: Axis = None,
  where: ArrayLike | None = None,
  log_weights: ArrayLike | None = None,
  self_normalized: bool = False,
  return_stderr: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  r"""Monte-Carlo estimate of :math:`D_{\mathrm{KL}}(P \,\|\, Q)` from samples.

  Given :math:`\log p(x_i)` and :math:`\log q(x_i)` at samples
  :math:`x_i \sim P`, returns the mean over ``axis`` (over the entries kept by
  ``where``) of the chosen estimator, with :math:`\log r = \log q - \log p`:

  .. math::

     \hat D = \frac{1}{n} \sum_{i=1}^n k(x_i), \qquad
     k \in \{-\log r,\ \tfrac12 (\log r)^2,\ (r - 1) - \log r\}
     \ \text{(k1, k2, k3)},

  or, for ``'cv'``, ``k1`` with the optimal-coefficient control variate
  :math:`\hat D = \overline{-\log r} + \hat\lambda\, \overline{(r - 1)}`,
  :math:`\hat\lambda = -\widehat{\mathrm{Cov}}(-\log r, r - 1) /
  \widehat{\mathrm{Var}}(r - 1)` (``k3`` fixes :math:`\lambda = 1`),
  biased at small :math:`n` because :math:`\hat\lambda` is fitted to the
  samples it is applied to; or, for ``'cv_crossfit'``, the cross-fitted
  version, unbiased:

  .. math::

     \hat D = \frac1n \sum_{i=1}^n \bigl[-\log r_i
     + \hat\lambda_{-i} (r_i - 1)\bigr],

  with :math:`\hat\lambda_{-i}` the same least-squares fit on all samples
  but :math:`i` (computed for all :math:`i` in :math:`O(n \log n)`). See
  ``jaxkl.kl_estimator_terms`` and :ref:`estimator-notes` (also
  ``help(jaxkl._estimators)``) for bias, support conditions and what
  gradients with fixed samples estimate.

  **Importance sampling.** If the samples come from a proposal :math:`\rho`
  instead of :math:`P`, pass ``log_weights`` :math:`= \log p(x_i) -
  \log \rho(x_i)`. Then, with :math:`w_i = e^{\text{log\_weights}_i}`,

  * ``self_normalized=False``: :math:`\hat D = \frac1n \sum_i w_i k(x_i)`,
    unbiased (for ``k1``/``k3``); ``log p`` and ``log ρ`` must be normalized;
  * ``self_normalized=True``: :math:`\hat D = \sum_i w_i k(x_i) / \sum_i w_i`,
    consistent with a bias of order :math:`1/n`, often lower variance, and
    invariant to a constant shift of ``log_weights``.

  The control variate for ``'cv'`` and ``'cv_crossfit'`` is then
  :math:`w (r - 1)` (resp. :math:`r - 1` under the normalized weights, where
  :math:`\hat\lambda_{-i}` uses the others' weights; self-normalization
  keeps its own :math:`O(1/n)` bias).

  **Standard error.** With ``return_stderr=True`` the result is a pair
  ``(estimate, stderr)``: the sample standard deviation of the terms (with
  Bessel's correction; ``n - 2`` with ``'cv'``) over :math:`\sqrt n`, or, with
  self-normalized weights, the delta-method
  :math:`\sqrt{\tfrac{n}{n-1}\sum_i \bar w_i^2 (k_i - \hat D)^2}` with
  :math:`\bar w_i = w_i / \sum_j w_j`. For ``'cv_crossfit'`` it is
  :math:`\sqrt{s_y^2 / n + (\hat D_{\mathrm{cv}} - \hat D)^2}`, with
  :math:`s_y` the standard deviation of the terms
  :math:`y_i = -\log r_i + \hat\lambda_{-i}(r_i - 1)` (weighted as above)
  and :math:`\hat D_{\mathrm{cv}}` the ``'cv'`` estimate: the terms share
  samples through their coefficients, and their covariances add about
  :math:`\mathrm{bias}(\hat D_{\mathrm{cv}})^2` to the variance, which
  :math:`s_y` misses and the squared difference estimates (slightly
  conservatively). It is NaN with fewer than 2 (3 for ``'cv'``) kept
  samples and carries no gradient. Under the central limit theorem,
  ``estimate ± 1.96 * stderr`` is an approximate 95% interval. This needs a
  finite variance of the terms: :math:`\mathbb{E}_P[(\log r)^2]` for
  ``k1``, and also :math:`\mathbb{E}_P[r^2] = \int q^2/p` for ``k3``,
  ``'cv'`` and ``'cv_crossfit'``, which is infinite when ``Q`` has heavier
  tails than ``P`` allow (e.g. Gaussians with
  :math:`\sigma_Q^2 \ge 2\sigma_P^2`): then ``k3`` and ``'cv_crossfit'``
  stay unbiased but their standard errors are meaningless.

  Args:
    log_p: :math:`\log p(x_i)`, any shape; samples along ``axis``.
    log_q: :math:`\log q(x_i)`, same shape.
    estimator: ``'k1' | 'k2' | 'k3' | 'cv' | 'cv_crossfit'``. Static.
    axis: the sample axis or axes to average over; ``None`` (default) for all.
      Static.
    where: optional boolean mask of samples to keep: either the shape of the
      result (masks whole rows) or broadcastable to ``log_p`` (as
      ``jaxkl.kl_divergence``). Masked entries may hold anything, including
      ``inf``/NaN; they contribute nothing to values or gradients. With
      nothing kept the estimate is 0.
    log_weights: optional :math:`\log p - \log \rho` for samples from a
      proposal :math:`\rho`, same shape as ``log_p``.
    self_normalized: whether to normalize the importance weights. Static;
      only with ``log_weights``.
    return_stderr: also return the standard error. Static.

  Returns:
    The estimate, shape of ``log_p`` without ``axis``, in the promoted input
    dtype (16-bit inputs are accumulated in float32); with
    ``return_stderr=True`` the pair ``(estimate, stderr)`` of that shape.

  Raises:
    ValueError: unknown ``estimator``, shapes that differ, a bad ``axis`` or
      mask, or ``self_normalized`` without ``log_weights``.
    TypeError: non-floating inputs, a non-boolean mask or non-bool flags.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> # P = N(0, 1), Q = N(1, 1): KL = 1/2.
    >>> x = jax.random.normal(jax.random.key(0), (100_000,))
    >>> log_p = jax.scipy.stats.norm.logpdf(x)
    >>> log_q = jax.scipy.stats.norm.logpdf(x, loc=1.0)
    >>> kl, se = jaxkl.kl_from_samples(log_p, log_q, estimator="k3",
    ...                                return_stderr=True)
    >>> bool(abs(kl - 0.5) < 4 * se), bool(se < 0.01)
    (True, True)
    >>> # The cross-fitted control variate: unbiased, and a smaller error.
    >>> kl_cf, se_cf = jaxkl.kl_from_samples(log_p, log_q,
    ...                                      estimator="cv_crossfit",
    ...                                      return_stderr=True)
    >>> bool(abs(kl_cf - 0.5) < 4 * se_cf), bool(se_cf < se)
    (True, True)
    >>> # Per-sequence KL: tokens on axis 1, padding masked out.
    >>> mask = jnp.array([[True, True, False], [True, False, False]])
    >>> lp = jnp.log(jnp.array([[0.5, 0.25, 0.1], [0.5, 0.3, 0.2]]))
    >>> lq = jnp.log(jnp.array([[0.25, 0.5, 0.7], [0.5, 0.1, 0.9]]))
    >>> jaxkl.kl_from_samples(lp, lq, estimator="k3", axis=1, where=mask)
    Array([0.25, 0.  ], dtype=float32)

  References:
    J. Schulman, "Approximating KL Divergence", 2020 (k3: the control
    variate with :math:`\lambda = 1`).
    A. B. Owen, "Monte Carlo theory, methods and examples", 2013, ch. 8-9
    (control variates; self-normalized importance sampling).
    V. Chernozhukov et al., "Double/debiased machine learning for treatment
    and structural parameters", The Econometrics Journal 21(1), 2018
    (cross-fitting).
  """
  estimator = validate_estimator(estimator)
  self_normalized = _checks.check_bool(self_normalized, "self_normalized")
  return_stderr = _checks.check_bool(return_stderr, "return_stderr")
  log_p = _checks.as_float_array(log_p, "log_p")
  log_q = _checks.as_float_array(log_q, "log_q")
  _checks.check_same_shape(log_p, log_q, "log_p", "log_q")
  arrays = [log_p, log_q]
  log_w: jax.Array | None = None
  if log_weights is not None:
    log_w = _checks.as_float_array(log_weights, "log_weights")
    _checks.check_same_shape(log_p, log_w, "log_p", "log_weights")
    arrays.append(log_w)
  elif self_normalized:
    raise ValueError("`self_normalized=True` needs `log_weights`.")
  axes = normalize_axis(axis, log_p.ndim)
  mask = broadcast_mask(where, log_p.shape, axes)
  out_dtype, compute_dtype = _checks.result_dtype(*arrays)
  log_r = log_q.astype(compute_dtype) - log_p.astype(compute_dtype)
  if mask is not None:
    log_r = jnp.where(mask, log_r, 0)
  if log_w is not None:
    log_w = log_w.astype(compute_dtype)
    if mask is not None:
      log_w = jnp.where(mask, log_w, -jnp.inf)
  estimate: jax.Array
  stderr: jax.Array
  estimate, stderr = estimate_from_log_ratios(
    log_r,
    estimator=estimator,
    axes=axes,
    mask=mask,
    log_weights=log_w,
    self_normalized=self_normalized,
  )[:2]
  if return_stderr:
    return estimate.astype(out_dtype), stderr.astype(out_dtype)
  return estimate.astype(out_dtype)


class SampleValues(NamedTuple):
  """Each sample's value, control and (unnormalized) weight; see ``sample_values``."""

  values: jax.Array
  control: jax.Array | None
  weights: jax.Array
  total: jax.Array
  kept: jax.Array
  shift: jax.Array | None
  scaled: jax.Array | None


def outside_support(log_r: jax.Array, log_weights: jax.Array) -> jax.Array:
  r"""``log_r`` with 0 where the importance weight is 0 (``log_weights = -inf``).

  A proposal sample outside :math:`P`'s support has :math:`w = 0` and
  :math:`\log r = \log q - \log p = +\infty` (or NaN if :math:`q = 0` too):
  its term :math:`w \cdot k(r)` is 0 by the convention :math:`0 \log 0 = 0`
  (the integrand vanishes where :math:`p` does), not :math:`0 \cdot \infty`.
  """
  return jnp.where(log_weights == -jnp.inf, jnp.zeros_like(log_r), log_r)


def sample_values(
  log_r: jax.Array,
  estimator: str,
  *,
  axes: tuple[int, ...],
  mask: jax.Array | None = None,
  log_weights: jax.Array | None = None,
  self_normalized: bool = False,
  magic: jax.Array | None = None,
) -> tuple[SampleValues, jax.Array | None]:
  r"""The per-sample quantities that ``weighted_estimate`` averages.

  The estimate is :math:`\sum_i (u_i / U) v_i` (plus a control :math:`c_i`)
  with :math:`U` = ``total``:

  * no importance weights: :math:`v = k`, :math:`u = 1` (0 where masked),
    :math:`U = n`;
  * ``log_weights``, not normalized: :math:`v = w k`, :math:`c = w(r - 1)`,
    :math:`u = 1`, :math:`U = n`;
  * self-normalized: :math:`v = k`, :math:`u = e^{\log w - m}` with the shift
    :math:`m = \max \log w` (0 if not finite), :math:`U = \sum u`.

  Args:
    log_r: :math:`\log q - \log p` at the samples.
    estimator: a validated estimator name.
    axes: the sample axes.
    mask: optional boolean mask of ``log_r``'s shape.
    log_weights: optional :math:`\log p - \log\rho` (``-inf`` where masked).
    self_normalized: normalize the importance weights.
    magic: optional DiCE factor :math:`e^{\ell - \bot\ell}`; with
      self-normalized weights it multiplies :math:`u` (and is used up).

  Returns:
    ``(SampleValues, magic)``: ``values``, ``control`` (None unless
    ``'cv'``/``'cv_crossfit'``), ``weights`` :math:`u`, ``total``
    :math:`U` and ``kept`` (the number of kept samples) with ``axes`` kept as size 1,
    ``shift`` :math:`m` and ``scaled`` :math:`e^{\log w - m}` (None without
    ``log_weights``; ``scaled`` without the DiCE factor, for Kish's effective
    sample size), and the DiCE factor left to apply (None if used up).
  """
  if log_weights is not None:
    log_r = outside_support(log_r, log_weights)
  terms = _log_ratio_terms(log_r, estimator)
  control = jnp.expm1(log_r) if estimator in ("cv", "cv_crossfit") else None
  keep = jnp.ones(log_r.shape, bool) if mask is None else mask
  count = jnp.sum(keep, axis=axes, keepdims=True, dtype=jnp.int32)
  count = count.astype(log_r.dtype)
  if mask is not None:
    terms = jnp.where(mask, terms, 0)
    if control is not None:
      control = jnp.where(mask, control, 0)
  if log_weights is None:
    sv = SampleValues(
      terms, control, keep.astype(log_r.dtype), count, count, None, None
    )
    return sv, magic
  shift = jax.lax.stop_gradient(jnp.max(log_weights, axis=axes, keepdims=True))
  shift = jnp.where(jnp.isfinite(shift), shift, 0)
  scaled = jnp.exp(log_weights - shift)  # 0 where masked
  if self_normalized:
    u = scaled
    if magic is not None:
      u = scaled * magic
      magic = None
    total = jnp.sum(u, axis=axes, keepdims=True)
    return SampleValues(terms, control, u, total, count, shift, scaled), magic
  w = jnp.exp(log_weights)  # 0 where masked
  values = w * terms
  if control is not None:
    control = w * control
  u = keep.astype(log_r.dtype)
  return SampleValues(values, control, u, count, count, shift, scaled), magic


@functools.partial(
  jax.jit,
  static_argnames=("estimator", "axes", "self_normalized", "groups", "tail_diagnostic"),
)
def estimate_from_log_ratios(
  log_r: jax.Array,
  *,
  estimator: str,
  axes: tuple[int, ...],
  mask: jax.Array | None = None,
  log_weights: jax.Array | None = None,
  self_normalized: bool = False,
  groups: int = 1,
  score_log_prob: jax.Array | None = None,
  tail_diagnostic: bool = False,
  log_r_scale: jax.Array | None = None,
) -> tuple[jax.Array, ...]:
  r"""The estimator behind ``kl_from_samples`` and ``monte_carlo_kl``.

  Jitted (a few dozen elementwise ops and reductions: compiled once per
  shape, they run much faster than op by op in eager mode).

  Args:
    log_r: :math:`\log q - \log p` at the samples (masked entries finite).
    estimator: a validated estimator name.
    axes: the sample axes (for ``groups > 1``, exactly ``(0,)``).
    mask: optional boolean mask of ``log_r``'s shape.
    log_weights: optional :math:`\log p - \log\rho` (``-inf`` where masked).
    self_normalized: normalize the importance weights.
    groups: ``2`` for antithetic pairs: samples ``i`` and ``i + n/2`` form a
      dependent pair; the standard error and the score-function baseline are
      computed from pair averages.
    score_log_prob: for ``gradient='score_function'``, the log-density of the
      sampling distribution at the (gradient-stopped) samples: adds the DiCE
      term :math:`\sum_i a_i (e^{\ell_i - \bot \ell_i} - 1)(\bot y_i - b_i)`,
      0 in value, whose gradient is the score-function term with the
      leave-one-out baseline :math:`b_i` (the mean of the other samples or
      pairs); with self-normalized weights the DiCE factor multiplies the
      weights instead.
    tail_diagnostic: also return ``pareto_k`` (see ``tail_rows`` and
      ``pareto_k_of_rows``); only with ``axes=(0,)`` and no ``mask``.
    log_r_scale: for the tail diagnostic, the magnitude whose rounding
      ``log_r`` carries (see ``tail_rows``).

  Returns:
    ``(estimate, stderr, effective_sample_size)``, the last Kish's
    :math:`(\sum w)^2 / \sum w^2` (the number of kept samples without
    weights); with ``tail_diagnostic``, ``pareto_k`` follows.
  """
  crossfit = estimator == "cv_crossfit"
  magic = None
  if score_log_prob is not None:
    magic_log = score_log_prob - jax.lax.stop_gradient(score_log_prob)
    magic = jnp.exp(magic_log)
  sv, magic = sample_values(
    log_r,
    estimator,
    axes=axes,
    mask=mask,
    log_weights=log_weights,
    self_normalized=self_normalized,
    magic=magic,
  )
  values, control, count = sv.values, sv.control, sv.kept
  weights = _safe_divide(sv.weights, sv.total)
  ess = count
  if sv.scaled is not None:
    ess = _safe_divide(
      jnp.sum(sv.scaled, axis=axes, keepdims=True) ** 2,
      jnp.sum(sv.scaled * sv.scaled, axis=axes, keepdims=True),
    )

  own_values, own_control, own_weights = values, control, weights
  if groups > 1:
    values, weights, control, count = _pair_up(values, weights, control, count, groups)
  if crossfit:
    assert control is not None  # 'cv_crossfit' has a control variate
    # Each sample's (or pair's) coefficient is fitted to the others, so it
    # is independent of that sample: every term is unbiased.
    lam = leave_one_out_coefficients(values, control, weights, axes)
    estimate, stderr, _ = weighted_estimate(
      values + lam * control, weights, count, axes
    )
    plain = jnp.sum(weights * values, axis=axes)
    estimate = infinite_or(plain, estimate)
    # The terms share samples through their coefficients; their covariances
    # add about bias('cv')^2 to the variance, which the spread of the terms
    # misses (25% of it at n = 20 for N(0, 1) vs N(1, 1)). The difference
    # from the in-sample 'cv' estimates that bias.
    in_sample = weighted_estimate(values, weights, count, axes, control)[0]
    gap = jax.lax.stop_gradient(in_sample - estimate)
    stderr = jnp.sqrt(stderr * stderr + gap * gap)
  else:
    estimate, stderr, lam = weighted_estimate(values, weights, count, axes, control)
    lam = jnp.expand_dims(lam, axes)
  if self_normalized:
    # Every weight 0 (no sample in P's support): 0/0, no estimate.
    empty = jnp.squeeze(sv.total, axis=axes) == 0
    estimate = jnp.where(empty, jnp.nan, estimate)
    stderr = jnp.where(empty, jnp.nan, stderr)
  if magic is not None:
    # The baseline: the mean of the other samples (or antithetic pairs).
    # With 'cv_crossfit' the others' coefficients depend on sample i, but
    # they multiply controls of mean 0 independent of it: still no bias.
    group_y = values if control is None else values + lam * control
    group_y = jax.lax.stop_gradient(group_y)
    total = jnp.sum(weights * group_y, axis=axes, keepdims=True)
    baseline = _safe_divide(total - weights * group_y, 1 - weights)
    if groups > 1:
      baseline = jnp.concatenate([baseline] * groups, axis=0)
    # Each sample's own value: its partner in a pair is not independent of it.
    y = own_values
    if own_control is not None:
      if crossfit and groups > 1:
        lam = jnp.concatenate([lam] * groups, axis=0)
      y = y + lam * own_control
    y = jax.lax.stop_gradient(y)
    estimate = estimate + jnp.sum(own_weights * (magic - 1) * (y - baseline), axis=axes)
  if tail_diagnostic:
    if axes != (0,) or mask is not None:
      raise ValueError("the tail diagnostic needs axes=(0,) and no mask.")
    rows, ties = tail_rows(
      log_r, estimator, log_weights, self_normalized, groups, log_r_scale
    )
    khat = pareto_k_of_rows(rows, ties)
    return estimate, stderr, jnp.squeeze(ess, axis=axes), khat
  return estimate, stderr, jnp.squeeze(ess, axis=axes)


# ----------------------------------------------------------------------------
# Tail diagnostic: the Pareto shape of the terms' tails (PSIS's k-hat).

#: Fewest terms for which ``pareto_k`` is computed (a tail of 5 values).
PARETO_MIN_TERMS = 25
#: PSIS's weakly informative prior on the shape: this many pseudo-observations
#: at 0.5, as PSIS uses (Vehtari et al., 2024).
_PRIOR_WEIGHT = 10.0
_PRIOR_SHAPE = 0.5
# Zhang & Stephens' grid is evaluated at once up to this many (grid points x
# exceedances) per row, point by point beyond (long tails of large samples).
_GRID_ELEMENTS = 2**20
# Exceedances within this many ulps of a tail row's rounding error are ties.
_TIE_ULPS = 64


def pareto_tail_size(count: int) -> int:
  r"""PSIS's tail size :math:`M = \lceil\min(S/5,\ 3\sqrt S)\rceil` for ``S`` terms.

  Returns 0 when ``count < PARETO_MIN_TERMS`` (no fit).
  """
  return int(pareto_tail_sizes(np.array([count]))[0])


def pareto_tail_sizes(counts: np.ndarray) -> np.ndarray:
  """``pareto_tail_size`` of each of an integer array of ``counts`` (int64),
  in float64 as PSIS computes it."""
  counts = np.asarray(counts, np.int64)
  s = counts.astype(np.float64)
  sizes = np.ceil(np.minimum(0.2 * s, 3.0 * np.sqrt(s))).astype(np.int64)
  return np.where(counts < PARETO_MIN_TERMS, 0, sizes)


def gpd_shape(exceedances: jax.Array, size: jax.Array | None = None) -> jax.Array:
  r"""Zhang & Stephens' estimate of a generalized Pareto shape, PSIS's prior.

  For exceedances :math:`0 \le x_1 \le \dots \le x_M` over a threshold
  (sorted ascending along the last axis), with the GPD written as
  :math:`F(x) = 1 - (1 - \theta x)^{1/\kappa}`, :math:`\xi = -\kappa` the
  usual shape (heavier tails for larger :math:`\xi`):

  * the profile log-likelihood of :math:`\theta < 1/x_M` is
    :math:`\ell(\theta) = M[\log(-\theta/\xi(\theta)) - \xi(\theta) - 1]`
    with :math:`\xi(\theta) = \frac1M \sum_i \log(1 - \theta x_i)`;
  * :math:`\hat\theta` is the posterior mean of :math:`\theta` over the grid
    :math:`\theta_j = 1/x_M + (1 - \sqrt{m/(j - 1/2)}) / (3 x_{q})`,
    :math:`j = 1..m`, :math:`m = 30 + \lfloor\sqrt M\rfloor`,
    :math:`q = \lfloor M/4 + 1/2\rfloor`, weights :math:`\propto
    e^{\ell(\theta_j)}`;
  * :math:`\hat\xi = \xi(\hat\theta)`, then shrunk towards 0.5 as PSIS does:
    :math:`(M\hat\xi + 10 \cdot 0.5) / (M + 10)`.

  Ties at the threshold (discrete terms) can make :math:`x_q = 0`: the
  grid's scale then uses the smallest positive exceedance. All exceedances 0
  (a constant tail) gives :math:`-\infty` (a bounded tail); non-finite
  exceedances give NaN. No gradient.

  Args:
    exceedances: ``[..., M]``, sorted ascending along the last axis,
      non-negative, ``M >= 2``.
    size: optional number of exceedances per row (an integer array
      broadcastable to ``[...]``, traced or not, between 2 and ``M``): only
      the last ``size`` entries of each row are fitted, the ones before must
      be 0 (padding). The fit is then that of the last ``size`` entries
      alone (the same :math:`m`, :math:`q` and prior weight), for a tail
      whose size is only known at run time.

  Returns:
    :math:`\hat\xi`, shape ``[...]``, in the input dtype.

  References:
    J. Zhang and M. A. Stephens, "A new and efficient estimation method for
    the generalized Pareto distribution", Technometrics 51(3), 2009.
    A. Vehtari, D. Simpson, A. Gelman, Y. Yao and J. Gabry, "Pareto smoothed
    importance sampling", JMLR 25(72), 2024.
  """
  x = jax.lax.stop_gradient(exceedances)
  dtype = x.dtype
  length = x.shape[-1]
  if size is None:
    count: int | jax.Array = length
    grid: int | jax.Array = 30 + math.isqrt(length)
    quartile = max(int(length / 4 + 0.5), 1) - 1
    x_q = x[..., quartile : quartile + 1]

    def mean(a: jax.Array, keepdims: bool = False) -> jax.Array:
      return jnp.mean(a, axis=-1, keepdims=keepdims)

  else:
    # A fit of the last `size` entries: m, q and the prior weight follow
    # `size`, from tables over the possible sizes (exact integer arithmetic).
    rows = jnp.clip(jnp.asarray(size, jnp.int32), 1, length)
    rows = jnp.broadcast_to(rows, x.shape[:-1])
    sizes = range(length + 1)
    grids = np.array([30 + math.isqrt(k) for k in sizes], np.int32)
    quartiles = np.array([max(int(k / 4 + 0.5), 1) - 1 for k in sizes], np.int32)
    count = rows.astype(dtype)[..., None]
    grid = jnp.asarray(grids)[rows].astype(dtype)[..., None]
    position = length - rows + jnp.asarray(quartiles)[rows]
    x_q = jnp.take_along_axis(x, position[..., None], axis=-1)

    def mean(a: jax.Array, keepdims: bool = False) -> jax.Array:
      # Padding adds 0; `a` is [..., M] or [..., m, M].
      divisor = jnp.reshape(count, count.shape + (1,) * (a.ndim - count.ndim))
      total = jnp.sum(a, axis=-1, keepdims=True) / divisor
      return total if keepdims else total[..., 0]

  points = 30 + math.isqrt(length)
  x_max = x[..., -1:]
  smallest = jnp.min(jnp.where(x > 0, x, jnp.inf), axis=-1, keepdims=True)
  x_q = jnp.where(x_q > 0, x_q, smallest)
  degenerate = ~(x_max > 0)  # constant tail (or NaN)
  x_max = jnp.where(degenerate, 1, x_max)
  x_q = jnp.where(jnp.isfinite(x_q) & (x_q > 0), x_q, x_max)
  j = jnp.arange(1, points + 1, dtype=dtype).reshape((1,) * (x.ndim - 1) + (points,))
  theta = 1 / x_max + (1 - jnp.sqrt(grid / (j - 0.5))) / (3 * x_q)  # [..., m]
  if points * length <= _GRID_ELEMENTS:
    xi = mean(jnp.log1p(-theta[..., :, None] * x[..., None, :]))
  else:  # a long tail: one grid point at a time, O(M) memory
    xi = jax.lax.map(
      lambda t: mean(jnp.log1p(-t[..., None] * x)), jnp.moveaxis(theta, -1, 0)
    )
    xi = jnp.moveaxis(xi, 0, -1)
  # -theta / xi -> 1 / mean(x) as theta -> 0.
  mean_x = mean(x, keepdims=True)
  ratio = jnp.where(xi != 0, -theta / jnp.where(xi != 0, xi, 1), 1 / mean_x)
  loglik = count * (jnp.log(ratio) - xi - 1)
  if size is not None:
    loglik = jnp.where(j <= grid, loglik, -jnp.inf)
  weights = jax.nn.softmax(loglik, axis=-1)
  theta_hat = jnp.sum(weights * theta, axis=-1, keepdims=True)
  xi_hat = mean(jnp.log1p(-theta_hat * x))  # [...]
  n = count[..., 0] if isinstance(count, jax.Array) else count
  xi_hat = (n * xi_hat + _PRIOR_WEIGHT * _PRIOR_SHAPE) / (n + _PRIOR_WEIGHT)
  finite = jnp.all(jnp.isfinite(exceedances), axis=-1)
  xi_hat = jnp.where(degenerate[..., 0], -jnp.inf, xi_hat)
  return jnp.where(finite, xi_hat, jnp.nan).astype(dtype)


def _ties_to_zero(exceedances: jax.Array, ties: jax.Array) -> jax.Array:
  """0 for rows whose every exceedance is within the rounding level ``ties``.

  All or nothing: a row of rounding noise is a constant tail; a genuine tail
  is fitted as it is. Zeroing only its small exceedances would pile zeros at
  the threshold, which reads as a heavy tail (k1 for N(0, 1) against
  N(1e-3, 1) in float32 got 1.38).
  """
  largest = jnp.max(exceedances, axis=-1, keepdims=True)
  return jnp.where(largest <= ties[..., None], 0, exceedances)


def pareto_k_from_tops(
  tops: jax.Array, tail: int | jax.Array, ties: jax.Array | None = None
) -> jax.Array:
  r"""``pareto_k`` from the largest values of each row of ``tail_rows``.

  Args:
    tops: ``[R, ..., K]`` with ``K >= tail + 1``, not necessarily sorted
      (the largest values of each row, or a gathering of several devices').
    tail: :math:`M`: a Python int, or an integer array broadcastable to
      ``[...]`` (traced, e.g. the tail size of a number of samples known
      only at run time; ``K - 1`` bounds it), 0 for no fit (NaN).
    ties: optional ``[R, ...]``: the rows' rounding level (from
      ``tail_rows``); a row whose exceedances are all up to this size holds
      terms that are equal in exact arithmetic, such as the pair means of
      antithetic pairs when :math:`\log r` is linear, and reads as a
      constant tail (:math:`-\infty`), not as a tail fitted to rounding
      noise. Other rows are fitted as they are.

  Returns:
    The largest of the rows' upper-tail :math:`\hat\xi`, shape ``[...]``
    (NaN if any is NaN).
  """
  if isinstance(tail, int):
    top = jax.lax.top_k(tops, tail + 1)[0]  # descending
    exceedances = top[..., :tail][..., ::-1] - top[..., tail:]
    if ties is not None:
      exceedances = _ties_to_zero(exceedances, ties)
    return jnp.max(gpd_shape(exceedances), axis=0)
  longest = tops.shape[-1] - 1
  top = jax.lax.top_k(tops, longest + 1)[0]  # descending
  size = jnp.broadcast_to(jnp.asarray(tail, jnp.int32), top.shape[:-1])
  threshold = jnp.take_along_axis(top, jnp.clip(size, 0, longest)[..., None], axis=-1)
  exceedances = top[..., :longest] - threshold
  if ties is not None:
    exceedances = _ties_to_zero(exceedances, ties)
  # Ascending, the `size` exceedances last and zeros (padding) before them.
  position = jnp.arange(longest, dtype=jnp.int32)
  valid = position.reshape((1,) * size.ndim + (longest,)) < size[..., None]
  exceedances = jnp.where(valid, exceedances, 0)[..., ::-1]
  xi = gpd_shape(exceedances, size)
  return jnp.max(jnp.where(size >= 2, xi, jnp.nan), axis=0)


def tail_rows(
  log_r: jax.Array,
  estimator: str,
  log_weights: jax.Array | None = None,
  self_normalized: bool = False,
  groups: int = 1,
  log_r_scale: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""The tails that ``pareto_k`` fits, as rows whose upper tails matter.

  The estimator's terms are linear combinations of a few *components*:
  ``k1``: :math:`\log r`; ``k2``: :math:`(\log r)^2`; ``k3``, ``'cv'``,
  ``'cv_crossfit'``: :math:`\log r` and :math:`r` (:math:`r - 1 - \log r`,
  :math:`-\log r + \lambda(r - 1)`). With importance weights :math:`w`
  each is multiplied by :math:`w`, and :math:`w` itself is a component
  where it enters alone (``k3``/``'cv'``/``'cv_crossfit'`` through
  :math:`w(r - 1)`; self-normalized weights through
  :math:`w (k - \hat D)`). Antithetic pairs (``groups=2``) average each
  component over the pair. A combination has a finite variance when every
  component does; fitting the components rather than their combination
  avoids mixing two components' tails near the threshold, which inflates
  :math:`\hat k` at moderate :math:`n`.

  Args:
    log_r: :math:`\log q - \log p`, samples on axis 0.
    estimator: a validated estimator name.
    log_weights: optional :math:`\log p - \log\rho`, shape of ``log_r``.
    self_normalized: whether the weights are normalized.
    groups: ``2`` for antithetic pairs ``(i, i + n/2)``.
    log_r_scale: optional magnitude whose rounding :math:`\log r` carries,
      e.g. :math:`|\log p| + |\log q|` when :math:`\log r` is their
      difference; :math:`|\log r|` by default.

  Returns:
    ``(rows, ties)``. ``rows``: ``[R, ..., G]``: for the signed component
    :math:`\log r` both :math:`c` and :math:`-c`, for the non-negative ones
    (:math:`r`, :math:`(\log r)^2`, :math:`w`) only :math:`c`; samples (or
    pairs) on the last axis. ``pareto_k`` fits the upper tail of each row.
    ``ties``: ``[R, ...]``, each row's rounding level, ``_TIE_ULPS`` ulps of
    the largest error bound of its components over the samples (the
    absolute rounding of :math:`\log r` propagated: :math:`s` for
    :math:`\log r`, :math:`r s` for :math:`r`, :math:`2|\log r| s` for
    :math:`(\log r)^2`, times :math:`w` with weights; 0 for :math:`w`
    alone), for ``pareto_k_from_tops``.
  """
  log_r = jax.lax.stop_gradient(log_r)
  if log_weights is not None:
    log_r = outside_support(log_r, log_weights)
  scale = jnp.abs(log_r) if log_r_scale is None else log_r_scale
  scale = jax.lax.stop_gradient(jnp.where(jnp.isfinite(scale), scale, 0))
  signed, positive = [], []  # (component, its rounding error bound)
  with_r = estimator in ("k3", "cv", "cv_crossfit")
  if estimator == "k2":
    positive.append((log_r * log_r, 2 * jnp.abs(log_r) * scale))
  else:
    signed.append((log_r, scale))
  if with_r:
    r = jnp.exp(log_r)
    positive.append((r, r * scale))
  if log_weights is not None:
    log_w = jax.lax.stop_gradient(log_weights)
    shift = jnp.max(log_w, axis=0, keepdims=True)
    w = jnp.exp(log_w - jnp.where(jnp.isfinite(shift), shift, 0))
    signed = [(w * c, w * e) for c, e in signed]
    positive = [(w * c, w * e) for c, e in positive]
    if with_r or self_normalized:
      positive.append((w, jnp.zeros_like(w)))
  parts = signed + [(-c, e) for c, e in signed] + positive
  rows = jnp.stack([c for c, _ in parts])  # [R, n, ...]
  errors = jnp.stack([e for _, e in parts])
  eps = _checks.finfo(rows.dtype).eps
  ties = _TIE_ULPS * eps * jnp.max(jnp.where(jnp.isfinite(errors), errors, 0), axis=1)
  if groups > 1:
    size = rows.shape[1] // groups
    rows = jnp.mean(
      jnp.reshape(rows, (rows.shape[0], groups, size, *rows.shape[2:])), axis=1
    )
  return jnp.moveaxis(rows, 1, -1), ties


def pareto_k_of_rows(rows: jax.Array, ties: jax.Array | None = None) -> jax.Array:
  r"""``pareto_k``: the largest upper-tail shape over ``tail_rows``' rows.

  Args:
    rows: ``[R, ..., S]``.
    ties: optional ``[R, ...]`` rounding levels (see ``pareto_k_from_tops``).

  Returns:
    :math:`\max_r \hat\xi_r`, shape ``[...]``; NaN when
    ``S < PARETO_MIN_TERMS`` or a row's tail is not finite.
  """
  tail = pareto_tail_size(rows.shape[-1])
  if tail == 0:
    return jnp.full(rows.shape[1:-1], jnp.nan, rows.dtype)
  return pareto_k_from_tops(jax.lax.top_k(rows, tail + 1)[0], tail, ties)


def _pair_up(
  values: jax.Array,
  weights: jax.Array,
  control: jax.Array | None,
  count: jax.Array,
  groups: int,
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array]:
  """Combines samples ``i, i + n/g, ...`` (one antithetic group) into one."""

  def split(a: jax.Array) -> jax.Array:
    return jnp.reshape(a, (groups, a.shape[0] // groups, *a.shape[1:]))

  w = split(weights)
  group_w = jnp.sum(w, axis=0)

  def combine(a: jax.Array) -> jax.Array:
    return _safe_divide(jnp.sum(w * split(a), axis=0), group_w)

  values = combine(values)
  if control is not None:
    control = combine(control)
  return values, group_w, control, count / groups
