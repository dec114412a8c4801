"""Per-example KL divergence over an axis, optax-compatible and NaN-free."""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _pointwise

Axis = Union[int, tuple[int, ...], None]


def normalize_axis(axis: Axis, ndim: int, name: str = "axis") -> tuple[int, ...]:
  """Returns ``axis`` as a sorted tuple of non-negative ints.

  Raises:
    TypeError: ``axis`` is not an int, a tuple of ints or None.
    ValueError: an axis is out of range or repeated.
  """
  if axis is None:
    return tuple(range(ndim))
  axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
  if not isinstance(axes, (tuple, list)) or not all(
      isinstance(a, (int, np.integer)) and not isinstance(a, bool)
      for a in axes):
    raise TypeError(
        f"`{name}` must be an int, a tuple of ints or None; got {axis!r}.")
  normalized = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
          f"`{name}`={axis!r} is out of range for an input with {ndim} "
          f"dimension(s).")
    normalized.append(int(a) % ndim if ndim else 0)
  if len(set(normalized)) != len(normalized):
    raise ValueError(f"`{name}`={axis!r} repeats an axis.")
  return tuple(sorted(normalized))


def broadcast_mask(where: Optional[ArrayLike], shape: tuple[int, ...],
                   axes: tuple[int, ...]) -> Optional[jax.Array]:
  """Broadcasts a boolean mask to ``shape``; see ``kl_divergence``'s ``where``.

  A mask whose shape equals the per-example result shape (``shape`` without
  ``axes``) masks whole examples: the reduced axes are inserted. Any other mask
  must broadcast to ``shape`` by NumPy's rules.

  Raises:
    TypeError: the mask is not boolean.
    ValueError: the mask does not broadcast.
  """
  if where is None:
    return None
  mask = jnp.asarray(where)
  if mask.dtype != jnp.bool_:
    raise TypeError(f"`where` must be a boolean array; got dtype {mask.dtype}.")
  per_example = tuple(d for i, d in enumerate(shape) if i not in axes)
  if axes and mask.shape == per_example and len(per_example) < len(shape):
    mask = jnp.expand_dims(mask, axes)
  try:
    return jnp.broadcast_to(mask, shape)
  except ValueError:
    raise ValueError(
        f"`where` has shape {mask.shape}, which is neither the per-example "
        f"shape {per_example} nor broadcastable to the input shape {shape}."
    ) from None


def masked_target(target: jax.Array, mask: Optional[jax.Array],
                  log_target: bool) -> jax.Array:
  """Gives masked-out positions zero target probability (term exactly 0).

  Implemented with a multiply (probabilities) or an add of ``-inf``
  (log-probabilities) rather than a ``select``, which would slow the fused
  reduction on CPU; the pointwise terms are exactly 0 at zero probability
  whatever the other argument, and so are their gradients.
  """
  if mask is None:
    return target
  if log_target:
    return target + jnp.where(mask, 0, -jnp.inf).astype(target.dtype)
  return target * mask.astype(target.dtype)


def kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    *,
    axis: Axis = -1,
    where: Optional[ArrayLike] = None,
    log_target: bool = False,
) -> jax.Array:
  r"""Per-example KL divergence :math:`D_{\mathrm{KL}}(P \,\|\, Q)` over ``axis``.

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \sum_{x} p(x) \left(\log p(x) - \log q(x)\right)

  summed over ``axis`` (the support), where ``log_predictions`` holds
  :math:`\log q` and ``targets`` holds :math:`p` (or :math:`\log p` with
  ``log_target=True``). A drop-in replacement for
  ``optax.losses.kl_divergence`` (and, with ``log_target=True``,
  ``optax.losses.kl_divergence_with_log_targets``): same argument order and
  the same values wherever optax's are finite, but a zero target contributes
  exactly 0 with zero gradient, even against :math:`\log q = -\infty`
  (optax returns NaN there). :math:`p > 0` against :math:`\log q = -\infty`
  gives :math:`+\infty`. 16-bit inputs are accumulated in float32.

  Args:
    log_predictions: :math:`\log q`, shape ``[..., C]`` (any shape).
    targets: :math:`p` (or :math:`\log p`), same shape as
      ``log_predictions``.
    axis: axis or axes to sum over (the support); ``None`` for all. Static.
    where: optional boolean mask of elements to include. A mask whose shape
      equals the per-example result shape (the input shape without ``axis``,
      e.g. ``[B]`` for a ``[B, C]`` input) masks whole examples (a masked
      example gives 0, with zero gradient); any other mask is broadcast to the
      input shape by NumPy's rules (e.g. ``[1, C]`` masks classes). Masked
      positions may hold any finite value or :math:`\pm\infty`.
    log_target: whether ``targets`` holds log-probabilities. Static.

  Returns:
    The divergence per example: the input shape with ``axis`` removed, in the
    promoted dtype of the inputs.

  Raises:
    ValueError: shapes differ, bad ``axis`` or a mask that does not broadcast.
    TypeError: non-floating inputs or a non-boolean mask.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> log_q = jnp.log(jnp.array([[0.25, 0.75], [0.5, 0.5]]))
    >>> p = jnp.array([[0.5, 0.5], [1.0, 0.0]])
    >>> jaxkl.kl_divergence(log_q, p)  # [log(4/3)/2, log 2]
    Array([0.14384104, 0.6931472 ], dtype=float32)
    >>> jaxkl.kl_divergence(log_q, p, where=jnp.array([True, False]))
    Array([0.14384104, 0.        ], dtype=float32)

  References:
    Kullback & Leibler, "On Information and Sufficiency", 1951.
  """
  log_target = _checks.check_bool(log_target, "log_target")
  log_q = _checks.as_float_array(log_predictions, "log_predictions")
  target = _checks.as_float_array(targets, "targets")
  _checks.check_same_shape(log_q, target, "log_predictions", "targets")
  axes = normalize_axis(axis, log_q.ndim)
  mask = broadcast_mask(where, log_q.shape, axes)
  out_dtype, compute_dtype = _checks.result_dtype(log_q, target)
  log_q = log_q.astype(compute_dtype)
  target = masked_target(target.astype(compute_dtype), mask, log_target)
  terms, scale = _pointwise.kl_terms(log_q, target, log_target=log_target)
  result = jnp.sum(terms, axis=axes)
  if scale != 1.0:
    result = result * np.asarray(scale, compute_dtype)
  return result.astype(out_dtype)
