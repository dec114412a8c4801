r"""The exact next-token KL from full logits, and the sequence-level KL.

A policy :math:`\pi` and a reference :math:`\pi_{\text{ref}}` are
autoregressive: at position :math:`t` of a sequence :math:`y` both give a
next-token distribution over the vocabulary, :math:`\pi(\cdot \mid y_{<t})`
and :math:`\pi_{\text{ref}}(\cdot \mid y_{<t})`, as logits ``[..., V]``. The
KL divergence between the two *sequence* distributions splits along the
positions (the chain rule of the KL divergence):

.. math::

   D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})
   = \mathbb{E}_{y \sim \pi}\Big[\sum_t
     \log\frac{\pi(y_t \mid y_{<t})}{\pi_{\text{ref}}(y_t \mid y_{<t})}\Big]
   = \mathbb{E}_{y \sim \pi}\Big[\sum_t f_t(y_{<t})\Big],
   \qquad f_t = D_{\mathrm{KL}}\big(\pi(\cdot \mid y_{<t}) \,\big\|\,
     \pi_{\text{ref}}(\cdot \mid y_{<t})\big),

since :math:`f_t` is the conditional expectation of the sampled log-ratio at
:math:`t` given the prefix. ``kl_penalty_from_logits`` computes every
:math:`f_t` exactly from the logits; ``sequence_kl`` turns sampled sequences
into estimates of the sequence KL: :math:`\sum_t f_t` (Rao-Blackwellized),
or the sampled-token sums of ``k1`` and ``k3``.

Memory and time. The value is computed in one pass of reductions that XLA
fuses with their inputs (no ``[..., V]`` temporary, no loop); its
derivatives (a custom JVP, hence also the VJP) a block of positions at a
time (``lax.map`` over contiguous blocks of ``chunk_size`` positions, each
block under ``jax.checkpoint``): the backward pass recomputes each block and
writes its gradient into the gradient buffer, so the gradient needs that
buffer plus a few blocks. Compiled temporaries (``memory_analysis()``,
XLA:CPU, jax 0.10) for float32 logits ``[8, 512, 32000]`` (500 MiB each),
blocks of 128 positions (15.6 MiB each), with or without a ``[B, T]`` mask:

* value: 0 MiB (``kl_divergence_from_logits(ref_logits, logits)`` with
  the mask: 1000 MiB, a masked copy of each input);
* value and gradient with respect to the policy's logits: 47 MiB besides
  the 500 MiB gradient (dense, with the mask: 2500 MiB);
* value and gradients with respect to both logits: 109 MiB;
* ``sequence_kl`` with ``gradient='rao_blackwell'``: 78 MiB.

``benchmarks/bench_rl_kl.py`` measures ``[8, 2048, 32000]`` against the
``jax.nn.log_softmax`` composition (README, "Speed").

16-bit inputs: for the derivatives, XLA:CPU converts each whole 16-bit
input to float32 before the loop (1047 MiB of temporaries for the value
and gradient of bfloat16 ``[8, 512, 32000]`` inputs); backends with native
16-bit arithmetic need not. The value converts on the fly.
"""

from __future__ import annotations

import functools
import math
from typing import Any
from typing import Literal
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _estimators
from jaxkl import _logits
from jaxkl import _per_example
from jaxkl import _pointwise
from jaxkl._fused_blocks import Blocks
from jaxkl._monte_carlo import KLEstimate

SequenceEstimator = Literal["rao_blackwell", "k1", "k3"]
SEQUENCE_ESTIMATORS: tuple[str, ...] = ("rao_blackwell", "k1", "k3")
SequenceGradient = Literal["autodiff", "rao_blackwell"]
SEQUENCE_GRADIENTS: tuple[str, ...] = ("autodiff", "rao_blackwell")

#: Bytes of one ``[block, V]`` buffer in the compute dtype (``'auto'``):
#: 16 MiB, 131 positions at V = 32000 in float32. Blocks of 128 positions were
#: the fastest measured (XLA:CPU, [8, 512, 32000]); 512 were ~1.3x slower.
BLOCK_BYTES = 2**24


# ----------------------------------------------------------------------------
# Per-position terms, a block of positions at a time.


class _Terms(NamedTuple):
  """Per-position arrays ``[N]`` in the compute dtype, 0 where dropped.

  ``kl``: the exact next-token KL(pi || pi_ref); ``log_p``, ``ref_log_p``:
  the sampled tokens' log-probabilities under both models. None when not
  asked for.
  """

  kl: jax.Array | None
  log_p: jax.Array | None
  ref_log_p: jax.Array | None


def rows_per_block(
  chunk_size: object, positions: int, vocab: int, dtype: np.dtype[Any]
) -> int:
  """Positions per block: ``chunk_size``, or for ``'auto'`` a ``[block, V]``
  buffer of about ``BLOCK_BYTES``; at least 1, at most ``positions``.

  Raises:
    TypeError, ValueError: a ``chunk_size`` that is not ``'auto'`` or a
      positive int.
  """
  if isinstance(chunk_size, str) and chunk_size == "auto":
    rows = max(1, BLOCK_BYTES // max(1, vocab * dtype.itemsize))
  else:
    rows = _checks.check_positive_int(chunk_size, "chunk_size", "static, or 'auto'")
  return max(1, min(rows, positions))


def _token_log_prob(x: jax.Array, tokens: jax.Array, inverse_t: jax.Array) -> jax.Array:
  """``log_softmax(x / T)`` at ``tokens`` per row of ``x`` ``[c, V]``.

  NaN for a token outside ``[0, V)`` (only reachable under tracing, where
  the tokens cannot be checked).
  """
  vocab = x.shape[1]
  valid = (tokens >= 0) & (tokens < vocab)
  index = jnp.where(valid, tokens, 0)[:, None]
  m, log_z = _logits._max_and_log_normalizer(x, inverse_t, (1,))
  picked = jnp.take_along_axis(x, index, axis=1)
  log_p = (_logits._scaled(picked - m, inverse_t) - log_z)[:, 0]
  return jnp.where(valid, log_p, jnp.full((), jnp.nan, log_p.dtype))


def _block_terms(
  policy: jax.Array,
  ref: jax.Array,
  tokens: jax.Array | None,
  keep: jax.Array | None,
  inverse_t: jax.Array,
  need_kl: bool,
) -> _Terms:
  """The ``_Terms`` of one block of rows ``[c, V]``.

  Dropped rows are replaced by 0 before anything is computed from them (they
  may hold NaN or inf), and their results are set to 0 after: exactly 0
  with zero derivatives.
  """
  dtype = inverse_t.dtype
  policy = _logits.zero_dropped_examples(policy.astype(dtype), keep, (1,))
  ref = _logits.zero_dropped_examples(ref.astype(dtype), keep, (1,))
  kl = None
  if need_kl:
    # KL(P || Q) with the policy as the target P and the reference as Q:
    # the closed-form custom_jvp of kl_divergence_from_logits.
    kl = _logits._finish(_logits._forward_kl(ref, policy, inverse_t, (1,)), keep, True)
  if tokens is None:
    return _Terms(kl, None, None)
  if keep is not None:
    tokens = jnp.where(keep, tokens, jnp.zeros((), tokens.dtype))
  log_p = _token_log_prob(policy, tokens, inverse_t)
  ref_log_p = _token_log_prob(ref, tokens, inverse_t)
  if keep is not None:
    zero = jnp.zeros((), dtype)
    log_p, ref_log_p = jnp.where(keep, log_p, zero), jnp.where(keep, ref_log_p, zero)
  return _Terms(kl, log_p, ref_log_p)


def _contiguous_blocks(length: int, rows: int) -> Blocks:
  """``ceil(length / rows)`` contiguous blocks of (nearly) equal size.

  Contiguous blocks are sliced from the inputs; strided ones (a gather of
  every ``steps``-th row) were measured 2x slower on CPU. The last block
  overlaps the previous one when the size does not divide ``length``.
  """
  steps = -(-length // rows)
  return Blocks(length, -(-length // steps), steps, False)


def _unblock(stacked: jax.Array, blocks: Blocks) -> jax.Array:
  """``[steps, size]`` block results back to ``[length]``."""
  if not blocks.overlaps:
    return jnp.reshape(stacked, (blocks.length,))
  fresh = blocks.length - (blocks.steps - 1) * blocks.size
  return jnp.concatenate(
    [jnp.reshape(stacked[:-1], (-1,)), stacked[-1, blocks.size - fresh :]]
  )


def _value_terms(
  policy: jax.Array,
  ref: jax.Array,
  tokens: jax.Array | None,
  keep: jax.Array | None,
  inverse_t: jax.Array,
  need_kl: bool,
) -> _Terms:
  """``_Terms`` of ``[N, V]`` logits, for the value only, in one pass.

  Reductions over the vocabulary that XLA fuses with their inputs (no
  ``[N, V]`` temporary) and no loop: on XLA:CPU a loop over blocks of
  positions costs 2x in time for the value. Dropped positions are zeroed in
  the results, not in the inputs (no masked copy of the logits): the value
  carries no derivative (``position_terms``' JVP is the blocked one), so
  what they hold cannot reach a gradient.
  """
  dtype = inverse_t.dtype

  def log_softmax(x: jax.Array) -> jax.Array:
    # Shifted before the scaling: huge logits over a small T stay finite.
    x = x.astype(dtype)
    m, log_z = _logits._max_and_log_normalizer(x, inverse_t, (1,))
    return (x - m) * inverse_t - log_z

  def dropped_to_zero(x: jax.Array) -> jax.Array:
    return x if keep is None else jnp.where(keep, x, jnp.zeros((), dtype))

  kl = None
  if need_kl:
    log_p, log_r = log_softmax(policy), log_softmax(ref)
    kl = jnp.sum(_pointwise.kl_terms_log_target(log_r, log_p), 1)
    # Clamped at 0 as the blocked path's _finish does (rounding can leave a
    # KL of ~1e-22 a few ulps below 0, e.g. logits [-50, 0] against [-50, -1]).
    kl = dropped_to_zero(jnp.maximum(kl, jnp.zeros((), dtype)))
  if tokens is None:
    return _Terms(kl, None, None)
  if keep is not None:
    tokens = jnp.where(keep, tokens, jnp.zeros((), tokens.dtype))
  return _Terms(
    kl,
    dropped_to_zero(_token_log_prob(policy.astype(dtype), tokens, inverse_t)),
    dropped_to_zero(_token_log_prob(ref.astype(dtype), tokens, inverse_t)),
  )


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def position_terms(
  policy: jax.Array,
  ref: jax.Array,
  tokens: jax.Array | None,
  keep: jax.Array | None,
  inverse_t: jax.Array,
  rows: int,
  need_kl: bool,
) -> _Terms:
  """``_Terms`` of ``[N, V]`` logits: the value in one fused pass
  (``_value_terms``), derivatives ``rows`` positions at a time
  (``_blocked_terms``: its JVP, and so its VJP, keeps no ``[N, V]``
  intermediate; it is itself differentiable, for Hessians)."""
  return _value_terms(policy, ref, tokens, keep, inverse_t, need_kl)


def _position_terms_jvp(
  rows: int,
  need_kl: bool,
  primals: tuple[Any, ...],
  tangents: tuple[Any, ...],
) -> tuple[_Terms, _Terms]:
  live = [i for i in (0, 1, 4) if not isinstance(tangents[i], SymbolicZero)]

  def blocked(*xs: jax.Array) -> _Terms:
    args = list(primals)
    for i, x in zip(live, xs, strict=True):
      args[i] = x
    policy, ref, tokens, keep, inverse_t = args
    return _blocked_terms(policy, ref, tokens, keep, inverse_t, rows, need_kl)

  if not live:
    out = blocked()
    return out, jax.tree_util.tree_map(jnp.zeros_like, out)
  out, tangent = jax.jvp(
    blocked, tuple(primals[i] for i in live), tuple(tangents[i] for i in live)
  )
  return out, tangent


position_terms.defjvp(_position_terms_jvp, symbolic_zeros=True)


def _blocked_terms(
  policy: jax.Array,
  ref: jax.Array,
  tokens: jax.Array | None,
  keep: jax.Array | None,
  inverse_t: jax.Array,
  rows: int,
  need_kl: bool,
) -> _Terms:
  """``_Terms`` of ``[N, V]`` logits, ``rows`` positions at a time.

  Each block is taken from the inputs inside a ``jax.checkpoint``-ed body
  of ``lax.map``: the backward pass recomputes the block and writes its
  gradient into the gradient buffer, so no ``[N, V]`` intermediate is kept.
  """
  length = policy.shape[0]
  if rows >= length:
    return _block_terms(policy, ref, tokens, keep, inverse_t, need_kl)
  blocks = _contiguous_blocks(length, rows)

  def take(x: jax.Array | None, j: jax.Array) -> jax.Array | None:
    return None if x is None else blocks.take(x, j, 0)

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def body(j: jax.Array) -> _Terms:
    return _block_terms(
      blocks.take(policy, j, 0),
      blocks.take(ref, j, 0),
      take(tokens, j),
      take(keep, j),
      inverse_t,
      need_kl,
    )

  stacked = lax.map(body, jnp.arange(blocks.steps))
  return _Terms(*(None if y is None else _unblock(y, blocks) for y in stacked))


@functools.partial(jax.jit, static_argnames=("rows",))
def _kl_per_position(
  policy: jax.Array,
  ref: jax.Array,
  keep: jax.Array | None,
  inverse_t: jax.Array,
  rows: int,
) -> jax.Array:
  kl = position_terms(policy, ref, None, keep, inverse_t, rows, True).kl
  assert kl is not None  # asked for
  return kl


def _check_logits(
  logits: ArrayLike, ref_logits: ArrayLike, min_ndim: int
) -> tuple[jax.Array, jax.Array]:
  """Both logits as floating arrays of one shape with ``>= min_ndim`` axes
  and a non-empty vocabulary (the last axis)."""
  policy = _checks.as_float_array(logits, "logits")
  ref = _checks.as_float_array(ref_logits, "ref_logits")
  _checks.check_same_shape(policy, ref, "logits", "ref_logits")
  if policy.ndim < min_ndim:
    shape = "[..., V]" if min_ndim == 1 else "[B, T, V]"
    raise ValueError(
      f"`logits` must have shape {shape} (the vocabulary last); got shape "
      f"{tuple(policy.shape)}."
    )
  if policy.shape[-1] == 0:
    raise ValueError(
      f"`logits` must have a non-empty vocabulary (last axis); got shape "
      f"{tuple(policy.shape)}."
    )
  return policy, ref


def kl_penalty_from_logits(
  logits: ArrayLike,
  ref_logits: ArrayLike,
  *,
  where: ArrayLike | None = None,
  temperature: ArrayLike = 1.0,
  chunk_size: int | Literal["auto"] = "auto",
) -> jax.Array:
  r"""The exact next-token :math:`D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})` at every position.

  With :math:`\pi = \mathrm{softmax}(\text{logits} / T)` the policy (the
  model that samples, and is trained) and
  :math:`\pi_{\text{ref}} = \mathrm{softmax}(\text{ref\_logits} / T)` the
  reference, at every position:

  .. math::

     f = \sum_{v=1}^{V} \pi(v) \left(\log \pi(v) - \log \pi_{\text{ref}}(v)\right),

  the per-token penalty that verl names ``kl_penalty="full"`` (and does not
  implement): the expectation over the next token of the sampled-token
  estimators ``k1`` and ``k3`` of :func:`jaxkl.kl_penalty`, with none of
  their sampling noise. Summed over a sampled sequence it is the
  Rao-Blackwellized estimate of the sequence KL (:func:`jaxkl.sequence_kl`).

  This is :func:`jaxkl.kl_divergence_from_logits` with the arguments in its
  teacher-first convention, ``kl_divergence_from_logits(ref_logits,
  logits)``, through the same closed-form derivatives: ``-inf`` logits (a
  masked or padded vocabulary) give zero probability and NaN-free,
  exact derivatives of every order; the gradient with respect to the
  policy's logits is :math:`\pi (\log\pi - \log\pi_{\text{ref}} - f) / T`
  and with respect to the reference's :math:`(\pi_{\text{ref}} - \pi) / T`.
  Rounding can make a computed divergence a few ulps negative; it is
  returned as 0, with the derivatives of the unclamped value. A reference
  with :math:`\pi_{\text{ref}}(v) = 0 < \pi(v)` gives :math:`+\infty`.

  **Memory.** The value is one fused pass over the logits with no
  ``[..., V]`` temporary; derivatives process the positions ``chunk_size``
  at a time (a ``lax.map`` over blocks under ``jax.checkpoint``): the
  gradient needs its own buffer plus a few ``[chunk_size, V]`` blocks (the
  backward pass recomputes each block). For ``[8, 512, 32000]`` float32 logits
  (500 MiB) the compiled temporaries are 0 MiB for the value and 47 MiB for
  the value and the policy's gradient, against 1000 and 2500 MiB for the
  dense computation under a mask (figures in ``help(jaxkl._rl.sequence)``).
  On CPU, 16-bit inputs are first converted to float32 whole by XLA for
  the derivatives (a float32 copy of each). ``chunk_size`` at or above the
  number of positions makes one block of all of them: its backward pass
  needs a few buffers of the logits' size; there is no reason to ask for
  it.

  See also: from hidden states and LM heads, without the logits,
  ``jaxkl.fused_linear_distillation_loss(h, W, h_ref, W_ref,
  divergence="reverse", reduction="none")`` gives the same per-token values
  and gradients (student = policy, teacher = reference; ``'reverse'`` is
  KL(student ‖ teacher)), chunked over tokens and vocabulary; flatten
  ``[B, T, H]`` hidden states to ``[B * T, H]`` first.

  Args:
    logits: the policy's logits, ``[..., V]`` (e.g. ``[B, T, V]``), the
      vocabulary last. Any floating dtype; 16-bit logits are computed in
      float32.
    ref_logits: the reference's logits, same shape.
    where: optional boolean mask of the positions (``True`` keeps), of the
      per-position shape ``[...]`` or broadcastable to it (NumPy rules),
      e.g. the response mask ``[B, T]``. A dropped position gives exactly 0
      with zero derivatives, whatever its logits hold (NaN, inf).
    temperature: :math:`T > 0`, a Python number or a 0-d array, as in
      :func:`jaxkl.kl_divergence_from_logits` (a traced one is not checked;
      it is differentiable).
    chunk_size: positions per block, a positive int, or ``'auto'`` (a
      ``[block, V]`` buffer of about 16 MiB in the compute dtype: 131
      positions at V = 32000 in float32). Static.

  Returns:
    The per-position KL, shape ``logits.shape[:-1]``, in the promoted dtype
    of the logits; never negative.

  Raises:
    ValueError: different shapes, a 0-d input or an empty vocabulary, a
      mask that does not broadcast to the per-position shape, a concrete
      ``temperature`` that is not finite and > 0, or a bad ``chunk_size``.
    TypeError: non-floating logits, a non-boolean mask, a bool
      ``temperature`` or a ``chunk_size`` that is not an int.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> logits = jnp.array([[[2.0, 0.0], [0.0, 0.0]]])  # [B=1, T=2, V=2]
    >>> ref_logits = jnp.zeros((1, 2, 2))
    >>> jaxkl.kl_penalty_from_logits(logits, ref_logits)
    Array([[0.32781327, 0.        ]], dtype=float32)
    >>> # The same as kl_divergence_from_logits, teacher (= policy) second.
    >>> jaxkl.kl_divergence_from_logits(ref_logits, logits)
    Array([[0.32781327, 0.        ]], dtype=float32)
    >>> jaxkl.kl_penalty_from_logits(
    ...     logits, ref_logits, where=jnp.array([[False, True]]))
    Array([[0., 0.]], dtype=float32)

  References:
    A. Amini, T. Vieira and R. Cotterell, "Better Estimation of the KL
    Divergence Between Language Models", NeurIPS 2025, arXiv:2504.10637.
    J. Schulman, "Approximating KL Divergence", 2020,
    http://joschu.net/blog/kl-approx.html.
  """
  policy, ref = _check_logits(logits, ref_logits, 1)
  temperature = _logits.check_temperature(temperature)
  shape = tuple(policy.shape[:-1])
  vocab = policy.shape[-1]
  keep = _per_example.broadcast_mask(where, shape, ())
  out_dtype, compute_dtype = _checks.result_dtype(policy, ref)
  length = math.prod(shape)
  rows = rows_per_block(chunk_size, length, vocab, compute_dtype)
  if length == 0:
    return jnp.zeros(shape, out_dtype)
  kl = _kl_per_position(
    jnp.reshape(policy, (length, vocab)),
    jnp.reshape(ref, (length, vocab)),
    None if keep is None else jnp.reshape(keep, (length,)),
    1 / jnp.asarray(temperature, compute_dtype),
    rows=rows,
  )
  return jnp.reshape(kl, shape).astype(out_dtype)


# ----------------------------------------------------------------------------
# Sequence-level estimates.


def _per_sequence(terms: _Terms, estimator: str) -> jax.Array:
  """Each sequence's estimate ``[B]`` from ``[B, T]`` terms (0 where dropped)."""
  if estimator == "rao_blackwell":
    assert terms.kl is not None
    return jnp.sum(terms.kl, axis=1)
  assert terms.log_p is not None and terms.ref_log_p is not None
  log_r = terms.ref_log_p - terms.log_p  # log pi_ref(y_t) - log pi(y_t)
  per_token = -log_r if estimator == "k1" else _estimators._k3(log_r)
  return jnp.sum(per_token, axis=1)


def _rao_blackwell_gradient(
  estimates: jax.Array, kl: jax.Array, log_p: jax.Array
) -> jax.Array:
  r"""``estimates`` in value, with the Rao-Blackwellized gradient of each.

  The surrogate :math:`\sum_t f_t + \sum_t (\ell_t - \bot\ell_t)\,
  \bot\big(\sum_{t' > t} f_{t'}\big)` with :math:`\ell_t = \log\pi(y_t \mid
  y_{<t})` (:math:`\bot`: stop-gradient) is added as ``surrogate -
  stop_gradient(surrogate)``, exactly 0 in value when it is finite; the
  estimates themselves carry no gradient. The future sums are reverse
  cumulative sums (no subtraction: the terms are >= 0).
  """
  future = lax.cumsum(kl, axis=1, reverse=True)[:, 1:]
  future = jnp.concatenate([future, jnp.zeros_like(kl[:, :1])], axis=1)
  score = log_p - lax.stop_gradient(log_p)
  surrogate = jnp.sum(kl, axis=1) + jnp.sum(score * lax.stop_gradient(future), axis=1)
  fixed = lax.stop_gradient(surrogate)
  delta = jnp.where(jnp.isfinite(fixed), surrogate - fixed, 0)
  return lax.stop_gradient(estimates) + delta


def _tail_rows(estimates: jax.Array, estimator: str) -> jax.Array:
  """The rows whose upper tails ``pareto_k`` fits: the estimates, and for the
  signed ``k1`` their negatives too (``rao_blackwell``, ``k3`` are >= 0)."""
  estimates = lax.stop_gradient(estimates)
  if estimator == "k1":
    return jnp.stack([estimates, -estimates])
  return estimates[None, :]


@functools.partial(jax.jit, static_argnames=("estimator", "gradient", "rows"))
def _sequence_estimate(
  policy: jax.Array,
  ref: jax.Array,
  tokens: jax.Array | None,
  keep: jax.Array | None,
  inverse_t: jax.Array,
  *,
  estimator: str,
  gradient: str,
  rows: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(value, stderr, pareto_k)`` in the compute dtype."""
  batch, length, vocab = policy.shape
  _, compute_dtype = _checks.result_dtype(policy, ref)
  rb_gradient = gradient == "rao_blackwell"
  need_kl = estimator == "rao_blackwell" or rb_gradient
  if estimator == "rao_blackwell" and not rb_gradient:
    tokens = None  # the value needs no tokens

  def flat(x: jax.Array | None) -> jax.Array | None:
    return None if x is None else jnp.reshape(x, (batch * length,))

  terms = position_terms(
    jnp.reshape(policy, (batch * length, vocab)),
    jnp.reshape(ref, (batch * length, vocab)),
    flat(tokens),
    flat(keep),
    inverse_t,
    rows,
    need_kl,
  )
  terms = _Terms(
    *(None if x is None else jnp.reshape(x, (batch, length)) for x in terms)
  )
  estimates = _per_sequence(terms, estimator)
  if rb_gradient:
    assert terms.kl is not None and terms.log_p is not None
    estimates = _rao_blackwell_gradient(estimates, terms.kl, terms.log_p)
  weights = jnp.full((batch,), 1 / batch, compute_dtype)
  count = jnp.asarray(batch, compute_dtype)
  value, stderr, _ = _estimators.weighted_estimate(estimates, weights, count, (0,))
  khat = _estimators.pareto_k_of_rows(_tail_rows(estimates, estimator))
  return value, stderr, khat


def _check_choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
  if isinstance(value, str) and value in allowed:
    return value
  raise ValueError(
    f"`{name}` must be one of {', '.join(map(repr, allowed))}; got {value!r}."
  )


def _check_tokens(
  tokens: ArrayLike | None,
  shape: tuple[int, int],
  vocab: int,
  keep: jax.Array | None,
  needed_by: str | None,
) -> jax.Array | None:
  """``tokens`` as an integer ``[B, T]`` array, in ``[0, V)`` where kept.

  The range is checked only when the tokens (and the mask, if any) are
  concrete; traced out-of-range tokens give NaN estimates.

  Raises:
    ValueError: missing tokens that ``needed_by`` needs, a wrong shape, or
      concrete kept tokens outside ``[0, V)``.
    TypeError: non-integer tokens.
  """
  if tokens is None:
    if needed_by is not None:
      raise ValueError(
        f"{needed_by} needs the sampled tokens: pass `tokens`, the [B, T] "
        "integer ids of the sequences (tokens[:, t] drawn from "
        "softmax(logits[:, t]))."
      )
    return None
  ids = jnp.asarray(tokens)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"`tokens` must be integers; got dtype {ids.dtype}.")
  if tuple(ids.shape) != shape:
    raise ValueError(f"`tokens` must have shape [B, T] = {shape}; got {ids.shape}.")
  concrete = not isinstance(ids, jax.core.Tracer) and not isinstance(
    keep, jax.core.Tracer
  )
  if concrete:
    values = np.asarray(ids)
    bad = (values < 0) | (values >= vocab)
    if keep is not None:
      bad &= np.asarray(keep)
    if bad.any():
      index = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(
        f"`tokens` must lie in [0, V) = [0, {vocab}) at every kept position; "
        f"{int(bad.sum())} do not, e.g. tokens{list(index)} = "
        f"{int(values[index])}."
      )
  return ids


def sequence_kl(
  logits: ArrayLike,
  ref_logits: ArrayLike,
  *,
  where: ArrayLike | None = None,
  estimator: SequenceEstimator = "rao_blackwell",
  tokens: ArrayLike | None = None,
  gradient: SequenceGradient = "autodiff",
  temperature: ArrayLike = 1.0,
  chunk_size: int | Literal["auto"] = "auto",
) -> KLEstimate:
  r"""Sequence-level :math:`D_{\mathrm{KL}}(\pi \,\|\, \pi_{\text{ref}})` from sampled sequences.

  ``B`` sequences :math:`y^{(b)} \sim \pi` were sampled from the policy and
  scored (teacher-forced) by both models: ``logits[b, t]`` and
  ``ref_logits[b, t]`` are the logits of :math:`\pi(\cdot \mid y_{<t})` and
  :math:`\pi_{\text{ref}}(\cdot \mid y_{<t})`, from which ``tokens[b, t]``
  :math:`= y_t` was drawn (the models' outputs already shifted by one).
  With :math:`f_t` the exact next-token KL
  (:func:`jaxkl.kl_penalty_from_logits`) and
  :math:`\log r_t = \log\pi_{\text{ref}}(y_t \mid y_{<t}) -
  \log\pi(y_t \mid y_{<t})`, each sequence gives one estimate, summed over
  its kept positions:

  * ``'rao_blackwell'`` (default): :math:`\sum_t f_t(y_{<t})`, the
    Rao-Blackwellized estimator of Amini, Vieira & Cotterell (2025): each
    sampled log-ratio replaced by its conditional expectation given the
    prefix. Unbiased (by the chain rule of the KL divergence), never
    negative, no ``tokens`` needed. Its variance is usually far below
    ``k1``'s: the noise of each sampled token is gone. The paper states
    that it is never above ``k1``'s; over whole sequences that holds for
    typical models but not for all, since later steps' KLs can be
    anti-correlated with earlier sampled log-ratios. E.g. two steps,
    :math:`\pi(y_1)` uniform on :math:`\{a, b\}`,
    :math:`\pi_{\text{ref}}(y_1) = (0.2, 0.8)`, a deterministic second
    step under :math:`\pi` whose KL is 0 after :math:`a` and
    :math:`\log 4` after :math:`b`: ``k1`` is :math:`\log 2.5` (the KL)
    on every sequence, this estimator 0.22 or 1.61 (tested).
  * ``'k1'``: :math:`\sum_t -\log r_t = \log\pi(y) - \log\pi_{\text{ref}}(y)`,
    the plain Monte-Carlo estimator; unbiased, can be negative.
  * ``'k3'``: :math:`\sum_t (r_t - 1 - \log r_t)` (Schulman, 2020); never
    negative, unbiased when :math:`\pi_{\text{ref}}` puts no mass outside
    :math:`\pi`'s support, heavy-tailed where :math:`\pi_{\text{ref}} \gg
    \pi` (:math:`r` unbounded).

  The estimates are combined into a :class:`jaxkl.KLEstimate` over the
  ``B`` sequences: ``value`` their mean, ``stderr`` their sample standard
  deviation over :math:`\sqrt{B}` (NaN for ``B = 1``; no gradient),
  ``effective_sample_size`` and ``num_samples`` ``B``, ``pareto_k`` the
  tail diagnostic of the per-sequence estimates (as in
  :func:`jaxkl.monte_carlo_kl`; NaN below 25 sequences; no gradient; it
  over-reads estimates that take only a few distinct values, as for a toy
  vocabulary: many ties in the tail).
  Every row counts as one sequence, even when ``where`` keeps none of its
  positions (an empty response: estimate 0).

  **Gradients.** With respect to the policy's parameters :math:`\theta`,
  the sequence KL's gradient is (score function for the sampling, causality
  for the prefix each :math:`f_t` depends on)

  .. math::

     \nabla_\theta D_{\mathrm{KL}} = \mathbb{E}_{y \sim \pi}\Big[\sum_t
       \nabla_\theta f_t + \sum_t \nabla_\theta \log\pi(y_t \mid y_{<t})
       \sum_{t' > t} f_{t'}\Big].

  ``gradient='rao_blackwell'`` (needs ``tokens``) gives this estimator:
  the score-function gradient with every future sampled log-ratio replaced
  by its exact next-token KL, the Rao-Blackwellized gradient of Amini,
  Vieira & Cotterell (2025). The value is unchanged (bit for bit) and
  carries the gradient of the surrogate
  :math:`\sum_t f_t + \sum_t (\ell_t - \bot\ell_t)\,\bot(\sum_{t'>t}
  f_{t'})`, :math:`\ell_t = \log\pi(y_t \mid y_{<t})`, :math:`\bot` a
  stop-gradient; its expectation is exactly :math:`\nabla_\theta
  D_{\mathrm{KL}}` (whatever ``estimator`` gives the value). With respect
  to the reference's parameters (the reference samples nothing) every
  estimator and mode is unbiased for the gradient of the sequence KL.
  ``gradient='autodiff'`` differentiates the
  estimate itself with the samples held fixed, which estimates (in
  expectation over :math:`y \sim \pi`; Tang & Munos, 2025):

  * ``'rao_blackwell'``: :math:`\mathbb{E}[\sum_t \nabla_\theta f_t]`, the
    first term only: it misses the effect of :math:`\theta` on which
    prefixes are sampled, so it is biased for the gradient of the sequence
    KL (exact for one step, :math:`T = 1`);
  * ``'k1'``: 0 (:math:`\mathbb{E}[\nabla\log\pi(y_t \mid y_{<t})] = 0`):
    no signal;
  * ``'k3'``: :math:`\sum_t \mathbb{E}_{y_{<t} \sim \pi}[\nabla_\theta
    D_{\mathrm{KL}}(\pi_{\text{ref}}(\cdot \mid y_{<t}) \,\|\,
    \pi(\cdot \mid y_{<t}))]`, the per-step gradients of the *other*
    direction.

  **Memory.** The logits are read a block of positions at a time, as in
  :func:`jaxkl.kl_penalty_from_logits` (``chunk_size='auto'``): no
  ``[B, T, V]`` intermediate, forward or backward.

  Args:
    logits: the policy's logits at the sampled sequences, ``[B, T, V]``.
      16-bit logits are computed in float32.
    ref_logits: the reference's logits, same shape.
    where: optional boolean mask ``[B, T]`` (or broadcastable to it) of the
      generated tokens (``True``), e.g. the response mask: prompt and
      padding positions, and positions after an end-of-sequence token, are
      ``False``. Dropped positions may hold anything (NaN logits, token id
      ``-100``) and count nowhere.
    estimator: ``'rao_blackwell' | 'k1' | 'k3'``. Static.
    tokens: the sampled token ids ``[B, T]`` (integers in ``[0, V)`` at
      kept positions), needed by ``'k1'``, ``'k3'`` and
      ``gradient='rao_blackwell'``. Checked when concrete; traced
      out-of-range ids give NaN.
    gradient: ``'autodiff' | 'rao_blackwell'``. Static.
    temperature: :math:`T > 0` dividing both models' logits (the sampling
      temperature of the policy), as in :func:`jaxkl.kl_penalty_from_logits`.
    chunk_size: positions per block, a positive int, or ``'auto'``, as in
      :func:`jaxkl.kl_penalty_from_logits`. Static.

  Returns:
    A :class:`jaxkl.KLEstimate` whose ``value``, ``stderr``,
    ``effective_sample_size`` and ``pareto_k`` are 0-d arrays in the
    promoted dtype of the logits, with ``num_samples = B`` and
    ``estimator`` the estimator's name.

  Raises:
    ValueError: logits that are not ``[B, T, V]`` with ``B >= 1`` and
      ``V >= 1`` or of different shapes, a bad mask, an unknown
      ``estimator`` or ``gradient``, missing ``tokens`` where needed,
      ``tokens`` of the wrong shape or (when concrete) out of range, a
      ``temperature`` that is not finite and > 0, or a bad ``chunk_size``.
    TypeError: non-floating logits, a non-boolean mask, non-integer
      tokens, a bool ``temperature`` or a ``chunk_size`` that is not an int.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> logits = jnp.array([[[1.0, 0.0], [0.0, 2.0]],
    ...                     [[1.0, 0.0], [0.0, 0.0]]])  # [B=2, T=2, V=2]
    >>> ref_logits = jnp.zeros((2, 2, 2))
    >>> tokens = jnp.array([[0, 1], [1, 0]])
    >>> est = jaxkl.sequence_kl(logits, ref_logits)
    >>> est.value  # the mean of 0.1109 + 0.3278 and 0.1109 + 0
    Array(0.2748508, dtype=float32)
    >>> est.stderr, est.num_samples
    (Array(0.16390665, dtype=float32), 2)
    >>> jaxkl.sequence_kl(logits, ref_logits, estimator="k1", tokens=tokens).value
    Array(0.16299513, dtype=float32)
    >>> where = jnp.array([[True, False], [True, True]])  # the first ends early
    >>> jaxkl.sequence_kl(logits, ref_logits, where=where).value
    Array(0.11094414, dtype=float32)

  References:
    A. Amini, T. Vieira and R. Cotterell, "Better Estimation of the KL
    Divergence Between Language Models", NeurIPS 2025, arXiv:2504.10637.
    Y. Tang and R. Munos, "On a few pitfalls in KL divergence gradient
    estimation for RL", 2025, arXiv:2506.09477.
    J. Schulman, "Approximating KL Divergence", 2020,
    http://joschu.net/blog/kl-approx.html.
  """
  name = _check_choice(estimator, "estimator", SEQUENCE_ESTIMATORS)
  mode = _check_choice(gradient, "gradient", SEQUENCE_GRADIENTS)
  policy, ref = _check_logits(logits, ref_logits, 3)
  if policy.ndim != 3 or policy.shape[0] == 0:
    raise ValueError(
      f"`logits` must have shape [B, T, V] with B >= 1 sequences; got shape "
      f"{tuple(policy.shape)}."
    )
  batch, length, vocab = policy.shape
  keep = _per_example.broadcast_mask(where, (batch, length), ())
  needed_by = None
  if name != "rao_blackwell":
    needed_by = f"estimator={name!r}"
  elif mode == "rao_blackwell":
    needed_by = "gradient='rao_blackwell'"
  ids = _check_tokens(tokens, (batch, length), vocab, keep, needed_by)
  temperature = _logits.check_temperature(temperature)
  out_dtype, compute_dtype = _checks.result_dtype(policy, ref)
  rows = rows_per_block(chunk_size, batch * length, vocab, compute_dtype)
  value, stderr, khat = _sequence_estimate(
    policy,
    ref,
    ids,
    keep,
    1 / jnp.asarray(temperature, compute_dtype),
    estimator=name,
    gradient=mode,
    rows=rows,
  )
  return KLEstimate(
    value=value.astype(out_dtype),
    stderr=stderr.astype(out_dtype),
    effective_sample_size=jnp.asarray(batch, out_dtype),
    num_samples=batch,
    estimator=name,
    pareto_k=khat.astype(out_dtype),
  )
