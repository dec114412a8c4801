"""Divergences from logits and the distillation loss."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
