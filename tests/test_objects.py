"""jaxkl's public objects behave like JAX values.

``KLDivLoss``, ``KLEstimate`` and ``StandardNormalPushforward`` with
``jax.jit`` (as the function and as a static argument), ``jax.checkpoint``,
``copy.copy``, ``copy.deepcopy``, ``pickle``, equality and hashing, and as
attributes of a Flax NNX module that is deep-copied, cloned, split and
merged. Every copy is checked by computing with it: losses against
``torch.nn.functional.kl_div``, Monte-Carlo estimates against
``torch.distributions.kl_divergence`` (within 4 standard errors: a chance
failure has probability 6e-5) and against the original object's estimate
with the same key (bit for bit).
"""

import copy
import dataclasses
import functools
import pickle
import warnings

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxkl

REDUCTIONS = ("none", "batchmean", "sum", "mean")


def inputs(seed=0, shape=(4, 5)):
  rng = np.random.default_rng(seed)
  log_q = np.log(rng.dirichlet(np.ones(shape[-1]), size=shape[0]))
  p = rng.dirichlet(np.ones(shape[-1]), size=shape[0])
  p[0, 1] = 0.0  # a zero-probability target (torch's 0 * log 0 = NaN case)
  p[0] /= p[0].sum()
  return log_q.astype(np.float32), p.astype(np.float32)


def torch_kl_div(log_q, target, reduction, log_target):
  """``torch.nn.KLDivLoss``'s value and gradient w.r.t. the input.

  Pointwise in float64 with ``reduction='none'``, where torch's NaN at a
  zero target (0 * log 0) is replaced by the limit 0, then reduced as
  torch's reductions do.
  """
  x = torch.tensor(log_q, dtype=torch.float64, requires_grad=True)
  pointwise = torch.nn.KLDivLoss(reduction="none", log_target=log_target)(
    x, torch.tensor(target, dtype=torch.float64)
  )
  pointwise = torch.nan_to_num(pointwise, nan=0.0)
  out = {
    "none": lambda a: a,
    "sum": torch.sum,
    "mean": torch.mean,
    "batchmean": lambda a: a.sum() / a.shape[0],
  }[reduction](pointwise)
  out.sum().backward()
  return out.detach().numpy(), np.nan_to_num(x.grad.numpy(), nan=0.0)


@pytest.fixture
def no_mean_warning():
  """``reduction='mean'`` warns as PyTorch does; not what is tested here."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*'mean' divides")
    yield


# ----------------------------------------------------------------------------
# KLDivLoss.


def all_losses():
  return [
    jaxkl.KLDivLoss(reduction=r, log_target=t)
    for r in REDUCTIONS
    for t in (False, True)
  ]


def copies(obj):
  """``obj`` through every copying route."""
  return {
    "copy": copy.copy(obj),
    "deepcopy": copy.deepcopy(obj),
    "pickle": pickle.loads(pickle.dumps(obj)),
    "pickle-protocol-0": pickle.loads(pickle.dumps(obj, protocol=0)),
  }


@pytest.mark.usefixtures("no_mean_warning")
@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_kl_div_loss_under_transformations_matches_torch(loss):
  log_q, p = inputs()
  target = np.log(np.maximum(p, 1e-30)) if loss.log_target else p
  if loss.log_target:
    target[0, 1] = -np.inf
  want, want_grad = torch_kl_div(log_q, target, loss.reduction, loss.log_target)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x, target)))  # noqa: E731
  ways = {
    "eager": loss,
    "jit(loss)": jax.jit(loss),
    "checkpoint(loss)": jax.checkpoint(loss),
    "jit(checkpoint(loss))": jax.jit(jax.checkpoint(loss)),
    "static argument": functools.partial(
      jax.jit(lambda f, x, t: f(x, t), static_argnums=0), loss
    ),
  }
  for name, f in ways.items():
    np.testing.assert_allclose(
      f(log_q, target), want, rtol=2e-6, atol=1e-7, err_msg=name
    )
    np.testing.assert_allclose(
      grad(f)(log_q), want_grad, rtol=2e-6, atol=1e-7, err_msg=name
    )


@pytest.mark.usefixtures("no_mean_warning")
@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_kl_div_loss_copies_are_equal_and_compute_the_same(loss):
  log_q, p = inputs(1)
  with np.errstate(divide="ignore"):
    target = np.log(p) if loss.log_target else p  # log 0 = -inf
  want = torch_kl_div(log_q, target, loss.reduction, loss.log_target)[0]
  for name, other in copies(loss).items():
    assert other == loss and hash(other) == hash(loss), name
    assert type(other) is jaxkl.KLDivLoss, name
    assert (other.reduction, other.log_target) == (loss.reduction, loss.log_target), (
      name
    )
    np.testing.assert_allclose(
      other(log_q, target), want, rtol=2e-6, atol=1e-7, err_msg=name
    )
    with pytest.raises(AttributeError, match="immutable"):
      other.reduction = "sum"
  # Immutable: copies may be (and are) the object itself.
  assert copy.copy(loss) is loss and copy.deepcopy(loss) is loss


def test_kl_div_loss_equality_hash_and_jit_cache():
  a = jaxkl.KLDivLoss(reduction="batchmean")
  b = jaxkl.KLDivLoss(reduction="batchmean")
  c = jaxkl.KLDivLoss(reduction="sum")
  d = jaxkl.KLDivLoss(reduction="batchmean", log_target=True)
  assert a == b and hash(a) == hash(b)
  assert a != c and a != d and a != "batchmean"
  assert len({a, b, c, d}) == 3
  traces = []

  @functools.partial(jax.jit, static_argnums=0)
  def apply(loss, x, t):
    traces.append(loss)
    return loss(x, t)

  log_q, p = inputs(2)
  apply(a, log_q, p)
  apply(b, log_q, p)  # equal and equally hashed: no retrace
  assert len(traces) == 1
  apply(c, log_q, p)
  assert len(traces) == 2
  with pytest.raises(AttributeError, match="immutable"):
    del a.reduction


def test_legacy_kl_div_loss_pickles_its_converted_state_without_warning():
  with pytest.warns(UserWarning, match="deprecated"):
    legacy = jaxkl.KLDivLoss(size_average=False)  # -> 'sum'
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # unpickling must not re-warn
    restored = pickle.loads(pickle.dumps(legacy))
  assert restored == legacy and restored.reduction == "sum"
  log_q, p = inputs(3)
  np.testing.assert_allclose(
    restored(log_q, p), torch_kl_div(log_q, p, "sum", False)[0], rtol=2e-6
  )


class Student(nnx.Module):
  """The PyTorch habit: the criterion is an attribute of the model."""

  def __init__(self, rngs):
    self.linear = nnx.Linear(5, 5, rngs=rngs)
    self.criterion = jaxkl.KLDivLoss(reduction="batchmean")

  def __call__(self, x, target):
    return self.criterion(jax.nn.log_softmax(self.linear(x)), target)


def student_torch_loss(model, x, target):
  logits = np.asarray(x, np.float64) @ np.asarray(model.linear.kernel[...], np.float64)
  logits = logits + np.asarray(model.linear.bias[...], np.float64)
  log_q = torch.log_softmax(torch.tensor(logits), dim=-1).numpy()
  return torch_kl_div(log_q, target, "batchmean", False)[0]


def test_nnx_module_holding_a_loss_can_be_copied_and_split():
  model = Student(nnx.Rngs(0))
  x = np.random.default_rng(4).normal(size=(4, 5)).astype(np.float32)
  target = inputs(4)[1]
  want = student_torch_loss(model, x, target)
  np.testing.assert_allclose(model(x, target), want, rtol=1e-5)
  graphdef, state = nnx.split(model)
  ways = {
    "deepcopy": copy.deepcopy(model),
    "clone": nnx.clone(model),
    "merge(split)": nnx.merge(graphdef, state),
  }
  for name, other in ways.items():
    assert other.criterion == model.criterion, name
    np.testing.assert_allclose(other(x, target), want, rtol=1e-5, err_msg=name)
  # An EMA teacher: a deep copy whose weights then move on their own.
  teacher = copy.deepcopy(model)
  teacher.linear.kernel[...] = 0.5 * teacher.linear.kernel[...]
  np.testing.assert_allclose(model(x, target), want, rtol=1e-5)
  np.testing.assert_allclose(
    teacher(x, target), student_torch_loss(teacher, x, target), rtol=1e-5
  )
  # nnx.jit and nnx.grad through the module and its criterion.
  loss, grads = nnx.jit(nnx.value_and_grad(lambda m: m(x, target)))(model)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  kernel = torch.tensor(
    np.asarray(model.linear.kernel[...], np.float64), requires_grad=True
  )
  bias = torch.tensor(np.asarray(model.linear.bias[...], np.float64))
  out = torch.nn.functional.kl_div(
    torch.log_softmax(torch.tensor(x, dtype=torch.float64) @ kernel + bias, dim=-1),
    torch.tensor(target, dtype=torch.float64),
    reduction="batchmean",
  )
  out.backward()
  np.testing.assert_allclose(
    grads.linear.kernel[...], kernel.grad.numpy(), rtol=1e-4, atol=1e-6
  )
  assert pickle.loads(pickle.dumps(model.criterion)) == model.criterion


# ----------------------------------------------------------------------------
# StandardNormalPushforward: picklable when its callables are.


def shift_scale(z, loc, scale):
  return loc + scale * z


def normal_log_prob(x, loc, scale):
  return jax.scipy.stats.norm.logpdf(x, loc, scale)


def picklable_normal(loc, scale):
  """N(loc, scale²) from module-level functions and ``functools.partial``."""
  return jaxkl.StandardNormalPushforward(
    transform=functools.partial(shift_scale, loc=loc, scale=scale),
    log_prob=functools.partial(normal_log_prob, loc=loc, scale=scale),
  )


def torch_kl_normal(m1, s1, m2, s2):
  return float(
    torch.distributions.kl_divergence(
      torch.distributions.Normal(m1, s1), torch.distributions.Normal(m2, s2)
    )
  )


def test_pushforward_copies_pickle_and_static_arguments():
  p = picklable_normal(0.5, 2.0)
  q = functools.partial(normal_log_prob, loc=0.0, scale=1.5)
  truth = torch_kl_normal(0.5, 2.0, 0.0, 1.5)
  key = jax.random.key(0)

  @functools.partial(jax.jit, static_argnums=(1, 2))
  def estimate(key, p, q):
    return jaxkl.monte_carlo_kl(
      key, p, q, num_samples=4096, estimator="k3", antithetic=True
    )

  original = estimate(key, p, q)
  assert abs(float(original.value) - truth) < 4 * float(original.stderr)
  assert copy.copy(p) == p and copy.deepcopy(p) is p
  for name, other in copies(p).items():
    if name.startswith("pickle"):
      # A new functools.partial: equal contents, but partials compare by
      # identity, so the copy is a new (hashable) static argument.
      assert other != p and hash(other) is not None, name
      for new, old in zip(other[:2], p[:2], strict=False):
        assert (new.func, new.args, new.keywords) == (
          old.func,
          old.args,
          old.keywords,
        ), name
    else:
      assert other == p and hash(other) == hash(p), name
    got = estimate(key, other, pickle.loads(pickle.dumps(q)))
    assert got == original, name  # same key, same numbers
  # As a closure under jit and checkpoint, and in an NNX module.
  closed = jax.jit(
    jax.checkpoint(
      lambda key: jaxkl.monte_carlo_kl(
        key, p, q, num_samples=4096, estimator="k3", antithetic=True
      )
    )
  )
  assert closed(key) == original

  class Holder(nnx.Module):
    def __init__(self):
      self.p = p
      self.scale = nnx.Param(jnp.float32(1.0))

  holder = Holder()
  for other in (
    copy.deepcopy(holder),
    nnx.clone(holder),
    nnx.merge(*nnx.split(holder)),
  ):
    assert other.p == p
    assert estimate(key, other.p, q) == original


def test_pushforward_with_lambdas_does_not_pickle_but_copies():
  loc = 1.0
  p = jaxkl.StandardNormalPushforward(
    transform=lambda z: loc + z, log_prob=lambda x: jax.scipy.stats.norm.logpdf(x, loc)
  )
  with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
    pickle.dumps(p)
  assert copy.deepcopy(p) == p and copy.copy(p) == p  # functions are shared
  est = jaxkl.monte_carlo_kl(
    jax.random.key(1), copy.deepcopy(p), jax.scipy.stats.norm.logpdf, num_samples=4096
  )
  truth = torch_kl_normal(1.0, 1.0, 0.0, 1.0)
  assert abs(float(est.value) - truth) < 4 * float(est.stderr)


def shift_scale_2d(z, loc, scale):
  return loc[None] + scale[None] * z


def normal_2d_log_prob(x, loc, scale):
  return jnp.sum(jax.scipy.stats.norm.logpdf(x, loc[None], scale[None]), axis=-1)


SHAPE_SPELLINGS = {
  "tuple": tuple,
  "list": list,
  "numpy array": lambda dims: np.array(dims, dtype=np.int64),
  "numpy ints": lambda dims: tuple(np.int32(d) for d in dims),
  "jax ints": lambda dims: [jnp.int32(d) for d in dims],
}


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  dims=st.lists(st.integers(0, 6), max_size=3),
  spelling=st.sampled_from(sorted(SHAPE_SPELLINGS)),
)
def test_pushforward_event_shape_is_normalized_to_a_tuple_of_ints(dims, spelling):
  """Every spelling of a shape gives the same (equal, hashable) object."""
  reference = jaxkl.StandardNormalPushforward(abs, abs, tuple(dims))
  other = jaxkl.StandardNormalPushforward(abs, abs, SHAPE_SPELLINGS[spelling](dims))
  assert other.event_shape == tuple(dims)
  assert all(type(d) is int for d in other.event_shape)
  assert other == reference and hash(other) == hash(reference)
  assert other._replace(event_shape=list(dims)) == reference
  assert pickle.loads(pickle.dumps(other)) == reference


def test_pushforward_event_shape_as_a_list_is_a_static_argument():
  """``[2]`` works as a jit static argument and shares ``(2,)``'s compilation.

  The estimate of KL(N(loc, diag scale²) ‖ N(0, I)) in 2-D is checked
  against ``torch.distributions.kl_divergence`` (within 4 standard errors)
  and equals, bit for bit, the estimate of the object built with ``(2,)``.
  """
  loc, scale = jnp.array([0.5, -1.0]), jnp.array([2.0, 0.5])

  transform = functools.partial(shift_scale_2d, loc=loc, scale=scale)
  log_prob = functools.partial(normal_2d_log_prob, loc=loc, scale=scale)

  def pushforward(event_shape):
    return jaxkl.StandardNormalPushforward(transform, log_prob, event_shape)

  q = functools.partial(normal_2d_log_prob, loc=jnp.zeros(2), scale=jnp.ones(2))
  traces = []

  @functools.partial(jax.jit, static_argnums=(1,))
  def estimate(key, p):
    traces.append(p)
    return jaxkl.monte_carlo_kl(key, p, q, num_samples=4096, antithetic=True)

  as_list, as_tuple = pushforward([2]), pushforward((2,))
  assert as_list.event_shape == (2,) and as_list == as_tuple
  key = jax.random.key(7)
  got = estimate(key, as_list)
  assert got.value.shape == () and got.num_samples == 4096
  truth = float(
    torch.distributions.kl_divergence(
      torch.distributions.Normal(
        torch.tensor([0.5, -1.0], dtype=torch.float64),
        torch.tensor([2.0, 0.5], dtype=torch.float64),
      ),
      torch.distributions.Normal(0.0, 1.0),
    ).sum()
  )
  assert abs(float(got.value) - truth) < 4 * float(got.stderr)
  assert estimate(key, as_tuple) == got and len(traces) == 1  # one compilation


@pytest.mark.parametrize(
  ("event_shape", "error", "match"),
  [
    (2, TypeError, r"`event_shape`.*got 2 of type int.*pass `\(2,\)`"),
    ([2.0], TypeError, r"`event_shape`.*entry 2\.0 \(type float\) is not an int"),
    ([True], TypeError, r"`event_shape`.*entry True \(type bool\)"),
    ("ab", TypeError, r"`event_shape`.*got 'ab' of type str"),
    (None, TypeError, r"`event_shape`.*got None of type NoneType"),
    ((2, -1), ValueError, r"`event_shape`.*negative entry -1"),
  ],
)
def test_pushforward_rejects_bad_event_shapes(event_shape, error, match):
  with pytest.raises(error, match=match):
    jaxkl.StandardNormalPushforward(abs, abs, event_shape)
  good = jaxkl.StandardNormalPushforward(abs, abs, (1,))
  with pytest.raises(error, match=match):
    good._replace(event_shape=event_shape)


# ----------------------------------------------------------------------------
# KLEstimate: a pytree of arrays.


def normal_estimate(key, loc, estimator="k1", n=2048):
  p = (
    lambda k, m: loc + jax.random.normal(k, (m, *jnp.shape(loc))),
    lambda x: jax.scipy.stats.norm.logpdf(x, loc),
  )
  return jaxkl.monte_carlo_kl(
    key, p, jax.scipy.stats.norm.logpdf, num_samples=n, estimator=estimator
  )


def test_kl_estimate_is_a_pytree_through_jit_vmap_and_checkpoint():
  key = jax.random.key(2)
  eager = normal_estimate(key, jnp.float32(1.0))
  leaves, treedef = jax.tree_util.tree_flatten(eager)
  assert len(leaves) == 4  # value, stderr, effective_sample_size, pareto_k
  assert jax.tree_util.tree_unflatten(treedef, leaves) == eager
  jitted = jax.jit(normal_estimate)(key, jnp.float32(1.0))
  np.testing.assert_allclose(jitted.value, eager.value, rtol=1e-6)
  np.testing.assert_allclose(jitted.pareto_k, eager.pareto_k, rtol=1e-5)
  assert jitted.num_samples == 2048 and jitted.estimator == "k1"
  checkpointed = jax.jit(jax.checkpoint(normal_estimate))(key, jnp.float32(1.0))
  np.testing.assert_allclose(checkpointed.pareto_k, eager.pareto_k, rtol=1e-5)
  # vmap: every array field, pareto_k included, gets the leading axis.
  locs = jnp.array([0.5, 1.0, 2.0], jnp.float32)
  batched = jax.jit(jax.vmap(normal_estimate, in_axes=(None, 0)))(key, locs)
  for name in ("value", "stderr", "effective_sample_size", "pareto_k"):
    assert getattr(batched, name).shape == (3,), name
  truth = [torch_kl_normal(float(m), 1.0, 0.0, 1.0) for m in locs]
  assert np.all(
    np.abs(np.asarray(batched.value) - truth) < 4 * np.asarray(batched.stderr)
  )
  assert np.all(np.asarray(batched.pareto_k) < 0.5)  # Gaussian log-ratios
  # As a (dynamic) jit argument, and through tree_map.
  doubled = jax.jit(lambda e: jax.tree_util.tree_map(lambda a: 2 * a, e))(eager)
  np.testing.assert_allclose(doubled.value, 2 * eager.value)
  assert doubled.estimator == "k1" and doubled.num_samples == 2048


def test_kl_estimate_copies_equality_and_hash():
  est = normal_estimate(jax.random.key(3), jnp.float32(0.5), "k3")
  for name, other in copies(est).items():
    assert other == est, name
    np.testing.assert_array_equal(
      other.confidence_interval(), est.confidence_interval(), err_msg=name
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
      other.value = jnp.float32(0)
  different = normal_estimate(jax.random.key(4), jnp.float32(0.5), "k3")
  assert different != est
  assert (
    jaxkl.KLEstimate(
      est.value,
      est.stderr,
      est.effective_sample_size,
      est.num_samples,
      "k1",
      est.pareto_k,
    )
    != est
  )
  with pytest.raises(TypeError, match="unhashable"):
    hash(est)
  # Under tracing, == cannot look at values: a clear error.
  with pytest.raises(TypeError, match="concrete"):
    jax.jit(lambda e: jnp.float32(e == est))(est)
  # NaN fields (too few samples for pareto_k) compare equal to themselves.
  small = normal_estimate(jax.random.key(5), jnp.float32(0.5), n=8)
  assert np.isnan(small.pareto_k) and copy.deepcopy(small) == small


def test_kl_estimate_in_an_nnx_module():
  est = normal_estimate(jax.random.key(6), jnp.float32(1.0))

  class Tracker(nnx.Module):
    def __init__(self):
      self.last = nnx.data(est)  # arrays in an NNX module are data

  tracker = Tracker()
  for other in (
    copy.deepcopy(tracker),
    nnx.clone(tracker),
    nnx.merge(*nnx.split(tracker)),
  ):
    assert other.last == est
