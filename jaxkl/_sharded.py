r"""Explicit SPMD forms (inside ``jax.shard_map``): vocabulary-parallel
divergences from logits and Monte-Carlo KL with the samples split over
devices.

Every jaxkl function is a plain jit-able function, so under ``jax.jit`` with
sharded inputs (``NamedSharding``; GSPMD / Shardy) it runs on many devices
without change; ``tests/test_sharding.py`` checks values, gradients, output
shardings and the compiled collectives on 8 devices. The functions here are
for code written per device with ``jax.shard_map``, where each device sees its
own block of the arrays and collectives are explicit:

* ``vocab_parallel_kl_from_logits``: each device holds a ``[..., V / n]``
  slice of the class axis (a tensor-parallel LM head, as in Megatron-LM's
  ``vocab_parallel_cross_entropy``). The log-softmax normalizers are computed
  from per-row maxima and sums of exponentials combined over the devices
  (``pmax``, ``psum`` of ``[...]``-sized statistics); the logits themselves
  never leave their device.
* ``sharded_monte_carlo_kl``: each device draws its share of the samples with
  its own key, and value and standard error are combined from per-device sums
  (``psum``), exactly as one device would compute them from all the samples.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any
from typing import TypeVar

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _estimators
from jaxkl import _logits
from jaxkl import _monte_carlo

# pylint: disable=protected-access  (jaxkl's own private helpers)

AxisName = Hashable | tuple[Hashable, ...]

#: Estimators combined across devices by ``sharded_monte_carlo_kl``.
SHARDED_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "cv")


def _check_axis_name(axis_name: Any) -> int:
  """Returns the number of devices along ``axis_name`` (inside shard_map)."""
  if axis_name is None or isinstance(axis_name, (list, dict, set)):
    raise TypeError(
      "`axis_name` must be a mesh axis name (e.g. 'model') or a tuple of "
      f"names; got {axis_name!r}."
    )
  try:
    return jax.lax.axis_size(axis_name)
  except NameError:
    raise ValueError(
      f"`axis_name`={axis_name!r} is not a bound mesh axis: call this "
      "function inside `jax.shard_map` over a mesh with that axis (for "
      "sharded arrays under plain `jax.jit`, use the ordinary jaxkl "
      "functions)."
    ) from None


_Tree = TypeVar("_Tree")


def _psum(x: _Tree, axis_name: AxisName) -> _Tree:
  """``jax.lax.psum`` of a pytree of arrays (typed: jax's is not annotated)."""
  out: _Tree = jax.lax.psum(x, axis_name)  # type: ignore[no-untyped-call]  # jax.lax.psum is unannotated
  return out


def _pmax(x: _Tree, axis_name: AxisName) -> _Tree:
  """``jax.lax.pmax`` of a pytree of arrays (typed: jax's is not annotated)."""
  out: _Tree = jax.lax.pmax(x, axis_name)  # type: ignore[no-untyped-call]  # jax.lax.pmax is unannotated
  return out


def _global_log_softmax(
  x: jax.Array, y: jax.Array, inverse_t: jax.Array, axis_name: AxisName
) -> tuple[jax.Array, jax.Array]:
  """Log-softmaxes of ``x / T``, ``y / T``; class axis split over devices.

  Per row: ``m = pmax(max x)`` (without gradient: the result does not depend
  on it), ``log Z = log psum(sum exp((x - m) / T))``; the collectives move
  only per-row statistics.
  """
  local_max = (jnp.max(x, axis=-1, keepdims=True), jnp.max(y, axis=-1, keepdims=True))
  m_x, m_y = _pmax(jax.lax.stop_gradient(local_max), axis_name)
  # -inf logits (padding, possibly a whole device's slice) get zero
  # probability and, through `_scaled`, finite derivatives of every order.
  shifted_x = _logits._scaled(x - m_x, inverse_t)
  shifted_y = _logits._scaled(y - m_y, inverse_t)
  sum_x, sum_y = _psum(
    (
      jnp.sum(jnp.exp(shifted_x), axis=-1, keepdims=True),
      jnp.sum(jnp.exp(shifted_y), axis=-1, keepdims=True),
    ),
    axis_name,
  )
  return shifted_x - jnp.log(sum_x), shifted_y - jnp.log(sum_y)


def vocab_parallel_kl_from_logits(
  logits: ArrayLike,
  target_logits: ArrayLike,
  *,
  axis_name: AxisName,
  divergence: _logits.Divergence = "forward",
  beta: float = 0.5,
  temperature: ArrayLike = 1.0,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Per-example divergence from logits whose class axis is split on devices.

  Call it inside ``jax.shard_map``: each device passes its ``[..., V_d]``
  slice of the student ``logits`` and of the ``target_logits`` (the same
  classes on both), the class axis (last) being split over the mesh axis
  ``axis_name`` (a name or a tuple of names). With
  :math:`z = \text{logits} / T` and :math:`z_d` the slice on device
  :math:`d`, the log-softmax is assembled from per-row statistics:

  .. math::

     m = \max_d \max_{c} z_{d,c}, \qquad
     \log Z = \log \sum_d \sum_c e^{z_{d,c} - m}, \qquad
     \log Q_{d,c} = z_{d,c} - m - \log Z,

  (``lax.pmax`` of the maxima, without gradient since the result does not
  depend on :math:`m`; ``lax.psum`` of the sums), and the divergence
  (see :func:`jaxkl.divergence_from_logits`) is the ``psum`` of the local
  sums, e.g. for ``'forward'``

  .. math::

     D_{\mathrm{KL}}(P_T \,\|\, Q_T) = \sum_d \sum_c P_{d,c}
       (\log P_{d,c} - \log Q_{d,c}).

  Only ``[...]``-sized statistics cross devices (three all-reduces, none of
  the logits' size), and the result equals
  ``jaxkl.divergence_from_logits`` of the full arrays (to float rounding),
  values and gradients (``jax.grad`` through ``shard_map``). Terms with zero
  teacher probability (``-inf`` logits, masked vocabulary) contribute 0.

  For arrays sharded by ``NamedSharding`` under ``jax.jit`` no special
  function is needed: ``jaxkl.kl_divergence_from_logits`` compiles to the
  same collectives.

  Args:
    logits: this device's slice of the student logits, ``[..., V_d]``.
    target_logits: this device's slice of the teacher logits, same shape.
    axis_name: the mesh axis (or tuple of axes) the class axis is split over.
      Static.
    divergence: ``'forward' | 'reverse' | 'jsd'``, as in
      :func:`jaxkl.divergence_from_logits`. Static.
    beta: JSD weight in ``[0, 1]`` (``'jsd'`` only). Static.
    temperature: :math:`T > 0`, a Python number or a 0-d array, checked as
      in :func:`jaxkl.kl_divergence_from_logits` when concrete (a traced
      temperature cannot be checked).
    where: optional boolean mask: of the per-example shape ``[...]`` (masks
      whole examples: they give exactly 0, with zero derivatives, whatever
      their logits hold: ``-inf`` padding, NaN, ``inf``) or broadcastable to
      this device's slice (masks classes; the classes still count in the
      normalizers, as in :func:`jaxkl.kl_divergence_from_logits`, and the
      kept classes' partial sum of the KL divergences can be negative; an
      example none of whose classes is kept on any device gives exactly 0).

  Returns:
    Per-example divergences, shape ``[...]``, the same on every device along
    ``axis_name`` (so ``out_specs`` need not name it); never negative
    without a mask or with a mask of whole examples.

  Raises:
    ValueError: ``axis_name`` is not bound (called outside ``shard_map``), or
      bad ``divergence``, ``beta``, ``temperature``, shapes or mask.
    TypeError: non-floating inputs or a non-boolean mask.

  Examples:
    >>> import functools
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import jaxkl
    >>> mesh = jax.make_mesh((jax.device_count(),), ("model",))
    >>> vocab = P(None, "model")  # classes split over the devices
    >>> kl = jax.jit(jax.shard_map(
    ...     functools.partial(jaxkl.vocab_parallel_kl_from_logits,
    ...                       axis_name="model", temperature=2.0),
    ...     mesh=mesh, in_specs=(vocab, vocab), out_specs=P()))
    >>> student = jnp.array([[0.0, 0.0], [2.0, 0.0]])
    >>> teacher = jnp.zeros((2, 2))
    >>> put = lambda x: jax.device_put(x, NamedSharding(mesh, vocab))
    >>> kl(put(student), put(teacher))  # one device here; the same on many
    Array([0.        , 0.12011445], dtype=float32)
    >>> jaxkl.kl_divergence_from_logits(student, teacher, temperature=2.0)
    Array([0.        , 0.12011445], dtype=float32)

  References:
    M. Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter
    Language Models Using Model Parallelism", arXiv:1909.08053, 2019
    (vocabulary-parallel output layer and cross-entropy).
  """
  divergence, beta = _logits.check_divergence(divergence, beta)
  _check_axis_name(axis_name)
  inputs = _logits._validate_logits(logits, target_logits, temperature, -1, where)
  mask = inputs.mask
  keep = inputs.examples
  if mask is not None and keep is None:
    # A mask within examples drops the examples none of whose classes it
    # keeps on any device.
    local_any = jnp.any(mask, axis=-1).astype(jnp.int32)
    keep = _pmax(local_any, axis_name) > 0
  # Dropped examples may hold anything (all -inf, NaN): replaced by 0 here and
  # set to exactly 0 below (double where: zero derivatives of every order).
  log_q, log_p = _global_log_softmax(
    _logits.zero_dropped_examples(inputs.logits, keep, (inputs.logits.ndim - 1,)),
    _logits.zero_dropped_examples(
      inputs.target_logits, keep, (inputs.logits.ndim - 1,)
    ),
    inputs.inverse_t,
    axis_name,
  )
  local = _logits.class_sums(log_q, log_p, divergence, beta, (log_q.ndim - 1,), mask)
  # As divergence_from_logits: dropped examples exactly 0; clamped at 0
  # (rounding; the derivatives are the unclamped ones) when it is a
  # divergence.
  clamp = _logits.clamps(inputs, divergence)
  result = _logits._finish(_psum(local, axis_name), keep, clamp)
  return result.astype(inputs.out_dtype)


# ----------------------------------------------------------------------------
# Monte Carlo with the samples split over devices.


def _split_check(num_samples: Any, antithetic: bool, devices: int) -> int:
  n = _monte_carlo._validate_num_samples(num_samples, antithetic)
  per_device = 2 * devices if antithetic else devices
  if n % per_device:
    raise ValueError(
      f"`num_samples`={n} must be a multiple of the {devices} devices along "
      f"`axis_name`{' times 2 (antithetic pairs)' if antithetic else ''}, "
      "so that every device draws the same number of samples."
    )
  return n


def sharded_monte_carlo_kl(
  key: jax.Array,
  p: Any = _monte_carlo.REQUIRED,
  q: Any = _monte_carlo.REQUIRED,
  *,
  num_samples: int,
  axis_name: AxisName,
  estimator: str = "k1",
  gradient: _monte_carlo.Gradient = "auto",
  antithetic: bool = False,
  tail_diagnostic: bool = True,
) -> _monte_carlo.KLEstimate:
  r""":func:`jaxkl.monte_carlo_kl` with the samples split over devices.

  Call it inside ``jax.shard_map`` with the same ``key`` on every device
  (``in_specs=P()``). Device :math:`d` of the :math:`D` along ``axis_name``
  draws :math:`n / D` samples with the key
  ``jax.random.fold_in(key, d)`` (:math:`d` = ``lax.axis_index(axis_name)``),
  and the estimate is combined from per-device sums in two passes of
  ``lax.psum`` (the mean, then the centred sum of squares, as one device
  computes them; for ``'cv'`` also the control's mean and cross products):

  .. math::

     \hat D = \frac1n \sum_d \sum_{i \in d} k_i, \qquad
     \mathrm{SE} = \sqrt{\frac{\sum_d \sum_{i \in d} (k_i - \hat D)^2}
       {n (n - 1)}},

  so the result equals ``jaxkl.monte_carlo_kl`` on one device given the
  concatenation of the :math:`D` blocks of samples (to float rounding),
  values and gradients (pathwise, or the score-function surrogate with the
  leave-one-out baseline over all :math:`n` samples). With
  ``antithetic=True`` each device draws its own pairs. There is no
  ``proposal`` (importance sampling) in this form, so
  ``effective_sample_size`` is :math:`n`.

  ``pareto_k`` (see :func:`jaxkl.monte_carlo_kl`) is fitted to the global
  tails: each device takes the :math:`M + 1` largest values of each tail
  it fits (``lax.top_k``), they are gathered (a ``psum`` of
  ``[D, M + 1]``-sized arrays per tail, :math:`M \le 3\sqrt n`), and the
  :math:`M + 1` largest of those are the global ones, so it equals
  ``monte_carlo_kl``'s on the concatenated samples.

  Args:
    key: a ``jax.random`` key, the same on every device:
      ``jax.random.key(seed)`` or a legacy ``jax.random.PRNGKey(seed)``.
    p: the distribution sampled, in any form ``monte_carlo_kl`` accepts.
    q: the second distribution or a log-density callable.
    num_samples: the total :math:`n` over all devices, a Python int, a
      multiple of the number of devices (of twice it with ``antithetic``).
      Static.
    axis_name: the mesh axis (or tuple of axes) the samples are split over.
      Static.
    estimator: ``'k1' | 'k2' | 'k3' | 'cv'``. Static.
    gradient: ``'auto' | 'pathwise' | 'score_function'``. Static.
    antithetic: draw antithetic pairs on each device. Static.
    tail_diagnostic: compute ``pareto_k`` (default); else it is NaN.
      Static.

  Returns:
    A ``jaxkl.KLEstimate`` (``num_samples`` is the total :math:`n`), the same
    on every device along ``axis_name``.

  Raises:
    ValueError: ``axis_name`` is not bound, ``num_samples`` does not split
      evenly, or any error of ``monte_carlo_kl``.
    TypeError: as ``monte_carlo_kl`` (a ``key`` that is not a PRNG key, or
      left out).

  Examples:
    >>> import functools
    >>> import jax
    >>> from jax.sharding import PartitionSpec as P
    >>> import jaxkl
    >>> mesh = jax.make_mesh((jax.device_count(),), ("samples",))
    >>> p = (lambda key, n: jax.random.normal(key, (n,)),  # N(0, 1)
    ...      jax.scipy.stats.norm.logpdf)
    >>> q = lambda x: jax.scipy.stats.norm.logpdf(x, loc=1.0)  # N(1, 1)
    >>> estimate = jax.jit(jax.shard_map(
    ...     functools.partial(jaxkl.sharded_monte_carlo_kl, p=p, q=q,
    ...                       num_samples=8192, axis_name="samples",
    ...                       estimator="k3"),
    ...     mesh=mesh, in_specs=P(), out_specs=P()))
    >>> est = estimate(jax.random.key(0))
    >>> bool(abs(est.value - 0.5) < 4 * est.stderr), est.num_samples
    (True, 8192)
    >>> bool(est.pareto_k < 0.5)
    True
  """
  _monte_carlo.check_key(key, p, q, "sharded_monte_carlo_kl")
  estimator = _estimators.validate_estimator(estimator, SHARDED_ESTIMATORS)
  tail_diagnostic = _checks.check_bool(tail_diagnostic, "tail_diagnostic")
  if not (isinstance(gradient, str) and gradient in _monte_carlo.GRADIENTS):
    raise ValueError(
      "`gradient` must be one of "
      f"{', '.join(map(repr, _monte_carlo.GRADIENTS))}; got {gradient!r}."
    )
  antithetic = _checks.check_bool(antithetic, "antithetic")
  devices = _check_axis_name(axis_name)
  n = _split_check(num_samples, antithetic, devices)
  local_n = n // devices
  form = _monte_carlo._sampling_form(p, "p")
  log_p_fn = _monte_carlo._log_prob_fn(p, "p")
  log_q_fn = _monte_carlo._log_prob_fn(q, "q")
  pathwise = _monte_carlo._resolve_gradient(gradient, form, p, "p")
  local_key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  x = _monte_carlo._draw(
    form, p, "p", local_key, local_n, pathwise=pathwise, antithetic=antithetic
  )
  if gradient == "auto" and _monte_carlo._all_integer(x):
    pathwise = False
  if not pathwise:
    x = jax.tree_util.tree_map(jax.lax.stop_gradient, x)
  log_p = _monte_carlo._check_log_density(log_p_fn(x), "p", local_n)
  log_q = _monte_carlo._check_log_density(log_q_fn(x), "q", local_n)
  try:
    shape = jnp.broadcast_shapes(log_p.shape, log_q.shape)
  except ValueError:
    raise ValueError(
      "the log-densities at the samples have shapes "
      f"{[tuple(log_p.shape), tuple(log_q.shape)]} (p, q), which do not "
      "broadcast together."
    ) from None
  out_dtype, compute_dtype = _checks.result_dtype(log_p, log_q)
  log_p = jnp.broadcast_to(log_p.astype(compute_dtype), shape)
  log_q = jnp.broadcast_to(log_q.astype(compute_dtype), shape)
  groups = 2 if antithetic else 1
  value, stderr = _combine(
    log_q - log_p,
    estimator=estimator,
    axis_name=axis_name,
    total=n,
    groups=groups,
    score_log_prob=None if pathwise else log_p,
  )
  ess = jnp.full(value.shape, n, _checks.at_least_float32(out_dtype))
  if tail_diagnostic:
    khat = _global_pareto_k(
      log_q - log_p,
      estimator,
      axis_name,
      n // groups,
      groups,
      jnp.abs(log_p) + jnp.abs(log_q),
    )
  else:
    khat = jnp.full(value.shape, jnp.nan)
  return _monte_carlo.KLEstimate(
    value=value.astype(out_dtype),
    stderr=stderr.astype(out_dtype),
    effective_sample_size=ess,
    num_samples=n,
    estimator=estimator,
    pareto_k=khat.astype(out_dtype),
  )


def _global_pareto_k(
  log_r: jax.Array,
  estimator: str,
  axis_name: AxisName,
  count: int,
  groups: int,
  log_r_scale: jax.Array,
) -> jax.Array:
  """``pareto_k`` of all devices' terms, from gathered local tails.

  The ``M + 1`` largest values of a union are among the union of each
  part's ``M + 1`` largest: each device contributes ``min(M + 1, G_d)``
  values per tail row (a ``[D, R, ..., M + 1]``-sized gather).
  """
  rows, ties = _estimators.tail_rows(
    log_r, estimator, groups=groups, log_r_scale=log_r_scale
  )
  tail = _estimators.pareto_tail_size(count)
  if tail == 0:
    return jnp.full(rows.shape[1:-1], jnp.nan, rows.dtype)
  local = jax.lax.top_k(rows, min(tail + 1, rows.shape[-1]))[0]
  # A gather written as a psum of one-hot slots: its result is known to be
  # the same on every device (shard_map's out_specs=P() accepts it), and
  # adding zeros leaves every value, inf and NaN included, unchanged.
  devices = jax.lax.axis_size(axis_name)
  slots = jnp.zeros((devices, *local.shape), local.dtype)
  slots = slots.at[jax.lax.axis_index(axis_name)].set(local)
  gathered = _psum(slots, axis_name)  # [D, R, ..., K]
  gathered = jnp.moveaxis(gathered, 0, -2)
  gathered = jnp.reshape(gathered, (*gathered.shape[:-2], -1))
  ties = _pmax(ties, axis_name)
  return _estimators.pareto_k_from_tops(gathered, tail, ties)


def _combine(
  log_r: jax.Array,
  *,
  estimator: str,
  axis_name: AxisName,
  total: int,
  groups: int,
  score_log_prob: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
  """Estimate and standard error from this device's ``log r``, via psum.

  The same arithmetic as ``jaxkl._estimators.estimate_from_log_ratios``
  (equal weights ``1 / G`` over the ``G`` samples, or antithetic pairs), with
  every sum over samples replaced by a local sum and a ``psum``.
  """
  sample_terms = _estimators._log_ratio_terms(log_r, estimator)
  sample_control = jnp.expm1(log_r) if estimator == "cv" else None
  values, control = sample_terms, sample_control
  if groups > 1:  # average the pairs (i, i + n_d / 2) of this device
    half = values.shape[0] // 2
    values = (values[:half] + values[half:]) / 2
    if control is not None:
      control = (control[:half] + control[half:]) / 2
  count = total // groups  # G: independent samples (or pairs) in all
  weight = 1 / count

  def psum_sum(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    return _psum(tuple(jnp.sum(a, axis=0, keepdims=True) for a in arrays), axis_name)

  if control is None:
    (total_values,) = psum_sum(values)
    mean = total_values * weight
    centred = values - mean
    lam = jnp.zeros_like(mean)
    ddof = 1
  else:
    total_values, total_control = psum_sum(values, control)
    mean, control_mean = total_values * weight, total_control * weight
    centred, control_centred = values - mean, control - control_mean
    cross, control_sq = psum_sum(
      centred * control_centred, control_centred * control_centred
    )
    lam = jax.lax.stop_gradient(-_estimators._safe_divide(cross, control_sq))
    mean = mean + lam * control_mean
    centred = centred + lam * control_centred
    ddof = 2
  (sq,) = psum_sum(jax.lax.stop_gradient(centred * centred))
  if count > ddof:
    stderr = jnp.sqrt(sq / (count * (count - ddof)))
  else:
    stderr = jnp.full_like(sq, jnp.nan)
  estimate = mean
  if score_log_prob is not None:
    # DiCE: value + 0, gradient = score-function term with a leave-one-out
    # baseline b_i = (sum_j y_j - y_i) / (G - 1) over all G samples (pairs).
    magic = jnp.exp(score_log_prob - jax.lax.stop_gradient(score_log_prob))
    group_y = values if control is None else values + lam * control
    group_y = jax.lax.stop_gradient(group_y)
    (total_y,) = psum_sum(group_y)
    baseline = (total_y - group_y) / (count - 1)
    if groups > 1:
      baseline = jnp.concatenate([baseline] * groups, axis=0)
    y = sample_terms
    if sample_control is not None:
      y = y + lam * sample_control
    y = jax.lax.stop_gradient(y)
    (surrogate,) = psum_sum((magic - 1) * (y - baseline))
    estimate = estimate + surrogate / total
  return jnp.squeeze(estimate, 0), jnp.squeeze(stderr, 0)
