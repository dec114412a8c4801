"""Checks on 8 virtual CPU devices, run in a child process by test_sharding.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python tests/_sharding_checks.py GROUP

runs every check of GROUP (see ``GROUPS``) and prints one JSON line
``{check name: [failure messages]}`` (an empty list is a pass); the exit status
is 1 if any check failed. Nothing happens on import (pytest's doctest
collection imports this file into the main test process, whose single device
must stay as it is).

Every check compares a multi-device result with the one-device result of the
same function on the same numbers, values and gradients, to float32 rounding
(``rtol = 1e-5``: sums over a sharded axis are added in a different order).
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
import sys
import time
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxkl
from jaxkl import _estimators

RTOL = 1e-5
DEVICES = 8
B, V = 8, 256  # small case: every axis divides the 8 devices and 2 x 4
LONG_B, LONG_V = 8, 65536  # a class axis longer than _logits._MAX_CHUNK


# ----------------------------------------------------------------------------
# Helpers.


class Failures(list):
  """Collects failure messages of one check."""

  def close(self, what, got, want, *, rtol=RTOL, atol=None):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
      self.append(f"{what}: shape {got.shape} != {want.shape}")
      return
    if atol is None:  # relative to the reference's scale
      finite = want[np.isfinite(want)]
      atol = 1e-6 * max(1.0, float(np.max(np.abs(finite), initial=0.0)))
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
      err = np.max(np.abs(np.where(bad, got - want, 0)))
      self.append(
        f"{what}: {bad.sum()} of {bad.size} entries differ "
        f"(max abs difference {err:.3g})"
      )

  def tree_close(self, what, got, want, **kw):
    for (path, g), w in zip(
      jax.tree_util.tree_leaves_with_path(got),
      jax.tree_util.tree_leaves(want),
      strict=False,
    ):
      self.close(what + jax.tree_util.keystr(path), g, w, **kw)

  def check(self, condition, message):
    if not condition:
      self.append(message)


def make_mesh(shape, names, kind):
  types = (getattr(AxisType, kind),) * len(shape)
  return jax.make_mesh(shape, names, axis_types=types)


def put(x, mesh, spec):
  return jax.device_put(x, NamedSharding(mesh, spec))


def shapes_of(hlo_line_head):
  """Element counts of the result shapes written before an op's name."""
  counts = []
  for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", hlo_line_head):
    counts.append(int(np.prod([int(d) for d in dims.split(",") if d])))
  return counts


def all_gathers(hlo):
  """Result element counts of every all-gather in compiled HLO text."""
  found = []
  for line in hlo.splitlines():
    match = re.search(r"=\s*(.*?)\s+all-gather(-start)?\(", line)
    if match:
      found.append(shapes_of(match.group(1)))
  return found


def check_collectives(fail, hlo, row_size, what):
  """No all-gather as large as one row of logits; some all-reduce present."""
  fail.check(
    " all-reduce(" in hlo or "all-reduce-start(" in hlo,
    f"{what}: no all-reduce in the HLO (was it partitioned?)",
  )
  for counts in all_gathers(hlo):
    fail.check(
      all(c < row_size for c in counts),
      f"{what}: an all-gather with result sizes {counts} (>= one "
      f"row of {row_size} classes: logits are gathered)",
    )


def compile_and_run(fn, args):
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled(*args), compiled.as_text()


def one_device(fn, args):
  with jax.default_device(jax.devices()[0]):
    return jax.jit(fn)(*[np.asarray(a) for a in args])


# ----------------------------------------------------------------------------
# Data.


def logits_data(batch, vocab, seed=0):
  rng = np.random.default_rng(seed)
  s = (3 * rng.standard_normal((batch, vocab))).astype(np.float32)
  t = (3 * rng.standard_normal((batch, vocab))).astype(np.float32)
  t[:, ::7] = -np.inf  # masked vocabulary: teacher probability 0
  t[1, 3:] = -np.inf  # a nearly one-hot teacher row
  return s, t


def probability_data(seed=1):
  rng = np.random.default_rng(seed)
  log_q = jax.nn.log_softmax(rng.standard_normal((B, V)) * 2, axis=-1)
  p = np.array(jax.nn.softmax(rng.standard_normal((B, V)) * 2, axis=-1))
  p[:, ::5] = 0  # zero targets, against a finite log q
  log_q = np.array(log_q, np.float32)
  log_q[0, 0] = -np.inf  # 0 log 0 against -inf
  return log_q, p.astype(np.float32)


ROW_MASK = np.array([True, True, False, True, True, True, False, True])
LABELS = np.array([3, -100, 5, 7, -100, 1, 2, 0])


# ----------------------------------------------------------------------------
# GSPMD: jit over NamedSharding-placed inputs.


def per_example_fns():
  """name -> (fn(a, b, row_mask, labels) -> dict of outputs, input kind)."""
  w_b = np.linspace(0.5, 1.5, B).astype(np.float32)

  def value_and_grads(loss_fn, a, b, *rest):
    """Outputs and d/d(a, b) of sum(w * output) (a scalar: sum(output))."""

    def scalar(a, b):
      out = loss_fn(a, b, *rest)
      if out.ndim == 1:
        return jnp.sum(out * w_b), out
      if out.ndim == 2:
        return jnp.sum(out * out.shape[1] ** -0.5), out
      return out, out

    (_, out), grads = jax.value_and_grad(scalar, argnums=(0, 1), has_aux=True)(a, b)
    return {"value": out, "grad": grads}

  def kl_div(a, b, mask, labels):
    del mask, labels
    return {
      r: value_and_grads(functools.partial(jaxkl.kl_div, reduction=r), a, b)
      for r in jaxkl._reduction.REDUCTIONS
    }

  def kl_divergence(a, b, mask, labels):
    del labels
    elementwise = lambda x, y, m: jaxkl.kl_divergence(x, y, where=m)  # noqa
    log_target = lambda x, y, m: jaxkl.kl_divergence(  # noqa
      x, jnp.log(y), log_target=True, where=m
    )
    return {
      "elementwise_mask": value_and_grads(elementwise, a, b, b > 0.002),
      "row_mask_log_target": value_and_grads(log_target, a, b, mask),
    }

  def from_logits(a, b, mask, labels):
    del labels
    plain = functools.partial(jaxkl.kl_divergence_from_logits, temperature=2.0)
    masked = lambda x, y, m: jaxkl.kl_divergence_from_logits(  # noqa: E731
      x, y, where=m
    )
    return {
      "T=2": value_and_grads(plain, a, b),
      "row_mask": value_and_grads(masked, a, b, mask),
    }

  def jsd(a, b, mask, labels):
    del mask, labels
    f = functools.partial(jaxkl.jensen_shannon_from_logits, beta=0.3, temperature=1.5)
    return {"beta=0.3": value_and_grads(f, a, b)}

  def distillation(a, b, mask, labels):
    del mask
    out = {}
    for d, reduction in (("forward", "mean"), ("reverse", "none"), ("jsd", "none")):
      f = functools.partial(
        jaxkl.distillation_loss, temperature=2.0, divergence=d, reduction=reduction
      )
      out[f"{d}/{reduction}"] = value_and_grads(
        lambda x, y, lab, f=f: f(x, y, labels=lab), a, b, labels
      )
    return out

  return {
    "kl_div": (kl_div, "probabilities"),
    "kl_divergence": (kl_divergence, "probabilities"),
    "kl_divergence_from_logits": (from_logits, "logits"),
    "jensen_shannon_from_logits": (jsd, "logits"),
    "distillation_loss": (distillation, "logits"),
  }


_REFERENCES = {}  # function name -> its one-device outputs

LAYOUTS = {
  # name: (mesh shape, mesh axis names, spec of [B, V], spec of [B])
  "batch": ((8,), ("data",), P("data", None), P("data")),
  "vocab": ((8,), ("model",), P(None, "model"), P()),
  "2d": ((2, 4), ("data", "model"), P("data", "model"), P("data")),
}


def gspmd_check(kind, layout, name):
  fn, inputs = per_example_fns()[name]
  mesh_shape, axis_names, spec, row_spec = LAYOUTS[layout]
  mesh = make_mesh(mesh_shape, axis_names, kind)
  a, b = logits_data(B, V) if inputs == "logits" else probability_data()
  host = (a, b, ROW_MASK, LABELS)
  args = (
    put(a, mesh, spec),
    put(b, mesh, spec),
    put(ROW_MASK, mesh, row_spec),
    put(LABELS, mesh, row_spec),
  )
  fail = Failures()
  got, hlo = compile_and_run(fn, args)
  if name not in _REFERENCES:  # the same for every layout: compile it once
    _REFERENCES[name] = one_device(fn, host)
  fail.tree_close("", got, _REFERENCES[name])
  row_sharding = NamedSharding(mesh, row_spec)
  in_sharding = NamedSharding(mesh, spec)
  for path, leaf in jax.tree_util.tree_leaves_with_path(got):
    where = jax.tree_util.keystr(path)
    if leaf.ndim == 1:  # per-example results follow the batch sharding
      fail.check(
        leaf.sharding.is_equivalent_to(row_sharding, 1),
        f"{where}: per-example output sharded as {leaf.sharding.spec}"
        f", not as the batch {row_spec}",
      )
    if "grad" in where:  # gradients keep the inputs' sharding
      fail.check(
        leaf.sharding.is_equivalent_to(in_sharding, 2),
        f"{where}: gradient sharded as {leaf.sharding.spec}, not as the input {spec}",
      )
  if "model" in axis_names:
    check_collectives(fail, hlo, V, "HLO")
  return fail


def long_vocab_check(kind, layout):
  """kl_divergence_from_logits / distillation_loss with V = 65536."""
  mesh_shape, axis_names, spec, _ = LAYOUTS[layout]
  mesh = make_mesh(mesh_shape, axis_names, kind)
  s, t = logits_data(LONG_B, LONG_V, seed=2)

  def fn(a, b):
    kl, grads = jax.value_and_grad(
      lambda x, y: jnp.sum(jaxkl.kl_divergence_from_logits(x, y, temperature=2.0)),
      argnums=(0, 1),
    )(a, b)
    distill, d_student = jax.value_and_grad(
      lambda x: jaxkl.distillation_loss(x, b, temperature=2.0)
    )(a)
    return {"kl": kl, "grads": grads, "distill": distill, "d_student": d_student}

  fail = Failures()
  got, hlo = compile_and_run(fn, (put(s, mesh, spec), put(t, mesh, spec)))
  fail.tree_close("", got, one_device(fn, (s, t)))
  for path, leaf in jax.tree_util.tree_leaves_with_path(got):
    if leaf.ndim == 2:
      fail.check(
        leaf.sharding.is_equivalent_to(NamedSharding(mesh, spec), 2),
        f"{jax.tree_util.keystr(path)}: sharded as {leaf.sharding.spec}, not {spec}",
      )
  if "model" in axis_names:
    check_collectives(fail, hlo, LONG_V, "HLO")
  return fail


def gather_detector_check(kind):
  """The HLO parser finds a forced all-gather of the logits (can fail)."""
  mesh = make_mesh((8,), ("model",), kind)
  s, _ = logits_data(B, V)
  replicated = NamedSharding(mesh, P())
  if kind == "Explicit":
    gather = lambda x: jax.sharding.reshard(x, replicated) * 2  # noqa: E731
  else:

    def gather(x):
      return jax.lax.with_sharding_constraint(x, replicated) * 2

  _, hlo = compile_and_run(gather, (put(s, mesh, P(None, "model")),))
  fail = Failures()
  gathers = all_gathers(hlo)
  fail.check(
    any(c >= B * V for counts in gathers for c in counts),
    f"no [B, V] all-gather found in {gathers}",
  )
  probe = Failures()
  check_collectives(probe, hlo, V, "probe")
  fail.check(
    any("all-gather" in m for m in probe),
    "check_collectives did not flag the gathered logits",
  )
  return fail


def gspmd_checks(kind):
  checks = {}
  for layout in LAYOUTS:
    for name in per_example_fns():
      checks[f"{kind}/{layout}/{name}"] = functools.partial(
        gspmd_check, kind, layout, name
      )
  for layout in ("batch", "vocab"):
    checks[f"{kind}/{layout}/V=65536"] = functools.partial(
      long_vocab_check, kind, layout
    )
  checks[f"{kind}/hlo_parser_finds_gather"] = functools.partial(
    gather_detector_check, kind
  )
  return checks


# ----------------------------------------------------------------------------
# shard_map: vocab_parallel_kl_from_logits.


def vocab_parallel_check(mesh_shape, axis_names, spec, axis_name, out_spec, with_masks):
  """All variants in one jitted function per side (one compile each)."""
  mesh = make_mesh(mesh_shape, axis_names, "Explicit")
  s, t = logits_data(B, V, seed=3)
  class_mask = np.ones((B, V), bool)
  class_mask[:, 10:40] = False
  row_spec = P(spec[0])
  variants = {  # label: (keyword arguments, mask)
    "forward": (dict(temperature=2.0), None),
    "reverse": (dict(divergence="reverse", temperature=2.0), None),
    "jsd": (dict(divergence="jsd", beta=0.3, temperature=2.0), None),
  }
  if with_masks:
    variants.update(
      {
        "forward/row_mask": (dict(), "row"),
        "forward/class_mask": (dict(), "class"),
        "reverse/class_mask": (dict(divergence="reverse"), "class"),
        "jsd/row_mask": (dict(divergence="jsd", beta=0.3), "row"),
      }
    )
  w_b = np.linspace(0.5, 1.5, B).astype(np.float32)

  def all_variants(per_example_fn, a, b, row, cls, w):
    """{label: (value, (d/da, d/db) of sum(w * value))}."""
    out = {}
    for label, (kw, mask_kind) in variants.items():
      where = {"row": row, "class": cls, None: None}[mask_kind]
      f = functools.partial(per_example_fn, where=where, **kw)
      out[label] = (
        f(a, b),
        jax.grad(lambda x, y, f=f: jnp.sum(f(x, y) * w), argnums=(0, 1))(a, b),
      )
    return out

  def sharded(a, b, row, cls, w):
    def local(a, b, row, cls, w):
      fn = functools.partial(jaxkl.vocab_parallel_kl_from_logits, axis_name=axis_name)
      return all_variants(fn, a, b, row, cls, w)

    # Gradients taken per device (inside shard_map) keep the class split.
    out_specs = dict.fromkeys(variants, (out_spec, (spec, spec)))
    return jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(spec, spec, row_spec, spec, row_spec),
      out_specs=out_specs,
    )(a, b, row, cls, w)

  def reference(a, b, row, cls, w):
    return all_variants(jaxkl.divergence_from_logits, a, b, row, cls, w)

  args = (
    put(s, mesh, spec),
    put(t, mesh, spec),
    put(ROW_MASK, mesh, row_spec),
    put(class_mask, mesh, spec),
    put(w_b, mesh, row_spec),
  )
  fail = Failures()
  got, hlo = compile_and_run(sharded, args)
  want = one_device(reference, (s, t, ROW_MASK, class_mask, w_b))
  fail.tree_close("", got, want)
  check_collectives(fail, hlo, V, "HLO")
  for label, (value, _) in got.items():
    if not label.startswith("reverse"):  # KL(Q || P) is +inf where p = 0
      fail.check(np.isfinite(np.asarray(value)).all(), f"{label}: not finite")
  return fail


def vocab_parallel_grad_through_shard_map_check():
  """jax.grad of a loss built on the shard_map (not inside it)."""
  mesh = make_mesh((8,), ("model",), "Explicit")
  s, t = logits_data(B, V, seed=4)
  spec = P(None, "model")
  per_device = jax.shard_map(
    functools.partial(
      jaxkl.vocab_parallel_kl_from_logits, axis_name="model", temperature=3.0
    ),
    mesh=mesh,
    in_specs=(spec, spec),
    out_specs=P(),
  )
  loss = lambda a, b: jnp.mean(per_device(a, b))  # noqa: E731
  got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
    put(s, mesh, spec), put(t, mesh, spec)
  )
  want = one_device(
    jax.value_and_grad(
      lambda a, b: jnp.mean(jaxkl.kl_divergence_from_logits(a, b, temperature=3.0)),
      argnums=(0, 1),
    ),
    (s, t),
  )
  fail = Failures()
  fail.tree_close("", got, want)
  return fail


def vocab_parallel_padding_shard_check():
  """A device whose whole slice is padding (-inf in both inputs).

  The last of the 8 slices of the class axis is -inf in student and teacher
  (a vocabulary padded to a multiple of the devices), as are a few scattered
  classes. Reference: ``divergence_from_logits`` on one device with those
  classes removed. Values, gradients and Hessian-vector products (w.r.t. both
  logits) must equal the reference on the real classes and be 0 on the
  padding, for every divergence.
  """
  mesh = make_mesh((8,), ("model",), "Explicit")
  spec = P(None, "model")
  rng = np.random.default_rng(11)
  s = (2 * rng.standard_normal((B, V))).astype(np.float32)
  t = (2 * rng.standard_normal((B, V))).astype(np.float32)
  padded = np.zeros(V, bool)
  padded[V - V // DEVICES :] = True  # the last device's whole slice
  padded[[3, 50, 101]] = True
  s[:, padded], t[:, padded] = -np.inf, -np.inf
  v_s = rng.standard_normal((B, V)).astype(np.float32)  # HVP directions
  v_t = rng.standard_normal((B, V)).astype(np.float32)
  w = np.linspace(0.5, 1.5, B).astype(np.float32)
  variants = {
    "forward": dict(temperature=2.0),
    "reverse": dict(divergence="reverse", temperature=0.7),
    "jsd": dict(divergence="jsd", beta=0.3, temperature=2.0),
    "jsd/half": dict(divergence="jsd", temperature=1.0),
  }

  def all_variants(per_example_fn, a, b, da, db):
    """{label: (value, gradient, Hessian times (da, db)), w.r.t. (a, b)}."""
    out = {}
    for label, kw in variants.items():
      f = functools.partial(per_example_fn, **kw)
      grad = jax.grad(lambda x, y, f=f: jnp.sum(f(x, y) * w), argnums=(0, 1))
      g, hvp = jax.jvp(grad, (a, b), (da, db))
      out[label] = (f(a, b), g, hvp)
    return out

  def sharded(a, b, da, db):
    def local(a, b, da, db):
      fn = functools.partial(jaxkl.vocab_parallel_kl_from_logits, axis_name="model")
      return all_variants(fn, a, b, da, db)

    out_specs = {label: (P(), (spec, spec), (spec, spec)) for label in variants}
    return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 4, out_specs=out_specs)(
      a, b, da, db
    )

  keep = ~padded
  got, _ = compile_and_run(sharded, tuple(put(x, mesh, spec) for x in (s, t, v_s, v_t)))
  want = one_device(
    lambda a, b, da, db: all_variants(jaxkl.divergence_from_logits, a, b, da, db),
    (s[:, keep], t[:, keep], v_s[:, keep], v_t[:, keep]),
  )
  fail = Failures()
  for label in variants:
    value, grads, hvps = got[label]
    want_value, want_grads, want_hvps = want[label]
    fail.close(f"{label}: value", value, want_value)
    for what, g, wg in (("grad", grads, want_grads), ("hvp", hvps, want_hvps)):
      for name, x, wx in zip(("student", "teacher"), g, wg, strict=False):
        x = np.asarray(x)
        fail.close(f"{label}: {what} {name}", x[:, keep], wx)
        fail.check(
          np.all(x[:, padded] == 0),
          f"{label}: {what} {name} not 0 on the padding: "
          f"{x[:, padded][x[:, padded] != 0][:4]}",
        )
  return fail


def vocab_parallel_errors_check():
  fail = Failures()
  try:
    jaxkl.vocab_parallel_kl_from_logits(
      jnp.zeros((2, 3)), jnp.zeros((2, 3)), axis_name="model"
    )
    fail.append("no error outside shard_map")
  except ValueError as err:
    fail.check("shard_map" in str(err), f"unhelpful message: {err}")
  return fail


# ----------------------------------------------------------------------------
# shard_map: sharded_monte_carlo_kl, and kl_from_samples on sharded samples.


def normal_pair(mu, sigma, shape=()):
  def sample(key, n):
    return mu + sigma * jax.random.normal(key, (n, *shape))

  def log_prob(x):
    return jax.scipy.stats.norm.logpdf(x, mu, sigma)

  return sample, log_prob


def concatenated_sampler(sample, devices):
  """One device: the concatenation of what each device draws."""

  def draw(key, n):
    return jnp.concatenate(
      [sample(jax.random.fold_in(key, d), n // devices) for d in range(devices)], axis=0
    )

  return draw


def monte_carlo_check(estimator, gradient, shape):
  mesh = make_mesh((DEVICES,), ("samples",), "Explicit")
  n = 4096
  key = jax.random.key(7)
  q_log_prob = lambda x: jax.scipy.stats.norm.logpdf(x, 1.0, 1.3)  # noqa

  def sharded(mu, key):
    def local(mu, key):
      return jaxkl.sharded_monte_carlo_kl(
        key,
        normal_pair(mu, 0.8, shape),
        q_log_prob,
        num_samples=n,
        axis_name="samples",
        estimator=estimator,
        gradient=gradient,
      )

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P()), out_specs=P())(mu, key)

  def reference(mu, key):
    sample, log_prob = normal_pair(mu, 0.8, shape)
    return jaxkl.monte_carlo_kl(
      key,
      (concatenated_sampler(sample, DEVICES), log_prob),
      q_log_prob,
      num_samples=n,
      estimator=estimator,
      gradient=gradient,
    )

  def estimate_and_gradient(f):
    def value(mu):
      est = f(mu, key)
      return jnp.sum(est.value), est

    return jax.jit(jax.grad(value, has_aux=True))

  mu = jnp.float32(0.3)
  d_got, got = estimate_and_gradient(sharded)(mu)
  d_want, want = estimate_and_gradient(reference)(mu)
  fail = Failures()
  fail.close("value", got.value, want.value)
  fail.close("stderr", got.stderr, want.stderr)
  fail.close("gradient", d_got, d_want)
  fail.check(got.num_samples == n, f"num_samples {got.num_samples}")
  fail.close(
    "effective_sample_size", got.effective_sample_size, want.effective_sample_size
  )
  fail.close("pareto_k", got.pareto_k, want.pareto_k)  # gathered global tail
  # The estimate is right too (5 standard errors): KL(N(.3,.8) || N(1,1.3)).
  true = np.log(1.3 / 0.8) + (0.8**2 + 0.7**2) / (2 * 1.3**2) - 0.5
  fail.check(
    np.all(np.abs(np.asarray(got.value) - true) < 5 * np.asarray(got.stderr)),
    f"estimate {got.value} +- {got.stderr} far from {true}",
  )
  return fail


def antithetic_check():
  mesh = make_mesh((DEVICES,), ("samples",), "Explicit")
  n, key = 2048, jax.random.key(3)
  p = jaxkl.StandardNormalPushforward(
    transform=lambda z: 0.5 + 2.0 * z,
    log_prob=lambda x: jax.scipy.stats.norm.logpdf(x, 0.5, 2.0),
  )
  q = lambda x: jax.scipy.stats.norm.logpdf(x, 0.0, 1.5)  # noqa: E731

  def local(key):
    return jaxkl.sharded_monte_carlo_kl(
      key, p, q, num_samples=n, axis_name="samples", antithetic=True, estimator="k3"
    )

  got = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P(), out_specs=P()))(key)
  # One device: device d's pairs are (z_d, -z_d), z_d drawn with its key;
  # stack all first halves, then all second halves, so that sample i and
  # sample i + n/2 are a pair, as estimate_from_log_ratios(groups=2) expects.
  zs = [
    jax.random.normal(jax.random.fold_in(key, d), (n // DEVICES // 2,))
    for d in range(DEVICES)
  ]
  x = p.transform(jnp.concatenate(zs + [-z for z in zs]))
  want_value, want_stderr, _ = _estimators.estimate_from_log_ratios(
    q(x) - p.log_prob(x), estimator="k3", axes=(0,), groups=2
  )
  fail = Failures()
  fail.close("value", got.value, want_value)
  fail.close("stderr", got.stderr, want_stderr)
  return fail


def monte_carlo_errors_check():
  """Static arguments are checked at trace time, with the argument named."""
  mesh = make_mesh((DEVICES,), ("samples",), "Explicit")
  fail = Failures()
  for kw, error, words in (
    (dict(num_samples=100), ValueError, "multiple"),
    (dict(num_samples=8, antithetic=True), ValueError, "antithetic"),
    (dict(estimator="cv_crossfit"), ValueError, "estimator"),
    (dict(axis_name="nope"), ValueError, "shard_map"),
  ):
    kw = {"num_samples": 64, "axis_name": "samples", **kw}
    local = functools.partial(
      jaxkl.sharded_monte_carlo_kl,
      p=normal_pair(0.0, 1.0),
      q=jax.scipy.stats.norm.logpdf,
      **kw,
    )
    try:
      jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P(), out_specs=P()))(
        jax.random.key(0)
      )
      fail.append(f"{kw}: no error")
    except error as err:
      fail.check(words in str(err), f"{kw}: unhelpful message {err}")
  return fail


def kl_from_samples_check():
  """Plain kl_from_samples under jit with the sample axis sharded."""
  mesh = make_mesh((DEVICES,), ("samples",), "Explicit")
  rng = np.random.default_rng(5)
  x = rng.standard_normal((4096, 3)).astype(np.float32)
  log_p = jax.scipy.stats.norm.logpdf(x).astype(np.float32)
  log_q = jax.scipy.stats.norm.logpdf(x, 0.4, 1.2).astype(np.float32)
  mask = rng.random((4096, 3)) < 0.9

  def fn(lp, lq, m):
    out = {}
    for est in ("k1", "k3", "cv"):
      f = lambda a, est=est: jaxkl.kl_from_samples(  # noqa
        lp, a, estimator=est, axis=0, where=m, return_stderr=True
      )
      (value, stderr), vjp = jax.vjp(f, lq)
      out[est] = (value, stderr, vjp((jnp.ones(3), jnp.zeros(3)))[0])
    return out

  spec = P("samples", None)
  args = [put(a, mesh, spec) for a in (log_p, log_q, mask)]
  got, _ = compile_and_run(fn, args)
  fail = Failures()
  fail.tree_close("", got, one_device(fn, (log_p, log_q, mask)))
  return fail


def readme_example_check():
  """The example of README.md's "Many devices" section runs and is right."""
  readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
  section = readme.split("## Many devices", 1)[1].split("\n## ", 1)[0]
  code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
  names = {}
  exec(code, names)  # pylint: disable=exec-used
  fail = Failures()
  student, teacher = names["student_logits"], names["teacher_logits"]
  want_loss, want_grad = one_device(
    jax.value_and_grad(lambda s, t: jaxkl.distillation_loss(s, t, temperature=2.0)),
    (student, teacher),
  )
  want = one_device(jaxkl.kl_divergence_from_logits, (student, teacher))
  fail.close("loss", names["loss"], want_loss)
  fail.close("grad", names["grad"], want_grad)
  fail.close("per_example", names["per_example"], want)
  fail.close("same", names["same"], want)
  mesh = names["mesh"]
  fail.check(
    names["grad"].sharding.spec == P("data", "model"),
    f"grad sharded as {names['grad'].sharding.spec}",
  )
  fail.check(
    names["per_example"].sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 1),
    "per_example not batch-sharded",
  )
  est = names["estimate"]
  fail.check(
    abs(float(est.value) - 0.5) < 4 * float(est.stderr),
    f"estimate {est.value} +- {est.stderr}, KL is 0.5",
  )
  return fail


def spmd_checks():
  checks = {
    "vocab_parallel/1d": functools.partial(
      vocab_parallel_check, (8,), ("model",), P(None, "model"), "model", P(), True
    ),
    "vocab_parallel/2d_batch_and_vocab": functools.partial(
      vocab_parallel_check,
      (2, 4),
      ("data", "model"),
      P("data", "model"),
      "model",
      P("data"),
      False,
    ),
    "vocab_parallel/vocab_over_two_axes": functools.partial(
      vocab_parallel_check,
      (2, 4),
      ("data", "model"),
      P(None, ("data", "model")),
      ("data", "model"),
      P(),
      False,
    ),
    "vocab_parallel/grad_through_shard_map": (
      vocab_parallel_grad_through_shard_map_check
    ),
    "vocab_parallel/error_outside_shard_map": vocab_parallel_errors_check,
    "vocab_parallel/padding_shard": vocab_parallel_padding_shard_check,
    "sharded_monte_carlo/antithetic": antithetic_check,
    "sharded_monte_carlo/errors": monte_carlo_errors_check,
    "kl_from_samples/sample_sharded": kl_from_samples_check,
    "readme_example": readme_example_check,
  }
  for estimator, gradient, shape in (
    ("k1", "pathwise", ()),
    ("k3", "pathwise", (3,)),
    ("cv", "score_function", (3,)),
  ):
    checks[f"sharded_monte_carlo/{estimator}/{gradient}/{shape}"] = functools.partial(
      monte_carlo_check, estimator, gradient, shape
    )
  return checks


# ----------------------------------------------------------------------------
# GSPMD: the rest of the public API (losses, closed forms, estimators, k-NN),
# batch-/sample-sharded.


def weighted_sum(out):
  """A scalar with a distinct weight per entry, for gradients."""
  w = jnp.linspace(0.5, 1.5, out.size, dtype=out.dtype).reshape(out.shape)
  return jnp.sum(out * w)


def api_check(
  kind,
  mesh_shape,
  axis_names,
  fn,
  host_args,
  specs,
  *,
  row_spec=None,
  rtol=RTOL,
  atol=None,
  reference_fn=None,
  reference=None,
):
  """fn on NamedSharding-placed inputs equals fn on one device.

  The one-device result is that of ``reference_fn`` (default ``fn``), kept
  in the dict ``reference`` (when given) to be computed once for several
  layouts. With ``row_spec``, outputs of rank 1 must be sharded as
  ``row_spec``. Returns the failures, the multi-device outputs and the
  compiled HLO text.
  """
  mesh = make_mesh(mesh_shape, axis_names, kind)
  args = [put(a, mesh, s) for a, s in zip(host_args, specs, strict=False)]
  got, hlo = compile_and_run(fn, args)
  fail = Failures()
  if reference is None or "value" not in reference:
    want = one_device(reference_fn or fn, host_args)
    if reference is not None:
      reference["value"] = want
  else:
    want = reference["value"]
  fail.tree_close("", got, want, rtol=rtol, atol=atol)
  if row_spec is not None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(got):
      if leaf.ndim == 1:
        fail.check(
          leaf.sharding.is_equivalent_to(NamedSharding(mesh, row_spec), 1),
          f"{jax.tree_util.keystr(path)}: sharded as "
          f"{leaf.sharding.spec}, not as the batch {row_spec}",
        )
  return fail, got, hlo


def losses_check(kind):
  """KLDivLoss, reduce_loss (with where) and divergence_from_logits."""
  log_q, p = probability_data(seed=6)
  s, t = logits_data(B, V, seed=6)

  def fn(log_q, p, s, t, mask):
    out = {}
    for r in jaxkl._reduction.REDUCTIONS:
      if r in ("batchmean", "none"):  # kl_div has every reduction
        loss = jaxkl.KLDivLoss(reduction=r)
        out[f"KLDivLoss/{r}"] = jax.value_and_grad(
          lambda a, b, loss=loss: weighted_sum(loss(a, b)), argnums=(0, 1)
        )(log_q, p)
      f = lambda v, r=r: jaxkl.reduce_loss(v, r, where=mask[:, None])  # noqa
      out[f"reduce_loss/{r}"] = (f(p), jax.grad(lambda v, f=f: weighted_sum(f(v)))(p))
    # The other divergences: distillation_loss, in gspmd_checks.
    g = functools.partial(
      jaxkl.divergence_from_logits,
      divergence="jsd",
      beta=0.3,
      temperature=2.0,
      where=mask,
    )
    out["divergence_from_logits/jsd"] = (
      g(s, t),
      jax.grad(lambda a, b: weighted_sum(g(a, b)), argnums=(0, 1))(s, t),
    )
    return out

  spec = P("data", None)
  fail, _, _ = api_check(
    kind,
    (8,),
    ("data",),
    fn,
    (log_q, p, s, t, ROW_MASK),
    (spec, spec, spec, spec, P("data")),
    row_spec=P("data"),
  )
  return fail


def closed_forms_check(kind):
  """Closed forms on batch-sharded parameters, values and gradients."""
  rng = np.random.default_rng(9)

  def positive(*shape):
    return rng.uniform(0.5, 2.0, (B, *shape)).astype(np.float32)

  def normal(*shape):
    return rng.standard_normal((B, *shape)).astype(np.float32)

  def tril():
    m = np.tril(0.3 * rng.standard_normal((B, 3, 3)), -1)
    return (m + np.eye(3) * rng.uniform(0.5, 1.5, (B, 1, 3))).astype(np.float32)

  cases = {  # name: (function, parameters, each [B, ...])
    "kl_normal": (jaxkl.kl_normal, (normal(3), positive(3), normal(3), positive(3))),
    "kl_multivariate_normal": (
      jaxkl.kl_multivariate_normal,
      (normal(3), tril(), normal(3), tril()),
    ),
    "kl_categorical": (jaxkl.kl_categorical, (normal(5), normal(5))),
    "kl_dirichlet": (jaxkl.kl_dirichlet, (positive(4), positive(4))),
    "kl_laplace": (jaxkl.kl_laplace, (normal(), positive(), normal(), positive())),
  }
  host = [a for _, args in cases.values() for a in args]  # flat: one_device

  def fn(*flat):
    out, flat = {}, list(flat)
    for name, (f, params) in cases.items():
      args, flat = flat[: len(params)], flat[len(params) :]
      out[name] = (
        f(*args),
        jax.grad(lambda *a, f=f: weighted_sum(f(*a)), argnums=tuple(range(len(args))))(
          *args
        ),
      )
    return out

  specs = [P("data", *(None,) * (a.ndim - 1)) for a in host]
  fail, _, _ = api_check(kind, (8,), ("data",), fn, host, specs, row_spec=P("data"))
  return fail


def estimator_terms_check(kind):
  """kl_estimator_terms on sample-sharded log-densities, with gradients."""
  rng = np.random.default_rng(10)
  x = rng.standard_normal((1024, 3)).astype(np.float32)
  log_p = jax.scipy.stats.norm.logpdf(x).astype(np.float32)
  log_q = jax.scipy.stats.norm.logpdf(x, 0.4, 1.2).astype(np.float32)

  def fn(lp, lq):
    out = {}
    for est in ("k1", "k2", "k3"):
      f = functools.partial(jaxkl.kl_estimator_terms, estimator=est)
      out[est] = (
        f(lp, lq),
        jnp.mean(f(lp, lq), axis=0),
        jax.grad(lambda a, b, f=f: weighted_sum(f(a, b)), argnums=(0, 1))(lp, lq),
      )
    return out

  spec = P("samples", None)
  fail, _, _ = api_check(kind, (8,), ("samples",), fn, (log_p, log_q), (spec, spec))
  return fail


def knn_check(kind):
  """knn_kl with the rows of x and y sharded: the one-device value."""
  rng = np.random.default_rng(11)
  x = rng.standard_normal((256, 3)).astype(np.float32)
  y = (1.3 * rng.standard_normal((192, 3)) + 0.5).astype(np.float32)

  def fn(x, y):
    return {"wkv/k=3/chunk=64": jaxkl.knn_kl(x, y, k=3, chunk_size=64)}

  spec = P("data", None)
  fail, _, _ = api_check(kind, (8,), ("data",), fn, (x, y), (spec, spec))
  return fail


def api_checks():
  # Explicit axes (jax.make_mesh's default) where supported; knn_kl (x's rows
  # sharded) raises ShardingTypeError there, so it runs on Auto axes. The
  # fused loss: fused_checks.
  checks = {
    "Explicit/losses": functools.partial(losses_check, "Explicit"),
    "Explicit/closed_forms": functools.partial(closed_forms_check, "Explicit"),
    "Explicit/kl_estimator_terms": functools.partial(estimator_terms_check, "Explicit"),
    "Auto/knn_kl": functools.partial(knn_check, "Auto"),
  }
  return checks


# ----------------------------------------------------------------------------
# The fused linear loss: GSPMD (explicit and automatic axes) and shard_map.
#
# Shapes are chosen so that every per-device dimension in the compiled HLO
# tells what it is: tokens (64 and its per-chunk / per-device parts), hidden
# sizes 12 and 20, vocabulary 448 (blocks of 112, and their 8- and 4-way
# shards). A collective whose result has a token dimension and a vocabulary
# dimension moves logits; an all-gather of more than a per-token vector
# gathers hidden states or weights.

N, H, H_T, FUSED_V = 64, 12, 20, 448
VOCAB_CHUNK = 112  # 4 strided vocabulary blocks
TOKEN_DIMS = {64, 32, 16, 8, 4, 2}  # N and chunk sizes, whole or split
VOCAB_DIMS = {448, 224, 112, 56, 28, 14}  # V and blocks, whole or split
FUSED_VARIANTS = {  # name: (divergence, reduction, chunk_size, vocab_chunk)
  "blocks": ("forward", "mean", 16, VOCAB_CHUNK),  # token chunks x vocab blocks
  "rows": ("jsd", "none", 16, None),  # token chunks over the whole vocabulary
  "one_chunk": ("reverse", "sum", N, VOCAB_CHUNK),  # all tokens, vocab blocks
}
FUSED_LAYOUTS = {
  # name: (mesh shape, axis names, spec of hidden [N, *], of weights [*, V],
  # {mesh axis type: variant}): one variant per check (compiling is the
  # cost); every variant on each kind of axes, both vocab_chunk settings on
  # each kind and on the 1-D layouts.
  "tokens": (
    (8,),
    ("data",),
    P("data", None),
    P(None, None),
    {"Explicit": "one_chunk", "Auto": "rows"},
  ),
  "vocab": (
    (8,),
    ("model",),
    P(None, None),
    P(None, "model"),
    {"Explicit": "rows", "Auto": "blocks"},
  ),
  "2d": (
    (2, 4),
    ("data", "model"),
    P("data", None),
    P(None, "model"),
    {"Explicit": "blocks", "Auto": "one_chunk"},
  ),
}


def fused_data(seed=8):
  """(h_s, w_s, b_s, h_t, w_t, labels) on the host, float32."""
  rng = np.random.default_rng(seed)

  def normal(*shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  labels = rng.integers(0, FUSED_V, N)
  labels[::5] = -100
  return (
    normal(N, H),
    normal(H, FUSED_V, scale=0.5),
    normal(FUSED_V, scale=0.5),
    normal(N, H_T),
    normal(H_T, FUSED_V, scale=0.5),
    labels,
  )


def fused_specs(h_spec, w_spec):
  """In-specs of fused_data's arrays for hidden and weight specs."""
  return (h_spec, w_spec, P(w_spec[1]), h_spec, w_spec, P(h_spec[0]))


def fused_values_and_grads(fused, variants):
  """fn(h_s, w_s, b_s, h_t, w_t, labels) -> {variant: (value, grads)}.

  ``fused`` is the fused loss or its dense reference (same signature); the
  gradients are with respect to h_s, w_s, b_s, h_t and w_t, of a weighted
  sum of the per-token losses for ``'none'``.
  """

  def fn(h_s, w_s, b_s, h_t, w_t, labels):
    out = {}
    for variant in variants:
      d, reduction, chunk, vocab_chunk = FUSED_VARIANTS[variant]

      def loss(
        h_s,
        w_s,
        b_s,
        h_t,
        w_t,
        d=d,
        reduction=reduction,
        chunk=chunk,
        vocab_chunk=vocab_chunk,
      ):
        value = fused(
          h_s,
          w_s,
          h_t,
          w_t,
          student_bias=b_s,
          temperature=2.0,
          divergence=d,
          beta=0.3,
          labels=labels,
          reduction=reduction,
          chunk_size=chunk,
          vocab_chunk=vocab_chunk,
        )
        return weighted_sum(value), value

      (_, value), grads = jax.value_and_grad(
        loss, argnums=(0, 1, 2, 3, 4), has_aux=True
      )(h_s, w_s, b_s, h_t, w_t)
      out[variant] = (value, grads)
    return out

  return fn


def dense_fused(h_s, w_s, h_t, w_t, *, student_bias, chunk_size, vocab_chunk, **kw):
  """The reference: distillation_loss on materialized logits."""
  del chunk_size, vocab_chunk
  return jaxkl.distillation_loss(h_s @ w_s + student_bias[None, :], h_t @ w_t, **kw)


def fused_collectives(hlo):
  """(op, [result shapes]) of every collective in compiled HLO text."""
  found = []
  for line in hlo.splitlines():
    match = re.search(
      r"=\s*(.*?)\s+(all-gather|all-reduce|all-to-all|reduce-scatter|"
      r"collective-permute)(-start)?\(",
      line,
    )
    if match:
      shapes = [
        tuple(int(d) for d in dims.split(",") if d)
        for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", match.group(1))
      ]
      found.append((match.group(2), shapes))
  return found


def check_fused_collectives(fail, hlo, vocab_sharded, what):
  """Only per-row statistics (and d weight blocks over 'data') cross devices.

  No collective moves a [tokens, vocabulary] block; nothing but per-token
  vectors is gathered (hidden states and weights stay where they are); with
  the tokens replicated and the vocabulary sharded, no collective has a
  vocabulary dimension at all.
  """
  for op, shapes in fused_collectives(hlo):
    for shape in shapes:
      dims = set(shape)
      fail.check(
        not (dims & TOKEN_DIMS and dims & VOCAB_DIMS),
        f"{what}: {op} of {list(shape)} (a [tokens, vocabulary] block)",
      )
      if op != "all-reduce":
        fail.check(
          int(np.prod(shape)) <= N,
          f"{what}: {op} of {list(shape)} (more than a per-token vector)",
        )
      if vocab_sharded == "only":
        fail.check(
          not dims & VOCAB_DIMS,
          f"{what}: {op} of {list(shape)} with the tokens replicated",
        )


def fused_detector_check():
  """check_fused_collectives flags gathers and logits, passes statistics."""
  hlo = "\n".join(
    (
      "  %a = f32[64,12]{1,0} all-gather(f32[8,12]{1,0} %h), dimensions={0}",
      "  %b = (f32[16]{0}, f32[16,12]{1,0}) all-reduce(%m, %d), to_apply=%add",
      "  %c = f32[16,14]{1,0} all-reduce(f32[16,14]{1,0} %s), to_apply=%add",
      "  %d = f32[12,56]{1,0} all-reduce(f32[12,56]{1,0} %w), to_apply=%add",
      "  %e = f32[64]{0} all-gather-start(f32[8]{0} %l), dimensions={0}",
    )
  )
  fail = Failures()
  fail.check(len(fused_collectives(hlo)) == 5, f"parsed {fused_collectives(hlo)}")
  probe = Failures()
  check_fused_collectives(probe, hlo, True, "probe")
  want = ["all-gather of [64, 12]", "all-reduce of [16, 14]"]
  fail.check(
    sorted(m.split(": ")[1].split(" (")[0] for m in probe) == sorted(want),
    f"flagged {list(probe)}, want {want}",
  )
  probe = Failures()
  check_fused_collectives(probe, hlo, "only", "probe")
  fail.check(
    any("[12, 56] with the tokens replicated" in m for m in probe),
    f"d weight all-reduce not flagged with replicated tokens: {list(probe)}",
  )
  return fail


_FUSED_REFERENCE = {}


def fused_check(kind, layout):
  """fused_linear_distillation_loss under GSPMD on explicit or auto axes.

  The layout's variant for this kind of axes (token chunks and/or
  vocabulary blocks: see FUSED_LAYOUTS): values and the gradients w.r.t.
  both hidden states, both weights and the student bias against the dense
  loss on one device; per-token losses and d hidden keep the tokens'
  sharding, d weight and d bias the vocabulary's; the compiled HLO moves no
  logits and gathers neither hidden states nor weights.
  """
  mesh_shape, axis_names, h_spec, w_spec, variant = FUSED_LAYOUTS[layout]
  variants = (variant[kind],)
  host = fused_data()
  specs = fused_specs(h_spec, w_spec)
  fail, got, hlo = api_check(
    kind,
    mesh_shape,
    axis_names,
    fused_values_and_grads(jaxkl.fused_linear_distillation_loss, variants),
    host,
    specs,
    rtol=1e-4,
    reference=_FUSED_REFERENCE.setdefault(variants, {}),
    reference_fn=fused_values_and_grads(dense_fused, variants),
  )
  mesh = make_mesh(mesh_shape, axis_names, kind)
  vocab_sharded = "only" if layout == "vocab" else layout == "2d"
  check_fused_collectives(fail, hlo, vocab_sharded, "HLO")
  for name, (value, grads) in got.items():
    if value.ndim:
      fail.check(
        value.sharding.is_equivalent_to(NamedSharding(mesh, P(h_spec[0])), 1),
        f"{name}: per-token losses sharded as {value.sharding.spec}, not "
        f"{P(h_spec[0])}",
      )
    for grad, spec, what in zip(
      grads, specs, ("h_s", "w_s", "b_s", "h_t", "w_t"), strict=False
    ):
      fail.check(
        grad.sharding.is_equivalent_to(NamedSharding(mesh, spec), grad.ndim),
        f"{name}: d {what} sharded as {grad.sharding.spec}, not as the input {spec}",
      )
  return fail


def fused_shard_map_check(vocab_chunk, partial=False):
  """Token parallelism in shard_map (check_vma=True): per-device sums, psum.

  Values and gradients of the mean over kept tokens (w.r.t. both hidden
  states, both weights and the student bias) equal the dense loss on one
  device; the gradients keep the inputs' shardings; nothing is gathered.
  ``partial``: a 2 x 4 mesh with explicit axes, manual over 'data' only
  (the 'model' axis stays explicit inside).
  """
  if partial:
    mesh = make_mesh((2, DEVICES // 2), ("data", "model"), "Explicit")
  else:
    mesh = make_mesh((DEVICES,), ("data",), "Explicit")
  manual = {"axis_names": {"data"}} if partial else {}
  h_s, w_s, b_s, h_t, w_t, labels = fused_data()
  rows = P("data", None)
  in_specs = (rows, P(), P(), rows, P(), P("data"))

  def mean_loss(h_s, w_s, b_s, h_t, w_t, labels):
    def local(h_s, w_s, b_s, h_t, w_t, labels):
      total = jaxkl.fused_linear_distillation_loss(
        h_s,
        w_s,
        h_t,
        w_t,
        student_bias=b_s,
        temperature=2.0,
        divergence="jsd",
        labels=labels,
        reduction="sum",
        chunk_size=4,  # 8 tokens per device: 2 chunks
        vocab_chunk=vocab_chunk,
      )
      count = jnp.sum(labels != -100).astype(total.dtype)
      return jax.lax.psum(total, "data"), jax.lax.psum(count, "data")

    total, count = jax.shard_map(
      local, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()), **manual
    )(h_s, w_s, b_s, h_t, w_t, labels)
    return total / count

  def sharded(*args):
    return jax.value_and_grad(mean_loss, argnums=(0, 1, 2, 3, 4))(*args)

  def reference(h_s, w_s, b_s, h_t, w_t, labels):
    return jax.value_and_grad(
      lambda *a: dense_fused(
        a[0],
        a[1],
        a[3],
        a[4],
        student_bias=a[2],
        temperature=2.0,
        divergence="jsd",
        labels=labels,
        chunk_size=None,
        vocab_chunk=None,
      ),
      argnums=(0, 1, 2, 3, 4),
    )(h_s, w_s, b_s, h_t, w_t)

  host = (h_s, w_s, b_s, h_t, w_t, labels)
  args = [put(a, mesh, s) for a, s in zip(host, in_specs, strict=False)]
  got, hlo = compile_and_run(sharded, args)
  fail = Failures()
  if "shard_map" not in _FUSED_REFERENCE:  # the same for every vocab_chunk
    _FUSED_REFERENCE["shard_map"] = one_device(reference, host)
  fail.tree_close("", got, _FUSED_REFERENCE["shard_map"], rtol=1e-4)
  names = ("h_s", "w_s", "b_s", "h_t", "w_t")
  for grad, spec, what in zip(got[1], in_specs, names, strict=False):
    fail.check(
      grad.sharding.is_equivalent_to(NamedSharding(mesh, spec), grad.ndim),
      f"d {what} sharded as {grad.sharding.spec}, not {spec}",
    )
  fail.check(not all_gathers(hlo), f"all-gathers {all_gathers(hlo)}")
  return fail


def fused_topk_check(kind):
  """The fused top-k loss on a 2 x 4 mesh (tokens on 'data', the LM head's
  vocabulary on 'model'), and token-parallel in shard_map: values and
  gradients (hidden, weight) equal one device; no all-gather of a
  vocabulary row."""
  fail = Failures()
  h_s, w_s, _, _, w_t, labels = fused_data()
  teacher = jax.nn.log_softmax(jnp.asarray(h_s[:, :H] @ w_t[:H]))
  log_p, idx = jax.lax.top_k(teacher, 8)

  def loss(h, w, idx, log_p, **kw):
    return jaxkl.fused_linear_topk_distillation_loss(
      h,
      w,
      idx,
      log_p,
      student_temperature=1.5,
      divergence="jsd",
      labels=labels,
      vocab_chunk=VOCAB_CHUNK,
      **kw,
    )

  grad = jax.value_and_grad(loss, (0, 1))
  args = (h_s, w_s, idx, log_p)
  want = one_device(grad, args)
  mesh = make_mesh((2, 4), ("data", "model"), kind)
  specs = (P("data", None), P(None, "model"), P("data", None), P("data", None))
  with jax.set_mesh(mesh):
    got, hlo = compile_and_run(
      grad, [put(a, mesh, s) for a, s in zip(args, specs, strict=True)]
    )
  fail.tree_close(f"{kind}/fused_topk", got, want)
  check_collectives(fail, hlo, FUSED_V, f"{kind}/fused_topk")
  if kind == "Auto":
    mesh = make_mesh((DEVICES,), ("data",), "Auto")

    def local(h, w, idx, log_p, keep):
      value = jaxkl.fused_linear_topk_distillation_loss(
        h, w, idx, log_p, where=keep, reduction="sum", vocab_chunk=VOCAB_CHUNK
      )
      return jax.lax.psum(value, "data")

    keep = labels != -100
    sharded = jax.shard_map(
      jax.value_and_grad(local, (0, 1)),
      mesh=mesh,
      in_specs=(P("data"), P(), P("data"), P("data"), P("data")),
      out_specs=(P(), (P("data"), P())),
    )
    got = jax.jit(sharded)(h_s, w_s, idx, log_p, keep)
    want = one_device(
      jax.value_and_grad(
        lambda h, w, i, lp, m: jaxkl.fused_linear_topk_distillation_loss(
          h, w, i, lp, where=m, reduction="sum", vocab_chunk=VOCAB_CHUNK
        ),
        (0, 1),
      ),
      (h_s, w_s, idx, log_p, keep),
    )
    fail.tree_close("shard_map/fused_topk", got, want)
  return fail


def fused_checks():
  checks = {"fused_linear/hlo_parser": fused_detector_check}
  for kind in ("Explicit", "Auto"):
    for layout in FUSED_LAYOUTS:
      checks[f"{kind}/fused_linear/{layout}"] = functools.partial(
        fused_check, kind, layout
      )
  for vocab_chunk in (None, VOCAB_CHUNK):
    checks[f"fused_linear/shard_map/vocab_chunk={vocab_chunk}"] = functools.partial(
      fused_shard_map_check, vocab_chunk
    )
  checks["fused_linear/shard_map/partial_explicit"] = functools.partial(
    fused_shard_map_check, VOCAB_CHUNK, partial=True
  )
  for kind in ("Explicit", "Auto"):
    checks[f"{kind}/fused_topk"] = functools.partial(fused_topk_check, kind)
  return checks


GROUPS = {
  "gspmd_explicit": lambda: gspmd_checks("Explicit"),
  "gspmd_auto": lambda: gspmd_checks("Auto"),
  "shard_map": spmd_checks,
  "api": api_checks,
  "fused": fused_checks,
}


def main(argv):
  if jax.device_count() != DEVICES:
    raise SystemExit(
      f"needs {DEVICES} devices; got {jax.device_count()} "
      "(set XLA_FLAGS=--xla_force_host_platform_device_count=8)"
    )
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  jax.config.update("jax_numpy_rank_promotion", "raise")
  warnings.simplefilter("ignore", UserWarning)  # kl_div's 'mean' warning
  results = {}
  for group in argv[1:]:
    for name, check in GROUPS[group]().items():
      start = time.perf_counter()
      try:
        results[name] = list(check())
      except Exception:  # pylint: disable=broad-except
        results[name] = [traceback.format_exc()]
      print(f"{time.perf_counter() - start:6.2f} s  {name}", file=sys.stderr)
  print(json.dumps(results))
  return 1 if any(results.values()) else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
