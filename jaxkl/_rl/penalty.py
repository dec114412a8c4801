r"""Per-token KL penalties from the log-probabilities of sampled tokens.

RLHF, PPO and GRPO penalize, at every generated token :math:`y_t \sim \pi`,
a per-token estimate of :math:`D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})`
computed from two numbers: :math:`\log \pi(y_t)` and
:math:`\log \pi_{\text{ref}}(y_t)`. :func:`kl_penalty` computes Schulman's
estimators under the names used by verl, TRL and OpenRLHF, with the
gradient semantics of Tang & Munos (2025) made explicit, an optional
straight-through gradient, an importance-sampling correction for tokens
sampled by an older (behaviour) policy, and overflow-proof numerics.
"""

from __future__ import annotations

import functools
import math
from typing import Any
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl._estimators import _k3
from jaxkl._estimators import _k3_and_slope
from jaxkl._per_example import broadcast_mask

#: Canonical estimator names.
ESTIMATORS: tuple[str, ...] = ("k1", "abs", "k2", "k3")
#: verl's names for them (``kl_penalty_forward``).
ALIASES: dict[str, str] = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}
#: Every accepted name: canonical, alias, and either with verl's ``+`` suffix.
ESTIMATOR_NAMES: tuple[str, ...] = tuple(
  name + suffix for suffix in ("", "+") for name in (*ESTIMATORS, *ALIASES)
)
#: Accepted values of ``gradient``.
GRADIENTS: tuple[str | None, ...] = (None, "k2")


# ----------------------------------------------------------------------------
# Validation of the static arguments.


def parse_estimator(estimator: Any) -> tuple[str, bool]:
  """Returns ``(canonical name, straight-through)`` for an estimator name.

  Raises:
    ValueError: ``'full'`` (needs full logits) or an unknown name.
  """
  if isinstance(estimator, str) and estimator in ESTIMATOR_NAMES:
    plus = estimator.endswith("+")
    name = estimator[:-1] if plus else estimator
    return ALIASES.get(name, name), plus
  if estimator in ("full", "full+"):
    raise ValueError(
      f"`estimator`={estimator!r} is the exact per-token KL, which needs the "
      "full logits of both models, not the log-probabilities of the sampled "
      "tokens; use `jaxkl.kl_penalty_from_logits(logits, ref_logits)`."
    )
  raise ValueError(
    f"`estimator` must be one of {', '.join(map(repr, ESTIMATOR_NAMES))}; got "
    f"{estimator!r}."
  )


def check_gradient(gradient: Any) -> str | None:
  """Returns ``gradient`` if it is None or ``'k2'``, else raises ValueError."""
  if gradient is None or (isinstance(gradient, str) and gradient == "k2"):
    return gradient
  raise ValueError(
    f"`gradient` must be None (autodiff of the estimator) or 'k2' (the "
    f"estimator's value with the gradient of k2); got {gradient!r}."
  )


def check_clip(clip_log_ratio: Any) -> float | None:
  """Returns ``clip_log_ratio`` as a float (or None) after validating it.

  Raises:
    TypeError: not a real Python/NumPy number (a traced array cannot decide
      the computation at trace time).
    ValueError: not positive, or not finite.
  """
  if clip_log_ratio is None:
    return None
  if isinstance(clip_log_ratio, (bool, np.bool_)) or not isinstance(
    clip_log_ratio, (int, float, np.integer, np.floating)
  ):
    raise TypeError(
      "`clip_log_ratio` must be None or a positive Python float (static); got "
      f"{clip_log_ratio!r} of type {type(clip_log_ratio).__name__}."
    )
  value = float(clip_log_ratio)
  if not (math.isfinite(value) and value > 0):
    raise ValueError(
      f"`clip_log_ratio` must be a positive finite float; got {clip_log_ratio!r}."
    )
  return value


# ----------------------------------------------------------------------------
# Numerical building blocks.


def _log_ratio(log_p: jax.Array, log_ref: jax.Array) -> jax.Array:
  """``log π - log π_ref``, and 0 where both are the same infinity.

  A token with probability 0 under both models (both log-probabilities
  ``-inf``) has log-ratio 0 (the convention :math:`0 \\log(0/0) = 0`), not
  ``-inf - (-inf) = NaN``; its gradient there is 0. (A select on
  ``log π == log π_ref`` alone would be cheaper, but would also zero the
  second derivatives at ``d = 0``.)
  """
  same_infinity = (log_p == log_ref) & jnp.isinf(log_p)
  return jnp.where(same_infinity, 0, log_p - log_ref)


def _clip(d: jax.Array, bound: float) -> jax.Array:
  """``d`` clipped to ``[-bound, bound]``; gradient 1 inside, 0 outside."""
  return jnp.where(jnp.abs(d) <= bound, d, jnp.copysign(bound, d))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _clip_straight_through(d: jax.Array, bound: float) -> jax.Array:
  """``d`` clipped to ``[-bound, bound]`` with the identity's gradient.

  A custom rule rather than ``d + stop_gradient(clip(d) - d)``, which is
  ``inf - inf = NaN`` at ``d = ±inf``.
  """
  return _clip(d, bound)


@_clip_straight_through.defjvp
def _clip_straight_through_jvp(
  bound: float, primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
  (d,), (tangent,) = primals, tangents
  return _clip(d, bound), tangent


@jax.custom_jvp
def _value_with_gradient_of(value: jax.Array, surrogate: jax.Array) -> jax.Array:
  """``value``, differentiated as ``surrogate`` (a straight-through estimator).

  Equivalent to ``stop_gradient(value) + surrogate - stop_gradient(surrogate)``
  but bit-exact in value and free of ``inf - inf`` when ``surrogate``
  overflows.
  """
  return value


@_value_with_gradient_of.defjvp
def _value_with_gradient_of_jvp(
  primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
  (value, surrogate), (_, surrogate_dot) = primals, tangents
  return _value_with_gradient_of(value, surrogate), surrogate_dot


def _exp_mul(
  x: jax.Array,
  y: jax.Array,
  log_abs_y: jax.Array | None = None,
  sign_y: jax.Array | None = None,
) -> jax.Array:
  r""":math:`e^x y` without overflow or underflow of :math:`e^x` alone.

  While :math:`e^x` is a normal float (:math:`|x| < 86.3` in float32,
  :math:`707.4` in float64) the plain product (correctly rounded, ``±inf``
  when the result overflows, exact derivatives); beyond,
  :math:`\operatorname{sign}(y)\,e^{x + \log|y|}`.
  Exactly 0 when :math:`y = 0` (even for :math:`x = +\infty`) and when
  :math:`x = -\infty` (even for :math:`y = \pm\infty`: callers pass only
  ``y`` growing more slowly than :math:`e^{-x}`). ``log_abs_y``, if given,
  is :math:`\log|y|` computed by the caller where ``y`` itself may overflow
  or underflow (then :math:`e^{x + \log|y|}` is used), with the sign
  ``sign_y``.
  """
  info = _checks.finfo(x.dtype)
  bound = min(math.log(float(info.max)), -math.log(float(info.tiny))) - 1
  if log_abs_y is None:
    zero = (y == 0) | (x == -jnp.inf)
    log_abs_y = jnp.log(jnp.abs(jnp.where(zero, 1, y)))
    y_exact = jnp.isfinite(y) | (log_abs_y == jnp.inf)
  else:  # y may have overflowed or underflowed where log|y| did not
    zero = (log_abs_y == -jnp.inf) | (x == -jnp.inf)
    y_exact = jnp.where(
      jnp.isfinite(log_abs_y), jnp.isfinite(y) & (jnp.abs(y) >= info.tiny), True
    )
  direct_ok = (jnp.abs(x) < bound) & y_exact
  direct = jnp.exp(jnp.where(direct_ok, x, 0)) * jnp.where(direct_ok, y, 0)
  # Unused lanes get harmless inputs (a NaN there would leak into gradients).
  use_logs = ~direct_ok & ~zero
  x_log = jnp.where(use_logs, x, 0)
  log_abs_y = jnp.where(use_logs, log_abs_y, 0)
  if sign_y is None:
    sign_y = jnp.sign(y)
  by_logs = sign_y * jnp.exp(x_log + log_abs_y)
  return jnp.where(direct_ok, direct, jnp.where(zero, 0, by_logs))


@jax.custom_jvp
def _expm1(x: jax.Array) -> jax.Array:
  """``jnp.expm1`` with the derivative ``exp(x)``.

  JAX differentiates ``expm1`` as ``expm1(x) + 1``, which cancels for
  negative ``x`` (a relative error of ``eps * e^{-x}``: 1e-5 at ``x = -6``
  in float32, 100% below ``x = -17``).
  """
  return jnp.expm1(x)


@_expm1.defjvp
def _expm1_jvp(
  primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
  (x,), (tangent,) = primals, tangents
  return _expm1(x), jnp.exp(x) * tangent


def _log_abs(x: jax.Array) -> jax.Array:
  """``log|x|``: ``-inf`` at 0, with a zero (not NaN) gradient there."""
  nonzero = x != 0
  return jnp.where(nonzero, jnp.log(jnp.abs(jnp.where(nonzero, x, 1))), -jnp.inf)


def _log_ratio_or_zero(log_p: jax.Array, log_ref: jax.Array) -> jax.Array:
  """``log π_ref - log π``, and 0 wherever the two are equal (both ``-inf``
  included). One comparison: cheaper than ``_log_ratio``'s test for the same
  infinity; used only under the custom rules below, whose derivatives do not
  go through this select (through it, the derivative at equal inputs would
  be 0)."""
  return jnp.where(log_p == log_ref, 0, log_ref - log_p)


def _symbolic_difference(tangents: tuple[Any, Any]) -> jax.Array | None:
  """``t_ref - t_p`` of the tangents of ``(log π, log π_ref)``, skipping a
  symbolic zero (an infinite partial times an instantiated zero is NaN);
  ``None`` if both are symbolic zeros."""
  t_p, t_ref = tangents
  p_zero, ref_zero = isinstance(t_p, SymbolicZero), isinstance(t_ref, SymbolicZero)
  if p_zero and ref_zero:
    return None
  if p_zero:
    return cast(jax.Array, t_ref)
  if ref_zero:
    return -cast(jax.Array, t_p)
  return cast(jax.Array, t_ref - t_p)


def _times(partial: jax.Array, direction: jax.Array | None) -> jax.Array:
  return jnp.zeros_like(partial) if direction is None else partial * direction


@jax.custom_jvp
def _ratio(log_p: jax.Array, log_ref: jax.Array) -> jax.Array:
  """``ρ = π_ref / π``, 0 where both are ``-inf`` (0 derivatives at a
  token impossible under both, as ``_log_ratio``); every derivative in
  ``log π_ref - log π`` is ``ρ`` itself. Reached by second and higher
  derivatives only, so its full guard costs nothing in a gradient."""
  return jnp.where(
    (log_p == log_ref) & jnp.isinf(log_p), 0, jnp.exp(_log_ratio(log_ref, log_p))
  )


def _ratio_jvp(
  primals: tuple[jax.Array, jax.Array], tangents: tuple[Any, Any]
) -> tuple[jax.Array, jax.Array]:
  value = _ratio(*primals)
  return value, _times(value, _symbolic_difference(tangents))


_ratio.defjvp(_ratio_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _k3_slope(log_p: jax.Array, log_ref: jax.Array) -> jax.Array:
  """``ρ - 1``, the derivative of k3 in ``log ρ`` (accurate near ``ρ = 1``:
  ``_estimators._k3_and_slope``); its derivative is ``ρ`` (``_ratio``)."""
  return _k3_and_slope(_log_ratio_or_zero(log_p, log_ref))[1]


def _k3_slope_jvp(
  primals: tuple[jax.Array, jax.Array], tangents: tuple[Any, Any]
) -> tuple[jax.Array, jax.Array]:
  return _k3_slope(*primals), _times(_ratio(*primals), _symbolic_difference(tangents))


_k3_slope.defjvp(_k3_slope_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _k3_of_log_probs(log_p: jax.Array, log_ref: jax.Array) -> jax.Array:
  r"""k3 :math:`= \rho - 1 - \log\rho` from the two log-probabilities.

  The same values and derivatives (of every order) as
  ``_estimators._k3(-_log_ratio(log_p, log_ref))`` (0, with zero
  derivatives, where both are ``-inf``), for fewer operations per element: the both-infinite guard is one comparison
  (``_log_ratio_or_zero``), and the derivative rules are written in the
  inputs (``_k3_slope``, ``_ratio``), so no mask is saved for the backward
  pass. Measured in ``benchmarks/bench_rl_kl.py``.
  """
  return _k3_and_slope(_log_ratio_or_zero(log_p, log_ref))[0]


def _k3_of_log_probs_jvp(
  primals: tuple[jax.Array, jax.Array], tangents: tuple[Any, Any]
) -> tuple[jax.Array, jax.Array]:
  value = _k3_and_slope(_log_ratio_or_zero(*primals))[0]
  direction = _symbolic_difference(tangents)
  if direction is None:
    return value, jnp.zeros_like(value)
  # The slope through its own rule, so that second derivatives are exact.
  return value, _k3_slope(*primals) * direction


_k3_of_log_probs.defjvp(_k3_of_log_probs_jvp, symbolic_zeros=True)


def _term(d: jax.Array, estimator: str) -> jax.Array:
  """The estimator as a function of ``d = log π - log π_ref``."""
  if estimator == "k1":
    return d
  if estimator == "abs":
    return d * jnp.sign(d)  # |d|, with the derivative sign(d) (0 at 0)
  if estimator == "k2":
    return 0.5 * d * d
  return _k3(-d)


# ----------------------------------------------------------------------------
# Importance-weighted terms w * k with w = exp(log π - log μ).
#
# Differentiated by a custom rule written in (log π, log π_ref, log μ)
# directly: through the chain rule the weight's and the estimator's
# derivatives can both overflow and cancel (∂/∂ log π of w k3 is w (k3 - k3')
# = w d), and `0 * inf` could appear where one factor is 0.


def _log_weight(log_p: jax.Array, log_mu: jax.Array) -> jax.Array:
  """``log π - log μ``, and ``-inf`` where ``π = 0`` (whatever ``μ``)."""
  return jnp.where(log_p == -jnp.inf, -jnp.inf, log_p - log_mu)


def _weighted_k3_parts(
  log_w: jax.Array, log_rho: jax.Array, log_ref_over_mu: jax.Array
) -> tuple[jax.Array, jax.Array]:
  r"""``(w k3, w (ρ - 1))`` with :math:`\log\rho = \log\pi_{\text{ref}} - \log\pi`.

  For :math:`\log\rho \le 1`, products of :math:`w` with ``k3`` and
  ``expm1``; beyond, both are written with :math:`w\rho = \pi_{\text{ref}}/\mu`
  (``log_ref_over_mu``) times a factor in :math:`(0, 1]`:
  :math:`w\,\mathrm{k3} = (\pi_{\text{ref}}/\mu)(1 - (1 + \log\rho)/\rho)`,
  :math:`w(\rho - 1) = (\pi_{\text{ref}}/\mu)(1 - 1/\rho)`, finite even when
  :math:`\pi = 0` (:math:`\log\rho = \infty`, :math:`w = 0`).
  """
  large = log_rho > 1
  small_rho = jnp.where(large, 0, log_rho)
  large_rho = jnp.where(large, log_rho, 2)
  finite = large_rho < jnp.inf
  large_rho_finite = jnp.where(finite, large_rho, 2)
  k3_factor = -_expm1(jnp.log1p(large_rho_finite) - large_rho_finite)
  k3_factor = jnp.where(finite, k3_factor, 1)
  expm1_factor = jnp.where(finite, -_expm1(-large_rho_finite), 1)
  small_k3 = _k3(small_rho)
  # k3 underflows for |log ρ| < 1e-19 (float32); its log does not.
  tiny = jnp.abs(small_rho) < 1e-8
  tiny_rho = jnp.where(tiny, small_rho, 0)
  log_small_k3 = jnp.where(
    tiny,
    2 * _log_abs(tiny_rho) + jnp.log(0.5 + tiny_rho / 6 + tiny_rho * tiny_rho / 24),
    _log_abs(small_k3),
  )
  weighted_k3 = jnp.where(
    large,
    _exp_mul(log_ref_over_mu, k3_factor),
    _exp_mul(log_w, small_k3, log_small_k3, jnp.ones_like(small_k3)),
  )
  weighted_expm1 = jnp.where(
    large,
    _exp_mul(log_ref_over_mu, expm1_factor),
    _exp_mul(log_w, _expm1(small_rho)),
  )
  return weighted_k3, weighted_expm1


def _weighted_parts(
  log_p: jax.Array,
  log_ref: jax.Array,
  log_mu: jax.Array,
  estimator: str,
  clip: float | None,
  straight_through_clip: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  r"""Value :math:`w\,g(d)` and its partial derivatives.

  Returns ``(value, ∂/∂ log π, ∂/∂ log π_ref, d_weighted)`` for
  ``gradient=None``, where :math:`\partial/\partial\log\mu` is ``-value``;
  ``d_weighted`` is :math:`\chi\,w\,d` (the partial of
  :math:`\operatorname{sg}(w)\,\mathrm{k2}` for ``gradient='k2'``), with
  :math:`\chi` the derivative of the clip (1 without one).
  """
  raw = _log_ratio(log_p, log_ref)
  if clip is None:
    d, inside = raw, jnp.ones(raw.shape, bool)
  else:
    d, inside = _clip(raw, clip), jnp.abs(raw) <= clip
  chi = inside | straight_through_clip
  log_w = _log_weight(log_p, log_mu)
  weighted_d = jnp.where(chi, _exp_mul(log_w, d), 0)
  if estimator == "k3":
    # log(π_ref / μ) = log w + log ρ, from the inputs where d is not clipped.
    log_ref_over_mu = jnp.where(inside, log_ref - log_mu, log_w - d)
    value, weighted_expm1 = _weighted_k3_parts(log_w, -d, log_ref_over_mu)
    # k3 + k3' = d: ∂/∂ log π = w d.
    return (
      value,
      jnp.where(chi, weighted_d, value),
      jnp.where(chi, weighted_expm1, 0),
      weighted_d,
    )
  chi_f = chi.astype(d.dtype)
  if estimator == "k2":  # d^2 / 2 overflows before w can shrink it
    log_abs_d = _log_abs(d)
    value = _exp_mul(
      log_w, _term(d, estimator), 2 * log_abs_d - math.log(2), jnp.ones_like(d)
    )
  else:
    value = _exp_mul(log_w, _term(d, estimator))
  if estimator == "k1":
    slope = jnp.ones_like(d)
  elif estimator == "abs":
    slope = jnp.sign(d)
  else:  # k2
    slope = d
  # ∂/∂ log π = w (g + χ g'), ∂/∂ log π_ref = -χ w g'.
  if estimator == "k2":
    half_plus = 0.5 * d + chi_f
    d_log_p = _exp_mul(
      log_w,
      d * half_plus,
      log_abs_d + _log_abs(half_plus),
      jnp.sign(d) * jnp.sign(half_plus),
    )
  else:
    d_log_p = _exp_mul(log_w, _term(d, estimator) + chi_f * slope)
  d_log_ref = jnp.where(chi, -_exp_mul(log_w, slope), 0)
  return value, d_log_p, d_log_ref, weighted_d


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6))
def _weighted(
  log_p: jax.Array,
  log_ref: jax.Array,
  log_mu: jax.Array,
  estimator: str,
  clip: float | None,
  straight_through_clip: bool,
  k2_gradient: bool,
) -> jax.Array:
  """The importance-weighted penalty ``w * k``."""
  return _weighted_parts(
    log_p, log_ref, log_mu, estimator, clip, straight_through_clip
  )[0]


def _weighted_jvp(
  estimator: str,
  clip: float | None,
  straight_through_clip: bool,
  k2_gradient: bool,
  primals: tuple[jax.Array, jax.Array, jax.Array],
  tangents: tuple[Any, Any, Any],
) -> tuple[jax.Array, jax.Array]:
  value, d_log_p, d_log_ref, weighted_d = _weighted_parts(
    *primals, estimator, clip, straight_through_clip
  )
  partials: tuple[jax.Array | None, ...]
  if k2_gradient:  # gradient of stop_gradient(w) * k2(d)
    partials = (weighted_d, -weighted_d, None)
  else:
    partials = (d_log_p, d_log_ref, -value)
  out = jnp.zeros_like(value)
  # Symbolic zeros are skipped: an infinite partial times a zero tangent
  # would be NaN.
  for partial, tangent in zip(partials, tangents, strict=True):
    if partial is not None and not isinstance(tangent, SymbolicZero):
      out = out + partial * tangent
  return value, out


_weighted.defjvp(_weighted_jvp, symbolic_zeros=True)


# ----------------------------------------------------------------------------
# The public function.


@functools.partial(
  jax.jit,
  static_argnames=("estimator", "k2_gradient", "clip", "straight_through_clip"),
)
def _penalty(
  log_p: jax.Array,
  log_ref: jax.Array,
  log_mu: jax.Array | None,
  mask: jax.Array | None,
  *,
  estimator: str,
  k2_gradient: bool,
  clip: float | None,
  straight_through_clip: bool,
) -> jax.Array:
  if mask is not None:  # before any arithmetic: garbage never reaches it
    log_p = jnp.where(mask, log_p, 0)
    log_ref = jnp.where(mask, log_ref, 0)
    if log_mu is not None:
      log_mu = jnp.where(mask, log_mu, 0)
  if log_mu is not None:
    out = _weighted(
      log_p, log_ref, log_mu, estimator, clip, straight_through_clip, k2_gradient
    )
  elif estimator == "k3" and clip is None and not k2_gradient:
    out = _k3_of_log_probs(log_p, log_ref)
  else:
    d = _log_ratio(log_p, log_ref)
    if clip is not None:
      d = _clip_straight_through(d, clip) if straight_through_clip else _clip(d, clip)
    if k2_gradient:
      value = _term(jax.lax.stop_gradient(d), estimator)
      out = _value_with_gradient_of(value, 0.5 * d * d)
    else:
      out = _term(d, estimator)
  if mask is not None:
    out = jnp.where(mask, out, 0)
  return out


def kl_penalty(
  log_probs: ArrayLike,
  ref_log_probs: ArrayLike,
  *,
  estimator: str = "k1",
  gradient: str | None = None,
  clip_log_ratio: float | None = None,
  clip_straight_through: bool = False,
  behavior_log_probs: ArrayLike | None = None,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Per-token KL penalty from the log-probabilities of the sampled tokens.

  With :math:`y_t` the sampled token, :math:`d = \log\pi(y_t) -
  \log\pi_{\text{ref}}(y_t)` and :math:`\rho = \pi_{\text{ref}}(y_t) /
  \pi(y_t) = e^{-d}`, the estimators of
  :math:`D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})` (Schulman, 2020) are

  .. math::

     \mathrm{k1} = d, \qquad \mathrm{abs} = |d|, \qquad
     \mathrm{k2} = \tfrac12 d^2, \qquad
     \mathrm{k3} = (\rho - 1) - \log\rho.

  ``k1`` and ``k3`` are unbiased when :math:`y_t \sim \pi` (``k3`` when
  :math:`\pi_{\text{ref}}` has no mass outside the support of :math:`\pi`);
  ``abs`` and ``k2`` are biased (``k2`` estimates the f-divergence with
  :math:`f(u) = \frac12 \log^2 u`, equal to the KL divergence to second
  order); ``abs``, ``k2`` and ``k3`` are non-negative. ``k3`` is computed
  without cancellation (``jaxkl.kl_estimator_terms``).

  ===============================  ==========  ===============================
  ``estimator``                    canonical   gradient
  ===============================  ==========  ===============================
  ``'k1'``, ``'kl'``               ``k1``      autodiff (``gradient=None``)
  ``'abs'``                        ``abs``     autodiff
  ``'k2'``, ``'mse'``              ``k2``      autodiff
  ``'k3'``, ``'low_var_kl'``       ``k3``      autodiff
  any of these with ``'+'``        same        ``gradient='k2'``
  ===============================  ==========  ===============================

  The names are verl's (``kl_penalty``/``kl_loss_type``); a ``'+'`` suffix
  (``'k3+'``, ``'low_var_kl+'``, ...) means verl's straight-through
  gradient, ``gradient='k2'`` (``'k2+'`` and ``'mse+'`` are plain ``k2``).
  ``'full'``, the exact KL over the vocabulary, needs the full logits:
  :func:`jaxkl.kl_penalty_from_logits`.

  **Gradients** (Tang & Munos, 2025). Penalties are used as losses
  differentiated with respect to the parameters :math:`\theta` of
  :math:`\pi` with the samples :math:`y \sim \pi` held fixed. Then, in
  expectation over :math:`y`:

  * ``k1``: :math:`\mathbb{E}_\pi[\nabla\log\pi] = 0`: no signal at all;
  * ``k2``: :math:`\mathbb{E}_\pi[d\,\nabla\log\pi] =
    \nabla D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})`, the gradient of
    the divergence being estimated;
  * ``k3``: :math:`\mathbb{E}_\pi[(1 - \rho)\nabla\log\pi] =
    \nabla D_{\mathrm{KL}}(\pi_{\text{ref}} \,\|\, \pi)`, the gradient of
    the *other* direction;
  * ``abs``: :math:`\mathbb{E}_\pi[\operatorname{sign}(d)\nabla\log\pi] =
    \sum_y \operatorname{sign}(\pi - \pi_{\text{ref}})\nabla\pi =
    \nabla \|\pi - \pi_{\text{ref}}\|_1`, twice the gradient of the total
    variation distance (where no token has :math:`\pi = \pi_{\text{ref}}`):
    not a gradient of the KL divergence in either direction;
  * ``gradient='k2'`` (straight-through): the value of the chosen
    estimator, the gradient of ``k2``, so the expected gradient is
    :math:`\nabla D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})` whatever the
    estimator. The value is bit-identical to the estimator's.

  **Off-policy tokens** (``behavior_log_probs``). When the tokens were
  sampled from a behaviour policy :math:`\mu` (the rollout engine, or the
  policy before the last updates in PPO/GRPO), the penalty is importance
  weighted, :math:`w \cdot k` with :math:`w = \pi(y)/\mu(y) =
  e^{\log\pi - \log\mu}`, and :math:`w` carries gradient. Then
  :math:`\mathbb{E}_\mu[w k] = \mathbb{E}_\pi[k]` and
  :math:`\mathbb{E}_\mu[\nabla(w k)] = \nabla\mathbb{E}_\pi[k]`: for ``k1``
  and ``k3`` (DeepSeek-AI, 2025) both the value and the gradient are
  unbiased for :math:`D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})` and its
  gradient; for ``k2`` and ``abs`` they are those of
  :math:`\mathbb{E}_\pi[k]` (not of the KL divergence). With
  ``gradient='k2'`` the gradient is that of :math:`\operatorname{sg}(w)
  \cdot \mathrm{k2}`, again unbiased for :math:`\nabla D_{\mathrm{KL}}(\pi
  \,\|\, \pi_{\text{ref}})`. Passing ``behavior_log_probs =
  stop_gradient(log_probs)`` on policy keeps the values (:math:`w = 1`) and
  makes the gradients of ``k1`` and ``k3`` unbiased for
  :math:`\nabla D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})`. The
  correction is valid when :math:`\mu` puts mass wherever :math:`\pi` does
  (:math:`\mu(y) > 0` for every sampled token); its variance grows with the
  mismatch (:math:`\mathbb{E}_\mu[w^2] = 1 + \chi^2(\pi\|\mu)`). The weight
  is not truncated: to cap it at :math:`C` (truncated importance sampling,
  biased, no gradient through the capped weights), pass
  ``behavior_log_probs=jnp.maximum(behavior_log_probs, log_probs -
  jnp.log(C))``.

  **Numerics.** 16-bit inputs are computed in float32. Values are finite,
  and gradients exact and finite, wherever the true value is representable,
  for any log-ratio in the float range; where it is not (``k3`` at
  :math:`\log\rho > 88.7` in float32, ``k2`` at :math:`|d| > 1.8 \cdot
  10^{19}`) the value is ``+inf`` (correctly rounded), and the gradients
  are never NaN (nor, without ``behavior_log_probs``, the second
  derivatives). No ``0 * inf`` is
  formed: the NaN gradients reported for ``exp`` followed by a clamp (verl
  #751, OpenRLHF #1335, TRL #3015) cannot occur. A token with
  :math:`\log\pi = \log\pi_{\text{ref}} = -\infty` has :math:`d = 0`
  (and a zero gradient). With ``behavior_log_probs`` the product :math:`w k`
  is formed without overflowing :math:`w` or :math:`k` alone (in logs where
  needed), so it is finite whenever the true product is, for
  log-probabilities (:math:`\le 0`) anywhere in the float range and a finite
  :math:`\log\mu`; with :math:`\pi(y) = 0` the weight is 0 and ``w * k3``
  is its limit :math:`\pi_{\text{ref}}(y)/\mu(y)`. Its second derivatives
  are exact while :math:`w` is a normal float (:math:`|\log w| < 86` in
  float32); beyond, they may be NaN (the values and first derivatives stay
  exact). float16 results are cast back to float16, whose largest value is
  65504: ``k3`` overflows to ``+inf`` from :math:`\log\rho \approx 11`
  (cast float16 inputs to float32 or bfloat16 for a wider range).

  ``clip_log_ratio=c`` clips :math:`d` to :math:`[-c, c]` *before* any
  ``exp`` (for every estimator and for the ``k2`` gradient). Its gradient is
  0 outside the range, or, with ``clip_straight_through=True``, that of the
  identity (the estimator's derivative at the clipped point). verl's ``k3``
  clamps :math:`\log\rho` to :math:`\pm 20` and then the value to
  :math:`[-10, 10]`, i.e. caps it at 10 (outside :math:`\log\rho \in
  [-11.0, 2.61]`) with a zero gradient there; jaxkl does not cap values.
  ``jnp.minimum(kl_penalty(lp, ref, estimator='k3', clip_log_ratio=20.0),
  10.0)`` reproduces verl's values and gradients.

  Args:
    log_probs: :math:`\log\pi(y_t)` of the sampled tokens under the trained
      policy, any shape (e.g. ``[B, T]``).
    ref_log_probs: :math:`\log\pi_{\text{ref}}(y_t)`, same shape.
    estimator: a name from the table above. Static.
    gradient: None (autodiff of the estimator) or ``'k2'``
      (straight-through). Static.
    clip_log_ratio: optional positive float :math:`c`; clips :math:`d` to
      :math:`[-c, c]` before the estimator. Static.
    clip_straight_through: with ``clip_log_ratio``, differentiate the clip
      as the identity. Static.
    behavior_log_probs: optional :math:`\log\mu(y_t)` of the policy that
      sampled the tokens, same shape; enables the importance weight.
    where: optional boolean mask broadcastable to ``log_probs`` (``True``
      keeps). Masked tokens give exactly 0 and a zero gradient, whatever
      their inputs hold (``inf``, NaN).

  Returns:
    The per-token penalties, shape of ``log_probs``, in the promoted input
    dtype (16-bit inputs are computed in float32 and cast back).

  Raises:
    ValueError: an unknown ``estimator`` (``'full'`` points to
      :func:`jaxkl.kl_penalty_from_logits`) or ``gradient``, a
      ``clip_log_ratio`` that is not positive and finite,
      ``clip_straight_through`` without ``clip_log_ratio``, shapes that
      differ, or a mask that does not broadcast.
    TypeError: non-floating inputs, a non-boolean mask, a ``clip_log_ratio``
      that is not a number or a ``clip_straight_through`` that is not a bool.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> log_p = jnp.log(jnp.array([0.5, 0.25]))
    >>> ref = jnp.log(jnp.array([0.25, 0.5]))
    >>> jaxkl.kl_penalty(log_p, ref)  # k1: log 2, -log 2
    Array([ 0.6931472, -0.6931472], dtype=float32)
    >>> jaxkl.kl_penalty(log_p, ref, estimator="low_var_kl")  # k3
    Array([0.19314718, 0.30685282], dtype=float32)

    ``'k3+'``: the value of k3, the gradient of k2 (:math:`d`):

    >>> jax.grad(lambda lp: jaxkl.kl_penalty(lp, ref, estimator="k3+").sum())(log_p)
    Array([ 0.6931472, -0.6931472], dtype=float32)

    A log-ratio of 100 overflows ``exp`` in float32: k3 is ``inf`` (its true
    value is about :math:`2.7 \cdot 10^{43}`), and finite once clipped, with
    a zero gradient (the clip's) or, straight through, the derivative of k3
    at the clipped point, :math:`-(e^{20} - 1)`:

    >>> far = jnp.array([-100.0])
    >>> jaxkl.kl_penalty(far, jnp.zeros(1), estimator="k3")
    Array([inf], dtype=float32)
    >>> jaxkl.kl_penalty(far, jnp.zeros(1), estimator="k3", clip_log_ratio=20.0)
    Array([4.851652e+08], dtype=float32)
    >>> def clipped_k3(lp, straight):
    ...   return jaxkl.kl_penalty(
    ...     lp, jnp.zeros(1), estimator="k3", clip_log_ratio=20.0,
    ...     clip_straight_through=straight,
    ...   ).sum()
    >>> jax.grad(clipped_k3)(far, False), jax.grad(clipped_k3)(far, True)
    (Array([0.], dtype=float32), Array([-4.851652e+08], dtype=float32))

    Tokens sampled by a behaviour policy :math:`\mu` with :math:`w = 2`:

    >>> jaxkl.kl_penalty(
    ...   log_p, ref, estimator="k3", behavior_log_probs=log_p - jnp.log(2.0)
    ... )
    Array([0.38629436, 0.61370564], dtype=float32)

  References:
    J. Schulman, "Approximating KL Divergence", 2020,
    http://joschu.net/blog/kl-approx.html.
    Y. Tang and R. Munos, "On a few pitfalls in KL divergence gradient
    estimation for RL", 2025, arXiv:2506.09477.
    DeepSeek-AI, "DeepSeek-V3.2: Pushing the frontier of open large language
    models", 2025 (the unbiased KL estimate :math:`w\,\mathrm{k3}`).
    verl: ``kl_penalty`` in ``verl/trainer/ppo/core_algos.py``; issue #751
    (NaN from ``exp`` in ``low_var_kl``); pull request #6058 (the ``'+'``
    names crashed before it). OpenRLHF pull request #1335 (NaN gradients,
    ``0 * inf``, when k3 is clamped after ``exp``). TRL issue #3015 (k3
    overflow in GRPO).
  """
  name, plus = parse_estimator(estimator)
  gradient = check_gradient(gradient)
  clip = check_clip(clip_log_ratio)
  straight_through_clip = _checks.check_bool(
    clip_straight_through, "clip_straight_through"
  )
  if straight_through_clip and clip is None:
    raise ValueError(
      "`clip_straight_through=True` needs `clip_log_ratio`: without a clip "
      "there is nothing to differentiate straight through."
    )
  log_p = _checks.as_float_array(log_probs, "log_probs")
  log_ref = _checks.as_float_array(ref_log_probs, "ref_log_probs")
  _checks.check_same_shape(log_p, log_ref, "log_probs", "ref_log_probs")
  arrays = [log_p, log_ref]
  log_mu = None
  if behavior_log_probs is not None:
    log_mu = _checks.as_float_array(behavior_log_probs, "behavior_log_probs")
    _checks.check_same_shape(log_p, log_mu, "log_probs", "behavior_log_probs")
    arrays.append(log_mu)
  out_dtype, compute_dtype = _checks.result_dtype(*arrays)
  mask = broadcast_mask(where, log_p.shape, ())
  out: jax.Array = _penalty(
    log_p.astype(compute_dtype),
    log_ref.astype(compute_dtype),
    None if log_mu is None else log_mu.astype(compute_dtype),
    mask,
    estimator=name,
    k2_gradient=plus or gradient == "k2",
    clip=clip,
    straight_through_clip=straight_through_clip,
  )
  return out.astype(out_dtype)
