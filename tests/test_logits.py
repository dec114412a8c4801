"""Divergences from logits and the distillation loss."""

import functools
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jaxkl

inf = np.inf


def torch_forward_kl(s, t, temperature):
  """PyTorch's composition: KL(softmax(t/T) || softmax(s/T)) per row."""
  s = torch.as_tensor(np.asarray(s, np.float64))
  t = torch.as_tensor(np.asarray(t, np.float64))
  return (
    F.kl_div(
      F.log_softmax(s / temperature, -1),
      F.log_softmax(t / temperature, -1),
      log_target=True,
      reduction="none",
    )
    .sum(-1)
    .numpy()
  )


def numpy_divergences(s, t, temperature, beta):
  """float64 NumPy forward KL, reverse KL and generalized JSD per row."""

  def log_softmax(z):
    z = z / temperature
    return z - scipy_logsumexp(z)

  def scipy_logsumexp(z):
    m = z.max(-1, keepdims=True)
    return m + np.log(np.exp(z - m).sum(-1, keepdims=True))

  log_q, log_p = log_softmax(s), log_softmax(t)
  p, q = np.exp(log_p), np.exp(log_q)
  forward = (p * (log_p - log_q)).sum(-1)
  reverse = (q * (log_q - log_p)).sum(-1)
  m = beta * p + (1 - beta) * q
  jsd = beta * (p * (log_p - np.log(m))).sum(-1) + (1 - beta) * (
    q * (log_q - np.log(m))
  ).sum(-1)
  return forward, reverse, jsd


@hypothesis.given(
  seed=st.integers(0, 2**32 - 1),
  batch=st.integers(1, 4),
  classes=st.integers(1, 40),
  temperature=st.sampled_from([0.5, 1.0, 2.0, 7.5]),
  scale=st.sampled_from([1.0, 30.0]),
)
@hypothesis.settings(max_examples=40, deadline=None)
def test_forward_kl_equals_torch_composition(seed, batch, classes, temperature, scale):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(batch, classes)) * scale
  t = rng.normal(size=(batch, classes)) * scale
  with jax.enable_x64(True):
    got = jaxkl.kl_divergence_from_logits(s, t, temperature=temperature)
  np.testing.assert_allclose(
    got, torch_forward_kl(s, t, temperature), rtol=1e-11, atol=1e-13
  )


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_reverse_and_jsd_equal_numpy(beta, x64):
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(5, 17)) * 3, rng.normal(size=(5, 17)) * 3
  forward, reverse, jsd = numpy_divergences(s, t, 1.5, beta)
  kwargs = dict(temperature=1.5)
  np.testing.assert_allclose(
    jaxkl.divergence_from_logits(s, t, divergence="forward", **kwargs),
    forward,
    rtol=1e-12,
  )
  np.testing.assert_allclose(
    jaxkl.divergence_from_logits(s, t, divergence="reverse", **kwargs),
    reverse,
    rtol=1e-12,
  )
  np.testing.assert_allclose(
    jaxkl.jensen_shannon_from_logits(s, t, beta=beta, **kwargs), jsd, rtol=1e-12
  )
  # Reverse KL is forward KL with the roles swapped.
  np.testing.assert_allclose(
    jaxkl.divergence_from_logits(s, t, divergence="reverse", **kwargs),
    jaxkl.kl_divergence_from_logits(t, s, **kwargs),
    rtol=1e-14,
  )


def test_jsd_endpoints_and_bounds(x64):
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(4, 9)), rng.normal(size=(4, 9))
  np.testing.assert_allclose(
    jaxkl.jensen_shannon_from_logits(s, t, beta=0.0),
    jaxkl.kl_divergence_from_logits(s, t),
    rtol=1e-15,
  )
  np.testing.assert_allclose(
    jaxkl.jensen_shannon_from_logits(s, t, beta=1.0),
    jaxkl.kl_divergence_from_logits(t, s),
    rtol=1e-15,
  )
  # Symmetric at beta = 1/2, bounded by log 2, zero iff equal.
  half = jaxkl.jensen_shannon_from_logits(s, t)
  np.testing.assert_allclose(half, jaxkl.jensen_shannon_from_logits(t, s), rtol=1e-13)
  assert np.all(half > 0) and np.all(half <= math.log(2))
  np.testing.assert_allclose(jaxkl.jensen_shannon_from_logits(s, s), 0.0, atol=1e-15)
  # Disjoint supports reach log 2 exactly; -inf logits are masked classes.
  disjoint = jaxkl.jensen_shannon_from_logits(
    jnp.array([-inf, 0.0, -inf]), jnp.array([0.0, -inf, -inf])
  )
  np.testing.assert_allclose(disjoint, math.log(2), rtol=1e-15)


def test_extreme_and_masked_vocabulary_logits(x64):
  s = jnp.array([[1e4, 0.0, -1e4, -inf], [0.0, 0.0, 0.0, -inf]])
  t = jnp.array([[0.0, 1e4, -1e4, -inf], [0.0, 1.0, -inf, -inf]])
  got = jaxkl.kl_divergence_from_logits(s, t)
  # Row 0: teacher puts all mass on class 1 where the student's log-prob is
  # -1e4: KL = 1e4. Row 1: finite, the -inf columns contribute nothing.
  np.testing.assert_allclose(got[0], 1e4, rtol=1e-12)
  np.testing.assert_allclose(
    got[1],
    torch_forward_kl(np.array([[0.0, 0.0, 0.0]]), np.array([[0.0, 1.0, -1e300]]), 1.0)[
      0
    ],
    rtol=1e-12,
  )
  grads = jax.grad(lambda a: jaxkl.kl_divergence_from_logits(a, t).sum())(s)
  assert np.isfinite(grads).all()
  # Teacher mass where the student has -inf logit: infinite divergence.
  assert (
    jaxkl.kl_divergence_from_logits(jnp.array([0.0, -inf]), jnp.array([0.0, 0.0]))
    == inf
  )


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_gradient_closed_form_and_check_grads(temperature, x64):
  rng = np.random.default_rng(2)
  s, t = rng.normal(size=(3, 7)) * 2, rng.normal(size=(3, 7)) * 2
  grad = jax.grad(
    lambda a: jaxkl.kl_divergence_from_logits(a, t, temperature=temperature).sum()
  )(s)
  expected = (
    jax.nn.softmax(s / temperature) - jax.nn.softmax(t / temperature)
  ) / temperature
  np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)
  for divergence in ("forward", "reverse", "jsd"):
    jax.test_util.check_grads(
      lambda a, b, d=divergence: jaxkl.divergence_from_logits(
        a, b, divergence=d, beta=0.3, temperature=temperature
      ),
      (jnp.asarray(s), jnp.asarray(t)),
      order=2,
      modes=("fwd", "rev"),
    )


@pytest.mark.parametrize(
  "divergence,beta", [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.3)]
)
def test_check_grads_second_order_with_temperature(divergence, beta, x64):
  """Every from-logits rule is differentiable twice, temperature included."""
  rng = np.random.default_rng(12)
  s, t = rng.normal(size=(3, 6)) * 2, rng.normal(size=(3, 6)) * 2
  labels = np.array([0, -100, 2])
  jax.test_util.check_grads(
    lambda a, b, temp: jaxkl.divergence_from_logits(
      a, b, divergence=divergence, beta=beta, temperature=temp
    ),
    (jnp.asarray(s), jnp.asarray(t), jnp.asarray(1.7)),
    order=2,
    modes=("fwd", "rev"),
  )
  jax.test_util.check_grads(
    lambda a, b, temp: jaxkl.distillation_loss(
      a, b, divergence=divergence, beta=beta, temperature=temp, labels=labels
    ),
    (jnp.asarray(s), jnp.asarray(t), jnp.asarray(0.8)),
    order=2,
    modes=("fwd", "rev"),
  )


def test_traced_temperature(x64):
  rng = np.random.default_rng(3)
  s, t = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
  f = jax.jit(lambda temp: jaxkl.kl_divergence_from_logits(s, t, temperature=temp))
  np.testing.assert_allclose(f(2.0), torch_forward_kl(s, t, 2.0), rtol=1e-12)
  d_temperature = jax.grad(lambda temp: f(temp).sum())(2.0)
  eps = 1e-6
  fd = (f(2.0 + eps).sum() - f(2.0 - eps).sum()) / (2 * eps)
  np.testing.assert_allclose(d_temperature, fd, rtol=1e-6)


# ----------------------------------------------------------------------------
# distillation_loss.


def test_distillation_loss_by_hand_and_gradient(x64):
  rng = np.random.default_rng(4)
  s, t = rng.normal(size=(2, 3, 11)), rng.normal(size=(2, 3, 11))
  temperature = 2.5
  labels = np.array([[1, -100, 3], [-100, -100, 7]])
  keep = labels != -100
  forward, _, _ = numpy_divergences(s, t, temperature, 0.5)
  expected = temperature**2 * forward[keep].mean()
  loss_fn = lambda a: jaxkl.distillation_loss(  # noqa: E731
    a, t, temperature=temperature, labels=labels
  )
  np.testing.assert_allclose(loss_fn(s), expected, rtol=1e-12)
  # Gradient: T (softmax(s/T) - softmax(t/T)) / #kept tokens, 0 elsewhere.
  closed = (
    temperature
    * (jax.nn.softmax(s / temperature) - jax.nn.softmax(t / temperature))
    / float(keep.sum())
  )
  closed = np.where(keep[..., None], closed, 0.0)
  np.testing.assert_allclose(jax.grad(loss_fn)(s), closed, rtol=1e-11, atol=1e-15)
  # A boolean mask and labels combine.
  where = np.array([[True, True, False], [True, True, True]])
  np.testing.assert_allclose(
    jaxkl.distillation_loss(s, t, temperature=temperature, labels=labels, where=where),
    temperature**2 * forward[keep & where].mean(),
    rtol=1e-12,
  )


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_distillation_loss_reductions(reduction, divergence, x64):
  rng = np.random.default_rng(5)
  s, t = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  mask = np.array([True, False, True, True])
  per_token = dict(
    zip(("forward", "reverse", "jsd"), numpy_divergences(s, t, 2.0, 0.3), strict=False)
  )[divergence]
  per_token = 4.0 * np.where(mask, per_token, 0.0)
  expected = {
    "none": per_token,
    "sum": per_token.sum(),
    "mean": per_token.sum() / mask.sum(),
    "batchmean": per_token.sum() / 4,
  }[reduction]
  got = jaxkl.distillation_loss(
    s,
    t,
    temperature=2.0,
    divergence=divergence,
    beta=0.3,
    where=mask,
    reduction=reduction,
  )
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_all_tokens_ignored_gives_zero_and_zero_gradient():
  s, t = jnp.ones((3, 4)), jnp.zeros((3, 4))
  labels = jnp.full((3,), -100)
  loss, grad = jax.value_and_grad(
    lambda a: jaxkl.distillation_loss(a, t, labels=labels)
  )(s)
  assert loss == 0.0
  np.testing.assert_array_equal(grad, 0.0)


def test_ignored_tokens_may_hold_garbage_logits():
  s = jnp.array([[0.0, 1.0], [jnp.nan, -1e30]])
  t = jnp.array([[1.0, 0.0], [-inf, -inf]])  # an all -inf (NaN softmax) row
  labels = jnp.array([0, -100])
  loss, grad = jax.value_and_grad(
    lambda a: jaxkl.distillation_loss(a, t, labels=labels)
  )(s)
  expected = jaxkl.distillation_loss(s[:1], t[:1])
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert np.isfinite(grad).all()


def test_bfloat16_logits_accumulate_in_float32():
  rng = np.random.default_rng(6)
  s = rng.normal(size=(8, 1000)).astype(np.float32)
  t = rng.normal(size=(8, 1000)).astype(np.float32)
  s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  got = jaxkl.kl_divergence_from_logits(s16, t16)
  assert got.dtype == jnp.bfloat16
  reference = torch_forward_kl(
    np.asarray(s16, np.float64), np.asarray(t16, np.float64), 1.0
  )
  np.testing.assert_allclose(np.asarray(got, np.float64), reference, rtol=1e-2)


def test_bad_arguments():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="`temperature` must be a finite number"):
    jaxkl.kl_divergence_from_logits(x, x, temperature=0.0)
  with pytest.raises(ValueError, match="`temperature`"):
    jaxkl.distillation_loss(x, x, temperature=-1)
  with pytest.raises(ValueError, match="`divergence` must be one of"):
    jaxkl.distillation_loss(x, x, divergence="symmetric")
  with pytest.raises(ValueError, match=r"`beta` must be in \[0, 1\]"):
    jaxkl.jensen_shannon_from_logits(x, x, beta=1.5)
  with pytest.raises(TypeError, match="`beta` must be a Python float"):
    jaxkl.jensen_shannon_from_logits(x, x, beta=jnp.array(0.5))
  with pytest.raises(ValueError, match="per-token shape"):
    jaxkl.distillation_loss(x, x, labels=jnp.zeros(3, jnp.int32))
  with pytest.raises(TypeError, match="`labels` must be integers"):
    jaxkl.distillation_loss(x, x, labels=jnp.zeros(2))
  with pytest.raises(ValueError, match="`reduction` must be one of"):
    jaxkl.distillation_loss(x, x, reduction="avg")
  with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
    jaxkl.kl_divergence_from_logits(x, x.T)


# ----------------------------------------------------------------------------
# Masks within examples: the kept classes' partial sum, as kl_divergence.


def _vocab_parallel_fn(divergence, beta, mask_spec):
  """``f(s, t, temperature, where)`` by vocab_parallel_kl_from_logits on a
  one-device mesh (class axis "split" over it); ``mask_spec`` None: no mask."""
  mesh = jax.make_mesh((1,), ("model",), axis_types=(AxisType.Auto,))
  spec = P(None, "model")

  def local(a, b, temperature, where=None):
    return jaxkl.vocab_parallel_kl_from_logits(
      a,
      b,
      axis_name="model",
      divergence=divergence,
      beta=beta,
      temperature=temperature,
      where=where,
    )

  if mask_spec is None:
    mapped = jax.shard_map(
      lambda a, b, temperature: local(a, b, temperature),
      mesh=mesh,
      in_specs=(spec, spec, P()),
      out_specs=P(),
    )
    return jax.jit(lambda a, b, temperature, where: mapped(a, b, temperature))
  return jax.jit(
    jax.shard_map(
      local, mesh=mesh, in_specs=(spec, spec, P(), mask_spec), out_specs=P()
    )
  )


def torch_masked_sums(s, t, temperature, mask, reverse=False):
  """PyTorch float64: per row, the kept classes' sum of p (log p - log q)
  (P from ``t``, Q from ``s``; swapped with ``reverse``), and the gradients
  of its sum weighted by ``linspace(0.5, 1.5, rows)`` w.r.t. s and t."""
  s = torch.tensor(np.asarray(s, np.float64), requires_grad=True)
  t = torch.tensor(np.asarray(t, np.float64), requires_grad=True)
  log_q = F.log_softmax(s / temperature, -1)
  log_p = F.log_softmax(t / temperature, -1)
  if reverse:
    log_q, log_p = log_p, log_q
  terms = F.kl_div(log_q, log_p, log_target=True, reduction="none")
  keep = torch.as_tensor(np.broadcast_to(mask, terms.shape).astype(np.float64))
  per_row = (terms * keep).sum(-1)
  weights = torch.linspace(0.5, 1.5, per_row.shape[0], dtype=torch.float64)
  (per_row * weights).sum().backward()
  return per_row.detach().numpy(), s.grad.numpy(), t.grad.numpy()


def test_class_mask_partial_sums_can_be_negative_worked_example():
  """The tester's example: [0, 0] before the fix (clamped)."""
  s = jnp.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
  t = jnp.array([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
  w = jnp.array([[True, True, False]])
  want, _, _ = torch_masked_sums(s, t, 1.0, np.asarray(w))
  np.testing.assert_allclose(want, [-0.213014, -0.211942], atol=1e-6)
  want_reverse, _, _ = torch_masked_sums(s, t, 1.0, np.asarray(w), reverse=True)
  optax_like = jaxkl.kl_divergence(
    jax.nn.log_softmax(s), jax.nn.log_softmax(t), log_target=True, where=w
  )
  np.testing.assert_allclose(optax_like, want, rtol=1e-5)
  for got in (
    jaxkl.kl_divergence_from_logits(s, t, where=w),
    jaxkl.divergence_from_logits(s, t, where=w),
    _vocab_parallel_fn("forward", 0.5, P(None, "model"))(s, t, 1.0, w),
  ):
    np.testing.assert_allclose(got, want, rtol=1e-5)
  for got in (
    jaxkl.divergence_from_logits(s, t, divergence="reverse", where=w),
    _vocab_parallel_fn("reverse", 0.5, P(None, "model"))(s, t, 1.0, w),
  ):
    np.testing.assert_allclose(got, want_reverse, rtol=1e-5)


@hypothesis.given(
  seed=st.integers(0, 2**32 - 1),
  shape=st.sampled_from([(1, 3), (3, 5), (4, 9)]),
  mask_kind=st.sampled_from(["classes", "entries"]),
  divergence=st.sampled_from(["forward", "reverse", "jsd"]),
  temperature=st.sampled_from([0.5, 1.0, 3.0]),
  scale=st.sampled_from([1.0, 4.0]),
  keep_fraction=st.sampled_from([0.3, 0.7]),
)
@hypothesis.settings(max_examples=30, deadline=None)
def test_masks_within_examples_equal_kl_divergence_of_log_softmaxes(
  seed, shape, mask_kind, divergence, temperature, scale, keep_fraction
):
  """Any mask within examples ([1, C] classes or [B, C] entries): the value
  is the kept classes' sum of p (log p - log q), unclamped (it may be
  negative), equal to kl_divergence of the log-softmaxes (optax's
  composition) and to PyTorch's, values and gradients; JSD is >= 0."""
  rng = np.random.default_rng(seed)
  s, t = (rng.normal(size=shape) * scale for _ in range(2))
  mask_shape = (1, shape[1]) if mask_kind == "classes" else shape
  mask = rng.random(mask_shape) < keep_fraction
  weights = np.linspace(0.5, 1.5, shape[0])
  with jax.enable_x64(True):

    def ours(a, b):
      return jaxkl.divergence_from_logits(
        a, b, divergence=divergence, beta=0.3, temperature=temperature, where=mask
      )

    value = ours(s, t)
    grads = jax.grad(lambda a, b: jnp.sum(ours(a, b) * weights), (0, 1))(s, t)
    if divergence == "jsd":
      _, _, jsd = numpy_divergences(s, t, temperature, 0.3)
      assert np.all(np.asarray(value) >= 0)
      # Per class terms, summed over the kept ones.
      log_q = s / temperature - np.log(np.exp(s / temperature).sum(-1, keepdims=True))
      log_p = t / temperature - np.log(np.exp(t / temperature).sum(-1, keepdims=True))
      p, q = np.exp(log_p), np.exp(log_q)
      log_m = np.log(0.3 * p + 0.7 * q)
      terms = 0.3 * p * (log_p - log_m) + 0.7 * q * (log_q - log_m)
      np.testing.assert_allclose(value, (terms * mask).sum(-1), rtol=1e-10, atol=1e-14)
      if mask.all():
        np.testing.assert_allclose(value, jsd, rtol=1e-10)
      return
    reverse = divergence == "reverse"
    want, want_ds, want_dt = torch_masked_sums(s, t, temperature, mask, reverse)
    np.testing.assert_allclose(value, want, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grads[0], want_ds, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(grads[1], want_dt, rtol=1e-9, atol=1e-13)

    def composition(a, b):
      log_q = jax.nn.log_softmax(a / temperature)
      log_p = jax.nn.log_softmax(b / temperature)
      if reverse:
        log_q, log_p = log_p, log_q
      return jaxkl.kl_divergence(log_q, log_p, log_target=True, where=mask)

    np.testing.assert_allclose(value, composition(s, t), rtol=1e-12, atol=1e-15)
    comp_grads = jax.grad(lambda a, b: jnp.sum(composition(a, b) * weights), (0, 1))(
      s, t
    )
    for got, want_grad in zip(grads, comp_grads, strict=True):
      np.testing.assert_allclose(got, want_grad, rtol=1e-10, atol=1e-14)
    if divergence == "forward":
      np.testing.assert_array_equal(
        jaxkl.kl_divergence_from_logits(s, t, temperature=temperature, where=mask),
        value,
      )
    # The vocabulary-parallel form agrees.
    spec = P(None, "model")
    parallel = _vocab_parallel_fn(divergence, 0.3, spec)(s, t, temperature, mask)
    np.testing.assert_allclose(parallel, value, rtol=1e-12, atol=1e-15)


def test_whole_example_masks_still_clamp():
  """[B] and [B, 1] masks keep the clamp at 0 (rounding below 0 of a true
  divergence), a [1, C] mask of all classes does not clamp."""
  rng = np.random.default_rng(9)
  s = jnp.asarray(rng.normal(size=(256, 50)) * 2, jnp.float32)
  rows = jnp.asarray(rng.random(256) < 0.8)
  for divergence in ("forward", "reverse", "jsd"):
    for where in (rows, rows[:, None]):
      got = jaxkl.divergence_from_logits(s, s, divergence=divergence, where=where)
      assert np.all(np.asarray(got) >= 0)
      np.testing.assert_array_equal(np.asarray(got)[~np.asarray(rows)], 0.0)
  # JSD(P || P) rounds below 0 in float32 for many rows: with a mask of all
  # classes (a mask within examples) the KL partial sums are not clamped,
  # JSD still is.
  all_classes = jnp.ones((1, 50), bool)
  jsd = jaxkl.divergence_from_logits(s, s, divergence="jsd", where=all_classes)
  assert np.all(np.asarray(jsd) >= 0)


# ----------------------------------------------------------------------------
# Masked examples hold anything: exactly 0, values and gradients.

ROW_FILLS = (-inf, inf, np.nan, 3e38, -3e38)

_PER_ROW = {
  "kl_divergence_from_logits": lambda s, t, T, w: jaxkl.kl_divergence_from_logits(
    s, t, temperature=T, where=w
  ),
  "jensen_shannon_from_logits": lambda s, t, T, w: jaxkl.jensen_shannon_from_logits(
    s, t, beta=0.3, temperature=T, where=w
  ),
}
for _d in ("forward", "reverse", "jsd"):
  _PER_ROW[f"divergence_from_logits/{_d}"] = functools.partial(
    lambda s, t, T, w, d: jaxkl.divergence_from_logits(
      s, t, divergence=d, beta=0.3, temperature=T, where=w
    ),
    d=_d,
  )
  _PER_ROW[f"distillation_loss/{_d}"] = functools.partial(
    lambda s, t, T, w, d: jaxkl.distillation_loss(
      s, t, divergence=d, beta=0.3, temperature=T, where=w, reduction="none"
    ),
    d=_d,
  )
  _PER_ROW[f"vocab_parallel/{_d}"] = functools.partial(
    lambda s, t, T, w, d: _cached_vocab_parallel(d, np.shape(w))(s, t, T, w), d=_d
  )


@functools.cache
def _cached_vocab_parallel(divergence, mask_shape):
  if len(mask_shape) == 1:
    spec = P(None)  # per example
  elif mask_shape[-1] == 1:
    spec = P(None, None)  # [B, 1]: rows, the same on every device
  else:
    spec = P(None, "model")  # within examples: split with the classes
  return _vocab_parallel_fn(divergence, 0.3, spec)


def _masks(kind, rows, classes, kept_rows, rng):
  """A mask that drops the examples not in ``kept_rows``, as ``kind``."""
  if kind == "per_example":
    return kept_rows
  if kind == "rows":
    return kept_rows[:, None]
  # Within examples: the kept rows keep a random nonempty set of classes.
  entries = rng.random((rows, classes)) < 0.6
  entries[:, 0] = True
  return entries & kept_rows[:, None]


@hypothesis.given(
  name=st.sampled_from(sorted(_PER_ROW)),
  mask_kind=st.sampled_from(["per_example", "rows", "entries"]),
  garbage_in=st.sampled_from(["student", "teacher", "both"]),
  temperature=st.sampled_from([1.0, 2.5]),
  seed=st.integers(0, 2**16),
)
@hypothesis.settings(max_examples=30, deadline=None)
def test_masked_examples_may_hold_anything(
  name, mask_kind, garbage_in, temperature, seed
):
  """Rows dropped by the mask, filled with -inf, inf, NaN or +-3e38 in the
  student, teacher or both: value exactly 0 and gradients exactly 0 there,
  and the other rows' values and gradients those of the batch without the
  dropped rows (float64, NumPy values on the kept rows)."""
  if name.startswith("distillation_loss") and mask_kind != "per_example":
    mask_kind = "per_example"  # token masks have the per-token shape only
  rows, classes = 4, 5
  rng = np.random.default_rng(seed)
  kept_rows = np.array([True, False, True, False])
  s0, t0 = rng.normal(size=(rows, classes)), rng.normal(size=(rows, classes))
  mask = _masks(mask_kind, rows, classes, kept_rows, rng)
  weights = np.linspace(0.5, 1.5, rows)
  fn = _PER_ROW[name]
  with jax.enable_x64(True):

    def run(s, t, where, w):
      def total(a, b):
        return jnp.sum(fn(a, b, temperature, where) * w)

      return fn(s, t, temperature, where), jax.grad(total, (0, 1))(s, t)

    reduced_mask = mask[kept_rows]
    want_value, want_grads = run(
      s0[kept_rows], t0[kept_rows], reduced_mask, weights[kept_rows]
    )
    # The kept rows' values against NumPy (whole-example masks).
    if mask_kind != "entries":
      kind = name.split("/")[-1]
      per_kind = dict(
        zip(
          ("forward", "reverse", "jsd"),
          numpy_divergences(s0, t0, temperature, 0.3),
          strict=True,
        )
      )
      per_kind["kl_divergence_from_logits"] = per_kind["forward"]
      per_kind["jensen_shannon_from_logits"] = per_kind["jsd"]
      scale = temperature**2 if name.startswith("distillation") else 1.0
      np.testing.assert_allclose(
        want_value, scale * per_kind[kind][kept_rows], rtol=1e-10
      )
    for fill in ROW_FILLS:
      s, t = s0.copy(), t0.copy()
      if garbage_in in ("student", "both"):
        s[~kept_rows] = fill
      if garbage_in in ("teacher", "both"):
        t[~kept_rows] = fill
      value, grads = run(s, t, mask, weights)
      value = np.asarray(value)
      np.testing.assert_array_equal(value[~kept_rows], 0.0, err_msg=str(fill))
      np.testing.assert_allclose(
        value[kept_rows], want_value, rtol=1e-13, err_msg=str(fill)
      )
      for got, want in zip(grads, want_grads, strict=True):
        got = np.asarray(got)
        np.testing.assert_array_equal(got[~kept_rows], 0.0, err_msg=str(fill))
        np.testing.assert_allclose(
          got[kept_rows], want, rtol=1e-12, atol=1e-15, err_msg=str(fill)
        )


@pytest.mark.parametrize(
  "name", [n for n in sorted(_PER_ROW) if not n.startswith("vocab_parallel")]
)
def test_masked_examples_have_zero_hessians(name, x64):
  """Second order: Hessians w.r.t. both logits are finite, 0 in the dropped
  rows and equal to the batch without them elsewhere."""
  rng = np.random.default_rng(3)
  s, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  kept = np.array([True, False, True])
  s[1], t[1] = np.nan, -inf
  fn = _PER_ROW[name]

  def hessians(a, b, where):
    def total(x):
      return jnp.sum(fn(x[0], x[1], 1.5, where))

    return jax.hessian(total)(jnp.stack([a, b]))

  got = np.asarray(hessians(s, t, kept))
  want = np.asarray(hessians(s[kept], t[kept], kept[kept]))
  assert np.isfinite(got).all()
  np.testing.assert_array_equal(got[:, 1], 0.0)
  np.testing.assert_array_equal(got[:, :, :, :, 1], 0.0)
  np.testing.assert_allclose(
    got[:, kept][:, :, :, :, kept], want, rtol=1e-12, atol=1e-15
  )


# ----------------------------------------------------------------------------
# Temperature: one check for every concrete form.

BAD_TEMPERATURES = (0.0, -1.0, inf, -inf, np.nan)
TEMPERATURE_FORMS = {
  "python": lambda v: v,
  "numpy scalar": np.float32,
  "numpy float64": np.float64,
  "numpy 0-d": lambda v: np.array(v),
  "jax 0-d": lambda v: jnp.array(v),
  "jax 0-d bfloat16": lambda v: jnp.array(v, jnp.bfloat16),
}


def _fused_with_temperature(temperature):
  h, w = jnp.ones((4, 3)), jnp.linspace(-1.0, 1.0, 15).reshape(3, 5)
  return jaxkl.fused_linear_distillation_loss(
    h, w, h * 0.5, w, temperature=temperature, reduction="none"
  )


def _vocab_parallel_with_temperature(temperature):
  mesh = jax.make_mesh((1,), ("model",), axis_types=(AxisType.Auto,))
  spec = P(None, "model")
  per_device = jax.shard_map(
    functools.partial(
      jaxkl.vocab_parallel_kl_from_logits, axis_name="model", temperature=temperature
    ),
    mesh=mesh,
    in_specs=(spec, spec),
    out_specs=P(),
  )
  x = jnp.linspace(-1.0, 1.0, 8).reshape(2, 4)
  # The closed-over temperature is concrete while jit traces: it is checked.
  return jax.jit(per_device)(x, x[::-1])


_X = jnp.linspace(-1.0, 1.0, 8).reshape(2, 4)
TEMPERATURE_FUNCTIONS = {
  "kl_divergence_from_logits": lambda T: jaxkl.kl_divergence_from_logits(
    _X, _X[::-1], temperature=T
  ),
  "jensen_shannon_from_logits": lambda T: jaxkl.jensen_shannon_from_logits(
    _X, _X[::-1], temperature=T
  ),
  "divergence_from_logits": lambda T: jaxkl.divergence_from_logits(
    _X, _X[::-1], divergence="reverse", temperature=T
  ),
  "distillation_loss": lambda T: jaxkl.distillation_loss(_X, _X[::-1], temperature=T),
  "fused_linear_distillation_loss": _fused_with_temperature,
  "vocab_parallel_kl_from_logits": _vocab_parallel_with_temperature,
}


@pytest.mark.parametrize("name", sorted(TEMPERATURE_FUNCTIONS))
def test_temperature_checked_in_every_concrete_form(name):
  fn = TEMPERATURE_FUNCTIONS[name]
  for form, make in TEMPERATURE_FORMS.items():
    for bad in BAD_TEMPERATURES:
      with pytest.raises(
        ValueError, match=r"`temperature` must be a finite number > 0"
      ):
        fn(make(bad))
        pytest.fail(f"{form} {bad!r} accepted")
  for bad in (0, -2):  # ints, Python and NumPy
    for make in (int, np.int32, lambda v: jnp.array(v, jnp.int32)):
      with pytest.raises(ValueError, match=r"must be a finite number > 0"):
        fn(make(bad))
  for flag in (True, np.bool_(True), np.array(True), jnp.array(True)):
    with pytest.raises(TypeError, match="not a bool"):
      fn(flag)
  # Every valid form gives the Python float's value (bfloat16 2.0 is exact).
  want = np.asarray(fn(2.0), np.float64)
  for form, make in TEMPERATURE_FORMS.items():
    np.testing.assert_allclose(
      np.asarray(fn(make(2.0)), np.float64), want, rtol=1e-6, err_msg=form
    )
  np.testing.assert_allclose(np.asarray(fn(jnp.array(2, jnp.int32))), want, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(TEMPERATURE_FUNCTIONS))
def test_traced_temperature_is_not_checked(name):
  """Under jit the temperature has no value at trace time: valid traced
  temperatures work, invalid ones are not caught (documented)."""
  fn = TEMPERATURE_FUNCTIONS[name]
  jitted = jax.jit(fn)
  np.testing.assert_allclose(jitted(jnp.array(2.0)), fn(2.0), rtol=1e-6)
  jitted(jnp.array(-1.0))  # no error: not checkable
