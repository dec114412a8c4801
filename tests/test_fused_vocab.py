"""fused_linear_distillation_loss: vocabulary chunks, biases, bf16 (issue 11).

Issue 11, sections "Vocabulary chunking" and "bf16 that is exact". The
reference everywhere is the dense loss on materialized logits,
``jaxkl.distillation_loss(h_s @ W_s + b_s, h_t @ W_t + b_t, ...)`` (the
student logits padded with ``-inf`` columns for ``extra_teacher_classes=
'zero_mass'``), differentiated by ``jax.vjp``; for bf16 it is float64 NumPy
arithmetic with closed-form gradients, itself checked against the dense loss
under x64. ``tests/test_fused_linear.py`` covers token chunking without
vocabulary chunks (``vocab_chunk=None``) in detail; this file covers what
vocabulary blocks, biases and different vocabulary sizes add.
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
from jaxkl import _fused_blocks
from jaxkl import _fused_linear

inf = np.inf
DIVERGENCES = (("forward", 0.5), ("reverse", 0.5), ("jsd", 0.3))
REDUCTIONS = ("mean", "sum", "batchmean", "none")


# ----------------------------------------------------------------------------
# The two losses, as functions of one tuple of differentiated arguments
# ``(h_s, w_s, h_t, w_t, b_s, b_t, temperature)``; a bias may be None (an
# empty pytree node: nothing to differentiate).


def _fused(args, **kwargs):
  h_s, w_s, h_t, w_t, b_s, b_t, temperature = args
  return jaxkl.fused_linear_distillation_loss(
    h_s,
    w_s,
    h_t,
    w_t,
    student_bias=b_s,
    teacher_bias=b_t,
    temperature=temperature,
    **kwargs,
  )


def _dense(
  args, *, chunk_size=None, vocab_chunk=None, extra_teacher_classes=None, **kw
):
  """The materialized logits; extra teacher classes padded with -inf."""
  del chunk_size, vocab_chunk
  h_s, w_s, h_t, w_t, b_s, b_t, temperature = args
  s = h_s @ w_s if b_s is None else h_s @ w_s + b_s[None]
  t = h_t @ w_t if b_t is None else h_t @ w_t + b_t[None]
  extra = t.shape[-1] - s.shape[-1]
  if extra:
    assert extra_teacher_classes == "zero_mass"
    s = jnp.concatenate([s, jnp.full((s.shape[0], extra), -jnp.inf, s.dtype)], -1)
  return jaxkl.distillation_loss(s, t, temperature=temperature, **kw)


def _value_and_grads(loss, args, cotangent, **kwargs):
  """Value(s) and the vjp w.r.t. every argument, one compiled function.

  A per-token result (``'none'``) is contracted with ``cotangent``.
  """

  @jax.jit
  def run(args, cotangent):
    values, vjp = jax.vjp(functools.partial(loss, **kwargs), args)
    ct = cotangent.astype(values.dtype) if values.ndim else jnp.ones_like(values)
    (grads,) = vjp(ct)
    return values, grads

  return jax.tree.map(np.asarray, run(args, cotangent))


def _assert_close(actual, expected, rtol, what=""):
  """Elementwise within ``rtol`` of each value or of the largest finite one
  (at least 1: an exact 0, e.g. with one class left, is met to rounding);
  non-finite entries must be equal."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, what
  finite = np.isfinite(expected)
  np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=what)
  scale = float(np.max(np.abs(expected[finite]), initial=1.0))
  np.testing.assert_allclose(
    actual[finite], expected[finite], rtol=rtol, atol=rtol * scale, err_msg=what
  )


def _problem(rng, n, h, h_t, v_s, v_t, dtype, scale=1.0):
  h_s_ = rng.normal(size=(n, h))
  w_s = rng.normal(size=(h, v_s)) * scale / np.sqrt(h)
  h_t_ = rng.normal(size=(n, h_t))
  w_t = rng.normal(size=(h_t, v_t)) * scale / np.sqrt(h_t)
  return tuple(jnp.asarray(x, dtype) for x in (h_s_, w_s, h_t_, w_t))


# ----------------------------------------------------------------------------
# 1. The property: values and first derivatives equal the dense loss's.


@st.composite
def _configs(draw):
  n = draw(st.integers(1, 9))
  v_s = draw(st.integers(1, 12))
  extra = draw(st.sampled_from([0, 0, 0, 1, 3]))
  v_t = v_s + extra
  divergence, beta = draw(
    st.sampled_from([*DIVERGENCES, ("jsd", 0.5), ("jsd", 0.0), ("jsd", 1.0)])
  )
  biases = draw(st.sampled_from(["none", "student", "teacher", "both"]))
  forward = divergence == "forward" or beta == 0.0  # JSD(0) is the forward KL
  if extra and forward:
    biases = "both" if biases in ("student", "both") else "teacher"
  masked = []
  if biases == "both" and v_s > 1:
    masked = draw(st.lists(st.integers(0, v_s - 1), max_size=v_s - 1, unique=True))
  return dict(
    n=n,
    h=draw(st.integers(1, 4)),
    h_t=draw(st.integers(1, 4)),
    v_s=v_s,
    v_t=v_t,
    divergence=divergence,
    beta=beta,
    biases=biases,
    masked=masked,
    reduction=draw(st.sampled_from(REDUCTIONS)),
    masks=draw(st.sampled_from(["none", "where", "labels", "both"])),
    ignore_index=draw(st.sampled_from([-100, 2])),
    chunk_size=draw(st.one_of(st.integers(1, n + 2), st.just("auto"))),
    vocab_chunk=draw(
      st.one_of(
        st.sampled_from([None, 1, "auto", v_t, v_t + 5]), st.integers(1, v_t + 2)
      )
    ),
    temperature=draw(st.sampled_from([1.0, 0.5, 2.5])),
    scale=draw(st.sampled_from([1.0, 4.0])),
    dtype=draw(st.sampled_from(["float64", "float64", "float32"])),
    seed=draw(st.integers(0, 2**16)),
  )


# Every divergence (and the JSD endpoints), reduction, mask, chunk size and
# vocabulary block (None, 1, dividing V or not, >= V, 'auto'), biases in
# either head or both, classes masked by -inf in both biases, extra teacher
# classes with 'zero_mass' (the forward KL then with a teacher bias of -inf
# there, else the value is +inf: tested below), different hidden sizes, a
# differentiated temperature; every example compiles both losses, hence the
# few examples.
@hypothesis.given(config=_configs())
@hypothesis.settings(
  max_examples=10,
  # No shrinking: every example compiles (minutes); the failing
  # configuration is printed as drawn, small already.
  phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
  deadline=None,
  suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
def test_values_and_gradients_equal_dense(config):
  c = config
  rng = np.random.default_rng(c["seed"])
  with jax.enable_x64(c["dtype"] == "float64"):
    dtype = jnp.dtype(c["dtype"])
    h_s, w_s, h_t, w_t = _problem(
      rng, c["n"], c["h"], c["h_t"], c["v_s"], c["v_t"], dtype, c["scale"]
    )
    b_s = b_t = None
    if c["biases"] in ("student", "both"):
      b = rng.normal(size=c["v_s"])
      b[c["masked"]] = -inf
      b_s = jnp.asarray(b, dtype)
    if c["biases"] in ("teacher", "both"):
      b = rng.normal(size=c["v_t"])
      b[c["masked"]] = -inf
      if c["v_t"] > c["v_s"] and (c["divergence"] == "forward" or c["beta"] == 0):
        b[c["v_s"] :] = -inf  # the teacher gives the extra classes no mass
      b_t = jnp.asarray(b, dtype)
    args = (h_s, w_s, h_t, w_t, b_s, b_t, jnp.asarray(c["temperature"], dtype))
    kwargs = dict(
      divergence=c["divergence"],
      beta=c["beta"],
      reduction=c["reduction"],
      chunk_size=c["chunk_size"],
      vocab_chunk=c["vocab_chunk"],
    )
    if c["v_t"] > c["v_s"]:
      kwargs["extra_teacher_classes"] = "zero_mass"
    if c["masks"] in ("where", "both"):
      kwargs["where"] = jnp.asarray(rng.uniform(size=c["n"]) < 0.7)
    if c["masks"] in ("labels", "both"):
      labels = rng.choice([c["ignore_index"], 0, 1], size=c["n"], p=[0.3, 0.35, 0.35])
      kwargs["labels"] = jnp.asarray(labels, jnp.int32)
      kwargs["ignore_index"] = c["ignore_index"]
    cotangent = jnp.asarray(rng.normal(size=c["n"]), dtype)

    values, grads = _value_and_grads(_fused, args, cotangent, **kwargs)
    want_values, want_grads = _value_and_grads(_dense, args, cotangent, **kwargs)
  rtol = 1e-9 if c["dtype"] == "float64" else 2e-4
  assert values.dtype == want_values.dtype
  assert np.all(np.isfinite(values))
  _assert_close(values, want_values, rtol, "values")
  names = ("h_s", "w_s", "h_t", "w_t", "b_s", "b_t", "temperature")
  for name, g, w in zip(names, grads, want_grads, strict=True):
    if w is None:
      assert g is None
      continue
    assert g.dtype == w.dtype, name
    assert np.all(np.isfinite(g)), name
    _assert_close(g, w, rtol, name)
  # Classes masked in both heads: no gradient at all.
  if c["masked"]:
    for g in (grads[1], grads[3]):
      np.testing.assert_array_equal(g[:, c["masked"]], 0.0)
    for g in (grads[4], grads[5]):
      np.testing.assert_array_equal(g[c["masked"]], 0.0)


# ----------------------------------------------------------------------------
# 2. Second order: Hessian-vector products (forward over reverse).


@pytest.mark.parametrize(
  "divergence,beta,reduction,vocab_chunk",
  [
    ("forward", 0.5, "mean", 3),
    ("reverse", 0.5, "none", 1),
    ("jsd", 0.3, "batchmean", 5),
  ],
)
def test_hessian_vector_products_equal_dense(divergence, beta, reduction, vocab_chunk):
  """``jax.jvp(jax.grad(f))`` w.r.t. every input and the temperature, with
  -inf classes in both biases (tangents nonzero there too), float64."""
  n, h, h_t, v = 5, 3, 2, 8
  masked = [1, 6]
  rng = np.random.default_rng(11)
  with jax.enable_x64(True):
    h_s, w_s, h_t_, w_t = _problem(rng, n, h, h_t, v, v, jnp.float64, 2.0)
    b_s, b_t = rng.normal(size=(2, v))
    b_s[masked] = b_t[masked] = -inf
    args = (h_s, w_s, h_t_, w_t, jnp.asarray(b_s), jnp.asarray(b_t), jnp.asarray(1.7))
    tangents = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), args
    )
    weights = jnp.linspace(0.5, 1.5, n)
    kwargs = dict(
      divergence=divergence,
      beta=beta,
      reduction=reduction,
      chunk_size=3,
      where=jnp.asarray([True, True, False, True, True]),
    )

    def hvp(loss, **extra):
      def scalar(args):
        values = loss(args, **kwargs, **extra)
        return jnp.sum(values * weights) if values.ndim else values

      @jax.jit
      def run(args, tangents):
        return jax.jvp(jax.grad(scalar), (args,), (tangents,))

      return jax.tree.map(np.asarray, run(args, tangents))

    grad, hv = hvp(_fused, vocab_chunk=vocab_chunk)
    want_grad, want_hv = hvp(_dense)
  names = ("h_s", "w_s", "h_t", "w_t", "b_s", "b_t", "temperature")
  names = tuple(f"d{n}" for n in names) + tuple(f"hvp {n}" for n in names)
  for name, g, w in zip(names, (*grad, *hv), (*want_grad, *want_hv), strict=True):
    assert np.all(np.isfinite(g)), name
    _assert_close(g, w, 1e-9, name)
  for part in (grad, hv):
    for w in (part[1], part[3]):
      np.testing.assert_array_equal(w[:, masked], 0.0)
    for b in (part[4], part[5]):
      np.testing.assert_array_equal(b[masked], 0.0)


# ----------------------------------------------------------------------------
# 3. A student vocabulary smaller than the teacher's.


def _extra_classes_problem():
  rng = np.random.default_rng(3)
  h_s, w_s, h_t, w_t = _problem(rng, 6, 3, 4, 5, 8, jnp.float64, 2.0)
  b_s, b_t = (jnp.asarray(rng.normal(size=v)) for v in (5, 8))
  return (h_s, w_s, h_t, w_t, b_s, b_t, jnp.asarray(1.5))


def test_extra_teacher_classes_is_an_error_by_default():
  rng = np.random.default_rng(0)
  h_s, w_s, h_t, w_t = _problem(rng, 4, 3, 3, 5, 7, jnp.float32)
  for kwargs in ({}, {"extra_teacher_classes": "error"}, {"vocab_chunk": 2}):
    with pytest.raises(ValueError, match="extra_teacher_classes"):
      jaxkl.fused_linear_distillation_loss(h_s, w_s, h_t, w_t, **kwargs)
  # A student vocabulary larger than the teacher's has no such reading.
  for setting in ("error", "zero_mass"):
    with pytest.raises(ValueError, match="vocabulary"):
      jaxkl.fused_linear_distillation_loss(
        h_t, w_t, h_s, w_s, extra_teacher_classes=setting
      )


@pytest.mark.parametrize(
  "divergence,beta,reduction",
  [("reverse", 0.5, "none"), ("jsd", 0.3, "mean"), ("jsd", 1.0, "none")],
)
def test_zero_mass_extra_classes_finite(divergence, beta, reduction, x64):
  """Reverse KL and JSD: finite values and gradients, those of the dense loss
  with the student's logits padded by -inf columns."""
  args = _extra_classes_problem()
  cotangent = jnp.linspace(-1.0, 2.0, 6)
  kwargs = dict(
    divergence=divergence,
    beta=beta,
    reduction=reduction,
    chunk_size=4,
    vocab_chunk=3,
    extra_teacher_classes="zero_mass",
  )
  values, grads = _value_and_grads(_fused, args, cotangent, **kwargs)
  want_values, want_grads = _value_and_grads(_dense, args, cotangent, **kwargs)
  assert np.all(np.isfinite(values))
  _assert_close(values, want_values, 1e-10)
  for g, w in zip(grads, want_grads, strict=True):
    assert np.all(np.isfinite(g))
    _assert_close(g, w, 1e-10)
  # The teacher's extra classes matter (they are not dropped).
  assert np.any(grads[3][:, 5:]) and np.any(grads[5][5:])


def test_zero_mass_extra_classes_forward_kl_is_infinite(x64):
  """The teacher has mass where the student has none: KL(P || Q) = +inf, on
  every kept token; masked tokens still give 0; a teacher without mass
  there (bias -inf) gives the finite dense value."""
  h_s, w_s, h_t, w_t, b_s, b_t, temperature = _extra_classes_problem()
  where = jnp.asarray([True, False, True, True, False, True])
  for vocab_chunk in (3,):
    loss = functools.partial(
      jaxkl.fused_linear_distillation_loss,
      h_s,
      w_s,
      h_t,
      w_t,
      student_bias=b_s,
      temperature=temperature,
      vocab_chunk=vocab_chunk,
      chunk_size=4,
      extra_teacher_classes="zero_mass",
    )
    values = np.asarray(loss(teacher_bias=b_t, reduction="none", where=where))
    np.testing.assert_array_equal(values, np.where(where, inf, 0.0))
    assert float(loss(teacher_bias=b_t)) == inf
    b_t_masked = b_t.at[5:].set(-inf)
    _assert_close(
      loss(teacher_bias=b_t_masked, reduction="none", where=where),
      _dense(
        (h_s, w_s, h_t, w_t, b_s, b_t_masked, temperature),
        reduction="none",
        where=where,
        extra_teacher_classes="zero_mass",
      ),
      1e-10,
    )


# ----------------------------------------------------------------------------
# 4. bf16 inputs: float32 logits, within 1% of float64.

BF16_SHAPE = (64, 64, 32768)  # N, H, V: the V >= 32768, few tokens


@functools.cache
def _bf16_problem():
  """bf16 hidden states and weights; the teacher near the student (logits
  of scale ~3 that differ by ~0.3: the case where rounding them hurts)."""
  n, h, v = BF16_SHAPE
  rng = np.random.default_rng(0)
  h_s = rng.normal(size=(n, h))
  w_s = rng.normal(size=(h, v)) * 3 / np.sqrt(h)
  h_t = h_s + 0.1 * rng.normal(size=(n, h))
  w_t = w_s + 0.1 * rng.normal(size=(h, v)) * 3 / np.sqrt(h)
  return tuple(jnp.asarray(x, jnp.bfloat16) for x in (h_s, w_s, h_t, w_t))


def _numpy_loss_and_grads(h_s, w_s, h_t, w_t, divergence, beta, temperature):
  """float64 ``'mean'`` loss and its gradients w.r.t. h_s and w_s.

  With q = softmax(s / T), p = softmax(t / T) and per-row D, the loss is
  T^2 mean(D) and dL/ds = T g / N, with dD/d(s/T) = q - p (forward),
  q (log q - log p - D) (reverse), q (u - <q, u>) with u = (1 - beta)
  log(q / m), m = beta p + (1 - beta) q (JSD).
  """

  def log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))

  log_q = log_softmax(h_s @ w_s / temperature)
  log_p = log_softmax(h_t @ w_t / temperature)
  q, p = np.exp(log_q), np.exp(log_p)
  if divergence == "forward":
    d = (p * (log_p - log_q)).sum(1)
    g = q - p
  elif divergence == "reverse":
    d = (q * (log_q - log_p)).sum(1)
    g = q * (log_q - log_p - d[:, None])
  else:
    log_m = np.logaddexp(log_p + np.log(beta), log_q + np.log1p(-beta))
    d = beta * (p * (log_p - log_m)).sum(1) + (1 - beta) * (q * (log_q - log_m)).sum(1)
    u = (1 - beta) * (log_q - log_m)
    g = q * (u - (q * u).sum(1, keepdims=True))
  loss = temperature**2 * d.mean()
  g = temperature * g / d.shape[0]
  return loss, g @ w_s.T, h_s.T @ g


@functools.cache
def _bf16_reference(divergence, beta):
  """The float64 reference from the same bf16 inputs, and the error of the
  Liger-style loss (logits rounded to bf16, then a float32 softmax)."""
  arrays = _bf16_problem()
  wide = [np.asarray(x, np.float64) for x in arrays]
  ref = _numpy_loss_and_grads(*wide, divergence, beta, 1.0)

  def rounded_logits(h_s, w_s, h_t, w_t):
    def logits(h, w):
      z = jnp.matmul(h, w, preferred_element_type=jnp.float32)
      return jax.lax.reduce_precision(z, exponent_bits=8, mantissa_bits=7)

    return jaxkl.distillation_loss(
      logits(h_s, w_s),
      logits(h_t, w_t),
      temperature=1.0,
      divergence=divergence,
      beta=beta,
    )

  liger = jax.jit(jax.value_and_grad(rounded_logits, argnums=(0, 1)))(*arrays)
  liger_errors = _max_norm_errors(liger, ref)
  return ref, liger_errors


def _max_norm_errors(got, ref):
  value, (d_h, d_w) = got
  return [
    float(np.max(np.abs(np.asarray(x, np.float64) - r)) / np.max(np.abs(r)))
    for x, r in zip((value, d_h, d_w), ref, strict=True)
  ]


def test_bf16_numpy_reference_is_the_dense_loss(x64):
  """The float64 NumPy reference (closed-form gradients) equals the dense
  loss differentiated by JAX in float64, on a small problem."""
  rng = np.random.default_rng(5)
  arrays = [np.asarray(x) for x in _problem(rng, 7, 4, 4, 50, 50, jnp.float64, 3.0)]
  h_s, w_s, h_t, w_t = (jnp.asarray(x) for x in arrays)

  @jax.jit
  def dense(h_s, w_s, h_t, w_t):
    return [
      jax.value_and_grad(
        lambda h_s, w_s, d=d, b=b: jaxkl.distillation_loss(
          h_s @ w_s, h_t @ w_t, temperature=2.0, divergence=d, beta=b
        ),
        argnums=(0, 1),
      )(h_s, w_s)
      for d, b in DIVERGENCES
    ]

  for (divergence, beta), (value, grads) in zip(
    DIVERGENCES, dense(h_s, w_s, h_t, w_t), strict=True
  ):
    want = _numpy_loss_and_grads(*arrays, divergence, beta, 2.0)
    _assert_close(value, want[0], 1e-12, divergence)
    _assert_close(grads[0], want[1], 1e-12, divergence)
    _assert_close(grads[1], want[2], 1e-12, divergence)


@pytest.mark.parametrize("vocab_chunk", [4096, None])
@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
def test_bf16_loss_and_gradients_within_one_percent(divergence, beta, vocab_chunk):
  """bf16 hidden states and weights, V = 32768: the loss and its gradients
  w.r.t. the student's hidden states and weight are within 1% (max-norm) of
  float64 arithmetic on the same bf16 values, and closer than a loss whose
  logits are rounded to bf16 before a float32 softmax (Liger-Kernel's way;
  5-7% gradient error here)."""
  arrays = _bf16_problem()
  ref, liger_errors = _bf16_reference(divergence, beta)
  fn = jax.jit(
    jax.value_and_grad(
      lambda h_s, w_s, h_t, w_t: jaxkl.fused_linear_distillation_loss(
        h_s,
        w_s,
        h_t,
        w_t,
        temperature=1.0,
        divergence=divergence,
        beta=beta,
        vocab_chunk=vocab_chunk,
      ),
      argnums=(0, 1),
    )
  )
  value, grads = fn(*arrays)
  assert value.dtype == jnp.bfloat16
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 2
  errors = _max_norm_errors((value, grads), ref)
  assert max(errors) < 0.01, errors
  # The rounded logits' gradients are measurably worse.
  assert min(liger_errors[1:]) > 0.02, liger_errors
  assert errors[1] < liger_errors[1] / 3 and errors[2] < liger_errors[2] / 3, (
    errors,
    liger_errors,
  )


# ----------------------------------------------------------------------------
# 5. Errors, at trace time.


def _trace(**overrides):
  """Traces the loss (``jax.eval_shape``: no computation) with arrays
  abstract, so the errors below are raised at trace time."""
  rng = np.random.default_rng(0)
  arrays = _problem(rng, 6, 3, 2, 5, 5, jnp.float32)
  kwargs = dict(chunk_size=4, vocab_chunk=2)
  kwargs.update(overrides)
  biases = {k: kwargs.pop(k) for k in ("student_bias", "teacher_bias") if k in kwargs}
  return jax.eval_shape(
    lambda arrays, biases: jaxkl.fused_linear_distillation_loss(
      *arrays, **biases, **kwargs
    ),
    arrays,
    biases,
  )


@pytest.mark.parametrize(
  "overrides,error,match",
  [
    (dict(vocab_chunk=0), ValueError, "`vocab_chunk`.*got 0"),
    (dict(vocab_chunk=-2), ValueError, "`vocab_chunk`.*got -2"),
    (dict(vocab_chunk=2.5), TypeError, "`vocab_chunk`"),
    (dict(vocab_chunk=True), TypeError, "`vocab_chunk`"),
    (dict(vocab_chunk=np.float32(3)), TypeError, "`vocab_chunk`"),
    (dict(vocab_chunk="Auto"), TypeError, "`vocab_chunk`.*'Auto'"),
    (dict(vocab_chunk="none"), TypeError, "`vocab_chunk`.*'none'"),
    (dict(chunk_size="full"), TypeError, "`chunk_size`.*'full'"),
    (dict(chunk_size="AUTO"), TypeError, "`chunk_size`.*'AUTO'"),
    (dict(chunk_size=None), TypeError, "`chunk_size`.*None"),
    (dict(student_bias=jnp.zeros(6)), ValueError, "`student_bias`"),
    (dict(student_bias=jnp.zeros(4)), ValueError, "`student_bias`"),
    (dict(student_bias=jnp.zeros((1, 5))), ValueError, "`student_bias`"),
    (dict(student_bias=jnp.zeros(())), ValueError, "`student_bias`"),
    (dict(student_bias=jnp.zeros(5, jnp.int32)), TypeError, "`student_bias`"),
    (dict(student_bias=jnp.zeros(5, bool)), TypeError, "`student_bias`"),
    (dict(teacher_bias=jnp.zeros(4)), ValueError, "`teacher_bias`"),
    (dict(teacher_bias=jnp.zeros((5, 1))), ValueError, "`teacher_bias`"),
    (dict(teacher_bias=jnp.zeros(5, jnp.int8)), TypeError, "`teacher_bias`"),
    (
      dict(extra_teacher_classes="zero"),
      ValueError,
      "`extra_teacher_classes`",
    ),
    (
      dict(extra_teacher_classes=None),
      ValueError,
      "`extra_teacher_classes`",
    ),
  ],
)
def test_errors_at_trace_time(overrides, error, match):
  with pytest.raises(error, match=match):
    _trace(**overrides)


def test_valid_arguments_trace():
  """The same call traces with valid values of each argument."""
  for overrides in (
    {},
    dict(vocab_chunk=None),
    dict(vocab_chunk="auto", chunk_size="auto"),
    dict(vocab_chunk=1),
    dict(vocab_chunk=100),
    dict(vocab_chunk=np.int64(3)),
    dict(student_bias=jnp.zeros(5), teacher_bias=jnp.zeros(5)),
    dict(extra_teacher_classes="zero_mass"),
  ):
    assert _trace(**overrides).shape == ()


# ----------------------------------------------------------------------------
# 6. The automatic sizes (the docstring's "Chunk sizes";
# ``jaxkl._fused_linear.chunk_sizes`` resolves them).


@hypothesis.given(
  tokens=st.one_of(st.integers(1, 5000), st.integers(1, 2**20)),
  vocab=st.one_of(st.integers(1, 5000), st.integers(1, 2**19)),
  dtype=st.sampled_from(["float32", "float64"]),
  chunk_size=st.one_of(st.just("auto"), st.integers(1, 4096)),
  vocab_chunk=st.one_of(st.just("auto"), st.none(), st.integers(1, 2**18)),
)
@hypothesis.settings(max_examples=300, deadline=None)
def test_chunk_sizes_rule(tokens, vocab, dtype, chunk_size, vocab_chunk):
  """Within ``[1, N]`` and ``[1, V)`` (None: the whole vocabulary); explicit
  sizes kept (clamped to N, a block >= V meaning no blocks); 'auto' keeps
  every [chunk, block] buffer within the documented byte budget, and a
  problem whose [N, V] logits fit in it is one chunk with no vocabulary
  blocks."""
  rows, block = _fused_linear.chunk_sizes(
    tokens, vocab, chunk_size=chunk_size, vocab_chunk=vocab_chunk, dtype=dtype
  )
  itemsize = np.dtype(dtype).itemsize
  budget = _fused_blocks.BLOCK_BYTES
  assert isinstance(rows, int) and 1 <= rows <= tokens
  assert block is None or (isinstance(block, int) and 1 <= block < vocab)
  width = vocab if block is None else block
  if chunk_size != "auto":
    assert rows == min(chunk_size, tokens)
  if vocab_chunk is None:
    assert block is None
  elif vocab_chunk != "auto":
    assert block == (None if vocab_chunk >= vocab else vocab_chunk)
  if chunk_size == "auto" and vocab_chunk == "auto":
    assert rows * width * itemsize <= budget
    if tokens * vocab * itemsize <= budget:
      assert (rows, block) == (tokens, None)
  elif chunk_size == "auto":
    # Only the rows are free: as many as the budget allows (at least 1).
    assert rows * width * itemsize <= budget or rows == 1
  elif vocab_chunk == "auto":
    # Only the block is free: the whole vocabulary when it fits.
    assert rows * width * itemsize <= budget or block == 1
    if rows * vocab * itemsize <= budget:
      assert block is None


def test_chunk_sizes_documented_examples():
  """The docstring's numbers: a 32 MiB budget (8M float32 entries); 1024 x
  8192 for V = 128256; chunks over the whole vocabulary when 256 rows fit."""
  assert _fused_blocks.BLOCK_BYTES == 32 * 2**20
  sizes = _fused_linear.chunk_sizes
  assert sizes(8192, 128256) == (1024, 8192)
  assert sizes(2048, 262144) == (1024, 8192)
  assert sizes(8192, 32768) == (256, None)
  assert sizes(8192, 16384) == (512, None)
  assert sizes(64, 32768) == (64, None)  # N * V fits
  # Tokens on an explicit mesh axis: all of them in one chunk.
  assert sizes(8192, 128256, sharded_tokens=True) == (8192, 1024)
  # float64: 4M entries; 256 rows of 32768 do not fit.
  assert sizes(8192, 2**15, dtype=jnp.float64) == (1024, 4096)


@pytest.mark.parametrize(
  "chunk_size,vocab_chunk,error,match",
  [
    (0, "auto", ValueError, "`chunk_size`"),
    ("full", "auto", TypeError, "`chunk_size`"),
    ("auto", 0, ValueError, "`vocab_chunk`"),
    ("auto", 2.0, TypeError, "`vocab_chunk`"),
    ("auto", "None", TypeError, "`vocab_chunk`"),
  ],
)
def test_chunk_sizes_validates(chunk_size, vocab_chunk, error, match):
  with pytest.raises(error, match=match):
    _fused_linear.chunk_sizes(10, 10, chunk_size=chunk_size, vocab_chunk=vocab_chunk)


def test_auto_sizes_bound_the_compiled_buffers():
  """With N = 64 float32 tokens and V such that the [N, V] logits take twice
  the budget, 'auto' cuts the vocabulary into blocks: the compiled value and
  gradient hold [64, block] buffers and no [64, V] one."""
  n, hidden = 64, 8
  vocab = 2 * _fused_blocks.BLOCK_BYTES // (4 * n)
  shapes = ((n, hidden), (hidden, vocab)) * 2
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  for rows, block in (_fused_linear.chunk_sizes(n, vocab), (16, None)):
    assert rows * (block or vocab) * 4 <= _fused_blocks.BLOCK_BYTES
    loss = functools.partial(
      jaxkl.fused_linear_distillation_loss, chunk_size=rows, vocab_chunk=block
    )
    hlo = (
      jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile().as_text()
    )
    assert not re.search(rf"\[{n},{vocab}\]|\[{vocab},{n}\]", hlo)
    width = vocab if block is None else block
    assert re.search(rf"\[{rows},{width}\]|\[{width},{rows}\]", hlo)


# ----------------------------------------------------------------------------
# The conventions of issue 12: equal to ``jaxkl.distillation_loss`` on the
# materialized logits with the same arguments, values and gradients
# (hidden states, weights, each model's temperature).


@pytest.mark.parametrize("case", range(5))
def test_conventions_equal_distillation_loss(x64, case):
  """Separate temperatures, ``temperature_scaling='none'``, logit scale and
  soft-cap per model, the hard loss, ``sequence_mean`` with ``segment_ids``
  and ``num_items_in_batch``, with and without vocabulary blocks."""
  rng = np.random.default_rng(20 + case)
  n, v = 8, 11
  h_s, w_s, h_t, w_t = _problem(rng, n, 4, 3, v, v, jnp.float64, scale=2.0)
  labels = jnp.asarray(rng.integers(0, v, n)).at[3].set(-100)
  segments = jnp.asarray([5, 5, 1, 1, 1, 0, 0, 2])
  temperatures = {"student_temperature": jnp.float64(1.5)}
  kwargs = dict(chunk_size=3, labels=labels)
  if case == 0:
    temperatures["teacher_temperature"] = jnp.float64(0.7)
    kwargs.update(divergence="jsd", beta=0.3, vocab_chunk=4)
  elif case == 1:
    temperatures = {"temperature": jnp.float64(1.3)}
    kwargs.update(
      vocab_chunk=5,
      temperature_scaling="none",
      student_logit_softcap=2.0,
      teacher_logit_scale=0.5,
      teacher_logit_softcap=3.0,
      reduction="sequence_mean",
      segment_ids=segments,
    )
  elif case == 2:
    temperatures["teacher_temperature"] = jnp.float64(2.5)
    kwargs.update(
      divergence="reverse",
      vocab_chunk=None,
      hard_loss_weight=0.3,
      num_items_in_batch=13,
      student_logit_scale=0.8,
    )
  elif case == 3:
    # The hard loss with vocabulary blocks: streamed along the first pass.
    temperatures["teacher_temperature"] = jnp.float64(0.9)
    kwargs.update(
      divergence="jsd",
      beta=0.6,
      vocab_chunk=4,
      hard_loss_weight=0.4,
      student_logit_softcap=3.0,
      reduction="sequence_mean",
      segment_ids=segments,
    )
  else:
    temperatures["teacher_temperature"] = jnp.float64(1.1)
    kwargs.update(
      vocab_chunk=3,
      hard_loss_weight=1.0,
      reduction="none",
      student_logit_softcap=5.0,
      where=jnp.arange(n) != 6,
    )
  names = tuple(temperatures)
  cotangent = jnp.linspace(0.5, 1.5, n, dtype=jnp.float64)

  def make(fused):
    def loss(arrays, temps):
      call = dict(kwargs, **dict(zip(names, temps, strict=True)))
      if fused:
        out = jaxkl.fused_linear_distillation_loss(*arrays, **call)
      else:
        call.pop("chunk_size")
        call.pop("vocab_chunk")
        h_s, w_s, h_t, w_t = arrays
        out = jaxkl.distillation_loss(h_s @ w_s, h_t @ w_t, **call)
      return jnp.sum(out * cotangent) if out.ndim else out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

  inputs = ((h_s, w_s, h_t, w_t), tuple(temperatures.values()))
  got, want = make(True)(*inputs), make(False)(*inputs)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    _assert_close(a, b, 1e-10)
