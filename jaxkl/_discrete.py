"""Discrete KL divergence with PyTorch's ``kl_div`` / ``KLDivLoss`` API."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import jax
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _pointwise
from jaxkl import _reduction


def kl_div(
  input: ArrayLike,  # pylint: disable=redefined-builtin
  target: ArrayLike,
  size_average: bool | None = None,
  reduce: bool | None = None,
  reduction: str = "mean",
  log_target: bool = False,
) -> jax.Array:
  r"""Kullback-Leibler divergence loss, a drop-in for ``torch.nn.functional.kl_div``.

  ``input`` holds log-probabilities :math:`\log q` of the model and ``target``
  the probabilities :math:`p` of the data (or :math:`\log p` when
  ``log_target=True``). The pointwise loss is

  .. math::

     \ell = p \, (\log p - \log q), \qquad
     \ell_{\text{log target}} = e^{\log p} (\log p - \log q),

  so that summing ``ell`` over the support gives
  :math:`D_{\mathrm{KL}}(P \,\|\, Q) = \sum_x p(x) \log \frac{p(x)}{q(x)}`.
  Reductions follow PyTorch:

  * ``'none'``: the pointwise losses, shape of ``input``;
  * ``'sum'``: :math:`\sum \ell`;
  * ``'batchmean'``: :math:`\sum \ell / \text{input.shape[0]}`, the KL
    divergence averaged over a batch of distributions laid out on the leading
    axis (for a 0-d input, the plain sum);
  * ``'mean'`` (PyTorch's default): :math:`\sum \ell / \text{input.size}`,
    which is *not* the KL divergence; PyTorch's UserWarning is emitted.

  Values and gradients equal PyTorch's (to rounding) wherever PyTorch's are
  finite, with these deliberate differences:

  * **No NaN at zero probability.** A target with :math:`p = 0` contributes
    exactly 0 whatever ``input`` is (the convention :math:`0 \log 0 = 0`;
    only ``input=+inf``, no log-probability, gives NaN as in PyTorch), so
    ``target=0, input=-inf`` gives 0 where PyTorch gives NaN, and likewise
    ``log_target=True`` with ``target=-inf``. The gradient with respect to a
    zero target is 0 (as for ``jax.scipy.special.rel_entr``) where PyTorch's
    is NaN or infinite; all second derivatives there are finite.
    ``p > 0`` with ``input=-inf`` is still ``+inf``, as in PyTorch. A class
    has zero mass exactly when :math:`p` (or :math:`e^{\log p}` with
    ``log_target=True``) is 0 in the computation dtype, subnormals flushed
    to zero (the rule of every jaxkl path; README, "Zero mass"); PyTorch
    keeps subnormal probabilities.
  * **Shapes must match.** PyTorch broadcasts ``input`` against ``target``;
    jaxkl raises ``ValueError`` instead (broadcast explicitly with
    ``jnp.broadcast_to`` if you mean it).
  * **16-bit floats are accumulated in float32** and the result is returned
    in the input dtype, which is more accurate than PyTorch's half-precision
    sums.

  Huge values are not clamped: wherever :math:`p > 0` each term is the
  literal :math:`p (\log p - \log q)`, as in PyTorch (``input=-1e38,
  target=1`` gives ``1e38``, ``input=+inf`` gives ``-inf``), and a sum is
  ``inf`` only where the exact sum is beyond ``finfo.max``, or, as in any
  floating-point sum and in PyTorch, where one term or a partial sum is.
  ``'mean'`` and ``'batchmean'`` divide that sum, as PyTorch does.

  PyTorch's quirks that are reproduced on purpose:

  * ``size_average``/``reduce`` (deprecated) override ``reduction`` with
    PyTorch's mapping (``None`` counts as ``True``; both true: ``'mean'``;
    ``reduce`` true and ``size_average`` false: ``'sum'``; ``reduce`` false:
    ``'none'``), with PyTorch's deprecation warning. ``reduction`` is then not
    validated, but ``reduction='batchmean'`` still divides the legacy result
    by ``input.shape[0]`` (so ``reduce=False, reduction='batchmean'`` divides
    each pointwise loss by the batch size).
  * ``reduction='elementwise_mean'`` is ``'mean'``, with PyTorch's deprecation
    warning (and without the 'mean' warning).
  * An empty ``input`` gives NaN for ``'mean'`` (0/0), 0 for ``'sum'``, and
    for ``'batchmean'`` 0/``shape[0]`` (NaN when ``shape[0] == 0``).
  * Negative ``target`` probabilities (invalid) give NaN, as in PyTorch.

  Args:
    input: log-probabilities :math:`\log q`, any shape (0-d included),
      real floating dtype.
    target: probabilities :math:`p` (or :math:`\log p` if ``log_target``),
      same shape as ``input``, real floating dtype.
    size_average: deprecated PyTorch argument; see above.
    reduce: deprecated PyTorch argument; see above.
    reduction: ``'none' | 'batchmean' | 'sum' | 'mean'``. Static.
    log_target: whether ``target`` holds log-probabilities. Static.

  Returns:
    For ``'none'`` (or ``reduce=False``) an array of ``input``'s shape;
    otherwise a scalar (shape ``()``). The dtype is
    ``jnp.result_type(input, target)``.

  Raises:
    ValueError: unknown ``reduction``, or ``input`` and ``target`` shapes
      differ.
    TypeError: a non-floating dtype, or a non-bool ``log_target``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> log_q = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1]]))
    >>> p = jnp.array([[0.5, 0.5], [0.5, 0.5]])
    >>> jaxkl.kl_div(log_q, p, reduction="batchmean")  # (0 + 0.5108) / 2
    Array(0.2554128, dtype=float32)
    >>> jaxkl.kl_div(log_q, p, reduction="none")
    Array([[ 0.       ,  0.       ],
           [-0.2938933,  0.804719 ]], dtype=float32)
    >>> # A zero-probability target contributes 0, even against log q = -inf.
    >>> jaxkl.kl_div(jnp.array([-jnp.inf, 0.0]), jnp.array([0.0, 1.0]),
    ...              reduction="sum")
    Array(0., dtype=float32)

  References:
    Kullback & Leibler, "On Information and Sufficiency", Ann. Math. Statist.
    22(1), 1951. PyTorch, ``torch.nn.functional.kl_div`` (v2.13).
  """
  effective, divide_by_batch = _reduction.torch_reduction(
    size_average, reduce, reduction, stacklevel=2
  )
  log_target = _checks.check_bool(log_target, "log_target")
  return _kl_div(input, target, effective, divide_by_batch, log_target)


def _kl_div(
  input: ArrayLike,  # pylint: disable=redefined-builtin
  target: ArrayLike,
  reduction: str,
  divide_by_batch: bool,
  log_target: bool,
) -> jax.Array:
  """Validates the arrays, then computes; options are already resolved."""
  input = _checks.as_float_array(input, "input")
  target = _checks.as_float_array(target, "target")
  _checks.check_same_shape(input, target, "input", "target")
  out_dtype, compute_dtype = _checks.result_dtype(input, target)
  log_q = input.astype(compute_dtype)
  target = target.astype(compute_dtype)
  terms = _pointwise.kl_terms(log_q, target, log_target=log_target)
  result = _reduction.reduce_loss(terms, reduction)
  if divide_by_batch and input.ndim != 0:
    result = result / np.asarray(input.shape[0], compute_dtype)
  return result.astype(out_dtype)


class KLDivLoss:
  r"""Callable KL divergence loss, a drop-in for ``torch.nn.KLDivLoss``.

  ``KLDivLoss(...)(input, target)`` equals
  ``kl_div(input, target, reduction=..., log_target=...)``; see
  :func:`jaxkl.kl_div` for the math, the reductions and the differences from
  PyTorch. As in PyTorch, the deprecated ``size_average``/``reduce`` are
  converted once, here, into ``self.reduction`` (with PyTorch's deprecation
  warning), and ``'batchmean'`` is then *not* applied on top of them:
  ``KLDivLoss(reduce=False, reduction='batchmean')`` is ``'none'``.
  Unlike PyTorch, an invalid ``reduction`` is rejected here rather than at
  the first call.

  The object is immutable and holds no arrays, so it behaves like a JAX
  value: it can be passed to ``jax.jit`` or ``jax.checkpoint`` as the
  function (``jax.jit(KLDivLoss())``), closed over, or passed as a static
  argument (equal losses hash equally, so they share compilations);
  ``copy.copy`` and ``copy.deepcopy`` return the object itself, ``pickle``
  round-trips it, and a Flax NNX module holding one
  (``self.criterion = KLDivLoss()``) can be deep-copied, cloned, split and
  merged.

  Args:
    size_average: deprecated; see :func:`jaxkl.kl_div`.
    reduce: deprecated; see :func:`jaxkl.kl_div`.
    reduction: ``'none' | 'batchmean' | 'sum' | 'mean'``.
    log_target: whether the target holds log-probabilities.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> loss_fn = jaxkl.KLDivLoss(reduction="batchmean", log_target=True)
    >>> log_q = jnp.log(jnp.array([[0.25, 0.75]]))
    >>> log_p = jnp.log(jnp.array([[0.5, 0.5]]))
    >>> loss_fn(log_q, log_p)
    Array(0.14384104, dtype=float32)
  """

  # __weakref__: jax.jit and jax.checkpoint keep weak references to the
  # functions they wrap.
  __slots__ = ("__weakref__", "log_target", "reduction")
  reduction: str
  log_target: bool

  def __init__(
    self,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
  ) -> None:
    if size_average is not None or reduce is not None:
      reduction = _reduction.legacy_reduction(size_average, reduce, stacklevel=2)
    elif reduction != "elementwise_mean":
      _reduction.validate_reduction(reduction)
    object.__setattr__(self, "reduction", reduction)
    object.__setattr__(self, "log_target", _checks.check_bool(log_target, "log_target"))

  def __setattr__(self, name: str, value: object) -> NoReturn:
    raise AttributeError(f"{type(self).__name__} is immutable.")

  def __delattr__(self, name: str) -> NoReturn:
    raise AttributeError(f"{type(self).__name__} is immutable.")

  def __copy__(self) -> KLDivLoss:
    return self  # immutable

  def __deepcopy__(self, memo: dict[int, object]) -> KLDivLoss:
    return self  # immutable, and holds no mutable state

  def __reduce__(self) -> tuple[Callable[[str, bool], KLDivLoss], tuple[str, bool]]:
    # The converted state, without re-running the legacy conversion (and its
    # warning) on unpickling.
    return (_restore_kl_div_loss, (self.reduction, self.log_target))

  def __call__(self, input: ArrayLike, target: ArrayLike) -> jax.Array:  # pylint: disable=redefined-builtin
    """Computes the loss; see :func:`jaxkl.kl_div`.

    Args:
      input: log-probabilities, any shape.
      target: probabilities (log-probabilities if ``log_target``), the same
        shape as ``input``.

    Returns:
      The reduced loss (shape ``()``), or the pointwise losses (shape of
      ``input``) for ``'none'``.
    """
    effective, divide_by_batch = _reduction.torch_reduction(
      None, None, self.reduction, stacklevel=2
    )
    return _kl_div(input, target, effective, divide_by_batch, self.log_target)

  def __repr__(self) -> str:
    return f"KLDivLoss(reduction={self.reduction!r}, log_target={self.log_target})"

  def __eq__(self, other: object) -> bool:
    return (
      type(other) is type(self)
      and self.reduction == other.reduction
      and self.log_target == other.log_target
    )

  def __hash__(self) -> int:
    return hash((type(self), self.reduction, self.log_target))


def _restore_kl_div_loss(reduction: str, log_target: bool) -> KLDivLoss:
  """Unpickles a ``KLDivLoss`` from its state (see ``KLDivLoss.__reduce__``)."""
  loss = object.__new__(KLDivLoss)
  object.__setattr__(loss, "reduction", reduction)
  object.__setattr__(loss, "log_target", log_target)
  return loss
