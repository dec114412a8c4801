"""Classes masked in both inputs, derivatives of every order, non-negativity.

Issue 10, sections 1, 2 and 5. For every public function that takes logits,
a class whose logit is ``-inf`` in both the student and the teacher (padded
or masked vocabulary) has zero probability under both distributions, so it
must change neither the value nor any derivative with respect to the other
classes (or the temperature), and its own derivatives must be 0. References:

* the same function on the inputs with the masked classes removed (values,
  gradients and Hessians of the remaining entries);
* float64 NumPy enumeration of the divergences on the remaining classes
  (values), and PyTorch's autograd Hessian on the remaining classes for the
  worked examples of the issue.

The vocabulary-parallel form, with a device whose whole slice is padding, is
checked on 8 devices in ``tests/_sharding_checks.py``
(``vocab_parallel/padding_shard``).
"""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxkl
from jaxkl import _logits

inf = np.inf


# ----------------------------------------------------------------------------
# The functions, as f(student, teacher, temperature) -> scalar. For the
# from-logits functions, student and teacher are logits [B, C]; the scalar
# weights the per-example values (so that every row matters differently).
# For the fused loss they are the LM-head weights [H, C]: the logits are
# [h, 1] @ [[W], [bias]] with a -inf bias at the masked classes (the way
# to mask a class in both heads; see its docstring).

HIDDEN = 3
FUSED_TOKENS = 4


def _row_weights(rows):
  return jnp.linspace(0.5, 1.5, rows)


def _per_example(fn):
  def scalar(s, t, temperature, beta):
    values = fn(s, t, temperature, beta)
    return jnp.sum(values * _row_weights(s.shape[0]).astype(values.dtype))

  return scalar


PER_EXAMPLE = {
  "kl_divergence_from_logits": lambda s, t, T, b: jaxkl.kl_divergence_from_logits(
    s, t, temperature=T
  ),
  "jensen_shannon_from_logits": lambda s, t, T, b: jaxkl.jensen_shannon_from_logits(
    s, t, beta=b, temperature=T
  ),
  **{
    f"divergence_from_logits/{d}": functools.partial(
      lambda s, t, T, b, d: jaxkl.divergence_from_logits(
        s, t, divergence=d, beta=b, temperature=T
      ),
      d=d,
    )
    for d in ("forward", "reverse", "jsd")
  },
}
FUNCTIONS = {name: _per_example(fn) for name, fn in PER_EXAMPLE.items()}
for _d in ("forward", "reverse", "jsd"):
  FUNCTIONS[f"distillation_loss/{_d}"] = functools.partial(
    lambda s, t, T, b, d: jaxkl.distillation_loss(
      s,
      t,
      temperature=T,
      divergence=d,
      beta=b,
      reduction="mean",
      labels=jnp.arange(s.shape[0]) % 3 - 1,
      ignore_index=1,
    ),
    d=_d,
  )
  FUNCTIONS[f"fused_linear_distillation_loss/{_d}"] = functools.partial(
    lambda w_s, w_t, T, b, d: _fused(w_s, w_t, T, b, d), d=_d
  )
  # Vocabulary blocks of 2 (not dividing 3, 4 or 5 classes), the bias row
  # passed as the biases.
  FUNCTIONS[f"fused_linear_distillation_loss(vocab_chunk=2)/{_d}"] = functools.partial(
    lambda w_s, w_t, T, b, d: _fused(w_s, w_t, T, b, d, vocab_chunk=2), d=_d
  )
FUSED = tuple(name for name in FUNCTIONS if name.startswith("fused"))


def _fused_inputs():
  """The fused loss' hidden states (NumPy), each with a feature of ones."""
  rng = np.random.default_rng(0)
  h_s = rng.normal(size=(FUSED_TOKENS, HIDDEN))
  h_t = rng.normal(size=(FUSED_TOKENS, HIDDEN - 1))
  ones = np.ones((FUSED_TOKENS, 1))
  return np.concatenate([h_s, ones], 1), np.concatenate([h_t, ones], 1)


def _fused(w_s, w_t, temperature, beta, divergence, vocab_chunk=None):
  """The fused loss; the last row of each weight is the bias row (with
  ``vocab_chunk``, passed as ``student_bias`` and ``teacher_bias``)."""
  h_s, h_t = (jnp.asarray(h, w_s.dtype) for h in _fused_inputs())
  kwargs = {}
  if vocab_chunk is not None:
    kwargs = dict(student_bias=w_s[-1], teacher_bias=w_t[-1], vocab_chunk=vocab_chunk)
    h_s, w_s, h_t, w_t = h_s[:, :-1], w_s[:-1], h_t[:, :-1], w_t[:-1]
  return jaxkl.fused_linear_distillation_loss(
    h_s,
    w_s,
    h_t,
    w_t,
    temperature=temperature,
    divergence=divergence,
    beta=beta,
    reduction="sum",
    chunk_size=3,
    **kwargs,
  )


# ----------------------------------------------------------------------------
# Inputs.


def _make_inputs(name, rows, classes, masked, scale, seed, dtype):
  """``(full, reduced)`` pairs of (student, teacher) and the masked columns.

  ``full`` holds -inf at the ``masked`` class positions of both inputs
  (logits; or the bias row of the fused loss' weights), ``reduced`` is
  ``full`` without those columns.
  """
  rng = np.random.default_rng(seed)
  total = classes + len(masked)
  keep = np.ones(total, bool)
  keep[list(masked)] = False
  if name in FUSED:
    shapes = [(HIDDEN, total), (HIDDEN - 1, total)]
    full = [rng.normal(size=shape) * scale / np.sqrt(shape[0]) for shape in shapes]
    full = [np.concatenate([w, np.where(keep, 0.0, -inf)[None]], 0) for w in full]
  else:
    full = [rng.normal(size=(rows, total)) * scale for _ in range(2)]
    for x in full:
      x[:, ~keep] = -inf
  full = tuple(jnp.asarray(x, dtype) for x in full)
  reduced = tuple(x[:, keep] for x in full)
  return full, reduced, keep


def _numpy_reference(name, reduced, temperature, beta):
  """float64 enumeration of the value on the remaining classes."""
  s, t = (np.asarray(x, np.float64) for x in reduced)
  rows = s.shape[0]
  if name in FUSED:
    h_s, h_t = _fused_inputs()
    s, t = h_s @ s, h_t @ t
    rows = s.shape[0]

  def log_softmax(z):
    z = z / temperature
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))

  log_q, log_p = log_softmax(s), log_softmax(t)
  p, q = np.exp(log_p), np.exp(log_q)
  forward = (p * (log_p - log_q)).sum(-1)
  reverse = (q * (log_q - log_p)).sum(-1)
  with np.errstate(divide="ignore"):
    log_m = np.log(beta * p + (1 - beta) * q)
  jsd = beta * (p * (log_p - log_m)).sum(-1) + (1 - beta) * (q * (log_q - log_m)).sum(
    -1
  )
  if beta == 0.0:
    jsd = forward
  elif beta == 1.0:
    jsd = reverse
  kind = name.split("/")[-1]
  per_row = {
    "forward": forward,
    "reverse": reverse,
    "jsd": jsd,
    "kl_divergence_from_logits": forward,
    "jensen_shannon_from_logits": jsd,
  }[kind]
  if name.startswith("fused"):
    return temperature**2 * per_row.sum()
  if name.startswith("distillation_loss"):
    keep = (np.arange(rows) % 3 - 1) != 1
    return temperature**2 * per_row[keep].mean() if keep.any() else 0.0
  return (per_row * np.linspace(0.5, 1.5, rows)).sum()


# ----------------------------------------------------------------------------
# Derivatives of a function of (student, teacher, temperature) as one flat
# vector, so one Hessian holds every block (student, teacher, temperature and
# the mixed ones).


def _flat_function(fn, shapes, beta):
  sizes = [int(np.prod(shape)) for shape in shapes]

  def flat(x):
    s = x[: sizes[0]].reshape(shapes[0])
    t = x[sizes[0] : sizes[0] + sizes[1]].reshape(shapes[1])
    return fn(s, t, x[-1], beta)

  return flat


def _flatten(student, teacher, temperature):
  return jnp.concatenate(
    [student.ravel(), teacher.ravel(), jnp.asarray([temperature], student.dtype)]
  )


def _value_grad_and(outer):
  """``f -> x -> (f(x), grad f(x), outer(grad f)(x))`` from one trace of
  ``jax.value_and_grad(f)`` (the value and gradient ride along as the
  outer transformation's auxiliary output: fewer operations to compile)."""

  def transform(f):
    def grad_with_aux(x):
      value, grad = jax.value_and_grad(f)(x)
      return grad, (value, grad)

    def everything(x):
      second, (value, grad) = outer(grad_with_aux, has_aux=True)(x)
      return value, grad, second

    return everything

  return transform


def _jacfwd_jacfwd(f):
  def everything(x):
    value, grad = jax.value_and_grad(f)(x)
    return value, grad, jax.jacfwd(jax.jacfwd(f))(x)

  return everything


# Each maps f to x -> (value, gradient (reverse mode), second derivatives).
SECOND_ORDER = {
  "hessian": _value_grad_and(jax.jacfwd),  # forward over reverse
  "jacrev(grad)": _value_grad_and(jax.jacrev),
  "jacfwd(jacfwd)": _jacfwd_jacfwd,
}


_COMPILED = {}


def _derivatives(name, problems, beta, second_order, use_jit):
  """``(value, gradient, second derivatives)`` of each problem, float64.

  Each problem is ``(student, teacher, temperature)``. Under ``use_jit`` all
  of them are computed by one compiled function, cached by the static
  arguments and shapes (compiling is the cost of this test; the masked
  positions, logits and temperature are data).
  """
  shapes = [(s.shape, t.shape) for s, t, _ in problems]
  flats = [_flat_function(FUNCTIONS[name], shape, beta) for shape in shapes]
  xs = [_flatten(*problem) for problem in problems]

  def everything(xs):
    return [SECOND_ORDER[second_order](f)(x) for f, x in zip(flats, xs, strict=False)]

  if use_jit:
    key = (name, beta, second_order, str(xs[0].dtype), tuple(shapes))
    everything = _COMPILED.setdefault(key, jax.jit(everything))
  return jax.tree.map(lambda a: np.asarray(a, np.float64), everything(xs))


def _kept_entries(keep, shapes):
  """Boolean mask of the flat vector's entries that are not masked classes."""
  parts = [np.broadcast_to(keep, shape).ravel() for shape in shapes]
  return np.concatenate([*parts, np.ones(1, bool)])


def _assert_close(got, want, rtol, what):
  scale = float(np.max(np.abs(want), initial=0.0))
  np.testing.assert_allclose(
    got, want, rtol=rtol, atol=rtol * max(scale, 1), err_msg=what
  )


# ----------------------------------------------------------------------------
# The property.


# Every function, with 1 or 2 classes masked anywhere, every beta (jit: 0,
# 1/2, 1, to bound the compilations) and temperature, float32 and float64,
# jit and eager, the Hessian (forward over reverse) and, eagerly, the other
# second-order compositions. Shapes are fixed (2 rows, 3 real classes) so
# that eager mode reuses its compiled operations across examples.
# Compiling is the cost (CI runs on 2 cores): the fused loss is compiled as a
# whole even when called eagerly, so its eager and jit examples are the same
# test and it runs under jit only (one compilation of everything, instead of
# one per transformation), and the value, gradient and second derivatives
# come from one trace; 12 examples sample the classes above (the worked
# examples below pin the cases).
@hypothesis.given(
  name=st.sampled_from(sorted(FUNCTIONS)),
  masked_positions=st.lists(st.integers(0, 4), min_size=1, max_size=2),
  beta=st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0)),
  temperature=st.one_of(st.sampled_from([1.0, 0.5, 3.0]), st.floats(0.25, 4.0)),
  scale=st.sampled_from([1.0, 4.0]),
  seed=st.integers(0, 2**16),
  dtype=st.sampled_from(["float32", "float64"]),
  use_jit=st.booleans(),
  second_order=st.sampled_from(sorted(SECOND_ORDER)),
)
@hypothesis.settings(max_examples=12, deadline=None)
def test_class_masked_in_both_changes_nothing(
  name, masked_positions, beta, temperature, scale, seed, dtype, use_jit, second_order
):
  rows, classes = 2, 3
  if name in FUSED:
    use_jit = True  # compiled as a whole anyway (see above)
    if second_order == "jacfwd(jacfwd)":
      second_order = "hessian"  # a custom_vjp: no forward mode on the loss
  elif use_jit:
    second_order = "hessian"
  if use_jit:
    beta = round(2 * beta) / 2
  if "jsd" not in name and "jensen" not in name:
    beta = 0.5  # unused
  total = classes + len(masked_positions)
  masked = sorted({min(k, total - 1) for k in masked_positions})
  hypothesis.assume(len(masked) == len(masked_positions))
  with jax.enable_x64(dtype == "float64"):
    full, reduced, keep = _make_inputs(name, rows, classes, masked, scale, seed, dtype)
    got, want = _derivatives(
      name, [(*full, temperature), (*reduced, temperature)], beta, second_order, use_jit
    )
  rtol = 1e-12 if dtype == "float64" else 2e-5
  value, grad, hess = got
  want_value, want_grad, want_hess = want
  # Values: the reduced problem's, and float64 enumeration.
  _assert_close(value, want_value, rtol, "value")
  _assert_close(
    value,
    _numpy_reference(name, reduced, temperature, beta),
    1e-12 if dtype == "float64" else 1e-5,
    "value vs NumPy",
  )
  # Every derivative finite; those of the kept entries (and of the
  # temperature) equal to the reduced problem's; 0 for the masked classes.
  kept = _kept_entries(keep, [x.shape for x in full])
  assert np.isfinite(grad).all() and np.isfinite(hess).all()
  _assert_close(grad[kept], want_grad, rtol, "gradient")
  np.testing.assert_array_equal(grad[~kept], 0.0)
  _assert_close(hess[np.ix_(kept, kept)], want_hess, rtol, second_order)
  np.testing.assert_array_equal(hess[~kept], 0.0)
  np.testing.assert_array_equal(hess[:, ~kept], 0.0)


# ----------------------------------------------------------------------------
# The worked examples of the issue.


def test_jensen_shannon_gradient_with_a_class_masked_in_both():
  grad = jax.grad(
    lambda s: jaxkl.jensen_shannon_from_logits(s, jnp.array([0.1, -inf, 0.4]))
  )(jnp.array([0.5, -inf, 1.0]))
  # Hand-worked: with the class removed, p = softmax([.1, .4]),
  # q = softmax([.5, 1]), m = (p + q) / 2, dJSD/ds = q (log q - log m
  # - sum q (log q - log m)) / 2.
  p = np.exp([0.1, 0.4]) / np.exp([0.1, 0.4]).sum()
  q = np.exp([0.5, 1.0]) / np.exp([0.5, 1.0]).sum()
  r = np.log(q) - np.log((p + q) / 2)
  expected = q * (r - (q * r).sum()) / 2
  np.testing.assert_allclose(expected, [-0.011866, 0.011866], atol=1e-6)
  np.testing.assert_allclose(grad, [expected[0], 0.0, expected[1]], rtol=1e-5)
  assert grad[1] == 0.0


def _torch_forward_kl_hessians(s, t, temperature=1.0):
  """PyTorch autograd Hessians of KL(softmax(t/T) || softmax(s/T))."""

  def kl(a, b):
    return F.kl_div(
      F.log_softmax(a / temperature, -1),
      F.log_softmax(b / temperature, -1),
      log_target=True,
      reduction="sum",
    )

  s = torch.tensor(s, dtype=torch.float64)
  t = torch.tensor(t, dtype=torch.float64)
  h_s = torch.autograd.functional.hessian(lambda a: kl(a, t), s)
  h_t = torch.autograd.functional.hessian(lambda b: kl(s, b), t)
  return h_s.numpy(), h_t.numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hessians_at_a_class_masked_in_both(dtype):
  s = np.array([0.5, -inf, 1, -0.3])
  t = np.array([0.1, -inf, 0.4, 0.9])
  keep = np.array([True, False, True, True])
  want_s, want_t = _torch_forward_kl_hessians(s[keep], t[keep])
  np.testing.assert_allclose(want_s[0, 0], 0.21859, atol=5e-6)
  with jax.enable_x64(dtype == "float64"):
    s_j, t_j = jnp.asarray(s, dtype), jnp.asarray(t, dtype)
    h_s = jax.hessian(lambda a: jaxkl.kl_divergence_from_logits(a, t_j))(s_j)
    h_t = jax.hessian(lambda b: jaxkl.kl_divergence_from_logits(s_j, b))(t_j)
    h_cat = jax.hessian(lambda a: jaxkl.kl_categorical(t_j, a))(s_j)
  rtol = 1e-12 if dtype == "float64" else 1e-5
  for got, want in ((h_s, want_s), (h_t, want_t)):
    got = np.asarray(got, np.float64)
    _assert_close(got[np.ix_(keep, keep)], want, rtol, "Hessian")
    np.testing.assert_array_equal(got[~keep], 0.0)
    np.testing.assert_array_equal(got[:, ~keep], 0.0)
  # The closed form from logits agrees.
  _assert_close(
    np.asarray(h_s, np.float64)[np.ix_(keep, keep)],
    np.asarray(h_cat, np.float64)[np.ix_(keep, keep)],
    rtol,
    "kl_categorical",
  )


@pytest.mark.parametrize("divergence", ["forward", "jsd"])
def test_hessians_when_only_the_teacher_masks_a_class(divergence, x64):
  """p = 0 < q at class 1: the divergence and its derivatives are finite."""
  s = jnp.array([0.5, 2.0, 1, -0.3])
  t = jnp.array([0.1, -inf, 0.4, 0.9])

  def f(a, b, temperature):
    return jaxkl.divergence_from_logits(
      a, b, divergence=divergence, beta=0.3, temperature=temperature
    )

  for argnum in (0, 1, 2):
    hess = jax.hessian(f, argnum)(s, t, 1.5)
    assert np.isfinite(hess).all(), (argnum, hess)
  # Against PyTorch (forward KL; a finite teacher logit of -1e30 gives the
  # same zero mass without PyTorch's 0 * -inf = NaN).
  if divergence == "forward":
    t_torch = np.where(np.isinf(t), -1e30, t)
    want_s, _ = _torch_forward_kl_hessians(np.asarray(s), t_torch, 1.5)
    np.testing.assert_allclose(
      jax.hessian(f)(s, t, 1.5), want_s, rtol=1e-12, atol=1e-15
    )
  # The teacher's Hessian has a zero row and column at its masked class.
  hess_t = np.asarray(jax.hessian(f, 1)(s, t, 1.5))
  np.testing.assert_array_equal(hess_t[1], 0.0)
  np.testing.assert_array_equal(hess_t[:, 1], 0.0)


@pytest.mark.parametrize("name", sorted(PER_EXAMPLE))
def test_check_grads_second_order_with_masked_classes(name, x64):
  """Finite differences agree with the rules, to order 2, fwd and rev.

  -inf entries stay -inf under the finite-difference perturbation, so the
  check covers them too (their derivatives must be 0 on both sides).
  """
  rng = np.random.default_rng(7)
  s, t = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
  s[:, [1, 4]] = t[:, [1, 4]] = -inf
  fn = PER_EXAMPLE[name]
  jax.test_util.check_grads(
    lambda a, b, T: fn(a, b, T, 0.3),
    (jnp.asarray(s), jnp.asarray(t), jnp.asarray(1.7)),
    order=2,
    modes=("fwd", "rev"),
  )


def test_bfloat16_with_a_class_masked_in_both():
  rng = np.random.default_rng(8)
  s, t = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
  s[:, 2] = t[:, 2] = -inf
  s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  for divergence in ("forward", "reverse", "jsd"):

    def f(a, b, d=divergence):
      return jnp.sum(
        jaxkl.divergence_from_logits(a, b, divergence=d).astype(jnp.float32)
      )

    full = jax.value_and_grad(f, (0, 1))(s16, t16)
    reduced = jax.value_and_grad(f, (0, 1))(
      jnp.delete(s16, 2, 1), jnp.delete(t16, 2, 1)
    )
    np.testing.assert_allclose(full[0], reduced[0], rtol=1e-2)
    for got, want in zip(full[1], reduced[1], strict=False):
      got = np.asarray(got, np.float32)
      assert np.all(got[:, 2] == 0)
      np.testing.assert_allclose(
        np.delete(got, 2, 1), np.asarray(want, np.float32), atol=1e-2
      )


# ----------------------------------------------------------------------------
# Never negative, with the derivatives of the unclamped value.


def _unclamped(monkeypatch):
  monkeypatch.setattr(_logits, "_nonnegative", lambda value: value)


@hypothesis.given(
  seed=st.integers(0, 2**32 - 1),
  rows=st.integers(1, 32),
  classes=st.integers(1, 200),
  scale=st.sampled_from([0.1, 1.0, 10.0]),
  temperature=st.sampled_from([0.5, 1.0, 2.0, 7.0]),
  beta=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
  relative_noise=st.sampled_from([0.0, 1e-7, 1e-4]),
)
@hypothesis.settings(max_examples=25, deadline=None)
def test_divergences_are_never_negative_float32(
  seed, rows, classes, scale, temperature, beta, relative_noise
):
  """D(P || P) and D(P || P') for P' within rounding of P: >= 0 exactly."""
  rng = np.random.default_rng(seed)
  s = (rng.normal(size=(rows, classes)) * scale).astype(np.float32)
  t = (s * (1 + relative_noise * rng.normal(size=s.shape))).astype(np.float32)
  for a, b in ((s, s), (s, t), (t, s)):
    for divergence in ("forward", "reverse", "jsd"):
      got = jaxkl.divergence_from_logits(
        a, b, divergence=divergence, beta=beta, temperature=temperature
      )
      assert np.all(np.asarray(got) >= 0), (divergence, np.min(got))
      loss = jaxkl.distillation_loss(
        a,
        b,
        divergence=divergence,
        beta=beta,
        temperature=temperature,
        reduction="none",
      )
      assert np.all(np.asarray(loss) >= 0), (divergence, np.min(loss))


def test_clamping_matters_and_keeps_the_derivatives(monkeypatch):
  """Unclamped, JSD(P || P) is negative for many float32 rows (the issue's
  -8e-8); clamped it is 0, with the unclamped gradients and Hessians."""
  rng = np.random.default_rng(9)
  s = jnp.asarray(rng.normal(size=(256, 50)) * 2, jnp.float32)
  t = s + jnp.asarray(rng.normal(size=s.shape) * 1e-4, jnp.float32)
  w = jnp.asarray(rng.uniform(size=256), jnp.float32)

  def everything():
    out = {}
    for divergence in ("forward", "reverse", "jsd"):
      f = functools.partial(
        jaxkl.divergence_from_logits, divergence=divergence, beta=0.5, temperature=1.5
      )

      def scalar(a, b, f=f):
        return jnp.sum(f(a, b) * w)

      out[divergence] = (
        f(s, s),
        f(s, t),
        jax.grad(scalar, (0, 1))(s, t),
        jax.grad(scalar, (0, 1))(s, s),
        jax.hessian(lambda a, f=f: f(a[:2], t[:2]).sum())(s[:2]),
      )
    return out

  # A fresh wrapper for each jit: the trace must not be reused.
  clamped = jax.jit(lambda: everything())()
  _unclamped(monkeypatch)
  raw = jax.jit(lambda: everything())()
  assert np.any(np.asarray(raw["jsd"][0]) < 0)  # the fault the clamp fixes
  for divergence in ("forward", "reverse", "jsd"):
    value_pp, value, grads, grads_pp, hess = clamped[divergence]
    raw_pp, raw_value, raw_grads, raw_grads_pp, raw_hess = raw[divergence]
    np.testing.assert_array_equal(value_pp, np.maximum(raw_pp, 0))
    np.testing.assert_array_equal(value, np.maximum(raw_value, 0))
    for got, want in zip(
      grads + grads_pp + (hess,), raw_grads + raw_grads_pp + (raw_hess,), strict=False
    ):
      np.testing.assert_array_equal(got, want)


def test_fused_and_vocab_parallel_are_never_negative():
  rng = np.random.default_rng(10)
  h = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 100)), jnp.float32)
  mesh = jax.make_mesh((1,), ("model",))
  for divergence in ("forward", "reverse", "jsd"):
    for vocab_chunk in (None, 32):
      fused = jaxkl.fused_linear_distillation_loss(
        h,
        w,
        h,
        w,
        divergence=divergence,
        reduction="none",
        chunk_size=16,
        vocab_chunk=vocab_chunk,
      )
      assert np.all(np.asarray(fused) >= 0)
    per_device = jax.shard_map(
      functools.partial(
        jaxkl.vocab_parallel_kl_from_logits, axis_name="model", divergence=divergence
      ),
      mesh=mesh,
      in_specs=(P(None, "model"),) * 2,
      out_specs=P(),
    )
    logits = jax.device_put(h @ w, NamedSharding(mesh, P(None, "model")))
    assert np.all(np.asarray(jax.jit(per_device)(logits, logits)) >= 0)


# ----------------------------------------------------------------------------
# Temperature: one scalar.


@pytest.mark.parametrize(
  "fn",
  [
    jaxkl.kl_divergence_from_logits,
    jaxkl.jensen_shannon_from_logits,
    jaxkl.divergence_from_logits,
    jaxkl.distillation_loss,
  ],
)
@pytest.mark.parametrize(
  "temperature", [np.ones(4), jnp.ones((4, 1)), [2.0, 2.0, 2.0, 2.0], jnp.ones(1)]
)
def test_non_scalar_temperature_is_a_clear_error(fn, temperature):
  x = jnp.zeros((4, 5))
  shape = np.shape(temperature)
  message = (
    r"`temperature` must be a scalar .*got an array of shape "
    + repr(shape).replace("(", r"\(").replace(")", r"\)")
    + r".*divide the logits"
  )
  with pytest.raises(ValueError, match=message):
    fn(x, x, temperature=temperature)
  with pytest.raises(ValueError, match=message):  # at trace time
    jax.jit(lambda a, T: fn(a, a, temperature=T))(x, jnp.asarray(temperature))


def test_non_scalar_temperature_errors_in_fused_and_vocab_parallel():
  h, w = jnp.ones((4, 3)), jnp.ones((3, 5))
  message = r"`temperature` must be a scalar .*shape "
  with pytest.raises(ValueError, match=message + r"\(4,\)"):
    jaxkl.fused_linear_distillation_loss(h, w, h, w, temperature=jnp.ones(4))
  mesh = jax.make_mesh((1,), ("model",))
  per_device = jax.shard_map(
    functools.partial(
      jaxkl.vocab_parallel_kl_from_logits,
      axis_name="model",
      temperature=np.ones((4, 1)),
    ),
    mesh=mesh,
    in_specs=(P(None, "model"),) * 2,
    out_specs=P(),
  )
  logits = jax.device_put(h @ w, NamedSharding(mesh, P(None, "model")))
  with pytest.raises(ValueError, match=message + r"\(4, 1\)"):
    per_device(logits, logits)


def test_scalar_temperatures_still_accepted():
  x, y = jnp.zeros((2, 3)), jnp.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
  want = jaxkl.kl_divergence_from_logits(x, y, temperature=2.0)
  for temperature in (2, 2.0, np.float32(2.0), jnp.asarray(2.0), np.asarray(2.0)):
    np.testing.assert_allclose(
      jaxkl.kl_divergence_from_logits(x, y, temperature=temperature), want, rtol=1e-6
    )
  # The documented spelling of per-example temperatures.
  per_row = jnp.array([1.0, 3.0])
  got = jaxkl.kl_divergence_from_logits(x / per_row[:, None], y / per_row[:, None])
  for row in range(2):
    np.testing.assert_allclose(
      got[row],
      jaxkl.kl_divergence_from_logits(x[row], y[row], temperature=float(per_row[row])),
      rtol=1e-6,
    )
