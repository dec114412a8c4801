"""Per-example KL divergence over an axis, optax-compatible and NaN-free."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _pointwise

Axis = int | tuple[int, ...] | None


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
    isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes
  ):
    raise TypeError(f"`{name}` must be an int, a tuple of ints or None; got {axis!r}.")
  normalized = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
        f"`{name}`={axis!r} is out of range for an input with {ndim} dimension(s)."
      )
    normalized.append(int(a) % ndim if ndim else 0)
  if len(set(normalized)) != len(normalized):
    raise ValueError(f"`{name}`={axis!r} repeats an axis.")
  return tuple(sorted(normalized))


def _broadcast_strides(
  padded: tuple[int, ...], shape: tuple[int, ...]
) -> tuple[int, ...]:
  """Which mask element each axis of ``shape`` reads, as strides.

  ``padded`` has ``len(shape)`` entries and broadcasts to ``shape``; the
  element of the broadcast mask at index ``i`` is element
  ``sum(i[d] * strides[d])`` of the (C-ordered) mask. Axes of size 1 in
  ``shape`` get stride 0 (only index 0 exists there).
  """
  strides, step = [], 1
  for size, target in zip(reversed(padded), reversed(shape), strict=False):
    strides.append(step if size == target and target != 1 else 0)
    step *= size
  return tuple(reversed(strides))


def _broadcasts(mask_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
  """Whether NumPy's rules broadcast ``mask_shape`` to ``shape``."""
  if len(mask_shape) > len(shape):
    return False
  return all(
    m in (1, s) for m, s in zip(reversed(mask_shape), reversed(shape), strict=False)
  )


def _spell(name: str, shape: tuple[int, ...]) -> str:
  return f"`{name}.reshape({', '.join(map(str, shape))}{',' * (len(shape) == 1)})`"


def broadcast_mask(
  where: ArrayLike | None,
  shape: tuple[int, ...],
  axes: tuple[int, ...],
  *,
  name: str = "where",
) -> jax.Array | None:
  """Reads a ``where`` mask by jaxkl's one rule and broadcasts it to ``shape``.

  Every function of jaxkl that takes ``where`` reads it here. ``shape`` is
  the shape of the input, ``axes`` the axes that are summed over (the
  support; empty for a reduction over examples such as ``reduce_loss``),
  and the *per-example shape* is ``shape`` without ``axes``. The rule:

  * the mask must be boolean (``True`` keeps an entry);
  * a mask whose shape is the per-example shape masks whole examples (the
    reduced axes are inserted: ``[B]`` against ``[B, C]`` reads as
    ``[B, 1]``);
  * any other mask is broadcast to ``shape`` by NumPy's rules (``[1, C]``
    masks classes, ``[B, 1]`` examples);
  * a mask that fits both readings with different meanings (``[C]``
    against ``[B, C]`` with ``B == C``: jaxkl's per-example reading, or
    NumPy's and optax's class mask) is refused with a ValueError that gives
    both explicit spellings. Readings that coincide (``B == 1``) are fine.

  Returns:
    None, or the boolean mask broadcast to ``shape``.

  Raises:
    TypeError: a mask that is not boolean (for 0/1 numbers the message says
      ``.astype(bool)``).
    ValueError: an ambiguous mask, or one that fits neither reading.
  """
  if where is None:
    return None
  try:
    mask = jnp.asarray(where)
  except TypeError as err:
    raise TypeError(
      f"`{name}` must be a boolean array; got an object of type {type(where).__name__}."
    ) from err
  _checks.check_mask_dtype(mask, name)
  shape = tuple(shape)
  per_example = tuple(d for i, d in enumerate(shape) if i not in axes)
  by_example = (
    bool(axes) and mask.shape == per_example and len(per_example) < len(shape)
  )
  by_numpy = _broadcasts(mask.shape, shape)
  if by_example:
    example_shape = tuple(1 if i in axes else d for i, d in enumerate(shape))
    if by_numpy:
      numpy_shape = (1,) * (len(shape) - mask.ndim) + mask.shape
      if 0 not in shape and (
        _broadcast_strides(example_shape, shape)
        != _broadcast_strides(numpy_shape, shape)
      ):
        raise ValueError(
          f"`{name}` has shape {mask.shape}, which can be read two ways "
          f"against the input shape {shape} (summed over axis "
          f"{axes[0] if len(axes) == 1 else axes}): as a mask of whole "
          f"examples (jaxkl's reading of a mask of the per-example shape "
          f"{per_example}) or, by NumPy's broadcasting rules, as a mask "
          f"within each example (optax's reading: it masks classes). "
          f"jaxkl does not guess; say which: {_spell(name, example_shape)}"
          f" (shape {example_shape}) masks examples (rows), "
          f"{_spell(name, numpy_shape)} (shape {numpy_shape}) masks "
          f"classes."
        )
    mask = jnp.reshape(mask, example_shape)
  elif not by_numpy:
    if axes:
      raise ValueError(
        f"`{name}` has shape {mask.shape}, which is neither the per-example "
        f"shape {per_example} (masks whole examples) nor broadcastable to "
        f"the input shape {shape} by NumPy's rules."
      )
    raise ValueError(
      f"`{name}` has shape {mask.shape}, which does not broadcast to the "
      f"shape {shape} by NumPy's rules."
    )
  return jnp.broadcast_to(mask, shape)


def per_example_mask(
  where: ArrayLike, shape: tuple[int, ...], axes: tuple[int, ...]
) -> jax.Array | None:
  """The per-example mask when ``where`` masks whole examples, else None.

  ``where`` must already have been read by :func:`broadcast_mask` (which
  rejects ambiguous masks). It masks whole examples when it has the
  per-example shape, or broadcasts with size 1 along every axis of ``axes``;
  then its per-example form (shape ``shape`` without ``axes``) is returned,
  so that callers can set masked examples to exactly 0 after the fact.
  """
  mask = jnp.asarray(where)
  per_example = tuple(d for i, d in enumerate(shape) if i not in axes)
  if mask.shape == per_example and len(per_example) < len(shape):
    return mask
  padded = (1,) * (len(shape) - mask.ndim) + mask.shape
  if any(padded[a] != 1 for a in axes):
    return None
  mask = jnp.reshape(mask, padded)
  return jnp.broadcast_to(jnp.squeeze(mask, axes), per_example)


def masked_target(
  target: jax.Array, mask: jax.Array | None, log_target: bool
) -> jax.Array:
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
  where: ArrayLike | None = None,
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
  gives :math:`+\infty`. A class has zero mass exactly when :math:`p`
  (with ``log_target=True``, :math:`e^{\log p}`) is 0 in the computation
  dtype, subnormals flushed to zero: a finite :math:`\log p` whose
  exponential underflows contributes 0, as in every path of jaxkl (see
  README, "Zero mass"). Huge finite values give the literal
  :math:`p (\log p - \log q)` (no clamping). 16-bit inputs are accumulated
  in float32.

  Args:
    log_predictions: :math:`\log q`, shape ``[..., C]`` (any shape).
    targets: :math:`p` (or :math:`\log p`), same shape as
      ``log_predictions``.
    axis: axis or axes to sum over (the support); ``None`` for all. Static.
    where: optional boolean mask of elements to include (``True`` keeps).
      A mask whose shape equals the per-example result shape (the input
      shape without ``axis``, e.g. ``[B]`` for a ``[B, C]`` input) masks
      whole examples (a masked example gives 0, with zero gradient); any
      other mask is broadcast to the input shape by NumPy's rules (e.g.
      ``[1, C]`` masks classes, ``[B, 1]`` examples). A mask that fits both
      readings with different meanings (``[C]`` against ``[B, C]`` with
      ``B == C``, which optax reads as a class mask) raises a ValueError
      naming both explicit spellings. Masked positions may hold any finite
      value or :math:`\pm\infty`.
    log_target: whether ``targets`` holds log-probabilities. Static.

  Returns:
    The divergence per example: the input shape with ``axis`` removed, in the
    promoted dtype of the inputs.

  Raises:
    ValueError: shapes differ, bad ``axis``, or a mask that is ambiguous or
      fits neither reading.
    TypeError: non-floating inputs or a non-boolean mask (for a 0/1 float
      mask the message says ``where.astype(bool)``).

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> log_q = jnp.log(jnp.array([[0.25, 0.75], [0.5, 0.5]]))
    >>> p = jnp.array([[0.5, 0.5], [1.0, 0.0]])
    >>> jaxkl.kl_divergence(log_q, p)  # [log(4/3)/2, log 2]
    Array([0.14384104, 0.6931472 ], dtype=float32)
    >>> # Rows: [B, 1] (a [B] mask would also be read as a class mask here,
    >>> # since B == C, and is refused).
    >>> jaxkl.kl_divergence(log_q, p, where=jnp.array([[True], [False]]))
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
  terms = _pointwise.kl_terms(log_q, target, log_target=log_target)
  return jnp.sum(terms, axis=axes).astype(out_dtype)
