"""KL coefficients as pure ``init``/``update`` functions (optax's style).

The coefficient :math:`\\beta` of a KL penalty is either fixed or adapted to
keep the measured KL near a target (Ziegler et al., 2019). Here a controller
is a pair of pure functions over a pytree state, so it runs under
``jax.jit`` and ``jax.lax.scan``, and its state is checkpointed, copied and
pickled like any other array.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

# The bound of the proportional error of the adaptive controller.
_ERROR_BOUND = 0.2


class KLControllerState(NamedTuple):
  """The state of a KL controller: a pytree holding the coefficient.

  Attributes:
    coef: the current KL coefficient :math:`\\beta`, a 0-d array (float32,
      or float64 when the initial coefficient was given as float64 with
      ``jax_enable_x64`` on).
  """

  coef: jax.Array


class KLController(NamedTuple):
  """A KL controller: pure ``init`` and ``update`` functions (optax's style).

  Attributes:
    init: ``init() -> KLControllerState``, the initial state.
    update: ``update(state, current_kl, n_steps) -> KLControllerState``, the
      state after a batch whose measured KL is ``current_kl`` (a scalar)
      and which held ``n_steps`` steps (samples), as in verl's and TRL's
      ``update(current_kl, n_steps)``. Pure and jit-able; its arguments may
      be traced.
  """

  init: Callable[[], KLControllerState]
  update: Callable[[KLControllerState, ArrayLike, ArrayLike], KLControllerState]


def _check_hyperparameter(value: object, name: str, *, positive: bool) -> float:
  """A static, finite real number, > 0 (``positive``) or >= 0; else raises.

  Raises:
    TypeError: a bool, a string, a traced value or a non-real array.
    ValueError: not a scalar, not finite, or out of range.
  """
  if isinstance(value, (bool, np.bool_, str, jax.core.Tracer)):
    raise TypeError(
      f"`{name}` must be a concrete real number (a hyperparameter, fixed "
      f"before tracing); got {value!r}."
    )
  array = np.asarray(value)
  if array.shape:
    raise ValueError(f"`{name}` must be a scalar; got an array of shape {array.shape}.")
  if array.dtype == np.bool_ or not (
    np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
  ):
    raise TypeError(f"`{name}` must be a real number; got dtype {array.dtype}.")
  number = float(array)
  if not math.isfinite(number) or number < 0 or (positive and number == 0):
    allowed = "finite and > 0" if positive else "finite and >= 0"
    raise ValueError(f"`{name}` must be {allowed}; got {value!r}.")
  return number


def _coef_dtype(coef: object) -> np.dtype:
  """float64 for a float64 coefficient when x64 is on, else float32."""
  if np.asarray(coef).dtype == np.float64 and type(coef) is not float:
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))
  return np.dtype(np.float32)


def _check_scalar(value: ArrayLike, name: str) -> jax.Array:
  """``value`` as a 0-d real array (may be traced); else raises."""
  if isinstance(value, str):
    raise TypeError(f"`{name}` must be a real number; got the string {value!r}.")
  array = jnp.asarray(value)
  if array.shape:
    raise ValueError(
      f"`{name}` must be a scalar (the batch's value); got an array of shape "
      f"{array.shape}. Reduce it first, e.g. with `jnp.mean`."
    )
  if array.dtype == jnp.bool_ or not (
    jnp.issubdtype(array.dtype, jnp.integer)
    or jnp.issubdtype(array.dtype, jnp.floating)
  ):
    raise TypeError(f"`{name}` must be a real number; got dtype {array.dtype}.")
  return array


def _initial_state(coef: float, dtype: np.dtype) -> Callable[[], KLControllerState]:
  def init() -> KLControllerState:
    return KLControllerState(coef=jnp.asarray(coef, dtype))

  return init


def fixed_kl_controller(coef: float) -> KLController:
  r"""A KL controller whose coefficient never changes.

  :math:`\beta_{k+1} = \beta_k = \beta_0`: ``update`` returns the state it
  is given (it still checks that its arguments are scalars, so that the
  fixed and the adaptive controller are interchangeable).

  Args:
    coef: the coefficient :math:`\beta_0 \ge 0`, a Python number or a
      concrete 0-d array (float64 is kept when ``jax_enable_x64`` is on).

  Returns:
    A :class:`jaxkl.KLController` whose ``init()`` gives
    ``KLControllerState(coef=β₀)`` as a 0-d float32 (or float64) array.

  Raises:
    TypeError: a non-real, boolean or traced ``coef``.
    ValueError: a ``coef`` that is not a finite scalar >= 0.

  Examples:
    >>> import jaxkl
    >>> controller = jaxkl.fixed_kl_controller(0.05)
    >>> state = controller.init()
    >>> controller.update(state, 3.0, 256).coef
    Array(0.05, dtype=float32)

  References:
    verl's ``FixedKLController`` (``algorithm.kl_ctrl.type="fixed"``) and
    TRL's ``FixedKLController``.
  """
  value = _check_hyperparameter(coef, "coef", positive=False)

  def update(
    state: KLControllerState, current_kl: ArrayLike, n_steps: ArrayLike
  ) -> KLControllerState:
    _check_scalar(current_kl, "current_kl")
    _check_scalar(n_steps, "n_steps")
    return state

  return KLController(init=_initial_state(value, _coef_dtype(coef)), update=update)


def adaptive_kl_controller(
  init_coef: float, target: float, horizon: float
) -> KLController:
  r"""The adaptive KL controller of Ziegler et al. (2019).

  Keeps the measured KL near ``target`` with a proportional controller in
  log space: after a batch of ``n_steps`` samples with measured KL
  :math:`\mathrm{KL}_k`,

  .. math::

     e_k = \operatorname{clip}\!\left(\frac{\mathrm{KL}_k}{\mathrm{KL}_{\text{target}}}
     - 1,\ -0.2,\ 0.2\right), \qquad
     \beta_{k+1} = \beta_k \left(1 + e_k \, \frac{n_{\text{steps}}}{\text{horizon}}\right).

  The coefficient grows when the KL is above the target and shrinks when it
  is below, by at most a factor :math:`1 \pm 0.2\, n_{\text{steps}} /
  \text{horizon}` per update (the paper's :math:`K_\beta = n_{\text{steps}}
  / \text{horizon}`). The factor is floored at 0: with :math:`n_{\text{steps}}
  > 5\,\text{horizon}` the recursion (and verl's) would make the
  coefficient negative, turning the penalty into a reward for diverging;
  here it stops at 0. A NaN ``current_kl`` gives a NaN coefficient (the
  controller does not hide a broken measurement); :math:`\pm\infty` is
  clipped like any large error.

  Args:
    init_coef: the initial coefficient :math:`\beta_0 \ge 0`, a Python
      number or a concrete 0-d array (float64 is kept when
      ``jax_enable_x64`` is on).
    target: the target KL, finite and > 0.
    horizon: the number of samples over which the error is corrected,
      finite and > 0 (10000 in Ziegler et al.; verl's and TRL's default).

  Returns:
    A :class:`jaxkl.KLController`. ``init()`` gives
    ``KLControllerState(coef=β₀)`` (a 0-d float32, or float64, array);
    ``update(state, current_kl, n_steps)`` the next state, computed in the
    dtype of ``state.coef``; ``current_kl`` and ``n_steps`` are real
    scalars and may be traced (``jax.jit``, ``jax.lax.scan``).

  Raises:
    TypeError: a non-real, boolean or traced hyperparameter; in ``update``,
      a non-real ``current_kl`` or ``n_steps``.
    ValueError: ``init_coef`` not finite and >= 0, ``target`` or
      ``horizon`` not finite and > 0, or a hyperparameter that is not a
      scalar; in ``update``, a ``current_kl`` or ``n_steps`` that is not a
      scalar, or a concrete ``n_steps`` < 0.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> controller = jaxkl.adaptive_kl_controller(0.1, target=6.0, horizon=10000)
    >>> state = controller.init()
    >>> state = controller.update(state, 9.0, 1000)  # error clipped to 0.2
    >>> state.coef  # 0.1 * (1 + 0.2 * 1000 / 10000)
    Array(0.102, dtype=float32)

    Over a run of measured KLs, with ``jax.lax.scan``:

    >>> def step(state, kl):
    ...   state = controller.update(state, kl, 1000)
    ...   return state, state.coef
    >>> _, coefs = jax.lax.scan(step, controller.init(), jnp.array([9.0, 3.0, 6.0]))
    >>> coefs  # up by 2%, down by 2% (error -0.5 clipped to -0.2), unchanged
    Array([0.102  , 0.09996, 0.09996], dtype=float32)

  References:
    D. M. Ziegler, N. Stiennon, J. Wu, T. B. Brown, A. Radford, D. Amodei,
    P. Christiano and G. Irving, "Fine-Tuning Language Models from Human
    Preferences", 2019, arXiv:1909.08593, section 2.2.
    verl's ``AdaptiveKLController`` (``algorithm.kl_ctrl.type="adaptive"``)
    and TRL's ``AdaptiveKLController``.
  """
  coef = _check_hyperparameter(init_coef, "init_coef", positive=False)
  target_kl = _check_hyperparameter(target, "target", positive=True)
  steps_horizon = _check_hyperparameter(horizon, "horizon", positive=True)

  def update(
    state: KLControllerState, current_kl: ArrayLike, n_steps: ArrayLike
  ) -> KLControllerState:
    dtype = state.coef.dtype
    kl = _check_scalar(current_kl, "current_kl").astype(dtype)
    steps = _check_scalar(n_steps, "n_steps")
    if not isinstance(steps, jax.core.Tracer) and float(steps) < 0:
      raise ValueError(f"`n_steps` must be >= 0; got {n_steps!r}.")
    steps = steps.astype(dtype)
    error = jnp.clip(kl / target_kl - 1, -_ERROR_BOUND, _ERROR_BOUND)
    # Never below 0: a negative coefficient would reward divergence.
    factor = jnp.maximum(1 + error * steps / steps_horizon, 0)
    return KLControllerState(coef=state.coef * factor)

  return KLController(init=_initial_state(coef, _coef_dtype(init_coef)), update=update)
