"""Tests for ``jaxkl.kl_penalty`` (per-token KL penalties for RL fine-tuning).

References: NumPy/mpmath formulas, exact enumeration on a small categorical
(the gradient semantics of Tang & Munos, 2025, and the importance-sampling
correction of DeepSeek-V3.2), verl's semantics re-implemented in PyTorch, and
hand-worked numbers.
"""

import functools
import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import torch
from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import jaxkl
from jaxkl._rl import penalty as penalty_module

CANONICAL = ("k1", "abs", "k2", "k3")
ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


# ----------------------------------------------------------------------------
# References.


def _np_terms(logp, ref, estimator):
  """The estimators in NumPy float64 (k3 through mpmath: no cancellation)."""
  d = np.asarray(logp, np.float64) - np.asarray(ref, np.float64)
  if estimator == "k1":
    return d
  if estimator == "abs":
    return np.abs(d)
  if estimator == "k2":
    return 0.5 * d * d

  def k3(x):
    with mpmath.workdps(40):
      return float(mpmath.expm1(-mpmath.mpf(x)) + x)

  return np.vectorize(k3)(d)


def _mp(x):
  return mpmath.mpf(float(x))


def _flush(x, tiny):
  """XLA's flush of subnormal results to zero."""
  return mpmath.mpf(0) if abs(x) < tiny else x


def _mp_log_ratio(a, b, tiny=0):
  if a == b and mpmath.isinf(a):
    return mpmath.mpf(0)
  return _flush(a - b, tiny)


def _mp_g(d, estimator):
  """Estimator value and its first and second derivatives in d."""
  if estimator == "k1":
    return d, mpmath.mpf(1), mpmath.mpf(0)
  if estimator == "abs":
    return abs(d), mpmath.sign(d), mpmath.mpf(0)
  if estimator == "k2":
    return d * d / 2, d, mpmath.mpf(1)
  if d == -mpmath.inf:
    return mpmath.inf, -mpmath.inf, mpmath.inf
  return mpmath.expm1(-d) + d, -mpmath.expm1(-d), mpmath.exp(-d)


def _mp_reference(a, b, estimator, tiny=0):
  """Value, d/da, d/db and d2/da2 of the on-policy penalty."""
  with mpmath.workdps(60):
    d = _mp_log_ratio(_mp(a), _mp(b), tiny)
    g, g1, g2 = _mp_g(d, estimator)
    same_inf = a == b and math.isinf(a)
    if same_inf:
      g1 = g2 = mpmath.mpf(0)
    return g, g1, -g1, g2


def _mp_weighted_reference(a, b, m, estimator, dtype):
  """Value and d/da, d/db, d/dm of w * g(d), w = exp(a - m).

  The differences d = a - b, log w = a - m and log(π_ref/μ) = b - m are
  rounded to the compute dtype (and flushed to zero when subnormal), as the
  function sees them: the gradient w (1 + d) of w k1, for one, is as
  ill-conditioned near d = -1 as any formula in d. Products with a factor 0
  are 0 (a weight e^{1e19} times nothing). At π(y) = 0 (a = -inf): limits.
  """
  compute = np.float64 if dtype == jnp.float64 else np.float32
  tiny = float(np.finfo(compute).tiny)

  def rounded(x, y):
    if x == y and math.isinf(x):
      return mpmath.mpf(0)
    with np.errstate(over="ignore"):
      diff = float(np.asarray(x, compute) - np.asarray(y, compute))
    return _flush(mpmath.mpf(diff), tiny)

  def times(w, y):
    return mpmath.mpf(0) if y == 0 else w * y

  with mpmath.workdps(60):
    zero = mpmath.mpf(0)
    if a == -math.inf:
      if estimator == "k3" and b != -math.inf:
        lim = mpmath.exp(rounded(b, m))  # π_ref / μ
        return lim, zero, lim, -lim
      return zero, zero, zero, zero
    d = rounded(a, b)
    w = mpmath.exp(rounded(a, m))
    if estimator == "k3" and d < -1:
      # w ρ = π_ref / μ: from b - m, not from the difference of two
      # rounded numbers (log w - d).
      ref_over_mu = mpmath.exp(rounded(b, m))
      rho_inv = mpmath.exp(d)
      value = ref_over_mu * (1 - (1 - d) * rho_inv)
      return value, times(w, d), ref_over_mu * (1 - rho_inv), -value
    g, g1, _ = _mp_g(d, estimator)
    if estimator == "k3":
      da = times(w, d)  # k3 + k3' = d, exactly
    else:
      da = times(w, g + g1)
    value = times(w, g)
    return value, da, -times(w, g1), -value


def _expected(ref, dtype):
  """The reference rounded to ``dtype`` (±inf where it overflows)."""
  with np.errstate(over="ignore"):
    return np.asarray(float(ref), np.float64).astype(dtype)


def _assert_matches(actual, ref, dtype, rtol):
  actual = float(np.asarray(actual, np.float64))
  expected = float(_expected(ref, dtype))
  assert not math.isnan(actual), (actual, ref)
  if math.isinf(expected):
    assert actual == expected, (actual, ref)
    return
  tiny = float(jnp.finfo(dtype).tiny)
  assert math.isclose(actual, expected, rel_tol=rtol, abs_tol=4 * tiny), (
    actual,
    expected,
  )


def _rtol(dtype, *magnitudes):
  """Rounding of the inputs' differences, amplified by the estimator."""
  eps = float(jnp.finfo(jnp.float32 if dtype == jnp.bfloat16 else dtype).eps)
  scale = 1 + sum(min(abs(float(x)), 200.0) for x in magnitudes if math.isfinite(x))
  rtol = 8 * eps * scale
  if dtype == jnp.bfloat16:
    rtol += 2.0**-7
  return rtol


# ----------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("estimator", CANONICAL)
def test_values_match_numpy_float64(x64, estimator):
  rng = np.random.default_rng(0)
  logp = np.log(rng.dirichlet(np.ones(50), size=4))
  ref = np.log(rng.dirichlet(np.ones(50), size=4))
  out = jaxkl.kl_penalty(logp, ref, estimator=estimator)
  assert out.dtype == jnp.float64
  np.testing.assert_allclose(out, _np_terms(logp, ref, estimator), rtol=1e-14)


@pytest.mark.parametrize("estimator", CANONICAL)
def test_float32_values_match_float64_reference(estimator):
  rng = np.random.default_rng(1)
  logp = np.log(rng.dirichlet(np.ones(30), size=3)).astype(np.float32)
  ref = (logp + rng.normal(scale=0.01, size=logp.shape)).astype(np.float32)
  out = jaxkl.kl_penalty(logp, ref, estimator=estimator)
  assert out.dtype == jnp.float32
  # Small log-ratios: k3 ~ d^2 / 2 must keep its relative accuracy.
  np.testing.assert_allclose(out, _np_terms(logp, ref, estimator), rtol=2e-6)


def test_hand_worked_example():
  # π(y) = 1/2, π_ref(y) = 1/4: d = log 2, ρ = 1/2.
  logp = jnp.log(jnp.array([0.5]))
  ref = jnp.log(jnp.array([0.25]))
  log2 = math.log(2)
  expected = {"k1": log2, "abs": log2, "k2": log2**2 / 2, "k3": -0.5 + log2}
  for estimator, value in expected.items():
    out = jaxkl.kl_penalty(logp, ref, estimator=estimator)
    np.testing.assert_allclose(out, [value], rtol=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])  # it has no 'abs'
def test_bit_equal_to_kl_estimator_terms(estimator):
  rng = np.random.default_rng(2)
  logp = jnp.asarray(rng.normal(size=100) * 5, jnp.float32)
  ref = jnp.asarray(rng.normal(size=100) * 5, jnp.float32)
  np.testing.assert_array_equal(
    jaxkl.kl_penalty(logp, ref, estimator=estimator),
    jaxkl.kl_estimator_terms(logp, ref, estimator=estimator),
  )


def _grad(estimator, **kwargs):
  return jax.grad(
    lambda a, b: jaxkl.kl_penalty(a, b, estimator=estimator, **kwargs).sum()
  )


@pytest.mark.parametrize(
  "alias", [*ALIASES, *[a + "+" for a in (*CANONICAL, *ALIASES)]]
)
def test_aliases_and_plus_names(alias):
  rng = np.random.default_rng(3)
  logp = jnp.asarray(rng.normal(size=20), jnp.float32)
  ref = jnp.asarray(rng.normal(size=20), jnp.float32)
  plus = alias.endswith("+")
  base = alias[:-1] if plus else alias
  canonical = ALIASES.get(base, base)
  np.testing.assert_array_equal(
    jaxkl.kl_penalty(logp, ref, estimator=alias),
    jaxkl.kl_penalty(logp, ref, estimator=canonical),
  )
  expected_grad = _grad(canonical, gradient="k2" if plus else None)(logp, ref)
  np.testing.assert_array_equal(_grad(alias)(logp, ref), expected_grad)
  if plus:  # the gradient of k2: d
    np.testing.assert_allclose(_grad(alias)(logp, ref), logp - ref, rtol=1e-6)


# ----------------------------------------------------------------------------
# verl parity: verl's `kl_penalty` semantics written in PyTorch (with the '+'
# suffix stripped, as verl's documentation and its fix in PR #6058 intend).


def _torch_verl(logprob, ref_logprob, name):
  plus = name.endswith("+")
  base = name[:-1] if plus else name
  if base in ("kl", "k1"):
    value = logprob - ref_logprob
  elif base == "abs":
    value = (logprob - ref_logprob).abs()
  elif base in ("mse", "k2"):
    value = 0.5 * (logprob - ref_logprob) ** 2
  else:  # low_var_kl / k3: clamp the log-ratio to ±20, then the value to ±10
    log_rho = torch.clamp(ref_logprob - logprob, min=-20, max=20)
    value = torch.clamp(torch.exp(log_rho) - log_rho - 1, min=-10, max=10)
  if not plus or base in ("mse", "k2"):
    return value
  surrogate = 0.5 * (logprob - ref_logprob) ** 2
  return surrogate - surrogate.detach() + value.detach()


def _torch_value_and_grad(logp, ref, name):
  lp = torch.tensor(np.asarray(logp, np.float64), requires_grad=True)
  value = _torch_verl(lp, torch.tensor(np.asarray(ref, np.float64)), name)
  value.sum().backward()
  return value.detach().numpy(), lp.grad.numpy()


# log ρ from -30 to 30: inside and outside verl's caps (k3 = 10 at
# log ρ ≈ -11.0 and 2.61) and its ±20 clamp.
_VERL_REF = np.zeros(13)
_VERL_LOGP = -np.array([-30, -15, -11.5, -5, -2, -0.3, 0.0, 0.2, 1.0, 2.0, 2.7, 10, 30])


@pytest.mark.parametrize("name", ["kl", "abs", "mse", "k1+", "abs+"])
def test_verl_parity(x64, name):
  value, grad = _torch_value_and_grad(_VERL_LOGP, _VERL_REF, name)
  np.testing.assert_allclose(
    jaxkl.kl_penalty(_VERL_LOGP, _VERL_REF, estimator=name), value, rtol=1e-14
  )
  np.testing.assert_allclose(_grad(name)(_VERL_LOGP, _VERL_REF), grad, rtol=1e-14)


def test_verl_low_var_kl_recipe(x64):
  """The documented recipe reproduces verl's capped k3, value and gradient."""
  value, grad = _torch_value_and_grad(_VERL_LOGP, _VERL_REF, "low_var_kl")

  def verl_k3(a, b):
    out = jaxkl.kl_penalty(a, b, estimator="low_var_kl", clip_log_ratio=20.0)
    return jnp.minimum(out, 10.0)

  np.testing.assert_allclose(verl_k3(_VERL_LOGP, _VERL_REF), value, rtol=1e-13)
  recipe_grad = jax.grad(lambda a: verl_k3(a, _VERL_REF).sum())(_VERL_LOGP)
  np.testing.assert_allclose(recipe_grad, grad, rtol=1e-13, atol=1e-300)
  # Where the cap does not bind, 'low_var_kl+' is verl's 'low_var_kl+'.
  free = (value < 10) & (value > 0)
  value_plus, grad_plus = _torch_value_and_grad(_VERL_LOGP, _VERL_REF, "low_var_kl+")
  ours = jaxkl.kl_penalty(_VERL_LOGP, _VERL_REF, estimator="low_var_kl+")
  np.testing.assert_allclose(ours[free], value_plus[free], rtol=1e-13)
  np.testing.assert_allclose(_grad("low_var_kl+")(_VERL_LOGP, _VERL_REF), grad_plus)


# ----------------------------------------------------------------------------
# Gradient semantics by exact enumeration (Tang & Munos, 2025).

_V = 5


def _categorical():
  rng = np.random.default_rng(4)
  theta = jnp.asarray(rng.normal(size=_V))
  log_ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=_V)))
  log_mu = jax.nn.log_softmax(jnp.asarray(rng.normal(size=_V)))
  return theta, log_ref, log_mu


def _softmax_grad(pi, h):
  """∇θ Σ_y h(y) π_θ(y) with h held fixed, for π = softmax(θ)."""
  return pi * (h - jnp.sum(h * pi))


def _closed_forms(theta, log_ref):
  pi = jax.nn.softmax(theta)
  ref = jnp.exp(log_ref)
  d = jnp.log(pi) - log_ref
  return {
    "kl": jnp.sum(pi * d),
    # ∇ KL(π‖π_ref) = Σ (log π/π_ref) ∇π (Σ ∇π = 0).
    "grad_kl": _softmax_grad(pi, d),
    # ∇ KL(π_ref‖π) = -Σ π_ref ∇log π = π - π_ref.
    "grad_reverse_kl": pi - ref,
    "grad_l1": _softmax_grad(pi, jnp.sign(pi - ref)),
  }


def _expected_gradient(theta, log_ref, estimator, **kwargs):
  """Σ_y sg(π(y)) ∇θ penalty(log π(y), log π_ref(y))."""

  def loss(t):
    logp = jax.nn.log_softmax(t)
    weights = jax.lax.stop_gradient(jnp.exp(logp))
    return jnp.sum(
      weights * jaxkl.kl_penalty(logp, log_ref, estimator=estimator, **kwargs)
    )

  return jax.grad(loss)(theta)


@pytest.mark.parametrize(
  ("estimator", "gradient", "target"),
  [
    ("k1", None, "zero"),
    ("k2", None, "grad_kl"),
    ("k3", None, "grad_reverse_kl"),
    ("abs", None, "grad_l1"),
    ("k1", "k2", "grad_kl"),
    ("abs", "k2", "grad_kl"),
    ("k3", "k2", "grad_kl"),
    ("low_var_kl+", None, "grad_kl"),
  ],
)
def test_gradient_semantics_by_enumeration(x64, estimator, gradient, target):
  theta, log_ref, _ = _categorical()
  forms = _closed_forms(theta, log_ref)
  got = _expected_gradient(theta, log_ref, estimator, gradient=gradient)
  expected = jnp.zeros(_V) if target == "zero" else forms[target]
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
  # The targets are far apart, so no estimator can pass for another.
  targets = [forms[t] for t in ("grad_kl", "grad_reverse_kl", "grad_l1")]
  for i, first in enumerate(targets):
    assert float(jnp.min(jnp.abs(first))) > 1e-3
    for second in targets[i + 1 :]:
      assert float(jnp.max(jnp.abs(first - second))) > 1e-2


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_values_by_enumeration(x64, estimator):
  theta, log_ref, _ = _categorical()
  logp = jax.nn.log_softmax(theta)
  mean = jnp.sum(jnp.exp(logp) * jaxkl.kl_penalty(logp, log_ref, estimator=estimator))
  np.testing.assert_allclose(mean, _closed_forms(theta, log_ref)["kl"], rtol=1e-13)


# ----------------------------------------------------------------------------
# Importance-sampling correction by enumeration (tokens sampled from μ).


def _is_expectation(theta, log_ref, log_mu, estimator, **kwargs):
  """(E_μ[w k], E_μ[∇θ (w k)]) by enumeration, with μ fixed."""

  def loss(t):
    logp = jax.nn.log_softmax(t)
    values = jaxkl.kl_penalty(
      logp, log_ref, estimator=estimator, behavior_log_probs=log_mu, **kwargs
    )
    return jnp.sum(jnp.exp(log_mu) * values)

  return jax.value_and_grad(loss)(theta)


@pytest.mark.parametrize("estimator", ["k1", "k3", "low_var_kl"])
def test_importance_weighted_kl_is_unbiased(x64, estimator):
  theta, log_ref, log_mu = _categorical()
  forms = _closed_forms(theta, log_ref)
  value, grad = _is_expectation(theta, log_ref, log_mu, estimator)
  np.testing.assert_allclose(value, forms["kl"], rtol=1e-13)
  np.testing.assert_allclose(grad, forms["grad_kl"], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("estimator", ["k2", "abs"])
def test_importance_weighted_biased_estimators(x64, estimator):
  """E_μ[w k] = E_π[k] and E_μ[∇(w k)] = ∇E_π[k] (not the KL's)."""
  theta, log_ref, log_mu = _categorical()
  pi = jax.nn.softmax(theta)
  d = jnp.log(pi) - log_ref
  k = 0.5 * d * d if estimator == "k2" else jnp.abs(d)
  slope = d if estimator == "k2" else jnp.sign(d)
  value, grad = _is_expectation(theta, log_ref, log_mu, estimator)
  np.testing.assert_allclose(value, jnp.sum(pi * k), rtol=1e-13)
  # ∇ Σ π k(log π) = Σ (k + k') ∇π.
  np.testing.assert_allclose(grad, _softmax_grad(pi, k + slope), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("estimator", CANONICAL)
def test_importance_weighted_k2_gradient(x64, estimator):
  """gradient='k2' off policy: sg(w) k2, unbiased for ∇KL(π‖π_ref)."""
  theta, log_ref, log_mu = _categorical()
  forms = _closed_forms(theta, log_ref)
  _, grad = _is_expectation(theta, log_ref, log_mu, estimator, gradient="k2")
  np.testing.assert_allclose(grad, forms["grad_kl"], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_on_policy_weight_gives_gradient_of_kl(x64, estimator):
  """behavior_log_probs = sg(log_probs): values unchanged, ∇ of KL(π‖π_ref)."""
  theta, log_ref, _ = _categorical()
  forms = _closed_forms(theta, log_ref)

  def loss(t):
    logp = jax.nn.log_softmax(t)
    values = jaxkl.kl_penalty(
      logp,
      log_ref,
      estimator=estimator,
      behavior_log_probs=jax.lax.stop_gradient(logp),
    )
    return jnp.sum(jax.lax.stop_gradient(jnp.exp(logp)) * values)

  np.testing.assert_allclose(jax.grad(loss)(theta), forms["grad_kl"], rtol=1e-12)
  logp = jax.nn.log_softmax(theta)
  np.testing.assert_array_equal(
    jaxkl.kl_penalty(logp, log_ref, estimator=estimator, behavior_log_probs=logp),
    jaxkl.kl_penalty(logp, log_ref, estimator=estimator),
  )


def test_truncated_weight_recipe(x64):
  """behavior = max(log μ, log π - log C) caps w at C, with no weight gradient."""
  logp = jnp.array([-0.1, -3.0])
  ref = jnp.array([-0.5, -1.0])
  log_mu = jnp.array([-5.0, -3.5])  # w = e^4.9 (capped at 10) and e^0.5
  cap = 10.0

  def f(a):
    behavior = jnp.maximum(log_mu, a - jnp.log(cap))
    return jaxkl.kl_penalty(a, ref, estimator="k1", behavior_log_probs=behavior)

  d = logp - ref
  np.testing.assert_allclose(f(logp), [cap * d[0], math.exp(0.5) * d[1]], rtol=1e-14)
  grad = jax.jacobian(f)(logp)
  # Capped: w = C constant, ∂(C d)/∂a = C; uncapped: w (1 + d).
  np.testing.assert_allclose(
    jnp.diag(grad), [cap, math.exp(0.5) * (1 + d[1])], rtol=1e-14
  )


# ----------------------------------------------------------------------------
# Straight-through gradient.

_DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("estimator", CANONICAL)
@pytest.mark.parametrize("off_policy", [False, True])
def test_straight_through_value_is_bit_exact(dtype, estimator, off_policy):
  rng = np.random.default_rng(5)
  logp = jnp.asarray(rng.normal(size=64) * 4 - 2, dtype)
  ref = jnp.asarray(rng.normal(size=64) * 4 - 2, dtype)
  kwargs = {}
  if off_policy:
    kwargs["behavior_log_probs"] = jnp.asarray(rng.normal(size=64) * 2 - 2, dtype)
  for clip in (None, 3.0):
    plain = jaxkl.kl_penalty(
      logp, ref, estimator=estimator, clip_log_ratio=clip, **kwargs
    )
    st = jaxkl.kl_penalty(
      logp, ref, estimator=estimator, gradient="k2", clip_log_ratio=clip, **kwargs
    )
    assert st.dtype == dtype
    np.testing.assert_array_equal(
      np.asarray(st, np.float32), np.asarray(plain, np.float32)
    )


@pytest.mark.parametrize("estimator", CANONICAL)
def test_straight_through_gradient_is_k2_gradient(estimator):
  rng = np.random.default_rng(6)
  logp = jnp.asarray(rng.normal(size=64) * 4, jnp.float32)
  ref = jnp.asarray(rng.normal(size=64) * 4, jnp.float32)
  grads = jax.grad(
    lambda a, b: jaxkl.kl_penalty(a, b, estimator=estimator, gradient="k2").sum(),
    argnums=(0, 1),
  )(logp, ref)
  k2_grads = jax.grad(
    lambda a, b: jaxkl.kl_penalty(a, b, estimator="k2").sum(), argnums=(0, 1)
  )(logp, ref)
  for got, want in zip(grads, k2_grads, strict=True):
    np.testing.assert_array_equal(got, want)


def test_straight_through_survives_k2_overflow():
  """d = 1e30: k2 overflows, the k1 value stays exact, the k2 gradient is d."""
  logp = jnp.array([1e30], jnp.float32)
  ref = jnp.array([0.0], jnp.float32)
  np.testing.assert_array_equal(jaxkl.kl_penalty(logp, ref, estimator="k1+"), logp)
  np.testing.assert_array_equal(_grad("k1+")(logp, ref), logp)


# ----------------------------------------------------------------------------
# Overflow: property tests over the whole float range.

_F32_MAX = float(np.finfo(np.float32).max)
# XLA flushes subnormal floats to zero, so none are drawn (and the
# references flush the subnormal differences of normal inputs).
_special = st.sampled_from(
  [
    0.0,
    -0.0,
    1e-30,
    -1e-30,
    1.5e-38,
    -1.5e-38,
    88.0,
    -88.0,
    89.0,
    -89.0,
    1e19,
    -1e19,
    -3e38,
    3e38,
    -_F32_MAX,
    -math.inf,
  ]
)
_log_prob = st.one_of(
  _special,
  st.floats(-_F32_MAX, _F32_MAX, width=32, allow_subnormal=False),
  st.floats(-120, 120, width=32, allow_subnormal=False),
  st.floats(-1, 1, width=32, allow_subnormal=False),
)
_finite_log_prob = _log_prob.filter(math.isfinite)
_dtype = st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float64])


@functools.cache
def _derivatives(estimator, dtype, order):
  def f(a, b):
    return jaxkl.kl_penalty(a, b, estimator=estimator)

  grads = jax.grad(f, argnums=(0, 1))
  second = jax.grad(jax.grad(f))
  if order == 1:
    return jax.jit(lambda a, b: (f(a, b), *grads(a, b)))
  return jax.jit(second)


def _tiny(dtype):
  return float(jnp.finfo(jnp.float64 if dtype == jnp.float64 else jnp.float32).tiny)


def _cast(x, dtype):
  return jnp.asarray(np.asarray(x, np.float64).astype(np.dtype(dtype)))


@settings(max_examples=150, deadline=None)
@given(a=_log_prob, b=_log_prob, estimator=st.sampled_from(CANONICAL), dtype=_dtype)
def test_values_and_gradients_across_float_range(a, b, estimator, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    a, b = _cast(a, dtype), _cast(b, dtype)
    value, grad_a, grad_b = _derivatives(estimator, dtype, 1)(a, b)
    assert value.dtype == dtype and grad_a.dtype == dtype
    ref_value, ref_a, ref_b, _ = _mp_reference(
      float(a), float(b), estimator, _tiny(dtype)
    )
    rtol = _rtol(dtype, float(a) - float(b))
    _assert_matches(value, ref_value, dtype, rtol)
    _assert_matches(grad_a, ref_a, dtype, rtol)
    _assert_matches(grad_b, ref_b, dtype, rtol)
    if estimator != "k1":
      assert value >= 0


@settings(max_examples=100, deadline=None)
@given(a=_log_prob, b=_log_prob, estimator=st.sampled_from(["k2", "k3"]), dtype=_dtype)
def test_second_derivatives_across_float_range(a, b, estimator, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    a, b = _cast(a, dtype), _cast(b, dtype)
    second = _derivatives(estimator, dtype, 2)(a, b)
    _, _, _, ref = _mp_reference(float(a), float(b), estimator, _tiny(dtype))
    _assert_matches(second, ref, dtype, _rtol(dtype, float(a) - float(b)))


@functools.cache
def _weighted_derivatives(estimator, dtype):
  def f(a, b, m):
    return jaxkl.kl_penalty(a, b, estimator=estimator, behavior_log_probs=m)

  return jax.jit(lambda a, b, m: (f(a, b, m), *jax.grad(f, argnums=(0, 1, 2))(a, b, m)))


@settings(max_examples=150, deadline=None)
@given(
  a=_log_prob,
  b=_log_prob,
  m=_finite_log_prob,
  estimator=st.sampled_from(CANONICAL),
  dtype=_dtype,
)
def test_importance_weighted_across_float_range(a, b, m, estimator, dtype):
  """Log-probabilities (<= 0) from -3.4e38 to 0; log μ finite at a sample."""
  with jax.enable_x64(dtype == jnp.float64):
    a, b, m = (_cast(-abs(x), dtype) for x in (a, b, m))
    assume(bool(jnp.isfinite(m)))
    outs = _weighted_derivatives(estimator, dtype)(a, b, m)
    refs = _mp_weighted_reference(float(a), float(b), float(m), estimator, dtype)
    a, b, m = float(a), float(b), float(m)
    rtol = _rtol(dtype, a - b, a - m, b - m)
    for out, ref in zip(outs, refs, strict=True):
      assert out.dtype == dtype
      _assert_matches(out, ref, dtype, rtol)


@settings(max_examples=60, deadline=None)
@given(
  a=st.floats(-30, 0, width=32),
  b=st.floats(-30, 0, width=32),
  m=st.floats(-30, 0, width=32),
  estimator=st.sampled_from(["k1", "k3"]),
)
def test_importance_weighted_second_derivative(a, b, m, estimator):
  """∂²/∂a² of w k: w (1 + d) for k3 (∂a = w d), w (2 + d) for k1."""

  def f(x):
    return jaxkl.kl_penalty(x, b, estimator=estimator, behavior_log_probs=m)

  with jax.enable_x64(True):
    second = jax.grad(jax.grad(f))(jnp.float64(a))
  w, d = math.exp(a - m), a - b
  expected = w * (1 + d) if estimator == "k3" else w * (2 + d)
  np.testing.assert_allclose(second, expected, rtol=1e-12, atol=1e-12 * w)


# ----------------------------------------------------------------------------
# Masks.


def _garbage(rng, shape):
  x = rng.normal(size=shape) * 3
  flat = x.reshape(-1)
  flat[::3] = np.nan
  flat[1::3] = np.inf
  flat[2::5] = -np.inf
  return x


@pytest.mark.parametrize("estimator", CANONICAL)
@pytest.mark.parametrize(
  "kwargs",
  [
    {},
    {"gradient": "k2"},
    {"clip_log_ratio": 1.0},
    {"clip_log_ratio": 1.0, "clip_straight_through": True},
    {"off_policy": True},
  ],
)
def test_masked_garbage_gives_zero_value_and_gradient(estimator, kwargs):
  kwargs = dict(kwargs)
  rng = np.random.default_rng(7)
  shape = (4, 6)
  keep = rng.random(shape) < 0.5
  logp = np.where(keep, rng.normal(size=shape) - 1, _garbage(rng, shape))
  ref = np.where(keep, rng.normal(size=shape) - 1, _garbage(rng, shape))
  mu = np.where(keep, rng.normal(size=shape) - 1, _garbage(rng, shape))
  logp, ref, mu = (jnp.asarray(x, jnp.float32) for x in (logp, ref, mu))
  if kwargs.pop("off_policy", False):
    kwargs["behavior_log_probs"] = mu

  def f(a, b):
    return jaxkl.kl_penalty(
      a, b, estimator=estimator, where=jnp.asarray(keep), **kwargs
    )

  value = f(logp, ref)
  grads = jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1))(logp, ref)
  assert np.all(value[~keep] == 0)
  clean = jaxkl.kl_penalty(
    jnp.where(keep, logp, -1.0),
    jnp.where(keep, ref, -1.0),
    estimator=estimator,
    **{
      k: (jnp.where(keep, v, -1.0) if k == "behavior_log_probs" else v)
      for k, v in kwargs.items()
    },
  )
  np.testing.assert_array_equal(value[keep], clean[keep])
  assert np.all(np.isfinite(value))
  for g in grads:
    assert np.all(g[~keep] == 0)
    assert np.all(np.isfinite(g))


def test_mask_broadcasts_over_tokens():
  logp = jnp.full((2, 3), jnp.nan)
  logp = logp.at[0].set(jnp.log(jnp.array([0.5, 0.25, 0.25])))
  ref = jnp.log(jnp.full((2, 3), 1 / 3))
  keep = jnp.array([[True], [False]])  # [B, 1]: whole sequences
  out = jaxkl.kl_penalty(logp, ref, estimator="k3", where=keep)
  np.testing.assert_array_equal(out[1], [0, 0, 0])
  np.testing.assert_allclose(
    out[0], _np_terms(np.asarray(logp[0]), np.asarray(ref[0]), "k3"), rtol=1e-6
  )


# ----------------------------------------------------------------------------
# Clipping the log-ratio before exp.


@pytest.mark.parametrize("estimator", CANONICAL)
def test_clip_values_and_both_gradient_modes(x64, estimator):
  c = 2.0
  logp = jnp.array([-1e300, -50.0, -3.0, -1.0, 0.5, 3.0, 50.0, -jnp.inf, 0.0])
  ref = jnp.zeros_like(logp).at[-1].set(-jnp.inf)
  d = np.clip(np.asarray(logp - ref), -c, c)
  inside = np.abs(np.asarray(logp - ref)) <= c
  value = jaxkl.kl_penalty(logp, ref, estimator=estimator, clip_log_ratio=c)
  np.testing.assert_allclose(value, _np_terms(d, 0 * d, estimator), rtol=1e-14)
  _, slope, _ = zip(*(_mp_g(_mp(x), estimator) for x in d), strict=True)
  slope = np.array([float(s) for s in slope])
  grad = _grad(estimator, clip_log_ratio=c)(logp, ref)
  np.testing.assert_allclose(grad, np.where(inside, slope, 0), rtol=1e-14)
  st_value = jaxkl.kl_penalty(
    logp, ref, estimator=estimator, clip_log_ratio=c, clip_straight_through=True
  )
  np.testing.assert_array_equal(st_value, value)
  st_grad = _grad(estimator, clip_log_ratio=c, clip_straight_through=True)(logp, ref)
  np.testing.assert_allclose(st_grad, slope, rtol=1e-14)


def test_clip_keeps_k3_finite_in_bf16_and_float32():
  for dtype in (jnp.float32, jnp.bfloat16):
    logp = jnp.array([-3e38, -200.0, 0.0], dtype)
    ref = jnp.array([0.0, 0.0, -3e38], dtype)
    for straight in (False, True):
      value = jaxkl.kl_penalty(
        logp, ref, estimator="k3", clip_log_ratio=20.0, clip_straight_through=straight
      )
      grad = _grad("k3", clip_log_ratio=20.0, clip_straight_through=straight)(logp, ref)
      expected = [math.expm1(20) - 20] * 2 + [math.expm1(-20) + 20]
      np.testing.assert_allclose(np.asarray(value, np.float64), expected, rtol=1e-2)
      assert np.all(np.isfinite(np.asarray(grad, np.float32)))


# ----------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"estimator": "full"}, ValueError, "kl_penalty_from_logits"),
    ({"estimator": "full+"}, ValueError, "kl_penalty_from_logits"),
    ({"estimator": "k4"}, ValueError, r"`estimator`.*'low_var_kl\+'"),
    ({"estimator": "K3"}, ValueError, "`estimator`"),
    ({"gradient": "k3"}, ValueError, "`gradient`"),
    ({"gradient": "pathwise"}, ValueError, "`gradient`"),
    ({"clip_log_ratio": 0.0}, ValueError, "`clip_log_ratio`"),
    ({"clip_log_ratio": -1.0}, ValueError, "`clip_log_ratio`"),
    ({"clip_log_ratio": math.inf}, ValueError, "`clip_log_ratio`"),
    ({"clip_log_ratio": math.nan}, ValueError, "`clip_log_ratio`"),
    ({"clip_log_ratio": True}, TypeError, "`clip_log_ratio`"),
    ({"clip_log_ratio": jnp.array(1.0)}, TypeError, "`clip_log_ratio`"),
    ({"clip_straight_through": True}, ValueError, "`clip_straight_through=True`"),
    (
      {"clip_log_ratio": 1.0, "clip_straight_through": 1},
      TypeError,
      "`clip_straight_through`",
    ),
    ({"behavior_log_probs": jnp.zeros(2)}, ValueError, "`behavior_log_probs`"),
    (
      {"behavior_log_probs": jnp.zeros(3, jnp.int32)},
      TypeError,
      "`behavior_log_probs`",
    ),
    ({"where": jnp.ones(3)}, TypeError, "`where`"),
    ({"where": jnp.ones(2, bool)}, ValueError, "`where`"),
  ],
)
def test_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    jaxkl.kl_penalty(jnp.zeros(3), jnp.zeros(3), **kwargs)


def test_input_errors():
  with pytest.raises(ValueError, match="`ref_log_probs`"):
    jaxkl.kl_penalty(jnp.zeros(3), jnp.zeros(4))
  with pytest.raises(TypeError, match="`log_probs`"):
    jaxkl.kl_penalty(jnp.zeros(3, jnp.int32), jnp.zeros(3))


def test_every_documented_name_is_accepted():
  for name in penalty_module.ESTIMATOR_NAMES:
    jaxkl.kl_penalty(jnp.zeros(1), jnp.zeros(1), estimator=name)


# ----------------------------------------------------------------------------
# Transformations.


@pytest.mark.parametrize("estimator", ["k1", "k3+", "abs"])
def test_jit_and_vmap(estimator):
  rng = np.random.default_rng(8)
  logp, ref, mu = (
    jnp.asarray(rng.normal(size=(3, 7)) - 2, jnp.float32) for _ in range(3)
  )
  keep = jnp.asarray(rng.random((3, 7)) < 0.7)

  def f(a, b, m, w):
    return jaxkl.kl_penalty(
      a, b, estimator=estimator, behavior_log_probs=m, where=w, clip_log_ratio=1.5
    )

  eager = f(logp, ref, mu, keep)
  np.testing.assert_allclose(jax.jit(f)(logp, ref, mu, keep), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(f)(logp, ref, mu, keep), eager, rtol=1e-6)
  grad = jax.grad(lambda a: f(a, ref, mu, keep).sum())
  np.testing.assert_allclose(
    jax.vmap(jax.grad(lambda a, b, m, w: f(a, b, m, w).sum()))(logp, ref, mu, keep),
    grad(logp),
    rtol=1e-6,
  )
