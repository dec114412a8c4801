"""Distillation losses from logits: dense teachers and top-k teachers.

Both losses share the conventions of ``_conventions`` (temperatures, the
:math:`T^2` factor, the hard-label term, logit transforms) and the reductions
of ``_reduction``; the per-token divergences come from ``_logits`` (a dense
teacher) and ``_topk`` (a teacher given by its top-k log-probabilities).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _conventions
from jaxkl import _logits
from jaxkl import _per_example
from jaxkl import _reduction


def _class_axis(axis: object, ndim: int) -> tuple[int, ...]:
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise TypeError(f"`axis` must be an int; got {axis!r}.")
  return _per_example.normalize_axis(int(axis), ndim)


def _zero_rows(x: jax.Array, mask: jax.Array | None, axis: int) -> jax.Array:
  """The rows of excluded tokens replaced by 0 (they may hold NaN or -inf)."""
  return _logits.zero_dropped_examples(x, mask, (axis,))


def _hard_loss(
  student: jax.Array, args: _conventions.LossArguments, axis: int
) -> jax.Array | None:
  """Per-token cross-entropy at T = 1 when ``hard_loss_weight > 0``."""
  if not args.conventions.hard:
    return None
  assert args.labels is not None  # checked: hard_loss_weight needs labels
  labels = args.labels
  if args.mask is not None:
    labels = jnp.where(args.mask, labels, 0)
  return _conventions.cross_entropy(_zero_rows(student, args.mask, axis), labels, axis)


def distillation_loss(
  student_logits: ArrayLike,
  teacher_logits: ArrayLike,
  *,
  temperature: ArrayLike = 1.0,
  student_temperature: ArrayLike | None = None,
  teacher_temperature: ArrayLike | None = None,
  temperature_scaling: _conventions.TemperatureScaling = "square",
  divergence: _logits.Divergence = "forward",
  beta: float = 0.5,
  hard_loss_weight: float = 0.0,
  where: ArrayLike | None = None,
  labels: ArrayLike | None = None,
  ignore_index: int = -100,
  reduction: _reduction.LossReduction = "mean",
  segment_ids: ArrayLike | None = None,
  num_items_in_batch: ArrayLike | None = None,
  student_logit_scale: float | None = None,
  student_logit_softcap: float | None = None,
  teacher_logit_scale: float | None = None,
  teacher_logit_softcap: float | None = None,
  axis: int = -1,
) -> jax.Array:
  r"""Knowledge-distillation loss from logits, every convention explicit.

  Per token :math:`i`, with :math:`s, t` the student's and teacher's logits
  after the optional per-model transform
  :math:`x \mapsto c \tanh(\text{scale} \cdot x / c)`,
  :math:`Q = \mathrm{softmax}(s / T_s)`, :math:`P = \mathrm{softmax}(t / T_t)`
  and :math:`D` the forward KL :math:`D_{\mathrm{KL}}(P \,\|\, Q)`, the
  reverse KL :math:`D_{\mathrm{KL}}(Q \,\|\, P)` or the generalized JSD (see
  :func:`jaxkl.divergence_from_logits`):

  .. math::

     \ell_i = \alpha\, \mathrm{CE}\!\left(y_i, \mathrm{softmax}(s_i)\right)
       + (1 - \alpha)\, \kappa\, D\!\left(P^{(i)}, Q^{(i)}\right),
     \qquad \mathcal{L} = \operatorname{reduce}_i \ell_i,

  with :math:`\kappa = T_s^2` (``temperature_scaling='square'``, the
  default) or 1 (``'none'``), and :math:`\alpha` = ``hard_loss_weight``
  (default 0: the soft loss alone, :math:`T^2 D` as in Hinton et al.). The
  :math:`T^2` factor keeps gradient magnitudes comparable across
  temperatures: for the forward KL the gradient with respect to the student
  logits is :math:`T\,(Q_T - P_T)` times the reduction's weight. With the
  defaults (one ``temperature``, no transform, :math:`\alpha = 0`, PyTorch's
  reductions) this is the loss of earlier jaxkl versions, bit for bit.
  Frameworks differ in all of these choices; the table in the
  documentation's "Conventions" page gives the arguments that reproduce
  TRL, Liger-Kernel, MaxText, Tunix and EasyDeL.

  Tokens are selected by ``where`` (boolean, ``True`` keeps) and/or by
  ``labels != ignore_index`` (the PyTorch/Hugging Face convention for padded
  or prompt tokens); both terms skip excluded tokens, and ``'mean'``
  averages over the kept tokens only (0 when none is kept), or divides by
  ``num_items_in_batch`` when given (the global count under gradient
  accumulation or data parallelism). Excluded tokens may hold any logits,
  even NaN or all ``-inf``: they reach neither the loss nor its gradient.
  Classes that are ``-inf`` in both inputs (padded vocabulary) change no
  value or derivative, also through a soft-cap (``-inf`` stays ``-inf``).
  The teacher is not differentiated through unless you differentiate with
  respect to it; wrap it in ``jax.lax.stop_gradient`` if it is computed in
  the same function.

  **Cost.** With the defaults the soft loss reads each input a few times
  (see :func:`jaxkl.kl_divergence_from_logits`); separate temperatures or a
  logit transform add an elementwise pass per transformed input, and the
  hard term one more read of the student's logits (its log-normalizer at
  :math:`T = 1`) and a gather.

  Args:
    student_logits: shape ``[..., V]`` (e.g. ``[B, T, V]``).
    teacher_logits: same shape.
    temperature: :math:`T > 0` of both models unless overridden: a Python
      number or a 0-d array (NumPy or JAX). A concrete value is checked to
      be finite and > 0, whatever its form; a traced one (e.g. a scheduled
      temperature under ``jax.jit``) cannot be checked, and a non-positive or
      infinite one then gives NaN or meaningless values. Per-example
      temperatures are not accepted: divide the logits instead (``logits /
      T[..., None]``).
    student_temperature: :math:`T_s`, the student's temperature; defaults to
      ``temperature``. Checked as ``temperature``.
    teacher_temperature: :math:`T_t`, the teacher's temperature; defaults to
      ``temperature``. Checked as ``temperature``.
    temperature_scaling: ``'square'`` (multiply the soft loss by
      :math:`T_s^2`, the student's temperature squared) or ``'none'``.
      Static.
    divergence: ``'forward' | 'reverse' | 'jsd'``. Static.
    beta: JSD weight in ``[0, 1]``; ``jsd`` with 0 is ``forward``, with 1
      ``reverse`` (Liger-Kernel's and TRL's direction). Static.
    hard_loss_weight: :math:`\alpha \in [0, 1]`, the weight of the
      cross-entropy with ``labels`` (taken at temperature 1, from the
      transformed student logits); the soft loss gets :math:`1 - \alpha`.
      A Python float. Static.
    where: optional boolean mask of tokens, shape ``[...]`` (the logits'
      shape without the class axis).
    labels: optional integer labels of shape ``[...]``; tokens whose label is
      ``ignore_index`` are excluded. Needed when ``hard_loss_weight > 0``; a
      kept label outside ``[0, V)`` gives a cross-entropy of ``+inf``.
    ignore_index: the label value to exclude. Static.
    reduction: ``'mean'`` (over kept tokens, or divided by
      ``num_items_in_batch``), ``'sum'``, ``'batchmean'`` (sum over the
      leading axis' size), ``'sequence_mean'`` (mean over sequences of the
      per-sequence means; see :func:`jaxkl.reduce_loss`) or ``'none'``
      (per-token, excluded tokens 0).
    segment_ids: optional integer sequence ids of shape ``[...]`` for packed
      sequences, used by ``'sequence_mean'`` only.
    num_items_in_batch: optional count replacing the denominator of
      ``'mean'`` (a Python number or a 0-d array, may be traced).
    student_logit_scale: optional factor > 0 applied to the student's
      logits first (a Python float). Static.
    student_logit_softcap: optional soft-cap :math:`c > 0` of the student's
      logits (Gemma-2: :math:`c \tanh(x / c)`), after the scale. Static.
    teacher_logit_scale: as ``student_logit_scale``, for the teacher.
    teacher_logit_softcap: as ``student_logit_softcap``, for the teacher.
    axis: the class axis. Static.

  Returns:
    A scalar, or per-token losses of shape ``[...]`` for ``'none'``, in the
    promoted dtype of the logits (computed in float32 for 16-bit logits, as
    :func:`jaxkl.fused_linear_distillation_loss`, which returns the same
    dtype).

  Raises:
    ValueError: different shapes, a bad ``axis``, ``reduction``,
      ``divergence``, ``beta``, ``temperature_scaling`` or
      ``hard_loss_weight``, ``hard_loss_weight > 0`` without ``labels``, a
      mask, labels or segment ids not of the per-token shape, segment ids
      with a reduction other than ``'sequence_mean'``,
      ``num_items_in_batch`` with a reduction other than ``'mean'`` or not
      > 0, a scale or soft-cap that is not finite and > 0, a concrete
      temperature that is not finite and > 0, or a temperature array that
      is not 0-d.
    TypeError: non-floating logits, a non-boolean mask, non-integer labels
      or segment ids, or a bool temperature.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> student = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> teacher = jnp.zeros((2, 3))
    >>> labels = jnp.array([1, -100])  # second token ignored
    >>> loss = jaxkl.distillation_loss(student, teacher, temperature=2.0,
    ...                                labels=labels)
    >>> loss
    Array(0.47799593, dtype=float32)
    >>> grads = jax.grad(lambda s: jaxkl.distillation_loss(
    ...     s, teacher, temperature=2.0, labels=labels))(student)
    >>> grads[1]  # ignored token: no gradient
    Array([0., 0., 0.], dtype=float32)

    Half cross-entropy with the labels, half soft loss without the
    :math:`T^2` factor:

    >>> jaxkl.distillation_loss(student, teacher, temperature=2.0,
    ...                         labels=labels, hard_loss_weight=0.5,
    ...                         temperature_scaling="none")
    Array(1.1795219, dtype=float32)

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531, 2015. Gemma Team, "Gemma 2: Improving Open Language
    Models at a Practical Size", arXiv:2408.00118, 2024 (logit soft-capping).
  """
  student = _checks.as_float_array(student_logits, "student_logits")
  teacher = _checks.as_float_array(teacher_logits, "teacher_logits")
  _checks.check_same_shape(student, teacher, "student_logits", "teacher_logits")
  axes = _class_axis(axis, student.ndim)
  per_token_shape = tuple(d for i, d in enumerate(student.shape) if i not in axes)
  args = _conventions.check_loss_arguments(
    per_token_shape,
    where=where,
    labels=labels,
    ignore_index=ignore_index,
    reduction=reduction,
    segment_ids=segment_ids,
    num_items_in_batch=num_items_in_batch,
    divergence=divergence,
    beta=beta,
    temperature=temperature,
    student_temperature=student_temperature,
    teacher_temperature=teacher_temperature,
    temperature_scaling=temperature_scaling,
    hard_loss_weight=hard_loss_weight,
    student_logit_scale=student_logit_scale,
    student_logit_softcap=student_logit_softcap,
    teacher_logit_scale=teacher_logit_scale,
    teacher_logit_softcap=teacher_logit_softcap,
  )
  out_dtype, compute_dtype = _checks.result_dtype(student, teacher)
  conventions = args.conventions
  (class_axis,) = axes
  # [..., 1]: a per-token mask, never read as a class mask (even when the
  # number of tokens equals the number of classes).
  token_mask = None if args.mask is None else jnp.expand_dims(args.mask, axes)
  transformed = conventions.transforms_student or conventions.transforms_teacher
  if transformed or not args.default_temperatures or conventions.hard:
    # Excluded rows to 0 before any elementwise transform, so that their
    # garbage (NaN, all -inf) reaches no derivative (e.g. of a temperature).
    student = _zero_rows(student.astype(compute_dtype), args.mask, class_axis)
    teacher = _zero_rows(teacher.astype(compute_dtype), args.mask, class_axis)
    student = _conventions.transform_logits(
      student, conventions.student_logit_scale, conventions.student_logit_softcap
    )
    teacher = _conventions.transform_logits(
      teacher, conventions.teacher_logit_scale, conventions.teacher_logit_softcap
    )
  soft = None
  if conventions.soft:
    soft, _ = _soft_per_token(student, teacher, args, axis, token_mask)
  hard = _hard_loss(student, args, class_axis)
  return _conventions.finish_loss(soft, hard, args, out_dtype)


def _soft_per_token(
  student: jax.Array,
  teacher: jax.Array,
  args: _conventions.LossArguments,
  axis: int,
  token_mask: jax.Array | None,
) -> tuple[jax.Array, np.dtype[Any]]:
  """Per-token divergence between the tempered softmaxes (compute dtype)."""
  temperatures = args.temperatures
  if temperatures.shared:
    return _logits._divergence_from_logits(
      student,
      teacher,
      args.divergence,
      args.beta,
      temperatures.student,
      axis,
      token_mask,
    )
  dtype = _checks.result_dtype(student, teacher)[1]

  def tempered(x: jax.Array, t: ArrayLike) -> jax.Array:
    return _logits._scaled(x.astype(dtype), 1 / jnp.asarray(t, dtype))

  return _logits._divergence_from_logits(
    tempered(student, temperatures.student),
    tempered(teacher, temperatures.teacher),
    args.divergence,
    args.beta,
    1.0,
    axis,
    token_mask,
  )
