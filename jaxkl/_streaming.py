r"""Streaming statistics for adaptive Monte Carlo: batches combined exactly.

``jaxkl.monte_carlo_kl(..., atol=, rtol=, max_samples=)`` draws batches of
samples until the standard error is small enough. Each batch is reduced to a
few sums (``Moments``) that are combined with the running ones; the combined
sums give the same estimate and standard error as ``weighted_estimate`` on
all samples at once, up to rounding.

Weighted moments
----------------
The estimators are weighted means :math:`\hat\mu = \sum_i u_i v_i / U` of
values :math:`v_i` (and a control :math:`c_i`) with weights :math:`u_i \ge 0`,
:math:`U = \sum_i u_i` (see ``jaxkl._estimators.sample_values``: :math:`u = 1`
for plain means and unnormalized importance sampling, :math:`u = e^{\log w -
m}` for self-normalized importance sampling), whose delta-method variance is
:math:`\sum_i u_i^2 (y_i - \hat\mu)^2 / U^2`. A set of samples is summarized
by :math:`U`, :math:`B = \sum u_i^2`, the weighted means :math:`\bar x` of
:math:`x \in \{v, c\}`, :math:`D_x = \sum u_i^2 (x_i - \bar x)` and
:math:`S_{xy} = \sum u_i^2 (x_i - \bar x)(y_i - \bar y)`. Two sets combine
exactly: the pooled mean is :math:`\bar x = \bar x_a + (\bar x_b - \bar x_a)
U_b / (U_a + U_b)`, and with :math:`\delta_x = \bar x_s - \bar x` for each
set :math:`s`, its sums move to the pooled mean by

.. math::

   D_x' = D_x + \delta_x B, \qquad
   S_{xy}' = S_{xy} + \delta_x D_y + \delta_y D_x + \delta_x \delta_y B,

after which they add. For :math:`u = 1`, :math:`D = 0` and this is Chan,
Golub & LeVeque's (1979) pairwise update of the sum of squares; the weighted
means follow West (1979). No sum is taken around a mean that is not that of
its own samples, so there is no cancellation of large offsets. Weights
:math:`e^{\log w - m}` of batches with different shifts :math:`m` are first
rescaled to a common shift (``rescale``).

Cross-fitting over batches
--------------------------
``'cv_crossfit'`` fits each term's control-variate coefficient to the
*other* samples. Adaptively, the folds are the batches: batch :math:`b` gets
:math:`\hat\lambda_{-b} = -S_{vc}^{(-b)} / S_{cc}^{(-b)}`, fitted to the
pooled moments of all other batches used (prefix and suffix combinations,
no subtraction), and ``crossfit`` returns the :math:`K`-fold cross-fitted
estimate and its standard error (see ``crossfit``).

References:
  T. F. Chan, G. H. Golub and R. J. LeVeque, "Updating formulae and a
  pairwise algorithm for computing sample variances", Stanford
  STAN-CS-79-773, 1979.
  D. H. D. West, "Updating mean and variance estimates: an improved
  method", Communications of the ACM 22(9), 1979.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxkl import _checks
from jaxkl import _estimators


class Moments(NamedTuple):
  r"""The sums that summarize a weighted set of values (and controls).

  Every field has the batch shape (a leading axis of folds where stacked).

  Attributes:
    weight: :math:`U = \sum u_i`.
    weight_sq: :math:`B = \sum u_i^2`.
    terms: the number of terms (samples, or antithetic pairs).
    mean: :math:`(\bar v,)`, or :math:`(\bar v, \bar c)` with a control.
    dev: :math:`D_x = \sum u_i^2 (x_i - \bar x)`, per entry of ``mean``.
    second: :math:`(S_{vv},)`, or :math:`(S_{vv}, S_{vc}, S_{cc})`.
  """

  weight: jax.Array
  weight_sq: jax.Array
  terms: jax.Array
  mean: tuple[jax.Array, ...]
  dev: tuple[jax.Array, ...]
  second: tuple[jax.Array, ...]


def _pairs(size: int) -> list[tuple[int, int]]:
  """The index pairs of ``Moments.second``: (0, 0) or (0, 0), (0, 1), (1, 1)."""
  return [(i, j) for i in range(size) for j in range(i, size)]


def moments(
  values: jax.Array, weights: jax.Array, control: jax.Array | None = None
) -> Moments:
  """The ``Moments`` of ``values`` (and ``control``), samples on axis 0."""
  xs = (values,) if control is None else (values, control)
  total = jnp.sum(weights, axis=0)
  u2 = weights * weights
  mean = tuple(
    _estimators._safe_divide(jnp.sum(weights * x, axis=0), total) for x in xs
  )
  centred = [x - m[None] for x, m in zip(xs, mean, strict=True)]
  dev = tuple(jnp.sum(u2 * c, axis=0) for c in centred)
  second = tuple(
    jnp.sum(u2 * centred[i] * centred[j], axis=0) for i, j in _pairs(len(xs))
  )
  count = jnp.full(total.shape, values.shape[0], total.dtype)
  return Moments(total, jnp.sum(u2, axis=0), count, mean, dev, second)


def combine(a: Moments, b: Moments) -> Moments:
  """The ``Moments`` of the union of two sets (exact; associative).

  A set of weight 0 (e.g. all zeros, an unused fold) is the identity.
  """
  total = a.weight + b.weight
  share = _estimators._safe_divide(b.weight, total)
  mean = tuple(ma + (mb - ma) * share for ma, mb in zip(a.mean, b.mean, strict=True))
  pairs = _pairs(len(mean))

  def moved(m: Moments) -> tuple[list[jax.Array], list[jax.Array]]:
    d = [own - pooled for own, pooled in zip(m.mean, mean, strict=True)]
    dev = [dx + dd * m.weight_sq for dx, dd in zip(m.dev, d, strict=True)]
    second = [
      s + d[i] * m.dev[j] + d[j] * m.dev[i] + d[i] * d[j] * m.weight_sq
      for (i, j), s in zip(pairs, m.second, strict=True)
    ]
    return dev, second

  dev_a, second_a = moved(a)
  dev_b, second_b = moved(b)
  return Moments(
    total,
    a.weight_sq + b.weight_sq,
    a.terms + b.terms,
    mean,
    tuple(x + y for x, y in zip(dev_a, dev_b, strict=True)),
    tuple(x + y for x, y in zip(second_a, second_b, strict=True)),
  )


def rescale(m: Moments, factor: jax.Array) -> Moments:
  """The ``Moments`` with every weight multiplied by ``factor`` (a new shift)."""
  f2 = factor * factor
  return Moments(
    m.weight * factor,
    m.weight_sq * f2,
    m.terms,
    m.mean,
    tuple(d * f2 for d in m.dev),
    tuple(s * f2 for s in m.second),
  )


def finalize(m: Moments) -> tuple[jax.Array, jax.Array]:
  r"""``(estimate, stderr)`` as ``weighted_estimate`` computes them.

  With a control, :math:`\hat\lambda = -S_{vc} / S_{cc}` and the residual
  sum of squares :math:`S_{vv} + \hat\lambda (2 S_{vc} + \hat\lambda
  S_{cc})` with ``ddof`` 2; without, :math:`S_{vv}` with ``ddof`` 1.
  """
  if len(m.mean) == 1:
    estimate, sq, ddof = m.mean[0], m.second[0], 1
  else:
    vv, vc, cc = m.second
    lam = -_estimators._safe_divide(vc, cc)
    estimate = _estimators.infinite_or(m.mean[0], m.mean[0] + lam * m.mean[1])
    sq, ddof = vv + lam * (2 * vc + lam * cc), 2
  sq = _estimators._safe_divide(jnp.maximum(sq, 0), m.weight * m.weight)
  stderr = _estimators.standard_error(sq, m.terms, ddof)
  # No weight (self-normalized, every weight 0): no information, as one-shot.
  empty = m.weight == 0
  return jnp.where(empty, jnp.nan, estimate), jnp.where(empty, jnp.nan, stderr)


def crossfit(folds: Moments, used: jax.Array) -> tuple[jax.Array, jax.Array]:
  r"""The cross-fitted control-variate estimate over folds, and its error.

  With :math:`K` folds (the batches used; ``used`` masks the others), fold
  :math:`b`'s terms are :math:`y_i = v_i + \hat\lambda_{-b} c_i`, with
  :math:`\hat\lambda_{-b} = -S_{vc}^{(-b)} / S_{cc}^{(-b)}` the least-squares
  coefficient of the pooled moments of the other folds (0 where
  :math:`S_{cc}^{(-b)}` is at the rounding level of
  :math:`\sum u^2 c^2`, as in ``leave_one_out_coefficients``). Then

  .. math::

     \hat D = \frac1U \sum_b U_b \bar y_b, \qquad
     \mathrm{SE}^2 = \frac{G}{G - 1} \frac{1}{U^2} \sum_b \sum_{i \in b}
     u_i^2 (y_i - \hat D)^2 + (\hat D_{\mathrm{cv}} - \hat D)^2,

  with :math:`G` the number of terms and :math:`\hat D_{\mathrm{cv}}` the
  in-sample ``'cv'`` estimate of all folds (the bias-gap term of the
  one-shot ``'cv_crossfit'``). The inner sums come from each fold's moments:
  :math:`\sum_{i \in b} u_i^2 (y_i - \hat D)^2 = S_{vv} + 2\lambda S_{vc} +
  \lambda^2 S_{cc} + 2\delta (D_v + \lambda D_c) + \delta^2 B` with
  :math:`\delta = \bar y_b - \hat D`.

  Args:
    folds: ``Moments`` with a control, fields ``[K, ...]``, all with the same
      weight scale.
    used: boolean ``[K, ...]``, the folds to use.

  Returns:
    ``(estimate, stderr)``, shape ``[...]``.
  """
  masked = jax.tree_util.tree_map(lambda a: jnp.where(used, a, 0), folds)
  empty = jax.tree_util.tree_map(lambda a: jnp.zeros_like(a[:1]), masked)

  def pooled(reverse: bool) -> Moments:
    # Running combinations (a sequential scan: a small program to compile).
    def step(carry: Moments, m: Moments) -> tuple[Moments, Moments]:
      carry = combine(carry, m) if not reverse else combine(m, carry)
      return carry, carry

    start = jax.tree_util.tree_map(lambda a: a[0], empty)
    return jax.lax.scan(step, start, masked, reverse=reverse)[1]

  up, down = pooled(False), pooled(True)
  before = jax.tree_util.tree_map(lambda e, a: jnp.concatenate([e, a[:-1]]), empty, up)
  after = jax.tree_util.tree_map(lambda e, a: jnp.concatenate([a[1:], e]), empty, down)
  others = combine(before, after)
  _, vc, cc = others.second
  eps = _checks.finfo(cc.dtype).eps
  c_bar = others.mean[1]
  ok = cc > 16 * eps * (cc + c_bar * c_bar * others.weight_sq)
  lam = jnp.where(ok, -vc / jnp.where(ok, cc, 1), 0)
  y = masked.mean[0] + lam * masked.mean[1]
  total = jnp.sum(masked.weight, axis=0)
  estimate = _estimators._safe_divide(jnp.sum(masked.weight * y, axis=0), total)
  plain = _estimators._safe_divide(
    jnp.sum(masked.weight * masked.mean[0], axis=0), total
  )
  estimate = _estimators.infinite_or(plain, estimate)
  d = y - estimate
  bvv, bvc, bcc = masked.second
  dv, dc = masked.dev
  sq = bvv + lam * (2 * bvc + lam * bcc) + 2 * d * (dv + lam * dc)
  sq = jnp.maximum(sq + d * d * masked.weight_sq, 0)
  sq = _estimators._safe_divide(jnp.sum(sq, axis=0), total * total)
  stderr = _estimators.standard_error(sq, jnp.sum(masked.terms, axis=0), 1)
  in_sample = finalize(jax.tree_util.tree_map(lambda a: a[-1], up))[0]
  gap = in_sample - estimate
  stderr = jnp.sqrt(stderr * stderr + gap * gap)
  empty = total == 0
  return jnp.where(empty, jnp.nan, estimate), jnp.where(empty, jnp.nan, stderr)


# ----------------------------------------------------------------------------
# The adaptive loop.


#: Fewest effective samples (Kish) at which a weighted estimate may stop.
MIN_EFFECTIVE_SAMPLES = 30

#: Most folds of ``'cv_crossfit'``: beyond, batch ``b`` joins fold ``b % MAX_FOLDS``
#: (memory and work per batch stay bounded however many batches are allowed).
MAX_FOLDS = 64


class Batch(NamedTuple):
  """One batch's summary: moments, weight shift, ESS sums and tail tops."""

  moments: Moments
  shift: jax.Array
  ess: tuple[jax.Array, jax.Array]
  tops: jax.Array | None
  ties: jax.Array | None


class Settings(NamedTuple):
  """The static description of an adaptive estimate."""

  estimator: str
  weighted: bool
  self_normalized: bool
  groups: int
  batch_size: int
  batches: int
  atol: float
  rtol: float
  tail_diagnostic: bool

  @property
  def folds(self) -> int:
    """'cv_crossfit''s number of folds: batch ``b`` joins fold ``b % folds``."""
    return min(self.batches, MAX_FOLDS)

  @property
  def crossfit(self) -> bool:
    return self.estimator == "cv_crossfit"

  @property
  def terms_per_batch(self) -> int:
    return self.batch_size // self.groups

  def tail_sizes(self) -> np.ndarray:
    """PSIS's tail size for ``k`` batches, ``k = 0..batches``."""
    counts = np.arange(self.batches + 1, dtype=np.int64) * self.terms_per_batch
    return _estimators.pareto_tail_sizes(counts).astype(np.int32)

  @property
  def kept(self) -> int:
    """How many of each tail row's largest values are kept (0: no fit)."""
    if not self.tail_diagnostic:
      return 0
    longest = int(self.tail_sizes()[-1])
    return longest + 1 if longest else 0


def summarize(
  log_r: jax.Array,
  log_w: jax.Array | None,
  log_r_scale: jax.Array,
  settings: Settings,
) -> Batch:
  """A batch's ``Batch`` (no gradient), samples on axis 0."""
  log_r, log_r_scale = jax.lax.stop_gradient((log_r, log_r_scale))
  if log_w is not None:
    log_w = jax.lax.stop_gradient(log_w)
  sv, _ = _estimators.sample_values(
    log_r,
    settings.estimator,
    axes=(0,),
    log_weights=log_w,
    self_normalized=settings.self_normalized,
  )
  values, u, control = sv.values, sv.weights, sv.control
  if settings.groups > 1:
    values, u, control, _ = _estimators._pair_up(
      values, u, control, sv.kept, settings.groups
    )
  m = moments(values, u, control)
  zero = jnp.zeros_like(m.weight)
  shift, ess = zero, (zero, zero)
  if sv.scaled is not None and sv.shift is not None:
    shift = sv.shift[0]
    ess = (jnp.sum(sv.scaled, axis=0), jnp.sum(sv.scaled * sv.scaled, axis=0))
  tops = ties = None
  if settings.kept:
    rows, ties = _estimators.tail_rows(
      log_r,
      settings.estimator,
      log_w,
      settings.self_normalized,
      settings.groups,
      log_r_scale,
    )
    tops = jax.lax.top_k(rows, min(settings.kept, rows.shape[-1]))[0]
  return Batch(m, shift, ess, tops, ties)


class State(NamedTuple):
  """The carry of the adaptive loop (see ``run``)."""

  batch: Batch  # the running summary of the batches used
  folds: Moments | None  # 'cv_crossfit': each fold's moments, [F, ...]
  fold_shifts: jax.Array | None  # and their weight shifts (-inf: empty)
  used: jax.Array  # int32: batches used, per entry
  met: jax.Array  # bool: target met, per entry
  stopped: jax.Array  # bool: a batch's estimate was not finite, per entry
  result: tuple[jax.Array, jax.Array]  # that batch's (estimate, stderr)
  next_batch: jax.Array  # int32: the index of the next batch


def _scaled_tops(tops: jax.Array, factor: jax.Array) -> jax.Array:
  """``tops * factor`` per entry, leaving the ``-inf`` padding as it is."""
  return jnp.where(tops == -jnp.inf, tops, tops * factor[None, ..., None])


def _shifted(
  a: Moments, shift_a: jax.Array, b: Moments, shift_b: jax.Array, settings: Settings
) -> tuple[Moments, jax.Array, jax.Array, jax.Array]:
  r"""``(combined, shift, factor_a, factor_b)``: ``a`` and ``b`` at a common shift.

  Self-normalized weights :math:`e^{\log w - m}` of the two sets are
  rescaled to the larger shift :math:`m` first; other weights have no shift.
  """
  shift = jnp.maximum(shift_a, shift_b)
  f_a, f_b = jnp.exp(shift_a - shift), jnp.exp(shift_b - shift)
  if settings.self_normalized:
    a, b = rescale(a, f_a), rescale(b, f_b)
  return combine(a, b), shift, f_a, f_b


def _merge(old: Batch, new: Batch, settings: Settings) -> Batch:
  """The summary of ``old``'s batches and ``new``, at a common shift."""
  if not settings.weighted:
    m = combine(old.moments, new.moments)
    tops = ties = None
    if old.tops is not None and new.tops is not None:
      both = jnp.concatenate([old.tops, new.tops], axis=-1)
      tops = jax.lax.top_k(both, old.tops.shape[-1])[0]
    if old.ties is not None and new.ties is not None:
      ties = jnp.maximum(old.ties, new.ties)
    return Batch(m, old.shift, old.ess, tops, ties)
  m, shift, f_old, f_new = _shifted(
    old.moments, old.shift, new.moments, new.shift, settings
  )
  ess = (
    old.ess[0] * f_old + new.ess[0] * f_new,
    old.ess[1] * (f_old * f_old) + new.ess[1] * (f_new * f_new),
  )
  tops = ties = None
  if old.tops is not None and new.tops is not None:
    both = jnp.concatenate(
      [_scaled_tops(old.tops, f_old), _scaled_tops(new.tops, f_new)], axis=-1
    )
    tops = jax.lax.top_k(both, old.tops.shape[-1])[0]
  if old.ties is not None and new.ties is not None:
    ties = jnp.maximum(old.ties * f_old[None], new.ties * f_new[None])
  return Batch(m, shift, ess, tops, ties)


def _add_to_fold(
  folds: Moments,
  fold_shifts: jax.Array,
  index: jax.Array,
  new: Batch,
  settings: Settings,
) -> tuple[Moments, jax.Array]:
  """``folds`` with batch ``index``'s moments added to fold ``index % F``."""
  fold = index % settings.folds
  old = jax.tree_util.tree_map(lambda a: a[fold], folds)
  m, shift, _, _ = _shifted(old, fold_shifts[fold], new.moments, new.shift, settings)
  folds = jax.tree_util.tree_map(lambda a, b: a.at[fold].set(b), folds, m)
  return folds, fold_shifts.at[fold].set(shift)


def _evaluate(state: State, settings: Settings) -> tuple[jax.Array, jax.Array]:
  """``(estimate, stderr)`` of the batches used so far."""
  if state.folds is None or state.fold_shifts is None:
    return finalize(state.batch.moments)
  used = jnp.arange(settings.folds, dtype=jnp.int32)
  used = jnp.reshape(used, (-1,) + (1,) * state.used.ndim) < state.used[None]
  folds = state.folds
  if settings.self_normalized:
    log_factor = state.fold_shifts - state.batch.shift[None]
    factor = jnp.exp(jnp.where(used, log_factor, -jnp.inf))
    folds = rescale(folds, factor)
  return crossfit(folds, used)


def _met(
  value: jax.Array, stderr: jax.Array, state: State, settings: Settings
) -> jax.Array:
  """The stopping rule ``stderr <= max(atol, rtol |value|)``, per entry."""
  largest = float(_checks.finfo(stderr.dtype).max)
  # Python floats that fit the dtype (1e300 is no tolerance in float32).
  atol, rtol = min(settings.atol, largest), min(settings.rtol, largest)
  tolerance = jnp.maximum(atol, rtol * jnp.abs(value))
  met = (stderr <= tolerance) & jnp.isfinite(value)  # False for NaN
  if settings.weighted:
    # With importance weights, a standard error from a few effective samples
    # says little (one nonzero weight gives 0 +- 0): also require Kish's
    # effective sample size to reach the normal approximation's rule of thumb.
    total, squares = state.batch.ess
    met = met & (total * total >= MIN_EFFECTIVE_SAMPLES * squares) & (total > 0)
  if settings.crossfit:
    met = met & (state.used >= 2)  # one fold has no others to fit to
  return met


def _select(active: jax.Array, new: State, old: State) -> State:
  """``new`` where ``active``, else ``old``, per entry of the batch shape."""

  def pick(a: jax.Array, b: jax.Array) -> jax.Array:
    # Fields are [...], [R, ...] (ties) or [R, ..., L] (tops).
    lead = a.ndim - active.ndim
    if lead == 0:
      mask = active
    elif lead == 1:
      mask = active[None]
    else:
      mask = active[None, ..., None]
    return jnp.where(mask, a, b)

  batch = jax.tree_util.tree_map(pick, new.batch, old.batch)
  return new._replace(batch=batch)


def _check_finite(
  state: State,
  batch: Batch,
  active: jax.Array,
  merged: tuple[jax.Array, jax.Array],
) -> State:
  """Stops the ``active`` entries whose new batch's own estimate is not finite.

  An infinite KL (``log q = -inf`` at a sample of ``p``) gives an infinite
  batch estimate, which merged statistics would turn into NaN (``inf -
  inf``); such an entry stops at once with that batch's own estimate and
  standard error, as the one-shot estimator reports them. The tolerance
  then counts as not met.
  """
  own = finalize(batch.moments)
  keep_own = ~jnp.isfinite(own[0])
  # A batch of weight 0 (self-normalized weights all 0) has no estimate but
  # is no error: it adds nothing, and the loop goes on.
  own_bad = (batch.moments.weight > 0) & keep_own
  merged_bad = (state.batch.moments.weight > 0) & ~jnp.isfinite(merged[0])
  bad = active & (own_bad | merged_bad)
  value, stderr = (
    jnp.where(bad, jnp.where(keep_own, o, m), r)
    for o, m, r in zip(own, merged, state.result, strict=True)
  )
  result = (value, stderr)
  return state._replace(stopped=state.stopped | bad, result=result)


def run(
  draw: Callable[[jax.Array], tuple[jax.Array, jax.Array | None, jax.Array]],
  first: Batch,
  settings: Settings,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """Draws batches until every entry meets its target or ``batches`` are used.

  An entry whose batch estimate is not finite stops there (see
  ``_check_finite``).

  Args:
    draw: ``index -> (log_r, log_w, log_r_scale)`` of batch ``index`` (a
      traced int32), samples on axis 0.
    first: the summary of batch 0.
    settings: the static description.

  Returns:
    ``(value, stderr, effective_sample_size, pareto_k, batches_used,
    target_met)``, of the batch shape; no gradient.
  """
  shape = first.moments.weight.shape
  dtype = first.moments.weight.dtype
  kept = settings.kept
  if kept and first.tops is not None and first.tops.shape[-1] < kept:
    pad = kept - first.tops.shape[-1]
    filler = jnp.full((*first.tops.shape[:-1], pad), -jnp.inf, first.tops.dtype)
    first = first._replace(tops=jnp.concatenate([first.tops, filler], axis=-1))
  folds = fold_shifts = None
  if settings.crossfit:

    def stacked(a: jax.Array, fill: float = 0) -> jax.Array:
      empty = jnp.full((settings.folds, *a.shape), fill, a.dtype)
      return empty.at[0].set(a)

    folds = jax.tree_util.tree_map(stacked, first.moments)
    fold_shifts = stacked(first.shift, -jnp.inf)
  nothing = jnp.zeros(shape, bool)
  state = State(
    first,
    folds,
    fold_shifts,
    jnp.ones(shape, jnp.int32),
    nothing,
    nothing,
    (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)),
    jnp.asarray(1, jnp.int32),
  )
  value, stderr = _evaluate(state, settings)
  state = _check_finite(state, first, ~nothing, (value, stderr))
  state = state._replace(met=~state.stopped & _met(value, stderr, state, settings))

  def cond(s: State) -> jax.Array:
    return (s.next_batch < settings.batches) & jnp.any(~s.met & ~s.stopped)

  def body(s: State) -> State:
    new = summarize(*draw(s.next_batch), settings)
    active = ~s.met & ~s.stopped
    folds, fold_shifts = s.folds, s.fold_shifts
    if s.folds is not None and s.fold_shifts is not None:
      folds, fold_shifts = _add_to_fold(
        s.folds, s.fold_shifts, s.next_batch, new, settings
      )
      # Entries that are done keep their folds as they were.
      folds = jax.tree_util.tree_map(
        lambda a, b: jnp.where(active[None], a, b), folds, s.folds
      )
      fold_shifts = jnp.where(active[None], fold_shifts, s.fold_shifts)
    merged = State(
      _merge(s.batch, new, settings),
      folds,
      fold_shifts,
      s.used + active.astype(jnp.int32),
      s.met,
      s.stopped,
      s.result,
      s.next_batch + 1,
    )
    merged = _select(active, merged, s)
    value, stderr = _evaluate(merged, settings)
    merged = _check_finite(merged, new, active, (value, stderr))
    met = active & ~merged.stopped & _met(value, stderr, merged, settings)
    return merged._replace(met=s.met | met)

  state = jax.lax.while_loop(cond, body, state)
  value, stderr, ess, khat, used, met = _finish(state, settings)
  return value, stderr, ess, khat, used, met


@functools.partial(jax.jit, static_argnames="settings")
def _finish(
  state: State, settings: Settings
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """``run``'s results from the final state (jitted: equal under ``jit``)."""
  value, stderr = _evaluate(state, settings)
  value = jnp.where(state.stopped, state.result[0], value)
  stderr = jnp.where(state.stopped, state.result[1], stderr)
  batch = state.batch
  if settings.weighted:
    ess = _estimators._safe_divide(batch.ess[0] * batch.ess[0], batch.ess[1])
  else:
    ess = (state.used * settings.batch_size).astype(value.dtype)
  if batch.tops is not None:
    tail = jnp.asarray(settings.tail_sizes())[state.used]
    khat = _estimators.pareto_k_from_tops(batch.tops, tail, batch.ties)
    khat = jnp.where(state.stopped, jnp.nan, khat)
  else:
    khat = jnp.full(value.shape, jnp.nan, value.dtype)
  return value, stderr, ess, khat, state.used, state.met
