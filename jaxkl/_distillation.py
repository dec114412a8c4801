"""Distillation losses from logits: dense teachers and top-k teachers.

Both losses share the conventions of ``_conventions`` (temperatures, the
:math:`T^2` factor, the hard-label term, logit transforms) and the reductions
of ``_reduction``; the per-token divergences come from ``_logits`` (a dense
teacher) and ``_topk`` (a teacher given by its top-k log-probabilities).
"""

from __future__ import annotations

from typing import Any
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _conventions
from jaxkl import _logits
from jaxkl import _per_example
from jaxkl import _reduction
from jaxkl import _topk


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
    # Shifted before the division: huge logits over a small temperature
    # stay finite (the softmax does not change).
    shifted = _logits.shift_by_max(x.astype(dtype), (axis % x.ndim,))
    return _logits._scaled(shifted, 1 / jnp.asarray(t, dtype))

  return _logits._divergence_from_logits(
    tempered(student, temperatures.student),
    tempered(teacher, temperatures.teacher),
    args.divergence,
    args.beta,
    1.0,
    axis,
    token_mask,
  )


def _topk_teacher(
  teacher_indices: ArrayLike,
  teacher_log_probs: ArrayLike | None,
  teacher_logits: ArrayLike | None,
  teacher_log_normalizer: ArrayLike | None,
  args: _conventions.LossArguments,
  per_token_shape: tuple[int, ...],
) -> jax.Array:
  """The teacher's log-probabilities at its slots, ``[..., k]``.

  Either given (``teacher_log_probs``, used as they are: the teacher's
  temperature must be 1 and no teacher transform applies), or computed as
  ``transform(teacher_logits) / T_t - teacher_log_normalizer``.
  """
  conventions = args.conventions
  by_logits = teacher_logits is not None or teacher_log_normalizer is not None
  if teacher_log_probs is not None and teacher_logits is None and by_logits:
    raise ValueError(
      "`teacher_log_normalizer` goes with `teacher_logits` (the teacher "
      "given by logits), not with `teacher_log_probs`; drop it, or pass "
      "`teacher_logits` instead of `teacher_log_probs`."
    )
  if (teacher_log_probs is None) == (not by_logits):
    raise ValueError(
      "Give the teacher either as `teacher_log_probs` or as `teacher_logits` "
      "together with `teacher_log_normalizer`; got "
      + (
        "both."
        if teacher_log_probs is not None
        else "neither (`teacher_log_probs` is None)."
      )
    )
  if teacher_log_probs is not None:
    if not _conventions.is_one(args.temperatures.teacher):
      raise ValueError(
        "`teacher_log_probs` are used as given (at the temperature the "
        "teacher computed them), and log-probabilities cannot be re-tempered "
        "without the teacher's log-normalizer over the whole vocabulary: the "
        f"teacher's temperature must be 1; got {args.temperatures.teacher!r} "
        "(from `temperature` or `teacher_temperature`). Set the student's "
        "temperature with `student_temperature=`, or pass `teacher_logits` "
        "and `teacher_log_normalizer` (the log-sum-exp of all the teacher's "
        "logits divided by its temperature)."
      )
    if conventions.transforms_teacher:
      raise ValueError(
        "`teacher_logit_scale` and `teacher_logit_softcap` apply to logits, "
        "not to `teacher_log_probs`; pass `teacher_logits` and "
        "`teacher_log_normalizer` instead (or drop them)."
      )
    return _checks.as_float_array(teacher_log_probs, "teacher_log_probs")
  if teacher_logits is None or teacher_log_normalizer is None:
    missing = "teacher_logits" if teacher_logits is None else "teacher_log_normalizer"
    raise ValueError(
      f"`teacher_logits` and `teacher_log_normalizer` go together; `{missing}` is None."
    )
  logits = _checks.as_float_array(teacher_logits, "teacher_logits")
  log_z = _checks.as_float_array(teacher_log_normalizer, "teacher_log_normalizer")
  if log_z.shape != per_token_shape:
    raise ValueError(
      f"`teacher_log_normalizer` must have the per-token shape {per_token_shape};"
      f" got {tuple(log_z.shape)}."
    )
  if logits.shape != jnp.shape(teacher_indices):
    raise ValueError(
      f"`teacher_logits` must have the shape of `teacher_indices`, "
      f"{tuple(jnp.shape(teacher_indices))}; got {tuple(logits.shape)}."
    )
  dtype = _checks.result_dtype(logits, log_z)[1]
  logits = logits.astype(dtype)
  if args.mask is not None:  # excluded rows' garbage reaches no derivative
    logits = jnp.where(args.mask[..., None], logits, 0)
    log_z = jnp.where(args.mask, log_z.astype(dtype), 0)
  logits = _conventions.transform_logits(
    logits, conventions.teacher_logit_scale, conventions.teacher_logit_softcap
  )
  inverse_t = 1 / jnp.asarray(args.temperatures.teacher, dtype)
  return _logits._scaled(logits, inverse_t) - log_z.astype(dtype)[..., None]


def topk_distillation_loss(
  student_logits: ArrayLike,
  teacher_indices: ArrayLike,
  teacher_log_probs: ArrayLike | None = None,
  *,
  teacher_logits: ArrayLike | None = None,
  teacher_log_normalizer: ArrayLike | None = None,
  divergence: _logits.Divergence = "forward",
  beta: float = 0.5,
  tail: Literal["bucket", "renormalize"] = "bucket",
  temperature: ArrayLike = 1.0,
  student_temperature: ArrayLike | None = None,
  teacher_temperature: ArrayLike | None = None,
  temperature_scaling: _conventions.TemperatureScaling = "square",
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
) -> jax.Array:
  r"""Distillation loss from a teacher's top-k log-probabilities.

  The loss of :func:`jaxkl.distillation_loss` with the soft term replaced by
  the top-k divergence of :func:`jaxkl.topk_divergence_from_logits`: per
  token :math:`i`,

  .. math::

     \ell_i = \alpha\, \mathrm{CE}\!\left(y_i, \mathrm{softmax}(s_i)\right)
       + (1 - \alpha)\, \kappa\, D_k\!\left(P^{(i)}, Q^{(i)}\right),
     \qquad \mathcal{L} = \operatorname{reduce}_i \ell_i,

  where :math:`Q = \mathrm{softmax}(s / T_s)` is the student's full
  distribution, :math:`P` the teacher known at its :math:`k` listed classes,
  and :math:`D_k` the divergence of both coarse-grained onto the listed
  classes plus the rest (``tail='bucket'``: a lower bound of the full
  divergence, exact when the listed classes carry all the teacher's mass)
  or renormalized over the listed classes (``tail='renormalize'``, MaxText's
  and Tunix's convention). :math:`\kappa = T_s^2` (``'square'``) or 1.

  **The teacher.** Served teachers (vLLM, SGLang) return log-probabilities:
  pass them as ``teacher_log_probs`` (``[..., k]``, ``-inf`` marks an unused
  slot). They are used as given, at the temperature the teacher computed
  them, and cannot be re-tempered: :math:`\log p_i / T` is not a
  log-probability, and renormalizing over the k classes would change the
  rest mass. So with log-probabilities the teacher's temperature must be 1
  (the student's may be anything: ``student_temperature=T``), and a
  ``ValueError`` says so otherwise. If you have the teacher's logits at the
  k classes and its log-normalizer :math:`\log \sum_v e^{t_v / T_t}` over
  the *whole* vocabulary (computed when the teacher ran, at the temperature
  you want), pass ``teacher_logits`` and ``teacher_log_normalizer``
  instead: then :math:`\log p_i = t_i / T_t - \log Z_t`, and the teacher's
  temperature and logit transforms apply to the given logits (the
  normalizer must have been computed with the same ones).

  The other arguments are those of :func:`jaxkl.distillation_loss`: token
  masks (``where``, ``labels``/``ignore_index``; excluded tokens' inputs may
  be anything), the hard term, reductions, per-model logit transforms.
  Derivatives with respect to the student's logits are closed-form (see
  :func:`jaxkl.topk_divergence_from_logits`); no ``[..., V]`` buffer is
  created beyond the logits' own gradient.

  Args:
    student_logits: shape ``[..., V]``; the class axis is the last.
    teacher_indices: integer class indices, shape ``[..., k]``, ``k <= V``;
      the listed (non ``-inf``) ones distinct and in ``[0, V)``.
    teacher_log_probs: the teacher's log-probabilities at those classes,
      shape ``[..., k]``, or None when ``teacher_logits`` is given.
    teacher_logits: the teacher's logits at the k classes, ``[..., k]``
      (``-inf`` marks an unused slot); with ``teacher_log_normalizer``.
    teacher_log_normalizer: :math:`\log \sum_v e^{t_v / T_t}` over the
      whole vocabulary, shape ``[...]``.
    divergence: ``'forward' | 'reverse' | 'jsd'``. Static.
    beta: JSD weight in ``[0, 1]`` (as in :func:`jaxkl.distillation_loss`).
      Static.
    tail: ``'bucket'`` or ``'renormalize'``. Static.
    temperature: temperature of both models unless overridden (see above
      for log-probabilities).
    student_temperature: :math:`T_s`; defaults to ``temperature``.
    teacher_temperature: :math:`T_t`; defaults to ``temperature``; must be
      1 with ``teacher_log_probs``.
    temperature_scaling: ``'square'`` (:math:`T_s^2`) or ``'none'``. Static.
    hard_loss_weight: :math:`\alpha \in [0, 1]`, weight of the cross-entropy
      with ``labels`` at temperature 1. Static.
    where: optional boolean mask of tokens, shape ``[...]``.
    labels: optional integer labels, shape ``[...]``; ``ignore_index``
      excludes a token. Needed when ``hard_loss_weight > 0``.
    ignore_index: the label value to exclude. Static.
    reduction: ``'mean' | 'sum' | 'batchmean' | 'sequence_mean' | 'none'``
      (see :func:`jaxkl.reduce_loss`).
    segment_ids: optional packed-sequence ids, shape ``[...]``, for
      ``'sequence_mean'``.
    num_items_in_batch: optional count replacing the denominator of
      ``'mean'``.
    student_logit_scale: optional factor > 0 of the student's logits. Static.
    student_logit_softcap: optional tanh soft-cap of the student's logits.
      Static.
    teacher_logit_scale: as ``student_logit_scale``, for ``teacher_logits``
      only.
    teacher_logit_softcap: as ``student_logit_softcap``, for
      ``teacher_logits`` only.

  Returns:
    A scalar, or per-token losses of shape ``[...]`` for ``'none'``, in the
    promoted dtype of the student's logits (computed in float32 for 16-bit
    inputs).

  Raises:
    ValueError: shapes that do not fit (``[..., k]`` slots against
      ``[..., V]`` logits, ``k > V``), both or neither of the two teacher
      forms, a teacher temperature other than 1 or a teacher transform with
      ``teacher_log_probs``, and everything
      :func:`jaxkl.distillation_loss` and
      :func:`jaxkl.topk_divergence_from_logits` reject.
    TypeError: non-floating logits or log-probabilities, non-integer
      indices, labels or segment ids, a non-boolean mask.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> student = jnp.log(jnp.array([[0.5, 0.3, 0.1, 0.1]]))
    >>> indices = jnp.array([[0, 1]])  # the teacher's top-2 ...
    >>> log_probs = jnp.log(jnp.array([[0.5, 0.3]]))  # ... and their mass
    >>> jaxkl.topk_distillation_loss(student, indices, log_probs)  # agree
    Array(0., dtype=float32)
    >>> jaxkl.topk_distillation_loss(student, indices, log_probs,
    ...                              tail="renormalize")
    Array(0., dtype=float32)

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531, 2015. Cover & Thomas, "Elements of Information
    Theory", 2nd ed., 2006, Sec. 2.8 (data processing).
  """
  student = _checks.as_float_array(student_logits, "student_logits")
  if student.ndim == 0:
    raise ValueError("`student_logits` must have a class axis; got a 0-d array.")
  per_token_shape = tuple(student.shape[:-1])
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
  tail = _topk.check_tail(tail)
  log_p = _topk_teacher(
    teacher_indices,
    teacher_log_probs,
    teacher_logits,
    teacher_log_normalizer,
    args,
    per_token_shape,
  )
  out_dtype, compute_dtype = _checks.result_dtype(student)
  conventions = args.conventions
  student = student.astype(compute_dtype)  # 16-bit: no rounding of the values
  if conventions.transforms_student or conventions.hard:
    student = _zero_rows(student, args.mask, student.ndim - 1)
    student = _conventions.transform_logits(
      student, conventions.student_logit_scale, conventions.student_logit_softcap
    )
  soft = None
  if conventions.soft:
    soft = _topk.topk_divergence_from_logits(
      student,
      teacher_indices,
      log_p,
      divergence=args.divergence,
      beta=args.beta,
      tail=tail,
      temperature=args.temperatures.student,
      where=args.mask,
    ).astype(compute_dtype)
  hard = _hard_loss(student, args, student.ndim - 1)
  return _conventions.finish_loss(soft, hard, args, out_dtype)
