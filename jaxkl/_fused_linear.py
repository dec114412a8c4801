"""Distillation loss fused with the output projections, chunked over tokens.

In LLM distillation the logits are ``hidden @ weight`` with a vocabulary of up
to ~256k entries: for N tokens, the student and teacher logits, their softmaxes
and the gradient of the loss with respect to the logits are several
``[N, V]`` buffers, which dominate the memory of a training step. This module
computes the same loss as ``jaxkl.distillation_loss(student_hidden @
student_weight, teacher_hidden @ teacher_weight, ...)`` a block of
``chunk_size`` tokens at a time, so that at most one ``[chunk, V]`` block of
logits (and its softmax and gradient) exists at any time, in the forward pass
and in the backward pass.

Design (see ``benchmarks/bench_fused_linear.py`` for the measurements):

* A ``jax.custom_vjp`` around a ``lax.fori_loop`` over row chunks. Each
  iteration computes the two ``[chunk, V]`` logit blocks with float32
  accumulation, the per-token losses with the same per-row code as
  ``jaxkl.divergence_from_logits`` and, when differentiating, the gradient of
  the chunk's losses with respect to its logits (``jax.vjp`` of that per-row
  code), which is immediately contracted with the weights (``d hidden``, one
  ``[chunk, H]`` block written into the result) and with the hidden states
  (``d weight``, accumulated in a float32 ``[H, V]`` carry).
* Scalar reductions (``'mean' | 'sum' | 'batchmean'``) are linear in the
  per-token losses, so the per-token weight of each loss (the gradient of
  ``jaxkl.reduce_loss``) is known before the loop: the forward pass of
  ``jax.grad`` computes the gradients in the same loop as the loss and the
  backward pass only multiplies them by the incoming cotangent. The logits are
  computed once per step, as in the unfused loss. ``'none'`` returns per-token
  losses whose cotangent is only known in the backward pass, which therefore
  recomputes the logits chunk by chunk.
* Only the inputs that are being differentiated get gradients computed (the
  ``perturbed`` flags of ``custom_vjp``'s symbolic zeros): a frozen teacher
  costs nothing, while a teacher (or temperature) that *is* differentiated gets
  its exact gradient.
* ``N`` need not be a multiple of ``chunk_size``: the last chunk is then the
  last ``chunk_size`` rows, overlapping the previous one, and its rows that
  are already done are given zero weight and keep their first results. Unlike
  padding, this copies nothing, and the loop has a single compiled body.

The chunking idea is the one of Liger-Kernel's fused linear losses (Hsu et al.,
"Liger Kernel: Efficient Triton Kernels for LLM Training", arXiv:2410.10989,
2024); the code here is written from the formulas.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from jaxkl import _checks
from jaxkl import _logits
from jaxkl import _reduction


class _Config(NamedTuple):
  """Static options of the fused loss (hashable: a ``nondiff_argnums``)."""

  divergence: _logits.Divergence
  beta: float
  reduction: str
  chunk_size: int


class _Needs(NamedTuple):
  """Which gradients the loop computes (static)."""

  student_hidden: bool = False
  student_weight: bool = False
  teacher_hidden: bool = False
  teacher_weight: bool = False
  temperature: bool = False

  def any(self) -> bool:
    return any(self)


_NO_GRADS = _Needs()

# (student_hidden, student_weight, teacher_hidden, teacher_weight,
# temperature, mask): the whole arrays, mask None when all tokens count.
_Operands = tuple[
  jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, "jax.Array | None"
]
# Gradient blocks by argument name (the fields of ``_Needs``).
_Grads = dict[str, jax.Array]
# What the forward pass keeps for the backward pass: the names of the
# gradients needed (dict keys: static), the operands, and the gradients when
# they were computed with the loss (scalar reductions).
_Residuals = tuple[dict[str, None], _Operands, "_Grads | None"]
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


def _chunk(
  config: _Config,
  needs: _Needs,
  operands: _Operands,
  start: jax.Array,
  size: int,
  cotangent: jax.Array | None,
  fresh: jax.Array | None,
) -> tuple[jax.Array, _Grads | None]:
  """Losses of rows ``[start, start + size)`` and their gradient blocks.

  Args:
    config: the static options.
    needs: which gradients to compute (all False: the losses only).
    operands: ``(student_hidden, student_weight, teacher_hidden,
      teacher_weight, temperature, mask)``, the whole arrays.
    start: first row, a traced int32.
    size: number of rows, a Python int.
    cotangent: ``[N]`` weights of the per-token losses in the gradient
      (ignored when nothing is needed).
    fresh: None, or a ``[size]`` boolean mask of the rows that no earlier
      chunk handled; the others get zero weight in the gradients.

  Returns:
    ``(losses [size], grads)`` where ``grads`` holds ``d student_hidden``
    ``[size, H]``, ``d student_weight`` ``[H, V]``, ``d teacher_hidden``
    ``[size, H_t]``, ``d teacher_weight`` ``[H_t, V]`` and ``d temperature``,
    each None unless needed, in the compute dtype.
  """
  h_s, w_s, h_t, w_t, temperature, mask = operands
  compute = temperature.dtype

  def rows(x: jax.Array) -> jax.Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis=0)

  h_s_c, h_t_c = rows(h_s), rows(h_t)
  mask_c = None if mask is None else rows(mask)
  # Excluded tokens may hold anything (NaN hidden states of padding): their
  # hidden states are replaced by 0, so that ``0 * NaN`` cannot reach the
  # weight gradients (``h.T @ d logits``); their logits are replaced again
  # inside the per-row code (``inf * 0`` from a -inf bias row).
  h_s_c = _logits.zero_dropped_examples(h_s_c, mask_c, (1,))
  h_t_c = _logits.zero_dropped_examples(h_t_c, mask_c, (1,))
  s = _matmul(h_s_c, w_s, _LOGITS_DIMS, compute)
  t = _matmul(h_t_c, w_t, _LOGITS_DIMS, compute)
  if not needs.any():
    return _chunk_losses(config, s, t, temperature, mask_c), None

  def losses_fn(s: jax.Array, t: jax.Array, temperature: jax.Array) -> jax.Array:
    return _chunk_losses(config, s, t, temperature, mask_c)

  losses, vjp = jax.vjp(losses_fn, s, t, temperature)
  assert cotangent is not None  # gradients need their weights
  weights = rows(cotangent).astype(compute)
  if fresh is not None:
    weights = jnp.where(fresh, weights, 0)
  ds, dt, d_temperature = vjp(weights)
  grads: _Grads = {}
  # The gradient blocks enter the matmuls in the operands' dtype (float32
  # accumulation), as the unfused loss's backward pass does.
  if needs.student_hidden:
    grads["student_hidden"] = _matmul(
      ds.astype(w_s.dtype), w_s, _D_HIDDEN_DIMS, compute
    )
  if needs.student_weight:
    grads["student_weight"] = _weight_grad(h_s_c, ds.astype(h_s.dtype), compute)
  if needs.teacher_hidden:
    grads["teacher_hidden"] = _matmul(
      dt.astype(w_t.dtype), w_t, _D_HIDDEN_DIMS, compute
    )
  if needs.teacher_weight:
    grads["teacher_weight"] = _weight_grad(h_t_c, dt.astype(h_t.dtype), compute)
  if needs.temperature:
    grads["temperature"] = d_temperature
  return losses, grads


def _loop(
  config: _Config,
  needs: _Needs,
  operands: _Operands,
  cotangent: jax.Array | None = None,
) -> tuple[jax.Array, _Grads]:
  """Runs ``_chunk`` over all rows; returns per-token losses and gradients.

  The rows are processed in ``ceil(N / c)`` chunks of ``c = min(chunk_size,
  N)`` rows by one ``lax.fori_loop``. When ``c`` does not divide ``N``, the
  last chunk is the last ``c`` rows, overlapping the previous chunk: its rows
  already done get zero weight in the gradients and keep their earlier
  results (no padding, no copy of the inputs, one compiled chunk; at most
  ``c - 1`` rows are computed twice). The gradients with respect to the hidden
  states are written block by block into ``[N, H]`` buffers of the hidden
  states' dtype; those with respect to the weights and the temperature are
  accumulated in the compute dtype.
  """
  h_s, w_s, h_t, w_t, temperature, _ = operands
  compute = temperature.dtype
  n = h_s.shape[0]
  size = max(1, min(config.chunk_size, n))
  steps = -(-n // size)
  overlap = n % size != 0

  carry: _Grads = {"losses": jnp.zeros((n,), compute)}
  if needs.student_hidden:
    carry["student_hidden"] = jnp.zeros(h_s.shape, h_s.dtype)
  if needs.student_weight:
    carry["student_weight"] = jnp.zeros(w_s.shape, compute)
  if needs.teacher_hidden:
    carry["teacher_hidden"] = jnp.zeros(h_t.shape, h_t.dtype)
  if needs.teacher_weight:
    carry["teacher_weight"] = jnp.zeros(w_t.shape, compute)
  if needs.temperature:
    carry["temperature"] = jnp.zeros((), compute)

  def write(
    buffer: jax.Array, block: jax.Array, start: jax.Array, fresh: jax.Array | None
  ) -> jax.Array:
    """Stores ``block`` as rows ``start...``, keeping rows not ``fresh``."""
    block = block.astype(buffer.dtype)
    if fresh is not None:
      old = lax.dynamic_slice_in_dim(buffer, start, size, axis=0)
      fresh = fresh.reshape(fresh.shape + (1,) * (block.ndim - 1))
      block = jnp.where(fresh, block, old)
    return lax.dynamic_update_slice_in_dim(buffer, block, start, axis=0)

  def body(i: jax.Array, carry: _Grads) -> _Grads:
    start = i * size
    fresh: jax.Array | None = None
    if overlap:
      start = jnp.minimum(start, n - size)
      fresh = start + jnp.arange(size) >= i * size
    losses, grads = _chunk(config, needs, operands, start, size, cotangent, fresh)
    carry = dict(carry)
    carry["losses"] = write(carry["losses"], losses, start, fresh)
    for name, value in (grads or {}).items():
      if name in ("student_hidden", "teacher_hidden"):
        carry[name] = write(carry[name], value, start, fresh)
      else:
        carry[name] = carry[name] + value
    return carry

  if steps:
    carry = lax.fori_loop(0, steps, body, carry)
  losses = carry.pop("losses")
  return losses, carry


def _reduction_vjp(
  config: _Config, mask: jax.Array | None, n: int, dtype: DTypeLike
) -> Callable[[jax.Array], jax.Array]:
  """The (linear) map from the reduced loss' cotangent to per-token weights."""

  def reduce(values: jax.Array) -> jax.Array:
    return _reduction.reduce_loss(values, config.reduction, where=mask)

  _, vjp = jax.vjp(reduce, jnp.zeros((n,), dtype))

  def weights(g: jax.Array) -> jax.Array:
    per_token: jax.Array = vjp(g)[0]
    return per_token

  return weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(
  config: _Config,
  h_s: jax.Array,
  w_s: jax.Array,
  h_t: jax.Array,
  w_t: jax.Array,
  temperature: jax.Array,
  mask: jax.Array | None,
) -> jax.Array:
  losses, _ = _loop(config, _NO_GRADS, (h_s, w_s, h_t, w_t, temperature, mask))
  return _reduction.reduce_loss(losses, config.reduction, where=mask)


def _fused_fwd(
  config: _Config,
  h_s: CustomVJPPrimal,
  w_s: CustomVJPPrimal,
  h_t: CustomVJPPrimal,
  w_t: CustomVJPPrimal,
  temperature: CustomVJPPrimal,
  mask: CustomVJPPrimal | None,
) -> tuple[jax.Array, _Residuals]:
  needs = _Needs(
    h_s.perturbed, w_s.perturbed, h_t.perturbed, w_t.perturbed, temperature.perturbed
  )
  operands: _Operands = (
    h_s.value,
    w_s.value,
    h_t.value,
    w_t.value,
    temperature.value,
    None if mask is None else mask.value,
  )
  token_mask = operands[5]
  n, compute = operands[0].shape[0], operands[4].dtype
  # `needs` travels as the keys of a dict of Nones: pytree structure, static
  # under every transformation (unlike Python bools as leaves).
  needs_keys = {name: None for name, need in needs._asdict().items() if need}
  if config.reduction == "none":
    losses, _ = _loop(config, _NO_GRADS, operands)
    value = _reduction.reduce_loss(losses, config.reduction, where=token_mask)
    return value, (needs_keys, operands, None)
  # Scalar reduction: loss = sum_i weight_i * loss_i, weights known now.
  weights = _reduction_vjp(config, token_mask, n, compute)(jnp.ones((), compute))
  losses, grads = _loop(config, needs, operands, weights)
  value = _reduction.reduce_loss(losses, config.reduction, where=token_mask)
  return value, (needs_keys, operands, grads)


def _fused_bwd(
  config: _Config, residuals: _Residuals, g: jax.Array | SymbolicZero
) -> tuple[jax.Array | None, ...]:
  needs_keys, operands, grads = residuals
  if isinstance(g, SymbolicZero):
    return (None,) * 6
  compute = operands[4].dtype
  if config.reduction == "none":
    needs = _Needs(**dict.fromkeys(needs_keys, True))
    weights = _reduction_vjp(config, operands[5], operands[0].shape[0], compute)(
      g.astype(compute)
    )
    _, grads = _loop(config, needs, operands, weights)
    scale = None
  else:
    assert grads is not None  # computed in the forward pass
    scale = g.astype(compute)
  cotangents: list[jax.Array | None] = []
  for name, operand in zip(_Needs._fields, operands, strict=False):
    if name not in grads:
      cotangents.append(None)
      continue
    grad = grads[name]
    if scale is not None:
      grad = grad.astype(compute) * scale
    assert operand is not None  # the mask gets no gradient
    cotangents.append(grad.astype(operand.dtype))
  return (*tuple(cotangents), None)


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)

# Compiled as a whole even when called outside jit (op-by-op dispatch of the
# loop's remainder chunk and of the custom_vjp rules is slow); inlined under
# an outer jit.
_fused_jit = jax.jit(_fused, static_argnums=0)


def _check_matrix(value: ArrayLike, name: str, shape_name: str) -> jax.Array:
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
  temperature: ArrayLike = 1.0,
  divergence: _logits.Divergence = "forward",
  beta: float = 0.5,
  where: ArrayLike | None = None,
  labels: ArrayLike | None = None,
  ignore_index: int = -100,
  reduction: str = "mean",
  chunk_size: int = 1024,
) -> jax.Array:
  r"""Distillation loss of two linear heads, without materializing the logits.

  With student logits :math:`s_i = h^S_i W_S` and teacher logits
  :math:`t_i = h^T_i W_T` for tokens :math:`i = 1..N`,

  .. math::

     \mathcal{L} = T^2 \cdot \operatorname{reduce}_{i \in \text{tokens}}
       D\!\left(\mathrm{softmax}(t_i / T),\ \mathrm{softmax}(s_i / T)\right),

  exactly :func:`jaxkl.distillation_loss` applied to
  ``student_hidden @ student_weight`` and ``teacher_hidden @ teacher_weight``
  (same divergences, temperature scaling, token masks and reductions; equal
  to float32 rounding, values and gradients). For the forward KL the gradient
  with respect to the student weight is

  .. math::

     \frac{\partial \mathcal{L}}{\partial W_S} = \sum_i w_i\, T\,
       {h^S_i}^{\top} \left(\mathrm{softmax}(s_i/T) -
       \mathrm{softmax}(t_i/T)\right),

  with :math:`w_i` the reduction's weight of token :math:`i` (e.g.
  :math:`m_i / \sum_j m_j` for ``'mean'`` under a mask :math:`m`).

  **Memory.** The tokens are processed in chunks of ``chunk_size`` rows: at
  most one ``[chunk_size, V]`` block of logits (student and teacher, their
  softmaxes and their gradient) exists at a time, in the forward and in the
  backward pass, so the working memory is
  :math:`O(\text{chunk\_size} \cdot V + H \cdot V)` (the ``[H, V]`` float32
  accumulator of the weight's gradient) on top of the inputs and the
  ``[N, H]`` gradients, instead of :math:`O(N \cdot V)` for the unfused loss.
  When ``N`` is not a multiple of ``chunk_size``, the last chunk is the last
  ``chunk_size`` rows, overlapping the previous chunk (whose rows it leaves
  as they are): nothing is padded or copied, and fewer than ``chunk_size``
  rows are computed twice. Larger chunks make bigger, faster matmuls and
  fewer passes over the ``[H, V]`` accumulator; 256-1024 rows is a good
  start (see ``benchmarks/bench_fused_linear.py``).

  **Gradients.** Reverse mode (``jax.grad``, ``jax.vjp``,
  ``jax.value_and_grad``): the function is a ``jax.custom_vjp``, so
  ``jax.jvp`` (and ``jax.jacfwd``) of the loss itself raise a ``TypeError``.
  Higher derivatives taken by reverse mode first work and are exact, since
  the chunked passes are ordinary differentiable JAX code: forward over
  reverse (``jax.hessian``, ``jax.jvp`` of ``jax.grad``, Hessian-vector
  products) keeps the chunked memory profile, while reverse over reverse
  (``jax.grad(jax.grad(...))``) stores every chunk's ``[chunk_size, V]``
  intermediates. Gradients are computed only for the arguments being
  differentiated: for a scalar ``reduction`` they are computed in the same
  pass over the chunks as the loss (the logits are computed once); for
  ``'none'`` the backward pass recomputes the logits chunk by chunk. The
  teacher is treated like any other input, as in
  :func:`jaxkl.distillation_loss`: if you differentiate with respect to
  ``teacher_hidden``, ``teacher_weight`` or ``temperature`` you get their
  exact gradients (at the cost of two more matmuls per chunk for the teacher);
  a frozen teacher (not differentiated, or wrapped in
  ``jax.lax.stop_gradient``) costs nothing.

  **Dtypes.** Each matmul takes its operands in their promoted dtype (e.g.
  bfloat16) and accumulates in float32 (``preferred_element_type``); the
  softmaxes, the divergences, the reduction and the weight-gradient
  accumulation are float32 (float64 for float64 inputs). The loss is returned
  in the dtype :func:`jaxkl.distillation_loss` returns for the logits
  ``student_hidden @ student_weight`` and ``teacher_hidden @ teacher_weight``:
  the promoted dtype of the inputs (bfloat16 for bfloat16 inputs), as
  everywhere in jaxkl. Gradients are returned in the dtype of the
  corresponding input.

  **Masked classes.** A class can be given zero probability in both models
  (e.g. vocabulary padding) with a ``-inf`` bias: append a feature of ones to
  each hidden state and a weight row holding ``-inf`` at the masked classes
  and 0 elsewhere. The loss, its derivatives (of every order) with respect to
  the weights and to the other hidden features, and the temperature's, are
  then those of the vocabulary without the class, and the masked columns of
  the weight gradients are 0. The gradient with respect to the appended
  ones-feature itself is NaN (``0 * -inf`` in ``d hidden = d logits @
  weight.T``, as for the unfused loss); it is a constant, so nothing
  should differentiate it.

  **Many devices** (tested on 8 devices in ``tests/_sharding_checks.py``).
  Under ``jax.jit`` with ``Auto`` mesh axes (the default), weights sharded
  over the vocabulary (``[H, V]`` with ``PartitionSpec(None, 'model')``)
  are handled well: each device computes ``[chunk, V / devices]`` logit
  blocks, only ``[chunk]``-sized statistics are all-reduced, and the weight
  gradient keeps the weights' sharding. Hidden states sharded over tokens
  give the same values and gradients, but the chunk loop slices the token
  axis, so GSPMD all-gathers the hidden states and every device processes
  all tokens (no token parallelism; the ``[N, H]`` gradient comes back
  replicated). For token (data) parallelism call the loss per device inside
  ``jax.shard_map`` with ``reduction='sum'`` and ``psum`` the sums (and the
  token counts, for a mean); this currently needs
  ``shard_map(..., check_vma=False)``, because the loop's zero-initialized
  accumulators and cotangent seeds are not typed as varying over the mesh
  axis. Inputs sharded
  over ``Explicit`` mesh axes are not supported yet: tracing raises
  ``ShardingTypeError`` (the loop's accumulators are created unsharded).

  Args:
    student_hidden: :math:`h^S`, shape ``[N, H]`` (flatten batch and sequence
      axes into ``N``).
    student_weight: :math:`W_S`, shape ``[H, V]``: input features by
      vocabulary, the layout of a ``flax.linen.Dense`` kernel (the transpose
      of a ``torch.nn.Linear`` weight). Logits are ``student_hidden @
      student_weight``; add any bias as an extra hidden feature of ones.
    teacher_hidden: :math:`h^T`, shape ``[N, H_t]`` (``H_t`` may differ from
      ``H``).
    teacher_weight: :math:`W_T`, shape ``[H_t, V]``, the same vocabulary.
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
    reduction: ``'mean'`` (over kept tokens; 0 if none is kept), ``'sum'``,
      ``'batchmean'`` (sum divided by ``N``) or ``'none'`` (per-token losses,
      masked tokens 0). Static.
    chunk_size: rows per chunk, a positive int. Static.

  Returns:
    The loss: a scalar, or shape ``[N]`` for ``reduction='none'``, in the
    promoted dtype of the four inputs (computed in float32, or float64 for
    float64 inputs).

  Raises:
    ValueError: inconsistent shapes (``N``, ``H``, ``H_t``, ``V``), bad
      ``chunk_size``, ``reduction``, ``divergence``, ``beta`` or
      ``temperature`` (a concrete value that is not finite and > 0, or an
      array that is not 0-d).
    TypeError: non-floating inputs, non-boolean ``where``, non-integer
      ``labels``, ``chunk_size`` or ``ignore_index``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    >>> h_s = jax.random.normal(k1, (5, 4))     # 5 tokens, student width 4
    >>> w_s = jax.random.normal(k2, (4, 7))     # vocabulary of 7
    >>> h_t = jax.random.normal(k3, (5, 3))     # teacher width 3
    >>> w_t = jax.random.normal(k4, (3, 7))
    >>> loss = jaxkl.fused_linear_distillation_loss(
    ...     h_s, w_s, h_t, w_t, temperature=2.0, chunk_size=2)
    >>> unfused = jaxkl.distillation_loss(h_s @ w_s, h_t @ w_t,
    ...                                   temperature=2.0)
    >>> bool(jnp.allclose(loss, unfused, rtol=1e-6))
    True
    >>> d_h, d_w = jax.grad(jaxkl.fused_linear_distillation_loss,
    ...                     argnums=(0, 1))(h_s, w_s, h_t, w_t, chunk_size=2)
    >>> d_h.shape, d_w.shape
    ((5, 4), (4, 7))

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531, 2015. Hsu et al., "Liger Kernel: Efficient Triton
    Kernels for LLM Training", arXiv:2410.10989, 2024 (the chunked fused
    linear losses).
  """
  h_s = _check_matrix(student_hidden, "student_hidden", "[N, H]")
  w_s = _check_matrix(student_weight, "student_weight", "[H, V]")
  h_t = _check_matrix(teacher_hidden, "teacher_hidden", "[N, H_t]")
  w_t = _check_matrix(teacher_weight, "teacher_weight", "[H_t, V]")
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
  if w_t.shape[1] != w_s.shape[1]:
    raise ValueError(
      f"`student_weight` and `teacher_weight` must have the same vocabulary "
      f"size (last axis); got shapes {w_s.shape} and {w_t.shape}."
    )
  _checks.check_positive_int(chunk_size, "chunk_size", "static")
  if not isinstance(ignore_index, (int, np.integer)) or isinstance(
    ignore_index, (bool, np.bool_)
  ):
    raise TypeError(f"`ignore_index` must be an int; got {ignore_index!r}.")
  reduction = _reduction.validate_reduction(reduction)
  divergence, beta = _logits.check_divergence(divergence, beta)
  temperature = _logits.check_temperature(temperature)
  mask = _logits.token_mask((n,), where, labels, ignore_index)
  # Logits, softmaxes and accumulators: float32, or float64 if an input is.
  wide = any(x.dtype.itemsize > 4 for x in (h_s, w_s, h_t, w_t))
  compute = jnp.float64 if wide else jnp.float32
  # The dtype of distillation_loss(h_s @ w_s, h_t @ w_t): that of the logits.
  out_dtype = jnp.promote_types(
    jnp.promote_types(h_s.dtype, w_s.dtype), jnp.promote_types(h_t.dtype, w_t.dtype)
  )
  temperature = jnp.asarray(temperature, compute)
  config = _Config(divergence, beta, reduction, int(chunk_size))
  loss: jax.Array = _fused_jit(config, h_s, w_s, h_t, w_t, temperature, mask)
  return loss.astype(out_dtype)
