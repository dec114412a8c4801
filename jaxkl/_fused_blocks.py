"""Blocks of an axis, and the divergence of a token chunk over vocabulary blocks.

Two pieces of the fused linear loss (``jaxkl/_fused_linear.py``):

* ``Blocks``: how an axis of length ``L`` (the tokens, or the vocabulary) is
  cut into ``steps`` blocks of ``size`` for a loop. When a divisor of ``L``
  gives blocks close to the requested size, the blocks are *strided*: block
  ``j`` holds the indices ``k * steps + j`` (a free reshape of the axis into
  ``[size, steps]``, then an index along ``steps``). A contiguous sharding of
  the axis then stays a sharding of every block, so GSPMD runs each block on
  the devices that hold it, with no gather (tokens sharded over data-parallel
  devices, a vocabulary sharded over tensor-parallel ones). Otherwise the
  blocks are contiguous and the last one is the last ``size`` indices,
  overlapping the previous block; ``fresh(j)`` marks its indices that no
  earlier block had (no padding, no copy of the inputs).

* ``vocab_chunk``: the per-token divergences of one chunk of tokens, and their
  gradients, with the logits computed one ``[tokens, vocab block]`` block at
  a time, so that no ``[tokens, V]`` buffer exists. The passes over the
  vocabulary (each computes both models' logit blocks once):

  1. *statistics*: per token, the maximum ``m`` and the log-normalizer
     ``log Z = log sum_j exp((x_j - m) / T)`` of both models by an online
     (streaming) log-sum-exp; for the forward and reverse KL also the
     divergence itself, streamed, which fixes the gradient's normalizer
     terms below;
  2. *value*: the divergence as the sum over blocks of the per-class terms of
     the dense code (``_logits.class_sums`` on the block's log-softmaxes, so
     the zero-mass rule and the edge cases are those of
     ``jaxkl.divergence_from_logits``); for JSD also the derivatives of the
     divergence with respect to both log-normalizers;
  3. *gradient*: per block, the vector-Jacobian product of a surrogate whose
     value is the block's share of the divergence and whose derivatives are
     exactly the divergence's, contracted at once with the weight block
     (``d hidden``) and the hidden states (``d weight``, ``d bias``).

  With gradients, the forward and reverse KL fold the value pass into the
  gradient pass (their normalizer derivatives are ``1`` and ``-(D + 1)``):
  2 passes; JSD needs 3. Without gradients: 2 passes.

* ``topk_*``: the same for a teacher given by its top-k classes and
  log-probabilities. One streaming pass gives the student's maximum,
  log-normalizer, its log-mass on the classes the teacher does not list (the
  block's listed classes, located by ``Blocks.locate``, are scattered into a
  ``[tokens, vocab block]`` mask) and its logits at the listed classes; the
  divergence follows from these ``k + 1`` coarse masses with no further pass
  (``_topk.divergence_from_coarse``), and the gradient takes one more pass
  (``topk_block_gradient``, in closed form).

* ``hard_*``: the cross-entropy with the labels (the hard loss of the
  distillation conventions), streamed along the first pass of either.

The normalizer terms. With ``log q_j = (s_j - m) / T - log Z`` and ``D`` a sum
over classes of terms of ``log q`` (and of the teacher's ``log p``),

  dD/ds_j = (dD/ds_j at fixed log Z) + g q_j / T,   g = dD/d(log Z),

and ``g`` is a per-token number: ``1`` for the forward KL's student,
``-(D + 1)`` for its teacher (and the reverse KL's student), obtained by a
``jax.vjp`` in the value pass for JSD. The surrogate of a block is
``D_block + g (M_block - stop_gradient(M_block))`` with ``M_block = sum_j q_j``
over the block (at fixed ``log Z``): its value is ``D_block``, and its
derivatives in the logits and the temperature are those of ``D``. Everything
here is plain differentiable JAX (no custom rule), so the fused loss's
backward pass can itself be differentiated (Hessian-vector products).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from jaxkl import _logits
from jaxkl import _topk


class Blocks(NamedTuple):
  """A loop's cut of an axis of ``length`` into ``steps`` blocks of ``size``."""

  length: int
  size: int
  steps: int
  strided: bool

  @classmethod
  def make(cls, length: int, target: int) -> Blocks:
    """Blocks of at most ``target`` (at least half of it when strided)."""
    if length == 0:
      return cls(0, 1, 0, False)  # no blocks: the loop does not run
    if target >= length:
      return cls(length, length, 1, False)
    steps = -(-length // target)
    for divisor in range(steps, min(2 * steps, length) + 1):
      if length % divisor == 0:
        return cls(length, length // divisor, divisor, True)
    return cls(length, target, steps, False)

  @property
  def overlaps(self) -> bool:
    """Whether the last (contiguous) block overlaps the previous one."""
    return not self.strided and self.length % self.size != 0

  def start(self, j: jax.Array) -> jax.Array:
    """First index of contiguous block ``j``."""
    return jnp.minimum(j * self.size, self.length - self.size)

  def fresh(self, j: jax.Array) -> jax.Array | None:
    """``[size]`` booleans: the indices no earlier block had (None: all)."""
    if not self.overlaps:
      return None
    return self.start(j) + jnp.arange(self.size) >= j * self.size

  def locate(self, indices: jax.Array, j: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Which of ``indices`` are fresh classes of block ``j``, and where.

    Returns ``(inside, position in the block)`` (positions of indices not
    inside are meaningless); indices outside ``[0, length)`` are in no block.
    """
    in_range = (indices >= 0) & (indices < self.length)
    if self.steps == 1:
      return in_range, indices
    if self.strided:
      return in_range & (indices % self.steps == j), indices // self.steps
    start = self.start(j)
    inside = in_range & (indices >= j * self.size) & (indices < start + self.size)
    return inside, indices - start

  def _split(self, x: jax.Array, axis: int) -> jax.Array:
    shape = (*x.shape[:axis], self.size, self.steps, *x.shape[axis + 1 :])
    return jnp.reshape(x, shape)

  def take(self, x: jax.Array, j: jax.Array, axis: int) -> jax.Array:
    """Block ``j`` of ``x`` along ``axis``: ``size`` entries."""
    if self.steps == 1:
      return x
    if self.strided:
      block: jax.Array = lax.dynamic_index_in_dim(
        self._split(x, axis), j, axis + 1, keepdims=False
      )
      return block
    return lax.dynamic_slice_in_dim(x, self.start(j), self.size, axis)

  def put(
    self, buffer: jax.Array, block: jax.Array, j: jax.Array, axis: int
  ) -> jax.Array:
    """``buffer`` with block ``j`` along ``axis`` set to ``block``.

    Entries of an overlapping last block that are not fresh keep their
    earlier values.
    """
    block = block.astype(buffer.dtype)
    if self.steps == 1:
      return block
    if self.strided:
      split = lax.dynamic_update_index_in_dim(
        self._split(buffer, axis), block, j, axis + 1
      )
      return jnp.reshape(split, buffer.shape)
    start = self.start(j)
    fresh = self.fresh(j)
    if fresh is not None:
      old = lax.dynamic_slice_in_dim(buffer, start, self.size, axis)
      shape = [1] * block.ndim
      shape[axis] = self.size
      block = jnp.where(jnp.reshape(fresh, shape), block, old)
    return lax.dynamic_update_slice_in_dim(buffer, block, start, axis)

  def add(
    self, buffer: jax.Array, block: jax.Array, j: jax.Array, axis: int
  ) -> jax.Array:
    """``buffer`` with ``block`` added to block ``j`` (non-fresh: unchanged)."""
    old = self.take(buffer, j, axis)
    return self.put(buffer, old + block.astype(buffer.dtype), j, axis)


# ----------------------------------------------------------------------------
# One token chunk over vocabulary blocks.


class RowStats(NamedTuple):
  """Per-token statistics of a chunk, each ``[c]`` in the compute dtype.

  ``m_*`` (no derivative) and ``log_z_*`` as in ``_logits``: the
  log-softmax is ``(x - m) / T - log_z``. ``g_*`` are the derivatives of the
  divergence with respect to ``log_z_*`` (zeros when not needed).
  """

  m_s: jax.Array
  log_z_s: jax.Array
  m_t: jax.Array
  log_z_t: jax.Array
  g_s: jax.Array
  g_t: jax.Array
  # The hard loss's (``HardStream``; zeros without it).
  hard_m: jax.Array
  hard_log_z: jax.Array
  hard_label: jax.Array


# (student logits [c, b], teacher logits [c, b], fresh classes [b] or None)
LogitBlock = tuple[jax.Array, jax.Array, "jax.Array | None"]
LogitsFn = Callable[[jax.Array], LogitBlock]


def _excluded(x: jax.Array, fresh: jax.Array | None) -> jax.Array:
  """Classes that are not fresh (an overlapping block's repeats) to -inf."""
  if fresh is None:
    return x
  return jnp.where(fresh[None, :], x, -jnp.inf)


def _online_log_sum_exp(
  m: jax.Array, total: jax.Array, x: jax.Array, inverse_t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Adds block ``x`` ``[c, b]`` to a running ``(m, sum exp((x - m) / T))``.

  Returns the new ``(m, total)`` and the factor ``exp((m_old - m_new) / T)``
  that rescaled the old total (for other running sums weighted the same
  way). Rows whose entries are all -inf so far keep ``m = -inf`` and a total
  of 0, with no NaN (the shift is then taken as 0).
  """
  new_m = lax.stop_gradient(jnp.maximum(m, jnp.max(x, axis=1)))
  shift = jnp.where(jnp.isfinite(new_m), new_m, 0)
  factor = jnp.exp(_logits._scaled(m - shift, inverse_t))
  terms = jnp.exp(_logits._scaled(x - shift[:, None], inverse_t))
  return new_m, total * factor + jnp.sum(terms, axis=1), factor


def _log_softmaxes(
  s: jax.Array, t: jax.Array, stats: RowStats, inverse_t: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The block's ``(log q, log p)`` from the row statistics."""
  log_q = _logits._scaled(s - stats.m_s[:, None], inverse_t) - stats.log_z_s[:, None]
  log_p = _logits._scaled(t - stats.m_t[:, None], inverse_t) - stats.log_z_t[:, None]
  return log_q, log_p


def streamed(divergence: str, needs_teacher: bool, needs_student: bool) -> bool:
  """Whether the statistics pass streams the divergence (for its ``g``)."""
  if divergence == "forward":
    return needs_teacher
  if divergence == "reverse":
    return needs_student
  return False


def statistics(
  logits: LogitsFn,
  steps: int,
  rows: int,
  inverse_t: jax.Array,
  divergence: str,
  stream: bool,
  like: jax.Array,
  hard: HardStream | None = None,
  vocab: Blocks | None = None,
) -> tuple[RowStats, jax.Array | None]:
  """Pass 1: ``(row statistics, streamed divergence or None)``.

  The streamed divergence is the forward (or reverse) KL written as
  ``E_x[(x - y) / T] - (log-normalizer of x) + (of y)``, x the teacher (the
  student), the expectation streamed with x's running maximum.
  """
  dtype = like.dtype
  minus_inf = jnp.full((rows,), -jnp.inf, dtype) + jnp.zeros_like(like)
  zero = jnp.zeros((rows,), dtype) + jnp.zeros_like(like)

  def body(j: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    m_s, z_s, m_t, z_t, e, *extra = carry
    s, t, fresh = logits(j)
    s, t = _excluded(s, fresh), _excluded(t, fresh)
    if hard is not None:
      assert vocab is not None
      extra = list(_hard_update(tuple(extra), s, vocab, j, hard))
    m_s, z_s, f_s = _online_log_sum_exp(m_s, z_s, s, inverse_t)
    m_t, z_t, f_t = _online_log_sum_exp(m_t, z_t, t, inverse_t)
    if stream:
      x, y, m, f = (t, s, m_t, f_t) if divergence == "forward" else (s, t, m_s, f_s)
      shift = jnp.where(jnp.isfinite(m), m, 0)[:, None]
      weights = jnp.exp(_logits._scaled(x - shift, inverse_t))
      difference = _logits._scaled(x, inverse_t) - _logits._scaled(y, inverse_t)
      e = e * f + jnp.sum(_logits._zero_safe_product(weights, difference), axis=1)
    return m_s, z_s, m_t, z_t, e, *extra

  init: tuple[jax.Array, ...] = (minus_inf, zero, minus_inf, zero, zero)
  if hard is not None:
    init = (*init, minus_inf, zero, minus_inf)
  m_s, z_s, m_t, z_t, e, *extra = lax.fori_loop(0, steps, body, init)
  log_z_s, log_z_t = jnp.log(z_s), jnp.log(z_t)
  hard_stats = _hard_finish(tuple(extra), zero)
  stats = RowStats(m_s, log_z_s, m_t, log_z_t, zero, zero, *hard_stats)
  if not stream:
    return stats, None
  # log-normalizers of x / T: m / T + log Z (m finite for valid rows).
  lse_s = _logits._scaled(m_s, inverse_t) + log_z_s
  lse_t = _logits._scaled(m_t, inverse_t) + log_z_t
  if divergence == "forward":
    return stats, e / z_t - lse_t + lse_s
  return stats, e / z_s - lse_s + lse_t


def _block_sums(
  s: jax.Array,
  t: jax.Array,
  fresh: jax.Array | None,
  stats: RowStats,
  inverse_t: jax.Array,
  divergence: str,
  beta: float,
) -> jax.Array:
  """The block's part of the per-token divergence, ``[c]``."""
  log_q, log_p = _log_softmaxes(s, t, stats, inverse_t)
  mask = None if fresh is None else fresh[None, :]
  return _logits.class_sums(log_q, log_p, divergence, beta, (1,), mask)


def values(
  logits: LogitsFn,
  steps: int,
  stats: RowStats,
  inverse_t: jax.Array,
  divergence: str,
  beta: float,
  normalizer_derivatives: bool,
) -> tuple[jax.Array, RowStats]:
  """Pass 2: the per-token divergence ``[c]`` (not clamped, not masked).

  With ``normalizer_derivatives``, also ``g_s, g_t`` (the derivatives of the
  divergence with respect to ``log_z_s, log_z_t``) into the returned stats.
  """
  zero = jnp.zeros_like(stats.log_z_s)

  def body(
    j: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    total, g_s, g_t = carry
    s, t, fresh = logits(j)

    def part(log_z_s: jax.Array, log_z_t: jax.Array) -> jax.Array:
      these = stats._replace(log_z_s=log_z_s, log_z_t=log_z_t)
      return _block_sums(s, t, fresh, these, inverse_t, divergence, beta)

    if not normalizer_derivatives:
      return total + part(stats.log_z_s, stats.log_z_t), g_s, g_t
    value, vjp = jax.vjp(part, stats.log_z_s, stats.log_z_t)
    d_s, d_t = vjp(jnp.ones_like(value))
    return total + value, g_s + d_s, g_t + d_t

  total, g_s, g_t = lax.fori_loop(0, steps, body, (zero, zero, zero))
  if normalizer_derivatives:
    stats = stats._replace(g_s=g_s, g_t=g_t)
  return total, stats


def closed_form_derivatives(
  stats: RowStats, divergence: str, streamed: jax.Array | None
) -> RowStats:
  """``g_s, g_t`` of the forward and reverse KL from the streamed divergence.

  Forward KL: ``dD/d log Z_s = sum p = 1``, ``dD/d log Z_t = -(D + 1)``;
  reverse: the same with the roles swapped. A ``g`` whose ``D`` was not
  streamed is not needed (its model is not differentiated).
  """
  one = jnp.ones_like(stats.log_z_s)
  other = stats.g_s if streamed is None else -(streamed + 1)
  if divergence == "forward":
    return stats._replace(g_s=one, g_t=other)
  return stats._replace(g_s=other, g_t=one)


class BlockGrads(NamedTuple):
  """One vocabulary block's cotangents and the loss part (``T^2 D_block``)."""

  losses: jax.Array  # [c]
  d_student: jax.Array  # [c, b], d loss / d student logits (weighted)
  d_teacher: jax.Array  # [c, b]
  d_temperature: jax.Array  # scalar


def block_gradients(
  block: LogitBlock,
  stats: RowStats,
  temperature: jax.Array,
  weights: jax.Array,
  divergence: str,
  beta: float,
) -> BlockGrads:
  """Pass 3 for one block: the vjp of ``T^2`` times the block's surrogate."""
  s, t, fresh = block

  def mass(log_x: jax.Array) -> jax.Array:
    probabilities = jnp.exp(log_x)
    if fresh is not None:
      probabilities = jnp.where(fresh[None, :], probabilities, 0)
    total = jnp.sum(probabilities, axis=1)
    return total - lax.stop_gradient(total)

  def surrogate(s: jax.Array, t: jax.Array, temperature: jax.Array) -> jax.Array:
    inverse_t = 1 / temperature
    log_q, log_p = _log_softmaxes(s, t, stats, inverse_t)
    mask = None if fresh is None else fresh[None, :]
    value = _logits.class_sums(log_q, log_p, divergence, beta, (1,), mask)
    value = value + stats.g_s * mass(log_q) + stats.g_t * mass(log_p)
    return value * jnp.square(temperature)

  losses, vjp = jax.vjp(surrogate, s, t, temperature)
  d_student, d_teacher, d_temperature = vjp(weights.astype(losses.dtype))
  return BlockGrads(losses, d_student, d_teacher, d_temperature)


# ----------------------------------------------------------------------------
# One token chunk of the top-k loss over vocabulary blocks.


class TopKStats(NamedTuple):
  """A chunk's student statistics for a top-k teacher, in the compute dtype.

  With ``z = s / T`` and ``m`` the row's largest logit, every log-mass is
  relative to ``m / T`` (full precision for large logits): ``log_z`` is
  ``log sum_v exp(z_v - m / T)`` over all classes, ``log_rest`` the same sum
  over the classes the teacher does not list, ``listed`` ``[c, k]`` the
  listed classes' ``z_v - m / T`` (-inf for unused slots and out-of-range
  indices).
  """

  m: jax.Array
  log_z: jax.Array
  log_rest: jax.Array
  listed: jax.Array
  hard_m: jax.Array  # the hard loss's, as in RowStats
  hard_log_z: jax.Array
  hard_label: jax.Array


# (student logits [c, b], fresh classes [b] or None)
StudentBlockFn = Callable[[jax.Array], tuple[jax.Array, "jax.Array | None"]]


def _scatter_rows(
  like: jax.Array, values: jax.Array, inside: jax.Array, pos: jax.Array, fill: float
) -> jax.Array:
  """``[c, b]`` like ``like``, ``fill`` but ``values[r, i]`` at ``pos[r, i]``.

  Entries not ``inside`` the block are dropped; a row's positions are
  distinct (valid teacher indices are).
  """
  target = jnp.where(inside, pos, like.shape[1])  # out of bounds: dropped
  base = jnp.full_like(like, fill, values.dtype)
  return _topk._rows_scatter(base, target, values, add=False)


def topk_statistics(
  logits: StudentBlockFn,
  vocab: Blocks,
  indices: jax.Array,
  valid: jax.Array,
  inverse_t: jax.Array,
  hard: HardStream | None = None,
) -> TopKStats:
  """The one pass of the top-k values: ``TopKStats`` by online log-sum-exps.

  Per block: the listed classes that fall in it (``Blocks.locate``) are
  scattered into a ``[c, b]`` mask, which excludes them from the running
  sum of the unlisted mass, and their logits are gathered.
  """
  rows, k = indices.shape
  like = jnp.zeros_like(indices[:, 0], inverse_t.dtype)
  minus_inf = like - jnp.inf
  listed = jnp.zeros_like(indices, like.dtype) - jnp.inf
  init: tuple[jax.Array, ...] = (minus_inf, like, minus_inf, like, listed)
  if hard is not None:
    init = (*init, minus_inf, like, minus_inf)

  def body(j: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    m, z, m_r, z_r, listed, *extra = carry
    s, fresh = logits(j)
    s = _excluded(s, fresh)
    if hard is not None:
      extra = list(_hard_update(tuple(extra), s, vocab, j, hard))
    inside, pos = vocab.locate(indices, j)
    inside = inside & valid
    is_listed = _scatter_rows(s, jnp.ones_like(valid), inside, pos, False)
    m, z, _ = _online_log_sum_exp(m, z, s, inverse_t)
    rest = jnp.where(is_listed, -jnp.inf, s)
    m_r, z_r, _ = _online_log_sum_exp(m_r, z_r, rest, inverse_t)
    gathered = jnp.take_along_axis(s, jnp.clip(pos, 0, s.shape[1] - 1), axis=1)
    listed = jnp.where(inside, gathered, listed)
    return m, z, m_r, z_r, listed, *extra

  del rows, k
  m, z, m_r, z_r, listed, *extra = lax.fori_loop(0, vocab.steps, body, init)
  shift = jnp.where(jnp.isfinite(m), m, 0)
  log_rest = _logits._scaled(m_r - shift, inverse_t) + jnp.log(z_r)
  listed = _logits._scaled(listed - shift[:, None], inverse_t)
  hard_stats = _hard_finish(tuple(extra), like)
  return TopKStats(m, jnp.log(z), log_rest, listed, *hard_stats)


class Coarse(NamedTuple):
  """The coarse divergence of a chunk and its (linear) vjp.

  ``vjp`` maps per-row cotangents ``[c]`` to the derivatives with respect to
  the student's listed log-masses ``[c, k]`` (0 at unused slots), its
  unlisted log-mass ``[c]`` and the teacher's log-probabilities ``[c, k]``.
  """

  value: jax.Array
  vjp: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


def topk_coarse(
  stats: TopKStats,
  log_probs: jax.Array,
  divergence: str,
  beta: float,
  tail: str,
  eps_dtype: DTypeLike,
) -> Coarse:
  """The divergence from the coarse masses (no pass over the vocabulary).

  As ``_topk``'s per-row code: the teacher's rest from its log-probabilities,
  a teacher rest within ``rest_tolerance`` (of ``eps_dtype``, the dtype the
  log-probabilities came in) taken as 0 where the student has no rest.
  """
  valid = log_probs != -jnp.inf  # NaN counts as used, as in _topk
  log_q_listed = stats.listed - stats.log_z[:, None]
  log_q_rest = stats.log_rest - stats.log_z
  atol = _topk.rest_tolerance(log_probs, eps_dtype)

  def divergence_of(
    log_q_listed: jax.Array, log_q_rest: jax.Array, log_probs: jax.Array
  ) -> jax.Array:
    if tail == "bucket":
      log_p_rest = _topk.teacher_rest_log_mass(log_probs)
    else:
      log_p_rest = jnp.zeros_like(log_q_rest)
    return _topk.divergence_from_coarse(
      log_q_listed,
      log_q_rest,
      log_probs,
      log_p_rest,
      divergence=divergence,
      beta=beta,
      tail=tail,
      p_rest_atol=atol,
    )

  value, vjp = jax.vjp(divergence_of, log_q_listed, log_q_rest, log_probs)

  def derivatives(g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    d_listed, d_rest, d_log_probs = vjp(g.astype(value.dtype))
    zero = jnp.zeros((), d_listed.dtype)
    return jnp.where(valid, d_listed, zero), d_rest, d_log_probs

  return Coarse(value, derivatives)


def topk_block_gradient(
  block: tuple[jax.Array, jax.Array | None],
  vocab: Blocks,
  j: jax.Array,
  indices: jax.Array,
  valid: jax.Array,
  stats: TopKStats,
  d_listed: jax.Array,
  d_rest: jax.Array,
  inverse_t: jax.Array,
) -> jax.Array:
  """The gradient with respect to block ``j`` of ``z = s / T``, ``[c, b]``.

  With ``a_c`` the derivatives with respect to the coarse log-masses
  ``log Q_c`` (``d_listed``, ``d_rest``, already weighted) and
  ``A = sum_c a_c``,

    dD/dz_v = a_{c(v)} q_v / Q_{c(v)} - q_v A,

  where ``q_v / Q_c`` is 1 for a listed class and ``exp(z_v - log R)`` for
  an unlisted one (0 when the unlisted mass ``R`` is 0).
  """
  s, fresh = block
  shift = jnp.where(jnp.isfinite(stats.m), stats.m, 0)
  z = _logits._scaled(_excluded(s, fresh) - shift[:, None], inverse_t)
  inside, pos = vocab.locate(indices, j)
  inside = inside & valid
  is_listed = _scatter_rows(s, jnp.ones_like(valid), inside, pos, False)
  a_listed = _scatter_rows(s, d_listed, inside, pos, 0.0)
  total = jnp.sum(d_listed, axis=1) + d_rest
  q = jnp.exp(z - stats.log_z[:, None])
  log_rest = jnp.where(stats.log_rest > -jnp.inf, stats.log_rest, 0)
  rest_share = jnp.exp(z - log_rest[:, None])
  d_z = jnp.where(is_listed, a_listed, d_rest[:, None] * rest_share)
  return d_z - q * total[:, None]


# ----------------------------------------------------------------------------
# The hard loss (cross-entropy with the labels at temperature 1) streamed
# along the statistics pass of either loss: the passes see the student's
# view ``z = s' / T_s`` (``s'`` the transformed logits), so the
# cross-entropy's log-normalizer is an online log-sum-exp of ``z`` at
# "inverse temperature" ``T_s``, in the same pass.


class HardStream(NamedTuple):
  """What the statistics pass needs for the hard loss."""

  labels: jax.Array  # [c], in [0, V) (others: +inf cross-entropy)
  temperature: jax.Array  # T_s: the pass's student blocks are s' / T_s


def _hard_update(
  carry: tuple[jax.Array, ...],
  z: jax.Array,
  vocab: Blocks,
  j: jax.Array,
  hard: HardStream,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Adds block ``j`` of ``z`` (non-fresh classes -inf) to ``(m, sum, z_y)``."""
  m, total, label = carry
  m, total, _ = _online_log_sum_exp(m, total, z, hard.temperature)
  inside, pos = vocab.locate(hard.labels[:, None], j)
  got = jnp.take_along_axis(z, jnp.clip(pos, 0, z.shape[1] - 1), axis=1)
  return m, total, jnp.where(inside[:, 0], got[:, 0], label)


def _hard_finish(
  carry: tuple[jax.Array, ...], zero: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(hard_m, hard_log_z, hard_label)``; zeros without a hard stream."""
  if not carry:
    return zero, zero, zero
  m, total, label = carry
  return m, jnp.log(total), label


def hard_losses(stats: RowStats | TopKStats, temperature: jax.Array) -> jax.Array:
  """Per-row ``log sum_v exp(s'_v) - s'_y`` from the streamed statistics.

  With ``s' = T_s z``: ``T_s (m - z_y) + log sum exp(T_s (z - m))``;
  ``+inf`` for a label outside ``[0, V)`` (its ``z_y`` stays ``-inf``).
  """
  return temperature * (stats.hard_m - stats.hard_label) + stats.hard_log_z


def hard_block_gradient(
  s: jax.Array,
  fresh: jax.Array | None,
  vocab: Blocks,
  j: jax.Array,
  labels: jax.Array,
  stats: RowStats | TopKStats,
  temperature: jax.Array,
  weights: jax.Array,
) -> jax.Array:
  """``weights * (softmax(s') - onehot(label))`` on block ``j`` of ``s'``."""
  log_z = temperature * stats.hard_m + stats.hard_log_z
  p = jnp.exp(_excluded(s, fresh) - log_z[:, None])
  inside, pos = vocab.locate(labels[:, None], j)
  is_label = _scatter_rows(s, jnp.ones_like(inside), inside, pos, False)
  return weights[:, None] * (p - is_label.astype(p.dtype))


def default_sizes(
  tokens: int,
  vocab: int,
  itemsize: int,
  all_tokens: bool = False,
) -> tuple[int, int | None]:
  """The automatic ``(chunk_size, vocab_chunk)`` (see the public docstring).

  A budget of ``BLOCK_BYTES`` per ``[chunk, block]`` buffer of the compute
  dtype (``itemsize`` bytes): all tokens at once when ``tokens * vocab``
  fits; else chunks of tokens over the whole vocabulary when they can have at
  least ``MIN_ROWS`` rows; else vocabulary blocks, with ``ROWS`` tokens (or
  all) per chunk. ``all_tokens`` (tokens sharded over devices): one chunk of
  all tokens, with vocabulary blocks when they do not fit. The same rule on
  every backend (on CPU, chunks of 32-64 rows over a 131072-class
  vocabulary measured slower than vocabulary blocks).
  """
  budget = BLOCK_BYTES // itemsize
  if tokens * vocab <= budget:
    return tokens, None
  if all_tokens:
    return tokens, max(1, budget // tokens)
  if vocab * MIN_ROWS <= budget:
    return max(MIN_ROWS, budget // vocab), None
  rows = min(tokens, ROWS)
  return rows, max(1, budget // rows)


BLOCK_BYTES = 2**25  # 32 MiB: 8M float32 entries per [chunk, block] buffer
MIN_ROWS = 256
ROWS = 1024
