"""Reductions shared by every loss in jaxkl, and PyTorch's legacy arguments.

The names follow PyTorch: ``'none'`` keeps the elementwise (or per-example)
values, ``'sum'`` adds them up, ``'mean'`` divides the sum by the number of
values and ``'batchmean'`` divides it by the size of the leading axis.
"""

from __future__ import annotations

import warnings
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _per_example

Reduction = Literal["none", "batchmean", "sum", "mean"]

REDUCTIONS: tuple[str, ...] = ("none", "batchmean", "sum", "mean")

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


def reduce_loss(
  values: ArrayLike,
  reduction: str = "mean",
  *,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Reduces per-example (or per-token) losses, optionally under a mask.

  With values :math:`v_i` and mask :math:`m_i \in \{0, 1\}` (all ones when
  ``where`` is None):

  * ``'none'``: :math:`m_i v_i` (masked entries become 0), shape of ``values``;
  * ``'sum'``: :math:`\sum_i m_i v_i`;
  * ``'mean'``: :math:`\sum_i m_i v_i / \max(1, \sum_i m_i)`, the mean over
    the unmasked entries, 0 (not NaN) when everything is masked. Without a
    mask it is the plain mean (NaN for an empty array, as in NumPy);
  * ``'batchmean'``: :math:`\sum_i m_i v_i / \text{values.shape[0]}`, the sum
    divided by the size of the leading axis whether masked or not (PyTorch's
    ``'batchmean'``); a 0-d ``values`` gives the plain value.

  Masked entries never reach the result or its gradient, even when they hold
  ``inf`` or NaN (the mask is applied with ``jnp.where``; ``values`` here is
  per-example, so the select is cheap).

  Args:
    values: losses, any shape.
    reduction: ``'none' | 'sum' | 'mean' | 'batchmean'``. Static.
    where: optional boolean mask broadcastable to ``values`` by NumPy's
      rules (``values`` are per example, so there is no class axis to
      confuse it with); ``True`` keeps.

  Returns:
    Shape of ``values`` for ``'none'``, else a scalar; dtype of ``values``
    (16-bit floats are summed in float32).

  Raises:
    ValueError: unknown ``reduction`` or a mask that does not broadcast.
    TypeError: non-floating ``values`` or a non-boolean mask (a 0/1 float
      mask: pass ``where.astype(bool)``).

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
  """
  reduction = validate_reduction(reduction)
  values = _checks.as_float_array(values, "values")
  out_dtype, compute_dtype = _checks.result_dtype(values)
  mask = _per_example.broadcast_mask(where, values.shape, ())
  if mask is not None:
    values = jnp.where(mask, values, 0)
  if reduction == "none":
    return values
  total = jnp.sum(values.astype(compute_dtype))
  if reduction == "sum":
    result = total
  elif reduction == "batchmean":
    result = total / values.shape[0] if values.ndim else total
  elif mask is None:  # no `where`
    result = total / np.asarray(values.size, compute_dtype)
  else:
    count = jnp.sum(mask, dtype=jnp.int32).astype(compute_dtype)
    result = total / jnp.maximum(count, 1)
  return result.astype(out_dtype)
