"""Trace-time validation of static arguments, dtypes and shapes.

Everything here runs in Python on static information (shapes, dtypes, option
strings) before anything is traced, so errors point at the caller's argument
instead of surfacing as a NaN deep inside a compiled computation.
"""

from __future__ import annotations

from typing import Any

import chex  # type: ignore[import-untyped]  # chex ships no py.typed marker
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jax.typing import DTypeLike


def finfo(dtype: DTypeLike) -> np.finfo[np.floating[Any]]:
  """``jnp.finfo(dtype)``: machine limits of a floating dtype, bfloat16 included.

  A typed front for ``jnp.finfo`` (``ml_dtypes.finfo``, whose constructor
  carries no annotations), so that strictly typed callers need no ignores.
  """
  return jnp.finfo(dtype)  # type: ignore[no-untyped-call]  # ml_dtypes.finfo is unannotated


def as_float_array(value: ArrayLike, name: str) -> jnp.ndarray:
  """Converts ``value`` to a JAX array and checks that it is real floating.

  Args:
    value: the user's argument.
    name: the argument's name, used in the error message.

  Returns:
    ``jnp.asarray(value)``.

  Raises:
    TypeError: if ``value`` is not array-like or its dtype is integer, boolean
      or complex.
  """
  try:
    array = jnp.asarray(value)
  except (TypeError, ValueError) as err:  # None raises ValueError in jax
    raise TypeError(
      f"`{name}` must be an array of floating dtype; got an object of type "
      f"{type(value).__name__}."
    ) from err
  dtype = array.dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"`{name}` must have a real floating dtype (float16, bfloat16, float32"
      f" or float64); got dtype {dtype}. Cast it explicitly, e.g. "
      f"`{name}.astype(jnp.float32)`."
    )
  return array


def check_same_shape(
  first: jnp.ndarray, second: jnp.ndarray, first_name: str, second_name: str
) -> None:
  """Raises a ValueError unless ``first`` and ``second`` have the same shape.

  PyTorch's ``kl_div`` silently broadcasts mismatched shapes, which has hidden
  many bugs (a ``[B, 1]`` target against a ``[B, C]`` input); jaxkl refuses
  and asks for an explicit broadcast.

  Raises:
    ValueError: naming both shapes.
  """
  try:
    chex.assert_equal_shape(
      [first, second],
      custom_message=(
        f"`{first_name}` has shape {tuple(first.shape)} but `{second_name}`"
        f" has shape {tuple(second.shape)}; they must be equal. PyTorch "
        "would broadcast them silently; jaxkl does not. To broadcast on "
        f"purpose, pass `jnp.broadcast_to({second_name}, "
        f"{first_name}.shape)` (or the reverse)."
      ),
    )
  except AssertionError as err:
    raise ValueError(str(err)) from None


def check_bool(value: Any, name: str) -> bool:
  """Checks that a static flag is a Python (or NumPy) bool.

  Raises:
    TypeError: for anything else, e.g. a traced array, which cannot decide a
      static branch.
  """
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise TypeError(
    f"`{name}` must be a Python bool (it selects the formula at trace time);"
    f" got {value!r} of type {type(value).__name__}."
  )


def check_positive_int(value: Any, name: str, what: str = "") -> int:
  """Checks that a static size or count is a positive Python (or NumPy) int.

  Args:
    value: the argument.
    name: its name, for the error message.
    what: an optional note on its meaning, shown in the TypeError.

  Raises:
    TypeError: a bool, float, array or anything else that is not an int.
    ValueError: an int below 1.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    note = f" ({what})" if what else ""
    raise TypeError(
      f"`{name}` must be a positive int{note}; got {value!r} of type "
      f"{type(value).__name__}."
    )
  if value < 1:
    raise ValueError(f"`{name}` must be a positive int; got {value}.")
  return int(value)


def check_mask_dtype(mask: jnp.ndarray, name: str = "where") -> None:
  """Checks that a mask is boolean (``True`` keeps an entry).

  Numbers are refused rather than read as a mask: a float array may hold
  weights (0.5), and reading it as booleans would silently drop them; a 0/1
  array is one ``.astype(bool)`` away.

  Raises:
    TypeError: naming the argument and its dtype, and how to convert a 0/1
      array.
  """
  if mask.dtype == jnp.bool_:
    return
  raise TypeError(
    f"`{name}` must be a boolean array (True keeps an entry); got dtype "
    f"{mask.dtype}. jaxkl does not read numbers as a mask (they might be "
    f"weights); if `{name}` holds 0/1 values, pass `{name}.astype(bool)`."
  )


def result_dtype(*arrays: jnp.ndarray) -> tuple[np.dtype, np.dtype]:
  """Returns ``(result_dtype, compute_dtype)`` for floating inputs.

  The result dtype follows ``jnp.result_type`` (so it honours
  ``jax_numpy_dtype_promotion``); 16-bit floats are computed and accumulated
  in float32 and cast back at the end.
  """
  out = np.dtype(jnp.result_type(*arrays))
  return out, at_least_float32(out)


def at_least_float32(dtype: DTypeLike) -> np.dtype:
  """float32 for a 16-bit float dtype, else the dtype itself (for counts and
  accumulators: float16 ends at 65504)."""
  dtype = np.dtype(dtype)
  return np.dtype(jnp.float32) if finfo(dtype).bits < 32 else dtype


# ----------------------------------------------------------------------------
# Sharding types at trace time (jax >= 0.6 names them in ``jax.typeof``;
# older versions have none of this, and every helper answers "nothing").


def _aval(x: jax.Array) -> Any:
  typeof = getattr(jax, "typeof", None)
  return None if typeof is None else typeof(x)


def varying_axes(x: jax.Array) -> frozenset[str]:
  """The ``shard_map`` mesh axes over which ``x`` varies (empty outside)."""
  aval = _aval(x)
  manual = getattr(aval, "manual_axis_type", None)
  axes: Any = getattr(manual, "varying", None)
  if axes is None:
    axes = getattr(aval, "vma", frozenset())
  return frozenset(axes)


def pcast_varying(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """``x`` typed as varying over ``axes`` inside ``shard_map``."""
  if not axes:
    return x
  pcast = getattr(jax.lax, "pcast", None)
  if pcast is not None:
    out: jax.Array = pcast(x, axes, to="varying")
    return out
  out = jax.lax.pvary(x, axes)  # type: ignore[attr-defined]  # jax < 0.8
  return out


def abstract_mesh(x: jax.Array) -> Any:
  """The mesh named by ``x``'s sharding type, or None (no mesh)."""
  sharding = getattr(_aval(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or getattr(mesh, "empty", True):
    return None
  return mesh


def partition_spec(x: jax.Array) -> tuple[Any, ...]:
  """``x``'s partition spec from its sharding type (empty when unknown)."""
  sharding = getattr(_aval(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  return () if spec is None else tuple(spec)
