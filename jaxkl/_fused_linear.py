"""Distillation loss fused with the output projections, chunked over tokens
and over the vocabulary.

In LLM distillation the logits are ``hidden @ weight`` with a vocabulary of up
to ~256k entries: for N tokens, the student and teacher logits, their softmaxes
and the gradient of the loss with respect to the logits are several
``[N, V]`` buffers, which dominate the memory of a training step. This module
computes the same loss as ``jaxkl.distillation_loss(student_hidden @
student_weight + student_bias, teacher_hidden @ teacher_weight +
teacher_bias, ...)`` a block of tokens at a time, and optionally a block of
the vocabulary at a time, so that the largest buffer is one
``[chunk_size, V]`` or ``[chunk_size, vocab_chunk]`` block, in the forward
pass and in the backward pass.

Design (see ``benchmarks/bench_fused_linear.py`` for the measurements):

* A ``jax.custom_vjp`` around a loop over token chunks (``_loop``; the cut of
  the token axis is a ``_fused_blocks.Blocks``). Without vocabulary blocks
  (``_dense_chunk``), each iteration computes the two ``[chunk, V]`` logit
  blocks with float32 accumulation, the per-token losses with the same
  per-row code as ``jaxkl.divergence_from_logits`` and, when differentiating,
  the gradient of the chunk's losses with respect to its logits (``jax.vjp``
  of that per-row code), which is immediately contracted with the weights
  (``d hidden``) and with the hidden states (``d weight``, accumulated in
  float32). With vocabulary blocks (``_vocab_chunk``), each token chunk runs
  the passes of ``_fused_blocks``: an online log-sum-exp, then the values,
  then the gradients, one ``[chunk, vocab_chunk]`` block of logits at a time.
* Scalar reductions (``'mean' | 'sum' | 'batchmean'``) are linear in the
  per-token losses, so the per-token weight of each loss (the gradient of
  ``jaxkl.reduce_loss``) is known before the loop: the forward pass of
  ``jax.grad`` computes the gradients in the same loop as the loss and the
  backward pass only multiplies them by the incoming cotangent. ``'none'``
  returns per-token losses whose cotangent is only known in the backward
  pass, which therefore computes the gradients in a second loop (from the
  saved per-token statistics, with vocabulary blocks; by recomputing each
  chunk, without).
* Only the inputs that are being differentiated get gradients computed (the
  ``perturbed`` flags of ``custom_vjp``'s symbolic zeros): a frozen teacher
  costs nothing, while a teacher (or temperature) that *is* differentiated gets
  its exact gradient.
* Many devices: the blocks are strided where a divisor allows, so a
  contiguous sharding of the tokens or of the vocabulary stays a sharding of
  every block (no gather under GSPMD); inputs on ``Explicit`` mesh axes run
  under ``jax.sharding.auto_axes``; inside ``shard_map`` every operand is
  typed as varying over the same manual axes, so ``check_vma=True`` holds and
  the gradients of replicated operands are summed by JAX's own transpose of
  that cast.

The chunking idea is the one of Liger-Kernel's fused linear losses (Hsu et al.,
"Liger Kernel: Efficient Triton Kernels for LLM Training", arXiv:2410.10989,
2024) and the online log-sum-exp the one of Milakov & Gimelshein ("Online
normalizer calculation for softmax", arXiv:1805.02867, 2018); the code here is
written from the formulas.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal
from jax.custom_derivatives import SymbolicZero
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from jaxkl import _checks
from jaxkl import _conventions
from jaxkl import _fused_blocks
from jaxkl import _logits
from jaxkl import _reduction
from jaxkl import _topk
from jaxkl._conventions import Conventions
from jaxkl._fused_blocks import Blocks
from jaxkl._fused_blocks import RowStats
from jaxkl._fused_blocks import TopKStats


class _Config(NamedTuple):
  """Static options of the fused loss (hashable: a ``nondiff_argnums``)."""

  divergence: _logits.Divergence
  beta: float
  reduction: str
  tokens: Blocks
  vocab: Blocks | None  # None: each chunk's logits over the whole vocabulary
  tail: str | None = None  # None: a teacher head; else a top-k teacher's tail
  conventions: Conventions = Conventions()
  shared: bool = True  # one temperature for both models (no teacher_temperature)

  @property
  def plain(self) -> bool:
    """Today's conventions (one temperature, T^2, no transform, no hard loss)."""
    return self.shared and self.conventions == Conventions()


class _Needs(NamedTuple):
  """Which gradients the loop computes (static), in the operands' order."""

  student_hidden: bool = False
  student_weight: bool = False
  student_bias: bool = False
  teacher_hidden: bool = False
  teacher_weight: bool = False
  teacher_bias: bool = False
  temperature: bool = False
  teacher_temperature: bool = False

  def any(self) -> bool:
    return any(self)

  def student(self) -> bool:
    return self.student_hidden or self.student_weight or self.student_bias

  def teacher(self) -> bool:
    return self.teacher_hidden or self.teacher_weight or self.teacher_bias


class _TopKNeeds(NamedTuple):
  """``_Needs`` of the top-k loss (a teacher given as log-probabilities)."""

  student_hidden: bool = False
  student_weight: bool = False
  student_bias: bool = False
  teacher_log_probs: bool = False
  temperature: bool = False

  def any(self) -> bool:
    return any(self)


class _Operands(NamedTuple):
  """The whole arrays; biases None when absent, mask None when all count."""

  student_hidden: jax.Array
  student_weight: jax.Array
  student_bias: jax.Array | None
  teacher_hidden: jax.Array
  teacher_weight: jax.Array
  teacher_bias: jax.Array | None
  temperature: jax.Array  # the student's (and the teacher's when shared)
  teacher_temperature: jax.Array | None  # None: shared
  mask: jax.Array | None
  labels: jax.Array | None  # [N], only for the hard loss
  segment_ids: jax.Array | None
  num_items: jax.Array | None


class _TopKOperands(NamedTuple):
  """The top-k loss's arrays: the teacher as ``[N, k]`` rows, no head."""

  student_hidden: jax.Array
  student_weight: jax.Array
  student_bias: jax.Array | None
  teacher_log_probs: jax.Array
  temperature: jax.Array
  teacher_indices: jax.Array
  mask: jax.Array | None
  labels: jax.Array | None
  segment_ids: jax.Array | None
  num_items: jax.Array | None


_AnyNeeds = _Needs | _TopKNeeds
_AnyOperands = _Operands | _TopKOperands
_AnyStats = RowStats | TopKStats

# Per kind of operands: the differentiable ones (a prefix of the operands, in
# order), the per-token ones (cut into chunks with the tokens; their
# gradients are written chunk by chunk) and the vocabulary passes'
# statistics kept for the backward pass of 'none'.
_NEEDS: dict[type, type[_AnyNeeds]] = {_Operands: _Needs, _TopKOperands: _TopKNeeds}
_ROWS: dict[type, tuple[str, ...]] = {
  _Operands: ("student_hidden", "teacher_hidden", "labels"),
  _TopKOperands: ("student_hidden", "teacher_log_probs", "teacher_indices", "labels"),
}
_STATS: dict[type, type[_AnyStats]] = {_Operands: RowStats, _TopKOperands: TopKStats}

# Gradients, accumulators and per-row outputs by name.
_Arrays = dict[str, jax.Array]
# What the forward pass keeps for the backward pass: the names of the
# gradients needed (dict keys: static), the operands, the gradients when they
# were computed with the loss (scalar reductions), and the per-row statistics
# of the vocabulary passes ('none' with vocabulary blocks).
# ... and, when the whole problem is one block, autodiff's vjp of it.
_Residuals = tuple[
  dict[str, None],
  _AnyOperands,
  "_Arrays | None",
  "_AnyStats | None",
  "Callable[[jax.Array], tuple[jax.Array, ...]] | None",
]
_DotDims = tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[()], tuple[()]]]

# Contract the hidden axis of x [c, H] with the rows of w [H, V] -> [c, V];
# and the vocabulary axes of g [c, V] and w [H, V] -> [c, H]. dot_general
# takes the transpose as dimension numbers, so it is not materialized.
_LOGITS_DIMS: _DotDims = (((1,), (0,)), ((), ()))
_D_HIDDEN_DIMS: _DotDims = (((1,), (1,)), ((), ()))


def _weight_grad(x: jax.Array, g: jax.Array, accumulate_dtype: DTypeLike) -> jax.Array:
  """``x.T @ g``: ``[c, H]`` and ``[c, V]`` to ``[H, V]``.

  The small ``[H, c]`` transpose of ``x`` is materialized (the optimization
  barrier stops XLA from folding it back into the dot's dimension numbers):
  XLA:CPU then runs a plain ``[H, c] @ [c, V]`` GEMM, about 2x faster in our
  measurements than the dot contracting both operands' leading axes. It costs
  one copy of ``c * H`` elements.
  """
  x_t: jax.Array = lax.optimization_barrier(x.T)  # type: ignore[no-untyped-call]  # jax.lax.optimization_barrier is unannotated
  return _matmul(x_t, g, _LOGITS_DIMS, accumulate_dtype)


def _matmul(
  x: jax.Array, y: jax.Array, dims: _DotDims, accumulate_dtype: DTypeLike
) -> jax.Array:
  """``dot_general`` of ``x`` and ``y`` (cast to a common dtype), wide output."""
  dtype = jnp.result_type(x, y)
  return lax.dot_general(
    x.astype(dtype), y.astype(dtype), dims, preferred_element_type=accumulate_dtype
  )


def _logits_of(
  hidden: jax.Array, weight: jax.Array, bias: jax.Array | None, compute: DTypeLike
) -> jax.Array:
  """``hidden @ weight + bias`` with a wide accumulator."""
  logits = _matmul(hidden, weight, _LOGITS_DIMS, compute)
  if bias is not None:
    logits = logits + bias.astype(compute)[None, :]
  return logits


def _chunk_losses(
  config: _Config,
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: jax.Array,
  mask: jax.Array | None,
) -> jax.Array:
  """``T^2 D`` per token of one chunk; the per-row code of distillation_loss."""
  per_token = _logits.divergence_from_logits(
    student_logits,
    teacher_logits,
    divergence=config.divergence,
    beta=config.beta,
    temperature=temperature,
    where=None if mask is None else mask[:, None],
  )  # rows, never classes
  return per_token * jnp.square(temperature)


class _Chunk(NamedTuple):
  """One token chunk's inputs: its per-token operands ``[c, ...]`` by name."""

  rows: _Arrays
  mask: jax.Array | None
  weights: jax.Array | None  # [c] gradient weights of the losses, or None
  stats: _AnyStats | None  # statistics from the forward pass, or None


def _contract(
  needs: _AnyNeeds,
  ops: _AnyOperands,
  chunk: _Chunk,
  d_logits: dict[str, jax.Array],
  acc: _Arrays,
  block: tuple[Blocks, jax.Array] | None,
) -> tuple[_Arrays, _Arrays]:
  """Hidden-state gradient blocks and updated weight/bias accumulators.

  ``d_logits`` maps a side (``'student'``, ``'teacher'``) to the (weighted)
  gradient with respect to a block of its logits: all classes (``block``
  None), or block ``j`` of the vocabulary ``block = (blocks, j)``.
  They enter the matmuls in the operands' dtype (float32 accumulation), as
  the unfused loss's backward pass does.
  """
  compute = ops.temperature.dtype
  acc = dict(acc)
  hidden: _Arrays = {}
  for side, d in d_logits.items():
    h = chunk.rows[f"{side}_hidden"]
    w: jax.Array = getattr(ops, f"{side}_weight")
    w_block = w if block is None else block[0].take(w, block[1], 1)
    if getattr(needs, f"{side}_hidden"):
      hidden[f"{side}_hidden"] = _matmul(
        d.astype(w.dtype), w_block, _D_HIDDEN_DIMS, compute
      )
    for name in (f"{side}_weight", f"{side}_bias"):
      if not getattr(needs, name):
        continue
      if name.endswith("weight"):
        grad, axis = _weight_grad(h, d.astype(h.dtype), compute), 1
      else:
        grad, axis = jnp.sum(d, axis=0), 0
      if block is None:
        acc[name] = acc[name] + grad.astype(acc[name].dtype)
      else:
        acc[name] = block[0].add(acc[name], grad, block[1], axis)
  return hidden, acc


def _add(acc: _Arrays, name: str, grad: jax.Array | None) -> _Arrays:
  """``acc`` with ``grad`` added to ``acc[name]`` if that gradient is needed."""
  if name not in acc or grad is None:
    return acc
  return dict(acc, **{name: acc[name] + grad.astype(acc[name].dtype)})


_ChunkResult = tuple[_Arrays, _Arrays, _Arrays]


# ----------------------------------------------------------------------------
# The conventions (``_conventions``) other than today's: each model's logits
# are transformed (scale, soft-cap) and divided by its own temperature (a
# "view" of the raw logits), the soft loss is scaled by T_s^2 or not, and the
# hard loss (cross-entropy at T = 1) is mixed in.


def _soft_scale(config: _Config, temperature: jax.Array) -> jax.Array:
  """The soft loss's factor: ``T_s^2`` (``'square'``) or 1."""
  if config.conventions.temperature_scaling == "none":
    return jnp.ones_like(temperature)
  return jnp.square(temperature)


def _transformed(config: _Config, x: jax.Array, side: str) -> jax.Array:
  c = config.conventions
  return _conventions.transform_logits(
    x, getattr(c, f"{side}_logit_scale"), getattr(c, f"{side}_logit_softcap")
  )


def _view(
  config: _Config, x: jax.Array, temperature: jax.Array, side: str
) -> jax.Array:
  """``transform(x) / T`` (``_scaled``: finite derivatives at -inf)."""
  return _logits._scaled(_transformed(config, x, side), 1 / temperature)


def _teacher_temperature(ops: _Operands) -> jax.Array:
  t = ops.teacher_temperature
  return ops.temperature if t is None else t


def _mixed(
  config: _Config,
  soft: jax.Array | None,
  hard: jax.Array | None,
  temperature: jax.Array,
  mask: jax.Array | None,
) -> jax.Array:
  """Per token ``alpha * hard + (1 - alpha) * scale * soft``, dropped rows 0."""
  if soft is not None:
    soft = soft * _soft_scale(config, temperature)
  per_token = _conventions.mix(soft, hard, config.conventions)
  return _logits._finish(per_token, mask, False)


def _hard_losses(
  config: _Config, s: jax.Array, labels: jax.Array | None
) -> jax.Array | None:
  """The cross-entropy at T = 1 of transformed logits ``[c, V]``, or None."""
  if not config.conventions.hard:
    return None
  assert labels is not None  # checked: the hard loss needs labels
  return _conventions.cross_entropy(s, labels, 1)


def _general_losses(
  config: _Config,
  s: jax.Array,
  t: jax.Array,
  temperatures: tuple[jax.Array, jax.Array],
  labels: jax.Array | None,
  mask: jax.Array | None,
) -> jax.Array:
  """A chunk's per-token losses under the general conventions (no blocks)."""
  s = _transformed(config, _logits.zero_dropped_examples(s, mask, (1,)), "student")
  soft = None
  if config.conventions.soft:
    t = _transformed(config, _logits.zero_dropped_examples(t, mask, (1,)), "teacher")
    soft = _logits.divergence_from_logits(
      _logits._scaled(s, 1 / temperatures[0]),
      _logits._scaled(t, 1 / temperatures[1]),
      divergence=config.divergence,
      beta=config.beta,
      temperature=1.0,
      where=None if mask is None else mask[:, None],
    )
  return _mixed(config, soft, _hard_losses(config, s, labels), temperatures[0], mask)


def _dense_chunk(
  config: _Config, needs: _Needs, ops: _Operands, chunk: _Chunk, acc: _Arrays
) -> _ChunkResult:
  """A chunk's losses and gradients with ``[c, V]`` logits (no vocab blocks)."""
  compute = ops.temperature.dtype
  h_s, h_t = chunk.rows["student_hidden"], chunk.rows["teacher_hidden"]
  s = _logits_of(h_s, ops.student_weight, ops.student_bias, compute)
  t = _logits_of(h_t, ops.teacher_weight, ops.teacher_bias, compute)
  labels = chunk.rows.get("labels")

  def losses_fn(
    s: jax.Array, t: jax.Array, temperature: jax.Array, teacher_t: jax.Array | None
  ) -> jax.Array:
    if config.plain:
      return _chunk_losses(config, s, t, temperature, chunk.mask)
    temperatures = (temperature, temperature if teacher_t is None else teacher_t)
    return _general_losses(config, s, t, temperatures, labels, chunk.mask)

  args = (s, t, ops.temperature, ops.teacher_temperature)
  if not needs.any() or chunk.weights is None:
    return {"losses": losses_fn(*args)}, {}, acc
  losses, vjp = jax.vjp(losses_fn, *args)
  d_s, d_t, d_temperature, d_teacher_t = vjp(chunk.weights.astype(compute))
  hidden, acc = _contract(
    needs, ops, chunk, {"student": d_s, "teacher": d_t}, acc, None
  )
  acc = _add(acc, "temperature", d_temperature)
  acc = _add(acc, "teacher_temperature", d_teacher_t)
  return {"losses": losses}, hidden, acc


def _vocab_chunk(
  config: _Config, needs: _Needs, ops: _Operands, chunk: _Chunk, acc: _Arrays
) -> _ChunkResult:
  """A chunk's losses, statistics and gradients over vocabulary blocks.

  See ``_fused_blocks``: statistics, then values (unless the gradient pass
  gives them), then gradients (when ``chunk.weights`` is given). With
  ``chunk.stats`` (the backward pass of ``'none'``) only the gradient pass
  runs. Returns ``(per-row outputs, hidden-state gradient blocks, acc)``.

  Under the general conventions the passes see each model's view
  ``transform(x) / T`` at temperature 1 (the hard loss's statistics are
  streamed along the first pass), and the gradient pass pulls the views'
  cotangents back to the raw logits and the temperatures.
  """
  vocab = config.vocab
  assert vocab is not None  # only called with vocabulary blocks
  compute = ops.temperature.dtype
  plain = config.plain
  hard = config.conventions.hard
  one = jnp.ones_like(ops.temperature)
  # The temperature the passes see (the views are already divided by theirs).
  temperature = ops.temperature if plain else one
  inverse_t = 1 / temperature
  divergence, beta = config.divergence, config.beta
  h_s, h_t = chunk.rows["student_hidden"], chunk.rows["teacher_hidden"]
  temperatures = (ops.temperature, _teacher_temperature(ops))
  labels = chunk.rows.get("labels")

  def raw(j: jax.Array) -> tuple[jax.Array, jax.Array]:
    s = _block_logits(
      vocab, j, h_s, ops.student_weight, ops.student_bias, chunk.mask, compute
    )
    t = _block_logits(
      vocab, j, h_t, ops.teacher_weight, ops.teacher_bias, chunk.mask, compute
    )
    return s, t

  def views(
    s: jax.Array, t: jax.Array, t_s: jax.Array, t_t: jax.Array
  ) -> tuple[jax.Array, ...]:
    """``(s' / T_s, t' / T_t)``, and ``s'`` (the hard loss's) last."""
    s = _transformed(config, s, "student")
    z_s = _logits._scaled(s, 1 / t_s)
    z_t = _view(config, t, t_t, "teacher")
    return (z_s, z_t, s) if hard else (z_s, z_t)

  def logits(j: jax.Array) -> _fused_blocks.LogitBlock:
    s, t = raw(j)
    if not plain:
      s, t = views(s, t, *temperatures)[:2]
    return s, t, vocab.fresh(j)

  rows = h_s.shape[0]
  like = jnp.zeros_like(h_s[:, 0], compute)
  out: _Arrays = {}
  stats = cast("RowStats | None", chunk.stats)
  divergences = None
  # Which model's logits are differentiated (through a temperature, too).
  teacher_t = needs.teacher_temperature or (
    ops.teacher_temperature is None and needs.temperature
  )
  if stats is None:
    stream = needs.any() and _fused_blocks.streamed(
      divergence,
      needs.teacher() or teacher_t,
      needs.student() or needs.temperature,
    )
    stats, streamed = _fused_blocks.statistics(
      logits,
      vocab.steps,
      rows,
      inverse_t,
      divergence,
      stream,
      like,
      _hard_stream(config, labels, ops.temperature),
      vocab,
    )
    if needs.any() and divergence != "jsd":
      stats = _fused_blocks.closed_form_derivatives(stats, divergence, streamed)
    if not needs.any() or divergence == "jsd" or chunk.weights is None:
      divergences, stats = _fused_blocks.values(
        logits,
        vocab.steps,
        stats,
        inverse_t,
        divergence,
        beta,
        needs.any() and divergence == "jsd",
      )
    if needs.any() and chunk.weights is None:  # 'none': keep for backward
      out.update(stats._asdict())
  if chunk.weights is None or not needs.any():
    assert divergences is not None
    out["losses"] = _block_losses(config, ops, chunk, stats, divergences, temperature)
    return out, {}, acc

  weights = chunk.weights.astype(compute)
  hard_weights = weights * config.conventions.hard_loss_weight
  if not plain:  # the soft loss's weight and factor
    soft_weight = 1 - config.conventions.hard_loss_weight
    weights = weights * soft_weight * _soft_scale(config, ops.temperature)
  names = [
    name for name in ("student_hidden", "teacher_hidden") if getattr(needs, name)
  ]
  hidden: _Arrays = {name: jnp.zeros_like(chunk.rows[name], compute) for name in names}
  carry = (jnp.zeros_like(like), hidden, acc)

  def body(
    j: jax.Array, carry: tuple[jax.Array, _Arrays, _Arrays]
  ) -> tuple[jax.Array, _Arrays, _Arrays]:
    total, hidden, acc = carry
    assert stats is not None
    s, t = raw(j)
    fresh = vocab.fresh(j)
    if plain:
      block: _fused_blocks.LogitBlock = (s, t, fresh)
    else:
      viewed, pullback = jax.vjp(views, s, t, *temperatures)
      block = (viewed[0], viewed[1], fresh)
    grads = _fused_blocks.block_gradients(
      block, stats, temperature, weights, divergence, beta
    )
    d_s, d_t = grads.d_student, grads.d_teacher
    if plain:
      acc = _add(acc, "temperature", grads.d_temperature)
    else:
      cotangents: tuple[jax.Array, ...] = (d_s, d_t)
      if hard:
        assert labels is not None
        d_hard = _fused_blocks.hard_block_gradient(
          viewed[2], fresh, vocab, j, labels, stats, ops.temperature, hard_weights
        )
        cotangents = (d_s, d_t, d_hard)
      d_s, d_t, d_t_s, d_t_t = pullback(cotangents)
      if ops.teacher_temperature is None:
        acc = _add(acc, "temperature", d_t_s + d_t_t)
      else:
        acc = _add(acc, "temperature", d_t_s)
        acc = _add(acc, "teacher_temperature", d_t_t)
    d_logits = {"student": d_s, "teacher": d_t}
    blocks, acc = _contract(needs, ops, chunk, d_logits, acc, (vocab, j))
    hidden = {name: hidden[name] + blocks[name] for name in hidden}
    return total + grads.losses, hidden, acc

  total, hidden, acc = lax.fori_loop(0, vocab.steps, body, carry)
  if plain:
    # The gradient pass's losses are T^2 D already.
    out["losses"] = (
      _logits._finish(total, chunk.mask, True)
      if divergences is None
      else _block_losses(config, ops, chunk, stats, divergences, temperature)
    )
    return out, hidden, acc
  divergences = total if divergences is None else divergences
  out["losses"] = _block_losses(config, ops, chunk, stats, divergences, temperature)
  if needs.temperature:
    grad = _soft_scale_derivative(config, chunk, ops, divergences)
    acc = _add(acc, "temperature", grad)
  return out, hidden, acc


def _hard_stream(
  config: _Config, labels: jax.Array | None, temperature: jax.Array
) -> _fused_blocks.HardStream | None:
  if not config.conventions.hard:
    return None
  assert labels is not None  # checked: the hard loss needs labels
  return _fused_blocks.HardStream(labels, temperature)


def _block_losses(
  config: _Config,
  ops: _AnyOperands,
  chunk: _Chunk,
  stats: _AnyStats,
  divergences: jax.Array,
  temperature: jax.Array,
) -> jax.Array:
  """Per-token losses from the divergences and the streamed statistics."""
  divergences = _logits._finish(divergences, chunk.mask, True)
  if config.plain:
    return divergences * jnp.square(temperature)
  soft = divergences if config.conventions.soft else None
  hard = None
  if config.conventions.hard:
    hard = _fused_blocks.hard_losses(stats, ops.temperature)
  return _mixed(config, soft, hard, ops.temperature, chunk.mask)


def _soft_scale_derivative(
  config: _Config, chunk: _Chunk, ops: _AnyOperands, divergences: jax.Array
) -> jax.Array:
  """``sum_i w_i dL_i/dT_s`` through the factor ``T_s^2`` alone:
  ``sum_i w_i (1 - alpha) 2 T_s D_i``."""
  if config.conventions.temperature_scaling == "none" or chunk.weights is None:
    return jnp.zeros_like(ops.temperature)
  d = _logits._finish(divergences, chunk.mask, True)
  weights = chunk.weights.astype(d.dtype) * (1 - config.conventions.hard_loss_weight)
  return jnp.sum(weights * d) * 2 * ops.temperature


def _block_logits(
  vocab: Blocks,
  j: jax.Array,
  hidden: jax.Array,
  weight: jax.Array,
  bias: jax.Array | None,
  mask: jax.Array | None,
  compute: DTypeLike,
) -> jax.Array:
  """Block ``j`` of a chunk's logits ``[c, b]``; dropped rows' logits 0."""
  b = None if bias is None else vocab.take(bias, j, 0)
  x = _logits_of(hidden, vocab.take(weight, j, 1), b, compute)
  # Dropped rows: logits 0, as in distillation_loss (``inf * 0`` from a -inf
  # bias cannot reach the sums).
  return _logits.zero_dropped_examples(x, mask, (1,))


# ----------------------------------------------------------------------------
# The top-k teacher: per-token (index, log-probability) rows instead of a head.


def _topk_dense_chunk(
  config: _Config,
  needs: _TopKNeeds,
  ops: _TopKOperands,
  chunk: _Chunk,
  acc: _Arrays,
) -> _ChunkResult:
  """A top-k chunk with ``[c, V]`` logits: the per-row top-k code and its vjp."""
  compute = ops.temperature.dtype
  h = chunk.rows["student_hidden"]
  indices = chunk.rows["teacher_indices"]
  labels = chunk.rows.get("labels")
  s = _logits_of(h, ops.student_weight, ops.student_bias, compute)
  s = _logits.zero_dropped_examples(s, chunk.mask, (1,))
  assert config.tail is not None

  def losses_fn(
    s: jax.Array, log_probs: jax.Array, temperature: jax.Array
  ) -> jax.Array:
    s = _transformed(config, s, "student")
    soft = None
    if config.conventions.soft:
      # The logits scaled here (``_scaled``: finite derivatives at -inf), so
      # that the temperature's derivative is the composition's.
      soft = _topk.topk_divergence_from_logits(
        _logits._scaled(s, 1 / temperature),
        indices,
        log_probs,
        divergence=config.divergence,
        beta=config.beta,
        tail=config.tail,  # type: ignore[arg-type]  # validated
        where=chunk.mask,
      )
    hard = _hard_losses(config, s, labels)
    return _mixed(config, soft, hard, temperature, chunk.mask)

  # In their own dtype: the per-row code takes its rounding tolerance from it.
  log_probs = chunk.rows["teacher_log_probs"]
  if not needs.any() or chunk.weights is None:
    return {"losses": losses_fn(s, log_probs, ops.temperature)}, {}, acc
  losses, vjp = jax.vjp(losses_fn, s, log_probs, ops.temperature)
  d_s, d_log_probs, d_temperature = vjp(chunk.weights.astype(compute))
  hidden, acc = _contract(needs, ops, chunk, {"student": d_s}, acc, None)
  if needs.teacher_log_probs:
    hidden["teacher_log_probs"] = d_log_probs
  acc = _add(acc, "temperature", d_temperature)
  return {"losses": losses}, hidden, acc


def _topk_vocab_chunk(
  config: _Config,
  needs: _TopKNeeds,
  ops: _TopKOperands,
  chunk: _Chunk,
  acc: _Arrays,
) -> _ChunkResult:
  """A top-k chunk over vocabulary blocks (see ``_fused_blocks.topk_*``).

  One streaming pass gives the student's coarse statistics (of its view
  ``transform(s) / T``; and the hard loss's, when mixed in), from which the
  values follow with no further pass; the gradients take one more pass, each
  block's gradient with respect to the view pulled back to the raw logits
  and the temperature. With ``chunk.stats`` (the backward pass of
  ``'none'``) only the gradient pass runs.
  """
  vocab = config.vocab
  assert vocab is not None and config.tail is not None
  compute = ops.temperature.dtype
  temperature = ops.temperature
  hard = config.conventions.hard
  one = jnp.ones_like(temperature)
  h = chunk.rows["student_hidden"]
  indices = chunk.rows["teacher_indices"]
  labels = chunk.rows.get("labels")
  log_probs = chunk.rows["teacher_log_probs"].astype(compute)
  valid = log_probs != -jnp.inf  # -inf: an unused slot (NaN is used)

  def raw(j: jax.Array) -> jax.Array:
    return _block_logits(
      vocab, j, h, ops.student_weight, ops.student_bias, chunk.mask, compute
    )

  def view(s: jax.Array, temperature: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(s' / T, s')``: the soft loss's view and the hard loss's logits."""
    s = _transformed(config, s, "student")
    return _logits._scaled(s, 1 / temperature), s

  def logits(j: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    return view(raw(j), temperature)[0], vocab.fresh(j)

  stats = cast("TopKStats | None", chunk.stats)
  if stats is None:
    stream = _hard_stream(config, labels, temperature)
    stats = _fused_blocks.topk_statistics(logits, vocab, indices, valid, one, stream)
  coarse = _fused_blocks.topk_coarse(
    stats,
    log_probs,
    config.divergence,
    config.beta,
    config.tail,
    ops.teacher_log_probs.dtype,
  )
  out: _Arrays = {
    "losses": _block_losses(config, ops, chunk, stats, coarse.value, temperature)
  }
  if chunk.weights is None or not needs.any():
    if needs.any():  # 'none': keep for the backward pass
      out.update(stats._asdict())
    return out, {}, acc
  alpha = config.conventions.hard_loss_weight
  weights = chunk.weights.astype(compute)
  hard_weights = weights * alpha
  weights = weights * (1 - alpha) * _soft_scale(config, temperature)
  d_listed, d_rest, d_log_probs = coarse.vjp(weights)
  hidden: _Arrays = {}
  if needs.student_hidden:
    hidden["student_hidden"] = jnp.zeros_like(h, compute)
  carry = (hidden, acc)

  def body(j: jax.Array, carry: tuple[_Arrays, _Arrays]) -> tuple[_Arrays, _Arrays]:
    hidden, acc = carry
    fresh = vocab.fresh(j)
    (z, s), pullback = jax.vjp(view, raw(j), temperature)
    d_z = _fused_blocks.topk_block_gradient(
      (z, fresh), vocab, j, indices, valid, stats, d_listed, d_rest, one
    )
    d_hard = jnp.zeros_like(s)
    if hard:
      assert labels is not None
      d_hard = _fused_blocks.hard_block_gradient(
        s, fresh, vocab, j, labels, stats, temperature, hard_weights
      )
    d_s, d_temperature = pullback((d_z, d_hard))
    acc = _add(acc, "temperature", d_temperature)
    blocks, acc = _contract(needs, ops, chunk, {"student": d_s}, acc, (vocab, j))
    hidden = {name: hidden[name] + blocks[name] for name in hidden}
    return hidden, acc

  hidden, acc = lax.fori_loop(0, vocab.steps, body, carry)
  if needs.teacher_log_probs:
    hidden["teacher_log_probs"] = d_log_probs
  if needs.temperature:
    grad = _soft_scale_derivative(config, chunk, ops, coarse.value)
    acc = _add(acc, "temperature", grad)
  return out, hidden, acc


def _chunk_function(
  config: _Config,
) -> Callable[[_Config, Any, Any, _Chunk, _Arrays], _ChunkResult]:
  if config.tail is None:
    return _dense_chunk if config.vocab is None else _vocab_chunk
  return _topk_dense_chunk if config.vocab is None else _topk_vocab_chunk


def _clean_rows(rows: _Arrays, mask: jax.Array | None) -> _Arrays:
  """A chunk's per-token operands with the dropped tokens' made harmless.

  Excluded tokens may hold anything (NaN hidden states of padding): their
  hidden states are replaced by 0, so that ``0 * NaN`` cannot reach the
  weight gradients (``h.T @ d logits``), and their teacher log-probabilities
  by -inf (no listed class); their logits are replaced again inside the
  per-row code (``inf * 0`` from a -inf bias).
  """
  if mask is None:
    return rows
  out = dict(rows)
  for name, x in rows.items():
    if name.endswith("_hidden"):
      out[name] = _logits.zero_dropped_examples(x, mask, (1,))
    elif name == "teacher_log_probs":
      out[name] = jnp.where(mask[:, None], x, jnp.asarray(-jnp.inf, x.dtype))
    elif name == "labels":
      out[name] = jnp.where(mask, x, jnp.zeros((), x.dtype))
  return out


def _stats_buffers(ops: _AnyOperands, row: jax.Array) -> _Arrays:
  """Zero ``[N, ...]`` buffers of the statistics that 'none' keeps."""
  if isinstance(ops, _TopKOperands):
    listed = jnp.zeros_like(ops.teacher_log_probs, row.dtype)
    return TopKStats(row, row, row, listed, row, row, row)._asdict()
  return dict.fromkeys(RowStats._fields, row)


def _loop(
  config: _Config,
  needs: _AnyNeeds,
  ops: _AnyOperands,
  cotangent: jax.Array | None = None,
  stats: _AnyStats | None = None,
) -> tuple[_Arrays, _Arrays]:
  """Runs the chunks over all tokens; returns per-row outputs and gradients.

  The tokens are cut into ``config.tokens`` blocks (``Blocks``: strided when
  a divisor of ``N`` allows, else contiguous with an overlapping last chunk
  whose repeated rows get zero weight and keep their earlier results). The
  per-row outputs are ``'losses'`` (and the vocabulary passes' statistics,
  for the backward pass of ``'none'``); the gradients with respect to the
  per-token operands (hidden states, top-k log-probabilities) are written
  chunk by chunk into buffers of the operands' dtype, those with respect to
  the weights, biases and the temperature are accumulated in the compute
  dtype.
  """
  compute = ops.temperature.dtype
  tokens = config.tokens
  row_names = _ROWS[type(ops)]
  row = jnp.zeros_like(ops.student_hidden[:, 0], compute)  # [N], typed like the tokens
  outputs: _Arrays = {"losses": row}
  if config.vocab is not None and needs.any() and cotangent is None and stats is None:
    outputs.update(_stats_buffers(ops, row))
  grads: _Arrays = {}
  for name, operand in zip(type(needs)._fields, ops, strict=False):
    if cotangent is not None and getattr(needs, name):
      assert operand is not None
      dtype = operand.dtype if name in row_names else compute
      grads[name] = jnp.zeros_like(operand, dtype)
  chunk_fn = _chunk_function(config)

  def body(i: jax.Array, carry: tuple[_Arrays, _Arrays]) -> tuple[_Arrays, _Arrays]:
    outputs, grads = carry
    fresh = tokens.fresh(i)

    def rows(x: jax.Array) -> jax.Array:
      return tokens.take(x, i, 0)

    mask = None if ops.mask is None else rows(ops.mask)
    weights = None
    if cotangent is not None:
      weights = rows(cotangent).astype(compute)
      if fresh is not None:
        weights = jnp.where(fresh, weights, 0)
    per_token = {
      name: rows(getattr(ops, name))
      for name in row_names
      if getattr(ops, name) is not None
    }
    chunk = _Chunk(
      _clean_rows(per_token, mask),
      mask,
      weights,
      None if stats is None else type(stats)(*map(rows, stats)),
    )
    acc = {name: g for name, g in grads.items() if name not in row_names}
    out, per_row_grads, acc = chunk_fn(config, needs, ops, chunk, acc)
    outputs = {name: tokens.put(outputs[name], out[name], i, 0) for name in outputs}
    grads = dict(acc)
    for name in row_names:
      if name in per_row_grads:
        grads[name] = tokens.put(carry[1][name], per_row_grads[name], i, 0)
    return outputs, grads

  if tokens.steps == 0:  # no tokens
    return outputs, grads
  if tokens.steps == 1:
    outputs, grads = body(jnp.zeros((), jnp.int32), (outputs, grads))
  else:
    outputs, grads = lax.fori_loop(0, tokens.steps, body, (outputs, grads))
  return outputs, grads


def _reduce(config: _Config, ops: _AnyOperands, values: jax.Array) -> jax.Array:
  """``reduce_loss`` of the per-token losses with the call's reduction."""
  return _reduction.reduce_loss(
    values,
    config.reduction,
    where=ops.mask,
    segment_ids=ops.segment_ids,
    num_items_in_batch=ops.num_items,
  )


def _reduction_vjp(
  config: _Config, ops: _AnyOperands, dtype: DTypeLike
) -> Callable[[jax.Array], jax.Array]:
  """The (linear) map from the reduced loss' cotangent to per-token weights.

  The weights are typed like the tokens (in ``shard_map``: varying as the
  operands are).
  """
  like = ops.student_hidden

  def reduce(values: jax.Array) -> jax.Array:
    return _reduce(config, ops, values)

  # Typed like the tokens (varying over shard_map axes as the operands are):
  # the per-token weights must vary like the per-token losses.
  out, vjp = jax.vjp(reduce, jnp.zeros_like(like[:, 0], dtype))

  def weights(g: jax.Array) -> jax.Array:
    g = _checks.pcast_varying(g, _missing_axes(g, _varying_axes(out)))
    per_token: jax.Array = vjp(g)[0]
    return per_token

  return weights


def _value(config: _Config, ops: _AnyOperands) -> jax.Array:
  """The loss, computed chunk by chunk (plain JAX: differentiable as is)."""
  outputs, _ = _loop(config, _NEEDS[type(ops)](), ops)
  return _reduce(config, ops, outputs["losses"])


_fused = jax.custom_vjp(_value, nondiff_argnums=(0,))


def _primal(x: CustomVJPPrimal | None) -> jax.Array | None:
  return None if x is None else x.value


def _names(needs_keys: dict[str, None], ops: _AnyOperands) -> tuple[str, ...]:
  """The needed operands in the operands' order (a pytree dict is sorted)."""
  return tuple(name for name in ops._fields if name in needs_keys)


def _fused_fwd(config: _Config, ops: _AnyOperands) -> tuple[jax.Array, _Residuals]:
  primal = cast("tuple[CustomVJPPrimal | None, ...]", tuple(ops))
  needs_type = _NEEDS[type(ops)]
  needs = needs_type(
    *(x is not None and x.perturbed for x in primal[: len(needs_type._fields)])
  )
  values = type(ops)(*map(_primal, primal))  # type: ignore[arg-type]  # hidden, weights, temperature are never None
  compute = values.temperature.dtype
  # `needs` travels as the keys of a dict of Nones: pytree structure, static
  # under every transformation (unlike Python bools as leaves).
  needs_keys = {name: None for name, need in needs._asdict().items() if need}
  if config.tokens.steps == 1 and config.vocab is None:
    # One block (the problem fits the budget): the dense computation, whose
    # autodiff vjp applies the cotangent inside the logits' gradient rather
    # than in an extra pass over the [H, V] weight gradient.
    names = _names(needs_keys, values)

    def loss_of(*differentiated: jax.Array) -> jax.Array:
      return _value(
        config, values._replace(**dict(zip(names, differentiated, strict=True)))
      )

    value, vjp = jax.vjp(loss_of, *(getattr(values, name) for name in names))
    return value, (needs_keys, values, None, None, vjp)
  if config.reduction == "none":
    outputs, _ = _loop(config, needs, values)
    value = _reduce(config, values, outputs.pop("losses"))
    stats = _STATS[type(ops)](**outputs) if outputs else None
    return value, (needs_keys, values, None, stats, None)
  # Scalar reduction: loss = sum_i weight_i * loss_i, weights known now.
  weights = _reduction_vjp(config, values, compute)(jnp.ones((), compute))
  outputs, grads = _loop(config, needs, values, weights)
  value = _reduce(config, values, outputs["losses"])
  return value, (needs_keys, values, grads, None, None)


def _fused_bwd(
  config: _Config, residuals: _Residuals, g: jax.Array | SymbolicZero
) -> tuple[_AnyOperands]:
  needs_keys, ops, grads, stats, vjp = residuals
  if isinstance(g, SymbolicZero):
    return (type(ops)(*(None,) * len(ops)),)  # type: ignore[arg-type]  # all-None cotangents
  compute = ops.temperature.dtype
  if vjp is not None:
    grads = dict(zip(_names(needs_keys, ops), vjp(g), strict=True))
    scale = None
  elif config.reduction == "none":
    needs = _NEEDS[type(ops)](**dict.fromkeys(needs_keys, True))
    weights = _reduction_vjp(config, ops, compute)(g.astype(compute))
    _, grads = _loop(config, needs, ops, weights, stats)
    scale = None
  else:
    assert grads is not None  # computed in the forward pass
    scale = g.astype(compute)
  cotangents: list[jax.Array | None] = []
  for name, operand in zip(ops._fields, ops, strict=True):
    if name not in grads:
      cotangents.append(None)
      continue
    grad = grads[name]
    if scale is not None:
      grad = grad.astype(compute) * scale
    assert operand is not None
    cotangents.append(grad.astype(operand.dtype))
  return (type(ops)(*cotangents),)  # type: ignore[arg-type]  # None: no cotangent


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)

# Compiled as a whole even when called outside jit (op-by-op dispatch of the
# loop's remainder chunk and of the custom_vjp rules is slow); inlined under
# an outer jit.
_fused_jit = jax.jit(_fused, static_argnums=0)


def check_matrix(value: ArrayLike, name: str, shape_name: str) -> jax.Array:
  array = _checks.as_float_array(value, name)
  if array.ndim != 2:
    raise ValueError(
      f"`{name}` must be a matrix of shape {shape_name}; got shape "
      f"{array.shape}. Flatten leading batch axes first, e.g. "
      f"`{name}.reshape(-1, {name}.shape[-1])`."
    )
  return array


def fused_linear_distillation_loss(
  student_hidden: ArrayLike,
  student_weight: ArrayLike,
  teacher_hidden: ArrayLike,
  teacher_weight: ArrayLike,
  *,
  student_bias: ArrayLike | None = None,
  teacher_bias: ArrayLike | None = None,
  temperature: ArrayLike = 1.0,
  divergence: _logits.Divergence = "forward",
  beta: float = 0.5,
  where: ArrayLike | None = None,
  labels: ArrayLike | None = None,
  ignore_index: int = -100,
  reduction: str = "mean",
  chunk_size: int | Literal["auto"] = "auto",
  vocab_chunk: int | Literal["auto"] | None = "auto",
  extra_teacher_classes: Literal["error", "zero_mass"] = "error",
  student_temperature: ArrayLike | None = None,
  teacher_temperature: ArrayLike | None = None,
  temperature_scaling: str = "square",
  hard_loss_weight: float = 0.0,
  segment_ids: ArrayLike | None = None,
  num_items_in_batch: ArrayLike | None = None,
  student_logit_scale: float | None = None,
  student_logit_softcap: float | None = None,
  teacher_logit_scale: float | None = None,
  teacher_logit_softcap: float | None = None,
) -> jax.Array:
  r"""Distillation loss of two linear heads, without materializing the logits.

  With student logits :math:`s_i = h^S_i W_S + b_S` and teacher logits
  :math:`t_i = h^T_i W_T + b_T` for tokens :math:`i = 1..N`,

  .. math::

     \mathcal{L} = T^2 \cdot \operatorname{reduce}_{i \in \text{tokens}}
       D\!\left(\mathrm{softmax}(t_i / T),\ \mathrm{softmax}(s_i / T)\right),

  exactly :func:`jaxkl.distillation_loss` applied to
  ``student_hidden @ student_weight + student_bias`` and
  ``teacher_hidden @ teacher_weight + teacher_bias`` with the same
  arguments (same divergences, temperatures and the other conventions of
  :func:`jaxkl.distillation_loss`, token masks and reductions; equal to
  float32 rounding, values and gradients). In general each model's logits
  are first transformed (``*_logit_scale``, ``*_logit_softcap``) and divided
  by its own temperature, the soft loss is scaled by :math:`T_s^2` or not
  (``temperature_scaling``) and mixed with the cross-entropy at temperature 1
  (``hard_loss_weight``); the vocabulary passes below then see these
  transformed logits, and each block's gradient is pulled back through the
  transform. For the forward KL the gradient with
  respect to the student weight is

  .. math::

     \frac{\partial \mathcal{L}}{\partial W_S} = \sum_i w_i\, T\,
       {h^S_i}^{\top} \left(\mathrm{softmax}(s_i/T) -
       \mathrm{softmax}(t_i/T)\right),

  with :math:`w_i` the reduction's weight of token :math:`i` (e.g.
  :math:`m_i / \sum_j m_j` for ``'mean'`` under a mask :math:`m`).

  **Memory.** The tokens are processed in chunks of ``chunk_size`` rows, and
  with ``vocab_chunk`` each chunk's vocabulary in blocks of ``vocab_chunk``
  classes: the largest buffers are ``[chunk_size, V]`` blocks (or
  ``[chunk_size, vocab_chunk]``) of logits, softmaxes and their gradients,
  in the forward and in the backward pass. The working memory is
  :math:`O(\text{chunk\_size} \cdot \text{block} + H \cdot V)` (the
  ``[H, V]`` float32 accumulator of the weight's gradient) on top of the
  inputs and the ``[N, H]`` gradients, instead of :math:`O(N \cdot V)` for
  the unfused loss. Blocks are *strided* when a divisor of ``N`` (of ``V``)
  gives blocks between half and all of the requested size (block ``j`` holds
  the rows, classes ``k * blocks + j``); otherwise they are contiguous and
  the last block is the last ``chunk_size`` rows (classes), overlapping the
  previous one, whose entries it leaves as they are. Nothing is padded or
  copied.

  **Passes over the vocabulary.** Without vocabulary blocks the logits are
  computed once per step (twice for ``reduction='none'`` with gradients: the
  backward pass recomputes them). With vocabulary blocks each token chunk
  first streams the per-token maximum and log-normalizer of both models
  (online log-sum-exp; for the forward and reverse KL also the divergence
  itself), then the divergence block by block, then the gradients block by
  block; the logits are computed 2 times for the value alone, 2 times with
  gradients for the forward and reverse KL under a scalar reduction (values
  and gradients share a pass), 3 times for JSD with gradients and for
  ``'none'`` with gradients. That is up to 50% more matmul work than without
  blocks, for a memory that no longer grows with ``V``.

  **Chunk sizes** (``'auto'``, the default; ``_fused_linear.chunk_sizes``
  resolves it). A budget of 32 MiB per ``[chunk, block]`` buffer of the
  compute dtype (8M float32 entries):

  1. if ``N * V`` fits, one chunk of all tokens, no vocabulary blocks;
  2. if the tokens are sharded over an ``Explicit`` mesh axis, one chunk of
     all tokens (the loop then never slices the sharded axis) with blocks of
     ``budget // N`` classes;
  3. if 256 rows of ``V`` fit, chunks of ``budget // V`` rows over the
     whole vocabulary (fewest matmuls);
  4. otherwise chunks of ``min(N, 1024)`` rows and blocks of
     ``budget // rows`` classes (e.g. 1024 x 8192 for V = 128256).

  The rule puts memory first: vocabulary blocks cost up to 50% more matmul
  work (see "Passes"), so where memory allows, ``vocab_chunk=None`` with
  ``chunk_size`` 256-1024 is faster (``benchmarks/bench_fused_linear.py``
  and README's Speed section have the numbers; chunks much smaller than
  256 rows are slower still). ``H`` does not enter: the ``[chunk, H]``
  buffers and the ``[H, V]`` weight-gradient accumulator do not depend on
  the cut. Either size may be given while the other stays ``'auto'`` (it is
  then chosen to fit the budget); ``vocab_chunk=None`` turns vocabulary
  blocks off.

  **Gradients.** Reverse mode (``jax.grad``, ``jax.vjp``,
  ``jax.value_and_grad``): the function is a ``jax.custom_vjp``, so
  ``jax.jvp`` (and ``jax.jacfwd``) of the loss itself raise a ``TypeError``.
  Higher derivatives taken by reverse mode first work and are exact, since
  the chunked passes are ordinary differentiable JAX code: forward over
  reverse (``jax.hessian``, ``jax.jvp`` of ``jax.grad``, Hessian-vector
  products) keeps the chunked memory profile, while reverse over reverse
  (``jax.grad(jax.grad(...))``) stores every block's intermediates.
  Gradients are computed only for the arguments being differentiated. The
  teacher is treated like any other input, as in
  :func:`jaxkl.distillation_loss`: if you differentiate with respect to
  ``teacher_hidden``, ``teacher_weight``, ``teacher_bias`` or
  ``temperature`` you get their exact gradients (at the cost of two more
  matmuls per block for the teacher); a frozen teacher (not differentiated,
  or wrapped in ``jax.lax.stop_gradient``) costs nothing.

  **Dtypes.** Each matmul takes its operands in their promoted dtype (e.g.
  bfloat16) and accumulates in float32 (``preferred_element_type``): the
  logits are never rounded to bfloat16. The softmaxes, the divergences, the
  reduction and the weight-gradient accumulation are float32 (float64 for
  float64 inputs). The loss is returned in the dtype
  :func:`jaxkl.distillation_loss` returns for the logits: the promoted dtype
  of the inputs (bfloat16 for bfloat16 inputs), as everywhere in jaxkl.
  Gradients are returned in the dtype of the corresponding input.

  **Masked classes.** A class given a ``-inf`` bias in both heads (e.g.
  vocabulary padding) has zero probability in both models: the loss and its
  derivatives of every order are those of the vocabulary without the class,
  and the masked columns of the weight gradients are 0.

  **Different vocabularies.** A student vocabulary smaller than the
  teacher's (``V_s < V_t``, the first ``V_s`` classes shared) is an error
  unless ``extra_teacher_classes='zero_mass'``: then the teacher's extra
  classes are classes to which the student gives zero probability (student
  logit ``-inf``), as the zero-mass rule of jaxkl has it. The forward KL is
  then ``+inf`` wherever the teacher gives them mass (mask them in the
  teacher with a ``-inf`` ``teacher_bias`` if they are padding); the reverse
  KL and JSD stay finite. This pads a copy of the student weight to
  ``[H, V_t]``.

  **Many devices** (tested on 8 devices in ``tests/_sharding_checks.py``,
  1-D and 2-D meshes, ``Auto`` and ``Explicit`` axes). Under ``jax.jit``:

  * Weights sharded over the vocabulary (``[H, V]`` with
    ``PartitionSpec(None, 'model')``, a tensor-parallel LM head): each
    device computes its part of every block, only per-token statistics
    cross devices, and the weight gradient keeps the weights' sharding (use
    a ``vocab_chunk`` whose block count divides ``V`` with the blocks
    divisible by the devices, so that the blocks are strided).
  * Hidden states sharded over tokens (data parallelism): no hidden state and
    no ``[*, V]`` block is gathered, per-token losses and hidden-state
    gradients keep the token sharding. With one chunk of all tokens (the
    ``'auto'`` choice for tokens on an ``Explicit`` axis; pass
    ``chunk_size=N`` under ``Auto`` axes) the weight gradient is all-reduced
    once; with several (strided) chunks, once per chunk.
  * ``Explicit`` mesh axes (``jax.make_mesh``'s default): the computation
    runs under ``jax.sharding.auto_axes``; the loss is replicated (sharded as
    the tokens for ``'none'``) and every gradient has its input's sharding.
  * Inside ``jax.shard_map`` (with the default ``check_vma=True``): the loss
    is the local one (e.g. ``reduction='sum'`` then ``jax.lax.psum``); the
    gradients of replicated operands are summed over the mesh by JAX.

  Args:
    student_hidden: :math:`h^S`, shape ``[N, H]`` (flatten batch and sequence
      axes into ``N``).
    student_weight: :math:`W_S`, shape ``[H, V]``: input features by
      vocabulary, the layout of a ``flax.linen.Dense`` kernel (the transpose
      of a ``torch.nn.Linear`` weight).
    teacher_hidden: :math:`h^T`, shape ``[N, H_t]`` (``H_t`` may differ from
      ``H``).
    teacher_weight: :math:`W_T`, shape ``[H_t, V]``, the same vocabulary
      (or a larger one, see ``extra_teacher_classes``).
    student_bias: optional :math:`b_S`, shape ``[V]``; ``-inf`` entries mask
      classes.
    teacher_bias: optional :math:`b_T`, shape ``[V]`` (``[V_t]``).
    temperature: :math:`T > 0`, a Python float or a 0-d array (NumPy or
      JAX). A concrete value is checked to be finite and > 0, whatever its
      form; a traced one (e.g. a scheduled temperature under ``jax.jit``)
      cannot be checked, and a non-positive or infinite one then gives NaN
      or meaningless values.
    divergence: ``'forward'`` (:math:`D_{\mathrm{KL}}(P \,\|\, Q)`, teacher
      :math:`P` against student :math:`Q`), ``'reverse'`` or ``'jsd'``; see
      :func:`jaxkl.divergence_from_logits`. Static.
    beta: JSD weight in ``[0, 1]`` (``'jsd'`` only). Static.
    where: optional boolean mask of tokens, shape ``[N]``; ``True`` keeps.
      Excluded tokens may hold anything (NaN or infinite hidden states):
      they reach neither the loss nor any gradient.
    labels: optional integer labels, shape ``[N]``; tokens whose label is
      ``ignore_index`` are excluded.
    ignore_index: the label value to exclude. Static.
    reduction: ``'mean'`` (over kept tokens; 0 if none is kept; NaN for
      ``N = 0``, as :func:`jaxkl.distillation_loss`), ``'sum'``,
      ``'batchmean'`` (sum divided by ``N``), ``'sequence_mean'`` (mean over
      sequences of each sequence's mean, sequences keyed by ``segment_ids``,
      else all ``N`` tokens are one sequence) or ``'none'`` (per-token
      losses, masked tokens 0). Static.
    chunk_size: rows per chunk, a positive int, or ``'auto'``. Static.
    vocab_chunk: classes per vocabulary block, a positive int, ``None`` (the
      whole vocabulary per chunk) or ``'auto'``. Static.
    extra_teacher_classes: ``'error'`` or ``'zero_mass'``: what a teacher
      vocabulary larger than the student's means (see above). Static.
    student_temperature: :math:`T_s`, the student's temperature (as
      ``temperature``); defaults to ``temperature``.
    teacher_temperature: :math:`T_t`, the teacher's; defaults to
      ``temperature``. Both may be differentiated.
    temperature_scaling: ``'square'`` (the soft loss times :math:`T_s^2`,
      the default) or ``'none'``. Static.
    hard_loss_weight: :math:`\alpha \in [0, 1]`: per token
      :math:`\alpha\, \mathrm{CE}(\text{labels}, \mathrm{softmax}(s'))
      + (1 - \alpha)` times the scaled soft loss, the cross-entropy at
      temperature 1 of the (transformed) student logits; needs ``labels``.
      Its log-normalizer is streamed in the first pass over the vocabulary
      (no extra pass). Static.
    segment_ids: optional integer ids ``[N]`` of packed sequences (for
      ``'sequence_mean'`` only), as :func:`jaxkl.reduce_loss`.
    num_items_in_batch: optional count (a Python int or a 0-d array, may be
      traced) replacing the denominator of ``'mean'``, as
      :func:`jaxkl.reduce_loss`.
    student_logit_scale: optional factor > 0 of the student's logits,
      applied first. Static.
    student_logit_softcap: optional soft-cap :math:`c > 0`: the student's
      logits become :math:`c \tanh(\text{scale} \cdot x / c)` (Gemma-2;
      ``-inf`` stays ``-inf``) before the temperature. Static.
    teacher_logit_scale: as ``student_logit_scale``, for the teacher.
      Static.
    teacher_logit_softcap: as ``student_logit_softcap``, for the teacher.
      Static.

  Returns:
    The loss: a scalar, or shape ``[N]`` for ``reduction='none'``, in the
    promoted dtype of the inputs (computed in float32, or float64 for
    float64 inputs).

  Raises:
    ValueError: inconsistent shapes (``N``, ``H``, ``H_t``, ``V``, biases),
      a student vocabulary larger than the teacher's or smaller without
      ``extra_teacher_classes='zero_mass'``, bad ``chunk_size``,
      ``vocab_chunk``, ``reduction``, ``divergence``, ``beta``,
      ``extra_teacher_classes``, a convention (see
      :func:`jaxkl.distillation_loss`), or ``temperature`` (a concrete value that is
      not finite and > 0, or an array that is not 0-d).
    TypeError: non-floating inputs, non-boolean ``where``, non-integer
      ``labels``, ``chunk_size``, ``vocab_chunk`` or ``ignore_index``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    >>> h_s = jax.random.normal(k1, (6, 4))     # 6 tokens, student width 4
    >>> w_s = jax.random.normal(k2, (4, 10))    # vocabulary of 10
    >>> h_t = jax.random.normal(k3, (6, 3))     # teacher width 3
    >>> w_t = jax.random.normal(k4, (3, 10))
    >>> loss = jaxkl.fused_linear_distillation_loss(
    ...     h_s, w_s, h_t, w_t, temperature=2.0, chunk_size=2, vocab_chunk=5)
    >>> unfused = jaxkl.distillation_loss(h_s @ w_s, h_t @ w_t,
    ...                                   temperature=2.0)
    >>> bool(jnp.allclose(loss, unfused, rtol=1e-6))
    True
    >>> d_h, d_w = jax.grad(jaxkl.fused_linear_distillation_loss,
    ...                     argnums=(0, 1))(h_s, w_s, h_t, w_t, vocab_chunk=4)
    >>> d_h.shape, d_w.shape
    ((6, 4), (4, 10))

    A padded vocabulary: the last two classes masked in both heads.

    >>> pad = jnp.where(jnp.arange(10) < 8, 0.0, -jnp.inf)
    >>> masked = jaxkl.fused_linear_distillation_loss(
    ...     h_s, w_s, h_t, w_t, student_bias=pad, teacher_bias=pad)
    >>> reduced = jaxkl.distillation_loss(h_s @ w_s[:, :8], h_t @ w_t[:, :8])
    >>> bool(jnp.allclose(masked, reduced, rtol=1e-6))
    True

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531, 2015. Hsu et al., "Liger Kernel: Efficient Triton
    Kernels for LLM Training", arXiv:2410.10989, 2024 (the chunked fused
    linear losses). Milakov & Gimelshein, "Online normalizer calculation for
    softmax", arXiv:1805.02867, 2018 (the online log-sum-exp).
  """
  h_s = check_matrix(student_hidden, "student_hidden", "[N, H]")
  w_s = check_matrix(student_weight, "student_weight", "[H, V]")
  h_t = check_matrix(teacher_hidden, "teacher_hidden", "[N, H_t]")
  w_t = check_matrix(teacher_weight, "teacher_weight", "[H_t, V]")
  n, hidden = h_s.shape
  if w_s.shape[0] != hidden:
    raise ValueError(
      f"`student_weight` must have shape [H, V] with H = "
      f"student_hidden.shape[1] = {hidden} rows; got shape {w_s.shape}."
    )
  if h_t.shape[0] != n:
    raise ValueError(
      f"`teacher_hidden` must have as many rows (tokens) as "
      f"`student_hidden`, {n}; got shape {h_t.shape}."
    )
  if w_t.shape[0] != h_t.shape[1]:
    raise ValueError(
      f"`teacher_weight` must have shape [H_t, V] with H_t = "
      f"teacher_hidden.shape[1] = {h_t.shape[1]} rows; got shape "
      f"{w_t.shape}."
    )
  b_s = check_bias(student_bias, "student_bias", w_s.shape[1], "student_weight")
  b_t = check_bias(teacher_bias, "teacher_bias", w_t.shape[1], "teacher_weight")
  w_s, b_s = _match_vocabularies(w_s, b_s, w_t, extra_teacher_classes)
  args = _conventions.check_loss_arguments(
    (n,),
    where=where,
    labels=labels,
    ignore_index=ignore_index,
    reduction=reduction,
    segment_ids=segment_ids,
    num_items_in_batch=num_items_in_batch,
    divergence=divergence,
    beta=beta,
    temperature=temperature,
    student_temperature=student_temperature,
    teacher_temperature=teacher_temperature,
    temperature_scaling=temperature_scaling,
    hard_loss_weight=hard_loss_weight,
    student_logit_scale=student_logit_scale,
    student_logit_softcap=student_logit_softcap,
    teacher_logit_scale=teacher_logit_scale,
    teacher_logit_softcap=teacher_logit_softcap,
  )
  # Logits, softmaxes and accumulators: float32, or float64 if an input is.
  inputs = [x for x in (h_s, w_s, b_s, h_t, w_t, b_t) if x is not None]
  wide = any(x.dtype.itemsize > 4 for x in inputs)
  compute = jnp.float64 if wide else jnp.float32
  # The dtype of distillation_loss(h_s @ w_s + b_s, h_t @ w_t + b_t).
  out_dtype = functools.reduce(jnp.promote_types, [x.dtype for x in inputs])
  # Tokens sharded over an explicit mesh axis: one chunk of all tokens (the
  # loop then never slices the sharded axis).
  rows_spec = _checks.partition_spec(h_s)
  tokens, vocab = chunk_sizes(
    n,
    w_t.shape[1],
    chunk_size=chunk_size,
    vocab_chunk=vocab_chunk,
    dtype=compute,
    sharded_tokens=bool(rows_spec) and rows_spec[0] is not None,
  )
  config = make_config(args, n, w_t.shape[1], tokens, vocab, None)
  temperatures = args.temperatures
  ops = _Operands(
    h_s,
    w_s,
    b_s,
    h_t,
    w_t,
    b_t,
    jnp.asarray(temperatures.student, compute),
    None if config.shared else jnp.asarray(temperatures.teacher, compute),
    *row_operands(args),
  )
  return run(config, ops).astype(out_dtype)


def make_config(
  args: _conventions.LossArguments,
  tokens: int,
  classes: int,
  chunk: int,
  block: int | None,
  tail: str | None,
) -> _Config:
  """The static configuration of a call (after ``chunk_sizes``)."""
  return _Config(
    args.divergence,
    args.beta,
    args.reduction,
    Blocks.make(tokens, chunk),
    None if block is None else Blocks.make(classes, block),
    tail,
    args.conventions,
    args.temperatures.shared if tail is None else True,
  )


def row_operands(
  args: _conventions.LossArguments,
) -> tuple[jax.Array | None, jax.Array | None, jax.Array | None, jax.Array | None]:
  """``(mask, labels, segment_ids, num_items)`` operands of a call."""
  labels = args.labels if args.conventions.hard else None
  count = args.num_items_in_batch
  return (
    args.mask,
    labels,
    args.segment_ids,
    None if count is None else jnp.asarray(count),
  )


def run(config: _Config, ops: _AnyOperands) -> jax.Array:
  """The fused loss of checked operands, on one device or many.

  Inside ``shard_map`` (``check_vma=True``) every operand is first typed as
  varying over the same manual axes; operands on ``Explicit`` mesh axes run
  under ``jax.sharding.auto_axes`` (the loss replicated, or sharded as the
  tokens for ``'none'``).
  """
  varying = _varying_axes(*ops)
  ops = type(ops)(*(_to_varying(x, varying) for x in ops))  # type: ignore[arg-type]  # None stays None
  call = functools.partial(_fused_jit, config)
  mesh, explicit = _explicit_axes(*ops)
  if explicit:
    rows = _checks.partition_spec(ops.student_hidden)
    # A scalar loss is replicated; per-token losses are sharded as tokens.
    axis = rows[0] if rows and config.reduction == "none" else None
    spec = PartitionSpec() if axis is None else PartitionSpec(axis)  # type: ignore[no-untyped-call]  # PartitionSpec is unannotated
    call = jax.sharding.auto_axes(
      call, axes=explicit, out_sharding=NamedSharding(mesh, spec)
    )
  loss: jax.Array = call(ops)
  return loss


def _varying_axes(*arrays: jax.Array | None) -> tuple[str, ...]:
  """The ``shard_map`` axes over which any of ``arrays`` varies (sorted)."""
  axes: set[str] = set()
  for x in arrays:
    if x is not None:
      axes |= _checks.varying_axes(x)
  return tuple(sorted(axes))


def _to_varying(x: jax.Array | None, axes: tuple[str, ...]) -> jax.Array | None:
  """``x`` typed as varying over every axis in ``axes`` (no-op outside)."""
  if x is None:
    return None
  return _checks.pcast_varying(x, _missing_axes(x, axes))


def _missing_axes(x: jax.Array, axes: tuple[str, ...]) -> tuple[str, ...]:
  return tuple(a for a in axes if a not in _checks.varying_axes(x))


def _explicit_axes(*arrays: jax.Array | None) -> tuple[Any, tuple[str, ...]]:
  """``(mesh, its Explicit axes that shard an operand)``; ``(None, ())``.

  Only axes that actually shard an operand need ``auto_axes``: e.g. inside a
  ``shard_map`` manual over ``'data'`` on a mesh whose ``'model'`` axis is
  explicit, operands replicated over ``'model'`` run as they are.
  """
  mesh: Any = None
  used: set[str] = set()
  for x in arrays:
    if x is None:
      continue
    mesh = mesh or _checks.abstract_mesh(x)
    for entry in _checks.partition_spec(x):
      if entry is not None:
        used.update((entry,) if isinstance(entry, str) else entry)
  if mesh is None:
    return None, ()
  axes = tuple(
    name
    for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
    if kind == AxisType.Explicit and name in used
  )
  return (mesh, axes) if axes else (None, ())


def check_bias(
  bias: ArrayLike | None, name: str, vocab: int, weight_name: str
) -> jax.Array | None:
  if bias is None:
    return None
  array = _checks.as_float_array(bias, name)
  if array.shape != (vocab,):
    raise ValueError(
      f"`{name}` must have shape [V] = ({vocab},), the last axis of "
      f"`{weight_name}`; got shape {array.shape}."
    )
  return array


def _match_vocabularies(
  w_s: jax.Array, b_s: jax.Array | None, w_t: jax.Array, extra_teacher_classes: str
) -> tuple[jax.Array, jax.Array | None]:
  """The student head over the teacher's vocabulary (see the docstring)."""
  vocab = w_t.shape[1]
  if extra_teacher_classes not in ("error", "zero_mass"):
    raise ValueError(
      "`extra_teacher_classes` must be 'error' or 'zero_mass'; got "
      f"{extra_teacher_classes!r}."
    )
  student = w_s.shape[1]
  if student == vocab:
    return w_s, b_s
  if student > vocab or extra_teacher_classes == "error":
    raise ValueError(
      f"`student_weight` and `teacher_weight` must have the same vocabulary "
      f"size (last axis); got shapes {w_s.shape} and {w_t.shape}. "
      + (
        "Pass extra_teacher_classes='zero_mass' to give the teacher's extra "
        "classes zero student probability."
        if student < vocab
        else "A student vocabulary larger than the teacher's is not supported."
      )
    )
  extra = vocab - student
  w_s = jnp.pad(w_s, ((0, 0), (0, extra)))
  b_s = jnp.zeros((student,), w_s.dtype) if b_s is None else b_s
  b_s = jnp.pad(b_s, (0, extra), constant_values=-jnp.inf)
  return w_s, b_s


def chunk_sizes(
  tokens: int,
  vocab: int,
  *,
  chunk_size: int | str = "auto",
  vocab_chunk: int | str | None = "auto",
  dtype: DTypeLike = jnp.float32,
  sharded_tokens: bool = False,
) -> tuple[int, int | None]:
  """The ``(chunk_size, vocab_chunk)`` that the fused loss uses.

  Resolves ``'auto'`` by the rule of :func:`fused_linear_distillation_loss`
  (the docstring's "Chunk sizes") and validates explicit values.

  Args:
    tokens: ``N``, the number of tokens.
    vocab: ``V``, the vocabulary size.
    chunk_size: rows per chunk, or ``'auto'``.
    vocab_chunk: classes per vocabulary block, ``None`` (whole vocabulary per
      chunk) or ``'auto'``.
    dtype: the compute dtype (float32, or float64 for float64 inputs).
    sharded_tokens: whether the tokens are sharded over devices (then
      ``'auto'`` takes all tokens in one chunk).

  Returns:
    ``(rows per chunk, classes per block or None)``; both at most ``N`` and
    ``V``.

  Raises:
    TypeError, ValueError: a size that is not a positive int or ``'auto'``.
  """
  auto_rows = isinstance(chunk_size, str) and chunk_size == "auto"
  auto_vocab = isinstance(vocab_chunk, str) and vocab_chunk == "auto"
  if not auto_rows:
    _checks.check_positive_int(chunk_size, "chunk_size", "static, or 'auto'")
  if not auto_vocab and vocab_chunk is not None:
    _checks.check_positive_int(vocab_chunk, "vocab_chunk", "static, None or 'auto'")
  tokens, vocab = max(tokens, 1), max(vocab, 1)
  budget = max(1, _fused_blocks.BLOCK_BYTES // np.dtype(dtype).itemsize)
  if auto_rows and auto_vocab:
    rows, block = _fused_blocks.default_sizes(
      tokens,
      vocab,
      np.dtype(dtype).itemsize,
      sharded_tokens,
    )
  elif auto_rows:
    block = None if vocab_chunk is None else min(int(vocab_chunk), vocab)
    rows = tokens if sharded_tokens else min(tokens, max(1, budget // (block or vocab)))
  elif auto_vocab:
    rows = min(int(chunk_size), tokens)
    block = None if rows * vocab <= budget else max(1, budget // rows)
  else:
    rows = min(int(chunk_size), tokens)
    block = None if vocab_chunk is None else int(vocab_chunk)
  if block is not None and block >= vocab:
    block = None
  return min(rows, tokens), block
