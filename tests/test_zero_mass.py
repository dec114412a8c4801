"""One meaning of zero mass across jaxkl: every discrete path agrees.

The library-wide rule (README, "Zero mass"): a class has zero mass under P
exactly when P's probability, computed as ``exp(log p)`` in the computation
dtype (float32 for 16-bit inputs; subnormals flushed to zero), is 0. Such a
class contributes exactly 0 to KL(P || Q), whatever Q is (even log Q = -inf);
a class with positive mass under P where Q has zero mass makes KL = +inf.

The same pairs of distributions -- classes whose probability underflows,
exact zeros (-inf logits), huge finite logits -- are fed to every discrete
path of the library, and each must give the value of an independent
reference: the rule applied to log-probabilities computed in 200-bit
arithmetic (mpmath) from the same logits.
"""

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxkl

inf = math.inf

# (name, teacher logits P, student logits Q); 4 classes each.
CASES = [
  # exp(-1000 - logsumexp) is 0 in float32 and float64: zero mass, so the
  # -inf student logit there costs nothing (torch.distributions: 0).
  ("underflowing P vs -inf Q", [0.0, -1000.0, 1.0, 2.0], [0.0, -inf, 1.0, 2.0]),
  # exp(-102.4) is subnormal in float32 (flushed: zero mass, KL = 0) but a
  # positive float64 (KL = +inf).
  ("P mass only in float64 (-100)", [0.0, -100.0, 1.0, 2.0], [0.0, -inf, 1.0, 2.0]),
  ("P mass only in float64 (-300)", [0.0, -300.0, 1.0, 2.0], [0.0, -inf, 1.0, 2.0]),
  ("P mass vs -inf Q", [0.0, -1.0, 1.0, 2.0], [0.0, -inf, 1.0, 2.0]),
  ("-inf in both", [0.0, -inf, 1.0, 2.0], [0.0, -inf, 1.0, 2.0]),
  ("one-hot P vs uniform Q", [0.0, -inf, -inf, -inf], [0.0, 0.0, 0.0, 0.0]),
  ("mixed", [-inf, 0.0, -1000.0, 5.0], [3.0, -inf, 0.0, 0.0]),
  ("underflow in both", [0.0, -1000.0, 0.0, 0.0], [0.0, -1000.0, 0.0, 0.0]),
  # Q's probability underflows but its log-probability is finite: the
  # divergence is finite (log Q is used as given, never exp'd and logged).
  ("underflowing Q, P mass", [0.0, -1.0, 1.0, 2.0], [0.0, -1000.0, 1.0, 2.0]),
  ("huge finite Q logit", [0.0, 0.0, 0.0, 0.0], [0.0, -1e30, 0.0, 0.0]),
]
TEACHER = [c[1] for c in CASES]
STUDENT = [c[2] for c in CASES]
IDS = [c[0] for c in CASES]


def _log_softmax_exact(logits):
  finite = [mpmath.mpf(v) for v in logits if v != -inf]
  log_z = mpmath.log(sum(mpmath.exp(v) for v in finite))
  return [mpmath.mpf(v) - log_z if v != -inf else mpmath.ninf for v in logits]


def reference(teacher, student, dtype):
  """The rule in 200-bit arithmetic, rounded to ``dtype``."""
  tiny = mpmath.mpf(float(jnp.finfo(dtype).tiny))
  with mpmath.workprec(200):
    log_p = _log_softmax_exact(teacher)
    log_q = _log_softmax_exact(student)
    total = mpmath.mpf(0)
    for lp, lq in zip(log_p, log_q, strict=False):
      p = mpmath.exp(lp)
      if p < tiny:  # exp(log p) in `dtype` is 0 (or subnormal: flushed)
        continue
      if lq == mpmath.ninf:
        return inf
      total += p * (lp - lq)
  value = float(np.asarray(float(total)).astype(dtype))
  return value if abs(value) >= tiny else 0.0  # XLA flushes subnormals


# ----------------------------------------------------------------------------
# Every discrete path, as a function of (teacher logits T, student logits S),
# both [n, C], returning the [n] divergences KL(softmax(T) || softmax(S)).


def _rows(fn):
  """Applies a scalar-valued ``fn(t_row, s_row)`` to each row."""
  return lambda t, s: jnp.stack([fn(t[i], s[i]) for i in range(t.shape[0])])


def _quiet(fn):
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return fn(*args, **kwargs)

  return wrapped


log_softmax = functools.partial(jax.nn.log_softmax, axis=-1)
softmax = functools.partial(jax.nn.softmax, axis=-1)


def _vocab_parallel(t, s):
  mesh = jax.make_mesh((1,), ("model",))
  spec = P(None, "model")
  fn = jax.jit(
    jax.shard_map(
      functools.partial(jaxkl.vocab_parallel_kl_from_logits, axis_name="model"),
      mesh=mesh,
      in_specs=(spec, spec),
      out_specs=P(None),
    )
  )
  put = lambda x: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
  return fn(put(s), put(t))


def _fused(t, s):
  # Logits as h @ W with an identity head (exact: one nonzero product per
  # output); -inf logits cannot be made this way (-inf * 0 = nan).
  eye = jnp.eye(t.shape[-1], dtype=t.dtype)
  return jaxkl.fused_linear_distillation_loss(s, eye, t, eye, reduction="none")


def _fused_vocab_chunks(t, s):
  # Each row's logits as the biases of a zero head (h @ W + b = 0 + b,
  # exact, -inf allowed), the vocabulary in blocks of 3 (not dividing 4).
  def row(t, s):
    one = jnp.ones((1, 1), t.dtype)
    zero = jnp.zeros((1, t.shape[-1]), t.dtype)
    return jaxkl.fused_linear_distillation_loss(
      one,
      zero,
      one,
      zero,
      student_bias=s,
      teacher_bias=t,
      reduction="none",
      vocab_chunk=3,
    )[0]

  return jax.vmap(row)(t, s)


PATHS = {
  "kl_div": _rows(
    lambda t, s: jaxkl.kl_div(log_softmax(s), softmax(t), reduction="sum")
  ),
  "kl_div(log_target)": _rows(
    lambda t, s: jaxkl.kl_div(
      log_softmax(s), log_softmax(t), reduction="sum", log_target=True
    )
  ),
  "KLDivLoss": _rows(
    lambda t, s: jaxkl.KLDivLoss(reduction="sum")(log_softmax(s), softmax(t))
  ),
  "KLDivLoss(log_target)": _rows(
    lambda t, s: jaxkl.KLDivLoss(reduction="sum", log_target=True)(
      log_softmax(s), log_softmax(t)
    )
  ),
  "kl_divergence": lambda t, s: jaxkl.kl_divergence(log_softmax(s), softmax(t)),
  "kl_divergence(log_target)": lambda t, s: jaxkl.kl_divergence(
    log_softmax(s), log_softmax(t), log_target=True
  ),
  "kl_divergence_from_logits": lambda t, s: jaxkl.kl_divergence_from_logits(s, t),
  "kl_divergence_from_logits(jit)": lambda t, s: jax.jit(
    jaxkl.kl_divergence_from_logits
  )(s, t),
  "divergence_from_logits(forward)": lambda t, s: jaxkl.divergence_from_logits(
    s, t, divergence="forward"
  ),
  "distillation_loss": lambda t, s: jaxkl.distillation_loss(s, t, reduction="none"),
  "fused_linear_distillation_loss": _fused,
  "fused_linear_distillation_loss(vocab_chunk=3, biases)": _fused_vocab_chunks,
  "vocab_parallel_kl_from_logits": _vocab_parallel,
  "kl_categorical": lambda t, s: jaxkl.kl_categorical(t, s),
}
# Paths that need finite logits (see _fused).
FINITE_ONLY = {"fused_linear_distillation_loss"}


@pytest.mark.parametrize(
  "dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"]
)
@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_path_gives_the_rules_value(path, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    rows = [
      i
      for i, (t, s) in enumerate(zip(TEACHER, STUDENT, strict=False))
      if path not in FINITE_ONLY or np.isfinite(t + s).all()
    ]
    t = jnp.asarray(np.array(TEACHER)[rows], dtype)
    s = jnp.asarray(np.array(STUDENT)[rows], dtype)
    got = np.asarray(_quiet(PATHS[path])(t, s), np.float64)
  expected = np.array([reference(TEACHER[i], STUDENT[i], dtype) for i in rows])
  rtol = 2e-5 if dtype == jnp.float32 else 1e-12
  failures = []
  for i, g, e in zip(rows, got, expected, strict=False):
    if math.isinf(e) or math.isnan(g):
      ok = g == e
    else:
      ok = abs(g - e) <= rtol * abs(e) + 10 * float(jnp.finfo(dtype).eps)
    if not ok:
      failures.append(f"{IDS[i]}: got {g!r}, expected {e!r}")
  assert not failures, f"{path} ({jnp.dtype(dtype).name}):\n" + "\n".join(failures)


def test_reference_is_the_stated_rule():
  # Hand-checked values of the reference itself.
  assert reference(*CASES[0][1:], jnp.float32) == 0.0
  assert reference(*CASES[1][1:], jnp.float32) == 0.0
  assert reference(*CASES[1][1:], jnp.float64) == inf
  assert reference(*CASES[3][1:], jnp.float64) == inf
  assert reference(*CASES[5][1:], jnp.float64) == pytest.approx(math.log(4), rel=1e-15)
  # 1/4 log(1/4) - 1/4 log q with log q = -1e30 - log(3): 2.5e29.
  assert reference(*CASES[9][1:], jnp.float64) == pytest.approx(2.5e29, rel=1e-12)


def test_kl_categorical_matches_torch_distributions_on_underflow():
  # The example: torch.distributions (and TFP, distrax) give 0.
  torch = pytest.importorskip("torch")
  p = torch.distributions.Categorical(logits=torch.tensor([0.0, -1000.0]))
  q = torch.distributions.Categorical(logits=torch.tensor([0.0, -float("inf")]))
  assert float(torch.distributions.kl_divergence(p, q)) == 0.0
  assert reference([0.0, -1000.0], [0.0, -inf], jnp.float32) == 0.0
  got = jaxkl.kl_categorical(jnp.array([0.0, -1000.0]), jnp.array([0.0, -inf]))
  assert float(got) == 0.0
