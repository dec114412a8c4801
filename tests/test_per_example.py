"""jaxkl.kl_divergence (per-example, optax-compatible) and jaxkl.reduce_loss."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

import jaxkl

inf = np.inf


def _problem(rng, shape, zero_fraction=0.0):
  q = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
  p = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
  p = np.where(rng.uniform(size=shape) < zero_fraction, 0.0, p)
  return np.log(q), p


# ----------------------------------------------------------------------------
# Drop-in for optax.


@hypothesis.given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    axis_choice=st.sampled_from(["last", "first", "all", "tuple"]),
    log_target=st.booleans(),
    masked=st.booleans(),
)
@hypothesis.settings(max_examples=60, deadline=None)
def test_equals_optax_where_optax_is_finite(seed, shape, axis_choice,
                                            log_target, masked):
  rng = np.random.default_rng(seed)
  log_q, p = _problem(rng, shape)  # strictly positive p: optax is finite
  axis = {"last": -1, "first": 0, "all": None,
          "tuple": tuple(range(len(shape)))}[axis_choice]
  where = rng.uniform(size=shape) < 0.7 if masked else None
  with jax.enable_x64(True):
    if log_target:
      expected = optax.losses.kl_divergence_with_log_targets(
          jnp.asarray(log_q), jnp.log(p), axis=axis, where=where)
      got = jaxkl.kl_divergence(log_q, np.log(p), axis=axis, where=where,
                                log_target=True)
    else:
      expected = optax.losses.kl_divergence(jnp.asarray(log_q), jnp.asarray(p),
                                            axis=axis, where=where)
      got = jaxkl.kl_divergence(log_q, p, axis=axis, where=where)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_nan_free_where_optax_is_nan(x64):
  log_q = jnp.array([[-inf, 0.0], [math.log(0.5), math.log(0.5)]])
  p = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  assert np.isnan(optax.losses.kl_divergence(log_q, p)[0])
  got = jaxkl.kl_divergence(log_q, p)
  np.testing.assert_allclose(got, [0.0, math.log(2)], rtol=1e-15)
  grad_x, grad_p = jax.grad(lambda a, b: jaxkl.kl_divergence(a, b).sum(),
                            argnums=(0, 1))(log_q, p)
  assert np.isfinite(grad_x).all() and np.isfinite(grad_p).all()
  np.testing.assert_array_equal(grad_p[0, 0], 0.0)


def test_matches_scipy_rel_entr_and_handles_16_bit(x64):
  rng = np.random.default_rng(0)
  log_q, p = _problem(rng, (4, 300), zero_fraction=0.2)
  expected = scipy.special.rel_entr(p, np.exp(log_q)).sum(-1)
  np.testing.assert_allclose(jaxkl.kl_divergence(log_q, p), expected,
                             rtol=1e-13)
  got16 = jaxkl.kl_divergence(jnp.asarray(log_q, jnp.bfloat16),
                              jnp.asarray(p, jnp.bfloat16))
  assert got16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got16, np.float64), expected,
                             rtol=3e-2)


# ----------------------------------------------------------------------------
# Masks.


@pytest.mark.parametrize("log_target", [False, True])
def test_where_equals_boolean_indexing(log_target, x64):
  rng = np.random.default_rng(1)
  log_q, p = _problem(rng, (6, 9), zero_fraction=0.1)
  target = np.log(p) if log_target else p
  mask = rng.uniform(size=(6, 9)) < 0.6
  got = jaxkl.kl_divergence(log_q, target, where=mask, log_target=log_target)
  for row in range(6):
    keep = mask[row]
    expected = scipy.special.rel_entr(p[row][keep], np.exp(log_q[row][keep]))
    np.testing.assert_allclose(got[row], expected.sum(), rtol=1e-13,
                               atol=1e-300)


def test_per_example_mask_broadcasts_over_the_reduced_axis(x64):
  rng = np.random.default_rng(2)
  log_q, p = _problem(rng, (5, 5))  # square: the per-row rule must win
  rows = np.array([True, False, True, False, True])
  got = jaxkl.kl_divergence(log_q, p, where=rows)
  full = jaxkl.kl_divergence(log_q, p)
  np.testing.assert_allclose(got, np.where(rows, full, 0.0), rtol=1e-15)
  # A class mask needs an explicit leading axis.
  classes = rows[None, :]
  got_classes = jaxkl.kl_divergence(log_q, p, where=classes)
  expected = scipy.special.rel_entr(p[:, rows], np.exp(log_q[:, rows])).sum(-1)
  np.testing.assert_allclose(got_classes, expected, rtol=1e-13)


@pytest.mark.parametrize("log_target", [False, True])
def test_fully_masked_row_gives_zero_with_zero_gradient(log_target, x64):
  log_q = jnp.array([[-inf, 3.0, math.log(0.5)], [-1.0, -2.0, -3.0]])
  p = jnp.array([[0.7, 0.3, 0.0], [0.2, 0.3, 0.5]])
  target = jnp.log(p) if log_target else p
  rows = jnp.array([False, True])

  def loss(a, b):
    return jaxkl.kl_divergence(a, b, where=rows, log_target=log_target).sum()

  per_row = jaxkl.kl_divergence(log_q, target, where=rows,
                                log_target=log_target)
  assert per_row[0] == 0.0
  grad_x, grad_t = jax.grad(loss, argnums=(0, 1))(log_q, target)
  np.testing.assert_array_equal(grad_x[0], 0.0)
  np.testing.assert_array_equal(grad_t[0], 0.0)
  np.testing.assert_allclose(grad_x[1], -p[1], rtol=1e-14)
  for block in jax.tree_util.tree_leaves(
      jax.hessian(loss, argnums=(0, 1))(log_q, target)):
    assert np.isfinite(block).all()


def test_bad_arguments():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="out of range"):
    jaxkl.kl_divergence(x, x, axis=2)
  with pytest.raises(ValueError, match="repeats"):
    jaxkl.kl_divergence(x, x, axis=(1, -1))
  with pytest.raises(TypeError, match="`axis` must be"):
    jaxkl.kl_divergence(x, x, axis=1.0)
  with pytest.raises(TypeError, match="`where` must be a boolean"):
    jaxkl.kl_divergence(x, x, where=jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"`where` has shape \(4,\)"):
    jaxkl.kl_divergence(x, x, where=jnp.ones(4, bool))
  with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
    jaxkl.kl_divergence(x, x.T)
  with pytest.raises(TypeError, match="`targets` must have a real floating"):
    jaxkl.kl_divergence(x, jnp.zeros((2, 3), jnp.int32))


def test_jit_vmap_and_check_grads(x64):
  rng = np.random.default_rng(3)
  log_q, p = _problem(rng, (4, 3, 6))
  p = (p + 0.1) / (p + 0.1).sum(-1, keepdims=True)  # finite differences stay > 0
  f = jax.jit(jaxkl.kl_divergence, static_argnames=("axis", "log_target"))
  np.testing.assert_allclose(f(log_q, p, axis=-1),
                             jax.vmap(jaxkl.kl_divergence)(log_q, p),
                             rtol=1e-14)
  jax.test_util.check_grads(lambda a, b: jaxkl.kl_divergence(a, b),
                            (jnp.asarray(log_q), jnp.asarray(p)), order=2,
                            modes=("fwd", "rev"))


# ----------------------------------------------------------------------------
# reduce_loss.


def test_reduce_loss_by_hand():
  values = jnp.array([1.0, 2.0, 6.0, 3.0])
  mask = jnp.array([True, False, True, False])
  assert jaxkl.reduce_loss(values, "sum", where=mask) == 7.0
  assert jaxkl.reduce_loss(values, "mean", where=mask) == 3.5
  assert jaxkl.reduce_loss(values, "batchmean", where=mask) == 1.75
  assert jaxkl.reduce_loss(values, "mean") == 3.0
  np.testing.assert_array_equal(
      jaxkl.reduce_loss(values, "none", where=mask), [1.0, 0.0, 6.0, 0.0])
  assert jaxkl.reduce_loss(values, "mean", where=jnp.zeros(4, bool)) == 0.0
  assert np.isnan(jaxkl.reduce_loss(jnp.zeros(0), "mean"))
  matrix = jnp.arange(6.0).reshape(2, 3)
  assert jaxkl.reduce_loss(matrix, "batchmean") == 7.5


def test_reduce_loss_masks_inf_and_nan_out_of_values_and_gradients():
  values = jnp.array([1.0, jnp.inf, jnp.nan])
  mask = jnp.array([True, False, False])
  assert jaxkl.reduce_loss(values, "mean", where=mask) == 1.0
  grad = jax.grad(lambda v: jaxkl.reduce_loss(v, "mean", where=mask))(values)
  np.testing.assert_array_equal(grad, [1.0, 0.0, 0.0])
  all_masked = jax.grad(
      lambda v: jaxkl.reduce_loss(v, "mean", where=jnp.zeros(3, bool)))(values)
  np.testing.assert_array_equal(all_masked, 0.0)


def test_reduce_loss_errors_and_dtype():
  with pytest.raises(ValueError, match="`reduction` must be one of"):
    jaxkl.reduce_loss(jnp.ones(3), "avg")
  with pytest.raises(ValueError, match="does not broadcast"):
    jaxkl.reduce_loss(jnp.ones(3), "sum", where=jnp.ones(4, bool))
  with pytest.raises(TypeError, match="`where` must be a boolean"):
    jaxkl.reduce_loss(jnp.ones(3), "sum", where=jnp.ones(3))
  half = jnp.full(4096, 0.1, jnp.bfloat16)
  total = jaxkl.reduce_loss(half, "sum")
  assert total.dtype == jnp.bfloat16
  # float32 accumulation: 4096 * bf16(0.1) = 409.6 rounds to 410 in bf16; a
  # bf16 running sum stalls far below that.
  np.testing.assert_allclose(float(total),
                             4096 * float(jnp.bfloat16(0.1)), rtol=4e-3)
