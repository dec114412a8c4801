"""jaxkl.fixed_kl_controller and jaxkl.adaptive_kl_controller."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkl


def reference(coef, target, horizon, kls, steps):
  """Ziegler et al. (2019)'s recursion, NumPy float64: the coefficient after
  each update."""
  out = []
  for kl, n in zip(kls, steps, strict=True):
    error = min(max(float(kl) / target - 1.0, -0.2), 0.2)
    coef = coef * (1.0 + error * float(n) / horizon)
    out.append(coef)
  return np.array(out)


def _python_loop(controller, kls, steps):
  state = controller.init()
  out = []
  for kl, n in zip(kls, steps, strict=True):
    state = controller.update(state, kl, n)
    out.append(state.coef)
  return state, np.array(out)


def _scan(controller, kls, steps):
  def step(state, inputs):
    kl, n = inputs
    state = controller.update(state, kl, n)
    return state, state.coef

  return jax.jit(lambda k, n: jax.lax.scan(step, controller.init(), (k, n)))(kls, steps)


# ----------------------------------------------------------------------------
# Adaptive controller against the recursion.


def test_hand_worked_three_steps():
  # beta0 = 0.1, target 6, horizon 10000, 1000 samples a batch:
  # KL 9   -> error 0.5 clipped to 0.2  -> 0.1     * 1.02 = 0.102
  # KL 6.6 -> error 0.1                 -> 0.102   * 1.01 = 0.10302
  # KL 3   -> error -0.5 clipped to -0.2 -> 0.10302 * 0.98 = 0.1009596
  controller = jaxkl.adaptive_kl_controller(0.1, target=6.0, horizon=10000)
  _, coefs = _python_loop(controller, [9.0, 6.6, 3.0], [1000] * 3)
  np.testing.assert_allclose(coefs, [0.102, 0.10302, 0.1009596], rtol=1e-6)


def test_matches_recursion_in_float64(x64):
  rng = np.random.default_rng(0)
  kls = rng.gamma(2.0, 3.0, size=200)  # spans both clipped regions and between
  steps = rng.integers(1, 2000, size=200)
  controller = jaxkl.adaptive_kl_controller(np.float64(0.05), target=6.0, horizon=5000)
  assert controller.init().coef.dtype == jnp.float64
  expected = reference(0.05, 6.0, 5000.0, kls, steps)
  state, coefs = _scan(controller, jnp.asarray(kls), jnp.asarray(steps))
  np.testing.assert_allclose(coefs, expected, rtol=1e-12)
  assert state.coef.dtype == jnp.float64
  clipped = np.abs(kls / 6.0 - 1) > 0.2
  assert 0 < clipped.sum() < len(kls)  # the sequence exercises both regimes


def test_matches_recursion_in_float32():
  rng = np.random.default_rng(1)
  kls = rng.gamma(2.0, 3.0, size=100).astype(np.float32)
  steps = rng.integers(1, 500, size=100)
  controller = jaxkl.adaptive_kl_controller(0.2, target=5.0, horizon=1000)
  _, coefs = _python_loop(controller, kls, steps)
  assert coefs.dtype == np.float32
  np.testing.assert_allclose(coefs, reference(0.2, 5.0, 1000.0, kls, steps), rtol=2e-5)


def test_scan_and_jit_equal_the_python_loop():
  rng = np.random.default_rng(2)
  kls = rng.uniform(0, 12, size=50).astype(np.float32)
  steps = rng.integers(1, 300, size=50).astype(np.int32)
  controller = jaxkl.adaptive_kl_controller(0.1, target=6.0, horizon=2000)
  loop_state, loop_coefs = _python_loop(controller, kls, steps)
  scan_state, scan_coefs = _scan(controller, jnp.asarray(kls), jnp.asarray(steps))
  np.testing.assert_allclose(scan_coefs, loop_coefs, rtol=1e-6)
  jitted = jax.jit(controller.update)
  state = controller.init()
  for kl, n in zip(kls, steps, strict=True):
    state = jitted(state, jnp.asarray(kl), jnp.asarray(n))  # traced arguments
  np.testing.assert_allclose(state.coef, loop_state.coef, rtol=1e-6)
  np.testing.assert_allclose(scan_state.coef, loop_state.coef, rtol=1e-6)


@pytest.mark.parametrize(
  "kl",
  [0.0, -0.5, 0.7, 0.79, 0.8, 0.81, 1.0, 1.1, 1.19, 1.2, 1.21, 1.25, 2.0, 1e30, np.inf],
)
def test_error_is_clipped_at_plus_minus_0_2(kl):
  # target 1: the error is kl - 1, clipped to [-0.2, 0.2]; n / horizon = 1/2.
  controller = jaxkl.adaptive_kl_controller(1.0, target=1.0, horizon=100)
  coef = controller.update(controller.init(), kl, 50).coef
  expected = 1.0 + float(np.clip(kl - 1.0, -0.2, 0.2)) * 0.5
  np.testing.assert_allclose(coef, expected, rtol=1e-6)
  assert 0.9 - 1e-7 <= float(coef) <= 1.1 + 1e-7


def test_saturates_exactly():
  controller = jaxkl.adaptive_kl_controller(0.3, target=2.0, horizon=10)
  state = controller.init()
  high = [controller.update(state, kl, 1).coef for kl in (2.5, 3.0, 1e9, np.inf)]
  low = [controller.update(state, kl, 1).coef for kl in (1.5, 1.0, 0.0, -np.inf)]
  assert all(c == high[0] for c in high)
  assert all(c == low[0] for c in low)
  np.testing.assert_allclose([high[0], low[0]], [0.3 * 1.02, 0.3 * 0.98], rtol=1e-6)


def test_nan_kl_is_not_hidden():
  controller = jaxkl.adaptive_kl_controller(0.1, target=1.0, horizon=10)
  assert np.isnan(controller.update(controller.init(), np.nan, 1).coef)


def test_zero_initial_coefficient_stays_zero():
  controller = jaxkl.adaptive_kl_controller(0.0, target=1.0, horizon=10)
  assert controller.update(controller.init(), 5.0, 3).coef == 0.0


# ----------------------------------------------------------------------------
# Fixed controller.


def test_fixed_controller_is_constant():
  controller = jaxkl.fixed_kl_controller(0.05)
  state = controller.init()
  assert state.coef.dtype == jnp.float32 and state.coef.shape == ()
  np.testing.assert_allclose(state.coef, 0.05)
  kls = jnp.array([0.0, 3.0, 100.0, np.inf])
  final, coefs = _scan(controller, kls, jnp.array([1, 10, 100, 1000]))
  np.testing.assert_array_equal(coefs, np.full(4, np.float32(0.05)))
  assert final.coef == state.coef
  assert controller.update(state, 7.0, 3) is state


# ----------------------------------------------------------------------------
# The state: a pytree of arrays, copied and pickled.


@pytest.mark.parametrize(
  "controller",
  [jaxkl.fixed_kl_controller(0.5), jaxkl.adaptive_kl_controller(0.5, 1.0, 100)],
)
def test_state_is_a_picklable_pytree(controller):
  state = controller.update(controller.init(), 2.0, 10)
  assert isinstance(state, jaxkl.KLControllerState)
  assert isinstance(controller, jaxkl.KLController)
  assert jax.tree.leaves(state) == [state.coef]
  for other in (
    pickle.loads(pickle.dumps(state)),
    copy.deepcopy(state),
    copy.copy(state),
  ):
    assert isinstance(other, jaxkl.KLControllerState)
    assert other.coef.dtype == state.coef.dtype
    np.testing.assert_array_equal(other.coef, state.coef)
  doubled = jax.tree.map(lambda x: 2 * x, state)
  np.testing.assert_allclose(doubled.coef, 2 * state.coef)


def test_dtypes(x64):
  assert jaxkl.fixed_kl_controller(0.1).init().coef.dtype == jnp.float32
  assert jaxkl.fixed_kl_controller(np.float64(0.1)).init().coef.dtype == jnp.float64
  assert jaxkl.adaptive_kl_controller(1, 1, 1).init().coef.dtype == jnp.float32
  controller = jaxkl.adaptive_kl_controller(jnp.float64(0.1), 1, 1)
  state = controller.update(controller.init(), jnp.float32(2.0), jnp.int32(1))
  assert state.coef.dtype == jnp.float64


def test_dtypes_without_x64():
  assert jaxkl.fixed_kl_controller(np.float64(0.1)).init().coef.dtype == jnp.float32


# ----------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
  "bad, error",
  [
    (-0.1, ValueError),
    (np.nan, ValueError),
    (np.inf, ValueError),
    (True, TypeError),
    ("0.1", TypeError),
    (np.ones(2), ValueError),
    (1j, TypeError),
  ],
)
def test_bad_coefficients(bad, error):
  with pytest.raises(error, match="`coef`"):
    jaxkl.fixed_kl_controller(bad)
  with pytest.raises(error, match="`init_coef`"):
    jaxkl.adaptive_kl_controller(bad, target=1.0, horizon=1.0)


@pytest.mark.parametrize("name", ["target", "horizon"])
@pytest.mark.parametrize("bad", [0, -1.0, np.inf, np.nan])
def test_bad_target_and_horizon(name, bad):
  kwargs = {"init_coef": 0.1, "target": 1.0, "horizon": 1.0, name: bad}
  with pytest.raises(ValueError, match=f"`{name}` must be finite and > 0"):
    jaxkl.adaptive_kl_controller(**kwargs)


def test_traced_hyperparameter_is_refused():
  with pytest.raises(TypeError, match="concrete"):
    jax.jit(lambda c: jaxkl.adaptive_kl_controller(c, 1.0, 1.0).init().coef)(0.1)


@pytest.mark.parametrize(
  "controller",
  [jaxkl.fixed_kl_controller(0.5), jaxkl.adaptive_kl_controller(0.5, 1.0, 100)],
)
def test_update_arguments_must_be_real_scalars(controller):
  state = controller.init()
  with pytest.raises(ValueError, match="`current_kl` must be a scalar"):
    controller.update(state, jnp.ones(3), 1)
  with pytest.raises(ValueError, match="`n_steps` must be a scalar"):
    controller.update(state, 1.0, jnp.ones(2))
  with pytest.raises(TypeError, match="`current_kl` must be a real number"):
    controller.update(state, True, 1)


@pytest.mark.parametrize("steps", [50_000, 60_000, 10**6])
def test_coefficient_never_goes_negative(steps):
  """1 + e n / h < 0 for e = -0.2 and n > 5 h: the recursion would flip the
  sign (a reward for diverging); the coefficient stops at 0 and stays."""
  controller = jaxkl.adaptive_kl_controller(0.05, target=6.0, horizon=10_000)
  state = controller.update(controller.init(), 0.0, steps)
  assert float(state.coef) == (0.0 if steps > 50_000 else 0.05 * (1 - 0.2 * 5))
  state = controller.update(state, 100.0, 1000)  # 0 is absorbing, as beta_0 = 0
  assert float(state.coef) == 0.0


def test_negative_steps_and_string_kl_are_refused():
  controller = jaxkl.adaptive_kl_controller(0.05, target=6.0, horizon=10_000)
  with pytest.raises(ValueError, match="`n_steps` must be >= 0; got -1"):
    controller.update(controller.init(), 1.0, -1)
  with pytest.raises(TypeError, match="`current_kl` must be a real number"):
    controller.update(controller.init(), "3.0", 1)
