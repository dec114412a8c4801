"""Argument handling and shared helpers of the closed forms."""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _special

# ----------------------------------------------------------------------------
# Argument handling.


def _kl(
  core: Callable[..., jax.Array],
  named: Sequence[tuple[str, ArrayLike]],
  event_ndims: Sequence[int],
) -> jax.Array:
  """Validates the parameters of a KL function and evaluates ``core``.

  Args:
    core: the formula, a function of the parameters (in order), called with
      arrays of the compute dtype broadcast to a common batch shape.
    named: ``(name, value)`` of every parameter, for error messages.
    event_ndims: the number of trailing event dimensions of each parameter
      (0 for scalars, 1 for vectors ``[..., d]``, 2 for matrices
      ``[..., d, d]``). All event sizes must be equal; the batch dimensions
      (the leading ones) broadcast by NumPy's rules.

  Returns:
    ``core``'s result in the promoted dtype of the parameters; 16-bit
    parameters are computed in float32.

  Raises:
    TypeError: a parameter is not a real floating array.
    ValueError: a parameter has too few dimensions, a matrix is not square,
      event sizes differ, or the batch shapes do not broadcast.
  """
  names = [name for name, _ in named]
  arrays = [_checks.as_float_array(value, name) for name, value in named]
  out_dtype, compute_dtype = _checks.result_dtype(*arrays)
  event_size = None
  event_owner: tuple[str, tuple[int, ...]] = ("", ())
  for name, array, ndim in zip(names, arrays, event_ndims, strict=False):
    if ndim == 0:
      continue
    wanted = "[..., d]" if ndim == 1 else "[..., d, d]"
    if array.ndim < ndim or (ndim == 2 and array.shape[-1] != array.shape[-2]):
      raise ValueError(
        f"`{name}` must have shape {wanted}; got shape {tuple(array.shape)}."
      )
    size = array.shape[-1]
    if event_size is None:
      event_size, event_owner = size, (name, array.shape)
    elif size != event_size:
      raise ValueError(
        f"event sizes differ: `{event_owner[0]}` has shape "
        f"{tuple(event_owner[1])} (d={event_size}) but `{name}` has shape "
        f"{tuple(array.shape)} (d={size}); the trailing event dimensions "
        "must be equal (only batch dimensions broadcast)."
      )
  batch_shapes = [
    a.shape[: a.ndim - e] for a, e in zip(arrays, event_ndims, strict=False)
  ]
  try:
    batch = np.broadcast_shapes(*batch_shapes)
  except ValueError:
    listed = ", ".join(
      f"`{name}`: {tuple(shape)}"
      for name, shape in zip(names, batch_shapes, strict=False)
    )
    what = "batch shapes (event dimensions excluded)" if any(event_ndims) else "shapes"
    raise ValueError(
      f"the parameters' {what} do not broadcast against each other by "
      f"NumPy's rules: {listed}."
    ) from None
  shapes = tuple(
    batch + a.shape[a.ndim - e :] for a, e in zip(arrays, event_ndims, strict=False)
  )
  result: jax.Array = _evaluate(core, tuple(arrays), shapes, compute_dtype, out_dtype)
  return result


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _evaluate(
  core: Callable[..., jax.Array],
  arrays: tuple[jax.Array, ...],
  shapes: tuple[tuple[int, ...], ...],
  compute_dtype: np.dtype[Any],
  out_dtype: np.dtype[Any],
) -> jax.Array:
  """Casts, broadcasts, applies ``core`` and casts back, as one computation.

  Compiled once per formula, shapes and dtypes, so that eager calls do not
  dispatch (and compile) dozens of small operations one at a time.
  """
  cast = [
    jnp.broadcast_to(a.astype(compute_dtype), shape)
    for a, shape in zip(arrays, shapes, strict=False)
  ]
  return core(*cast).astype(out_dtype)


def _phi(x: jax.Array, y: jax.Array) -> jax.Array:
  """``y/x - 1 - log(y/x)`` (>= 0, exactly 0 where x == y)."""
  return _special.phi(x, _special.difference(x, y), y)


def _x_phi(x: jax.Array, y: jax.Array) -> jax.Array:
  """``x phi(y/x) = y - x - x log(y/x)`` (>= 0; ``y`` where x == 0)."""
  return _special.x_phi(x, _special.difference(x, y), y)


def _standardized(loc_p: jax.Array, loc_q: jax.Array, scale: jax.Array) -> jax.Array:
  """``(loc_p - loc_q) / scale``, and 0 for equal locations whatever the
  scale (a zero or subnormal, flushed, scale included), so that identical
  distributions give 0, not 0/0; different locations with a zero scale give
  ``inf``, with an infinite scale 0.
  """
  regular = (scale >= _checks.finfo(scale.dtype).tiny) & (scale < jnp.inf)
  diff = _special.difference(loc_q, loc_p)
  safe = jnp.where(regular, scale, 1)
  degenerate = jnp.where(diff == 0, 0, jnp.where(scale < jnp.inf, jnp.inf, 0))
  return jnp.where(regular, diff / safe, degenerate)
