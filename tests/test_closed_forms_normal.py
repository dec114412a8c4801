"""Normal closed forms added for issue 14 (jaxkl/_closed_forms/normal.py):
low-rank multivariate normals, the VAE forms from log-scales and
log-variances, and the registry entries of the normal families.

References: ``torch.distributions.kl_divergence`` in float64 where torch has
the pair, 50-digit mpmath elsewhere (extreme and near-equal parameters).
"""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxkl._closed_forms import normal

td = torch.distributions
PAIRS = normal.PAIRS
kl_low_rank = normal.kl_multivariate_normal_low_rank
kl_log_scale = normal.kl_normal_from_log_scale
kl_log_variance = normal.kl_normal_from_log_variance
D = 3


def T(x):
  return torch.as_tensor(np.array(x, np.float64))


def _tril(rng, shape):
  lower = np.tril(rng.normal(size=shape) * 0.5, -1)
  diag = rng.uniform(0.5, 2.0, size=shape[:-1])
  return lower + diag[..., None] * np.eye(shape[-1])


def _low_rank(rng, batch, rank):
  return {
    "loc": rng.normal(size=(*batch, D)),
    "cov_factor": rng.normal(size=(*batch, D, rank)),
    "cov_diag": rng.uniform(0.3, 2.0, size=(*batch, D)),
  }


def _torch_dist(family, params, batch):
  """The torch distribution of canonical parameters, batch broadcast."""
  b = {
    k: np.broadcast_to(
      v,
      batch + v.shape[len(v.shape) - (2 if k in ("scale_tril", "cov_factor") else 1) :],
    )
    for k, v in params.items()
  }
  if family == "mvn_low_rank":
    return td.LowRankMultivariateNormal(
      T(b["loc"]), T(b["cov_factor"]), T(b["cov_diag"])
    )
  if family == "mvn":
    return td.MultivariateNormal(T(b["loc"]), scale_tril=T(b["scale_tril"]))
  if family == "mvn_diag":
    return td.MultivariateNormal(
      T(b["loc"]), scale_tril=T(np.eye(D) * b["scale_diag"][..., None, :])
    )
  raise AssertionError(family)


def _params(family, rng, batch, rank=2):
  if family == "mvn_low_rank":
    return _low_rank(rng, batch, rank)
  if family == "mvn":
    return {
      "loc": rng.normal(size=(*batch, D)),
      "scale_tril": _tril(rng, (*batch, D, D)),
    }
  return {
    "loc": rng.normal(size=(*batch, D)),
    "scale_diag": rng.uniform(0.5, 2, (*batch, D)),
  }


def _mp_kl(loc_p, cov_p, loc_q, cov_q):
  """50-digit multivariate-normal KL from covariances."""
  with mpmath.workdps(50):
    sp, sq = mpmath.matrix(cov_p.tolist()), mpmath.matrix(cov_q.tolist())
    dl = mpmath.matrix((np.asarray(loc_p) - np.asarray(loc_q)).tolist())
    inv_q = sq**-1
    trace = sum((inv_q * sp)[i, i] for i in range(sp.rows))
    maha = (dl.T * inv_q * dl)[0, 0]
    return 0.5 * (trace + maha - sp.rows + mpmath.log(mpmath.det(sq) / mpmath.det(sp)))


def _mp_low_rank_cov(w, d):
  with mpmath.workdps(50):
    w = mpmath.matrix(np.asarray(w, np.float64).tolist())
    return np.array(
      (w * w.T + mpmath.diag(np.asarray(d, np.float64).tolist())).tolist(), dtype=object
    )


# ----------------------------------------------------------------------------
# Against PyTorch (float64).

LOW_RANK_PAIRS = [
  ("mvn_low_rank", "mvn_low_rank"),
  ("mvn_low_rank", "mvn"),
  ("mvn", "mvn_low_rank"),
  ("mvn_low_rank", "mvn_diag"),
  ("mvn_diag", "mvn_low_rank"),
  ("mvn", "mvn"),
  ("mvn_diag", "mvn"),
  ("mvn", "mvn_diag"),
  ("mvn_diag", "mvn_diag"),
]


@pytest.mark.parametrize("pair", LOW_RANK_PAIRS, ids="-".join)
@pytest.mark.parametrize("batches", [((4,), (4,)), ((2, 1), (3,)), ((), (2,))])
def test_multivariate_pairs_match_torch(x64, pair, batches):
  rng = np.random.default_rng(abs(hash((pair, batches))) % 2**32)
  p = _params(pair[0], rng, batches[0], rank=2)
  q = _params(pair[1], rng, batches[1], rank=1 if pair[0] == pair[1] else 2)
  batch = np.broadcast_shapes(batches[0], batches[1])
  want = td.kl_divergence(
    _torch_dist(pair[0], p, batch), _torch_dist(pair[1], q, batch)
  )
  got = PAIRS[pair](
    {k: jnp.asarray(v) for k, v in p.items()}, {k: jnp.asarray(v) for k, v in q.items()}
  )
  assert got.shape == batch
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-10)


def test_normal_pair_matches_torch(x64):
  rng = np.random.default_rng(0)
  lp, lq = rng.normal(size=5), rng.normal(size=(2, 1))
  sp, sq = rng.uniform(0.3, 3, 5), rng.uniform(0.3, 3, (2, 1))
  got = PAIRS[("normal", "normal")]({"loc": lp, "scale": sp}, {"loc": lq, "scale": sq})
  lp_b, lq_b, sp_b, sq_b = np.broadcast_arrays(lp, lq, sp, sq)
  want = td.kl_divergence(td.Normal(T(lp_b), T(sp_b)), td.Normal(T(lq_b), T(sq_b)))
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)


def test_registry_keys():
  wanted = {("normal", "normal"), *LOW_RANK_PAIRS}
  assert set(PAIRS) == wanted


# ----------------------------------------------------------------------------
# Low rank: accuracy, zeros, gradients, dtypes, shapes.


@pytest.mark.parametrize("rel", [1e-9, 1e-5, 1e-2, 0.3])
def test_low_rank_near_equal_vs_mpmath(x64, rel):
  rng = np.random.default_rng(3)
  p = _low_rank(rng, (), 2)
  w_q = p["cov_factor"] * (1 + rel * rng.normal(size=(D, 2)))
  d_q = p["cov_diag"] * (1 + rel * rng.normal(size=D))
  loc_q = p["loc"] + rel * rng.normal(size=D)
  want = _mp_kl(
    p["loc"],
    _mp_low_rank_cov(p["cov_factor"], p["cov_diag"]),
    loc_q,
    _mp_low_rank_cov(w_q, d_q),
  )
  got = kl_low_rank(p["loc"], p["cov_factor"], p["cov_diag"], loc_q, w_q, d_q)
  assert abs(float(got) / float(want) - 1) < 1e-11
  got32 = kl_low_rank(
    *[
      jnp.asarray(v, jnp.float32)
      for v in (p["loc"], p["cov_factor"], p["cov_diag"], loc_q, w_q, d_q)
    ]
  )
  # float32 rounds the parameters: compare with the rounded ones.
  rounded = [
    np.asarray(np.float32(v), np.float64)
    for v in (p["loc"], p["cov_factor"], p["cov_diag"], loc_q, w_q, d_q)
  ]
  want32 = _mp_kl(
    rounded[0],
    _mp_low_rank_cov(rounded[1], rounded[2]),
    rounded[3],
    _mp_low_rank_cov(rounded[4], rounded[5]),
  )
  if want32 == 0:
    assert got32 == 0
  else:
    assert abs(float(got32) / float(want32) - 1) < 1e-4


def test_low_rank_mixed_pairs_vs_mpmath(x64):
  rng = np.random.default_rng(4)
  p = _low_rank(rng, (), 2)
  cov_p = p["cov_factor"] @ p["cov_factor"].T + np.diag(p["cov_diag"])
  tril = _tril(rng, (D, D)) * 3
  want = _mp_kl(
    p["loc"],
    _mp_low_rank_cov(p["cov_factor"], p["cov_diag"]),
    np.zeros(D),
    np.array(
      (mpmath.matrix(tril.tolist()) * mpmath.matrix(tril.tolist()).T).tolist(),
      dtype=object,
    ),
  )
  got = PAIRS[("mvn_low_rank", "mvn")](p, {"loc": np.zeros(D), "scale_tril": tril})
  assert abs(float(got) / float(want) - 1) < 1e-12
  # Q the same covariance as P (its Cholesky factor): nearly 0, from the near path.
  l_p = np.linalg.cholesky(cov_p)
  got = PAIRS[("mvn_low_rank", "mvn")](p, {"loc": p["loc"], "scale_tril": l_p})
  assert 0 <= float(got) < 1e-28
  got = PAIRS[("mvn", "mvn_low_rank")]({"loc": p["loc"], "scale_tril": l_p}, p)
  assert 0 <= float(got) < 1e-28


def test_low_rank_identical_is_zero_with_zero_gradient(x64):
  rng = np.random.default_rng(5)
  p = _low_rank(rng, (4,), 2)
  args = (p["loc"], p["cov_factor"], p["cov_diag"]) * 2
  np.testing.assert_array_equal(kl_low_rank(*args), 0.0)
  grads = jax.jit(
    jax.grad(lambda *a: jnp.sum(kl_low_rank(*a)), argnums=tuple(range(6)))
  )(*args)
  for g in grads:
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, 0.0, atol=1e-12)


def test_low_rank_gradients_match_torch_autograd(x64):
  rng = np.random.default_rng(6)
  p, q = _low_rank(rng, (2,), 2), _low_rank(rng, (2,), 3)
  args = [
    p["loc"],
    p["cov_factor"],
    p["cov_diag"],
    q["loc"],
    q["cov_factor"],
    q["cov_diag"],
  ]
  grads = jax.jit(
    jax.grad(lambda *a: jnp.sum(kl_low_rank(*a)), argnums=tuple(range(6)))
  )(*args)
  tensors = [T(a).requires_grad_() for a in args]
  total = td.kl_divergence(
    td.LowRankMultivariateNormal(*tensors[:3]),
    td.LowRankMultivariateNormal(*tensors[3:]),
  ).sum()
  want = torch.autograd.grad(total, tensors)
  for g, w in zip(grads, want, strict=True):
    np.testing.assert_allclose(g, w.numpy(), rtol=1e-9, atol=1e-12)


def test_low_rank_gradients_near_equal_and_mixed(x64):
  rng = np.random.default_rng(6)
  p = _low_rank(rng, (), 2)
  args = (p["loc"], p["cov_factor"], p["cov_diag"])
  near = (*args, args[0] + 1e-3, args[1] * 1.001, args[2] * 0.999)
  check_grads(jax.jit(kl_low_rank), near, order=1, modes=("rev",), atol=1e-7, rtol=1e-5)
  tril = _tril(rng, (D, D))

  def mixed(loc, w, d, l):
    return PAIRS[("mvn_low_rank", "mvn")](
      {"loc": loc, "cov_factor": w, "cov_diag": d},
      {"loc": jnp.zeros(D), "scale_tril": l},
    )

  check_grads(
    jax.jit(mixed), (*args, tril), order=1, modes=("rev",), atol=1e-6, rtol=1e-6
  )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_low_rank_dtypes(x64, dtype):
  rng = np.random.default_rng(7)
  p, q = _low_rank(rng, (3,), 2), _low_rank(rng, (3,), 2)
  args = [
    jnp.asarray(v, dtype)
    for v in (
      p["loc"],
      p["cov_factor"],
      p["cov_diag"],
      q["loc"],
      q["cov_factor"],
      q["cov_diag"],
    )
  ]
  got = kl_low_rank(*args)
  assert got.dtype == dtype
  want = kl_low_rank(*[a.astype(jnp.float64) for a in args])
  np.testing.assert_allclose(
    np.asarray(got, np.float64), want, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-5
  )


def test_low_rank_jit_vmap_and_degenerate():
  rng = np.random.default_rng(8)
  p, q = _low_rank(rng, (4,), 2), _low_rank(rng, (4,), 2)
  args = [
    jnp.asarray(v, jnp.float32)
    for v in (
      p["loc"],
      p["cov_factor"],
      p["cov_diag"],
      q["loc"],
      q["cov_factor"],
      q["cov_diag"],
    )
  ]
  np.testing.assert_allclose(
    jax.jit(jax.vmap(kl_low_rank))(*args), kl_low_rank(*args), rtol=1e-5
  )
  # A degenerate Cholesky factor against a (non-degenerate) low-rank normal.
  singular = jnp.diag(jnp.array([1.0, 0.0, 1.0]))
  lr = {"loc": args[0][0], "cov_factor": args[1][0], "cov_diag": args[2][0]}
  assert (
    PAIRS[("mvn", "mvn_low_rank")]({"loc": args[0][0], "scale_tril": singular}, lr)
    == jnp.inf
  )
  assert (
    PAIRS[("mvn_low_rank", "mvn")](lr, {"loc": args[0][0], "scale_tril": singular})
    == jnp.inf
  )


def test_low_rank_shape_errors():
  z, w, d = jnp.zeros(3), jnp.ones((3, 2)), jnp.ones(3)
  with pytest.raises(
    ValueError, match=r"`cov_factor_q` must have shape \[\.\.\., d, r\]"
  ):
    kl_low_rank(z, w, d, z, d, d)
  with pytest.raises(
    ValueError, match=r"event sizes differ: `loc_p` has d=3 but `cov_diag_q`"
  ):
    kl_low_rank(z, w, d, z, w, jnp.ones(4))
  with pytest.raises(ValueError, match="batch shapes"):
    kl_low_rank(jnp.zeros((2, 3)), w, d, jnp.zeros((4, 3)), w, d)
  with pytest.raises(TypeError, match="`cov_diag_p`"):
    kl_low_rank(z, w, jnp.ones(3, jnp.int32), z, w, d)


# ----------------------------------------------------------------------------
# The VAE forms.


def _mp_vae(loc_p, v_p, loc_q, v_q):
  """KL of normals given log-variances, at 50 digits plus what expm1(u) - u
  = O(u^2) loses for small u."""
  gap = abs(float(v_p) - float(v_q))
  with mpmath.workdps(50 + 2 * max(0, int(-np.log10(gap))) if gap > 0 else 50):
    loc_p, v_p, loc_q, v_q = (mpmath.mpf(float(x)) for x in (loc_p, v_p, loc_q, v_q))
    u = v_p - v_q
    return (mpmath.expm1(u) - u) / 2 + (loc_p - loc_q) ** 2 * mpmath.exp(-v_q) / 2


VAE_CASES = [
  (0.3, -180.0, 0.0, 0.0),  # sigma_p^2 = e^-180 underflows float32
  (0.0, -180.0, 0.0, 0.0),  # ~89.5
  (0.3, 80.0, 0.0, 0.0),  # 0.5 e^80
  (0.0, 1e-7, 0.0, 0.0),  # near-equal variances
  (0.5, -3.0, 0.5 + 1e-6, -3.0),  # near-equal means
  (1.0, -2.0, 1.0, -2.0 + 1e-6),
  (2.0, 1.0, -1.0, -60.0),
  (1e-20, 0.0, 0.0, -80.0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", VAE_CASES)
def test_vae_forms_vs_mpmath(x64, dtype, case):
  c = [dtype(x) for x in case]
  want = float(_mp_vae(*c))
  rtol = 1e-13 if dtype == np.float64 else 2e-6
  got = kl_log_variance(*c)
  assert got.dtype == dtype
  np.testing.assert_allclose(float(got), want, rtol=rtol)
  got = kl_log_scale(c[0], c[1] / 2, c[2], c[3] / 2)  # halving is exact
  np.testing.assert_allclose(float(got), want, rtol=rtol)


def test_vae_minus_180_against_the_prior():
  got = kl_log_variance(jnp.float32(0.0), jnp.float32(-180.0))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, 89.5, rtol=1e-7)
  grads = jax.grad(kl_log_variance, argnums=(0, 1))(
    jnp.float32(0.3), jnp.float32(-180.0)
  )
  np.testing.assert_allclose(grads, [0.3, -0.5], rtol=1e-6)  # mu, (e^v - 1) / 2
  grads = jax.grad(kl_log_scale, argnums=(0, 1, 2, 3))(0.3, -90.0, 0.1, -40.0)
  assert all(np.isfinite(g) for g in grads)
  assert (
    kl_log_variance(jnp.float32(0.0), jnp.float32(180.0)) == jnp.inf
  )  # true overflow


@settings(max_examples=60, deadline=None)
@given(
  st.floats(-50, 50),
  st.floats(-300, 300),
  st.floats(-50, 50),
  st.floats(-300, 300),
)
def test_vae_log_variance_property(loc_p, v_p, loc_q, v_q):
  with jax.enable_x64(True):
    want = _mp_vae(loc_p, v_p, loc_q, v_q)
    got = kl_log_variance(loc_p, v_p, loc_q, v_q)
    if want > 1e300:
      assert got == np.inf or abs(float(got) / float(want) - 1) < 1e-12
    elif want < 1e-300:  # XLA flushes subnormal results to 0
      assert abs(float(got) - float(want)) < 1e-300
    else:
      assert abs(float(got) / float(want) - 1) < 1e-12
    grads = jax.grad(kl_log_variance, argnums=(0, 1, 2, 3))(loc_p, v_p, loc_q, v_q)
    if np.isfinite(float(got)) and float(want) < 1e290:
      assert all(np.isfinite(g) for g in grads)


def test_vae_defaults_and_torch(x64):
  rng = np.random.default_rng(9)
  mu, lv = rng.normal(size=(4, 3)), rng.normal(0, 2, (4, 3))
  mq, lvq = rng.normal(size=3), rng.normal(size=3)
  # Default Q: the standard normal prior; the textbook -(1 + v - mu^2 - e^v)/2.
  np.testing.assert_allclose(
    kl_log_variance(mu, lv), -0.5 * (1 + lv - mu**2 - np.exp(lv)), rtol=1e-12
  )
  np.testing.assert_allclose(
    kl_log_scale(mu, lv / 2), kl_log_variance(mu, lv), rtol=1e-14
  )
  mu_b, lv_b, mq_b, lvq_b = np.broadcast_arrays(mu, lv, mq, lvq)
  want = td.kl_divergence(
    td.Normal(T(mu_b), T(np.exp(lv_b / 2))), td.Normal(T(mq_b), T(np.exp(lvq_b / 2)))
  )
  got = kl_log_variance(mu, lv, mq, lvq)
  assert got.shape == (4, 3)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)
  np.testing.assert_array_equal(kl_log_variance(mu, lv, mu, lv), 0.0)
  np.testing.assert_array_equal(kl_log_scale(mu, lv, mu, lv), 0.0)
  for fn in (kl_log_variance, kl_log_scale):
    check_grads(jax.jit(fn), (mu[0], lv[0], mq, lvq), order=2, modes=("rev",))


@pytest.mark.parametrize("fn", [kl_log_scale, kl_log_variance])
def test_vae_bfloat16_and_jit(fn):
  mu = jnp.array([0.0, 1.0, -2.0], jnp.bfloat16)
  lv = jnp.array([-180.0, 0.5, 3.0], jnp.bfloat16)
  got = fn(mu, lv)
  assert got.dtype == jnp.bfloat16
  want = fn(mu.astype(jnp.float32), lv.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)
  np.testing.assert_allclose(
    jax.jit(jax.vmap(fn))(mu.astype(jnp.float32), lv.astype(jnp.float32)),
    want,
    rtol=1e-6,
  )
