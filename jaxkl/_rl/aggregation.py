"""verl's loss-aggregation modes: per-token values to one scalar loss.

An RL fine-tuning loss (policy gradient, KL, entropy) is a ``[..., T]`` array
of per-token values under a response mask; *how* it is averaged decides how
much each token and each sequence weighs, and so the length bias of the
update. The modes and their names are verl's (``loss_agg_mode``), so configs
port unchanged; the global normalizer ``num_items`` makes the losses of
micro-batches and data-parallel shards add up to the full batch's.
"""

from __future__ import annotations

from typing import Literal
from typing import get_args

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _per_example
from jaxkl import _reduction

AggregationMode = Literal[
  "token-mean",
  "token-sum",
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
]
MODES: tuple[str, ...] = get_args(AggregationMode)
# The modes that divide by a count, and so take the global count `num_items`.
_COUNTED: tuple[str, ...] = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def _validate_mode(mode: object) -> str:
  if isinstance(mode, str) and mode in MODES:
    return mode
  raise ValueError(
    f"`mode` must be one of {', '.join(map(repr, MODES))}; got {mode!r}."
  )


def _check_num_items(num_items: ArrayLike | None, mode: str) -> ArrayLike | None:
  """Validates the global count; refuses it where the mode divides by none."""
  if num_items is None:
    return None
  if mode not in _COUNTED:
    raise ValueError(
      f"`num_items` replaces the count that mode={mode!r} would divide by, "
      f"but that mode divides by no count (a sum, or a sum over the constant "
      f"`horizon`): the losses of micro-batches add up without it. Drop "
      f"`num_items`, or use one of {', '.join(map(repr, _COUNTED))}."
    )
  _reduction.check_count(num_items, "num_items")
  return num_items


def _check_horizon(
  horizon: ArrayLike | None, mode: str, length: int, packed: bool
) -> ArrayLike | None:
  """The divisor of 'seq-mean-token-sum-norm' (default ``T``); None otherwise."""
  if mode != "seq-mean-token-sum-norm":
    if horizon is not None:
      raise ValueError(
        f"`horizon` is the constant divisor of mode='seq-mean-token-sum-norm'; "
        f"got it with mode={mode!r}. Drop `horizon` or use that mode."
      )
    return None
  if horizon is not None:
    _reduction.check_count(horizon, "horizon")
    return horizon
  if packed:
    raise ValueError(
      "mode='seq-mean-token-sum-norm' with `segment_ids` needs `horizon`: the "
      "length of a packed row is not the horizon of one sequence. Pass the "
      "constant, e.g. the maximum response length."
    )
  return length


def _mean_over_sequences(
  values: jax.Array,
  mask: jax.Array | None,
  ids: jax.Array | None,
  *,
  token_mean: bool,
  num_items: ArrayLike | None,
) -> jax.Array:
  """'seq-mean-token-sum' / 'seq-mean-token-mean' of masked ``values``."""
  sums, counts = _reduction.sequence_totals(values, mask, ids)
  present = counts > 0
  if token_mean:
    sums = jnp.where(present, sums / jnp.maximum(counts, 1), 0)
  if num_items is None:
    denominator = jnp.maximum(jnp.sum(present.astype(values.dtype)), 1)
  else:
    denominator = jnp.asarray(num_items, values.dtype)
  return _reduction.divide_or_zero(jnp.sum(sums), denominator)


def aggregate_loss(
  values: ArrayLike,
  where: ArrayLike | None = None,
  *,
  mode: AggregationMode = "token-mean",
  num_items: ArrayLike | None = None,
  segment_ids: ArrayLike | None = None,
  horizon: ArrayLike | None = None,
) -> jax.Array:
  r"""Aggregates per-token values ``[..., T]`` into a loss, by verl's modes.

  The last axis is the sequence (time) axis. Without ``segment_ids`` every
  index of the other axes is one sequence; with them (packed sequences) the
  tokens of one row that share an id are one sequence, as in
  :func:`jaxkl.reduce_loss`. With values :math:`v_{st}` of token :math:`t`
  of sequence :math:`s` and mask :math:`m_{st} \in \{0, 1\}`, let
  :math:`L_s = \sum_t m_{st} v_{st}` be a sequence's masked sum, :math:`n_s
  = \sum_t m_{st}` its number of kept tokens, :math:`S_+` the sequences with
  :math:`n_s > 0`, :math:`N_{\mathrm{tok}} = \sum_s n_s` and
  :math:`N_{\mathrm{seq}} = |S_+|` (both replaced by ``num_items`` when it is
  given; a quotient by 0 counts as 0) and :math:`H` the ``horizon``
  (default :math:`T`):

  ============================= =========================================================== ==============================
  ``mode``                      value                                                       used by
  ============================= =========================================================== ==============================
  ``'token-mean'``              :math:`\sum_{s,t} m_{st} v_{st} \,/\, N_{\mathrm{tok}}`     verl (default); DAPO
  ``'token-sum'``               :math:`\sum_{s,t} m_{st} v_{st}`                            not a verl mode: the plain sum
  ``'seq-mean-token-sum'``      :math:`\sum_s L_s \,/\, N_{\mathrm{seq}}`                   sequence-level sums
  ``'seq-mean-token-mean'``     :math:`\sum_{s \in S_+} (L_s / n_s) \,/\, N_{\mathrm{seq}}` GRPO
  ``'seq-mean-token-sum-norm'`` :math:`\sum_s L_s \,/\, H`                                  Dr. GRPO
  ============================= =========================================================== ==============================

  ``'token-mean'`` weighs every token the same (long responses weigh more);
  ``'seq-mean-token-mean'`` weighs every sequence the same, so a token of a
  short response weighs more than one of a long response -- the length bias
  that DAPO and Dr. GRPO remove. ``'seq-mean-token-sum-norm'`` divides by a
  constant instead of a token count, and, as verl's mode of that name, does
  *not* divide by the number of sequences ("turns off seq-dim averaging");
  TRL's ``loss_type="dr_grpo"`` divides by the number of sequences as well:
  for its value pass ``horizon = num_sequences * max_completion_length``.
  Set ``horizon`` to a constant (the maximum response length, verl's
  ``loss_scale_factor``) so that the scale does not change with the padded
  length of each batch.

  Masked tokens never reach the result or its gradient, even when they hold
  ``inf`` or NaN. A sequence with no kept token is left out of :math:`S_+`
  (it adds nothing, and is not counted), as verl does; where verl divides
  its zero sum by :math:`0 + 10^{-8}`, this function divides by nothing. An
  all-masked (or empty) input gives 0 with a zero gradient.

  **Micro-batches and data parallelism.** ``num_items`` replaces the
  denominator :math:`N` of the counted modes by a *global* count, so that
  the losses of the micro-batches (gradient accumulation) or shards of one
  batch, each aggregated with the same ``num_items``, *add up* to the loss
  of the whole batch (and so do their gradients): for ``'token-mean'`` the
  number of kept tokens of the whole batch (verl's ``batch_num_tokens``,
  Hugging Face's ``num_items_in_batch``), for ``'seq-mean-token-sum'`` and
  ``'seq-mean-token-mean'`` its number of sequences with a kept token
  (verl's trainer passes the mini-batch size as ``global_batch_size``, which
  also counts sequences with no kept token). Compute it before the first
  micro-batch, or inside ``jax.jit`` with ``jax.lax.psum`` over the
  data-parallel axis; it may be traced. ``'token-sum'`` and
  ``'seq-mean-token-sum-norm'`` (with a fixed ``horizon``) divide by no
  count, so their micro-batch losses add up as they are. verl multiplies
  each shard's loss by ``dp_size`` because PyTorch *averages* gradients
  across ranks; sum the shards' gradients (``psum``) and no such factor is
  needed.

  Args:
    values: per-token values (losses), shape ``[..., T]`` with at least one
      axis; floating.
    where: optional boolean mask broadcastable to ``values`` (``True``
      keeps): a response mask ``[..., T]``, or ``[..., 1]`` for whole
      sequences.
    mode: one of the five modes above. Static.
    num_items: optional global count (a Python number or a 0-d array, may be
      traced; a concrete one must be finite and > 0) replacing the
      denominator :math:`N` of ``'token-mean'``, ``'seq-mean-token-sum'``
      and ``'seq-mean-token-mean'``.
    segment_ids: optional integer ids of packed sequences, the shape of
      ``values``: the tokens of one row with equal ids form one sequence
      (ids need not be sorted or contiguous; equal ids in different rows are
      different sequences). The token modes do not depend on them.
    horizon: the constant divisor :math:`H` of ``'seq-mean-token-sum-norm'``
      (verl's ``loss_scale_factor``; a number or 0-d array > 0, may be
      traced); default the padded length :math:`T`. Required for that mode
      with ``segment_ids``.

  Returns:
    A scalar of the dtype of ``values`` (16-bit floats are accumulated in
    float32).

  Raises:
    ValueError: unknown ``mode``; a 0-d ``values``; a mask that does not
      broadcast; ``segment_ids`` not of the shape of ``values``;
      ``num_items`` with ``'token-sum'`` or ``'seq-mean-token-sum-norm'``
      (they divide by no count); ``horizon`` with another mode, or missing
      for that mode with ``segment_ids``; a concrete ``num_items`` or
      ``horizon`` that is not finite and > 0, or not a scalar.
    TypeError: non-floating ``values``, a non-boolean mask (for 0/1
      numbers pass ``where.astype(bool)``), non-integer ``segment_ids``, a
      non-numeric ``num_items`` or ``horizon``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> values = jnp.array([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    >>> mask = jnp.array([[True, True, True, False], [True, False, False, False]])
    >>> jaxkl.aggregate_loss(values, mask)  # (1 + 2 + 3 + 4) / 4 tokens
    Array(2.5, dtype=float32)
    >>> jaxkl.aggregate_loss(values, mask, mode="seq-mean-token-mean")  # (2 + 4) / 2
    Array(3., dtype=float32)
    >>> jaxkl.aggregate_loss(values, mask, mode="seq-mean-token-sum")  # (6 + 4) / 2
    Array(5., dtype=float32)
    >>> jaxkl.aggregate_loss(values, mask, mode="seq-mean-token-sum-norm")  # 10 / T
    Array(2.5, dtype=float32)

    Two micro-batches, each divided by the global count of 4 kept tokens,
    add up to the whole batch's token mean:

    >>> first = jaxkl.aggregate_loss(values[:1], mask[:1], num_items=4)
    >>> second = jaxkl.aggregate_loss(values[1:], mask[1:], num_items=4)
    >>> first + second
    Array(2.5, dtype=float32)

    The same two sequences packed into one row:

    >>> packed = jnp.array([1.0, 2.0, 3.0, 4.0])
    >>> ids = jnp.array([0, 0, 0, 1])
    >>> jaxkl.aggregate_loss(packed, mode="seq-mean-token-mean", segment_ids=ids)
    Array(3., dtype=float32)

  References:
    verl, ``agg_loss`` in ``verl/trainer/ppo/core_algos.py``
    (https://github.com/volcengine/verl).
    Z. Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical
    Reasoning in Open Language Models", 2024, arXiv:2402.03300 (GRPO).
    Q. Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at
    Scale", 2025, arXiv:2503.14476.
    Z. Liu et al., "Understanding R1-Zero-Like Training: A Critical
    Perspective", 2025, arXiv:2503.20783 (Dr. GRPO).
  """
  chosen = _validate_mode(mode)
  values = _checks.as_float_array(values, "values")
  if values.ndim == 0:
    raise ValueError(
      "`values` must have a sequence axis (the last axis, shape [..., T]); "
      "got a 0-d array."
    )
  ids = _reduction.check_segment_ids(segment_ids, values.shape, "sequence_mean")
  num_items = _check_num_items(num_items, chosen)
  divisor = _check_horizon(horizon, chosen, values.shape[-1], ids is not None)
  mask = _per_example.broadcast_mask(where, values.shape, ())
  out_dtype, compute_dtype = _checks.result_dtype(values)
  if values.size == 0:  # no token, no sequence
    return jnp.zeros((), out_dtype)
  values = values.astype(compute_dtype)
  if chosen == "token-mean":
    result = _reduction.reduce_loss(
      values, "mean", where=mask, num_items_in_batch=num_items
    )
  elif chosen == "token-sum":
    result = _reduction.reduce_loss(values, "sum", where=mask)
  elif chosen == "seq-mean-token-sum-norm":
    total = _reduction.reduce_loss(values, "sum", where=mask)
    result = _reduction.divide_or_zero(total, divisor)
  else:
    if mask is not None:
      values = jnp.where(mask, values, 0)
    result = _mean_over_sequences(
      values,
      mask,
      ids,
      token_mean=chosen == "seq-mean-token-mean",
      num_items=num_items,
    )
  return result.astype(out_dtype)
