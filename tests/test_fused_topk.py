"""fused_linear_topk_distillation_loss (issue 12).

The reference is the unfused top-k loss on materialized logits,
``T**2 * reduce_loss(topk_divergence_from_logits(h @ W + b, ...))``,
differentiated by ``jax.vjp`` (its own closed-form rule), compared under x64;
independently, with every class listed (k = V) the bucketed divergence is the
full one, so the fused top-k loss equals ``fused_linear_distillation_loss``
with the teacher's log-probabilities as its logits, and bf16 is checked
against float64 NumPy arithmetic with closed-form gradients.
"""

import functools
import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkl
from jaxkl import _topk
from jaxkl._fused_topk import fused_linear_topk_distillation_loss

fused = fused_linear_topk_distillation_loss
REDUCTIONS = ("mean", "sum", "batchmean", "none")


def _unfused(
  h,
  w,
  b,
  idx,
  log_p,
  temperature,
  *,
  where=None,
  labels=None,
  ignore_index=-100,
  reduction="mean",
  divergence="forward",
  beta=0.5,
  tail="bucket",
  chunk_size=None,
  vocab_chunk=None,
):
  """T^2 * reduce(top-k divergence of the materialized logits)."""
  del chunk_size, vocab_chunk
  s = h @ w if b is None else h @ w + b[None]
  mask = jaxkl._logits.token_mask(s.shape[:1], where, labels, ignore_index)
  per_token = _topk.topk_divergence_from_logits(
    s,
    idx,
    log_p,
    divergence=divergence,
    beta=beta,
    tail=tail,
    temperature=temperature,
    where=mask,
  )
  scale = jnp.square(jnp.asarray(temperature, per_token.dtype))
  return jaxkl.reduce_loss(per_token * scale, reduction, where=mask)


def _fused(h, w, b, idx, log_p, temperature, **kwargs):
  return fused(
    h, w, idx, log_p, student_bias=b, student_temperature=temperature, **kwargs
  )


def _value_and_grads(loss, args, cotangent, **kwargs):
  """Value and the vjp w.r.t. (h, w, b, log_p, temperature); one compile."""

  @jax.jit
  def run(h, w, b, log_p, temperature, cotangent):
    def f(h, w, b, log_p, temperature):
      return loss(h, w, b, args["idx"], log_p, temperature, **kwargs)

    value, vjp = jax.vjp(f, h, w, b, log_p, temperature)
    ct = cotangent.astype(value.dtype) if value.ndim else jnp.ones_like(value)
    return value, vjp(ct)

  out = run(args["h"], args["w"], args["b"], args["log_p"], args["t"], cotangent)
  return jax.tree.map(np.asarray, out)


def _assert_close(actual, expected, rtol, what=""):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, what
  finite = np.isfinite(expected)
  np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=what)
  scale = float(np.max(np.abs(expected[finite]), initial=1.0))
  np.testing.assert_allclose(
    actual[finite], expected[finite], rtol=rtol, atol=rtol * scale, err_msg=what
  )


def _problem(rng, n, h, v, k, dtype, unused=0, bias=True, spread=2.0):
  """Student head and a teacher's top-k of a random distribution."""
  teacher = rng.normal(size=(n, v)) * spread
  log_p_full = teacher - np.log(np.sum(np.exp(teacher), -1, keepdims=True))
  order = np.argsort(-log_p_full, axis=-1)[:, :k]
  log_p = np.take_along_axis(log_p_full, order, -1)
  idx = order.copy()
  for row in rng.choice(n, size=min(unused, n), replace=False):
    slot = rng.integers(k)
    log_p[row, slot] = -np.inf  # an unused slot: its index is ignored
    idx[row, slot] = rng.choice([-1, v + 3, idx[row, 0]])
  return dict(
    h=jnp.asarray(rng.normal(size=(n, h)), dtype),
    w=jnp.asarray(rng.normal(size=(h, v)) / np.sqrt(h), dtype),
    b=jnp.asarray(rng.normal(size=(v,)), dtype) if bias else None,
    idx=jnp.asarray(idx, jnp.int32),
    log_p=jnp.asarray(log_p, dtype),
    t=jnp.asarray(1.7, dtype),
  )


def _check_equal(args, rtol=1e-10, cotangent=None, **kwargs):
  n = args["h"].shape[0]
  if cotangent is None:
    cotangent = jnp.linspace(0.5, 1.5, n, dtype=args["h"].dtype)
  got = _value_and_grads(_fused, args, cotangent, **kwargs)
  want = _value_and_grads(_unfused, args, cotangent, **kwargs)
  _assert_close(got[0], want[0], rtol, "value")
  for name, g, g_want in zip(
    ("h", "w", "b", "log_p", "T"), got[1], want[1], strict=True
  ):
    if g_want is None:
      assert g is None
      continue
    _assert_close(g, g_want, rtol, f"d {name}")


# ----------------------------------------------------------------------------
# Values and gradients equal the unfused loss's.


@pytest.mark.parametrize(
  "divergence,beta,tail,reduction,chunk_size,vocab_chunk",
  [
    ("forward", 0.5, "bucket", "mean", 3, 4),  # neither divides (7, 13)
    ("reverse", 0.5, "bucket", "none", 7, 5),
    ("jsd", 0.3, "bucket", "sum", 2, None),
    ("forward", 0.5, "renormalize", "batchmean", 4, 13),  # vocab_chunk >= V
    ("reverse", 0.5, "renormalize", "mean", 7, 3),
    ("jsd", 0.7, "renormalize", "none", 3, None),
  ],
)
def test_equals_unfused(
  x64, divergence, beta, tail, reduction, chunk_size, vocab_chunk
):
  """Value and the gradients w.r.t. hidden states, weight, bias, teacher
  log-probabilities and temperature, with unused teacher slots (indices -1,
  out of range or repeated)."""
  args = _problem(np.random.default_rng(0), 7, 5, 13, 4, jnp.float64, unused=3)
  _check_equal(
    args,
    divergence=divergence,
    beta=beta,
    tail=tail,
    reduction=reduction,
    chunk_size=chunk_size,
    vocab_chunk=vocab_chunk,
  )


@hypothesis.settings(max_examples=4, deadline=None)
@hypothesis.given(
  n=st.integers(1, 9),
  v=st.integers(1, 11),
  data=st.data(),
)
def test_equals_unfused_property(n, v, data):
  """Random shapes, k, cuts, masks and options (including k = V, one class,
  one token, vocabulary blocks of one class)."""
  with jax.enable_x64(True):
    _property(n, v, data)


def _property(n, v, data):
  k = data.draw(st.integers(1, v), label="k")
  divergence, beta = data.draw(
    st.sampled_from([("forward", 0.5), ("reverse", 0.5), ("jsd", 0.4)])
  )
  kwargs = dict(
    divergence=divergence,
    beta=beta,
    tail=data.draw(st.sampled_from(["bucket", "renormalize"])),
    reduction=data.draw(st.sampled_from(REDUCTIONS)),
    chunk_size=data.draw(st.integers(1, n)),
    vocab_chunk=data.draw(st.sampled_from([None, 1, max(1, v // 2), v, v + 1])),
  )
  seed = data.draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  args = _problem(
    rng, n, 3, v, k, jnp.float64, unused=n // 2, bias=data.draw(st.booleans())
  )
  if data.draw(st.booleans()):
    kwargs["where"] = jnp.asarray(rng.random(n) < 0.7)
  _check_equal(args, **kwargs)


def test_masked_student_classes(x64):
  """A ``-inf`` student bias on classes no row lists (padding): finite
  values and gradients equal to the unfused loss's; the masked columns of
  the weight gradient are 0. Also a row whose unlisted classes are all
  masked (the student's rest is empty)."""
  rng = np.random.default_rng(7)
  n, v, k = 6, 10, 3
  args = _problem(rng, n, 4, v, k, jnp.float64, unused=1)
  listed = set(np.asarray(args["idx"]).ravel().tolist())
  masked = [c for c in range(v) if c not in listed][:2]
  assert masked
  args["b"] = args["b"].at[jnp.asarray(masked)].set(-jnp.inf)
  kwargs = dict(divergence="jsd", beta=0.4, chunk_size=4, vocab_chunk=4)
  _check_equal(args, **kwargs)
  got = _value_and_grads(_fused, args, jnp.ones(n), **kwargs)
  for g in jax.tree.leaves(got):
    assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(got[1][1][:, masked], 0.0)
  # Every class but the listed ones masked: the student has no rest.
  idx = jnp.asarray(np.tile(np.arange(k), (n, 1)))
  bias = jnp.where(jnp.arange(v) < k, 0.0, -jnp.inf)
  full = dict(args, idx=idx, b=bias)
  _check_equal(full, **kwargs)


def test_every_class_listed_is_the_full_divergence(x64):
  """k = V (in a shuffled order): the bucketed top-k loss is the full
  distillation loss with the teacher's log-probabilities as logits (an
  independent implementation), values and student gradients."""
  rng = np.random.default_rng(1)
  n, h, v = 6, 4, 9
  args = _problem(rng, n, h, v, v, jnp.float64)
  perm = np.stack([rng.permutation(v) for _ in range(n)])
  idx = jnp.take_along_axis(args["idx"], jnp.asarray(perm), -1)
  log_p = jnp.take_along_axis(args["log_p"], jnp.asarray(perm), -1)
  teacher_logits = jnp.full((n, v), -jnp.inf, jnp.float64)
  teacher_logits = teacher_logits.at[jnp.arange(n)[:, None], idx].set(log_p)
  divergences = ("forward", "reverse", "jsd")

  def top(h, w):
    return [
      fused(
        h,
        w,
        idx,
        log_p,
        student_temperature=2.0,
        divergence=d,
        chunk_size=4,
        vocab_chunk=4,
      )
      for d in divergences
    ]

  def full(h, w):
    return [
      jaxkl.fused_linear_distillation_loss(
        h,
        w,
        jnp.eye(n),
        teacher_logits * 2.0,
        temperature=2.0,
        divergence=d,
        vocab_chunk=None,
      )
      for d in divergences
    ]

  def value_and_grads(loss):
    return jax.jit(
      lambda h, w: [
        jax.value_and_grad(lambda h, w, i=i: loss(h, w)[i], (0, 1))(h, w)
        for i in range(3)
      ]
    )(args["h"], args["w"])

  got, want = value_and_grads(top), value_and_grads(full)
  for d, g, g_want in zip(divergences, got, want, strict=True):
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_want), strict=True):
      _assert_close(a, b, 1e-10, d)


# ----------------------------------------------------------------------------
# Excluded tokens, bf16, jit, memory, errors.


@pytest.mark.parametrize(
  "reduction,vocab_chunk,masked_by", [("mean", None, "where"), ("none", 4, "labels")]
)
def test_excluded_tokens_may_hold_anything(x64, reduction, vocab_chunk, masked_by):
  """NaN/inf hidden states and NaN log-probabilities in tokens excluded by
  ``where`` or ``labels``: values and gradients are those of the problem
  without them; their per-token loss and hidden-state gradient are 0."""
  rng = np.random.default_rng(2)
  n = 9
  args = _problem(rng, n, 4, 11, 3, jnp.float64, unused=2)
  keep = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1], bool)
  labels = jnp.where(jnp.asarray(keep), 3, -100)
  kwargs = dict(
    reduction=reduction,
    chunk_size=4,
    vocab_chunk=vocab_chunk,
    divergence="jsd",
    beta=0.4,
  )
  cotangent = jnp.linspace(0.5, 1.5, n, dtype=jnp.float64)
  kept = dict(args, h=args["h"][keep], idx=args["idx"][keep], log_p=args["log_p"][keep])
  want = _value_and_grads(_fused, kept, cotangent[keep], **kwargs)
  ref = _value_and_grads(_unfused, kept, cotangent[keep], **kwargs)
  _assert_close(want[0], ref[0], 1e-10)
  bad = dict(args)
  h = np.array(args["h"])
  h[~keep] = np.array([np.nan, np.inf, -np.inf, 3e38])[: h.shape[1]]
  log_p = np.array(args["log_p"])
  log_p[~keep] = np.nan
  bad["h"], bad["log_p"] = jnp.asarray(h), jnp.asarray(log_p)
  mask = {"where": jnp.asarray(keep)} if masked_by == "where" else {"labels": labels}
  got = _value_and_grads(_fused, bad, cotangent, **kwargs, **mask)
  values = got[0]
  if reduction == "none":
    np.testing.assert_array_equal(values[~keep], 0.0)
    values = values[keep]
  _assert_close(values, want[0], 1e-12)
  d_h, d_w, d_b, d_log_p, d_t = got[1]
  np.testing.assert_array_equal(d_h[~keep], 0.0)
  np.testing.assert_array_equal(d_log_p[~keep], 0.0)
  for a, b in (
    (d_h[keep], want[1][0]),
    (d_w, want[1][1]),
    (d_b, want[1][2]),
    (d_log_p[keep], want[1][3]),
    (d_t, want[1][4]),
  ):
    _assert_close(a, b, 1e-11)


def _numpy_forward_bucket(h, w, idx, log_p, temperature):
  """float64 NumPy: mean over tokens of T^2 KL(P_coarse || Q_coarse) and its
  closed-form gradients w.r.t. h and w (all slots used, indices distinct)."""
  s = h @ w / temperature
  q = np.exp(s - s.max(-1, keepdims=True))
  q /= q.sum(-1, keepdims=True)
  n, v = s.shape
  p = np.exp(log_p)
  listed = np.zeros((n, v), bool)
  listed[np.arange(n)[:, None], idx] = True
  q_listed = np.take_along_axis(q, idx, -1)
  q_rest = np.where(listed, 0, q).sum(-1)
  p_rest = 1 - p.sum(-1)
  kl = np.sum(p * (log_p - np.log(q_listed)), -1) + p_rest * np.log(p_rest / q_rest)
  # dKL/dz_v = q_v - P_{c(v)} q_v / Q_{c(v)}.
  share = np.where(listed, 0, q / q_rest[:, None] * p_rest[:, None])
  np.put_along_axis(share, idx, p, -1)
  d_z = (q - share) * temperature / n  # T^2 / T, mean over tokens
  return temperature**2 * kl.mean(), d_z @ w.T, h.T @ d_z


def test_bf16_inputs_against_float64_numpy():
  """bf16 hidden states, weight and log-probabilities (float32 logits and
  accumulation inside): loss and gradients within 1% (bf16's resolution of
  the returned values) of float64 NumPy on the same (rounded) inputs, with
  and without vocabulary blocks."""
  rng = np.random.default_rng(3)
  args = _problem(rng, 24, 16, 200, 8, jnp.bfloat16, bias=False)
  h, w = (np.asarray(args[x], np.float64) for x in ("h", "w"))
  log_p = np.asarray(args["log_p"], np.float64)
  want = _numpy_forward_bucket(h, w, np.asarray(args["idx"]), log_p, 2.0)
  for vocab_chunk in (None, 64):
    loss, grads = jax.jit(
      jax.value_and_grad(
        lambda h, w, vc=vocab_chunk: fused(
          h,
          w,
          args["idx"],
          args["log_p"],
          student_temperature=2.0,
          chunk_size=10,
          vocab_chunk=vc,
        ),
        (0, 1),
      )
    )(args["h"], args["w"])
    assert loss.dtype == jnp.bfloat16
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
    for a, b in zip((loss, *grads), want, strict=True):
      _assert_close(np.asarray(a, np.float64), b, 1e-2, f"vocab_chunk={vocab_chunk}")


def test_jit_with_traced_temperature():
  args = _problem(np.random.default_rng(4), 5, 3, 8, 2, jnp.float32)
  step = jax.jit(
    jax.value_and_grad(
      lambda w, t: fused(
        args["h"], w, args["idx"], args["log_p"], student_temperature=t, vocab_chunk=3
      ),
      (0, 1),
    )
  )
  got = step(args["w"], jnp.float32(1.5))
  want = jax.jit(
    jax.value_and_grad(
      lambda w, t: _unfused(args["h"], w, None, args["idx"], args["log_p"], t), (0, 1)
    )
  )(args["w"], jnp.float32(1.5))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    _assert_close(a, b, 2e-5)


@pytest.mark.parametrize("reduction,vocab_chunk", [("mean", 125), ("none", None)])
def test_no_tokens_by_vocabulary_buffer(reduction, vocab_chunk):
  """The compiled forward + backward holds no [N, V] buffer: only
  [chunk, V] (or [chunk, vocab_chunk]) blocks."""
  n, hidden, vocab, k = 96, 24, 1000, 8
  shapes = ((n, hidden), (hidden, vocab), (n, k))
  h, w, log_p = (jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)
  idx = jax.ShapeDtypeStruct((n, k), jnp.int32)

  def loss(fn, h, w, idx, log_p, **kw):
    return jnp.sum(
      fn(h, w, None, idx, log_p, 2.0, divergence="jsd", reduction=reduction, **kw)
    )

  def hlo(fn, **kw):
    step = jax.jit(jax.value_and_grad(functools.partial(loss, fn, **kw), (0, 1)))
    return step.lower(h, w, idx, log_p).compile().as_text()

  def has(text, rows, cols):
    return bool(re.search(rf"\[{rows},{cols}\]|\[{cols},{rows}\]", text))

  if reduction == "none":
    assert has(hlo(_unfused), n, vocab)  # the check can fail
  fused_hlo = hlo(_fused, chunk_size=16, vocab_chunk=vocab_chunk)
  assert not has(fused_hlo, n, vocab)
  assert has(fused_hlo, 16, vocab_chunk or vocab)


def _call(**overrides):
  args = _problem(np.random.default_rng(5), 4, 3, 6, 2, jnp.float32)
  kwargs = dict(
    student_hidden=args["h"],
    student_weight=args["w"],
    teacher_indices=args["idx"],
    teacher_log_probs=args["log_p"],
  )
  kwargs.update(overrides)
  positional = [
    kwargs.pop(name)
    for name in (
      "student_hidden",
      "student_weight",
      "teacher_indices",
      "teacher_log_probs",
    )
  ]
  return fused(*positional, **kwargs)


@pytest.mark.parametrize(
  "overrides,error,match",
  [
    (
      {
        "teacher_indices": jnp.zeros((4, 7), jnp.int32),
        "teacher_log_probs": jnp.zeros((4, 7)),
      },
      ValueError,
      "k = 7.*V = 6",
    ),
    ({"teacher_indices": jnp.zeros((4, 2))}, TypeError, "teacher_indices"),
    (
      {"teacher_indices": jnp.zeros((3, 2), jnp.int32)},
      ValueError,
      "N = student_hidden.shape.0. = 4",
    ),
    ({"teacher_log_probs": jnp.zeros((4, 3))}, ValueError, "teacher_log_probs"),
    ({"tail": "drop"}, ValueError, "tail"),
    ({"divergence": "js"}, ValueError, "divergence"),
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"vocab_chunk": 0}, ValueError, "vocab_chunk"),
    ({"temperature": -1.0}, ValueError, "temperature"),
    ({"student_bias": jnp.zeros(5)}, ValueError, "student_bias"),
    ({"student_weight": jnp.zeros((2, 6))}, ValueError, "student_weight"),
  ],
)
def test_errors(overrides, error, match):
  with pytest.raises(error, match=match):
    _call(**overrides)


# ----------------------------------------------------------------------------
# The conventions of issue 12: equal to ``jaxkl.topk_distillation_loss`` on
# the materialized logits with the same arguments.


def _conventions_case(args, differentiate, **kwargs):
  """Values and gradients of the fused and the unfused top-k loss w.r.t. the
  named arguments (one jit each)."""
  names = tuple(differentiate)

  def make(fused_call):
    def loss(values, cotangent):
      call = dict(kwargs, **dict(zip(names, values, strict=True)))
      h, w = call.pop("h"), call.pop("w")
      b = call.pop("student_bias", None)
      idx, log_p = call.pop("idx"), call.pop("log_p", None)
      if fused_call:
        out = fused(h, w, idx, log_p, student_bias=b, **call)
      else:
        call.pop("chunk_size", None)
        call.pop("vocab_chunk", None)
        s = h @ w if b is None else h @ w + b[None]
        out = jaxkl.topk_distillation_loss(s, idx, log_p, **call)
      return jnp.sum(out * cotangent) if out.ndim else out

    return jax.jit(jax.value_and_grad(loss))

  values = tuple(differentiate.values())
  cotangent = jnp.linspace(0.5, 1.5, args["h"].shape[0], dtype=jnp.float64)
  got = make(True)(values, cotangent)
  want = make(False)(values, cotangent)
  _assert_close(got[0], want[0], 1e-10, "value")
  for name, a, b in zip(names, got[1], want[1], strict=True):
    _assert_close(a, b, 1e-10, f"d {name}")


@pytest.mark.parametrize("case", range(5))
def test_conventions_equal_topk_distillation_loss(x64, case):
  """Student temperature, ``temperature_scaling``, logit scale and soft-cap,
  the hard loss, ``sequence_mean`` with ``segment_ids``,
  ``num_items_in_batch``, and a teacher given by its logits and
  log-normalizer at its own temperature, with and without vocabulary
  blocks."""
  rng = np.random.default_rng(10 + case)
  n, v, k = 8, 13, 4
  args = _problem(rng, n, 5, v, k, jnp.float64, unused=2)
  labels = jnp.asarray(rng.integers(0, v, n)).at[2].set(-100)
  segments = jnp.asarray([0, 0, 1, 1, 1, 3, 3, 2])
  differentiate = {"h": args["h"], "w": args["w"], "student_bias": args["b"]}
  kwargs = {"idx": args["idx"], "chunk_size": 3}
  if case == 0:
    differentiate["student_temperature"] = jnp.float64(1.5)
    kwargs.update(
      log_p=args["log_p"],
      divergence="jsd",
      beta=0.3,
      vocab_chunk=4,
      temperature_scaling="none",
      student_logit_softcap=2.5,
      student_logit_scale=1.3,
      reduction="sequence_mean",
      segment_ids=segments,
      labels=labels,
    )
  elif case == 1:
    differentiate["student_temperature"] = jnp.float64(0.8)
    differentiate["log_p"] = args["log_p"]
    kwargs.update(
      hard_loss_weight=0.4,
      labels=labels,
      vocab_chunk=None,
      tail="renormalize",
      num_items_in_batch=11,
      student_logit_softcap=4.0,
    )
  elif case == 4:
    # The hard loss with vocabulary blocks: streamed along the first pass.
    differentiate["student_temperature"] = jnp.float64(1.4)
    kwargs.update(
      log_p=args["log_p"],
      hard_loss_weight=0.6,
      labels=labels,
      vocab_chunk=4,
      divergence="jsd",
      beta=0.5,
      reduction="none",
      student_logit_scale=0.7,
    )
  else:
    # A teacher given by its logits at the slots and its log-normalizer.
    teacher = jnp.asarray(rng.normal(size=(n, v)) * 2)
    t_t = 2.0
    capped = 3.0 * jnp.tanh(teacher / 3.0)
    log_z = jax.nn.logsumexp(capped / t_t, axis=-1)
    differentiate["teacher_logits"] = jnp.take_along_axis(
      teacher, jnp.clip(args["idx"], 0, v - 1), -1
    )
    kwargs.update(
      teacher_log_normalizer=log_z,
      teacher_temperature=t_t,
      teacher_logit_softcap=3.0,
      student_temperature=1.7,
      divergence="reverse",
      vocab_chunk=5 if case == 2 else None,
      reduction="none" if case == 2 else "sum",
      where=jnp.arange(n) != 4,
    )
  _conventions_case(args, differentiate, **kwargs)


def test_convention_errors():
  args = _problem(np.random.default_rng(6), 4, 3, 6, 2, jnp.float32)
  with pytest.raises(ValueError, match="re-tempered"):
    fused(args["h"], args["w"], args["idx"], args["log_p"], temperature=2.0)
  with pytest.raises(ValueError, match="teacher_logit_softcap"):
    fused(args["h"], args["w"], args["idx"], args["log_p"], teacher_logit_softcap=2.0)
  with pytest.raises(ValueError, match="num_items_in_batch"):
    fused(
      args["h"],
      args["w"],
      args["idx"],
      args["log_p"],
      reduction="sum",
      num_items_in_batch=3,
    )
