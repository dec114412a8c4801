"""Divergences straight from logits, with temperature."""

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
from jaxkl import _per_example
from jaxkl import _pointwise

Divergence = Literal["forward", "reverse", "jsd"]
DIVERGENCES: tuple[str, ...] = ("forward", "reverse", "jsd")
Tangent = _pointwise.Tangent


def _check_temperature_value(temperature: float, shown: object) -> None:
  """Raises the ValueError of a temperature that is not finite and > 0."""
  if not (temperature > 0 and math.isfinite(temperature)):
    raise ValueError(f"`temperature` must be a finite number > 0; got {shown!r}.")


def check_temperature(temperature: ArrayLike) -> ArrayLike:
  """Validates ``temperature`` before tracing; returns it unchanged.

  A temperature is one positive number for the whole call: a Python number,
  a NumPy scalar or 0-d array, or a 0-d JAX array. Whenever its value is
  known here (everything but a tracer), it is checked to be finite and
  > 0, whatever its form. A traced temperature (an argument of a ``jax.jit``
  function, a differentiated or ``vmap``-ped one, e.g. scheduled) has no
  value at trace time and is not checked: a non-positive or infinite traced
  temperature gives NaN or meaningless values. Per-example temperatures are
  not accepted: the ``T**2`` factor of the distillation losses and the
  vocabulary-parallel statistics are defined for one temperature, and a
  per-example one is spelled explicitly by dividing the logits, e.g.
  ``kl_divergence_from_logits(s / T[:, None], t / T[:, None])``.

  Raises:
    TypeError: a bool (or boolean array), or an array that is not of a real
      number dtype.
    ValueError: a concrete value that is not finite and > 0, or an array that
      is not 0-d.
  """
  if isinstance(temperature, (bool, np.bool_)):
    raise TypeError("`temperature` must be a number, not a bool.")
  if isinstance(temperature, (int, float, np.integer, np.floating)):
    _check_temperature_value(float(temperature), temperature)
    return temperature
  shape = tuple(np.shape(temperature))
  if shape:
    raise ValueError(
      f"`temperature` must be a scalar (a Python number or a 0-d array); got "
      f"an array of shape {shape}. Per-example temperatures are not "
      f"supported; divide the logits instead, e.g. `logits / "
      f"temperature[..., None]` for both inputs, with `temperature=1.0`."
    )
  if isinstance(temperature, jax.core.Tracer):
    return temperature  # traced: no value to check
  value = np.asarray(temperature)
  if value.dtype == np.bool_:
    raise TypeError("`temperature` must be a number, not a bool.")
  if not (
    jnp.issubdtype(value.dtype, jnp.integer)
    or jnp.issubdtype(value.dtype, jnp.floating)
  ):
    raise TypeError(
      f"`temperature` must be a real number; got a 0-d array of dtype {value.dtype}."
    )
  _check_temperature_value(float(value), temperature)
  return temperature


def check_divergence(divergence: object, beta: object) -> tuple[Divergence, float]:
  """Validates ``divergence`` and ``beta``; maps JSD endpoints to KL."""
  if not (isinstance(divergence, str) and divergence in DIVERGENCES):
    raise ValueError(
      f"`divergence` must be one of {', '.join(map(repr, DIVERGENCES))}; "
      f"got {divergence!r}."
    )
  if not isinstance(beta, (int, float, np.number)) or isinstance(beta, bool):
    raise TypeError(f"`beta` must be a Python float in [0, 1]; got {beta!r}.")
  beta = float(beta)
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"`beta` must be in [0, 1]; got {beta!r}.")
  if divergence == "jsd" and beta == 0.0:
    return "forward", beta
  if divergence == "jsd" and beta == 1.0:
    return "reverse", beta
  return cast(Divergence, divergence), beta


class _Inputs(NamedTuple):
  """The checked arguments of a from-logits divergence (see ``_validate_logits``)."""

  logits: jax.Array
  target_logits: jax.Array
  inverse_t: jax.Array
  axes: tuple[int, ...]
  mask: jax.Array | None
  examples: jax.Array | None
  out_dtype: np.dtype[Any]

  @property
  def whole_examples(self) -> bool:
    """Whether the result is a divergence for every example: no mask, or a
    mask that only selects whole examples (then it may be clamped at 0)."""
    return self.mask is None or self.examples is not None


def _validate_logits(
  logits: ArrayLike,
  target_logits: ArrayLike,
  temperature: ArrayLike,
  axis: _per_example.Axis,
  where: ArrayLike | None,
) -> _Inputs:
  """Checks the arguments; returns them as arrays in the compute dtype.

  Returns:
    Both logits cast to the compute dtype, ``1 / temperature`` as a 0-d array
    of that dtype, the normalized class axes, the mask broadcast to the
    logits' shape (or None), the per-example mask when the mask selects whole
    examples (else None) and the result dtype.
  """
  logits = _checks.as_float_array(logits, "logits")
  target_logits = _checks.as_float_array(target_logits, "target_logits")
  _checks.check_same_shape(logits, target_logits, "logits", "target_logits")
  temperature = check_temperature(temperature)
  axes = _per_example.normalize_axis(axis, logits.ndim)
  if not axes:
    raise ValueError("`axis` must name at least one axis (the classes).")
  mask = _per_example.broadcast_mask(where, logits.shape, axes)
  examples = None
  if where is not None:
    examples = _per_example.per_example_mask(where, logits.shape, axes)
  out_dtype, compute_dtype = _checks.result_dtype(logits, target_logits)
  inverse_t = 1 / jnp.asarray(temperature, compute_dtype)
  return _Inputs(
    logits.astype(compute_dtype),
    target_logits.astype(compute_dtype),
    inverse_t,
    axes,
    mask,
    examples,
    out_dtype,
  )


# ----------------------------------------------------------------------------
# Masked examples: exactly 0, whatever their logits.
#
# An example that the mask drops entirely (a mask of whole examples, or a
# mask within examples that keeps none of its classes) may hold anything:
# a padded row of -inf, NaN or inf garbage. Its logits are replaced by 0
# before anything is computed from them, and its result is set to 0 after:
# the double-``where`` pattern, so that its value and its derivatives (of
# every order) are exactly 0, and nothing non-finite reaches the other
# examples' gradients through ``0 * NaN``.


def kept_examples(inputs: _Inputs) -> jax.Array | None:
  """Per-example booleans: whether the mask keeps any entry of an example.

  None without a mask; the per-example mask for a mask of whole examples;
  for a mask within examples, whether it keeps any class of the example.
  """
  if inputs.mask is None:
    return None
  if inputs.examples is not None:
    return inputs.examples
  return jnp.any(inputs.mask, axis=inputs.axes)


def zero_dropped_examples(
  x: jax.Array, keep: jax.Array | None, axes: tuple[int, ...]
) -> jax.Array:
  """``x`` with the examples that ``keep`` drops replaced by 0.

  Args:
    x: an array whose ``axes`` are the per-example axes (classes, or hidden
      features) and whose other axes index the examples.
    keep: per-example booleans (the shape of ``x`` without ``axes``), or None
      (nothing is dropped).
    axes: the per-example axes of ``x``, sorted.

  Returns:
    ``jnp.where(keep, x, 0)`` broadcast along ``axes``: the first half of the
    double-``where`` pattern; the caller sets the dropped examples' results
    to 0 (the second half).
  """
  if keep is None:
    return x
  return jnp.where(jnp.expand_dims(keep, axes), x, jnp.zeros((), x.dtype))


def _finish(result: jax.Array, keep: jax.Array | None, clamp: bool) -> jax.Array:
  """Dropped examples to exactly 0; clamped at 0 when ``clamp``.

  Clamp only a true divergence: with a mask within examples (e.g. ``[1, C]``,
  classes) the KL result is the kept classes' sum of ``p (log p - log q)``,
  as in :func:`jaxkl.kl_divergence`, which can legitimately be negative.
  """
  if keep is not None:
    result = jnp.where(keep, result, jnp.zeros((), result.dtype))
  return _nonnegative(result) if clamp else result


def _log_softmaxes(
  inputs: _Inputs, keep: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """``(log q, log p)``: log-softmaxes of both inputs at the temperature."""
  logits = zero_dropped_examples(inputs.logits, keep, inputs.axes)
  target_logits = zero_dropped_examples(inputs.target_logits, keep, inputs.axes)
  axes = inputs.axes
  log_q = jax.nn.log_softmax(
    _scaled(shift_by_max(logits, axes), inputs.inverse_t), axis=axes
  )
  log_p = jax.nn.log_softmax(
    _scaled(shift_by_max(target_logits, axes), inputs.inverse_t), axis=axes
  )
  return log_q, log_p


def shift_by_max(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """``x - max(x)`` over ``axes`` (the max carries no derivative).

  The softmax is shift-invariant; shifting *before* dividing by the
  temperature keeps huge logits at small temperatures finite (``3e38 /
  1e-3`` overflows to ``inf``, and ``inf - inf`` is NaN), as
  ``_max_and_log_normalizer`` does for the forward KL. A row whose maximum
  is not finite (all ``-inf``) is left unshifted.
  """
  top = jax.lax.stop_gradient(jnp.max(x, axis=axes, keepdims=True))
  return x - jnp.where(jnp.isfinite(top), top, jnp.zeros((), x.dtype))


def _kl_from_log_probs(
  log_q: jax.Array,
  log_p: jax.Array,
  axes: tuple[int, ...],
  mask: jax.Array | None,
) -> jax.Array:
  """sum over axes of p (log p - log q), masked; p = exp(log_p)."""
  log_p = _per_example.masked_target(log_p, mask, log_target=True)
  return jnp.sum(_pointwise.kl_terms_log_target(log_q, log_p), axis=axes)


# ----------------------------------------------------------------------------
# Masked classes (-inf logits) and derivatives of every order.
#
# A class whose logit is -inf in an input has zero probability there, and a
# class that is -inf in both inputs must not change the divergence or any of
# its derivatives with respect to the other classes (padded vocabularies).
# Plain autodiff breaks that in two places, both fixed below without adding
# anything to the primal computation (so the fused forward pass is unchanged):
#
# * ``x * (1 / T)``: its tangent ``x * d(1/T)`` is ``-inf * 0 = NaN`` at a
#   -inf logit whenever the factor carries a tangent (a differentiated
#   temperature, or a per-row copy ``row * 0 + 1 / T`` whose ``row`` does;
#   see below). ``_scaled`` has the same value and the tangent that a
#   constant -inf has: 0 from the temperature (``x = -inf`` for every ``T``).
# * ``log(b p + (1 - b) q)`` with ``p = q = 0``: ``jnp.logaddexp``'s tangent
#   is ``exp(-inf - (-inf)) = NaN`` there. ``_log_mixture`` gives the exact
#   tangent (the mixture weights), 0 where both are -inf.
#
# Both rules are written with the double-``where`` pattern in terms of the
# functions themselves, so they can be differentiated again (Hessians).


# jaxkl's own helper: the sum of coefficient * tangent over non-zero tangents.
# pylint: disable-next=protected-access
_linear_combination = _pointwise._linear_combination


@jax.custom_jvp
def _scaled(x: jax.Array, inverse_t: jax.Array) -> jax.Array:
  """``x * inverse_t``; at ``x = -inf`` the derivative in ``inverse_t`` is 0."""
  return x * inverse_t


def _finite_or_zero(x: jax.Array) -> jax.Array:
  """``x`` where it is not ``-inf``, else 0 (a stand-in for derivatives)."""
  return jnp.where(x == -jnp.inf, 0, x)


def _scaled_jvp(
  primals: tuple[jax.Array, jax.Array], tangents: tuple[Tangent, Tangent]
) -> tuple[jax.Array, jax.Array]:
  x, inverse_t = primals
  d_x, d_inverse_t = tangents
  out = _scaled(x, inverse_t)
  return out, _linear_combination(
    out,
    [
      (lambda: inverse_t, d_x),
      (lambda: _finite_or_zero(x), d_inverse_t),
    ],
  )


_scaled.defjvp(_scaled_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _logaddexp(a: jax.Array, b: jax.Array) -> jax.Array:
  """``log(exp(a) + exp(b))``; finite derivatives where ``a = b = -inf``."""
  return jnp.logaddexp(a, b)


def _logaddexp_jvp(
  primals: tuple[jax.Array, jax.Array], tangents: tuple[Tangent, Tangent]
) -> tuple[jax.Array, jax.Array]:
  a, b = primals
  d_a, d_b = tangents
  out = _logaddexp(a, b)
  # The weights exp(a - out), exp(b - out) (summing to 1); both 0 where
  # a = b = out = -inf, instead of exp(-inf + inf) = NaN.
  safe_out = _finite_or_zero(out)
  return out, _linear_combination(
    out,
    [
      (lambda: jnp.exp(a - safe_out), d_a),
      (lambda: jnp.exp(b - safe_out), d_b),
    ],
  )


_logaddexp.defjvp(_logaddexp_jvp, symbolic_zeros=True)


def _log_mixture(log_p: jax.Array, log_q: jax.Array, beta: float) -> jax.Array:
  """``log(beta p + (1 - beta) q)`` from log-probabilities, 0 < beta < 1."""
  return _logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))


def _nonnegative(value: jax.Array) -> jax.Array:
  """``max(value, 0)`` with the derivatives (of every order) of ``value``.

  A divergence is never negative, but rounding can make a computed one a few
  ulps below 0 (JSD(P || P) ~ -4e-8 in float32). The correction
  ``max(-value, 0)`` is per example (after the class reduction, so nothing is
  added to the fused reduction over the classes) and carries no gradient:
  where ``value >= 0`` nothing changes; where it is negative the result is
  exactly ``value - value = 0``; ``+inf`` and NaN pass through.
  """
  return value + jax.lax.stop_gradient(jnp.maximum(-value, 0))


# ----------------------------------------------------------------------------
# Forward KL from logits: one custom_jvp; per row, a max and a log-sum-exp of
# each input, one KL pass and (when differentiated) one gradient pass.
#
# ``jax.value_and_grad`` of the composition ``log_softmax`` -> pointwise KL ->
# sum differentiates through both log-softmaxes; XLA:CPU then materializes
# several [B, V] intermediates (log q, log p, p, the log-softmax cotangents)
# and was ~1.5x slower than even the optax composition. With the closed-form
# derivative, a fwd+bwd pass needs only, with z = logits / T,
#
#   1. m = max(x), log Z = log sum exp((x - m) / T), for x = s and x = t;
#   2. KL = sum p (log p - log q) per row, log q = (s - m_s) / T - log Z_s;
#   3. d KL / d s = (softmax(z_s) - softmax(z_t)) / T   (the only [B, V] write)
#
# XLA:CPU (jax 0.10) compiles reductions into YNNPACK fusions, and a [B, V]
# value -- even a ``broadcast`` of a scalar or of a per-row vector -- that
# feeds two different fusions is materialized as a [B, V] buffer (for
# ``s * (1 / T)`` that is one extra write and several reads of a constant
# array: 3x slower). XLA's CSE merges equal expressions, so each pass gets
# broadcasts of its *own* per-row vectors: ``row * 0`` is a per-row zero that
# XLA cannot fold (IEEE arithmetic: XLA does not simplify ``y * 0`` for
# floats), and ``m + zero``, ``zero + 1 / T`` are private copies of ``m`` and
# ``1 / T``. Where ``row`` is not finite, the row's result is NaN anyway.
# On other backends this costs a few per-row operations.
#
# ``x - m`` is formed before scaling and ``log Z`` is subtracted last, as in
# ``jax.nn.log_softmax``: the result keeps full precision for large logits
# (``x / T - logsumexp(x / T)`` would lose the bits of the logsumexp).


# YNNPACK reduces a row of more than ~32K float32 elements through a [B, V]
# scratch buffer (page faults and memory traffic: ~3x slower at V = 128000);
# a long class axis is therefore reduced as (V // k, k), k <= 32768.
_MAX_CHUNK = 32768
_MIN_CHUNK = 2048


def _class_axis_explicitly_sharded(x: jax.Array) -> bool:
  """Whether the last axis of ``x`` is sharded over an explicit mesh axis."""
  typeof = getattr(jax, "typeof", None)  # jax >= 0.6
  sharding = None if typeof is None else getattr(typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  return spec is not None and len(spec) == x.ndim and spec[-1] is not None


def _split_classes(
  x: jax.Array, axes: tuple[int, ...]
) -> tuple[jax.Array, tuple[int, ...]]:
  """``(view, view_axes)``: a long last class axis split into chunks.

  A single last class axis of length V > ``_MAX_CHUNK`` is reshaped (free) to
  ``(V // k, k)`` with k the largest divisor of V in
  ``[_MIN_CHUNK, _MAX_CHUNK]``; anything else is returned unchanged, and so
  is a class axis sharded over an explicit mesh axis (``jax.typeof(x)``
  names it): explicit sharding cannot express the split of one mesh axis
  over two array axes. Automatic (GSPMD) sharding partitions the view
  without collectives (tests/test_sharding.py checks the HLO).
  """
  if axes != (x.ndim - 1,) or x.shape[-1] <= _MAX_CHUNK:
    return x, axes
  if _class_axis_explicitly_sharded(x):
    return x, axes
  length = x.shape[-1]
  for chunk in range(_MAX_CHUNK, _MIN_CHUNK - 1, -1):
    if length % chunk == 0:
      view = jnp.reshape(x, (*x.shape[:-1], length // chunk, chunk))
      return view, (x.ndim - 1, x.ndim)
  return x, axes


def _max_and_log_normalizer(
  x: jax.Array, inverse_t: jax.Array, axes: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
  """``(m, log Z)`` (kept axes): m = max x, Z = sum exp((x - m) * inverse_t).

  ``m`` carries no derivative (as in ``jax.nn.log_softmax``): every use of
  it, ``(x - m) / T - log Z``, is independent of its value, and ``log Z``'s
  derivative accounts for the dependence on ``x``.
  """
  x_max = jax.lax.stop_gradient(jnp.max(x, axis=axes, keepdims=True))
  zero = x_max * 0  # private per-row copies for this pass (see above)
  shifted = _scaled(x - (x_max + zero), zero + inverse_t)
  return x_max, jnp.log(jnp.sum(jnp.exp(shifted), axis=axes, keepdims=True))


def _forward_kl_parts(
  logits: jax.Array,
  target_logits: jax.Array,
  inverse_t: jax.Array,
  axes: tuple[int, ...],
) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
  """Per-row KL(P_T || Q_T) and the ``(m, log Z)`` of both inputs.

  The ``(m, log Z)`` have the shape of the logits with size 1 along ``axes``.
  """
  kept_shape = tuple(1 if i in axes else d for i, d in enumerate(logits.shape))
  logits, view_axes = _split_classes(logits, axes)
  target_logits, _ = _split_classes(target_logits, axes)
  m_q, log_z_q = _max_and_log_normalizer(logits, inverse_t, view_axes)
  m_p, log_z_p = _max_and_log_normalizer(target_logits, inverse_t, view_axes)
  zero = log_z_p * 0  # private per-row copies for this pass (see above)
  scale = zero + inverse_t
  log_q = _scaled(logits - (m_q + zero), scale) - (log_z_q + zero)
  log_p = _scaled(target_logits - (m_p + zero), scale) - (log_z_p + zero)
  # NaN-free where p == 0 (t = -inf, or p underflows), +inf where p > 0
  # meets log q = -inf.
  kl = jnp.sum(_pointwise.kl_terms_log_target(log_q, log_p), axis=view_axes)
  stats = [jnp.reshape(x, kept_shape) for x in (m_q, log_z_q, m_p, log_z_p)]
  return kl, tuple(stats[:2]), tuple(stats[2:])


def _zero_safe_product(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a * b``, but exactly 0 where ``a == 0`` (even for infinite ``b``)."""
  is_zero = a == 0
  return jnp.where(is_zero, 0, a * jnp.where(is_zero, 0, b))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _forward_kl(
  logits: jax.Array,
  target_logits: jax.Array,
  inverse_t: jax.Array,
  axes: tuple[int, ...],
) -> jax.Array:
  """``sum p (log p - log q)`` over ``axes``; p, q: softmax of logits * 1/T."""
  return _forward_kl_parts(logits, target_logits, inverse_t, axes)[0]


def _forward_kl_jvp(
  axes: tuple[int, ...],
  primals: tuple[jax.Array, jax.Array, jax.Array],
  tangents: tuple[Tangent, Tangent, Tangent],
) -> tuple[jax.Array, jax.Array]:
  """Closed-form derivatives; z = logits / T:

  * d KL / d z_s = q - p;
  * d KL / d z_t = p (log p - log q - KL);
  * d KL / d (1/T) = sum (d KL / d z_s) s + (d KL / d z_t) t.
  """
  logits, target_logits, inverse_t = primals
  d_logits, d_target, d_inverse_t = tangents
  kl, (m_q, log_z_q), (m_p, log_z_p) = _forward_kl_parts(
    logits, target_logits, inverse_t, axes
  )

  def is_zero(x: Tangent) -> bool:
    return isinstance(x, SymbolicZero)

  need_student = not (is_zero(d_logits) and is_zero(d_inverse_t))
  need_teacher = not (is_zero(d_target) and is_zero(d_inverse_t))
  log_q = _scaled(logits - m_q, inverse_t) - log_z_q
  log_p = _scaled(target_logits - m_p, inverse_t) - log_z_p
  if need_student:
    d_student = jnp.exp(log_q) - jnp.exp(log_p)
  if need_teacher:
    d_teacher = _pointwise.kl_terms_log_target(log_q, log_p) - jnp.exp(
      log_p
    ) * jnp.expand_dims(kl, axes)
  out = jnp.zeros_like(kl)
  # 1/T multiplies the per-row sums: in reverse mode it scales the per-row
  # cotangents, not every element of the gradient.
  if not isinstance(d_logits, SymbolicZero):
    out = out + inverse_t * jnp.sum(d_student * d_logits, axis=axes)
  if not isinstance(d_target, SymbolicZero):
    out = out + inverse_t * jnp.sum(d_teacher * d_target, axis=axes)
  if not isinstance(d_inverse_t, SymbolicZero):
    out = out + d_inverse_t * (
      jnp.sum(_zero_safe_product(d_student, logits), axis=axes)
      + jnp.sum(_zero_safe_product(d_teacher, target_logits), axis=axes)
    )
  return kl, out


_forward_kl.defjvp(_forward_kl_jvp, symbolic_zeros=True)


def _forward_kl_from_logits(
  logits: ArrayLike,
  target_logits: ArrayLike,
  temperature: ArrayLike,
  axis: _per_example.Axis,
  where: ArrayLike | None,
) -> tuple[jax.Array, np.dtype[Any]]:
  """``(per-example forward KL in the compute dtype, result dtype)``.

  The closed-form ``_forward_kl`` where it applies: no class axis is empty and
  the mask (if any) selects whole examples.
  """
  inputs = _validate_logits(logits, target_logits, temperature, axis, where)
  keep = kept_examples(inputs)
  axes = inputs.axes
  if inputs.whole_examples and all(inputs.logits.shape[a] for a in axes):
    result = _forward_kl(
      zero_dropped_examples(inputs.logits, keep, axes),
      zero_dropped_examples(inputs.target_logits, keep, axes),
      inputs.inverse_t,
      axes,
    )
  else:  # a mask within examples, or no classes
    log_q, log_p = _log_softmaxes(inputs, keep)
    result = _kl_from_log_probs(log_q, log_p, axes, inputs.mask)
  return _finish(result, keep, inputs.whole_examples), inputs.out_dtype


def kl_divergence_from_logits(
  logits: ArrayLike,
  target_logits: ArrayLike,
  *,
  temperature: ArrayLike = 1.0,
  axis: _per_example.Axis = -1,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Per-example :math:`D_{\mathrm{KL}}(P_T \,\|\, Q_T)` from logits.

  With :math:`P_T = \mathrm{softmax}(\text{target\_logits} / T)` (the teacher)
  and :math:`Q_T = \mathrm{softmax}(\text{logits} / T)` (the student):

  .. math::

     D_{\mathrm{KL}}(P_T \,\|\, Q_T) = \sum_x P_T(x)
       \left(\log P_T(x) - \log Q_T(x)\right).

  Computed from log-softmaxes (log-sum-exp), never from probabilities, so it is
  exact for extreme logits; ``-inf`` logits (masked vocabulary entries) give
  zero probability and contribute 0. A class that is ``-inf`` in both inputs
  (padding) changes neither the value nor any derivative, of any order, with
  respect to the other classes or the temperature, and its own derivatives
  are 0: Hessians are finite and equal to those of the vocabulary without it.
  Rounding can make a computed divergence a few ulps negative; it is returned
  as 0, with the derivatives of the unclamped value (not under a mask within
  examples, whose partial sums can legitimately be negative; see ``where``).
  The gradient with
  respect to ``logits`` is :math:`(Q_T - P_T) / T`. Equals, in float64,
  ``torch.nn.functional.kl_div(log_softmax(logits / T),
  log_softmax(target_logits / T), log_target=True, reduction='none').sum(-1)``.

  Args:
    logits: student logits, shape ``[..., C]``.
    target_logits: teacher logits, same shape.
    temperature: :math:`T > 0`: a Python number or a 0-d array (NumPy or
      JAX). A concrete value is checked to be finite and > 0, whatever its
      form; a traced one (e.g. a scheduled temperature under ``jax.jit``)
      cannot be checked, and a non-positive or infinite one then gives NaN
      or meaningless values. Per-example temperatures are not accepted:
      divide the logits instead (``logits / T[..., None]``).
    axis: class axis (or axes). Static.
    where: optional boolean mask, read as by :func:`jaxkl.kl_divergence`.
      A mask of whole examples (the per-example shape, or ``[B, 1]``) gives
      the dropped examples exactly 0, with zero derivatives, whatever their
      logits hold (``-inf`` padding, NaN, ``inf``); so does a mask within
      examples for an example none of whose classes it keeps. A mask within
      examples (e.g. ``[1, C]``, classes) sums the kept classes' terms
      :math:`P_T (\log P_T - \log Q_T)` (the masked classes still count in
      the softmaxes), exactly as :func:`jaxkl.kl_divergence` of the
      log-softmaxes: this partial sum can be negative and is returned as
      is, not clamped.

  Returns:
    Per-example divergences, the input shape without ``axis``, in the
    promoted dtype of the logits (16-bit logits are computed in float32);
    never negative without a mask or with a mask of whole examples (see
    ``where``).

  Raises:
    ValueError: different shapes, a bad ``axis`` or mask, a concrete
      ``temperature`` that is not finite and > 0, or a ``temperature`` array
      that is not 0-d.
    TypeError: non-floating logits, a non-boolean mask or a bool
      ``temperature``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> student = jnp.array([[0.0, 0.0], [2.0, 0.0]])
    >>> teacher = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    >>> jaxkl.kl_divergence_from_logits(student, teacher)
    Array([0.       , 0.4337809], dtype=float32)
    >>> jaxkl.kl_divergence_from_logits(student, teacher, temperature=2.0)
    Array([0.        , 0.12011445], dtype=float32)

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531, 2015.
  """
  result, out_dtype = _forward_kl_from_logits(
    logits, target_logits, temperature, axis, where
  )
  return result.astype(out_dtype)


def _jsd_from_log_probs(
  log_q: jax.Array,
  log_p: jax.Array,
  beta: float,
  axes: tuple[int, ...],
  mask: jax.Array | None,
) -> jax.Array:
  """beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q."""
  log_m = _log_mixture(log_p, log_q, beta)
  return beta * _kl_from_log_probs(log_m, log_p, axes, mask) + (
    1 - beta
  ) * _kl_from_log_probs(log_m, log_q, axes, mask)


def class_sums(
  log_q: jax.Array,
  log_p: jax.Array,
  divergence: str,
  beta: float,
  axes: tuple[int, ...],
  mask: jax.Array | None,
) -> jax.Array:
  """The divergence's terms summed over ``axes`` (masked), from log-softmaxes.

  ``log_q`` is the student's, ``log_p`` the teacher's; on a slice of the
  classes (vocabulary-parallel) this is the slice's part of the sum.
  """
  if divergence == "forward":
    return _kl_from_log_probs(log_q, log_p, axes, mask)
  if divergence == "reverse":
    return _kl_from_log_probs(log_p, log_q, axes, mask)
  return _jsd_from_log_probs(log_q, log_p, beta, axes, mask)


def clamps(inputs: _Inputs, divergence: str) -> bool:
  """Whether the result is clamped at 0 (see ``_finish``).

  A true divergence is: without a mask or with a mask of whole examples;
  JSD also under a mask within examples, since its terms are non-negative
  class by class.
  """
  return inputs.whole_examples or divergence == "jsd"


def jensen_shannon_from_logits(
  logits: ArrayLike,
  target_logits: ArrayLike,
  *,
  beta: float = 0.5,
  temperature: ArrayLike = 1.0,
  axis: _per_example.Axis = -1,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Per-example generalized Jensen-Shannon divergence from logits.

  With teacher :math:`P = \mathrm{softmax}(\text{target\_logits}/T)`, student
  :math:`Q = \mathrm{softmax}(\text{logits}/T)` and
  :math:`M = \beta P + (1 - \beta) Q`:

  .. math::

     \mathrm{JSD}_\beta(P \,\|\, Q) = \beta\, D_{\mathrm{KL}}(P \,\|\, M)
       + (1 - \beta)\, D_{\mathrm{KL}}(Q \,\|\, M), \qquad 0 < \beta < 1,

  which is the symmetric Jensen-Shannon divergence at :math:`\beta = 1/2`
  (bounded by :math:`\log 2`). Following Liger-Kernel's convention, the
  endpoints are the KL divergences: :math:`\beta = 0` gives the forward
  :math:`D_{\mathrm{KL}}(P \,\|\, Q)` and :math:`\beta = 1` the reverse
  :math:`D_{\mathrm{KL}}(Q \,\|\, P)` (the formula above vanishes there).
  Classes that are ``-inf`` in both inputs change no value or derivative, as
  in :func:`jaxkl.kl_divergence_from_logits`.

  Args:
    logits: student logits, shape ``[..., C]``.
    target_logits: teacher logits, same shape.
    beta: weight :math:`\beta \in [0, 1]`, a Python float. Static.
    temperature: :math:`T > 0`: a Python number or a 0-d array (NumPy or
      JAX). A concrete value is checked to be finite and > 0, whatever its
      form; a traced one (e.g. a scheduled temperature under ``jax.jit``)
      cannot be checked, and a non-positive or infinite one then gives NaN
      or meaningless values. Per-example temperatures are not accepted:
      divide the logits instead (``logits / T[..., None]``).
    axis: class axis (or axes). Static.
    where: optional boolean mask; as in
      :func:`jaxkl.kl_divergence_from_logits` (dropped examples give exactly
      0 whatever their logits; under a mask within examples, the kept
      classes' partial sum).

  Returns:
    Per-example divergences, the input shape without ``axis``, in the
    promoted dtype of the logits (16-bit logits are computed in float32);
    never negative (its terms are non-negative class by class, so also
    under a mask within examples).

  Raises:
    ValueError: different shapes, a bad ``axis`` or mask, a concrete
      ``temperature`` that is not finite and > 0, or a ``temperature`` array
      that is not 0-d.
    TypeError: non-floating logits, a non-boolean mask or a bool
      ``temperature``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> student = jnp.array([[-jnp.inf, 0.0]])  # puts all mass on class 1
    >>> teacher = jnp.array([[0.0, -jnp.inf]])  # puts all mass on class 0
    >>> jaxkl.jensen_shannon_from_logits(student, teacher)  # log 2: disjoint
    Array([0.6931472], dtype=float32)

  References:
    Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf.
    Theory 37(1), 1991. Agarwal et al., "On-Policy Distillation of Language
    Models" (GKD), arXiv:2306.13649, 2024.
  """
  divergence, beta = check_divergence("jsd", beta)
  return divergence_from_logits(
    logits,
    target_logits,
    divergence=divergence,
    beta=beta,
    temperature=temperature,
    axis=axis,
    where=where,
  )


def divergence_from_logits(
  logits: ArrayLike,
  target_logits: ArrayLike,
  *,
  divergence: Divergence = "forward",
  beta: float = 0.5,
  temperature: ArrayLike = 1.0,
  axis: _per_example.Axis = -1,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Per-example forward KL, reverse KL or generalized JSD from logits.

  * ``'forward'``: :math:`D_{\mathrm{KL}}(P \,\|\, Q)`, teacher
    :math:`P` against student :math:`Q` (mean-seeking; the usual distillation
    loss);
  * ``'reverse'``: :math:`D_{\mathrm{KL}}(Q \,\|\, P)` (mode-seeking);
  * ``'jsd'``: :math:`\mathrm{JSD}_\beta(P \,\|\, Q)`, see
    :func:`jaxkl.jensen_shannon_from_logits`.

  Classes that are ``-inf`` in both inputs (padding) change no value or
  derivative, of any order, and get zero derivatives; the result is never
  negative, except for the KL divergences' partial sums under a mask within
  examples (see :func:`jaxkl.kl_divergence_from_logits`).

  Args:
    logits: student logits, shape ``[..., C]``.
    target_logits: teacher logits, same shape.
    divergence: ``'forward' | 'reverse' | 'jsd'``. Static.
    beta: JSD weight in ``[0, 1]`` (used by ``'jsd'`` only). Static.
    temperature: :math:`T > 0`, at which both distributions are taken: a
      Python number or a 0-d array (NumPy or JAX). A concrete value is
      checked to be finite and > 0, whatever its form; a traced one (e.g. a
      scheduled temperature under ``jax.jit``) cannot be checked, and a
      non-positive or infinite one then gives NaN or meaningless values.
      Per-example temperatures are not accepted: divide the logits instead
      (``logits / T[..., None]``).
    axis: class axis (or axes). Static.
    where: optional boolean mask; as in
      :func:`jaxkl.kl_divergence_from_logits` (dropped examples give exactly
      0 whatever their logits; under a mask within examples, the kept
      classes' partial sum, which for the KL divergences can be negative).

  Returns:
    Per-example divergences, the input shape without ``axis``, in the
    promoted dtype of the logits (16-bit logits are computed in float32);
    never negative without a mask or with a mask of whole examples (see
    ``where``).

  Raises:
    ValueError: different shapes, a bad ``axis`` or mask, a concrete
      ``temperature`` that is not finite and > 0, or a ``temperature`` array
      that is not 0-d.
    TypeError: non-floating logits, a non-boolean mask or a bool
      ``temperature``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> s, t = jnp.array([2.0, 0.0]), jnp.array([0.0, 0.0])
    >>> jaxkl.divergence_from_logits(s, t, divergence="reverse")
    Array(0.32781327, dtype=float32)
  """
  divergence, beta = check_divergence(divergence, beta)
  result, out_dtype = _divergence_from_logits(
    logits, target_logits, divergence, beta, temperature, axis, where
  )
  return result.astype(out_dtype)


def _divergence_from_logits(
  logits: ArrayLike,
  target_logits: ArrayLike,
  divergence: str,
  beta: float,
  temperature: ArrayLike,
  axis: _per_example.Axis,
  where: ArrayLike | None,
) -> tuple[jax.Array, np.dtype[Any]]:
  """``(per-example divergence in the compute dtype, result dtype)``.

  ``divergence`` and ``beta`` are already checked (``check_divergence``).
  """
  if divergence == "forward":
    return _forward_kl_from_logits(logits, target_logits, temperature, axis, where)
  inputs = _validate_logits(logits, target_logits, temperature, axis, where)
  keep = kept_examples(inputs)
  log_q, log_p = _log_softmaxes(inputs, keep)
  result = class_sums(log_q, log_p, divergence, beta, inputs.axes, inputs.mask)
  return _finish(result, keep, clamps(inputs, divergence)), inputs.out_dtype


def token_mask(
  shape: tuple[int, ...],
  where: ArrayLike | None,
  labels: ArrayLike | None,
  ignore_index: int,
) -> jax.Array | None:
  """Combines a boolean mask and ``labels != ignore_index`` into one mask.

  Raises:
    ValueError: a mask or labels whose shape is not the per-token shape.
    TypeError: non-integer labels or a non-boolean mask.
  """
  mask = None
  if where is not None:
    mask = jnp.asarray(where)
    _checks.check_mask_dtype(mask, "where")
    if mask.shape != shape:
      raise ValueError(
        f"`where` must have the per-token shape {shape}; got {mask.shape}."
      )
  if labels is not None:
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise TypeError(f"`labels` must be integers; got dtype {labels.dtype}.")
    if labels.shape != shape:
      raise ValueError(
        f"`labels` must have the per-token shape {shape}; got {labels.shape}."
      )
    keep = labels != ignore_index
    mask = keep if mask is None else mask & keep
  return mask
