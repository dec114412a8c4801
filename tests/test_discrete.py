"""jaxkl.kl_div and jaxkl.KLDivLoss against PyTorch, SciPy and hand-worked math."""

import math
import warnings

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.special
import torch

import jaxkl
from jaxkl import _reduction

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def torch_kl_div(x, t, **kwargs):
  """torch's kl_div on float64 copies, silencing its warnings."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return torch.nn.functional.kl_div(
      torch.as_tensor(np.asarray(x, np.float64)),
      torch.as_tensor(np.asarray(t, np.float64)),
      **kwargs,
    ).numpy()


def quiet_kl_div(*args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return jaxkl.kl_div(*args, **kwargs)


def random_problem(rng, shape, zero_fraction, log_target):
  """Log-probabilities for input; probabilities (or their logs) for target."""
  log_q = np.log(rng.uniform(1e-3, 1.0, size=shape))
  p = rng.uniform(0.0, 1.0, size=shape)
  p = np.where(rng.uniform(size=shape) < zero_fraction, 0.0, p)
  target = np.log(p) if log_target else p
  return log_q, target, p


# ----------------------------------------------------------------------------
# Hand-worked examples and closed forms.


def test_hand_worked_example():
  # P = (1/2, 1/2), Q = (1/4, 3/4):
  # KL = 1/2 log 2 + 1/2 log(2/3) = 1/2 log(4/3).
  log_q = jnp.log(jnp.array([0.25, 0.75]))
  p = jnp.array([0.5, 0.5])
  np.testing.assert_allclose(
    jaxkl.kl_div(log_q, p, reduction="sum"), 0.5 * math.log(4 / 3), rtol=1e-6
  )
  np.testing.assert_allclose(
    jaxkl.kl_div(log_q, p, reduction="none"),
    [0.5 * math.log(2), 0.5 * math.log(2 / 3)],
    rtol=1e-6,
  )
  # batchmean over a 1-d input divides by shape[0] = 2, mean by size = 2.
  np.testing.assert_allclose(
    jaxkl.kl_div(log_q, p, reduction="batchmean"), 0.25 * math.log(4 / 3), rtol=1e-6
  )


def test_bernoulli_closed_form(x64):
  a, b = 0.3, 0.8
  expected = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
  got = jaxkl.kl_div(
    jnp.log(jnp.array([b, 1 - b])), jnp.array([a, 1 - a]), reduction="sum"
  )
  np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_agrees_with_scipy_rel_entr(x64):
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(50), size=8)
  q = rng.dirichlet(np.ones(50), size=8)
  p[:, :5] = 0.0
  expected = scipy.special.rel_entr(p, q)
  np.testing.assert_allclose(
    jaxkl.kl_div(jnp.log(q), p, reduction="none"), expected, rtol=1e-13, atol=0
  )
  np.testing.assert_allclose(
    jaxkl.kl_div(jnp.log(q), jnp.log(p), reduction="none", log_target=True),
    expected,
    rtol=1e-13,
    atol=0,
  )
  np.testing.assert_allclose(
    jaxkl.kl_div(jnp.log(q), p, reduction="batchmean"), expected.sum() / 8, rtol=1e-13
  )


@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40))
@hypothesis.settings(max_examples=40, deadline=None)
def test_nonnegative_and_zero_iff_equal(seed, n):
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    p = rng.dirichlet(np.ones(n))
    q = rng.dirichlet(np.ones(n))
    kl_pq = float(jaxkl.kl_div(jnp.log(q), p, reduction="sum"))
    kl_pp = float(jaxkl.kl_div(jnp.log(p), p, reduction="sum"))
  assert kl_pq >= -1e-12
  assert abs(kl_pp) <= 1e-12
  if not np.allclose(p, q, atol=1e-6):
    assert kl_pq > 0


# ----------------------------------------------------------------------------
# Parity with torch.nn.functional.kl_div, values and gradients.

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)
legacy = st.sampled_from([None, True, False])


@hypothesis.given(
  shape=shapes,
  seed=st.integers(0, 2**32 - 1),
  reduction=st.sampled_from(REDUCTIONS),
  log_target=st.booleans(),
  size_average=legacy,
  reduce=legacy,
  zero_fraction=st.sampled_from([0.0, 0.3, 1.0]),
)
@hypothesis.settings(max_examples=150, deadline=None)
def test_matches_torch_values_and_gradients(
  shape, seed, reduction, log_target, size_average, reduce, zero_fraction
):
  rng = np.random.default_rng(seed)
  log_q, target, p = random_problem(rng, shape, zero_fraction, log_target)
  if log_target:
    # torch's value is NaN at log p = -inf; compare only where torch is finite.
    hypothesis.assume(np.all(p > 0))
  kwargs = dict(
    size_average=size_average, reduce=reduce, reduction=reduction, log_target=log_target
  )

  x_t = torch.tensor(log_q, dtype=torch.float64, requires_grad=True)
  t_t = torch.tensor(target, dtype=torch.float64, requires_grad=True)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out_t = torch.nn.functional.kl_div(x_t, t_t, **kwargs)
  cotangent = rng.normal(size=out_t.shape)
  (out_t * torch.as_tensor(cotangent)).sum().backward()

  with jax.enable_x64(True):

    def f(x, t):
      return quiet_kl_div(x, t, **kwargs)

    out, vjp = jax.vjp(f, jnp.asarray(log_q), jnp.asarray(target))
    grad_x, grad_t = vjp(jnp.asarray(cotangent))

  assert out.shape == tuple(out_t.shape)
  np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(grad_x, x_t.grad.numpy(), rtol=1e-12, atol=1e-14)
  torch_grad_t = t_t.grad.numpy()
  finite = np.isfinite(torch_grad_t)
  np.testing.assert_allclose(
    np.asarray(grad_t)[finite], torch_grad_t[finite], rtol=1e-12, atol=1e-14
  )
  # Where torch's target gradient is not finite (zero targets), ours is 0.
  np.testing.assert_array_equal(np.asarray(grad_t)[~finite], 0.0)


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kldivloss_matches_torch_module(reduction, log_target, x64):
  rng = np.random.default_rng(1)
  log_q, target, _ = random_problem(rng, (3, 5), 0.0, log_target)
  ours = jaxkl.KLDivLoss(reduction=reduction, log_target=log_target)
  theirs = torch.nn.KLDivLoss(reduction=reduction, log_target=log_target)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    expected = theirs(torch.as_tensor(log_q), torch.as_tensor(target)).numpy()
    got = ours(jnp.asarray(log_q), jnp.asarray(target))
  np.testing.assert_allclose(got, expected, rtol=1e-13)


@pytest.mark.parametrize(
  "size_average, reduce",
  [(None, False), (True, None), (False, True), (False, None), (True, False)],
)
@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum", "none"])
def test_kldivloss_legacy_conversion_matches_torch(
  size_average, reduce, reduction, x64
):
  rng = np.random.default_rng(2)
  log_q, target, _ = random_problem(rng, (4, 3), 0.2, False)
  with warnings.catch_warnings(record=True) as ours_w:
    warnings.simplefilter("always")
    ours = jaxkl.KLDivLoss(size_average, reduce, reduction)
  with warnings.catch_warnings(record=True) as theirs_w:
    warnings.simplefilter("always")
    theirs = torch.nn.KLDivLoss(size_average, reduce, reduction)
  assert ours.reduction == theirs.reduction
  assert [str(w.message) for w in ours_w] == [str(w.message) for w in theirs_w]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    expected = theirs(torch.as_tensor(log_q), torch.as_tensor(target)).numpy()
    got = ours(jnp.asarray(log_q), jnp.asarray(target))
  np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_legacy_batchmean_quirk_divides_unreduced(x64):
  rng = np.random.default_rng(3)
  log_q, p, _ = random_problem(rng, (4, 3), 0.0, False)
  got = quiet_kl_div(log_q, p, reduce=False, reduction="batchmean")
  expected = torch_kl_div(log_q, p, reduce=False, reduction="batchmean")
  assert got.shape == (4, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-13)
  np.testing.assert_allclose(
    got, scipy.special.rel_entr(p, np.exp(log_q)) / 4, rtol=1e-12
  )


# ----------------------------------------------------------------------------
# Warnings, reductions of odd shapes.


def test_mean_warns_like_torch():
  x = jnp.zeros((2, 2))
  with pytest.warns(UserWarning, match="'mean' divides the total loss") as rec:
    jaxkl.kl_div(x, jnp.exp(x))
  assert str(rec[0].message) == _reduction.MEAN_WARNING
  assert rec[0].filename == __file__  # stacklevel points at the caller
  with pytest.warns(UserWarning, match="elementwise_mean' is deprecated"):
    jaxkl.kl_div(x, jnp.exp(x), reduction="elementwise_mean")
  with pytest.warns(UserWarning, match="size_average and reduce args") as rec:
    jaxkl.kl_div(x, jnp.exp(x), reduce=False)
  assert rec[0].filename == __file__
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jaxkl.kl_div(x, jnp.exp(x), reduction="batchmean")  # silent


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), ()])
def test_empty_and_scalar_inputs_match_torch(shape, reduction, x64):
  rng = np.random.default_rng(4)
  log_q, p, _ = random_problem(rng, shape, 0.0, False)
  got = np.asarray(quiet_kl_div(log_q, p, reduction=reduction))
  expected = torch_kl_div(log_q, p, reduction=reduction)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-13, equal_nan=True)


def test_scalar_batchmean_is_plain_sum(x64):
  got = jaxkl.kl_div(jnp.log(0.25), 0.5, reduction="batchmean")
  np.testing.assert_allclose(got, 0.5 * math.log(2), rtol=1e-14)


# ----------------------------------------------------------------------------
# Numerics at the edges: never NaN where the math is finite.

inf = np.inf


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_zero_target_contributes_zero_whatever_the_input(dtype, x64):
  log_q = jnp.array([-inf, -1.0, 0.0, -1e30, -inf, -2.0], dtype)
  p = jnp.array([0.0, 0.0, 0.0, 0.0, 0.5, 0.5], dtype)
  got = jaxkl.kl_div(log_q, p, reduction="none")
  expected = [0, 0, 0, 0, inf, 0.5 * (math.log(0.5) + 2)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # torch gives nan for the first element and agrees elsewhere.
  torch_out = torch_kl_div(log_q, p, reduction="none")
  assert np.isnan(torch_out[0])
  np.testing.assert_allclose(got[1:], torch_out[1:], rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_log_target_minus_inf_contributes_zero(dtype, x64):
  log_q = jnp.array([-inf, -1.0, -inf, -1.0], dtype)
  log_p = jnp.array([-inf, -inf, -0.5, -0.5], dtype)
  got = jaxkl.kl_div(log_q, log_p, reduction="none", log_target=True)
  p = math.exp(-0.5)
  np.testing.assert_allclose(got, [0, 0, inf, p * 0.5], rtol=1e-6)
  assert np.isnan(
    torch_kl_div(log_q, log_p, reduction="none", log_target=True)[:2]
  ).all()


@pytest.mark.parametrize("log_target", [False, True])
def test_zero_rows_value_gradient_hessian_are_finite(log_target, x64):
  # A row whose target is entirely zero (e.g. a padded example) with -inf
  # log-probabilities (e.g. masked vocabulary).
  log_q = jnp.array([[-inf, -inf, 0.0], [math.log(0.2), math.log(0.3), math.log(0.5)]])
  p = jnp.array([[0.0, 0.0, 0.0], [0.3, 0.3, 0.4]])
  target = jnp.log(p) if log_target else p

  def loss(x, t):
    return jaxkl.kl_div(x, t, reduction="batchmean", log_target=log_target)

  expected = float(scipy.special.rel_entr(p[1], jnp.exp(log_q[1])).sum()) / 2
  np.testing.assert_allclose(loss(log_q, target), expected, rtol=1e-13)
  grad_x, grad_t = jax.grad(loss, argnums=(0, 1))(log_q, target)
  np.testing.assert_array_equal(grad_x[0], 0.0)
  np.testing.assert_array_equal(grad_t[0], 0.0)
  np.testing.assert_allclose(grad_x[1], -p[1] / 2, rtol=1e-14)
  assert np.isfinite(grad_t).all()
  for block in jax.tree_util.tree_leaves(
    jax.hessian(loss, argnums=(0, 1))(log_q, target)
  ):
    assert np.isfinite(block).all()


def test_gradient_wrt_zero_target_is_zero_like_rel_entr(x64):
  x = jnp.array([-1.0, -2.0])
  t = jnp.array([0.0, 0.25])
  ours = jax.grad(lambda t: jaxkl.kl_div(x, t, reduction="sum"))(t)
  rel_entr = jax.grad(lambda t: jnp.sum(jax.scipy.special.rel_entr(t, jnp.exp(x))))(t)
  np.testing.assert_array_equal(ours[0], 0.0)
  np.testing.assert_allclose(ours, rel_entr, rtol=1e-14)


def test_positive_target_against_minus_inf_is_inf():
  for log_target in (False, True):
    target = jnp.array([0.0, 0.5]) if not log_target else jnp.log(jnp.array([0.0, 0.5]))
    got = jaxkl.kl_div(
      jnp.array([-inf, -inf]), target, reduction="sum", log_target=log_target
    )
    assert got == inf


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_extreme_magnitudes(dtype, x64):
  finfo = jnp.finfo(dtype)
  tiny = float(finfo.tiny)
  log_q = jnp.array([-1e30, float(-finfo.max) / 4, -700.0, 0.0], dtype)
  p = jnp.array([tiny, tiny, 1.0, 1.0], dtype)
  got = np.asarray(jaxkl.kl_div(log_q, p, reduction="none"), np.float64)
  expected = torch_kl_div(np.asarray(log_q), np.asarray(p), reduction="none")
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert np.isfinite(got).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_issue_examples_huge_finite_inputs_match_torch(dtype, x64):
  # Each term is finite and so is the sum: the exact values, as torch.
  finfo = np.finfo(dtype)
  big = np.asarray(-0.3 * float(finfo.max), dtype)  # -1e38 in float32
  cases = [
    (np.array([big, big], dtype), np.ones(2, dtype), "sum"),
    (np.array([-0.9 * float(finfo.max)], dtype), np.ones(1, dtype), "sum"),
    (np.array([0.9 * float(finfo.max)], dtype), np.ones(1, dtype), "sum"),
    (np.array([-float(finfo.max)], dtype), np.ones(1, dtype), "sum"),
    (np.array([inf, 0.0], dtype), np.array([1.0, 0.5], dtype), "sum"),
    (np.array([big, big], dtype), np.ones(2, dtype), "batchmean"),
  ]
  for x, t, reduction in cases:
    got = float(jaxkl.kl_div(x, t, reduction=reduction))
    expected = float(torch_kl_div(x, t, reduction=reduction))
    assert got == pytest.approx(expected, rel=4 * float(finfo.eps)), (x, t, got)
  # The issue's float32 examples, literally.
  if dtype == jnp.float32:
    ones = jnp.ones(2, jnp.float32)
    assert float(
      jaxkl.kl_div(jnp.array([-1e38, -1e38], jnp.float32), ones, reduction="sum")
    ) == np.float32(2e38)
    assert float(
      jaxkl.kl_div(jnp.array([3e38], jnp.float32), ones[:1], reduction="sum")
    ) == np.float32(-3e38)
    assert (
      float(jaxkl.kl_div(jnp.array([inf], jnp.float32), ones[:1], reduction="sum"))
      == -inf
    )
  # A sum beyond finfo.max overflows, as the exact value is not
  # representable; a zero target still contributes 0 against anything.
  x = np.array([-0.6 * float(finfo.max)] * 2 + [-inf, 0.9 * float(finfo.max)], dtype)
  t = np.array([1, 1, 0, 0], dtype)
  assert float(jaxkl.kl_div(x, t, reduction="sum")) == inf
  np.testing.assert_array_equal(jaxkl.kl_div(x, t, reduction="none")[2:], [0, 0])
  # log q = +inf is no log-probability: with p = 0 the term is NaN, as in
  # torch (the one input outside the zero-mass rule; see _pointwise.py).
  for log_target in (False, True):
    target = np.array([-inf if log_target else 0.0], dtype)
    assert np.isnan(
      jaxkl.kl_div(
        np.array([inf], dtype), target, reduction="sum", log_target=log_target
      )
    )


# Property test over the whole class of huge / infinite / zero inputs: every
# value and gradient equals the exact one (mpmath, from the exact input
# values) up to a stated rounding bound, or is the exact value's overflow.

_EXACT_DTYPES = [jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16]
_SHAPE = (2, 3)


def _input_values(dtype):
  """Log-probabilities `input`: specials, huge magnitudes, ordinary values."""
  big = float(jnp.finfo(dtype).max)
  return st.one_of(
    st.sampled_from(
      [
        0.0,
        -0.0,
        inf,
        -inf,
        big,
        -big,
        0.3 * big,
        -0.3 * big,
        -0.6 * big,
        0.6 * big,
        -1e4,
        -1.0,
      ]
    ),
    st.floats(-1.0, 1.0).map(lambda u: u * big),
    st.floats(-60.0, 5.0),
  )


_PROBABILITIES = st.one_of(
  # 1e-40 and 1e-310 are subnormal in float32 / float64: zero mass.
  st.sampled_from([0.0, 0.0, 1.0, 0.5, 2.5, 1e-30, 1.2e-38, 1e-40, 1e-310]),
  st.floats(0.0, 1.0),
)
_LOG_PROBABILITIES = st.one_of(
  # exp(-300) is 0 in float32 (zero mass) but positive in float64. (Above
  # 0, p > 1 is no probability, and the target gradient's factor p may
  # overflow before the cotangent scales it down.)
  st.sampled_from([-inf, -inf, -1e4, -1000.0, -300.0, -50.0, 0.0]),
  st.floats(-60.0, 0.0),
)


def _exact_reference(x, t, log_target, reduction, cotangent, compute):
  """Exact value, gradients and rounding-error bounds (mpmath, 200 bits).

  Returns ``(value, bound, grad_x, bound_x, grad_t, bound_t, positive,
  negative)`` as mpmath numbers; ``value`` is per element for ``'none'``,
  else the reduced value. ``positive``/``negative`` are the sums of the
  finite positive/negative terms, before any division (to tell when a
  float term or partial sum may overflow although the result would not).
  """
  cfinfo = jnp.finfo(compute)
  eps, tiny = mpmath.mpf(float(cfinfo.eps)), mpmath.mpf(float(cfinfo.tiny))
  n = x.size
  terms, bounds, gx, bx, gt, bt = [], [], [], [], [], []
  for xi, ti, ci in zip(
    x.ravel().tolist(), t.ravel().tolist(), cotangent.ravel().tolist(), strict=False
  ):
    ci = mpmath.mpf(ci)
    if log_target:
      log_p = mpmath.mpf(ti) if ti > -inf else mpmath.ninf
      p = mpmath.exp(log_p)
      zero = p < tiny  # exp(log p) in the compute dtype underflows to 0
    else:
      p = mpmath.mpf(ti)
      zero = p < tiny  # 0 or subnormal (flushed to zero by XLA)
      log_p = mpmath.log(p) if not zero else mpmath.ninf
    if zero:
      # Zero mass: exactly 0 whatever the input, except log q = +inf (no
      # probability): NaN, as in torch (documented in jaxkl/_pointwise.py).
      terms.append(mpmath.nan if xi == inf else mpmath.mpf(0))
      bounds.append(tiny)
      gx.append(mpmath.mpf(0))
      bx.append(tiny)
      gt.append(mpmath.mpf(0))
      bt.append(tiny)
      continue
    if xi == -inf or xi == inf:
      sign = 1 if xi == -inf else -1
      terms.append(sign * mpmath.inf)
      bounds.append(mpmath.mpf(0))
      gt.append(sign * ci * mpmath.inf * (p if log_target else 1))
      bt.append(mpmath.mpf(0))
    else:
      xm = mpmath.mpf(xi)
      scale = p * (abs(log_p) + abs(xm) + 1)
      terms.append(p * (log_p - xm))
      bounds.append(8 * eps * scale + tiny)
      d_t = (p * (log_p - xm + 1)) if log_target else (log_p + 1 - xm)
      gt.append(ci * d_t)
      bt.append(
        8 * eps * abs(ci) * (scale if log_target else abs(log_p) + abs(xm) + 1) + tiny
      )
    gx.append(-p * ci)
    bx.append(4 * eps * abs(p * ci) + tiny)
  positive = sum((v for v in terms if mpmath.isfinite(v) and v > 0), mpmath.mpf(0))
  negative = sum((v for v in terms if mpmath.isfinite(v) and v < 0), mpmath.mpf(0))
  if reduction == "none":
    return terms, bounds, gx, bx, gt, bt, positive, negative
  infinities = {v for v in terms if mpmath.isinf(v)}
  if len(infinities) == 2 or any(mpmath.isnan(v) for v in terms):
    value = mpmath.nan
  elif infinities:
    value = infinities.pop()
  else:
    value = sum(terms, mpmath.mpf(0))
  bound = (n + 8) * sum(bounds, mpmath.mpf(0))
  divisor = {"sum": 1, "mean": n, "batchmean": x.shape[0]}[reduction]
  return (value / divisor, bound / divisor, gx, bx, gt, bt, positive, negative)


def _round_to(value, dtype):
  """An mpmath number rounded to nearest in ``dtype`` (inf beyond range)."""
  if mpmath.isnan(value):
    return np.nan
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # overflow to inf is the point
    return float(np.asarray(float(value), np.float64).astype(dtype))


def _check_close(got, exact, bound, dtype, what, may_overflow=(False, False)):
  """Asserts that ``got`` is ``exact`` rounded to ``dtype``, within ``bound``.

  ``exact`` is an mpmath number (possibly infinite or NaN), ``bound`` the
  rounding error allowed before the final rounding to ``dtype``; one ulp of
  ``dtype`` is added. A finite ``exact`` beyond ``dtype``'s range must give
  the infinity of its sign. ``may_overflow`` says whether a float term or
  partial sum of the positive (negative) terms may overflow although the
  exact result does not: then +inf (-inf) is accepted too, and NaN where
  an infinity of the other sign may meet it.
  """
  out_max = float(jnp.finfo(dtype).max)
  if mpmath.isnan(exact):
    assert math.isnan(got), (what, got)
    return
  if mpmath.isinf(exact):
    # NaN only if a finite term of the other sign overflowed to infinity.
    assert got == float(exact) or (
      math.isnan(got) and may_overflow[1 if exact > 0 else 0]
    ), (what, got, float(exact))
    return
  if math.isnan(got):
    assert may_overflow[0] and may_overflow[1], (what, got, float(exact))
    return
  margin = bound + 2 * float(jnp.finfo(dtype).eps) * out_max
  if abs(abs(exact) - out_max) <= margin:
    # At the overflow threshold: rounding may land on either side, on the
    # infinity of exact's sign or on a finite value within the margin (in
    # bfloat16 the margin is 1.6% of the largest finite number).
    assert (
      got == math.copysign(inf, float(exact)) or abs(mpmath.mpf(got) - exact) <= margin
    ), (what, got, float(exact))
    return
  if abs(exact) > out_max:
    assert got == math.copysign(inf, float(exact)), (what, got, float(exact))
    return
  if math.isinf(got):
    assert may_overflow[0 if got > 0 else 1], (what, got, float(exact))
    return
  finfo = jnp.finfo(dtype)
  magnitude = max(abs(got), abs(float(exact)), float(finfo.tiny))
  ulp = 2.0 ** (math.floor(math.log2(magnitude)) - finfo.nmant)
  err = abs(mpmath.mpf(got) - exact)
  assert err <= bound + ulp, (what, got, float(exact), float(err), float(bound))


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("dtype", _EXACT_DTYPES)
@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(data=st.data())
def test_huge_infinite_and_zero_inputs_equal_exact_values_and_gradients(
  data, dtype, log_target
):
  hypothesis.note(f"dtype={dtype.__name__}, log_target={log_target}")
  with jax.enable_x64(dtype == jnp.float64):
    _, compute = _checks_result_dtype(dtype)
    size = math.prod(_SHAPE)
    xs = data.draw(
      st.lists(_input_values(dtype), min_size=size, max_size=size), label="input"
    )
    ts = data.draw(
      st.lists(
        _LOG_PROBABILITIES if log_target else _PROBABILITIES,
        min_size=size,
        max_size=size,
      ),
      label="target",
    )
    reduction = data.draw(st.sampled_from(REDUCTIONS), label="reduction")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      x = np.asarray(xs, np.float64).astype(dtype).reshape(_SHAPE)
      t = np.asarray(ts, np.float64).astype(dtype).reshape(_SHAPE)
    weights = np.asarray(
      data.draw(
        st.lists(st.sampled_from([1.0, -2.0, 0.5]), min_size=size, max_size=size),
        label="cotangent",
      ),
      np.float64,
    ).reshape(_SHAPE)
    if reduction == "none":
      cotangent = weights
    else:
      cotangent = (
        np.ones(_SHAPE) / {"sum": 1, "mean": size, "batchmean": _SHAPE[0]}[reduction]
      )
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    (value, bound, gx, bx, gt, bt, positive, negative) = _exact_reference(
      x64, t64, log_target, reduction, cotangent, compute
    )
    cmax = float(jnp.finfo(compute).max)
    may_overflow = (positive > cmax * (1 - 2.0**-8), negative < -cmax * (1 - 2.0**-8))

    def loss(a, b):
      out = quiet_kl_div(a, b, reduction=reduction, log_target=log_target)
      if reduction == "none":
        out = jnp.sum(out.astype(compute) * jnp.asarray(weights, compute))
      return out

    xj, tj = jnp.asarray(x), jnp.asarray(t)
    for name, fn in (
      ("eager", quiet_kl_div),
      ("jit", jax.jit(quiet_kl_div, static_argnames=("reduction", "log_target"))),
    ):
      out = np.asarray(fn(xj, tj, reduction=reduction, log_target=log_target)).astype(
        np.float64
      )
      assert (
        out.dtype == np.float64
        and fn(xj, tj, reduction=reduction, log_target=log_target).dtype == dtype
      )
      if reduction == "none":
        for i, (v, b) in enumerate(zip(value, bound, strict=False)):
          _check_close(float(out.ravel()[i]), v, b, dtype, f"{name} value[{i}]")
      else:
        _check_close(float(out), value, bound, dtype, f"{name} value", may_overflow)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(xj, tj)
    for label, grad, exact, bounds in (
      ("d/dinput", grads[0], gx, bx),
      ("d/dtarget", grads[1], gt, bt),
    ):
      assert grad.dtype == dtype
      flat = np.asarray(grad).astype(np.float64).ravel()
      for i, (v, b) in enumerate(zip(exact, bounds, strict=False)):
        _check_close(float(flat[i]), v, b, dtype, f"{label}[{i}]")
    if dtype == jnp.float64 and reduction == "none":
      # torch (float64) agrees wherever its value is not NaN, except at
      # subnormal probabilities: XLA flushes them to zero (zero mass).
      theirs = torch_kl_div(x, t, reduction="none", log_target=log_target)
      ours = np.asarray(quiet_kl_div(xj, tj, reduction="none", log_target=log_target))
      with np.errstate(under="ignore"):
        p = np.exp(t) if log_target else t
      finite = ~np.isnan(theirs) & ~((p > 0) & (p < jnp.finfo(dtype).tiny))
      np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-13, atol=1e-300)


def _checks_result_dtype(dtype):
  from jaxkl import _checks  # pylint: disable=import-outside-toplevel

  return _checks.result_dtype(jnp.zeros((), dtype))


def test_negative_target_is_nan_like_torch():
  got = jaxkl.kl_div(jnp.array([-1.0]), jnp.array([-0.5]), reduction="sum")
  assert np.isnan(got)


# ----------------------------------------------------------------------------
# Dtypes.


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_accumulates_in_float32(dtype, x64):
  rng = np.random.default_rng(5)
  n = 10**6
  log_q = jnp.asarray(np.log(rng.dirichlet(np.ones(n))), dtype)
  p = jnp.asarray(rng.dirichlet(np.ones(n)), dtype)
  got = jaxkl.kl_div(log_q, p, reduction="sum")
  assert got.dtype == dtype
  # float64 value of the same (rounded) inputs.
  p64 = np.asarray(p, np.float64)
  expected = float(
    np.sum(scipy.special.xlogy(p64, p64) - p64 * np.asarray(log_q, np.float64))
  )
  ulp = 2.0 ** (math.floor(math.log2(abs(expected))) - jnp.finfo(dtype).nmant)
  # float32 accumulation leaves only the final rounding to `dtype`.
  assert abs(float(got) - expected) <= ulp, (float(got), expected, ulp)
  per_element = jaxkl.kl_div(log_q[:8], p[:8], reduction="none")
  assert per_element.dtype == dtype


def test_mixed_float_dtypes_promote_like_jnp(standard_promotion, x64):
  a16 = jnp.zeros(3, jnp.bfloat16)
  a32 = jnp.full(3, 1 / 3, jnp.float32)
  a64 = jnp.full(3, 1 / 3, jnp.float64)
  assert jaxkl.kl_div(a16, a32, reduction="sum").dtype == jnp.float32
  assert jaxkl.kl_div(a32, a64, reduction="none").dtype == jnp.float64
  assert (
    jaxkl.kl_div(a32, 0.5 * jnp.ones(3, jnp.float32), reduction="sum").dtype
    == jnp.float32
  )


def test_strict_promotion_is_respected():
  with pytest.raises(jax.dtypes.TypePromotionError):
    jaxkl.kl_div(jnp.zeros(3, jnp.bfloat16), jnp.ones(3, jnp.float32))


# ----------------------------------------------------------------------------
# Bad inputs.


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64])
def test_non_floating_dtype_raises_type_error(dtype):
  bad = jnp.zeros(3, dtype)
  good = jnp.zeros(3)
  with pytest.raises(
    TypeError, match=f"`input` must have a real floating.*{jnp.dtype(dtype).name}"
  ):
    jaxkl.kl_div(bad, good, reduction="sum")
  with pytest.raises(TypeError, match="`target` must have a real floating"):
    jaxkl.kl_div(good, bad, reduction="sum")


def test_non_array_raises_type_error():
  with pytest.raises(TypeError, match="`target` must be an array"):
    jaxkl.kl_div(jnp.zeros(3), "abc", reduction="sum")


def test_shape_mismatch_raises_value_error_naming_shapes():
  with pytest.raises(ValueError) as info:
    jaxkl.kl_div(jnp.zeros((4, 3)), jnp.zeros((4, 1)), reduction="sum")
  message = str(info.value)
  assert "(4, 3)" in message and "(4, 1)" in message
  assert "broadcast" in message and "jnp.broadcast_to" in message


@pytest.mark.parametrize("bad", ["avg", "batch_mean", None])
def test_invalid_reduction_raises_value_error(bad):
  with pytest.raises(ValueError, match="`reduction` must be one of"):
    jaxkl.kl_div(jnp.zeros(3), jnp.zeros(3), reduction=bad)
  with pytest.raises(ValueError, match="`reduction` must be one of"):
    jaxkl.KLDivLoss(reduction=bad)


def test_non_bool_log_target_raises_type_error():
  with pytest.raises(TypeError, match="`log_target` must be a Python bool"):
    jaxkl.kl_div(
      jnp.zeros(3), jnp.zeros(3), reduction="sum", log_target=jnp.array(True)
    )


def test_kldivloss_is_immutable_hashable_and_jit_static():
  loss = jaxkl.KLDivLoss(reduction="sum")
  with pytest.raises(AttributeError):
    loss.reduction = "mean"
  assert loss == jaxkl.KLDivLoss(reduction="sum")
  assert hash(loss) == hash(jaxkl.KLDivLoss(reduction="sum"))
  assert "sum" in repr(loss)
  f = jax.jit(lambda fn, x, t: fn(x, t), static_argnums=0)
  x = jnp.log(jnp.array([0.5, 0.5]))
  np.testing.assert_allclose(f(loss, x, jnp.array([1.0, 0.0])), math.log(2), rtol=1e-6)
