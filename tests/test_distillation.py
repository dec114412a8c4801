"""Distillation conventions of ``jaxkl.distillation_loss`` and the reductions.

References are float64 NumPy written here from the formulas: softmax with
separate temperatures, the T_s**2 factor, the cross-entropy at T = 1, the
soft-cap c * tanh(scale * x / c), sequence means over packed sequences.
"""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import jaxkl


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _divergence(log_q, log_p, divergence, beta):
  p, q = np.exp(log_p), np.exp(log_q)

  def kl(a, log_a, log_b):
    return np.where(a > 0, a * (log_a - log_b), 0.0).sum(-1)

  if divergence == "forward":
    return kl(p, log_p, log_q)
  if divergence == "reverse":
    return kl(q, log_q, log_p)
  # log m in log space: beta * p rounds to 0 for a subnormal p, and
  # log(0) would make p * (log p - log m) infinite.
  with np.errstate(divide="ignore"):
    log_m = np.logaddexp(np.log(beta) + log_p, np.log1p(-beta) + log_q)
  return beta * kl(p, log_p, log_m) + (1 - beta) * kl(q, log_q, log_m)


def _reference(
  s,
  t,
  labels,
  *,
  t_s,
  t_t,
  scaling="square",
  alpha=0.0,
  divergence="forward",
  beta=0.5,
  s_transform=(None, None),
  t_transform=(None, None),
):
  """Per-token losses (float64) and the kept mask."""

  def transform(x, scale, cap):
    x = x * (scale or 1.0)
    return x if cap is None else cap * np.tanh(x / cap)

  s = transform(np.asarray(s, np.float64), *s_transform)
  t = transform(np.asarray(t, np.float64), *t_transform)
  soft = _divergence(_log_softmax(s / t_s), _log_softmax(t / t_t), divergence, beta)
  if scaling == "square":
    soft = soft * t_s**2
  keep = labels != -100
  safe = np.where(keep, labels, 0)
  ce = -np.take_along_axis(_log_softmax(s), safe[..., None], -1)[..., 0]
  return alpha * ce + (1 - alpha) * soft, keep


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(3, 5, 7)) * 2
  t = rng.normal(size=(3, 5, 7)) * 2
  labels = rng.integers(0, 7, size=(3, 5))
  labels[0, 3:] = -100
  labels[2, :] = -100
  return s, t, labels


@pytest.mark.parametrize(
  "kwargs, ref",
  [
    (dict(student_temperature=2.0, teacher_temperature=0.5), dict(t_s=2.0, t_t=0.5)),
    (
      dict(temperature=3.0, temperature_scaling="none"),
      dict(t_s=3.0, t_t=3.0, scaling="none"),
    ),
    (
      dict(temperature=2.0, teacher_temperature=1.0, hard_loss_weight=0.3),
      dict(t_s=2.0, t_t=1.0, alpha=0.3),
    ),
    (dict(hard_loss_weight=1.0), dict(t_s=1.0, t_t=1.0, alpha=1.0)),
    (
      dict(
        divergence="jsd",
        beta=0.3,
        student_logit_softcap=3.0,
        student_logit_scale=2.0,
        teacher_logit_softcap=1.5,
      ),
      dict(
        t_s=1.0,
        t_t=1.0,
        divergence="jsd",
        beta=0.3,
        s_transform=(2.0, 3.0),
        t_transform=(None, 1.5),
      ),
    ),
    (
      dict(divergence="reverse", teacher_logit_scale=0.5, temperature=1.5),
      dict(t_s=1.5, t_t=1.5, divergence="reverse", t_transform=(0.5, None)),
    ),
  ],
)
def test_conventions_match_reference(batch, kwargs, ref):
  s, t, labels = batch
  per_token, keep = _reference(s, t, labels, **ref)
  with jax.enable_x64(True):
    got = jaxkl.distillation_loss(
      jnp.asarray(s), jnp.asarray(t), labels=labels, reduction="none", **kwargs
    )
    mean = jaxkl.distillation_loss(
      jnp.asarray(s), jnp.asarray(t), labels=labels, **kwargs
    )
  np.testing.assert_allclose(got, np.where(keep, per_token, 0), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(mean, per_token[keep].mean(), rtol=1e-10)


def test_defaults_unchanged_and_explicit_equal_temperatures(batch):
  s, t, labels = batch
  base = jaxkl.distillation_loss(s, t, temperature=2.0, labels=labels)
  explicit = jaxkl.distillation_loss(
    s, t, student_temperature=2.0, teacher_temperature=jnp.asarray(2.0), labels=labels
  )
  np.testing.assert_allclose(explicit, base, rtol=2e-6)


def test_temperature_gradients_match_finite_differences(batch):
  s, t, labels = batch
  with jax.enable_x64(True):

    def loss(t_s, t_t):
      return jaxkl.distillation_loss(
        jnp.asarray(s),
        jnp.asarray(t),
        student_temperature=t_s,
        teacher_temperature=t_t,
        labels=labels,
        hard_loss_weight=0.2,
        student_logit_softcap=4.0,
      )

    jax.test_util.check_grads(loss, (1.7, 0.8), order=2, modes=["rev", "fwd"])
    grad = jax.grad(loss, argnums=(0, 1))(1.7, 0.8)
    h = 1e-6
    fd = (loss(1.7 + h, 0.8) - loss(1.7 - h, 0.8)) / (2 * h)
    np.testing.assert_allclose(grad[0], fd, rtol=1e-6)


def test_softcap_keeps_masked_classes_masked():
  s = jnp.array([[0.0, 1.0, -jnp.inf], [2.0, -jnp.inf, 0.5]])
  t = jnp.array([[0.5, 0.0, -jnp.inf], [1.0, -jnp.inf, 0.0]])
  kwargs = dict(student_logit_softcap=2.0, teacher_logit_softcap=2.0, temperature=1.3)
  got = jaxkl.distillation_loss(s, t, **kwargs, reduction="none")
  capped = jaxkl.distillation_loss(
    2 * jnp.tanh(_drop(s) / 2),
    2 * jnp.tanh(_drop(t) / 2),
    temperature=1.3,
    reduction="none",
  )
  np.testing.assert_allclose(got, capped, rtol=1e-6)
  hess = jax.hessian(lambda x: jaxkl.distillation_loss(x, t, **kwargs))(s)
  assert np.isfinite(np.asarray(hess)).all()
  assert float(jnp.abs(hess[0, 2]).sum() + jnp.abs(hess[1, 1]).sum()) == 0.0


def _drop(x):
  """The two finite classes of each row of the softcap test."""
  return jnp.stack([x[0, :2], x[1, jnp.array([0, 2])]])


@settings(max_examples=12, deadline=None)
@given(
  logits=hnp.arrays(
    np.float32,
    (2, 3, 5),
    elements=st.one_of(st.floats(-1e4, 1e4, width=32), st.just(-np.inf), st.just(0.0)),
  ),
  cap=st.sampled_from([None, 0.5, 30.0]),
  t_s=st.sampled_from([0.25, 1.0, 4.0]),
  alpha=st.sampled_from([0.0, 0.5]),
)
def test_gradients_finite_at_extremes(logits, cap, t_s, alpha):
  """Every row has a finite class; -inf classes, huge logits, any cap."""
  logits = np.where(np.arange(5) == 0, np.abs(np.nan_to_num(logits)) * 0, logits)
  teacher = np.flip(logits, -1).copy()
  labels = np.zeros((2, 3), np.int32)
  fn = lambda x: jaxkl.distillation_loss(  # noqa: E731
    x,
    teacher,
    student_temperature=t_s,
    teacher_temperature=1.0,
    labels=labels,
    hard_loss_weight=alpha,
    student_logit_softcap=cap,
    teacher_logit_softcap=cap,
  )
  value, grad = jax.value_and_grad(fn)(logits)
  assert not np.isnan(value)
  assert np.isfinite(np.asarray(grad)).all()


def test_masked_tokens_with_garbage_reach_nothing():
  s = jnp.array([[1.0, 2.0, 3.0], [jnp.nan, jnp.inf, -jnp.inf]])
  t = jnp.array([[0.0, 1.0, 0.0], [-jnp.inf, -jnp.inf, -jnp.inf]])
  labels = jnp.array([2, -100])
  kwargs = dict(
    student_temperature=2.0,
    teacher_temperature=0.7,
    hard_loss_weight=0.4,
    student_logit_softcap=5.0,
    labels=labels,
  )
  value, grads = jax.value_and_grad(
    lambda x, T: jaxkl.distillation_loss(x, t, **kwargs | {"student_temperature": T}),
    argnums=(0, 1),
  )(s, 2.0)
  expected = jaxkl.distillation_loss(s[:1], t[:1], **kwargs | {"labels": labels[:1]})
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  assert np.isfinite(np.asarray(grads[0])).all() and np.isfinite(grads[1])
  np.testing.assert_array_equal(grads[0][1], 0.0)


def test_num_items_in_batch_micro_batches_add_up(batch):
  s, t, labels = batch
  full = jaxkl.distillation_loss(s, t, labels=labels, temperature=2.0)
  count = int((labels != -100).sum())
  parts = [
    jaxkl.distillation_loss(
      s[i : i + 1],
      t[i : i + 1],
      labels=labels[i : i + 1],
      temperature=2.0,
      num_items_in_batch=count,
    )
    for i in range(3)
  ]
  np.testing.assert_allclose(sum(parts), full, rtol=1e-6)
  traced = jax.jit(
    lambda n: jaxkl.distillation_loss(s, t, labels=labels, num_items_in_batch=n)
  )(jnp.asarray(count))
  np.testing.assert_allclose(
    traced, jaxkl.distillation_loss(s, t, labels=labels), rtol=1e-6
  )


def test_sequence_mean_over_packed_sequences(batch):
  s, t, labels = batch
  per_token, keep = _reference(s, t, labels, t_s=1.0, t_t=1.0)
  ids = np.array([[3, 3, 7, 7, 7], [0, 1, 1, 2, 2], [5, 5, 5, 5, 5]])
  means = []
  for row in range(3):
    for sid in np.unique(ids[row]):
      sel = (ids[row] == sid) & keep[row]
      if sel.any():
        means.append(per_token[row][sel].mean())
  got = jaxkl.distillation_loss(
    s, t, labels=labels, reduction="sequence_mean", segment_ids=ids
  )
  np.testing.assert_allclose(got, np.mean(means), rtol=1e-6)
  rows = [per_token[r][keep[r]].mean() for r in range(3) if keep[r].any()]
  got_rows = jaxkl.distillation_loss(s, t, labels=labels, reduction="sequence_mean")
  np.testing.assert_allclose(got_rows, np.mean(rows), rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
  ids=hnp.arrays(np.int32, (2, 6), elements=st.integers(-3, 3)),
  keep=hnp.arrays(np.bool_, (2, 6)),
  values=hnp.arrays(np.float64, (2, 6), elements=st.floats(-10, 10)),
)
def test_sequence_mean_property(ids, keep, values):
  """Any ids (unsorted, repeated, negative): the mean of per-sequence means."""
  means = [
    values[r][(ids[r] == i) & keep[r]].mean()
    for r in range(2)
    for i in np.unique(ids[r])
    if ((ids[r] == i) & keep[r]).any()
  ]
  expected = np.mean(means) if means else 0.0
  with jax.enable_x64(True):
    got = jaxkl.reduce_loss(values, "sequence_mean", where=keep, segment_ids=ids)
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    (dict(temperature_scaling="cube"), ValueError, "`temperature_scaling`"),
    (dict(hard_loss_weight=1.5), ValueError, "`hard_loss_weight` must be in"),
    (dict(hard_loss_weight=0.5, labels=None), ValueError, "`labels` is None"),
    (dict(hard_loss_weight=True), TypeError, "`hard_loss_weight`"),
    (dict(student_temperature=0.0), ValueError, "`student_temperature`"),
    (dict(teacher_temperature=-1.0), ValueError, "`teacher_temperature`"),
    (dict(student_logit_softcap=0.0), ValueError, "`student_logit_softcap`"),
    (dict(teacher_logit_scale="2"), TypeError, "`teacher_logit_scale`"),
    (dict(reduction="sum", num_items_in_batch=4), ValueError, "num_items_in_batch"),
    (dict(num_items_in_batch=0), ValueError, "`num_items_in_batch` must be finite"),
    (dict(num_items_in_batch=np.ones(2)), ValueError, "must be a scalar"),
    (dict(segment_ids=np.zeros((3, 5), int)), ValueError, "only used by"),
    (
      dict(reduction="sequence_mean", segment_ids=np.zeros((3, 4), int)),
      ValueError,
      "per-token shape",
    ),
    (
      dict(reduction="sequence_mean", segment_ids=np.zeros((3, 5))),
      TypeError,
      "`segment_ids` must be integers",
    ),
    (dict(reduction="seq_mean"), ValueError, "'sequence_mean'"),
    (dict(ignore_index=-100.0), TypeError, "`ignore_index` must be an int"),
    (dict(ignore_index=True), TypeError, "`ignore_index` must be an int"),
  ],
)
def test_errors_name_the_argument(batch, kwargs, error, match):
  s, t, labels = batch
  kwargs = {"labels": labels} | kwargs
  with pytest.raises(error, match=match):
    jaxkl.distillation_loss(s, t, **kwargs)


# ---------------------------------------------------------------------------
# topk_distillation_loss: the conventions around the top-k divergence.


def _coarse_forward(s, idx, log_p, t_s, tail):
  """Forward KL of the coarse (k + 1)-outcome distributions, float64."""
  log_q = _log_softmax(np.asarray(s, np.float64) / t_s)
  out = np.zeros(s.shape[:-1])
  for pos in np.ndindex(*s.shape[:-1]):
    lp, ix = np.asarray(log_p[pos], np.float64), idx[pos]
    valid = np.isfinite(lp)
    p, q = np.exp(lp[valid]), np.exp(log_q[pos][ix[valid]])
    if tail == "renormalize":
      p, q = p / p.sum(), q / q.sum()
    else:
      p = np.append(p, max(1 - p.sum(), 0.0))
      q = np.append(
        q, np.exp(log_q[pos])[np.setdiff1d(np.arange(s.shape[-1]), ix[valid])].sum()
      )
    out[pos] = np.where(p > 0, p * np.log(p / q), 0).sum()
  return out


@pytest.fixture(scope="module")
def topk_batch():
  rng = np.random.default_rng(1)
  s = rng.normal(size=(2, 4, 11)) * 2
  t = rng.normal(size=(2, 4, 11)) * 2
  idx = np.argsort(-t, -1)[..., :4]
  log_p = np.take_along_axis(_log_softmax(t), idx, -1)
  log_p[0, 1, 3] = -np.inf  # an unused slot
  idx[0, 1, 3] = -1
  labels = rng.integers(0, 11, size=(2, 4))
  labels[1, 2] = -100
  return s, t, idx, log_p, labels


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_topk_loss_matches_reference(topk_batch, tail):
  s, _, idx, log_p, labels = topk_batch
  soft = _coarse_forward(s, idx, log_p, 2.0, tail) * 4.0
  _, keep = _reference(s, s, labels, t_s=1.0, t_t=1.0)
  hard, _ = _reference(s, s, labels, t_s=1.0, t_t=1.0, alpha=1.0)
  expected = 0.3 * hard + 0.7 * soft
  with jax.enable_x64(True):
    got = jaxkl.topk_distillation_loss(
      jnp.asarray(s),
      idx,
      jnp.asarray(log_p),
      tail=tail,
      student_temperature=2.0,
      labels=labels,
      hard_loss_weight=0.3,
      reduction="none",
    )
  np.testing.assert_allclose(got, np.where(keep, expected, 0), rtol=1e-9, atol=1e-12)


def test_topk_teacher_logits_and_normalizer(topk_batch):
  """log p = t / T_t - log Z_t: the same loss as the log-probabilities."""
  s, t, idx, _, labels = topk_batch
  t_t = 1.7
  log_z = np.log(np.exp(t / t_t).sum(-1))
  t_k = np.take_along_axis(t, idx, -1)
  t_k[0, 1, 3] = -np.inf  # the unused slot (index -1)
  log_p = t_k / t_t - log_z[..., None]
  with jax.enable_x64(True):
    by_logits = jaxkl.topk_distillation_loss(
      jnp.asarray(s),
      idx,
      teacher_logits=t_k,
      teacher_log_normalizer=log_z,
      temperature=t_t,
      labels=labels,
    )
    by_log_probs = jaxkl.topk_distillation_loss(
      jnp.asarray(s), idx, log_p, student_temperature=t_t, labels=labels
    )
    grads = jax.grad(
      lambda T: jaxkl.topk_distillation_loss(
        jnp.asarray(s),
        idx,
        teacher_logits=t_k,
        teacher_log_normalizer=log_z,
        student_temperature=1.3,
        teacher_temperature=T,
        labels=labels,
      )
    )(t_t)
  assert np.isfinite(by_logits)
  np.testing.assert_allclose(by_logits, by_log_probs, rtol=1e-12)
  assert np.isfinite(grads)


def test_topk_full_listing_equals_dense(topk_batch):
  """k = V with the teacher's full log-softmax: the dense loss, any convention."""
  s, t, _, _, labels = topk_batch
  idx = np.argsort(t, -1)
  log_p = np.take_along_axis(_log_softmax(t), idx, -1)
  kwargs = dict(
    labels=labels,
    hard_loss_weight=0.25,
    student_logit_softcap=2.5,
    reduction="sequence_mean",
    divergence="reverse",
  )
  with jax.enable_x64(True):
    dense, dense_grad = jax.value_and_grad(
      lambda x: jaxkl.distillation_loss(x, jnp.asarray(t), **kwargs)
    )(jnp.asarray(s))
    topk, topk_grad = jax.value_and_grad(
      lambda x: jaxkl.topk_distillation_loss(x, idx, log_p, **kwargs)
    )(jnp.asarray(s))
  np.testing.assert_allclose(topk, dense, rtol=1e-10)
  np.testing.assert_allclose(topk_grad, dense_grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(temperature=2.0), "must be 1"),
    (dict(teacher_logit_softcap=3.0), "apply to logits"),
    (dict(teacher_log_probs=None), "neither"),
    (dict(teacher_logits=np.zeros((2, 4, 4))), "both"),
    (
      dict(teacher_log_probs=None, teacher_logits=np.zeros((2, 4, 4))),
      "`teacher_log_normalizer` is None",
    ),
    (
      dict(
        teacher_log_probs=None,
        teacher_logits=np.zeros((2, 4, 4)),
        teacher_log_normalizer=np.zeros((2, 3)),
      ),
      "per-token shape",
    ),
    (dict(tail="drop"), "`tail`"),
  ],
)
def test_topk_loss_errors(topk_batch, kwargs, match):
  s, _, idx, log_p, _ = topk_batch
  kwargs = {"teacher_log_probs": log_p} | kwargs
  with pytest.raises(ValueError, match=match):
    jaxkl.topk_distillation_loss(s, idx, **kwargs)


def test_topk_loss_ignore_index_must_be_an_int(topk_batch):
  s, _, idx, log_p, _ = topk_batch
  with pytest.raises(TypeError, match=r"`ignore_index` must be an int; got -100\.0"):
    jaxkl.topk_distillation_loss(s, idx, teacher_log_probs=log_p, ignore_index=-100.0)


@pytest.mark.parametrize("label", [-1, -7, 7, 100])
def test_hard_loss_labels_outside_the_vocabulary_are_inf(label):
  """Negative labels are not wrapped around (PyTorch raises; jaxkl gives
  +inf, visibly); in the dense and the top-k loss alike."""
  s = jnp.asarray(np.random.default_rng(3).normal(size=(2, 7)), jnp.float32)
  labels = jnp.array([label, 2])
  dense = jaxkl.distillation_loss(
    s, s, labels=labels, hard_loss_weight=1.0, reduction="none"
  )
  topk = jaxkl.topk_distillation_loss(
    s,
    jnp.zeros((2, 1), int),
    jnp.zeros((2, 1)),
    labels=labels,
    hard_loss_weight=0.5,
    reduction="none",
  )
  assert dense[0] == np.inf and topk[0] == np.inf
  expected = -jax.nn.log_softmax(s[1])[2]
  np.testing.assert_allclose(dense[1], expected, rtol=1e-6)


@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 4)])
def test_sequence_mean_of_no_tokens_is_zero(shape):
  assert jaxkl.reduce_loss(jnp.zeros(shape), "sequence_mean") == 0.0
  logits = jnp.zeros((*shape, 5))
  assert jaxkl.distillation_loss(logits, logits, reduction="sequence_mean") == 0.0


@settings(max_examples=20, deadline=None)
@given(
  magnitude=st.sampled_from([1.0, 1e4, 1e30, 3e38]),
  temperature=st.sampled_from([1e-3, 0.5, 1.0]),
  separate=st.booleans(),
  divergence=st.sampled_from(["forward", "reverse", "jsd"]),
  seed=st.integers(0, 2**16),
)
@example(magnitude=1.0, temperature=1e-3, separate=False, divergence="jsd", seed=975)
def test_huge_logits_at_small_temperatures(
  magnitude, temperature, separate, divergence, seed
):
  """Shifting by the row max before dividing by T keeps x / T finite.

  ``3e38 / 1e-3`` overflows float32, but the softmax is shift-invariant:
  where the divergence itself is representable (here: the student's rows
  equal the teacher's up to noise of order T, or exactly), the value matches
  the float64 reference and the gradient is finite.
  """
  rng = np.random.default_rng(seed)
  t = (rng.uniform(-1, 1, (2, 3, 6)) * magnitude).astype(np.float32)
  s = t.copy()
  if magnitude * 1e-7 < temperature:  # noise of order T survives rounding
    s[0] = t[0] + rng.uniform(-1, 1, (3, 6)).astype(np.float32) * temperature
  labels = np.zeros((2, 3), np.int32)
  t_t = temperature * (1 + 1e-7) if separate else temperature
  fn = lambda x: jaxkl.distillation_loss(  # noqa: E731
    x,
    t,
    student_temperature=temperature,
    teacher_temperature=t_t,
    labels=labels,
    divergence=divergence,
    temperature_scaling="none",
  )
  value, grad = jax.value_and_grad(fn)(s)
  ref, keep = _reference(
    s, t, labels, t_s=temperature, t_t=t_t, scaling="none", divergence=divergence
  )
  assert np.isfinite(np.asarray(grad)).all()
  np.testing.assert_allclose(value, ref[keep].mean(), rtol=1e-3, atol=1e-5)
