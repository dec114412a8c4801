"""fused_linear_distillation_loss: equal to the unfused composition, lean.

The reference everywhere is ``jaxkl.distillation_loss(h_s @ W_s, h_t @ W_t,
...)``, which materializes the ``[N, V]`` logits.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkl

N, H, H_T, V = 37, 6, 5, 11
DIVERGENCES = (("forward", 0.5), ("reverse", 0.5), ("jsd", 0.3))


@functools.cache
def _problem(dtype=np.float32, n=N, seed=0):
  rng = np.random.default_rng(seed)
  h_s = rng.normal(size=(n, H))
  w_s = rng.normal(size=(H, V)) / np.sqrt(H)
  h_t = rng.normal(size=(n, H_T))
  w_t = 2 * rng.normal(size=(H_T, V)) / np.sqrt(H_T)
  labels = np.where(rng.uniform(size=n) < 0.3, -100, 1).astype(np.int32)
  where = rng.uniform(size=n) < 0.7
  cotangent = rng.normal(size=n)  # weights the per-token losses of 'none'
  arrays = tuple(jnp.asarray(x, dtype) for x in (h_s, w_s, h_t, w_t))
  return arrays, jnp.asarray(labels), jnp.asarray(where), jnp.asarray(cotangent, dtype)


def _fused(h_s, w_s, h_t, w_t, temperature, **kwargs):
  return jaxkl.fused_linear_distillation_loss(
    h_s, w_s, h_t, w_t, temperature=temperature, **kwargs
  )


def _unfused(h_s, w_s, h_t, w_t, temperature, chunk_size=None, **kwargs):
  del chunk_size
  return jaxkl.distillation_loss(
    h_s @ w_s, h_t @ w_t, temperature=temperature, **kwargs
  )


def _value_and_grads(loss, arrays, temperature, cotangent, argnums=(0, 1), **kwargs):
  """Loss value(s) and gradients; 'none' is contracted with ``cotangent``."""

  def scalar(*args):
    values = loss(*args, **kwargs)
    total = jnp.sum(values * cotangent) if values.ndim else values
    return total, values

  fn = jax.jit(jax.value_and_grad(scalar, argnums=argnums, has_aux=True))
  (_, values), grads = fn(*arrays, temperature)
  return values, grads


def _assert_close(actual, expected, rtol):
  """Elementwise within ``rtol`` relative to each value or to the largest."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = float(np.max(np.abs(expected))) if expected.size else 0.0
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


_REFERENCES = {}


def _reference(arrays, cotangent, temperature, argnums, kwargs):
  """The unfused values and gradients, cached (they ignore ``chunk_size``).

  Arrays are keyed by identity: ``_problem`` is cached, so equal problems are
  the same objects.
  """
  kwargs = {k: v for k, v in kwargs.items() if k != "chunk_size"}
  key = (
    tuple(map(id, arrays)),
    id(cotangent),
    repr(temperature),
    argnums,
    tuple(
      sorted((k, id(v) if isinstance(v, jax.Array) else v) for k, v in kwargs.items())
    ),
  )
  if key not in _REFERENCES:
    _REFERENCES[key] = (
      _value_and_grads(
        _unfused, arrays, temperature, cotangent, argnums=argnums, **kwargs
      ),
      (arrays, cotangent, kwargs),
    )  # keeps the ids alive
  return _REFERENCES[key][0]


def _compare(arrays, cotangent, rtol, temperature=2.0, argnums=(0, 1), **kwargs):
  values, grads = _value_and_grads(
    _fused, arrays, temperature, cotangent, argnums=argnums, **kwargs
  )
  ref_values, ref_grads = _reference(arrays, cotangent, temperature, argnums, kwargs)
  _assert_close(values, ref_values, rtol)
  for grad, ref_grad in zip(grads, ref_grads, strict=False):
    assert grad.dtype == ref_grad.dtype
    _assert_close(grad, ref_grad, rtol)
  return values, grads


# Every divergence with a scalar reduction and 'none' (the two gradient
# paths), and every reduction with the forward KL; the reductions themselves
# are jaxkl.reduce_loss's, applied outside the per-row code.
@pytest.mark.parametrize(
  "divergence,beta,reduction",
  [
    *((d, b, r) for d, b in DIVERGENCES for r in ("mean", "none")),
    ("forward", 0.5, "sum"),
    ("forward", 0.5, "batchmean"),
  ],
)
def test_matches_unfused_with_labels(divergence, beta, reduction):
  arrays, labels, _, cotangent = _problem()
  _compare(
    arrays,
    cotangent,
    1e-5,
    divergence=divergence,
    beta=beta,
    reduction=reduction,
    labels=labels,
    chunk_size=8,
  )


@pytest.mark.parametrize(
  "chunk_size,reduction", ((8, "mean"), (37, "none"), (64, "mean"), (36, "none"))
)
def test_chunk_sizes_with_where(chunk_size, reduction):
  # N = 37: chunks of 8 do not divide it (the last chunk, rows 29-36,
  # overlaps rows 29-31 of the previous one); 37 and 64 make one chunk of all
  # rows; 36 makes two chunks sharing 35 rows.
  arrays, _, where, cotangent = _problem()
  _compare(
    arrays, cotangent, 1e-5, reduction=reduction, where=where, chunk_size=chunk_size
  )


def test_where_and_labels_together_and_ignore_index():
  arrays, labels, where, cotangent = _problem()
  labels = jnp.where(labels == -100, 7, labels)
  _compare(
    arrays,
    cotangent,
    1e-5,
    divergence="jsd",
    beta=0.3,
    where=where,
    labels=labels,
    ignore_index=7,
    reduction="batchmean",
    chunk_size=8,
  )


def test_no_mask_and_everything_masked():
  arrays, _, _, cotangent = _problem()
  _compare(arrays, cotangent, 1e-5, reduction="mean", chunk_size=16)
  values, grads = _compare(
    arrays,
    cotangent,
    1e-5,
    reduction="mean",
    where=jnp.zeros((N,), bool),
    chunk_size=16,
  )
  assert float(values) == 0.0
  assert all(not np.any(np.asarray(g)) for g in grads)


@pytest.mark.parametrize(
  "divergence,beta,reduction",
  [("forward", 0.5, "sum"), ("reverse", 0.5, "none"), ("jsd", 0.3, "mean")],
)
def test_float64(x64, divergence, beta, reduction):
  arrays, labels, _, cotangent = _problem(np.float64)
  values, grads = _compare(
    arrays,
    cotangent,
    1e-10,
    divergence=divergence,
    beta=beta,
    reduction=reduction,
    labels=labels,
    chunk_size=8,
  )
  assert values.dtype == jnp.float64
  assert all(g.dtype == jnp.float64 for g in grads)


def test_gradient_is_the_forward_kl_closed_form(x64):
  """dL/dW = h^T (softmax(s/T) - softmax(t/T)) T w_i, w_i = m_i / sum(m)."""
  (h_s, w_s, h_t, w_t), _, where, _ = _problem(np.float64)
  temperature = 2.0
  d_h, d_w = jax.grad(_fused, argnums=(0, 1))(
    h_s, w_s, h_t, w_t, temperature, where=where, chunk_size=8
  )
  q = jax.nn.softmax(h_s @ w_s / temperature, axis=-1)
  p = jax.nn.softmax(h_t @ w_t / temperature, axis=-1)
  weights = where.astype(jnp.float64) / jnp.sum(where, dtype=jnp.float64)
  d_logits = (q - p) * temperature * weights[:, None]
  _assert_close(d_w, h_s.T @ d_logits, 1e-10)
  _assert_close(d_h, d_logits @ w_s.T, 1e-10)


def test_teacher_and_temperature_gradients():
  """A differentiated teacher / temperature gets the exact gradient."""
  arrays, labels, _, cotangent = _problem()
  _compare(
    arrays,
    cotangent,
    2e-5,
    temperature=jnp.float32(1.5),
    argnums=(0, 1, 2, 3, 4),
    divergence="jsd",
    beta=0.3,
    labels=labels,
    reduction="mean",
    chunk_size=8,
  )
  _compare(
    arrays,
    cotangent,
    2e-5,
    temperature=jnp.float32(1.5),
    argnums=(2, 4),
    reduction="none",
    chunk_size=8,
  )
  # Only some arguments differentiated: the others are not computed.
  _compare(
    arrays, cotangent, 1e-5, argnums=(3,), labels=labels, reduction="sum", chunk_size=8
  )


def test_frozen_teacher_gets_zero_gradient():
  (h_s, w_s, h_t, w_t), _, _, _ = _problem()

  def loss(h_s, w_s, h_t, w_t):
    return jaxkl.fused_linear_distillation_loss(
      h_s, w_s, jax.lax.stop_gradient(h_t), jax.lax.stop_gradient(w_t), chunk_size=8
    )

  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(h_s, w_s, h_t, w_t)
  assert np.any(np.asarray(grads[1]))
  assert not np.any(np.asarray(grads[2])) and not np.any(np.asarray(grads[3]))


def test_half_precision_inputs():
  dtype = jnp.bfloat16
  arrays, labels, _, cotangent = _problem(dtype)
  values, grads = _value_and_grads(
    _fused, arrays, 2.0, cotangent, labels=labels, reduction="none", chunk_size=8
  )
  # The dtype distillation_loss returns for the same inputs: bfloat16.
  assert values.dtype == dtype
  assert [g.dtype for g in grads] == [dtype, dtype]
  # Reference: the same (rounded) inputs in float32, unfused. The loss is
  # computed in float32 and rounded once to bfloat16 (relative error 2**-8).
  wide = tuple(x.astype(jnp.float32) for x in arrays)
  ref_values, ref_grads = _value_and_grads(
    _unfused, wide, 2.0, cotangent.astype(jnp.float32), labels=labels, reduction="none"
  )
  _assert_close(values.astype(jnp.float32), ref_values, 2.0**-8)
  for grad, ref_grad in zip(grads, ref_grads, strict=False):
    _assert_close(grad.astype(jnp.float32), ref_grad, 2e-2)
  # float16: a float16 loss, within one float16 rounding (2**-11).
  arrays = tuple(x.astype(jnp.float16) for x in arrays)
  wide = tuple(x.astype(jnp.float32) for x in arrays)
  value = jaxkl.fused_linear_distillation_loss(*arrays, chunk_size=8)
  assert value.dtype == jnp.float16
  _assert_close(
    value.astype(jnp.float32),
    jaxkl.distillation_loss(wide[0] @ wide[1], wide[2] @ wide[3]),
    2.0**-11,
  )


@pytest.mark.parametrize(
  "dtypes",
  [
    ("float32",) * 4,
    ("bfloat16",) * 4,
    ("float16",) * 4,
    ("float64",) * 4,
    ("bfloat16", "bfloat16", "float32", "float32"),
    ("float16", "float16", "bfloat16", "bfloat16"),
    ("float32", "float64", "bfloat16", "float32"),
  ],
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_same_dtype_as_distillation_loss(dtypes, reduction, x64, standard_promotion):
  """For the same inputs, both losses return the same dtype (also mixed)."""
  arrays = tuple(x.astype(d) for x, d in zip(_problem()[0], dtypes, strict=False))
  fused = jaxkl.fused_linear_distillation_loss(
    *arrays, reduction=reduction, chunk_size=8
  )
  unfused = jaxkl.distillation_loss(
    arrays[0] @ arrays[1], arrays[2] @ arrays[3], reduction=reduction
  )
  assert fused.dtype == unfused.dtype
  assert fused.dtype == jnp.result_type(*arrays)
  # Equal up to the rounding of 16-bit logits (the unfused matmul rounds
  # them to its dtype; the fused one accumulates in float32).
  rtol = max([2.0 ** -jnp.finfo(x.dtype).nmant for x in arrays] + [1e-5])
  _assert_close(np.asarray(fused, np.float64), np.asarray(unfused, np.float64), rtol)


def test_jit_with_traced_temperature():
  (h_s, w_s, h_t, w_t), labels, _, _ = _problem()

  @jax.jit
  def both(temperature):
    kwargs = dict(temperature=temperature, labels=labels)
    return (
      jaxkl.fused_linear_distillation_loss(h_s, w_s, h_t, w_t, chunk_size=8, **kwargs),
      jaxkl.distillation_loss(h_s @ w_s, h_t @ w_t, **kwargs),
    )

  for temperature in (0.5, 1.0, 3.0):
    fused, unfused = both(jnp.float32(temperature))
    _assert_close(fused, unfused, 1e-5)


def test_vmap_over_a_batch_of_problems():
  arrays, _, _, _ = _problem()
  stacked = tuple(jnp.stack([x, 2 * x]) for x in arrays)
  fused = functools.partial(_fused, temperature=2.0, chunk_size=8)
  unfused = functools.partial(_unfused, temperature=2.0)
  _assert_close(
    jax.jit(jax.vmap(fused))(*stacked), jax.jit(jax.vmap(unfused))(*stacked), 1e-5
  )


@pytest.mark.parametrize(
  "divergence,beta,reduction",
  [("forward", 0.5, "none"), ("reverse", 0.5, "mean"), ("jsd", 0.3, "mean")],
)
def test_second_derivatives_equal_unfused(divergence, beta, reduction, x64):
  """Forward over reverse (jax.hessian) and reverse over reverse, w.r.t.
  every input and the temperature, equal the unfused loss's (float64)."""
  arrays = tuple(
    x[:7].astype(jnp.float64) if x.shape[0] == N else x.astype(jnp.float64)
    for x in _problem()[0]
  )
  weights = jnp.linspace(0.5, 1.5, 7)

  def scalar(loss):
    def f(h_s, w_s, h_t, w_t, temperature):
      values = loss(
        h_s,
        w_s,
        h_t,
        w_t,
        temperature,
        divergence=divergence,
        beta=beta,
        reduction=reduction,
        chunk_size=3,
      )
      return jnp.sum(values * weights) if values.ndim else values

    return f

  argnums = (0, 1, 2, 3, 4)
  args = (*arrays, jnp.asarray(1.7))
  for second in (
    jax.hessian,
    lambda f, argnums: jax.jacrev(jax.grad(f, argnums), argnums),
  ):
    got = jax.jit(second(scalar(_fused), argnums))(*args)
    want = jax.jit(second(scalar(_unfused), argnums))(*args)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=False):
      _assert_close(g, w, 1e-10)


def test_forward_mode_is_not_supported():
  arrays, _, _, _ = _problem()
  loss = lambda h: _fused(h, *arrays[1:], 1.0, chunk_size=8)  # noqa: E731
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jvp(loss, (arrays[0],), (arrays[0],))


def test_empty_batch():
  arrays, _, _, _ = _problem(n=0)
  assert _fused(*arrays, 1.0, reduction="none").shape == (0,)
  assert np.isnan(float(_fused(*arrays, 1.0)))  # mean of nothing, as unfused


# --------------------------------------------------------------------------- #
# Memory: no [N, V] buffer in the compiled forward + backward.
# --------------------------------------------------------------------------- #
def _compiled_hlo(loss, n, hidden, hidden_t, vocab, argnums=(0, 1)):
  shapes = ((n, hidden), (hidden, vocab), (n, hidden_t), (hidden_t, vocab))
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  step = jax.jit(jax.value_and_grad(loss, argnums=argnums))
  return step.lower(*args).compile().as_text()


def _has_logits_buffer(hlo, n, vocab):
  return bool(re.search(rf"\[{n},{vocab}\]|\[{vocab},{n}\]", hlo))


@pytest.mark.parametrize(
  "reduction,argnums", (("mean", (0, 1)), ("none", (0, 1, 2, 3)))
)
def test_no_tokens_by_vocabulary_buffer(reduction, argnums):
  n, hidden, hidden_t, vocab = 96, 24, 20, 1000

  def fused(h_s, w_s, h_t, w_t):
    return jnp.sum(
      jaxkl.fused_linear_distillation_loss(
        h_s,
        w_s,
        h_t,
        w_t,
        temperature=2.0,
        divergence="jsd",
        reduction=reduction,
        chunk_size=16,
      )
    )

  def unfused(h_s, w_s, h_t, w_t):
    return jnp.sum(
      jaxkl.distillation_loss(
        h_s @ w_s, h_t @ w_t, temperature=2.0, divergence="jsd", reduction=reduction
      )
    )

  fused_hlo = _compiled_hlo(fused, n, hidden, hidden_t, vocab, argnums)
  unfused_hlo = _compiled_hlo(unfused, n, hidden, hidden_t, vocab, argnums)
  assert _has_logits_buffer(unfused_hlo, n, vocab)  # the check can fail
  assert not _has_logits_buffer(fused_hlo, n, vocab)
  assert re.search(rf"\[16,{vocab}\]", fused_hlo)  # one chunk of logits


# --------------------------------------------------------------------------- #
# Errors.
# --------------------------------------------------------------------------- #
def _call(**overrides):
  (h_s, w_s, h_t, w_t), _, _, _ = _problem()
  kwargs = dict(
    student_hidden=h_s, student_weight=w_s, teacher_hidden=h_t, teacher_weight=w_t
  )
  kwargs.update(overrides)
  args = [
    kwargs.pop(k)
    for k in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight")
  ]
  return jaxkl.fused_linear_distillation_loss(*args, **kwargs)


@pytest.mark.parametrize(
  "overrides,error,match",
  [
    (
      dict(student_hidden=jnp.ones((2, N, H))),
      ValueError,
      r"`student_hidden` must be a matrix of shape \[N, H\]; got shape "
      r"\(2, 37, 6\)",
    ),
    (
      dict(student_weight=jnp.ones((H + 1, V))),
      ValueError,
      r"`student_weight` must have shape \[H, V\] with H = "
      r"student_hidden.shape\[1\] = 6 rows; got shape \(7, 11\)",
    ),
    (
      dict(teacher_hidden=jnp.ones((N + 1, H_T))),
      ValueError,
      r"`teacher_hidden` must have as many rows .* 37; got shape \(38, 5\)",
    ),
    (
      dict(teacher_weight=jnp.ones((H, V))),
      ValueError,
      r"`teacher_weight` must have shape \[H_t, V\] with H_t = .* = 5 rows",
    ),
    (
      dict(teacher_weight=jnp.ones((H_T, V + 1))),
      ValueError,
      r"same vocabulary size .* \(6, 11\) and \(5, 12\)",
    ),
    (
      dict(student_weight=jnp.ones((H,))),
      ValueError,
      r"`student_weight` must be a matrix of shape \[H, V\]",
    ),
    (
      dict(student_hidden=jnp.ones((N, H), jnp.int32)),
      TypeError,
      "`student_hidden` must have a real floating dtype",
    ),
    (dict(chunk_size=0), ValueError, "`chunk_size` must be a positive int; got 0"),
    (dict(chunk_size=-3), ValueError, "got -3"),
    (dict(chunk_size=2.5), TypeError, "`chunk_size` must be a positive"),
    (dict(chunk_size=True), TypeError, "`chunk_size` must be a positive"),
    (dict(reduction="mean_tokens"), ValueError, "`reduction` must be one of"),
    (dict(divergence="kl"), ValueError, "`divergence` must be one of"),
    (dict(divergence="jsd", beta=1.5), ValueError, r"`beta` must be in"),
    (dict(temperature=0.0), ValueError, "`temperature` must be a finite"),
    (
      dict(temperature=jnp.ones(2)),
      ValueError,
      r"`temperature` must be a scalar .*got an array of shape \(2,\)",
    ),
    (
      dict(where=jnp.ones((N, V), bool)),
      ValueError,
      r"`where` must have the per-token shape \(37,\)",
    ),
    (dict(where=jnp.ones((N,))), TypeError, "`where` must be a boolean"),
    (dict(labels=jnp.ones((N,))), TypeError, "`labels` must be integers"),
    (
      dict(labels=jnp.ones((N + 1,), jnp.int32)),
      ValueError,
      "`labels` must have the per-token shape",
    ),
    (dict(ignore_index=-100.0), TypeError, "`ignore_index` must be an int"),
  ],
)
def test_errors(overrides, error, match):
  with pytest.raises(error, match=match):
    _call(**overrides)


def test_errors_are_raised_at_trace_time_under_jit():
  (h_s, w_s, h_t, w_t), _, _, _ = _problem()
  loss = jax.jit(jaxkl.fused_linear_distillation_loss, static_argnames=("chunk_size",))
  with pytest.raises(ValueError, match="same vocabulary size"):
    loss(h_s, w_s, h_t, w_t[:, :-1], chunk_size=4)


# ----------------------------------------------------------------------------
# Excluded tokens may hold anything.


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("masked_by", ["where", "labels"])
def test_excluded_tokens_may_hold_anything(divergence, beta, reduction, masked_by, x64):
  """Hidden states of excluded tokens filled with -inf, inf, NaN or +-3e38
  (student, teacher or both): the loss, the per-token losses and every
  gradient are those of the problem without those tokens; the excluded
  tokens get per-token loss 0 and hidden-state gradients exactly 0.

  Reference: the fused loss on the kept tokens only (it equals the unfused
  loss, tested above), itself checked against ``distillation_loss`` here.
  """
  (h_s, w_s, h_t, w_t), labels, where, _ = _problem(np.float64, n=12)
  keep = np.asarray(where if masked_by == "where" else labels != -100)
  mask_kwargs = {"where": where} if masked_by == "where" else {"labels": labels}
  kept_kwargs = {} if masked_by == "where" else {"labels": labels[keep]}
  kwargs = dict(divergence=divergence, beta=beta, reduction=reduction, chunk_size=5)
  cotangent = jnp.linspace(0.5, 1.5, 12)

  def value_and_grads(h_s, h_t, cotangent, **extra):
    def scalar(*args):
      values = _fused(*args, 2.0, **kwargs, **extra)
      return (jnp.sum(values * cotangent) if values.ndim else values), values

    fn = jax.value_and_grad(scalar, argnums=(0, 1, 2, 3), has_aux=True)
    (_, values), grads = fn(h_s, w_s, h_t, w_t)
    return values, grads

  want_values, want_grads = value_and_grads(
    h_s[keep], h_t[keep], cotangent[keep], **kept_kwargs
  )
  unfused = _unfused(h_s[keep], w_s, h_t[keep], w_t, 2.0, **kwargs, **kept_kwargs)
  _assert_close(want_values, unfused, 1e-12)
  for fill in (-np.inf, np.inf, np.nan, 3e38, -3e38):
    for garbage_in in ("student", "teacher", "both"):
      bad_s, bad_t = np.array(h_s), np.array(h_t)
      if garbage_in != "teacher":
        bad_s[~keep] = fill
      if garbage_in != "student":
        bad_t[~keep] = fill
      values, grads = value_and_grads(
        jnp.asarray(bad_s), jnp.asarray(bad_t), cotangent, **mask_kwargs
      )
      what = f"{fill} in {garbage_in}"
      values = np.asarray(values)
      if reduction == "none":
        np.testing.assert_array_equal(values[~keep], 0.0, err_msg=what)
        values = values[keep]
      np.testing.assert_allclose(values, want_values, rtol=1e-12, err_msg=what)
      d_h_s, d_w_s, d_h_t, d_w_t = (np.asarray(g) for g in grads)
      for d_h, want_d_h in ((d_h_s, want_grads[0]), (d_h_t, want_grads[2])):
        np.testing.assert_array_equal(d_h[~keep], 0.0, err_msg=what)
        np.testing.assert_allclose(
          d_h[keep], want_d_h, rtol=1e-11, atol=1e-15, err_msg=what
        )
      for d_w, want_d_w in ((d_w_s, want_grads[1]), (d_w_t, want_grads[3])):
        np.testing.assert_allclose(d_w, want_d_w, rtol=1e-11, atol=1e-15, err_msg=what)
