"""Reductions shared by every loss in jaxkl, and PyTorch's legacy arguments.

The names follow PyTorch: ``'none'`` keeps the elementwise (or per-example)
values, ``'sum'`` adds them up, ``'mean'`` divides the sum by the number of
values and ``'batchmean'`` divides it by the size of the leading axis.
"""

from __future__ import annotations

import warnings
from typing import Any
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _estimators
from jaxkl import _per_example

Reduction = Literal["none", "batchmean", "sum", "mean"]

REDUCTIONS: tuple[str, ...] = ("none", "batchmean", "sum", "mean")
# The losses' reductions: PyTorch's, and the mean over sequences.
LossReduction = Literal["none", "batchmean", "sum", "mean", "sequence_mean"]
LOSS_REDUCTIONS: tuple[str, ...] = (*REDUCTIONS, "sequence_mean")

# PyTorch's messages, reproduced character for character (including the
# missing spaces between sentences of the 'mean' warning) so that code which
# filters warnings by message keeps working after a port.
MEAN_WARNING = (
  "reduction: 'mean' divides the total loss by both the batch size and the "
  "support size.'batchmean' divides only by the batch size, and aligns with "
  "the KL div math definition.'mean' will be changed to behave the same as "
  "'batchmean' in the next major release."
)
ELEMENTWISE_MEAN_WARNING = (
  "reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead."
)
LEGACY_WARNING = (
  "size_average and reduce args will be deprecated, please use reduction='{}' instead."
)


def invalid_reduction_error(reduction: object) -> ValueError:
  return ValueError(
    f"`reduction` must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}."
  )


def validate_reduction(reduction: object) -> str:
  """Returns ``reduction`` if it names a reduction, else raises ValueError."""
  if isinstance(reduction, str) and reduction in REDUCTIONS:
    return reduction
  raise invalid_reduction_error(reduction)


def validate_loss_reduction(reduction: object) -> str:
  """``validate_reduction`` for the losses: also ``'sequence_mean'``."""
  if isinstance(reduction, str) and reduction in LOSS_REDUCTIONS:
    return reduction
  raise ValueError(
    f"`reduction` must be one of {', '.join(map(repr, LOSS_REDUCTIONS))}; "
    f"got {reduction!r}."
  )


def check_count(value: object, name: str = "num_items_in_batch") -> object:
  """Validates a count that replaces the denominator of ``'mean'``.

  A Python number or a 0-d array of a real dtype; a concrete value must be
  finite and > 0. A traced one (the global count of a data-parallel step,
  e.g. a ``psum`` inside ``jax.jit``) cannot be checked.

  Raises:
    TypeError: a bool, a string or a non-real array.
    ValueError: an array that is not 0-d, or a concrete value <= 0 or not finite.
  """
  if isinstance(value, (bool, np.bool_, str)):
    raise TypeError(f"`{name}` must be a number; got {value!r}.")
  shape = tuple(np.shape(value))  # type: ignore[call-overload]  # any array-like
  if shape:
    raise ValueError(
      f"`{name}` must be a scalar (a Python number or a 0-d array); got an "
      f"array of shape {shape}."
    )
  if isinstance(value, jax.core.Tracer):
    return value
  array = np.asarray(value)
  if (
    not (
      jnp.issubdtype(array.dtype, jnp.integer)
      or jnp.issubdtype(array.dtype, jnp.floating)
    )
    or array.dtype == np.bool_
  ):
    raise TypeError(f"`{name}` must be a real number; got dtype {array.dtype}.")
  if not (float(array) > 0 and np.isfinite(float(array))):
    raise ValueError(f"`{name}` must be finite and > 0; got {value!r}.")
  return value


def _sequence_ids(segment_ids: jax.Array) -> tuple[jax.Array, int]:
  """Dense sequence numbers ``[0, rows * length)`` for ``[rows, length]`` ids.

  Tokens of one row with equal ids get the same number; rows never share one.
  The ids of a row are sorted (stably) and numbered by their distinct
  values, so they need not be contiguous, sorted or small.
  """
  rows, length = segment_ids.shape
  order = jnp.argsort(segment_ids, axis=1, stable=True)
  ranked = jnp.take_along_axis(segment_ids, order, axis=1)
  starts = jnp.concatenate(
    [
      jnp.zeros((rows, 1), jnp.int32),
      (ranked[:, 1:] != ranked[:, :-1]).astype(jnp.int32),
    ],
    axis=1,
  )
  groups_sorted = jnp.cumsum(starts, axis=1)
  inverse = jnp.argsort(order, axis=1)
  groups = jnp.take_along_axis(groups_sorted, inverse, axis=1)
  offsets = (jnp.arange(rows, dtype=jnp.int32) * length)[:, None]
  return (groups + offsets).reshape(-1), rows * length


def divide_or_zero(total: jax.Array, count: Any) -> jax.Array:
  """``total / count``, and 0 (with a zero gradient) where ``count`` is 0.

  A global count computed under ``jit`` (a ``psum`` of kept tokens) is 0
  when a whole batch is masked; the loss is then 0, not NaN.
  """
  return _estimators._safe_divide(total, jnp.asarray(count, total.dtype))


def sequence_totals(
  values: jax.Array, mask: jax.Array | None, ids: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """Each sequence's sum of (masked) ``values`` and its number of kept tokens.

  ``values`` are already zero where masked; the last axis is the sequence
  axis. Without ``ids`` a sequence is a row (an index of the leading axes);
  with them, the tokens of one row that share an id (``_sequence_ids``).
  """
  rows = values.reshape(-1, values.shape[-1])
  kept = (
    jnp.ones(rows.shape, rows.dtype)
    if mask is None
    else jnp.broadcast_to(mask, values.shape).reshape(rows.shape)
  )
  kept = kept.astype(rows.dtype)
  if ids is None:
    return jnp.sum(rows, axis=1), jnp.sum(kept, axis=1)
  sequence, num = _sequence_ids(ids.reshape(rows.shape))
  sums = jax.ops.segment_sum(rows.reshape(-1), sequence, num_segments=num)
  counts = jax.ops.segment_sum(kept.reshape(-1), sequence, num_segments=num)
  return sums, counts


def _sequence_mean(
  values: jax.Array, mask: jax.Array | None, segment_ids: jax.Array | None
) -> jax.Array:
  """Mean over sequences of each sequence's mean over its kept tokens."""
  if values.size == 0:  # no token, no sequence
    return jnp.zeros((), values.dtype)
  sums, counts = sequence_totals(values, mask, segment_ids)
  present = counts > 0
  means = jnp.where(present, sums / jnp.maximum(counts, 1), 0)
  return jnp.sum(means) / jnp.maximum(jnp.sum(present.astype(values.dtype)), 1)


def legacy_reduction(
  size_average: bool | None, reduce: bool | None, *, stacklevel: int
) -> str:
  """Maps PyTorch's deprecated ``size_average``/``reduce`` to a reduction.

  ``None`` counts as ``True``. ``reduce=False`` wins (``'none'``); otherwise
  ``size_average`` chooses between ``'mean'`` and ``'sum'``. Emits PyTorch's
  deprecation warning, as PyTorch does, every time it is called.
  """
  size_average = True if size_average is None else size_average
  reduce = True if reduce is None else reduce
  if size_average and reduce:
    result = "mean"
  elif reduce:
    result = "sum"
  else:
    result = "none"
  warnings.warn(LEGACY_WARNING.format(result), UserWarning, stacklevel=stacklevel + 1)
  return result


def torch_reduction(
  size_average: bool | None,
  reduce: bool | None,
  reduction: object,
  *,
  stacklevel: int,
) -> tuple[str, bool]:
  """Resolves PyTorch's ``kl_div`` arguments to ``(reduction, batchmean)``.

  Reproduces ``torch.nn.functional.kl_div`` exactly:

  * If either legacy argument is given, it decides the reduction and
    ``reduction`` is *not validated*; but ``reduction == 'batchmean'`` still
    divides the (legacy-reduced) result by ``input.shape[0]`` afterwards, so
    ``reduce=False, reduction='batchmean'`` divides every element by the batch
    size. The legacy deprecation warning is emitted.
  * Otherwise ``'mean'`` warns that it is not the true KL divergence,
    ``'elementwise_mean'`` is accepted as ``'mean'`` with a deprecation
    warning, and anything else outside ``REDUCTIONS`` raises ``ValueError``.

  Returns:
    The reduction to apply (``'none' | 'sum' | 'mean'``) and whether to divide
    the result by ``input.shape[0]`` afterwards (for a 0-d input that division
    is skipped by the caller).
  """
  divide_by_batch = isinstance(reduction, str) and reduction == "batchmean"
  if size_average is not None or reduce is not None:
    return legacy_reduction(
      size_average, reduce, stacklevel=stacklevel + 1
    ), divide_by_batch
  if isinstance(reduction, str) and reduction == "elementwise_mean":
    warnings.warn(ELEMENTWISE_MEAN_WARNING, UserWarning, stacklevel=stacklevel + 1)
    return "mean", False
  reduction = validate_reduction(reduction)
  if reduction == "mean":
    warnings.warn(MEAN_WARNING, UserWarning, stacklevel=stacklevel + 1)
  if reduction == "batchmean":
    return "sum", True
  return reduction, False


def check_segment_ids(
  segment_ids: ArrayLike | None, shape: tuple[int, ...], reduction: str
) -> jax.Array | None:
  """Validates ``segment_ids`` against the per-token ``shape``.

  Raises:
    ValueError: ids given with a reduction other than ``'sequence_mean'``,
      ids not of the per-token shape, or ``'sequence_mean'`` of a 0-d loss.
    TypeError: non-integer ids.
  """
  if reduction == "sequence_mean" and not shape:
    raise ValueError(
      "reduction='sequence_mean' needs per-token losses with a sequence axis "
      "(the last axis); got a 0-d loss."
    )
  if segment_ids is None:
    return None
  if reduction != "sequence_mean":
    raise ValueError(
      f"`segment_ids` is only used by reduction='sequence_mean'; got "
      f"reduction={reduction!r}. Drop `segment_ids` or use 'sequence_mean'."
    )
  ids = jnp.asarray(segment_ids)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"`segment_ids` must be integers; got dtype {ids.dtype}.")
  if ids.shape != shape:
    raise ValueError(
      f"`segment_ids` must have the per-token shape {shape}; got {ids.shape}."
    )
  return ids


def check_num_items(num_items_in_batch: object, reduction: str) -> object:
  """Validates ``num_items_in_batch`` (only with ``'mean'``); see ``check_count``."""
  if num_items_in_batch is None:
    return None
  if reduction != "mean":
    raise ValueError(
      f"`num_items_in_batch` replaces the denominator of reduction='mean'; got "
      f"reduction={reduction!r}. Use 'mean' (or drop `num_items_in_batch`)."
    )
  return check_count(num_items_in_batch)


def reduce_loss(
  values: ArrayLike,
  reduction: str = "mean",
  *,
  where: ArrayLike | None = None,
  segment_ids: ArrayLike | None = None,
  num_items_in_batch: ArrayLike | None = None,
) -> jax.Array:
  r"""Reduces per-example (or per-token) losses, optionally under a mask.

  With values :math:`v_i` and mask :math:`m_i \in \{0, 1\}` (all ones when
  ``where`` is None):

  * ``'none'``: :math:`m_i v_i` (masked entries become 0), shape of ``values``;
  * ``'sum'``: :math:`\sum_i m_i v_i`;
  * ``'mean'``: :math:`\sum_i m_i v_i / \max(1, \sum_i m_i)`, the mean over
    the unmasked entries, 0 (not NaN) when everything is masked. Without a
    mask it is the plain mean (NaN for an empty array, as in NumPy). With
    ``num_items_in_batch`` :math:`n`: :math:`\sum_i m_i v_i / n`, so that
    the losses of micro-batches (gradient accumulation) or of data-parallel
    shards, each divided by the *global* count of kept tokens, add up to the
    mean over the whole batch (Hugging Face's ``num_items_in_batch``); a
    traced count of 0 (a wholly masked global batch) gives 0;
  * ``'batchmean'``: :math:`\sum_i m_i v_i / \text{values.shape[0]}`, the sum
    divided by the size of the leading axis whether masked or not (PyTorch's
    ``'batchmean'``); a 0-d ``values`` gives the plain value;
  * ``'sequence_mean'``: the mean over sequences of each sequence's mean over
    its kept tokens, :math:`\frac{1}{|S|} \sum_{s \in S} \frac{\sum_{i \in s}
    m_i v_i}{\sum_{i \in s} m_i}`, where :math:`S` holds the sequences with
    at least one kept token (0 when there is none). The last axis of
    ``values`` is the sequence axis: without ``segment_ids`` each row (an
    index of the other axes) is one sequence; with ``segment_ids`` (packed
    sequences) the tokens of one row with equal ids form one sequence --
    ids need not be contiguous or sorted, and equal ids in different rows
    are different sequences. Every sequence weighs the same, whatever its
    length (the "sequence-mean, token-mean" aggregation).

  Masked entries never reach the result or its gradient, even when they hold
  ``inf`` or NaN (the mask is applied with ``jnp.where``; ``values`` here is
  per-example, so the select is cheap).

  Args:
    values: losses, any shape (at least 1-D for ``'sequence_mean'``).
    reduction: ``'none' | 'sum' | 'mean' | 'batchmean' | 'sequence_mean'``.
      Static.
    where: optional boolean mask broadcastable to ``values`` by NumPy's
      rules (``values`` are per example, so there is no class axis to
      confuse it with); ``True`` keeps.
    segment_ids: optional integer array of the shape of ``values``: sequence
      ids of packed sequences, for ``'sequence_mean'`` only.
    num_items_in_batch: optional count (a Python number or a 0-d array, may
      be traced) replacing the denominator of ``'mean'``; a concrete value
      must be > 0.

  Returns:
    Shape of ``values`` for ``'none'``, else a scalar; dtype of ``values``
    (16-bit floats are summed in float32).

  Raises:
    ValueError: unknown ``reduction``, a mask that does not broadcast,
      ``segment_ids`` not of the shape of ``values`` or given with another
      reduction than ``'sequence_mean'``, ``num_items_in_batch`` with
      another reduction than ``'mean'`` or a concrete one <= 0.
    TypeError: non-floating ``values``, a non-boolean mask (a 0/1 float
      mask: pass ``where.astype(bool)``), non-integer ``segment_ids`` or a
      non-numeric ``num_items_in_batch``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> losses = jnp.array([1.0, 2.0, 6.0])
    >>> jaxkl.reduce_loss(losses, "mean", where=jnp.array([True, True, False]))
    Array(1.5, dtype=float32)
    >>> jaxkl.reduce_loss(losses, "batchmean", where=jnp.array([True, True, False]))
    Array(1., dtype=float32)
    >>> jaxkl.reduce_loss(losses, "mean", where=jnp.zeros(3, bool))
    Array(0., dtype=float32)

    Two packed sequences, ``[1, 2]`` and ``[6]``, weigh the same:

    >>> jaxkl.reduce_loss(losses, "sequence_mean", segment_ids=jnp.array([0, 0, 1]))
    Array(3.75, dtype=float32)

    A micro-batch divided by the global count of 6 tokens:

    >>> jaxkl.reduce_loss(losses, "mean", num_items_in_batch=6)
    Array(1.5, dtype=float32)
  """
  reduction = validate_loss_reduction(reduction)
  values = _checks.as_float_array(values, "values")
  ids = check_segment_ids(segment_ids, values.shape, reduction)
  count = check_num_items(num_items_in_batch, reduction)
  out_dtype, compute_dtype = _checks.result_dtype(values)
  mask = _per_example.broadcast_mask(where, values.shape, ())
  if mask is not None:
    values = jnp.where(mask, values, 0)
  if reduction == "none":
    return values
  if reduction == "sequence_mean":
    return _sequence_mean(values.astype(compute_dtype), mask, ids).astype(out_dtype)
  total = jnp.sum(values.astype(compute_dtype))
  if reduction == "sum":
    result = total
  elif reduction == "batchmean":
    result = total / values.shape[0] if values.ndim else total
  elif count is not None:
    result = divide_or_zero(total, count)
  elif mask is None:  # no `where`
    result = total / np.asarray(values.size, compute_dtype)
  else:
    count = jnp.sum(mask, dtype=jnp.int32).astype(compute_dtype)
    result = total / jnp.maximum(count, 1)
  return result.astype(out_dtype)
