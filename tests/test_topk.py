"""Top-k (sparse teacher) divergences: jaxkl._topk."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxkl
from jaxkl._topk import TopKMetrics
from jaxkl._topk import topk_divergence_from_logits
from jaxkl._topk import topk_metrics

inf = np.inf
DIVERGENCES = [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.3)]
TAILS = ["bucket", "renormalize"]


def reference(s, idx, lp, divergence, beta, tail, temperature):
  """float64 NumPy: the coarse divergence, written from the definitions."""
  s, lp = np.asarray(s, np.float64), np.asarray(lp, np.float64)
  out = np.zeros(s.shape[:-1])
  for row in np.ndindex(*s.shape[:-1]):
    z = s[row] / temperature
    q = np.exp(z - z.max())
    q = q / q.sum()
    used = [i for i in range(lp.shape[-1]) if lp[row][i] > -inf]
    p_list = np.array([np.exp(lp[row][i]) for i in used])
    listed = [int(idx[row][i]) for i in used]
    q_list = np.array([q[c] for c in listed])
    if tail == "bucket":
      unlisted = [v for v in range(s.shape[-1]) if v not in listed]
      p = np.append(p_list, max(1 - p_list.sum(), 0.0))
      qq = np.append(q_list, q[unlisted].sum())
    else:
      if not used:
        continue
      p, qq = p_list / p_list.sum(), q_list / q_list.sum()

    def kl(a, b):
      keep = a > 0
      return np.sum(a[keep] * np.log(a[keep] / b[keep]))

    if divergence == "forward":
      out[row] = kl(p, qq)
    elif divergence == "reverse":
      out[row] = kl(qq, p)
    else:
      m = beta * p + (1 - beta) * qq
      out[row] = beta * kl(p, m) + (1 - beta) * kl(qq, m)
  return out


def teacher_topk(rng, shape, vocab, k):
  """Top-k indices and log-probabilities of a random teacher; the full one."""
  t = rng.normal(size=(*shape, vocab)) * 2
  log_p = t - np.log(np.exp(t).sum(-1, keepdims=True))
  idx = np.argsort(-log_p, axis=-1)[..., :k]
  return idx, np.take_along_axis(log_p, idx, -1), log_p


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
@pytest.mark.parametrize("tail", TAILS)
def test_against_float64_reference(x64, divergence, beta, tail):
  rng = np.random.default_rng(0)
  vocab, k = 9, 4
  s = rng.normal(size=(2, 3, vocab)) * 3
  idx, lp, _ = teacher_topk(rng, (2, 3), vocab, k)
  lp[0, 1, 2:] = -inf  # fewer used slots
  idx[0, 1, 2:] = [-1, 500]  # ignored
  lp[1, 0, 0] = -inf
  unlisted = next(v for v in range(vocab) if v not in idx[1, 2])
  s[1, 2, unlisted] = -inf  # a -inf logit outside the listed classes
  if divergence != "forward":
    s[0, 0, idx[0, 0, 3]] = -inf  # a listed class with no student mass
  for dtype in (np.float64, np.float32):
    got = topk_divergence_from_logits(
      s.astype(dtype),
      idx,
      lp.astype(dtype),
      divergence=divergence,
      beta=beta,
      tail=tail,
      temperature=1.7,
    )
    want = reference(s, idx, lp, divergence, beta, tail, 1.7)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_hand_worked_example():
  logits = jnp.log(jnp.array([0.5, 0.3, 0.1, 0.1]))
  lp = jnp.log(jnp.array([0.6, 0.2]))
  got = topk_divergence_from_logits(logits, jnp.array([0, 2]), lp)
  want = 0.6 * np.log(0.6 / 0.5) + 0.2 * np.log(2) + 0.2 * np.log(0.5)
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
def test_k_equals_v_is_the_dense_divergence(x64, divergence, beta):
  rng = np.random.default_rng(1)
  vocab = 6
  s = rng.normal(size=(3, vocab))
  t = rng.normal(size=(3, vocab))
  log_p = np.asarray(jax.nn.log_softmax(t / 2.0))
  idx = np.stack([rng.permutation(vocab) for _ in range(3)])  # any order
  lp = np.take_along_axis(log_p, idx, -1)
  for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):

    def topk(s, lp=lp, dtype=dtype):
      return topk_divergence_from_logits(
        s, idx, lp.astype(dtype), divergence=divergence, beta=beta, temperature=2.0
      )

    def dense(s, dtype=dtype):
      return jaxkl.divergence_from_logits(
        s, t.astype(dtype), divergence=divergence, beta=beta, temperature=2.0
      )

    x = s.astype(dtype)
    np.testing.assert_allclose(topk(x), dense(x), rtol=tol, atol=tol)
    g_topk = jax.grad(lambda x: topk(x).sum())(x)
    g_dense = jax.grad(lambda x: dense(x).sum())(x)
    np.testing.assert_allclose(g_topk, g_dense, rtol=tol, atol=tol)


@pytest.mark.parametrize(
  "divergence,beta,tail",
  [("forward", 0.5, "bucket"), ("reverse", 0.5, "renormalize"), ("jsd", 0.3, "bucket")],
)
def test_check_grads(x64, divergence, beta, tail):
  rng = np.random.default_rng(2)
  vocab, k = 6, 3
  s = rng.normal(size=(3, vocab))
  idx, lp, _ = teacher_topk(rng, (3,), vocab, k)
  lp[1, 2] = -inf
  unlisted = next(v for v in range(vocab) if v not in idx[0])
  s[0, unlisted] = -inf

  def f(s, lp, temperature):
    return topk_divergence_from_logits(
      s, idx, lp, divergence=divergence, beta=beta, tail=tail, temperature=temperature
    )

  # Both modes (and their mixtures) once; reverse over reverse for the rest.
  modes = ["fwd", "rev"] if divergence == "forward" else ["rev"]
  check_grads(lambda s, t: f(s, lp, t), (s, 1.7), order=2, modes=modes)
  check_grads(lambda lp: f(s, lp, 1.7), (lp,), order=1, modes=["rev"], eps=1e-6)


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  k=st.integers(1, 6),
  divergence=st.sampled_from(["forward", "reverse", "jsd"]),
  scale=st.sampled_from([0.1, 1.0, 5.0]),
)
@hypothesis.example(seed=153, k=6, divergence="reverse", scale=0.1)
def test_bucket_is_a_nonnegative_lower_bound(seed, k, divergence, scale):
  """Data processing: the bucket never exceeds the full divergence.

  In float64 to 1e-12. In float32 the rounding of the k listed
  log-probabilities moves the rest outcome's mass by up to ~k eps: relative
  to a rest mass r, a change of k eps / r in its log-mass, which bounds
  the slack (seed 153, k = 6 of 7 classes, r = 6e-4: 1.4e-5 nats).
  """
  rng = np.random.default_rng(seed)
  vocab = 7
  s = rng.normal(size=(4, vocab)) * scale
  idx, lp, log_p = teacher_topk(rng, (4,), vocab, k)
  rest = 1 - np.exp(lp).sum(-1)
  eps = float(np.finfo(np.float32).eps)
  for dtype, slack in (
    (np.float64, 1e-12 * np.ones(4)),
    (np.float32, 1e-6 + 4 * k * eps / np.maximum(rest, 1e-30)),
  ):
    with jax.enable_x64(dtype == np.float64):
      full = jaxkl.divergence_from_logits(
        s.astype(dtype), log_p.astype(dtype), divergence=divergence
      )
      for tail in TAILS:
        got = topk_divergence_from_logits(
          s.astype(dtype), idx, lp.astype(dtype), divergence=divergence, tail=tail
        )
        assert np.all(np.asarray(got) >= 0)
        if tail == "bucket":
          bound = np.asarray(full, np.float64) * (1 + 1e-5 * (dtype == np.float32))
          assert np.all(np.asarray(got, np.float64) <= bound + slack), (dtype, tail)


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  divergence=st.sampled_from(["forward", "reverse", "jsd"]),
  tail=st.sampled_from(TAILS),
  dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
  magnitude=st.sampled_from([1.0, 1e4]),
)
def test_finite_values_and_gradients(seed, divergence, tail, dtype, magnitude):
  """-inf logits (not at listed classes), huge magnitudes, bf16: no NaN."""
  rng = np.random.default_rng(seed)
  vocab, k = 8, 3
  s = rng.normal(size=(3, vocab)) * magnitude
  idx, lp, _ = teacher_topk(rng, (3,), vocab, k)
  lp[2, 1:] = -inf
  for row in range(3):
    unlisted = [v for v in range(vocab) if v not in idx[row]]
    s[row, rng.choice(unlisted, 2, replace=False)] = -inf

  def f(s, lp):
    return topk_divergence_from_logits(
      s, idx, lp, divergence=divergence, tail=tail, temperature=1.3
    ).sum()

  x, y = jnp.asarray(s, dtype), jnp.asarray(lp, dtype)
  value, (g_s, g_lp) = jax.value_and_grad(f, (0, 1))(x, y)
  assert value.dtype == dtype
  assert np.isfinite(float(value))
  assert np.all(np.isfinite(np.asarray(g_s, np.float32)))
  assert np.all(np.isfinite(np.asarray(g_lp, np.float32)))


def test_student_rest_keeps_precision():
  """Top-k holding 1 - 1e-6 of the student: the rest to ~1e-3 (float32)."""
  vocab, k = 1000, 4
  s = np.zeros(vocab)
  s[:k] = np.log(1e6 * (vocab - k) / k)  # rest mass ~1e-6
  lp = np.log(np.full(k, 0.2))  # teacher: rest 0.2
  idx = np.arange(k)

  exact_q_rest = (vocab - k) / ((vocab - k) + k * np.exp(s[0]))
  want = 0.8 * np.log(0.8 / (1 - exact_q_rest)) + 0.2 * np.log(0.2 / exact_q_rest)
  got = topk_divergence_from_logits(jnp.asarray(s, jnp.float32), idx, lp)
  np.testing.assert_allclose(got, want, rtol=1e-3)
  # The naive 1 - sum(q) in float32 has no correct digit left.
  q = jax.nn.softmax(jnp.asarray(s, jnp.float32))
  naive = 1 - jnp.sum(q[:k])
  assert abs(float(naive) - exact_q_rest) / exact_q_rest > 0.05


def test_masked_positions_are_zero_with_zero_gradients():
  rng = np.random.default_rng(3)
  s = rng.normal(size=(3, 5)).astype(np.float32)
  idx, lp, _ = teacher_topk(rng, (3,), 5, 2)
  lp = lp.astype(np.float32)
  s[1] = np.nan
  s[2] = -inf
  lp[1] = np.nan
  lp[2] = [3.0, -inf]
  where = np.array([True, False, False])
  for tail in TAILS:

    def f(s, lp, tail=tail):
      return topk_divergence_from_logits(s, idx, lp, tail=tail, where=where)

    value = f(s, lp)
    np.testing.assert_array_equal(value[1:], 0)
    want = topk_divergence_from_logits(s[:1], idx[:1], lp[:1], tail=tail)
    np.testing.assert_allclose(value[:1], want, rtol=1e-6)
    g_s, g_lp = jax.grad(lambda s, lp: f(s, lp).sum(), (0, 1))(s, lp)
    np.testing.assert_array_equal(g_s[1:], 0)
    np.testing.assert_array_equal(g_lp[1:], 0)
    assert np.all(np.isfinite(g_s)) and np.all(np.isfinite(g_lp))


def test_jit_vmap_and_axis():
  rng = np.random.default_rng(4)
  s = rng.normal(size=(2, 3, 6)).astype(np.float32)
  idx, lp, _ = teacher_topk(rng, (2, 3), 6, 2)
  lp = lp.astype(np.float32)
  want = topk_divergence_from_logits(s, idx, lp, divergence="jsd")
  f = jax.jit(lambda s, i, lp: topk_divergence_from_logits(s, i, lp, divergence="jsd"))
  np.testing.assert_allclose(f(s, idx, lp), want, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(f)(s, idx, lp), want, rtol=1e-6)
  moved = topk_divergence_from_logits(
    np.moveaxis(s, -1, 1),
    np.moveaxis(idx, -1, 1),
    np.moveaxis(lp, -1, 1),
    divergence="jsd",
    axis=1,
  )
  np.testing.assert_allclose(moved, want, rtol=1e-6)


def test_special_rows():
  """No used slot: bucket 0 (all mass is rest), renormalize 0; an
  out-of-range index gives the forward KL +inf."""
  s = jnp.array([[1.0, 2.0, 3.0]])
  none_used = jnp.array([[-inf, -inf]])
  for tail in TAILS:
    got = topk_divergence_from_logits(s, jnp.array([[0, 1]]), none_used, tail=tail)
    np.testing.assert_array_equal(got, [0.0])
  lp = jnp.log(jnp.array([[0.5, 0.25]]))
  got = topk_divergence_from_logits(s, jnp.array([[0, 7]]), lp)
  assert got[0] == inf


def test_static_errors():
  s, idx, lp = jnp.zeros((2, 5)), jnp.zeros((2, 2), jnp.int32), jnp.zeros((2, 2))
  with pytest.raises(TypeError, match="target_indices"):
    topk_divergence_from_logits(s, lp, lp)
  with pytest.raises(TypeError, match="target_log_probs"):
    topk_divergence_from_logits(s, idx, idx)
  with pytest.raises(TypeError, match="logits"):
    topk_divergence_from_logits(idx, idx, lp)
  with pytest.raises(ValueError, match="`target_indices` has shape"):
    topk_divergence_from_logits(s, idx[:, :1], lp)
  with pytest.raises(ValueError, match="must have shape"):
    topk_divergence_from_logits(s, idx[:1], lp[:1])
  with pytest.raises(ValueError, match="k = 0"):
    topk_divergence_from_logits(s, idx[:, :0], lp[:, :0])
  with pytest.raises(ValueError, match="at most V"):
    topk_divergence_from_logits(s[:, :1], idx, lp)
  with pytest.raises(ValueError, match="`tail`"):
    topk_divergence_from_logits(s, idx, lp, tail="drop")
  with pytest.raises(ValueError, match="`divergence`"):
    topk_divergence_from_logits(s, idx, lp, divergence="kl")
  with pytest.raises(ValueError, match="`beta`"):
    topk_divergence_from_logits(s, idx, lp, beta=2.0)
  with pytest.raises(ValueError, match="`temperature`"):
    topk_divergence_from_logits(s, idx, lp, temperature=0.0)
  with pytest.raises(TypeError, match="`axis`"):
    topk_divergence_from_logits(s, idx, lp, axis=(1,))
  with pytest.raises(ValueError, match="`where`"):
    topk_divergence_from_logits(s, idx, lp, where=jnp.ones((2, 1), bool))
  with pytest.raises(TypeError, match=r"where\.astype"):
    topk_divergence_from_logits(s, idx, lp, where=jnp.ones(2))
  with pytest.raises(ValueError, match="`target_log_probs`"):
    topk_metrics(s, idx[:1], lp[:1])


def test_metrics_hand_worked():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]]))
  idx = jnp.array([[0, 2, 9], [3, 2, 0]])
  lp = jnp.log(jnp.array([[0.6, 0.2, 0.0], [0.5, 0.3, 0.1]]))
  m = topk_metrics(logits, idx, lp, where=jnp.array([True, True]))
  assert isinstance(m, TopKMetrics)
  # Row 0: two used slots; the student's top-2 is {0, 1}: class 0 found.
  # Row 1: three used slots; the student's top-3 is {3, 2, 1}: 3 and 2.
  np.testing.assert_allclose(m.target_mass, [0.8, 0.9], rtol=1e-6)
  np.testing.assert_allclose(m.student_mass, [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(m.overlap, [0.5, 2 / 3], rtol=1e-6)
  none = topk_metrics(logits[:1], idx[:1], jnp.full((1, 3), -inf))
  np.testing.assert_array_equal(none.overlap, [0.0])
  dropped = topk_metrics(logits, idx, lp, where=jnp.array([True, False]))
  np.testing.assert_array_equal([f[1] for f in dropped], [0.0, 0.0, 0.0])
  grad = jax.grad(lambda x: topk_metrics(x, idx, lp).student_mass.sum())(logits)
  np.testing.assert_array_equal(grad, 0)


def test_reverse_with_listed_mass_rounding_to_one_is_finite():
  """A teacher whose top-k holds all its float32 mass: the reverse KL takes
  the teacher's rest as the rounding tolerance (k + 16) eps, not 0."""
  logits = jnp.zeros(3)
  got = topk_divergence_from_logits(
    logits, jnp.array([0]), jnp.array([0.0]), divergence="reverse"
  )
  tol = 17 * np.finfo(np.float32).eps
  expected = (1 / 3) * np.log(1 / 3) + (2 / 3) * np.log((2 / 3) / tol)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  grad = jax.grad(
    lambda x: topk_divergence_from_logits(
      x, jnp.array([0]), jnp.array([0.0]), divergence="reverse"
    )
  )(logits)
  assert np.isfinite(np.asarray(grad)).all()


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
  seed=st.integers(0, 2**31 - 1),
  k=st.sampled_from([1, 5, 20]),
  dtype=st.sampled_from([jnp.bfloat16, jnp.float16, jnp.float32]),
  spread=st.sampled_from([0.5, 2.0, 6.0]),
)
def test_reverse_with_16_bit_log_probs_matches_reference(seed, k, dtype, spread):
  """Teacher log-probabilities stored in 16 bits: the reverse KL is the
  coarse divergence of the *rounded* values (their rest is a real rest, not
  rounding, whenever it exceeds (k + 16) eps of float32)."""
  rng = np.random.default_rng(seed)
  vocab = 64
  teacher = rng.normal(size=vocab) * spread
  teacher -= np.log(np.exp(teacher - teacher.max()).sum()) + teacher.max()
  idx = np.argsort(-teacher)[:k]
  log_p = np.asarray(jnp.asarray(teacher[idx], dtype).astype(jnp.float32), np.float64)
  logits = rng.normal(size=vocab)
  log_q = logits - np.log(np.exp(logits).sum())
  p = np.exp(log_p)
  floor = (k + 16) * np.finfo(np.float32).eps
  # A rest within a few float32 roundings of the floor is ill-conditioned
  # (KL(Q || P) ~ Q_rest log(Q_rest / P_rest)); compare away from it.
  hypothesis.assume(not 0 < 1 - p.sum() < 100 * floor)
  rest_p = max(1 - p.sum(), floor)
  q = np.exp(log_q[idx])
  rest_q = 1 - q.sum()
  expected = np.sum(q * (np.log(q) - log_p)) + rest_q * np.log(rest_q / rest_p)
  got = topk_divergence_from_logits(
    jnp.asarray(logits, jnp.float32),
    jnp.asarray(idx),
    jnp.asarray(teacher[idx], dtype),
    divergence="reverse",
  )
  np.testing.assert_allclose(got, max(expected, 0.0), rtol=2e-4, atol=2e-5)
