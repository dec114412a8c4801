"""Discrete families: categorical, Bernoulli, Poisson."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _pointwise
from jaxkl import _special
from jaxkl._closed_forms._base import _kl
from jaxkl._closed_forms._base import _x_phi


def _kl_log_probs(
  log_p: jax.Array, log_q: jax.Array, shift: jax.Array, both_impossible: jax.Array
) -> jax.Array:
  r"""KL between categoricals from normalized log-probabilities, last axis.

  ``shift`` is the logit difference ``logits_q - logits_p`` per class (NaN
  or infinite where a logit is infinite) and ``both_impossible`` marks the
  classes whose logits are ``-inf`` in both. Two evaluations, selected per
  row:

  * precise (every class has a finite ``log_p`` and ``shift``, or is
    impossible under both; no ``shift`` more than ``log(max) / 2`` above its
    P-mean; a class whose :math:`p_k` underflows to 0 contributes 0 to the
    sum and its share :math:`\exp(\log p_k + e_k)` to :math:`s`): with :math:`e_k = \Delta_k - \bar\Delta`
    (:math:`\bar\Delta = \sum_k p_k \Delta_k`), the log-ratios are
    :math:`\log(q_k/p_k) = e_k - \operatorname{log1p}(s)`, with
    :math:`s = \sum_k p_k \operatorname{expm1}(e_k) \ge 0`, and
    :math:`\mathrm{KL} = \sum_k p_k\,(e^{D_k} - 1 - D_k)`, a sum of
    non-negative terms computed from the small :math:`e_k`: the relative
    error stays a few ``eps`` however close P and Q are (the textbook sum of
    :math:`p_k(\log p_k - \log q_k)` loses ``eps * |logits|`` absolutely);
  * otherwise :math:`\sum_k p_k(\log p_k - \log q_k)` with the
    library's zero-mass rule (:mod:`jaxkl._pointwise`): a class whose
    :math:`p_k = \exp(\log p_k)` is 0 contributes exactly 0 (zero
    gradient) whatever :math:`q_k`, and :math:`p_k > 0 = q_k` gives
    :math:`+\infty`.
  """
  generic = jnp.sum(_pointwise.kl_terms_log_target(log_q, log_p), axis=-1)
  p = jnp.exp(log_p)
  mass = p > 0
  finite_shift = jnp.isfinite(shift)
  usable = mass & finite_shift
  # Zero mass under P (p_k underflows) with finite logits: contributes 0 to
  # the sum, but its q-share p_k e^(e_k) = exp(log p_k + e_k) still enters s.
  unseen = ~mass & finite_shift & jnp.isfinite(log_p)
  valid = jnp.all(usable | unseen | both_impossible, axis=-1, keepdims=True)
  weight = jnp.where(usable, p, 0)
  total = jnp.sum(weight, axis=-1, keepdims=True)
  total = jnp.where(total > 0, total, 1)
  delta = jnp.where(usable | unseen, shift, 0)
  mean = jnp.sum(weight * delta, axis=-1, keepdims=True) / total
  e = jnp.where(usable | unseen, delta - mean, 0)
  unseen_exponent = jnp.where(unseen, log_p + e, -jnp.inf)
  limit = 0.5 * float(np.log(_checks.finfo(p.dtype).max))
  precise_ok = valid & jnp.all(
    (e <= limit) & (unseen_exponent <= limit), axis=-1, keepdims=True
  )
  e = jnp.where(precise_ok, e, 0)
  unseen_share = jnp.exp(jnp.where(precise_ok & unseen, unseen_exponent, -jnp.inf))
  s = jnp.sum(weight * jnp.expm1(e) + unseen_share, axis=-1, keepdims=True) / total
  log_ratio = e - _special.log1p(s)
  precise = jnp.sum(weight * _special.expm1_minus(log_ratio), axis=-1)
  return jnp.where(precise_ok[..., 0], precise, generic)


# ----------------------------------------------------------------------------
# Discrete families.


def kl_categorical(
  logits_p: ArrayLike, logits_q: ArrayLike, *, axis: int = -1
) -> jax.Array:
  r"""KL divergence between categorical distributions given by logits.

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \sum_{k} p_k (\log p_k - \log q_k),
     \qquad \log p = \operatorname{log\_softmax}(\text{logits}_p),

  evaluated as :math:`\sum_k p_k (e^{D_k} - 1 - D_k)` with
  :math:`D_k = \log(q_k / p_k)` obtained from the logit differences (no
  cancellation when :math:`P \approx Q`). A class with :math:`p_k = 0`
  (logit :math:`-\infty`, or :math:`\exp(\log p_k)` underflowing to 0: the
  library's zero-mass rule) contributes exactly 0, with zero gradient,
  whatever :math:`q_k`; a class with :math:`p_k > 0` and :math:`q_k = 0`
  gives :math:`+\infty` (and a gradient that is not finite, for that
  example only). Unlike
  :func:`jaxkl.kl_divergence_from_logits` the batch dimensions broadcast.

  Args:
    logits_p: unnormalised log-probabilities of :math:`P`, shape
      ``[..., K]`` (classes on ``axis``); ``-inf`` marks impossible classes
      (at least one must be finite).
    logits_q: unnormalised log-probabilities of :math:`Q`, the same number
      of classes ``K`` on ``axis``.
    axis: the class axis of each argument (an int; negative values count
      from the end of each argument's shape). Static.

  Returns:
    The divergence, shape: the batch shapes (``axis`` removed) broadcast
    together.

  Raises:
    TypeError: a non-floating argument or a non-int ``axis``.
    ValueError: ``axis`` out of range, different numbers of classes, or
      batch shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> logits_p = jnp.log(jnp.array([0.5, 0.5, 0.0]))  # log 0 = -inf
    >>> logits_q = jnp.log(jnp.array([0.25, 0.25, 0.5]))
    >>> jaxkl.kl_categorical(logits_p, logits_q)  # log 2
    Array(0.6931472, dtype=float32)

  References:
    Cover & Thomas, "Elements of Information Theory", 2nd ed., Wiley, 2006,
    section 2.3.
  """
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise TypeError(f"`axis` must be an int; got {axis!r}.")
  moved = []
  for name, value in (("logits_p", logits_p), ("logits_q", logits_q)):
    array = _checks.as_float_array(value, name)
    if not -array.ndim <= axis < array.ndim:
      raise ValueError(
        f"`axis`={axis} is out of range for `{name}` of shape "
        f"{tuple(array.shape)}; the categorical needs a class axis."
      )
    moved.append(jnp.moveaxis(array, int(axis), -1))
  return _kl(_kl_categorical, [("logits_p", moved[0]), ("logits_q", moved[1])], (1, 1))


def _kl_categorical(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(logits_p, axis=-1)
  log_q = jax.nn.log_softmax(logits_q, axis=-1)
  impossible = (logits_p == -jnp.inf) & (logits_q == -jnp.inf)
  return _kl_log_probs(log_p, log_q, logits_q - logits_p, impossible)


def kl_bernoulli(logits_p: ArrayLike, logits_q: ArrayLike) -> jax.Array:
  r"""KL divergence between Bernoulli distributions given by logits.

  With :math:`p = \sigma(a)`, :math:`q = \sigma(b)` for logits :math:`a`,
  :math:`b`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = p \log\frac{p}{q}
       + (1 - p) \log\frac{1 - p}{1 - q},

  with every logarithm taken as a log-sigmoid,
  :math:`\log p = -\operatorname{softplus}(-a)` and
  :math:`\log(1 - p) = -\operatorname{softplus}(a)`, so that neither
  :math:`p` nor :math:`1 - p` is rounded to 0 or 1 before its logarithm is
  taken: finite logits of any size (even :math:`\pm 10^{30}`) give finite,
  accurate values.
  Infinite logits are allowed: :math:`a = \pm\infty` is a point mass (its
  zero-probability outcome contributes 0), and :math:`b = \pm\infty` gives
  :math:`+\infty` unless :math:`P` is the same point mass, or :math:`P`'s
  probability of the missing outcome underflows to 0 (the library's
  zero-mass rule: ``kl_bernoulli(-1000., -inf)`` is 0). Where the value is
  :math:`+\infty` the gradient is not finite. For finite logits the value is
  the categorical's with logits :math:`[a, 0]`, :math:`[b, 0]`, evaluated
  without cancellation (relative accuracy also when :math:`P \approx Q`).

  Args:
    logits_p: log-odds :math:`a = \log(p / (1 - p))` of :math:`P`, any shape.
    logits_q: log-odds :math:`b` of :math:`Q`.

  Returns:
    The divergence, shape: the two shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> jaxkl.kl_bernoulli(jnp.array([0.0, 40.0]), jnp.array([0.0, -40.0]))
    Array([ 0., 40.], dtype=float32)

  References:
    Cover & Thomas, "Elements of Information Theory", 2nd ed., Wiley, 2006,
    section 2.3.
  """
  return _kl(_kl_bernoulli, [("logits_p", logits_p), ("logits_q", logits_q)], (0, 0))


def _kl_bernoulli(a: jax.Array, b: jax.Array) -> jax.Array:
  # The categorical with logits [a, 0] and [b, 0].
  log_p = jnp.stack([jax.nn.log_sigmoid(a), jax.nn.log_sigmoid(-a)], -1)
  log_q = jnp.stack([jax.nn.log_sigmoid(b), jax.nn.log_sigmoid(-b)], -1)
  shift = jnp.stack([b - a, jnp.zeros_like(a)], -1)
  return _kl_log_probs(log_p, log_q, shift, jnp.zeros(shift.shape, bool))


def kl_bernoulli_probs(probs_p: ArrayLike, probs_q: ArrayLike) -> jax.Array:
  r"""KL divergence between Bernoulli distributions given by probabilities.

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = p \log\frac{p}{q}
       + (1 - p) \log\frac{1 - p}{1 - q},

  a term with zero probability under :math:`P` is exactly 0 whatever
  :math:`q` (its derivative with respect to that probability is taken as 0,
  as :func:`jax.scipy.special.rel_entr` does), and a term with :math:`p > 0 =
  q` is :math:`+\infty` (with a gradient that is not finite); elsewhere
  gradients are finite. Probabilities within about ``finfo.eps`` of 1 cannot
  be told from 1: use :func:`kl_bernoulli` with logits when they matter.

  Args:
    probs_p: :math:`p = P(X = 1)` in :math:`[0, 1]`, any shape.
    probs_q: :math:`q = Q(X = 1)` in :math:`[0, 1]`.

  Returns:
    The divergence, shape: the two shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> jaxkl.kl_bernoulli_probs(jnp.array([0.5, 0.0, 1.0]),
    ...                          jnp.array([0.5, 0.5, 0.0]))
    Array([0.       , 0.6931472,       inf], dtype=float32)

  References:
    Cover & Thomas, "Elements of Information Theory", 2nd ed., Wiley, 2006,
    section 2.3.
  """
  return _kl(_kl_bernoulli_probs, [("probs_p", probs_p), ("probs_q", probs_q)], (0, 0))


def _kl_bernoulli_probs(p: jax.Array, q: jax.Array) -> jax.Array:
  # p phi(q/p) + (1 - p) phi((1 - q)/(1 - p)): the two differences are
  # q - p and p - q (exact for close p, q), whatever the rounding of 1 - p.
  d = _special.difference(p, q)
  return _special.x_phi(p, d, q) + _special.x_phi(1 - p, -d, 1 - q)


def kl_poisson(rate_p: ArrayLike, rate_q: ArrayLike) -> jax.Array:
  r"""KL divergence between Poisson distributions.

  From :math:`\log\frac{P(k)}{Q(k)} = k \log\frac{\lambda_p}{\lambda_q}
  - \lambda_p + \lambda_q` and :math:`\mathbb E_P[k] = \lambda_p`:

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \lambda_p \log\frac{\lambda_p}{\lambda_q}
       - \lambda_p + \lambda_q,

  with :math:`0 \log 0 = 0`: :math:`\lambda_p = 0` (a point mass at 0) gives
  :math:`\lambda_q`. There the derivative of the
  :math:`\lambda_p \log(\lambda_p/\lambda_q)` term is taken as 0 (as
  :func:`jax.scipy.special.rel_entr` does; the one-sided derivative is
  :math:`-\infty`), so the gradient with respect to :math:`\lambda_p` is
  :math:`-1` and with respect to :math:`\lambda_q` is 1. :math:`\lambda_q =
  0 < \lambda_p` gives :math:`+\infty`.

  Args:
    rate_p: rate :math:`\lambda_p \ge 0` of :math:`P`, any shape.
    rate_q: rate :math:`\lambda_q \ge 0` of :math:`Q`.

  Returns:
    The divergence, shape: the two shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> jaxkl.kl_poisson(jnp.array([0.0, 2.0]), jnp.array([3.0, 2.0]))
    Array([3., 0.], dtype=float32)

  References:
    Cover & Thomas, "Elements of Information Theory", 2nd ed., Wiley, 2006,
    section 2.3 (the definition; the closed form follows as above). Johnson,
    Kemp & Kotz, "Univariate Discrete Distributions", 3rd ed., Wiley, 2005,
    ch. 4 (the Poisson distribution).
  """
  return _kl(_kl_poisson, [("rate_p", rate_p), ("rate_q", rate_q)], (0, 0))


def _kl_poisson(rate_p: jax.Array, rate_q: jax.Array) -> jax.Array:
  return _x_phi(rate_p, rate_q)
