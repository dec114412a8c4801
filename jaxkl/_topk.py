"""Divergences against a teacher given only as its top-k log-probabilities.

A served teacher (vLLM, SGLang) returns, per position, the indices of its k
most likely classes and their log-probabilities, not its logits. The
student's distribution is known in full. Both are coarse-grained onto the
k listed classes plus one "rest" outcome (``tail="bucket"``), or both are
renormalized over the listed classes (``tail="renormalize"``), and a
divergence of the two coarse distributions is taken.

The building blocks below are shared with the fused (hidden states + LM head)
top-k loss, which computes the student's per-row statistics block by block:

* :func:`student_coarse`: the student's log-masses on the listed classes and
  on the rest (a log-sum-exp over the unlisted classes, not ``1 - sum``);
* :func:`teacher_rest_log_mass`: the teacher's rest, ``log(1 - sum p)``;
* :func:`divergence_from_coarse`: the divergence of the coarse
  distributions from their log-masses, with finite derivatives of every
  order wherever the value is finite;
* :func:`coarse_logit_gradient`: the closed-form gradient with respect to
  the (scaled) student logits, given the derivatives of the divergence with
  respect to the student's coarse log-masses.
"""

from __future__ import annotations

import functools
import math
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _logits
from jaxkl import _per_example
from jaxkl import _pointwise

Tail = Literal["bucket", "renormalize"]
TAILS: tuple[str, ...] = ("bucket", "renormalize")
Tangent = _pointwise.Tangent

# pylint: disable=protected-access
_scaled = _logits._scaled
_nonnegative = _logits._nonnegative
_finish = _logits._finish
_zero_safe_product = _logits._zero_safe_product
# pylint: enable=protected-access


def check_tail(tail: object) -> Tail:
  """Validates ``tail``: ``'bucket'`` or ``'renormalize'``.

  Raises:
    ValueError: anything else, naming the argument and the allowed values.
  """
  if not (isinstance(tail, str) and tail in TAILS):
    raise ValueError(
      f"`tail` must be one of {', '.join(map(repr, TAILS))}; got {tail!r}."
    )
  return cast(Tail, tail)


# ----------------------------------------------------------------------------
# Log-sum-exp and log(1 - exp) with finite derivatives of every order at the
# edges (all -inf rows, a listed mass that reaches 1).


def _logsumexp(x: jax.Array) -> jax.Array:
  """``log sum exp(x)`` over the last axis; ``-inf`` for an all ``-inf`` row.

  Unlike ``jax.nn.logsumexp``, an all ``-inf`` row has zero derivatives (not
  ``0 / 0``), of every order: the sum is replaced by 1 before the ``log``
  there (double ``where``). The shift ``max x`` carries no derivative.
  """
  top = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  top = jnp.where(jnp.isfinite(top), top, jnp.zeros((), x.dtype))
  total = jnp.sum(jnp.exp(x - top), axis=-1)
  empty = total == 0
  safe = jnp.where(empty, jnp.ones((), x.dtype), total)
  return jnp.where(empty, -jnp.inf, jnp.log(safe) + top[..., 0])


@jax.custom_jvp
def _log1mexp(x: jax.Array) -> jax.Array:
  """``log(1 - exp(x))`` for ``x < 0``, ``-inf`` for ``x >= 0``; NaN stays NaN.

  ``-expm1`` near 0 and ``log1p(-exp)`` below ``-log 2`` (Mächler 2012).
  """
  at_or_above = x >= 0
  safe = jnp.where(at_or_above, -jnp.ones((), x.dtype), x)
  value = jnp.where(
    safe > -math.log(2), jnp.log(-jnp.expm1(safe)), jnp.log1p(-jnp.exp(safe))
  )
  return jnp.where(at_or_above, -jnp.inf, value)


def _log1mexp_jvp(
  primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
  (x,), (d_x,) = primals, tangents
  out = _log1mexp(x)
  # d/dx = -exp(x) / (1 - exp(x)) = -exp(x - out); 0 where the rest is 0
  # (the zero-mass rule: no gradient through an outcome of zero mass).
  zero = out == -jnp.inf
  safe_x = jnp.where(zero, jnp.zeros((), x.dtype), x)
  safe_out = jnp.where(zero, jnp.zeros((), x.dtype), out)
  slope = jnp.where(zero, jnp.zeros((), x.dtype), -jnp.exp(safe_x - safe_out))
  return out, slope * d_x


_log1mexp.defjvp(_log1mexp_jvp)


def teacher_rest_log_mass(log_p_listed: jax.Array) -> jax.Array:
  """``log(1 - sum_i p_i)`` over the last axis: the teacher's rest.

  Args:
    log_p_listed: the teacher's log-probabilities ``[..., k]``; ``-inf``
      marks an unused slot.

  Returns:
    ``[...]``: ``log1mexp(logsumexp(log_p_listed))``; ``-inf`` (zero mass,
    with zero derivatives) where the listed mass is 1 or more, 0 for a row
    with no used slot.
  """
  return _log1mexp(_logsumexp(log_p_listed))


def rest_tolerance(log_p_listed: jax.Array, input_dtype: Any) -> jax.Array:
  """``(k + 16) * eps``: the teacher's rest that is indistinguishable from 0.

  The teacher's rest ``1 - sum p`` is computed from rounded
  log-probabilities; where the student has no mass outside the listed
  classes (every class listed, or the others' logits ``-inf``), a rounding
  residue would make the forward KL ``+inf``. A rest of at most this much
  counts as 0 there (see :func:`divergence_from_coarse`).

  Args:
    log_p_listed: ``[..., k]``, for ``k`` and the shape.
    input_dtype: the dtype the log-probabilities were given in (its
      ``eps``: bfloat16's is much larger than float32's).

  Returns:
    A 0-d array of ``log_p_listed``'s dtype.
  """
  eps = float(_checks.finfo(input_dtype).eps)
  return jnp.asarray((log_p_listed.shape[-1] + 16) * eps, log_p_listed.dtype)


# ----------------------------------------------------------------------------
# The listed classes of each row: gathers and scatters along the last axis.


def _listed_positions(
  indices: jax.Array, valid: jax.Array, size: int, offset: int
) -> tuple[jax.Array, jax.Array]:
  """``(ok, position)``: whether a slot lists a class of the block
  ``[offset, offset + size)``, and its position there (``size`` if not, which
  every scatter with ``mode='drop'`` skips; negative indices are not wrapped).
  """
  position = indices - offset
  ok = valid & (position >= 0) & (position < size)
  return ok, jnp.where(ok, position, size)


def _rows_scatter(
  x: jax.Array, positions: jax.Array, values: jax.Array | float, add: bool
) -> jax.Array:
  """``x[..., positions] = values`` (or ``+=``), per row; ``size`` is dropped.

  A ``vmap`` of a one-row scatter: the rows are a batch dimension of the
  scatter, so a sharding of the rows (tokens) stays local under GSPMD (a
  scatter at explicit ``(row, column)`` pairs makes XLA gather the index
  pairs of every device), and XLA:CPU runs it faster.
  """
  lead, size, k = x.shape[:-1], x.shape[-1], positions.shape[-1]
  n = math.prod(lead)
  update = jnp.broadcast_to(jnp.asarray(values, x.dtype), (*lead, k))

  def one_row(row: jax.Array, cols: jax.Array, vals: jax.Array) -> jax.Array:
    ref = row.at[cols]
    return ref.add(vals, mode="drop") if add else ref.set(vals, mode="drop")

  flat = jax.vmap(one_row)(
    jnp.reshape(x, (n, size)),
    jnp.reshape(positions, (n, k)),
    jnp.reshape(update, (n, k)),
  )
  return jnp.reshape(flat, x.shape)


def _gather_listed(z: jax.Array, ok: jax.Array, positions: jax.Array) -> jax.Array:
  """``z`` at the listed positions, ``-inf`` where ``ok`` is False."""
  safe = jnp.where(ok, positions, 0)
  taken = jnp.take_along_axis(z, safe, axis=-1, mode="clip")
  return jnp.where(ok, taken, -jnp.inf)


def listed_mask(
  shape: tuple[int, ...], indices: jax.Array, valid: jax.Array, *, offset: int = 0
) -> jax.Array:
  """Booleans ``[..., Vb]``: the classes of the block ``[offset, offset + Vb)``
  that a used slot lists (``shape`` is the block's ``[..., Vb]``). Static
  ``offset``; out-of-range and negative indices list nothing."""
  _, positions = _listed_positions(indices, valid, shape[-1], offset)
  return _rows_scatter(jnp.zeros(shape, jnp.bool_), positions, True, add=False)


def _safe_log(total: jax.Array) -> jax.Array:
  """``log(total)``; ``-inf`` with zero derivatives where ``total == 0``."""
  empty = total == 0
  safe = jnp.where(empty, jnp.ones((), total.dtype), total)
  return jnp.where(empty, -jnp.inf, jnp.log(safe))


class StudentCoarse(NamedTuple):
  """The student's coarse statistics per row (see :func:`student_coarse`)."""

  log_q_listed: jax.Array  # [..., k]: log q at each used slot, -inf elsewhere
  log_q_rest: jax.Array  # [...]: log of the mass on the unlisted classes
  log_z: jax.Array  # [...]: log sum exp(z) over all classes
  log_rest_z: jax.Array  # [...]: log sum exp(z) over the unlisted classes


def student_coarse(
  z: jax.Array,
  indices: jax.Array,
  valid: jax.Array,
  *,
  rest: bool = True,
  z_max: jax.Array | None = None,
) -> StudentCoarse:
  """The student's log-masses on the listed classes and on the rest.

  With ``q = softmax(z)`` over the last axis (``z = logits / T``):

  * ``log_q_listed[..., i] = z[..., indices[i]] - log_z`` for a used slot
    whose index is in ``[0, V)``; ``-inf`` for an unused slot
    (``valid = False``) or an out-of-range index;
  * ``log_q_rest = log sum_{v unlisted} q_v``, a sum over the classes that
    no used slot lists (computed directly, never as ``1 - sum q``, which
    cancels when the listed classes hold almost all the mass); ``-inf``
    when there is no such class or all their logits are ``-inf``;
  * ``log_z = logsumexp(z)``; ``log_rest_z = log_q_rest + log_z``, the
    log-sum-exp over the unlisted classes in ``z``'s frame.

  One pass of ``exp`` serves both sums (shifted by the row's maximum); rows
  whose unlisted sum falls below ``V * tiny / eps`` (where the flush of
  tiny terms to 0 could cost precision, or it is 0) are recomputed with
  their own maximum, inside a ``lax.cond`` taken only when some row needs
  it. A class listed twice is excluded once from the rest and counts in
  both slots.

  Args:
    z: ``[..., V]`` scaled logits.
    indices: ``[..., k]`` integer class indices.
    valid: ``[..., k]`` booleans, the used slots.
    rest: compute the rest (else ``log_q_rest`` and ``log_rest_z`` are
      zeros: ``tail="renormalize"`` does not need them). Static.
    z_max: ``[...]``, a known shift (the row maximum of ``z``, finite, no
      derivative), saving a pass; None computes it.

  Returns:
    A :class:`StudentCoarse`, plain differentiable JAX (derivatives of every
    order finite wherever the values are).
  """
  if z_max is None:
    top = jax.lax.stop_gradient(jnp.max(z, axis=-1))
    z_max = jnp.where(jnp.isfinite(top), top, jnp.zeros((), z.dtype))
  ok, positions = _listed_positions(indices, valid, z.shape[-1], 0)
  z_listed = _gather_listed(z, ok, positions)
  listed_exp = jnp.exp(z_listed - z_max[..., None])
  if not rest:
    log_z = _safe_log(jnp.sum(jnp.exp(z - z_max[..., None]), axis=-1)) + z_max
    zeros = jnp.zeros_like(log_z)
    return StudentCoarse(z_listed - log_z[..., None], zeros, log_z, zeros)
  # One pass of exp over the vocabulary: the unlisted classes' sum; the total
  # adds the listed terms (each class once), a sum of positive terms.
  mask = _rows_scatter(jnp.zeros(z.shape, jnp.bool_), positions, True, add=False)
  rest_sum = jnp.sum(
    jnp.where(mask, jnp.zeros((), z.dtype), jnp.exp(z - z_max[..., None])), axis=-1
  )
  first = ok & ~_repeats(jnp.where(ok, positions, -1))
  total = rest_sum + jnp.sum(jnp.where(first, listed_exp, 0), axis=-1)
  log_z = _safe_log(total) + z_max
  log_q_listed = z_listed - log_z[..., None]
  log_rest_z = _safe_log(rest_sum) + z_max
  finfo = _checks.finfo(z.dtype)
  threshold = float(finfo.tiny) * z.shape[-1] / float(finfo.eps)
  need = rest_sum < threshold

  def exact() -> jax.Array:
    unlisted = jnp.where(mask, -jnp.inf, z)
    return jnp.where(need, _logsumexp(unlisted), log_rest_z)

  log_rest_z = jax.lax.cond(jnp.any(need), exact, lambda: log_rest_z)
  return StudentCoarse(log_q_listed, log_rest_z - log_z, log_z, log_rest_z)


def _repeats(positions: jax.Array) -> jax.Array:
  """``[..., k]`` booleans: whether an earlier slot holds the same position
  (``-1`` marks slots that list nothing and never repeat)."""
  k = positions.shape[-1]
  same = positions[..., :, None] == positions[..., None, :]
  earlier = jnp.tril(jnp.ones((k, k), jnp.bool_), -1)
  earlier = jnp.broadcast_to(earlier, same.shape)
  return jnp.any(same & earlier & (positions[..., :, None] >= 0), axis=-1)


def coarse_logit_gradient(
  z: jax.Array,
  indices: jax.Array,
  valid: jax.Array,
  log_z: jax.Array,
  log_rest_z: jax.Array | None,
  a_listed: jax.Array,
  a_rest: jax.Array | None,
  *,
  offset: int = 0,
) -> jax.Array:
  """``dD/dz`` on a block of classes, from ``a = dD/d log Q`` per outcome.

  With ``q = softmax(z)`` over the whole vocabulary, coarse outcomes ``c``
  (the used slots and the rest) of masses ``Q_c`` and
  ``a_c = dD / d log Q_c``:

  ``dD/dz_v = sum_{c owns v} a_c q_v / Q_c - q_v sum_c a_c``,

  where ``q_v / Q_c = 1`` for a listed class (its own outcome) and
  ``exp(z_v - log_rest_z)`` for an unlisted one (0 when the rest is
  empty). Written without ``0 * inf`` (the ratio's exponent is clamped at
  0, where it is anyway up to rounding, and listed classes are masked):
  finite, with finite derivatives, wherever ``a`` is.

  Args:
    z: ``[..., Vb]`` scaled logits of the classes ``[offset, offset + Vb)``.
    indices, valid: ``[..., k]``, as in :func:`student_coarse`.
    log_z: ``[...]``, the log-sum-exp of ``z`` over the whole vocabulary.
    log_rest_z: ``[...]``, the same over the unlisted classes, or None
      when ``a_rest`` is None.
    a_listed: ``[..., k]``, ``dD/d log Q`` per slot (0 at unused slots).
    a_rest: ``[...]``, ``dD/d log Q_rest``, or None (``renormalize``: the
      rest does not enter).
    offset: the block's first class. Static.

  Returns:
    ``[..., Vb]`` in ``z``'s dtype.
  """
  total = jnp.sum(a_listed, axis=-1)
  ok, positions = _listed_positions(indices, valid, z.shape[-1], offset)
  if a_rest is None:  # renormalize: -q total everywhere, + a at the listed
    grad = -total[..., None] * jnp.exp(z - log_z[..., None])
    return _rows_scatter(grad, positions, jnp.where(ok, a_listed, 0), add=True)
  assert log_rest_z is not None
  total = total + a_rest
  # Unlisted v: q_v / Q_rest * a_rest - q_v * total = r_v (a_rest - Q_rest
  # total), with r_v = exp(z_v - log_rest_z) <= 1 (one exp per class, no
  # overflow); listed v: a_v - q_v total, written over the dense value.
  zero = jnp.zeros((), z.dtype)
  empty = log_rest_z == -jnp.inf
  safe = jnp.where(empty, zero, log_rest_z)
  q_rest = jnp.where(empty, zero, jnp.exp(safe - log_z))
  exponent = z - safe[..., None]
  ratio = jnp.exp(jnp.where(exponent > 0, zero, exponent))
  grad = (a_rest - q_rest * total)[..., None] * ratio
  q_listed = jnp.exp(_gather_listed(z, ok, positions) - log_z[..., None])
  return _rows_scatter(
    grad, positions, a_listed - q_listed * total[..., None], add=False
  )


# ----------------------------------------------------------------------------
# The divergence of the coarse distributions.


def _renormalized(log_mass: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(log_mass - logsumexp(log_mass), has_mass)`` over the last axis;
  all ``-inf`` (zero derivatives) for a row of no mass."""
  total = _logsumexp(log_mass)
  has = total > -jnp.inf
  safe = jnp.where(has, total, jnp.zeros((), total.dtype))
  return jnp.where(has[..., None], log_mass - safe[..., None], -jnp.inf), has


def divergence_from_coarse(
  log_q_listed: jax.Array,
  log_q_rest: jax.Array,
  log_p_listed: jax.Array,
  log_p_rest: jax.Array,
  *,
  divergence: str,
  beta: float,
  tail: str,
  p_rest_atol: jax.Array | float = 0.0,
) -> jax.Array:
  """The divergence of the coarse (k + 1)-outcome distributions, per row.

  Args:
    log_q_listed: ``[..., k]`` the student's log-mass per slot; must be
      ``-inf`` at unused slots (as :func:`student_coarse` returns it).
    log_q_rest: ``[...]`` the student's log-mass on the unlisted classes.
    log_p_listed: ``[..., k]`` the teacher's log-probabilities, ``-inf`` at
      unused slots.
    log_p_rest: ``[...]`` the teacher's rest (:func:`teacher_rest_log_mass`).
    divergence: ``'forward'`` (KL(P || Q)), ``'reverse'`` (KL(Q || P)) or
      ``'jsd'`` (generalized JSD with weight ``beta``), as checked by
      ``_logits.check_divergence``. Static.
    beta: the JSD weight, in (0, 1) for ``'jsd'``. Static.
    tail: ``'bucket'``: the k slots and the rest are the outcomes;
      ``'renormalize'``: both renormalized over the slots, the rests
      ignored (a row with no used slot gives 0; a row where the student has
      no mass on any used slot gives ``+inf``). Static.
    p_rest_atol: ``'bucket'`` only: where the student's rest is empty
      (``log_q_rest = -inf``), a teacher rest of at most this much is taken
      as 0 (rounding; see :func:`rest_tolerance`). 0-d or ``[...]``. For
      ``'reverse'``, where the student's rest is not empty, a teacher rest
      below ``(k + 16) * eps`` of the compute dtype (float32:
      about 1e-5 at k = 64) is raised to it (a finite KL(Q || P) when the
      listed mass rounds to 1); larger rests are used as computed.

  Returns:
    ``[...]``, never negative (rounding is clamped, keeping the derivatives
    of the unclamped value). Plain differentiable JAX: derivatives of every
    order with respect to all four log-masses are finite wherever the value
    is, including outcomes of zero mass in either distribution.
  """
  axis = (log_q_listed.ndim - 1,)
  if tail == "renormalize":
    log_p, has_p = _renormalized(log_p_listed)
    log_q, has_q = _renormalized(log_q_listed)
    value = _logits.class_sums(log_q, log_p, divergence, beta, axis, None)
    value = jnp.where(has_q, _nonnegative(value), jnp.inf)
    return jnp.where(has_p, value, jnp.zeros((), value.dtype))
  no_student_rest = log_q_rest == -jnp.inf
  negligible = jnp.exp(log_p_rest) <= p_rest_atol
  log_p_rest = jnp.where(no_student_rest & negligible, -jnp.inf, log_p_rest)
  if divergence == "reverse":
    # The teacher's rest is a difference of float sums, known to rounding
    # only: where the student has a rest, it is at least (k + 16) eps of the
    # compute dtype, so that a listed mass that rounds to 1 does not make
    # KL(Q || P) infinite. Rests above that floor are used as computed.
    eps = float(_checks.finfo(log_p_rest.dtype).eps)
    floor = math.log((log_p_listed.shape[-1] + 16) * eps)
    below = (log_p_rest < floor) & ~no_student_rest
    log_p_rest = jnp.where(below, jnp.asarray(floor, log_p_rest.dtype), log_p_rest)
  log_q = jnp.concatenate([log_q_listed, log_q_rest[..., None]], axis=-1)
  log_p = jnp.concatenate([log_p_listed, log_p_rest[..., None]], axis=-1)
  return _nonnegative(_logits.class_sums(log_q, log_p, divergence, beta, axis, None))


# ----------------------------------------------------------------------------
# The per-position divergence from logits, with closed-form derivatives.


class _Parts(NamedTuple):
  z: jax.Array  # [..., V] (logits - m) / T
  shifted: jax.Array  # [..., V] logits - m
  valid: jax.Array  # [..., k]
  coarse: StudentCoarse
  log_p_rest: jax.Array  # [...] (zeros for renormalize)
  atol: jax.Array  # 0-d


def _parts(
  logits: jax.Array,
  indices: jax.Array,
  log_p: jax.Array,
  inverse_t: jax.Array,
  tail: str,
  eps_dtype: Any,
) -> _Parts:
  valid = log_p != -jnp.inf  # NaN counts as used: it propagates
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  top = jnp.where(jnp.isfinite(top), top, jnp.zeros((), logits.dtype))
  shifted = logits - top
  z = _scaled(shifted, inverse_t)
  bucket = tail == "bucket"
  coarse = student_coarse(
    z, indices, valid, rest=bucket, z_max=jnp.zeros(z.shape[:-1], z.dtype)
  )
  if bucket:
    log_p_rest = teacher_rest_log_mass(log_p)
  else:
    log_p_rest = jnp.zeros(log_p.shape[:-1], log_p.dtype)
  return _Parts(z, shifted, valid, coarse, log_p_rest, rest_tolerance(log_p, eps_dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6, 7))
def _topk_core(
  logits: jax.Array,
  indices: jax.Array,
  log_p: jax.Array,
  inverse_t: jax.Array,
  divergence: str,
  beta: float,
  tail: str,
  eps_dtype: Any,
) -> jax.Array:
  """The per-row coarse divergence; ``logits`` ``[..., V]``, class axis last."""
  parts = _parts(logits, indices, log_p, inverse_t, tail, eps_dtype)
  return divergence_from_coarse(
    parts.coarse.log_q_listed,
    parts.coarse.log_q_rest,
    log_p,
    parts.log_p_rest,
    divergence=divergence,
    beta=beta,
    tail=tail,
    p_rest_atol=parts.atol,
  )


def _topk_core_jvp(
  divergence: str,
  beta: float,
  tail: str,
  eps_dtype: Any,
  primals: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
  tangents: tuple[Tangent, Tangent, Tangent, Tangent],
) -> tuple[jax.Array, jax.Array]:
  """Closed form in the logits (``coarse_logit_gradient``), autodiff of the
  (k + 1)-outcome divergence in the teacher's log-probabilities."""
  logits, indices, log_p, inverse_t = primals
  d_logits, _, d_log_p, d_inverse_t = tangents
  parts = _parts(logits, indices, log_p, inverse_t, tail, eps_dtype)
  coarse = parts.coarse

  def divergence_of(
    log_q_listed: jax.Array, log_q_rest: jax.Array, log_p: jax.Array
  ) -> jax.Array:
    log_p_rest = teacher_rest_log_mass(log_p) if tail == "bucket" else parts.log_p_rest
    return divergence_from_coarse(
      log_q_listed,
      log_q_rest,
      log_p,
      log_p_rest,
      divergence=divergence,
      beta=beta,
      tail=tail,
      p_rest_atol=parts.atol,
    )

  value, pullback = jax.vjp(
    lambda a, b: divergence_of(a, b, log_p), coarse.log_q_listed, coarse.log_q_rest
  )
  out = jnp.zeros_like(value)
  student = not (
    isinstance(d_logits, SymbolicZero) and isinstance(d_inverse_t, SymbolicZero)
  )
  if student:
    a_listed, a_rest = pullback(jnp.ones_like(value))
    bucket = tail == "bucket"
    grad = coarse_logit_gradient(
      parts.z,
      indices,
      parts.valid,
      coarse.log_z,
      coarse.log_rest_z if bucket else None,
      a_listed,
      a_rest if bucket else None,
    )
    if not isinstance(d_logits, SymbolicZero):
      out = out + inverse_t * jnp.sum(grad * d_logits, axis=-1)
    if not isinstance(d_inverse_t, SymbolicZero):
      out = out + d_inverse_t * jnp.sum(
        _zero_safe_product(grad, parts.shifted), axis=-1
      )
  if not isinstance(d_log_p, SymbolicZero):
    _, d_teacher = jax.jvp(
      lambda lp: divergence_of(coarse.log_q_listed, coarse.log_q_rest, lp),
      (log_p,),
      (d_log_p,),
    )
    out = out + d_teacher
  return value, out


_topk_core.defjvp(_topk_core_jvp, symbolic_zeros=True)


class _TopKInputs(NamedTuple):
  """The checked arguments, class/slot axis moved last, in the compute dtype."""

  logits: jax.Array  # [..., V]
  indices: jax.Array  # [..., k]
  log_p: jax.Array  # [..., k]
  inverse_t: jax.Array  # 0-d
  keep: jax.Array | None  # [...]
  out_dtype: np.dtype[Any]
  log_p_dtype: np.dtype[Any]  # the dtype the log-probabilities came in


def _validate(
  logits: ArrayLike,
  target_indices: ArrayLike,
  target_log_probs: ArrayLike,
  temperature: ArrayLike,
  axis: int,
  where: ArrayLike | None,
) -> _TopKInputs:
  """Static checks (before tracing); returns the arguments, axis moved last.

  Raises:
    TypeError: non-floating logits or log-probabilities, non-integer
      indices, a non-int ``axis``, a non-boolean mask, a bool temperature.
    ValueError: shapes that do not fit, ``k < 1`` or ``k > V``, a bad
      ``axis``, mask shape or temperature.
  """
  x = _checks.as_float_array(logits, "logits")
  log_p = _checks.as_float_array(target_log_probs, "target_log_probs")
  try:
    indices = jnp.asarray(target_indices)
  except TypeError as err:
    raise TypeError(
      f"`target_indices` must be an integer array; got an object of type "
      f"{type(target_indices).__name__}."
    ) from err
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(
      f"`target_indices` must be an array of integer dtype (class indices); "
      f"got dtype {indices.dtype}."
    )
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise TypeError(f"`axis` must be an int (the class axis); got {axis!r}.")
  if x.ndim == 0:
    raise ValueError("`logits` must have a class axis; got a 0-d array.")
  (ax,) = _per_example.normalize_axis(axis, x.ndim)
  if indices.shape != log_p.shape:
    raise ValueError(
      f"`target_indices` has shape {tuple(indices.shape)} but "
      f"`target_log_probs` has shape {tuple(log_p.shape)}; they must be equal "
      f"(one index and one log-probability per slot)."
    )
  expected = (*x.shape[:ax], "k", *x.shape[ax + 1 :])
  fits = log_p.ndim == x.ndim and all(
    i == ax or a == b for i, (a, b) in enumerate(zip(log_p.shape, x.shape, strict=True))
  )
  if not fits:
    raise ValueError(
      f"`target_log_probs` and `target_indices` have shape "
      f"{tuple(log_p.shape)}; against `logits` of shape {tuple(x.shape)} "
      f"(classes on axis {ax}) they must have shape {expected}: the logits' "
      f"shape with k slots in place of the V classes."
    )
  k, vocab = log_p.shape[ax], x.shape[ax]
  if k < 1:
    raise ValueError(
      "`target_log_probs` has no slot (k = 0) along the class axis; k must "
      "be at least 1 (mark unused slots with a log-probability of -inf)."
    )
  if k > vocab:
    raise ValueError(
      f"`target_indices` lists k = {k} classes per position but `logits` has "
      f"only V = {vocab} classes; k must be at most V."
    )
  temperature = _logits.check_temperature(temperature)
  per_position = tuple(d for i, d in enumerate(x.shape) if i != ax)
  keep = None
  if where is not None:
    try:
      keep = jnp.asarray(where)
    except TypeError as err:
      raise TypeError(
        f"`where` must be a boolean array; got an object of type "
        f"{type(where).__name__}."
      ) from err
    _checks.check_mask_dtype(keep, "where")
    if keep.shape != per_position:
      raise ValueError(
        f"`where` must be a boolean mask of positions, of shape "
        f"{per_position} (the logits' shape without the class axis); got "
        f"{tuple(keep.shape)}."
      )
  out_dtype, compute_dtype = _checks.result_dtype(x)
  if _checks.finfo(log_p.dtype).bits > np.dtype(compute_dtype).itemsize * 8:
    compute_dtype = np.dtype(log_p.dtype)
  return _TopKInputs(
    jnp.moveaxis(x.astype(compute_dtype), ax, -1),
    jnp.moveaxis(indices, ax, -1),
    jnp.moveaxis(log_p.astype(compute_dtype), ax, -1),
    1 / jnp.asarray(temperature, compute_dtype),
    keep,
    out_dtype,
    np.dtype(log_p.dtype),
  )


def _drop(inputs: _TopKInputs) -> tuple[jax.Array, jax.Array]:
  """``(logits, log_p)`` with dropped positions set to 0 and ``-inf``."""
  keep = inputs.keep
  if keep is None:
    return inputs.logits, inputs.log_p
  logits = _logits.zero_dropped_examples(inputs.logits, keep, (inputs.logits.ndim - 1,))
  log_p = jnp.where(keep[..., None], inputs.log_p, -jnp.inf)
  return logits, log_p


def topk_divergence_from_logits(
  logits: ArrayLike,
  target_indices: ArrayLike,
  target_log_probs: ArrayLike,
  *,
  divergence: _logits.Divergence = "forward",
  beta: float = 0.5,
  tail: Tail = "bucket",
  temperature: ArrayLike = 1.0,
  axis: int = -1,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Per-position divergence against a teacher given as top-k log-probabilities.

  The teacher :math:`P` is known only at ``k`` classes per position: their
  indices ``target_indices`` and log-probabilities ``target_log_probs``
  (the teacher's, at *its* temperature, as vLLM or SGLang return them; they
  are used as given, ``temperature`` does not re-temper them). The student
  :math:`Q = \mathrm{softmax}(\text{logits} / T)` is known in full. With
  :math:`L` the listed classes (the used slots) and :math:`\bar L` the
  others:

  * ``tail="bucket"`` (default): both are coarse-grained onto the
    :math:`k + 1` outcomes "class :math:`i`" (:math:`i \in L`) and "rest",
    with :math:`P_\mathrm{rest} = 1 - \sum_{i \in L} p_i` (computed as
    ``log1mexp(logsumexp(log p))``) and
    :math:`Q_\mathrm{rest} = \sum_{v \in \bar L} q_v`, summed over the
    unlisted classes in log space (not :math:`1 - \sum q`, which cancels
    when the listed classes hold nearly all the student's mass), and

    .. math::

       D_\mathrm{bucket} = D\big((p_i)_{i \in L}, P_\mathrm{rest} \,\big\|\,
         (q_i)_{i \in L}, Q_\mathrm{rest}\big).

    This is an exact divergence of two distributions: never negative, 0 iff
    they agree, and, by the data-processing inequality (a divergence cannot
    grow under a deterministic map of the outcomes, here "keep the class if
    listed, else 'rest'"), a lower bound on the divergence between the full
    distributions, equal to it when every class with mass is listed
    (``k = V``).
  * ``tail="renormalize"``: both renormalized over :math:`L`,
    :math:`\tilde p_i = p_i / \sum_L p`, :math:`\tilde q_i = q_i / \sum_L q`,
    and :math:`D(\tilde p \,\|\, \tilde q)` (MaxText's and Tunix's
    semantics): the rest of both distributions is ignored, so this is not
    a bound on the full divergence.

  :math:`D` is ``'forward'`` :math:`D_{\mathrm{KL}}(P \,\|\, Q)`,
  ``'reverse'`` :math:`D_{\mathrm{KL}}(Q \,\|\, P)` or ``'jsd'``
  :math:`\beta D_{\mathrm{KL}}(P \,\|\, M) + (1 - \beta) D_{\mathrm{KL}}(Q
  \,\|\, M)`, :math:`M = \beta P + (1 - \beta) Q` (``beta = 0`` is the
  forward KL, ``beta = 1`` the reverse KL: Liger-Kernel's convention, as in
  :func:`jaxkl.divergence_from_logits`).

  The gradient with respect to the logits is computed in closed form: with
  :math:`z = \text{logits} / T`, coarse outcomes :math:`c` of student mass
  :math:`Q_c` and :math:`a_c = \partial D / \partial \log Q_c`,
  :math:`\partial D / \partial z_v = a_{c(v)}\, q_v / Q_{c(v)} - q_v
  \sum_c a_c` (a ``jax.custom_jvp``: forward and reverse mode, Hessians),
  finite at ``-inf`` logits and zero-mass outcomes; the only ``[..., V]``
  buffer it keeps is the gradient itself. The result is also
  differentiable with respect to ``target_log_probs`` and ``temperature``.

  Runtime cases (values are not inspected at trace time):

  * A slot whose log-probability is ``-inf`` is unused: its index is
    ignored (``-1``, a repeat, anything), so a row may list fewer than
    ``k`` classes. A row with no used slot puts all the teacher's mass on
    the rest; with ``'bucket'`` it is computed as such (the student's rest
    is then all its mass: the result is 0); with ``'renormalize'`` it is 0.
  * Used indices must be distinct and in ``[0, V)``. An index out of range
    (negative ones are not wrapped) names a class the student gives no
    mass (its log-probability is ``-inf``: the forward KL is ``+inf``). A
    duplicate is the caller's responsibility: the class counts in both
    slots (and once in the student's rest), which is not a divergence of
    distributions (its value may then be clamped at 0).
  * Log-probabilities above 0 or summing above 1 are used as given; the
    teacher's rest is then 0 (clamped). Where the student has no mass
    outside the listed classes (``k = V``, or the other logits ``-inf``), a
    teacher rest of at most :math:`(k + 16)\,\varepsilon` (the machine
    epsilon of ``target_log_probs``' dtype) is rounding and counts as 0:
    ``k = V`` gives the dense divergence, not ``+inf``. Where the student
    has a rest, the reverse KL raises a teacher rest below
    :math:`(k + 16)\,\varepsilon` of the *compute* dtype (float32 for
    16-bit inputs; about 1e-5 at k = 64), including one clamped to 0, to
    that floor: a listed mass that rounds to 1 (common for LLM teachers)
    gives a large but finite reverse KL rather than ``+inf``. Larger rests,
    and the rest in the forward KL and the JSD (finite there anyway), are
    used as computed.
  * ``'renormalize'`` with a student that gives no mass to any listed class
    (all their logits ``-inf``) gives ``+inf``: there is no renormalized
    student.

  Args:
    logits: student logits, ``[..., V]`` (class axis ``axis``).
    target_indices: integer class indices ``[..., k]``, the logits' shape
      with ``k <= V`` slots on ``axis``.
    target_log_probs: the teacher's log-probabilities at those classes,
      same shape as ``target_indices``; ``-inf`` marks an unused slot.
    divergence: ``'forward' | 'reverse' | 'jsd'``. Static.
    beta: JSD weight in ``[0, 1]`` (``'jsd'`` only). Static.
    tail: ``'bucket' | 'renormalize'``. Static.
    temperature: the student's :math:`T > 0` (a Python number or a 0-d
      array; concrete values are checked to be finite and > 0, traced ones
      are not). It does not apply to the teacher's log-probabilities.
    axis: the class axis of ``logits`` (and slot axis of the targets), an
      int. Static.
    where: optional boolean mask of positions, the logits' shape without
      ``axis``. Dropped positions give exactly 0, with zero derivatives,
      whatever their logits and log-probabilities hold (NaN, all ``-inf``).

  Returns:
    Per-position divergences, the logits' shape without ``axis``, in the
    logits' dtype (computed in float32 for 16-bit logits, or in
    ``target_log_probs``' dtype if it is wider).

  Raises:
    TypeError: non-floating logits or log-probabilities, non-integer
      indices, a non-int ``axis``, a non-boolean mask or a bool
      ``temperature``.
    ValueError: indices and log-probabilities of different shapes, or of a
      shape that does not fit the logits, ``k = 0`` or ``k > V``, a bad
      ``divergence``, ``beta``, ``tail``, ``axis``, mask shape or
      ``temperature``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> logits = jnp.log(jnp.array([0.5, 0.3, 0.1, 0.1]))  # the student
    >>> indices = jnp.array([0, 2])        # the teacher's top-2 ...
    >>> log_p = jnp.log(jnp.array([0.6, 0.2]))  # ... and their probabilities
    >>> # (0.6, 0.2, rest 0.2) against (0.5, 0.1, rest 0.4):
    >>> jaxkl.topk_divergence_from_logits(logits, indices, log_p)
    Array(0.10939296, dtype=float32)
    >>> jaxkl.topk_divergence_from_logits(logits, indices, log_p,
    ...                                   tail="renormalize")
    Array(0.02234597, dtype=float32)
    >>> # An unused slot (-inf): only class 0 is listed.
    >>> jaxkl.topk_divergence_from_logits(
    ...     logits, jnp.array([0, -1]), jnp.log(jnp.array([0.6, 0.0])))
    Array(0.02013554, dtype=float32)

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531, 2015. Cover & Thomas, "Elements of Information
    Theory", 2nd ed., 2006, Sec. 2.8 (data-processing inequality). vLLM and
    SGLang return per-token top-k log-probabilities (``logprobs``), not
    logits.
  """
  divergence, beta = _logits.check_divergence(divergence, beta)
  tail = check_tail(tail)
  inputs = _validate(logits, target_indices, target_log_probs, temperature, axis, where)
  x, log_p = _drop(inputs)
  value = _topk_core(
    x,
    inputs.indices,
    log_p,
    inputs.inverse_t,
    divergence,
    beta,
    tail,
    inputs.log_p_dtype,
  )
  return _finish(value, inputs.keep, False).astype(inputs.out_dtype)


class TopKMetrics(NamedTuple):
  r"""Per-position diagnostics of a top-k teacher (see :func:`jaxkl.topk_metrics`).

  Attributes:
    target_mass: :math:`\sum_{i \in L} p_i`, the teacher's mass on its
      listed classes (1 minus its rest).
    student_mass: :math:`\sum_{i \in L} q_i`, the student's mass (at the
      temperature) on the teacher's listed classes.
    overlap: the fraction of the teacher's listed classes that are among
      the student's ``k_valid`` most likely classes.
  """

  target_mass: jax.Array
  student_mass: jax.Array
  overlap: jax.Array


def topk_metrics(
  logits: ArrayLike,
  target_indices: ArrayLike,
  target_log_probs: ArrayLike,
  *,
  temperature: ArrayLike = 1.0,
  axis: int = -1,
  where: ArrayLike | None = None,
) -> TopKMetrics:
  r"""Per-position diagnostics: is ``k`` large enough, does the student agree?

  For each position, with :math:`L` the teacher's listed classes (its used
  slots, :math:`k_\mathrm{valid} = |L|`) and
  :math:`Q = \mathrm{softmax}(\text{logits} / T)`:

  * ``target_mass`` :math:`= \sum_{i \in L} p_i`: how much of the teacher
    the top-k holds (the bucket's teacher rest is 1 minus it);
  * ``student_mass`` :math:`= \sum_{i \in L} q_i`;
  * ``overlap`` :math:`= |L \cap S| / k_\mathrm{valid}`, with :math:`S`
    the student's :math:`k_\mathrm{valid}` classes of largest logit
    (``jax.lax.top_k``: ties go to the lower index); 0 for a row with no
    used slot. Out-of-range indices are never found; a duplicated index
    counts once per slot.

  The metrics carry no gradient (their inputs are wrapped in
  ``jax.lax.stop_gradient``): they are for logging.

  Args:
    logits, target_indices, target_log_probs, temperature, axis, where: as
      in :func:`jaxkl.topk_divergence_from_logits` (dropped positions give
      0 in every field).

  Returns:
    A :class:`jaxkl.TopKMetrics` of three arrays of the logits' shape
    without ``axis``, in the logits' dtype.

  Raises:
    TypeError, ValueError: as :func:`jaxkl.topk_divergence_from_logits`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> logits = jnp.log(jnp.array([0.5, 0.3, 0.1, 0.1]))
    >>> m = jaxkl.topk_metrics(logits, jnp.array([0, 2]),
    ...                        jnp.log(jnp.array([0.6, 0.2])))
    >>> m.target_mass, m.student_mass  # 0.6 + 0.2, 0.5 + 0.1
    (Array(0.8, dtype=float32), Array(0.6, dtype=float32))
    >>> m.overlap  # the student's top-2 is {0, 1}: it holds class 0 only
    Array(0.5, dtype=float32)

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531, 2015.
  """
  inputs = _validate(logits, target_indices, target_log_probs, temperature, axis, where)
  x, log_p = _drop(inputs)
  x, log_p = jax.lax.stop_gradient(x), jax.lax.stop_gradient(log_p)
  inverse_t = jax.lax.stop_gradient(inputs.inverse_t)
  indices = inputs.indices
  valid = log_p != -jnp.inf
  top = jnp.max(x, axis=-1, keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, jnp.zeros((), x.dtype))
  coarse = student_coarse(_scaled(x - top, inverse_t), indices, valid, rest=False)
  target_mass = jnp.exp(_logsumexp(log_p))
  student_mass = jnp.exp(_logsumexp(coarse.log_q_listed))
  k = indices.shape[-1]
  k_valid = jnp.sum(valid, axis=-1)
  _, student_top = jax.lax.top_k(x, k)  # [..., k], most likely first
  rank = jax.lax.broadcasted_iota(k_valid.dtype, indices.shape, indices.ndim - 1)
  rank_ok = rank < k_valid[..., None]  # the first k_valid of them
  hits = (indices[..., :, None] == student_top[..., None, :]) & rank_ok[..., None, :]
  found = jnp.any(hits, axis=-1) & valid
  count = jnp.sum(found, axis=-1).astype(x.dtype)
  overlap = jnp.where(k_valid > 0, count / jnp.maximum(k_valid, 1).astype(x.dtype), 0)
  keep = inputs.keep
  results = [
    _finish(m, keep, False).astype(inputs.out_dtype)
    for m in (target_mass, student_mass, overlap)
  ]
  return TopKMetrics(*results)
