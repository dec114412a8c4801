"""NaN-free pointwise KL terms ``p * (log p - log q)``, fast inside reductions.

The term ``p * (log p - log q)`` is mathematically 0 whenever ``p == 0``
(the convention 0 log 0 = 0, and 0 * log(0 / q) = 0 for any q), but evaluated
naively it gives ``0 * (-inf) = nan`` at ``p == 0`` and ``-inf - (-inf) = nan``
at ``p == 0, log q == -inf``.

The usual cure, ``jnp.where(p > 0, ..., 0)``, is correct, but on XLA:CPU a
``select`` inside a large fused reduction stops the reduction loop from being
vectorized: 3-5x slower on a 2048 x 32000 sum in our measurements. What the
loop costs is, besides the ``log``, mostly its elementwise ops *between two
arrays* (each ~5-10%); an op with a constant operand (``maximum(v, c)``,
``v * c``) is nearly free. The formulas below need three array-array ops, the
same as a plain ``p * (log p - log q)`` plus one ``maximum``, and no
``select``. With ``M = finfo.max``, ``tiny = finfo.tiny`` (the smallest
normal number) and the constants ``c = 2 log(tiny)`` (-174.7 in float32)
and ``K = -M / (-log(tiny) - 1)``::

  a  = max(log p, c)        log p where p > 0 (log p >= log tiny > c), c at 0
  f  = (a - c) * K          -0 where p == 0; -inf where p > 0 (overflow)
  l  = p * (a - max(log q, f))

(probabilities as targets, ``kl_terms_probs``). For log-probabilities as
targets (``kl_terms_log_target``), ``p = exp(log p)`` may underflow to 0 for
a finite ``log p``, so the floor is built from ``p`` itself::

  f  = -M * min(p * (2 / tiny), 2)     -0 where p == 0; -inf where p >= tiny

(the ``minimum`` keeps XLA from folding the two constant factors into
``p * -inf``, which would be ``nan`` at ``p == 0``). Subnormal ``p`` are
flushed to zero by XLA, so every ``p`` is 0 or at least ``tiny``.

* ``p > 0``: ``f = -inf`` and ``a = log p``, so both maxima are the identity
  and ``l`` is the literal ``p * (log p - log q)``, bit for bit, for *every*
  ``log q``: huge finite values (``log q = -1e38`` gives ``1e38``), ``-inf``
  (``+inf``) and ``+inf`` (``-inf``), as in PyTorch. Sums of such terms
  overflow only where a term or a partial sum is beyond ``finfo.max``.
* ``p == 0``: ``max(log q, -0)`` is in ``[0, finfo.max]`` for any ``log q``
  but ``+inf``, and ``a`` is finite, so ``l = 0 * finite = 0`` exactly:
  ``log q = -inf`` costs nothing. The one exception is ``log q = +inf``
  (``q = inf``, no probability), where ``l`` is ``nan``, as in PyTorch;
  making it 0 needs one more array-array op (~20% on the benchmark) for an
  input no distribution produces.

This is the library-wide zero-mass rule: a class has zero mass under P exactly
when ``p``, or ``exp(log p)`` in the computation dtype, is 0 (after the flush
of subnormals); it then contributes exactly 0 with zero gradient, whatever Q
is. A class with ``p > 0`` against ``log q = -inf`` gives ``+inf``.

Derivatives are given by ``jax.custom_jvp`` rules (autodiff through the clamps
would meet ``0 * inf`` again). The gradient with respect to a zero ``p`` is
defined as 0, as ``jax.scipy.special.rel_entr`` does; the derivative rules use
the double-``where`` pattern and are themselves differentiable, so Hessians are
finite too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.typing import DTypeLike

from jaxkl import _checks

# The tangent of one input in a ``symbolic_zeros=True`` JVP rule.
Tangent = jax.Array | SymbolicZero


def _zero_mass_floor(p: jax.Array) -> jax.Array:
  """-0 where ``p == 0`` and -inf where ``p`` is a positive normal float."""
  finfo = _checks.finfo(p.dtype)
  scale = jnp.asarray(2.0 / float(finfo.tiny), p.dtype)  # tiny * scale == 2
  # The `minimum` keeps XLA from folding the two constant factors together
  # (which would give 0 * inf = nan at p == 0).
  return -jnp.asarray(finfo.max, p.dtype) * jnp.minimum(p * scale, 2)


def _log_floor(dtype: DTypeLike) -> tuple[float, float]:
  """``(c, K)``: ``c = 2 log(tiny)`` and ``K = -M / (-log(tiny) - 1)``.

  ``c`` is below the log of every positive normal number, and
  ``(log p - c) * K`` overflows to ``-inf`` for every ``p >= tiny``
  (``log p - c >= -log(tiny)``, one more than ``M / |K|``).
  """
  finfo = _checks.finfo(dtype)
  log_tiny = math.log(float(finfo.tiny))
  return 2.0 * log_tiny, -float(finfo.max) / (-log_tiny - 1.0)


def _terms(
  log_q: jax.Array, p: jax.Array, clamped_log_p: jax.Array, floor: jax.Array
) -> jax.Array:
  """``p * (clamped_log_p - max(log_q, floor))``: three array-array ops."""
  return p * (clamped_log_p - jnp.maximum(log_q, floor))


def _linear_combination(
  out: jax.Array, pairs: Sequence[tuple[Callable[[], jax.Array], Tangent]]
) -> jax.Array:
  """Sum of ``coefficient() * tangent`` over the non-symbolic-zero tangents."""
  total: jax.Array | None = None
  for coefficient, tangent in pairs:
    if isinstance(tangent, SymbolicZero):
      continue
    term = coefficient() * tangent
    total = term if total is None else total + term
  return jnp.zeros_like(out) if total is None else total


# ----------------------------------------------------------------------------
# Probabilities as targets: p * (log p - log q).


@jax.custom_jvp
def kl_terms_probs(log_q: jax.Array, p: jax.Array) -> jax.Array:
  """Elementwise ``p (log p - log_q)``, exactly ``0`` wherever ``p == 0``."""
  c, k = _log_floor(p.dtype)
  clamped = jnp.maximum(jnp.log(p), jnp.asarray(c, p.dtype))
  floor = (clamped - jnp.asarray(c, p.dtype)) * jnp.asarray(k, p.dtype)
  return _terms(log_q, p, clamped, floor)


def _kl_terms_dp(log_q: jax.Array, p: jax.Array) -> jax.Array:
  """``log p + 1 - log_q`` where ``p > 0`` and 0 where ``p == 0``."""
  positive = p > 0
  safe_p = jnp.where(positive, p, 1)
  safe_log_q = jnp.where(positive, log_q, 0)
  return jnp.where(positive, jnp.log(safe_p) + 1 - safe_log_q, 0)


def _kl_terms_probs_jvp(
  primals: tuple[jax.Array, jax.Array], tangents: tuple[Tangent, Tangent]
) -> tuple[jax.Array, jax.Array]:
  log_q, p = primals
  d_log_q, d_p = tangents
  out = kl_terms_probs(log_q, p)
  return out, _linear_combination(
    out,
    [
      # -p, written so that its own derivative at p == 0 is 0: this keeps the
      # Hessian symmetric, matching the zero gradient chosen at p == 0 below.
      (lambda: -jnp.where(p == 0, 0, p), d_log_q),
      (lambda: _kl_terms_dp(log_q, p), d_p),
    ],
  )


kl_terms_probs.defjvp(_kl_terms_probs_jvp, symbolic_zeros=True)


def kl_terms(log_q: jax.Array, target: jax.Array, *, log_target: bool) -> jax.Array:
  """Elementwise KL terms, ``target`` holding ``p`` or (``log_target``) ``log p``."""
  if log_target:
    return kl_terms_log_target(log_q, target)
  return kl_terms_probs(log_q, target)


# ----------------------------------------------------------------------------
# Log-probabilities as targets: exp(log_p) * (log_p - log q).


@jax.custom_jvp
def kl_terms_log_target(log_q: jax.Array, log_p: jax.Array) -> jax.Array:
  """Elementwise ``exp(log_p) * (log_p - log_q)``, ``0`` where ``p == 0``."""
  p = jnp.exp(log_p)
  c, _ = _log_floor(log_p.dtype)
  clamped = jnp.maximum(log_p, jnp.asarray(c, log_p.dtype))  # finite at -inf
  return _terms(log_q, p, clamped, _zero_mass_floor(p))


def _kl_terms_log_target_dlog_p(log_q: jax.Array, log_p: jax.Array) -> jax.Array:
  """``p (log p - log_q + 1)`` where ``p > 0`` and 0 where ``p == 0``."""
  p = jnp.exp(log_p)
  positive = p > 0
  safe_log_p = jnp.where(positive, log_p, 0)
  safe_log_q = jnp.where(positive, log_q, 0)
  return jnp.where(positive, p * (safe_log_p - safe_log_q + 1), 0)


def _kl_terms_log_target_jvp(
  primals: tuple[jax.Array, jax.Array], tangents: tuple[Tangent, Tangent]
) -> tuple[jax.Array, jax.Array]:
  log_q, log_p = primals
  d_log_q, d_log_p = tangents
  out = kl_terms_log_target(log_q, log_p)
  return out, _linear_combination(
    out,
    [
      (lambda: -jnp.exp(log_p), d_log_q),
      (lambda: _kl_terms_log_target_dlog_p(log_q, log_p), d_log_p),
    ],
  )


kl_terms_log_target.defjvp(_kl_terms_log_target_jvp, symbolic_zeros=True)
