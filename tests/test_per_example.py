"""jaxkl.kl_divergence (per-example, optax-compatible) and jaxkl.reduce_loss."""

import contextlib
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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
def test_equals_optax_where_optax_is_finite(
  seed, shape, axis_choice, log_target, masked
):
  rng = np.random.default_rng(seed)
  log_q, p = _problem(rng, shape)  # strictly positive p: optax is finite
  axis = {"last": -1, "first": 0, "all": None, "tuple": tuple(range(len(shape)))}[
    axis_choice
  ]
  where = rng.uniform(size=shape) < 0.7 if masked else None
  with jax.enable_x64(True):
    if log_target:
      expected = optax.losses.kl_divergence_with_log_targets(
        jnp.asarray(log_q), jnp.log(p), axis=axis, where=where
      )
      got = jaxkl.kl_divergence(
        log_q, np.log(p), axis=axis, where=where, log_target=True
      )
    else:
      expected = optax.losses.kl_divergence(
        jnp.asarray(log_q), jnp.asarray(p), axis=axis, where=where
      )
      got = jaxkl.kl_divergence(log_q, p, axis=axis, where=where)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_nan_free_where_optax_is_nan(x64):
  log_q = jnp.array([[-inf, 0.0], [math.log(0.5), math.log(0.5)]])
  p = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  assert np.isnan(optax.losses.kl_divergence(log_q, p)[0])
  got = jaxkl.kl_divergence(log_q, p)
  np.testing.assert_allclose(got, [0.0, math.log(2)], rtol=1e-15)
  grad_x, grad_p = jax.grad(
    lambda a, b: jaxkl.kl_divergence(a, b).sum(), argnums=(0, 1)
  )(log_q, p)
  assert np.isfinite(grad_x).all() and np.isfinite(grad_p).all()
  np.testing.assert_array_equal(grad_p[0, 0], 0.0)


def test_matches_scipy_rel_entr_and_handles_16_bit(x64):
  rng = np.random.default_rng(0)
  log_q, p = _problem(rng, (4, 300), zero_fraction=0.2)
  expected = scipy.special.rel_entr(p, np.exp(log_q)).sum(-1)
  np.testing.assert_allclose(jaxkl.kl_divergence(log_q, p), expected, rtol=1e-13)
  got16 = jaxkl.kl_divergence(
    jnp.asarray(log_q, jnp.bfloat16), jnp.asarray(p, jnp.bfloat16)
  )
  assert got16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got16, np.float64), expected, rtol=3e-2)


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
    np.testing.assert_allclose(got[row], expected.sum(), rtol=1e-13, atol=1e-300)


def test_per_example_mask_and_explicit_spellings(x64):
  rng = np.random.default_rng(2)
  log_q, p = _problem(rng, (5, 4))
  rows = np.array([True, False, True, False, True])
  full = jaxkl.kl_divergence(log_q, p)
  for where in (rows, rows[:, None]):  # [B] and [B, 1] mask rows
    got = jaxkl.kl_divergence(log_q, p, where=where)
    np.testing.assert_allclose(got, np.where(rows, full, 0.0), rtol=1e-15)
  classes = np.array([True, False, True, True])
  for where in (classes, classes[None, :]):  # [C] (C != B) and [1, C]
    got = jaxkl.kl_divergence(log_q, p, where=where)
    expected = scipy.special.rel_entr(p[:, classes], np.exp(log_q[:, classes])).sum(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_ambiguous_square_mask_raises_with_both_spellings(x64):
  # [C] against [B, C] with B == C: jaxkl's per-row reading or optax's class
  # mask. Neither is guessed; both explicit spellings work.
  rng = np.random.default_rng(2)
  log_q, p = _problem(rng, (5, 5))
  mask = np.array([True, False, True, False, True])
  with pytest.raises(ValueError) as info:
    jaxkl.kl_divergence(log_q, p, where=mask)
  message = str(info.value)
  assert "where.reshape(5, 1)" in message and "(5, 1)" in message
  assert "where.reshape(1, 5)" in message and "masks classes" in message
  assert "optax" in message
  rows = jaxkl.kl_divergence(log_q, p, where=mask.reshape(5, 1))
  np.testing.assert_allclose(
    rows, np.where(mask, jaxkl.kl_divergence(log_q, p), 0), rtol=1e-15
  )
  classes = jaxkl.kl_divergence(log_q, p, where=mask.reshape(1, 5))
  expected = optax.losses.kl_divergence(
    jnp.asarray(log_q), jnp.asarray(p), where=mask.reshape(1, 5)
  )
  np.testing.assert_allclose(classes, expected, rtol=1e-13)


def _mask_reading(mask_shape, shape, axes):
  """The rule, brute force: the element index each input entry reads, or
  'ambiguous' / 'invalid'. Independent of jaxkl's stride arithmetic."""
  ids = np.arange(math.prod(mask_shape)).reshape(mask_shape)
  per_example = tuple(d for i, d in enumerate(shape) if i not in axes)
  readings = []
  if axes and mask_shape == per_example and len(per_example) < len(shape):
    readings.append(np.broadcast_to(np.expand_dims(ids, axes), shape))
  with contextlib.suppress(ValueError):
    readings.append(np.broadcast_to(ids, shape))
  if not readings:
    return "invalid"
  if len(readings) == 2 and not np.array_equal(*readings):
    return "ambiguous"
  return readings[0]


@hypothesis.given(data=st.data())
@hypothesis.settings(max_examples=80, deadline=None)
def test_mask_rule_property(data):
  """Every mask shape against every input shape and axis: the mask is read
  per example, broadcast by NumPy's rules, or refused when the two readings
  differ (or neither applies); values equal boolean indexing."""
  ndim = data.draw(st.integers(1, 3), label="ndim")
  # Small sizes, often equal, so that ambiguous shapes come up.
  shape = tuple(
    data.draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim), label="shape")
  )
  axes = tuple(
    sorted(data.draw(st.sets(st.integers(0, ndim - 1), min_size=1), label="axes"))
  )
  per_example = tuple(d for i, d in enumerate(shape) if i not in axes)
  mask_shape = data.draw(
    st.one_of(
      st.just(per_example),
      st.lists(st.integers(1, 3), max_size=ndim).map(tuple),
      st.lists(st.sampled_from([0, 1]), min_size=ndim, max_size=ndim).map(
        lambda keep: tuple(d if k else 1 for d, k in zip(shape, keep, strict=False))
      ),
    ),
    label="mask shape",
  )
  seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
  rng = np.random.default_rng(seed)
  log_q = np.log(rng.uniform(0.05, 1.0, size=shape))
  p = rng.uniform(0.0, 1.0, size=shape)
  mask = rng.uniform(size=mask_shape) < 0.6
  reading = _mask_reading(mask_shape, shape, axes)
  axis = axes if len(axes) > 1 else axes[0]
  with jax.enable_x64(True):
    if isinstance(reading, str):
      with pytest.raises(ValueError) as info:
        jaxkl.kl_divergence(log_q, p, axis=axis, where=mask)
      if reading == "ambiguous":
        assert "two ways" in str(info.value)
      return
    got = jaxkl.kl_divergence(log_q, p, axis=axis, where=mask)
  keep = mask.ravel()[reading]
  expected = np.where(keep, scipy.special.rel_entr(p, np.exp(log_q)), 0).sum(axis=axes)
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)


def _mesh_1():
  return jax.make_mesh((1,), ("model",))


def _vocab_parallel(s, t, **kwargs):
  """vocab_parallel_kl_from_logits under shard_map on a 1-device mesh."""
  mesh = _mesh_1()
  spec = P(None, "model")
  fn = jax.jit(
    jax.shard_map(
      lambda a, b: jaxkl.vocab_parallel_kl_from_logits(
        a, b, axis_name="model", **kwargs
      ),
      mesh=mesh,
      in_specs=(spec, spec),
      out_specs=P(),
    )
  )
  put = lambda x: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
  return fn(put(s), put(t))


# Every public function with a class axis that takes `where`.
_CLASS_AXIS_MASKED = {
  "kl_divergence": lambda s, t, **kw: jaxkl.kl_divergence(
    jax.nn.log_softmax(s), jax.nn.softmax(t), **kw
  ),
  "kl_divergence_from_logits": jaxkl.kl_divergence_from_logits,
  "jensen_shannon_from_logits": jaxkl.jensen_shannon_from_logits,
  "divergence_from_logits(reverse)": lambda s, t, **kw: jaxkl.divergence_from_logits(
    s, t, divergence="reverse", **kw
  ),
  "vocab_parallel_kl_from_logits": _vocab_parallel,
  "kl_from_samples": lambda s, t, **kw: jaxkl.kl_from_samples(s, t, axis=1, **kw),
}


@pytest.mark.parametrize("name", sorted(_CLASS_AXIS_MASKED))
def test_every_class_axis_function_applies_the_mask_rule(name):
  fn = _CLASS_AXIS_MASKED[name]
  rng = np.random.default_rng(7)
  s = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
  mask = np.array([True, False, True, True])
  # A float 0/1 mask: TypeError naming the fix.
  with pytest.raises(TypeError, match=r"where\.astype\(bool\)"):
    fn(s, t, where=mask.astype(np.float32))
  # [C] against [B, C] with B == C: refused, both spellings given.
  with pytest.raises(
    ValueError,
    match=r"where\.reshape\(4, 1\).*"
    r"where\.reshape\(1, 4\)",
  ):
    fn(s, t, where=mask)
  # The explicit spellings mean what they say.
  full = fn(s, t)
  rows = fn(s, t, where=mask.reshape(4, 1))
  np.testing.assert_allclose(rows, np.where(mask, full, 0), rtol=1e-6)
  classes = fn(s, t, where=mask.reshape(1, 4))
  same = fn(s, t, where=np.broadcast_to(mask.reshape(1, 4), (4, 4)))
  np.testing.assert_allclose(classes, same, rtol=1e-6)
  # With B != C there is one reading: [B] masks examples.
  rows_only = fn(s[:3], t[:3], where=mask[:3])
  np.testing.assert_allclose(rows_only, np.where(mask[:3], full[:3], 0), rtol=1e-6)


def test_token_masks_are_never_read_as_class_masks():
  # distillation_loss and the fused loss take per-token masks; with as many
  # tokens as classes they must still mask tokens (not raise, not guess).
  rng = np.random.default_rng(8)
  s = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
  keep = np.array([True, False, True, False])
  per_token = jaxkl.kl_divergence_from_logits(s, t)
  got = jaxkl.distillation_loss(s, t, where=keep, reduction="none")
  np.testing.assert_allclose(got, np.where(keep, per_token, 0), rtol=1e-6)
  eye = jnp.eye(4, dtype=jnp.float32)
  fused = jaxkl.fused_linear_distillation_loss(
    s, eye, t, eye, where=keep, reduction="none", chunk_size=4
  )
  np.testing.assert_allclose(fused, np.where(keep, per_token, 0), rtol=1e-5)
  for fn in (
    lambda w: jaxkl.distillation_loss(s, t, where=w),
    lambda w: jaxkl.fused_linear_distillation_loss(s, eye, t, eye, where=w),
    lambda w: jaxkl.reduce_loss(per_token, "mean", where=w),
  ):
    with pytest.raises(TypeError, match=r"where\.astype\(bool\)"):
      fn(keep.astype(np.float32))
    with pytest.raises(TypeError, match=r"where\.astype\(bool\)"):
      fn(keep.astype(np.int32))


@pytest.mark.parametrize("log_target", [False, True])
def test_fully_masked_row_gives_zero_with_zero_gradient(log_target, x64):
  log_q = jnp.array([[-inf, 3.0, math.log(0.5)], [-1.0, -2.0, -3.0]])
  p = jnp.array([[0.7, 0.3, 0.0], [0.2, 0.3, 0.5]])
  target = jnp.log(p) if log_target else p
  rows = jnp.array([False, True])

  def loss(a, b):
    return jaxkl.kl_divergence(a, b, where=rows, log_target=log_target).sum()

  per_row = jaxkl.kl_divergence(log_q, target, where=rows, log_target=log_target)
  assert per_row[0] == 0.0
  grad_x, grad_t = jax.grad(loss, argnums=(0, 1))(log_q, target)
  np.testing.assert_array_equal(grad_x[0], 0.0)
  np.testing.assert_array_equal(grad_t[0], 0.0)
  np.testing.assert_allclose(grad_x[1], -p[1], rtol=1e-14)
  for block in jax.tree_util.tree_leaves(
    jax.hessian(loss, argnums=(0, 1))(log_q, target)
  ):
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
  np.testing.assert_allclose(
    f(log_q, p, axis=-1), jax.vmap(jaxkl.kl_divergence)(log_q, p), rtol=1e-14
  )
  jax.test_util.check_grads(
    lambda a, b: jaxkl.kl_divergence(a, b),
    (jnp.asarray(log_q), jnp.asarray(p)),
    order=2,
    modes=("fwd", "rev"),
  )


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
    jaxkl.reduce_loss(values, "none", where=mask), [1.0, 0.0, 6.0, 0.0]
  )
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
    lambda v: jaxkl.reduce_loss(v, "mean", where=jnp.zeros(3, bool))
  )(values)
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
  np.testing.assert_allclose(float(total), 4096 * float(jnp.bfloat16(0.1)), rtol=4e-3)
