"""The choices on which distillation frameworks disagree, made explicit.

Every distillation loss of jaxkl (dense, fused, top-k) takes the same
keyword arguments for them; this module validates them and holds the shared
pieces:

* temperatures: one ``temperature`` for both models (default), or separate
  ``student_temperature`` / ``teacher_temperature``;
* ``temperature_scaling``: the soft loss times :math:`T_s^2` (Hinton et al.;
  MaxText, Tunix, EasyDeL) or not (TRL, Liger-Kernel);
* ``hard_loss_weight`` :math:`\\alpha`: :math:`\\alpha \\cdot \\mathrm{CE}
  + (1 - \\alpha) \\cdot` soft loss, the cross-entropy with the labels at
  temperature 1;
* per-model logit transforms: a ``logit_scale`` and Gemma-2's ``tanh``
  soft-cap, :math:`c \\tanh(\\text{scale} \\cdot x / c)`.

The reductions (``'sequence_mean'``, ``segment_ids``,
``num_items_in_batch``) live in ``_reduction``.
"""

from __future__ import annotations

import math
from typing import Literal
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _logits
from jaxkl import _reduction

TemperatureScaling = Literal["square", "none"]
TEMPERATURE_SCALINGS: tuple[str, ...] = ("square", "none")


class Conventions(NamedTuple):
  """The validated static conventions of a distillation loss (hashable)."""

  temperature_scaling: str = "square"
  hard_loss_weight: float = 0.0
  student_logit_scale: float | None = None
  student_logit_softcap: float | None = None
  teacher_logit_scale: float | None = None
  teacher_logit_softcap: float | None = None

  @property
  def transforms_student(self) -> bool:
    return (self.student_logit_scale, self.student_logit_softcap) != (None, None)

  @property
  def transforms_teacher(self) -> bool:
    return (self.teacher_logit_scale, self.teacher_logit_softcap) != (None, None)

  @property
  def soft(self) -> bool:
    """Whether the soft (divergence) term is computed: weight ``1 - alpha > 0``."""
    return self.hard_loss_weight < 1.0

  @property
  def hard(self) -> bool:
    """Whether the hard (cross-entropy) term is computed: ``alpha > 0``."""
    return self.hard_loss_weight > 0.0


def _positive_float(value: object, name: str) -> float | None:
  """``value`` as a float if it is a finite number > 0; None stays None."""
  if value is None:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(
    value, (int, float, np.integer, np.floating)
  ):
    raise TypeError(f"`{name}` must be a Python float > 0 or None; got {value!r}.")
  result = float(value)
  if not (result > 0 and math.isfinite(result)):
    raise ValueError(f"`{name}` must be finite and > 0; got {value!r}.")
  return result


def check_conventions(
  *,
  temperature_scaling: object = "square",
  hard_loss_weight: object = 0.0,
  labels: object = None,
  student_logit_scale: object = None,
  student_logit_softcap: object = None,
  teacher_logit_scale: object = None,
  teacher_logit_softcap: object = None,
) -> Conventions:
  """Validates the static conventions before tracing.

  Raises:
    ValueError: an unknown ``temperature_scaling``, a ``hard_loss_weight``
      outside ``[0, 1]`` or > 0 without ``labels``, a scale or soft-cap that
      is not finite and > 0.
    TypeError: a ``hard_loss_weight``, scale or soft-cap that is not a
      Python number.
  """
  if not (
    isinstance(temperature_scaling, str) and temperature_scaling in TEMPERATURE_SCALINGS
  ):
    raise ValueError(
      f"`temperature_scaling` must be one of "
      f"{', '.join(map(repr, TEMPERATURE_SCALINGS))}; got {temperature_scaling!r}."
    )
  if isinstance(hard_loss_weight, (bool, np.bool_)) or not isinstance(
    hard_loss_weight, (int, float, np.integer, np.floating)
  ):
    raise TypeError(
      f"`hard_loss_weight` must be a Python float in [0, 1]; got {hard_loss_weight!r}."
    )
  alpha = float(hard_loss_weight)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"`hard_loss_weight` must be in [0, 1]; got {hard_loss_weight!r}.")
  if alpha > 0 and labels is None:
    raise ValueError(
      f"`hard_loss_weight={hard_loss_weight!r}` mixes in the cross-entropy with "
      f"the labels, but `labels` is None: pass `labels` (the next-token ids)."
    )
  return Conventions(
    temperature_scaling,
    alpha,
    _positive_float(student_logit_scale, "student_logit_scale"),
    _positive_float(student_logit_softcap, "student_logit_softcap"),
    _positive_float(teacher_logit_scale, "teacher_logit_scale"),
    _positive_float(teacher_logit_softcap, "teacher_logit_softcap"),
  )


class Temperatures(NamedTuple):
  """The student's and the teacher's temperatures, checked."""

  student: ArrayLike
  teacher: ArrayLike

  @property
  def shared(self) -> bool:
    """Whether both are the same temperature (one object, or equal numbers)."""
    if self.student is self.teacher:
      return True
    numbers = (int, float, np.integer, np.floating)
    return (
      isinstance(self.student, numbers)
      and isinstance(self.teacher, numbers)
      and float(self.student) == float(self.teacher)
    )


def resolve_temperatures(
  temperature: ArrayLike,
  student_temperature: ArrayLike | None,
  teacher_temperature: ArrayLike | None,
) -> Temperatures:
  """Each model's temperature: its own if given, else ``temperature``.

  Raises:
    ValueError, TypeError: as ``_logits.check_temperature``, naming the
      argument.
  """
  _logits.check_temperature(temperature)
  result = []
  for value, name in (
    (student_temperature, "student_temperature"),
    (teacher_temperature, "teacher_temperature"),
  ):
    if value is None:
      result.append(temperature)
      continue
    try:
      result.append(_logits.check_temperature(value))
    except (TypeError, ValueError) as err:
      raise type(err)(str(err).replace("`temperature`", f"`{name}`")) from None
  return Temperatures(*result)


def is_one(temperature: ArrayLike) -> bool:
  """Whether ``temperature`` is concretely 1 (a number or a concrete 0-d array)."""
  if isinstance(temperature, jax.core.Tracer):
    return False
  return bool(np.asarray(temperature) == 1)


def transform_logits(
  x: jax.Array, scale: float | None, softcap: float | None
) -> jax.Array:
  """``softcap * tanh(scale * x / softcap)``; ``-inf`` (a masked class) stays.

  Without a soft-cap, ``scale * x``; without either, ``x`` itself. The
  soft-cap is written with the double-``where`` pattern, so that a ``-inf``
  logit keeps a zero derivative of every order (``tanh`` would map it to
  ``-softcap``, a class with mass).
  """
  if scale is not None:
    x = x * jnp.asarray(scale, x.dtype)
  if softcap is None:
    return x
  masked = x == -jnp.inf
  cap = jnp.asarray(softcap, x.dtype)
  capped = cap * jnp.tanh(jnp.where(masked, 0, x) / cap)
  return jnp.where(masked, -jnp.inf, capped)


def soft_scale(temperatures: Temperatures, scaling: str, dtype: np.dtype) -> jax.Array:
  """The factor of the soft loss: :math:`T_s^2` for ``'square'``, else 1."""
  if scaling == "none":
    return jnp.ones((), dtype)
  return jnp.square(jnp.asarray(temperatures.student, dtype))


def cross_entropy(logits: jax.Array, labels: jax.Array, axis: int) -> jax.Array:
  """Per-token :math:`\\log \\sum_v e^{x_v} - x_{y}` at temperature 1.

  ``labels`` has the logits' shape without ``axis``; a label outside
  ``[0, V)`` (negative ones included: they are not wrapped) reads a
  ``-inf`` logit, so its cross-entropy is ``+inf`` (a visible error, not a
  silent wrap-around). The caller replaces the rows of
  excluded tokens (their labels and logits may be anything) beforehand.
  """
  log_z = jax.nn.logsumexp(logits, axis=axis)
  labels = labels.astype(jnp.int32)
  inside = (labels >= 0) & (labels < logits.shape[axis])  # no wrap-around
  index = jnp.expand_dims(jnp.where(inside, labels, 0), axis)
  picked = jnp.squeeze(jnp.take_along_axis(logits, index, axis=axis), axis)
  return log_z - jnp.where(inside, picked, -jnp.inf)


def mix(
  soft: jax.Array | None, hard: jax.Array | None, conventions: Conventions
) -> jax.Array:
  """``alpha * hard + (1 - alpha) * soft``, skipping a term of weight 0."""
  alpha = conventions.hard_loss_weight
  if hard is None:
    assert soft is not None
    return soft
  if soft is None:
    return hard if alpha == 1.0 else alpha * hard
  return alpha * hard + (1 - alpha) * soft


class LossArguments(NamedTuple):
  """The checked arguments shared by every distillation loss."""

  mask: jax.Array | None  # per-token: `where` and `labels != ignore_index`
  labels: jax.Array | None
  reduction: str
  segment_ids: jax.Array | None
  num_items_in_batch: ArrayLike | None
  divergence: _logits.Divergence
  beta: float
  conventions: Conventions
  temperatures: Temperatures

  @property
  def default_temperatures(self) -> bool:
    """One temperature for both models (today's single-temperature path)."""
    return self.temperatures.shared


def check_loss_arguments(
  per_token_shape: tuple[int, ...],
  *,
  where: ArrayLike | None,
  labels: ArrayLike | None,
  ignore_index: int,
  reduction: object,
  segment_ids: ArrayLike | None,
  num_items_in_batch: ArrayLike | None,
  divergence: object,
  beta: object,
  temperature: ArrayLike,
  student_temperature: ArrayLike | None,
  teacher_temperature: ArrayLike | None,
  temperature_scaling: object,
  hard_loss_weight: object,
  student_logit_scale: object,
  student_logit_softcap: object,
  teacher_logit_scale: object,
  teacher_logit_softcap: object,
) -> LossArguments:
  """Validates everything but the logits, in Python, before tracing.

  Raises:
    ValueError, TypeError: see the losses' docstrings; every message names
      the argument.
  """
  if not isinstance(ignore_index, (int, np.integer)) or isinstance(
    ignore_index, (bool, np.bool_)
  ):
    raise TypeError(f"`ignore_index` must be an int; got {ignore_index!r}.")
  mask = _logits.token_mask(per_token_shape, where, labels, ignore_index)
  reduction = _reduction.validate_loss_reduction(reduction)
  ids = _reduction.check_segment_ids(segment_ids, per_token_shape, reduction)
  count = _reduction.check_num_items(num_items_in_batch, reduction)
  divergence, beta = _logits.check_divergence(divergence, beta)
  conventions = check_conventions(
    temperature_scaling=temperature_scaling,
    hard_loss_weight=hard_loss_weight,
    labels=labels,
    student_logit_scale=student_logit_scale,
    student_logit_softcap=student_logit_softcap,
    teacher_logit_scale=teacher_logit_scale,
    teacher_logit_softcap=teacher_logit_softcap,
  )
  temperatures = resolve_temperatures(
    temperature, student_temperature, teacher_temperature
  )
  return LossArguments(
    mask,
    None if labels is None else jnp.asarray(labels),
    reduction,
    ids,
    count,  # type: ignore[arg-type]  # checked: a number or a 0-d array
    divergence,
    beta,
    conventions,
    temperatures,
  )


def finish_loss(
  soft: jax.Array | None,
  hard: jax.Array | None,
  args: LossArguments,
  out_dtype: np.dtype,
) -> jax.Array:
  """Scales the per-token soft loss, mixes in the hard loss and reduces.

  ``soft`` is the per-token divergence (None when ``alpha = 1``), ``hard``
  the per-token cross-entropy (None when ``alpha = 0``), both in the
  compute dtype.
  """
  like = soft if soft is not None else hard
  assert like is not None
  if soft is not None:
    soft = soft * soft_scale(
      args.temperatures, args.conventions.temperature_scaling, like.dtype
    )
  per_token = mix(soft, hard, args.conventions)
  loss = _reduction.reduce_loss(
    per_token,
    args.reduction,
    where=args.mask,
    segment_ids=args.segment_ids,
    num_items_in_batch=args.num_items_in_batch,
  )
  return loss.astype(out_dtype)
