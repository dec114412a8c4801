"""Top-k distillation loss fused with the student's output projection.

The teacher is given per token as its top-k classes and their
log-probabilities (``[N, k]``, as stored offline or returned by a serving
engine), the student as hidden states and an LM head. The loss is
``jaxkl.topk_distillation_loss(student_hidden @ student_weight +
student_bias, teacher_indices, teacher_log_probs, ...)`` computed a chunk of
tokens (and optionally a block of the vocabulary) at a time with the
machinery of ``_fused_linear`` (the token loop, the ``custom_vjp``, the
reduction weights, the chunk sizes, the sharding handling), whose teacher
side here is per-token rows rather than a second head; the passes over
vocabulary blocks are ``_fused_blocks.topk_*``.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _conventions
from jaxkl import _distillation
from jaxkl import _fused_linear
from jaxkl import _logits
from jaxkl import _topk


def _check_teacher(
  teacher_indices: ArrayLike, teacher_log_probs: ArrayLike, n: int, vocab: int
) -> tuple[jax.Array, jax.Array]:
  """The teacher's ``[N, k]`` indices (int32) and log-probabilities, checked."""
  log_probs = _checks.as_float_array(teacher_log_probs, "teacher_log_probs")
  indices = jnp.asarray(teacher_indices)
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f"`teacher_indices` must be integers; got dtype {indices.dtype}.")
  if indices.ndim != 2 or indices.shape[0] != n:
    raise ValueError(
      f"`teacher_indices` must have shape [N, k] with N = "
      f"student_hidden.shape[0] = {n}; got shape {indices.shape}."
    )
  if log_probs.shape != indices.shape:
    raise ValueError(
      f"`teacher_log_probs` must have the shape of `teacher_indices`, "
      f"{indices.shape}; got {log_probs.shape}."
    )
  if indices.shape[1] > vocab:
    raise ValueError(
      f"`teacher_indices` lists k = {indices.shape[1]} classes per token, more "
      f"than the vocabulary size V = {vocab} (the last axis of "
      f"`student_weight`)."
    )
  return indices.astype(jnp.int32), log_probs


def fused_linear_topk_distillation_loss(
  student_hidden: ArrayLike,
  student_weight: ArrayLike,
  teacher_indices: ArrayLike,
  teacher_log_probs: ArrayLike | None,
  *,
  student_bias: ArrayLike | None = None,
  temperature: ArrayLike = 1.0,
  divergence: _logits.Divergence = "forward",
  beta: float = 0.5,
  tail: Literal["bucket", "renormalize"] = "bucket",
  where: ArrayLike | None = None,
  labels: ArrayLike | None = None,
  ignore_index: int = -100,
  reduction: str = "mean",
  chunk_size: int | Literal["auto"] = "auto",
  vocab_chunk: int | Literal["auto"] | None = "auto",
  teacher_logits: ArrayLike | None = None,
  teacher_log_normalizer: ArrayLike | None = None,
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
  r"""Top-k distillation loss of a linear student head, without its logits.

  With student logits :math:`s_i = h_i W + b` for tokens :math:`i = 1..N`
  and the teacher given by its top-k classes :math:`c_{i1}, \dots, c_{ik}`
  with log-probabilities :math:`\log p_{ij}`,

  .. math::

     \mathcal{L} = T^2 \cdot \operatorname{reduce}_{i \in \text{tokens}}
       D_k\!\left(p_i,\ \mathrm{softmax}(s_i / T)\right),

  exactly :func:`jaxkl.topk_distillation_loss` applied to
  ``student_hidden @ student_weight + student_bias`` (same divergences, tail
  modes, temperature scaling, token masks and reductions; equal to float32
  rounding, values and gradients). :math:`D_k` is the divergence of
  :func:`jaxkl.topk_divergence_from_logits`: with ``tail='bucket'`` both
  distributions are coarse-grained onto the :math:`k` listed classes and one
  "rest" outcome (the teacher's :math:`1 - \sum_j p_{ij}`, the student's mass
  :math:`R_i` on the unlisted classes, summed in log space); with
  ``tail='renormalize'`` both are renormalized over the listed classes. The
  teacher's log-probabilities are used as given (they are not tempered: the
  student's temperature is ``student_temperature``). A slot whose
  log-probability is ``-inf`` is unused. The conventions
  (``temperature_scaling``, ``hard_loss_weight``, logit scale and soft-cap,
  ``segment_ids``, ``num_items_in_batch``, a teacher given by its logits
  and log-normalizer) are those of :func:`jaxkl.topk_distillation_loss`;
  the vocabulary passes see the student's transformed logits, and each
  block's gradient is pulled back through the transform.

  With :math:`z = s / T`, :math:`q = \mathrm{softmax}(z)`, :math:`Q_c` the
  student's mass on coarse outcome :math:`c` and
  :math:`a_c = \partial D_k / \partial \log Q_c`, the gradient with respect
  to the student logits is

  .. math::

     \frac{\partial D_k}{\partial z_v} = a_{c(v)} \frac{q_v}{Q_{c(v)}}
       - q_v \sum_c a_c,

  where :math:`q_v / Q_{c(v)} = 1` for a listed class and
  :math:`\exp(z_v) / R` for an unlisted one; it is contracted at once with
  the weights (``d hidden``) and the hidden states (``d weight``).

  **Memory.** As :func:`jaxkl.fused_linear_distillation_loss`: chunks of
  ``chunk_size`` tokens and, with ``vocab_chunk``, blocks of
  ``vocab_chunk`` classes; the largest buffers are ``[chunk_size, V]``
  (``[chunk_size, vocab_chunk]``) blocks of logits and their gradient, plus
  the ``[H, V]`` float32 accumulator of the weight's gradient; never an
  ``[N, V]`` buffer. The teacher costs ``[N, k]``.

  **Passes over the vocabulary.** Without vocabulary blocks each chunk's
  logits are computed once per step, and the per-row code of
  :func:`jaxkl.topk_divergence_from_logits` with its closed-form gradient
  runs on them (twice with gradients for ``reduction='none'``: the backward
  pass recomputes the chunk). With vocabulary blocks, one streaming pass
  gives the student's maximum, log-normalizer, unlisted log-mass (the block's
  listed classes are excluded by a ``[chunk, vocab_chunk]`` mask scattered
  from the indices) and its logits at the listed classes; the divergence then
  follows from these ``k + 1`` coarse masses without another pass. The
  logits are computed 1 time for the value alone and 2 times with gradients
  (every reduction: the second pass computes the gradient block by block).

  **Chunk sizes** (``'auto'``): the rule of
  :func:`jaxkl.fused_linear_distillation_loss` (a budget of 32 MiB per
  ``[chunk, block]`` buffer).

  **Gradients.** Reverse mode (``jax.grad``, ``jax.vjp``); ``jax.jvp`` of the
  loss raises a ``TypeError`` (a ``jax.custom_vjp``). Gradients are computed
  only for the arguments being differentiated: ``student_hidden``,
  ``student_weight``, ``student_bias``, the student's temperature (exact,
  from the same pass: each block's gradient is pulled back through
  ``transform(s) / T``), ``teacher_log_probs`` (per token, from the coarse
  masses, no pass) and, through them, ``teacher_logits`` and
  ``teacher_log_normalizer``. Second derivatives are not supported with
  vocabulary blocks (the gradient pass is in closed form).

  **Dtypes.** The matmuls take their operands in their promoted dtype (e.g.
  bfloat16) and accumulate in float32; the softmax statistics, the
  divergences, the reduction and the weight-gradient accumulation are
  float32 (float64 when an input is). The loss has the promoted dtype of
  ``student_hidden``, ``student_weight`` and ``student_bias`` (the logits'),
  as :func:`jaxkl.topk_distillation_loss` returns for those logits;
  gradients have their input's dtype.

  **Indices.** Listed (valid) indices must be distinct and in ``[0, V)``:
  an out-of-range index is a class whose student logit is ``-inf`` (forward
  KL ``+inf`` where the teacher gives it mass); duplicates are counted twice
  (not a divergence; the caller's responsibility), as in
  :func:`jaxkl.topk_divergence_from_logits`.

  **Many devices.** As :func:`jaxkl.fused_linear_distillation_loss` (tokens
  sharded over data-parallel devices, a vocabulary-sharded head with strided
  blocks, ``Explicit`` axes under ``auto_axes``, ``shard_map``); the teacher's
  ``[N, k]`` rows are sharded as the tokens.

  Args:
    student_hidden: :math:`h`, shape ``[N, H]`` (flatten batch and sequence
      axes into ``N``).
    student_weight: :math:`W`, shape ``[H, V]`` (a ``flax.linen.Dense``
      kernel; the transpose of a ``torch.nn.Linear`` weight).
    teacher_indices: the teacher's listed classes, integers of shape
      ``[N, k]``, ``k <= V``.
    teacher_log_probs: their log-probabilities, shape ``[N, k]``; ``-inf``
      marks an unused slot (its index is ignored).
    student_bias: optional :math:`b`, shape ``[V]``; ``-inf`` entries mask
      classes.
    temperature: :math:`T > 0` of both models, a Python float or a 0-d
      array (a concrete value is checked to be finite and > 0; a traced one
      is not); with ``teacher_log_probs`` it must be 1: use
      ``student_temperature``.
    divergence: ``'forward'`` (:math:`D_{\mathrm{KL}}(P \,\|\, Q)`),
      ``'reverse'`` or ``'jsd'`` (Liger's :math:`\beta`). Static.
    beta: JSD weight in ``[0, 1]`` (``'jsd'`` only). Static.
    tail: ``'bucket'`` or ``'renormalize'`` (see above). Static.
    where: optional boolean mask of tokens, shape ``[N]``; ``True`` keeps.
      Excluded tokens may hold anything (NaN hidden states or
      log-probabilities): they reach neither the loss nor any gradient.
    labels: optional integer labels, shape ``[N]``; tokens whose label is
      ``ignore_index`` are excluded.
    ignore_index: the label value to exclude. Static.
    reduction: ``'mean'`` (over kept tokens; 0 if none is kept),
      ``'sum'``, ``'batchmean'`` (sum divided by ``N``), ``'sequence_mean'``
      or ``'none'`` (per-token losses, masked tokens 0). Static.
    chunk_size: rows per chunk, a positive int, or ``'auto'``. Static.
    vocab_chunk: classes per vocabulary block, a positive int, ``None`` (the
      whole vocabulary per chunk) or ``'auto'``. Static.
    teacher_logits: instead of ``teacher_log_probs`` (pass None there): the
      teacher's logits at the listed classes, ``[N, k]``, with
      ``teacher_log_normalizer`` ``[N]``, the log-sum-exp of all the
      teacher's (transformed) logits divided by ``teacher_temperature``;
      then :math:`\log p_{ij} = t_{ij} / T_t - \log Z_i`, as
      :func:`jaxkl.topk_distillation_loss`. Both may be differentiated.
    teacher_log_normalizer: see ``teacher_logits``.
    student_temperature: the student's :math:`T`; defaults to
      ``temperature``.
    teacher_temperature: defaults to ``temperature``; with
      ``teacher_log_probs`` it must be 1 (log-probabilities cannot be
      re-tempered without the teacher's normalizer), so with log-probabilities
      set the student's temperature by ``student_temperature``.
    temperature_scaling: ``'square'`` (times :math:`T_s^2`, the default) or
      ``'none'``. Static.
    hard_loss_weight: :math:`\alpha \in [0, 1]`: per token :math:`\alpha`
      times the cross-entropy with ``labels`` at temperature 1 plus
      :math:`1 - \alpha` times the scaled soft loss; needs ``labels``. Its
      log-normalizer is streamed in the first pass over the vocabulary (no
      extra pass). Static.
    segment_ids: optional integer ids ``[N]`` of packed sequences, for
      ``reduction='sequence_mean'`` (see :func:`jaxkl.reduce_loss`).
    num_items_in_batch: optional count (Python int or 0-d array, may be
      traced) replacing the denominator of ``'mean'``.
    student_logit_scale: optional factor > 0 of the student's logits,
      applied first. Static.
    student_logit_softcap: optional soft-cap :math:`c > 0`: the student's
      logits become :math:`c \tanh(\text{scale} \cdot s / c)` before the
      temperature. Static.
    teacher_logit_scale: as ``student_logit_scale``, for
      ``teacher_logits`` (an error with ``teacher_log_probs``). Static.
    teacher_logit_softcap: as ``student_logit_softcap``, for
      ``teacher_logits`` (an error with ``teacher_log_probs``). Static.

  Returns:
    The loss: a scalar, or shape ``[N]`` for ``reduction='none'``, in the
    promoted dtype of the student's inputs (computed in float32, or float64
    for float64 inputs).

  Raises:
    ValueError: inconsistent shapes (``N``, ``H``, ``V``, ``k``, the bias),
      ``k > V``, a teacher temperature other than 1 or a teacher transform
      with ``teacher_log_probs``, a bad convention (see :func:`jaxkl.topk_distillation_loss`), bad ``chunk_size``, ``vocab_chunk``, ``reduction``,
      ``divergence``, ``beta``, ``tail`` or ``temperature`` (a concrete value
      that is not finite and > 0, or an array that is not 0-d).
    TypeError: non-floating hidden states, weights or log-probabilities,
      non-integer ``teacher_indices`` or ``labels``, a non-boolean
      ``where``, non-integer ``chunk_size``, ``vocab_chunk`` or
      ``ignore_index``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    >>> h = jax.random.normal(k1, (6, 4))          # 6 tokens, width 4
    >>> w = jax.random.normal(k2, (4, 10))         # vocabulary of 10
    >>> teacher = jax.nn.log_softmax(jax.random.normal(k3, (6, 10)))
    >>> log_p, idx = jax.lax.top_k(teacher, 3)     # the teacher's top 3
    >>> loss = jaxkl.fused_linear_topk_distillation_loss(
    ...     h, w, idx, log_p, student_temperature=2.0, chunk_size=4,
    ...     vocab_chunk=4)
    >>> unfused = jaxkl.topk_divergence_from_logits(
    ...     h @ w, idx, log_p, temperature=2.0).mean() * 2.0**2
    >>> bool(jnp.allclose(loss, unfused, rtol=1e-5))
    True
    >>> d_h, d_w = jax.grad(jaxkl.fused_linear_topk_distillation_loss,
    ...                     argnums=(0, 1))(h, w, idx, log_p, vocab_chunk=4)
    >>> d_h.shape, d_w.shape
    ((6, 4), (4, 10))

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531, 2015. Hsu et al., "Liger Kernel: Efficient Triton
    Kernels for LLM Training", arXiv:2410.10989, 2024 (chunked fused linear
    losses). Milakov & Gimelshein, "Online normalizer calculation for
    softmax", arXiv:1805.02867, 2018 (the online log-sum-exp).
  """
  h = _fused_linear.check_matrix(student_hidden, "student_hidden", "[N, H]")
  w = _fused_linear.check_matrix(student_weight, "student_weight", "[H, V]")
  n, width = h.shape
  if w.shape[0] != width:
    raise ValueError(
      f"`student_weight` must have shape [H, V] with H = "
      f"student_hidden.shape[1] = {width} rows; got shape {w.shape}."
    )
  vocab = w.shape[1]
  b = _fused_linear.check_bias(student_bias, "student_bias", vocab, "student_weight")
  tail = _topk.check_tail(tail)
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
  # The teacher's log-probabilities at its slots (given, or from its logits
  # and log-normalizer: plain JAX, differentiable through the operand).
  log_probs = _distillation._topk_teacher(
    teacher_indices,
    teacher_log_probs,
    teacher_logits,
    teacher_log_normalizer,
    args,
    (n,),
  )
  indices, log_probs = _check_teacher(teacher_indices, log_probs, n, vocab)
  student = [x for x in (h, w, b) if x is not None]
  wide = any(x.dtype.itemsize > 4 for x in (*student, log_probs))
  compute = jnp.float64 if wide else jnp.float32
  out_dtype = functools.reduce(jnp.promote_types, [x.dtype for x in student])
  rows_spec = _checks.partition_spec(h)
  tokens, block = _fused_linear.chunk_sizes(
    n,
    vocab,
    chunk_size=chunk_size,
    vocab_chunk=vocab_chunk,
    dtype=compute,
    sharded_tokens=bool(rows_spec) and rows_spec[0] is not None,
  )
  config = _fused_linear.make_config(args, n, vocab, tokens, block, tail)
  ops = _fused_linear._TopKOperands(
    h,
    w,
    b,
    log_probs,
    jnp.asarray(args.temperatures.student, compute),
    indices,
    *_fused_linear.row_operands(args),
  )
  return _fused_linear.run(config, ops).astype(out_dtype)
