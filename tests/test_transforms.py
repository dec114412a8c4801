"""kl_div under jit, vmap, grad, jvp, hessian and check_grads."""

import functools
import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from absl.testing import parameterized
from jax.test_util import check_grads

import jaxkl

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def _problem(seed=0, shape=(3, 5), zeros=True):
  rng = np.random.default_rng(seed)
  q = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
  p = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
  if zeros:
    p[..., 0] = 0.0
    p = p / p.sum(-1, keepdims=True)
  return np.log(q), p


def _reference(log_q, p, reduction):
  """float64 NumPy reference built on scipy's rel_entr."""
  terms = scipy.special.rel_entr(p, np.exp(log_q))
  return {
    "none": terms,
    "sum": terms.sum(),
    "mean": terms.mean(),
    "batchmean": terms.sum() / terms.shape[0],
  }[reduction]


class KlDivVariantsTest(chex.TestCase):
  """Core values with and without jit (chex variants)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(reduction=REDUCTIONS, log_target=(False, True))
  def test_values(self, reduction, log_target):
    log_q, p = _problem()
    target = np.log(p) if log_target else p

    @self.variant
    def loss(x, t):
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jaxkl.kl_div(x, t, reduction=reduction, log_target=log_target)

    got = loss(jnp.asarray(log_q, jnp.float32), jnp.asarray(target, jnp.float32))
    np.testing.assert_allclose(
      got, _reference(log_q, p, reduction), rtol=2e-5, atol=1e-6
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_gradient_wrt_input_is_minus_target_over_batch(self):
    log_q, p = _problem()

    @self.variant
    def grad(x, t):
      return jax.grad(jaxkl.kl_div)(x, t, reduction="batchmean")

    got = grad(jnp.asarray(log_q, jnp.float32), jnp.asarray(p, jnp.float32))
    np.testing.assert_allclose(got, -p / 3, rtol=1e-6, atol=1e-7)


def test_jit_with_static_options():
  log_q, p = _problem()
  loss = jax.jit(jaxkl.kl_div, static_argnames=("reduction", "log_target"))
  np.testing.assert_allclose(
    loss(
      jnp.asarray(log_q, jnp.float32),
      jnp.asarray(p, jnp.float32),
      reduction="batchmean",
    ),
    _reference(log_q, p, "batchmean"),
    rtol=1e-5,
  )


def test_vmap_gives_per_example_kl(x64):
  log_q, p = _problem(shape=(6, 7))
  per_example = jax.vmap(functools.partial(jaxkl.kl_div, reduction="sum"))(
    jnp.asarray(log_q), jnp.asarray(p)
  )
  assert per_example.shape == (6,)
  np.testing.assert_allclose(
    per_example, _reference(log_q, p, "none").sum(-1), rtol=1e-13
  )
  # vmap over the batch of a 3-d input, batchmean inside: per-group averages.
  log_q3, p3 = _problem(shape=(2, 4, 5))
  grouped = jax.vmap(functools.partial(jaxkl.kl_div, reduction="batchmean"))(
    jnp.asarray(log_q3), jnp.asarray(p3)
  )
  np.testing.assert_allclose(
    grouped, _reference(log_q3, p3, "none").sum((1, 2)) / 4, rtol=1e-13
  )


@pytest.mark.parametrize("log_target", [False, True])
def test_gradients_wrt_both_arguments_closed_form(log_target, x64):
  log_q, p = _problem(zeros=False)
  target = np.log(p) if log_target else p
  grad_x, grad_t = jax.grad(jaxkl.kl_div, argnums=(0, 1))(
    jnp.asarray(log_q), jnp.asarray(target), reduction="sum", log_target=log_target
  )
  np.testing.assert_allclose(grad_x, -p, rtol=1e-13)
  # d/dp [p log p - p log q] = log p + 1 - log q ; chain rule for log p.
  expected_t = np.log(p) + 1 - log_q
  if log_target:
    expected_t = expected_t * p
  np.testing.assert_allclose(grad_t, expected_t, rtol=1e-12)


@pytest.mark.parametrize("log_target", [False, True])
def test_jvp_matches_finite_differences_and_linearity(log_target, x64):
  log_q, p = _problem(zeros=False)
  target = np.log(p) if log_target else p
  rng = np.random.default_rng(7)
  dx, dt = rng.normal(size=log_q.shape), rng.normal(size=p.shape)

  def f(x, t):
    return jaxkl.kl_div(x, t, reduction="batchmean", log_target=log_target)

  primal, tangent = jax.jvp(
    f, (jnp.asarray(log_q), jnp.asarray(target)), (jnp.asarray(dx), jnp.asarray(dt))
  )
  eps = 1e-6
  fd = (
    f(log_q + eps * dx, target + eps * dt) - f(log_q - eps * dx, target - eps * dt)
  ) / (2 * eps)
  np.testing.assert_allclose(primal, _reference(log_q, p, "batchmean"), rtol=1e-13)
  np.testing.assert_allclose(tangent, fd, rtol=1e-7)


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_check_grads_second_order(reduction, log_target, x64):
  log_q, p = _problem(zeros=False)
  target = np.log(p) if log_target else p

  def f(x, t):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return jaxkl.kl_div(x, t, reduction=reduction, log_target=log_target)

  check_grads(
    f,
    (jnp.asarray(log_q), jnp.asarray(target)),
    order=2,
    modes=("fwd", "rev"),
    eps=1e-5,
  )


def test_hessian_closed_form(x64):
  # f(x, p) = sum p (log p - x):  d2f/dp2 = diag(1/p), d2f/dx dp = -I,
  # d2f/dx2 = 0.
  log_q, p = _problem(shape=(4,), zeros=False)
  (hxx, hxp), (hpx, hpp) = jax.hessian(jaxkl.kl_div, argnums=(0, 1))(
    jnp.asarray(log_q), jnp.asarray(p), reduction="sum"
  )
  np.testing.assert_allclose(hxx, np.zeros((4, 4)), atol=0)
  np.testing.assert_allclose(hxp, -np.eye(4), atol=0)
  np.testing.assert_allclose(hpx, -np.eye(4), atol=0)
  np.testing.assert_allclose(hpp, np.diag(1 / p), rtol=1e-13)


def test_hessian_at_zero_target_is_finite_and_symmetric(x64):
  log_q = jnp.array([-jnp.inf, -1.0, math.log(0.5)])
  p = jnp.array([0.0, 0.0, 1.0])
  hessian = jax.hessian(lambda xt: jaxkl.kl_div(xt[0], xt[1], reduction="sum"))(
    jnp.stack([log_q, p])
  )
  flat = np.asarray(hessian).reshape(6, 6)
  assert np.isfinite(flat).all()
  np.testing.assert_array_equal(flat, flat.T)
  # Only the p > 0 coordinate couples x and p.
  assert flat[2, 5] == -1 and flat[5, 5] == 1 and flat[0, 3] == 0


def test_forward_reduction_has_no_select():
  """Regression guard for the fast formulation (see _pointwise.py).

  On XLA:CPU a `select` (jnp.where) inside the fused reduction makes it several
  times slower; the forward batchmean must be built from min/max/multiply.
  """
  x = jnp.zeros((8, 16))
  hlo = (
    jax.jit(functools.partial(jaxkl.kl_div, reduction="batchmean"))
    .lower(x, x)
    .compile()
    .as_text()
  )
  assert "select(" not in hlo and "compare(" not in hlo, hlo
