r"""Sample-only k-nearest-neighbour estimators of the KL divergence.

Given samples :math:`x_1, \dots, x_n \sim P` and
:math:`y_1, \dots, y_m \sim Q` in :math:`\mathbb{R}^d`, ``knn_kl`` estimates
:math:`D_{\mathrm{KL}}(P \,\|\, Q)` from nearest-neighbour distances alone,
without densities (Wang, Kulkarni & Verdú, 2009).

Design (measurements in ``benchmarks/bench_knn.py`` and
``benchmarks/results/knn_cpu.md``):

* Brute force, chunked over the rows of ``x``: a ``lax.map`` over chunks of
  ``chunk_size`` query points (``x`` padded with zero rows to whole chunks,
  whose results are dropped: one loop body to compile, which halved the
  compile time against a separate call for the last ``n % chunk_size`` rows)
  computes the ``[chunk, n]`` and ``[chunk, m]`` squared distances, reduces
  them to a few numbers per query point and drops them, so memory is
  :math:`O(\text{chunk} \cdot (n+m))`. Every row is computed independently
  of the others and the rounding steps (logs, digammas, the sum) run on whole
  ``[n]`` vectors, so the estimate does not depend on ``chunk_size`` beyond
  the last bit of the distances: XLA's CPU backend may contract a
  multiply-add into an FMA in one loop shape and not in another (a 1-ulp
  difference in a squared distance; none in 1-D).
* Squared distances by direct differences,
  :math:`\sum_c (a_c - b_c)^2` accumulated one coordinate at a time (a
  ``fori_loop`` over the coordinates). The expansion
  :math:`\|a\|^2 + \|b\|^2 - 2 a \cdot b` is a matrix product, but its absolute
  error is about :math:`\epsilon \|a\|^2`, so it cannot resolve distances
  below about :math:`\sqrt{\epsilon}\,\|a\|`: in float32 at
  :math:`n = m = 10^4` it moved the 1-D estimate of a divergence of 2 from
  2.08 to 4.29 (most 1-D nearest-neighbour distances are ~1e-4 there) and
  gave identical points distances of ~1e-3 instead of 0 at d = 5 and 20
  (where its estimates agreed to 4 digits). Direct differences are exact for
  identical points and accurate to a few ulps otherwise, and on CPU cost
  less than the expansion at d = 1 and 5 and 1.3x more at d = 20.
* The k-th smallest distance of a row by k passes that walk up its distinct
  values, counting ties (``lax.top_k`` for ``k > 1`` lowers to a sort on CPU
  and was 20-70x slower at :math:`n = 10^4`; for ``k = 1`` a plain minimum is
  10x faster than ``top_k``).
* The self-match of :math:`x_i` is excluded by its index (exactly one entry of
  the row, set to :math:`+\infty`), so a duplicate of :math:`x_i` elsewhere in
  ``x`` is still a neighbour at distance 0.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxkl import _checks

ESTIMATORS = ("wkv", "adaptive")
# Automatic chunk size: about this many squared distances per chunk
# ([chunk, n] plus [chunk, m]; 4 MiB in float32, which stays in cache: on CPU
# at n = m = 1e4, chunks of 32-128 rows ran 1.4-2.5x faster than 1024), within
# the bounds below.
_AUTO_CHUNK_ELEMENTS = 1 << 20
_AUTO_CHUNK_BOUNDS = (16, 1024)


def _check_k(k: object) -> int:
  """Checks that ``k`` is a positive Python (or NumPy) int."""
  return _checks.check_positive_int(k, "k", "the neighbour rank, static")


def _check_chunk_size(chunk_size: object) -> int | None:
  """Checks that ``chunk_size`` is None or a positive int."""
  if chunk_size is None:
    return None
  return _checks.check_positive_int(chunk_size, "chunk_size", "or None")


def _check_samples(x: ArrayLike, y: ArrayLike, k: int) -> tuple[jax.Array, jax.Array]:
  """Converts and checks the two samples; see ``knn_kl``'s Raises."""
  x = _checks.as_float_array(x, "x")
  y = _checks.as_float_array(y, "y")
  for name, value in (("x", x), ("y", y)):
    if value.ndim != 2:
      raise ValueError(
        f"`{name}` must be a 2-D array [num_samples, dim]; got shape "
        f"{tuple(value.shape)}. A 1-D sample of scalars is "
        f"`{name}[:, None]`."
      )
  (n, d), (m, d_y) = x.shape, y.shape
  if d != d_y:
    raise ValueError(
      f"`x` and `y` must have the same dimension (last axis); got shapes "
      f"{tuple(x.shape)} and {tuple(y.shape)}."
    )
  if d < 1:
    raise ValueError(
      f"`x` and `y` must have at least one coordinate; got shapes "
      f"{tuple(x.shape)} and {tuple(y.shape)}."
    )
  if n < k + 1:
    raise ValueError(
      f"`x` needs at least k + 1 = {k + 1} samples (each point's k-th "
      f"neighbour among the others); got {n} (shape {tuple(x.shape)})."
    )
  if m < k:
    raise ValueError(
      f"`y` needs at least k = {k} samples; got {m} (shape {tuple(y.shape)})."
    )
  return x, y


def _auto_chunk_size(n: int, m: int) -> int:
  low, high = _AUTO_CHUNK_BOUNDS
  return min(n, max(low, min(high, _AUTO_CHUNK_ELEMENTS // (n + m))))


def _squared_distances(
  a: jax.Array, b_t: jax.Array, distance: str = "direct"
) -> jax.Array:
  r"""Squared Euclidean distances between rows of ``a`` and columns of ``b_t``.

  Args:
    a: points, ``[c, d]``.
    b_t: points, transposed, ``[d, p]``.
    distance: ``"direct"``, :math:`\sum_j (a_j - b_j)^2` one coordinate at a
      time (exactly 0 for identical points), or ``"gram"``,
      :math:`\max(\|a\|^2 + \|b\|^2 - 2 a \cdot b, 0)`, kept only to
      measure its error in the benchmark.

  Returns:
    ``[c, p]`` squared distances.
  """
  if distance == "gram":
    sq = (
      jnp.sum(jnp.square(a), axis=1)[:, None]
      + jnp.sum(jnp.square(b_t), axis=0)[None, :]
      - 2 * jnp.matmul(a, b_t, precision=lax.Precision.HIGHEST)
    )
    return jnp.maximum(sq, 0)
  a_t = a.T

  def term(j: int | jax.Array) -> jax.Array:
    return jnp.square(a_t[j][:, None] - b_t[j][None, :])

  dim = a.shape[1]
  acc = term(0)
  if dim > 1:
    # A rolled loop: XLA's CPU code for the fully unrolled sum was 1.5-3x
    # slower at n = 1e4 (d = 3-20), and so was unroll=4 at d = 5-8; unrolling
    # by 2 ran 1.2-1.4x faster than not unrolling from d = 5 to 32.
    acc = lax.fori_loop(
      1, dim, lambda j, acc: acc + term(j), acc, unroll=2 if dim - 1 >= 4 else 1
    )
  return acc


def _kth_smallest(sq: jax.Array, ks: tuple[int, ...]) -> jax.Array:
  """The k-th smallest entries of each row of ``sq`` ``[c, p]``, ties counted.

  Returns ``[c, len(ks)]``, column ``j`` the ``ks[j]``-th smallest entry.
  Walks up the distinct values of the row, ``v_1 < v_2 < ...``: one pass
  gives the number of entries equal to ``v_j`` and ``v_{j+1}``, the smallest
  entry above ``v_j``; the k-th smallest is the first ``v_j`` at which the
  running count reaches ``k``. ``max(ks)`` passes in all (a ``fori_loop``,
  compiled once).
  """
  first = jnp.min(sq, axis=1)
  k_max = max(ks)
  if k_max == 1:
    return first[:, None]
  wanted = jnp.asarray(ks, jnp.int32)

  def step(
    _: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    value, seen, result = carry
    seen = seen + jnp.sum(sq == value[:, None], axis=1, dtype=jnp.int32)
    above = jnp.min(jnp.where(sq > value[:, None], sq, jnp.inf), axis=1)
    # Ranks not reached yet (seen < k) move on to the next distinct value.
    result = jnp.where(seen[:, None] < wanted[None, :], above[:, None], result)
    return above, seen, result

  seen = jnp.zeros(first.shape, jnp.int32)
  start = jnp.broadcast_to(first[:, None], (first.shape[0], len(ks)))
  result: jax.Array = lax.fori_loop(0, k_max - 1, step, (first, seen, start))[2]
  return result


def _ball(sq: jax.Array, radius_sq: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Count and largest squared distance of the entries within ``radius_sq``."""
  inside = sq <= radius_sq[:, None]
  count = jnp.sum(inside, axis=1, dtype=jnp.int32)
  largest = jnp.max(jnp.where(inside, sq, 0), axis=1)
  return count, largest


def _chunk_radii(
  x_t: jax.Array,
  y_t: jax.Array,
  resolution: jax.Array,
  rows: jax.Array,
  start: jax.Array,
  *,
  ks: tuple[int, ...],
  estimator: str,
  distance: str,
) -> tuple[jax.Array, ...]:
  """Neighbour radii (and ranks) of the query rows ``rows [c, d]``.

  ``start`` is the index of ``rows[0]`` in ``x``, used to exclude each point's
  own entry from its row of x-distances; ``resolution`` is the relative floor
  on distances (see ``knn_kl``). Returns squared radii for x and for y:
  ``"wkv"``: ``[c, len(ks)]``, the ``ks[j]``-th; ``"adaptive"`` (one ``k``):
  ``[c]``, the largest in the ball, then the ranks ``[c]`` (counts in the
  ball) in x and y. Only exact operations (min, max, counts) follow the
  squared distances.
  """
  n = x_t.shape[1]
  sq_x = _squared_distances(rows, x_t, distance)
  own = start + jnp.arange(rows.shape[0], dtype=jnp.int32)
  sq_x = jnp.where(
    own[:, None] == jnp.arange(n, dtype=jnp.int32)[None, :], jnp.inf, sq_x
  )
  sq_y = _squared_distances(rows, y_t, distance)
  # Distances below the query point's floor are the floor (elementwise, so also
  # the k-th values and the balls' largest ones).
  tiny_root = np.sqrt(_checks.finfo(rows.dtype).tiny).astype(rows.dtype)
  floor = jnp.maximum(resolution * jnp.max(jnp.abs(rows), axis=1), tiny_root)
  floor_sq = jnp.square(floor)[:, None]
  rho_sq = jnp.maximum(_kth_smallest(sq_x, ks), floor_sq)
  nu_sq = jnp.maximum(_kth_smallest(sq_y, ks), floor_sq)
  if estimator == "wkv":
    return rho_sq, nu_sq
  # Adaptive (the paper's letters): the closed ball of radius
  # eps = max(rho_k, nu_k) around x_i holds l_i >= k points of x (x_i
  # excluded) and k_i >= k points of y; rho_{l_i} and nu_{k_i} are the largest
  # distances inside it.
  floor_sq = floor_sq[:, 0]
  eps_sq = jnp.maximum(rho_sq[:, 0], nu_sq[:, 0])
  l_i, rho_in = _ball(sq_x, eps_sq)
  k_i, nu_in = _ball(sq_y, eps_sq)
  return (jnp.maximum(rho_in, floor_sq), jnp.maximum(nu_in, floor_sq), l_i, k_i)


def _per_point(
  x: jax.Array,
  y: jax.Array,
  resolution: jax.Array,
  *,
  ks: tuple[int, ...],
  estimator: str,
  chunk_size: int,
  distance: str,
) -> list[jax.Array]:
  """``_chunk_radii``'s results for every point of ``x``, in chunks.

  Each result has the point axis first (``[n]`` or ``[n, len(ks)]``).
  """
  n, dim = x.shape
  chunk = functools.partial(
    _chunk_radii,
    x.T,
    y.T,
    resolution,
    ks=ks,
    estimator=estimator,
    distance=distance,
  )
  # Pad x to whole chunks (the padding rows' results are dropped): one chunk
  # shape, so the loop body is compiled once.
  num_chunks = -(-n // chunk_size)
  padded = jnp.pad(x, ((0, num_chunks * chunk_size - n), (0, 0)))
  blocks = padded.reshape(num_chunks, chunk_size, dim)
  starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
  mapped = lax.map(lambda args: chunk(*args), (blocks, starts))
  per_point = [
    value.reshape(num_chunks * chunk_size, *value.shape[2:])[:n] for value in mapped
  ]
  # The rounding steps (logs, digammas, the sum) run on whole [n] vectors, which
  # the barrier keeps from being fused back into chunk-shaped loops, so that
  # they round the same way whatever chunk_size.
  return lax.optimization_barrier(per_point)  # type: ignore[no-any-return,no-untyped-call]  # jax.lax.optimization_barrier is unannotated


@functools.partial(
  jax.jit, static_argnames=("k", "estimator", "chunk_size", "distance")
)
def _knn_kl(
  x: jax.Array,
  y: jax.Array,
  resolution: jax.Array,
  *,
  k: int,
  estimator: str,
  chunk_size: int,
  distance: str,
) -> jax.Array:
  """Traced part of ``knn_kl``; arguments already checked and cast.

  ``resolution`` (a scalar of x's dtype) is the relative floor on distances,
  a quarter of the machine epsilon of the caller's dtype; traced, so that
  16-bit inputs share the float32 program.
  """
  (n, dim), m = x.shape, y.shape[0]
  dtype = x.dtype
  per_point = _per_point(
    x,
    y,
    resolution,
    ks=(k,),
    estimator=estimator,
    chunk_size=chunk_size,
    distance=distance,
  )
  rho_sq, nu_sq = (radius.reshape(n) for radius in per_point[:2])
  terms = 0.5 * dim * (jnp.log(nu_sq) - jnp.log(rho_sq))
  if estimator == "adaptive":
    l_i, k_i = (count.astype(dtype) for count in per_point[2:])
    digamma = jax.scipy.special.digamma
    terms = terms + (digamma(l_i) - digamma(k_i))
  estimate = jnp.sum(terms) / n + math.log(m / (n - 1))
  # A NaN or infinite coordinate would otherwise drop out of the minima and
  # counts silently (in y) or poison only some terms: say so with NaN.
  finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
  return jnp.where(finite, estimate, jnp.nan)


@functools.partial(jax.jit, static_argnames=("ks", "chunk_size"))
def _neighbour_radii(
  x: jax.Array,
  y: jax.Array,
  resolution: jax.Array,
  *,
  ks: tuple[int, ...],
  chunk_size: int,
) -> tuple[jax.Array, jax.Array]:
  rho_sq, nu_sq = _per_point(
    x, y, resolution, ks=ks, estimator="wkv", chunk_size=chunk_size, distance="direct"
  )
  return rho_sq.T, nu_sq.T


def neighbour_radii(
  x: ArrayLike,
  y: ArrayLike,
  *,
  ks: tuple[int, ...],
  chunk_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Squared k-th neighbour distances of every point of ``x``, for several k.

  The building block of the k-NN estimators (private): the same distances,
  floor and self-exclusion as ``knn_kl`` (see its docstring).

  Args:
    x: samples of P, ``[n, d]``.
    y: samples of Q, ``[m, d]``.
    ks: the neighbour ranks, a tuple of positive ints, ``n > max(ks)``,
      ``m >= max(ks)``. Static.
    chunk_size: as in ``knn_kl``.

  Returns:
    ``(rho_sq, nu_sq)``, each ``[len(ks), n]`` in the computation dtype
    (float32, or float64 for float64 inputs): row ``j`` holds the squared
    distances from each :math:`x_i` to its ``ks[j]``-th neighbour among the
    other points of ``x`` and in ``y``, floored as in ``knn_kl``. Not checked
    for non-finite inputs.
  """
  if not isinstance(ks, tuple) or not ks:
    raise TypeError(f"`ks` must be a non-empty tuple of ints; got {ks!r}.")
  ks = tuple(_check_k(k) for k in ks)
  chunk_size = _check_chunk_size(chunk_size)
  x, y = _check_samples(x, y, max(ks))
  out_dtype, compute_dtype = _checks.result_dtype(x, y)
  n, m = x.shape[0], y.shape[0]
  chunk_size = _auto_chunk_size(n, m) if chunk_size is None else min(chunk_size, n)
  resolution = np.asarray(_checks.finfo(out_dtype).eps / 4, compute_dtype)
  radii: tuple[jax.Array, jax.Array] = _neighbour_radii(
    x.astype(compute_dtype),
    y.astype(compute_dtype),
    resolution,
    ks=ks,
    chunk_size=chunk_size,
  )
  return radii


def knn_kl(
  x: ArrayLike,
  y: ArrayLike,
  *,
  k: int = 1,
  estimator: str = "wkv",
  chunk_size: int | None = None,
) -> jax.Array:
  r"""k-NN estimate of :math:`D_{\mathrm{KL}}(P \,\|\, Q)` from samples.

  With :math:`x_1, \dots, x_n \sim P` and :math:`y_1, \dots, y_m \sim Q` i.i.d.
  in :math:`\mathbb{R}^d`, :math:`\rho_k(i)` the Euclidean distance from
  :math:`x_i` to its k-th nearest neighbour among the other points of ``x``
  and :math:`\nu_k(i)` the distance from :math:`x_i` to its k-th nearest
  neighbour in ``y``, the ``"wkv"`` estimator (Wang, Kulkarni & Verdú 2009,
  eq. 5) is

  .. math::

     \hat D = \frac{d}{n} \sum_{i=1}^n \log \frac{\nu_k(i)}{\rho_k(i)}
              + \log \frac{m}{n - 1},

  asymptotically unbiased and mean-square consistent for fixed ``k``.

  ``"adaptive"`` is the same paper's bias-reduced estimator with per-point
  ranks (in the paper's letters: :math:`l_i` is a rank in ``x``, :math:`k_i`
  a rank in ``y``),

  .. math::

     \hat D = \frac{d}{n} \sum_{i=1}^n \log \frac{\nu_{k_i}(i)}{\rho_{l_i}(i)}
              + \frac{1}{n} \sum_{i=1}^n \left(\psi(l_i) - \psi(k_i)\right)
              + \log \frac{m}{n - 1},

  (:math:`\psi` the digamma function, which keeps it asymptotically unbiased
  whatever the ranks) with the paper's adaptive ranks:
  :math:`\varepsilon(i) = \max(\rho_k(i), \nu_k(i))`, :math:`l_i` the
  number of points of ``x`` other than :math:`x_i` and :math:`k_i` the number
  of points of ``y`` in the closed ball of radius :math:`\varepsilon(i)`
  around :math:`x_i`. So :math:`l_i, k_i \ge k`, and
  :math:`\rho_{l_i}(i)`, :math:`\nu_{k_i}(i)` are the largest distances in
  that ball, one of them :math:`\varepsilon(i)`: both radii are nearly equal,
  which removes the bias of comparing densities over balls of different sizes
  when P and Q differ. The paper states it with ``k = 1``.

  **Duplicate points and zero distances.** Distances from :math:`x_i` below
  its floor :math:`\delta_i = \frac{\epsilon}{4} \max_j |x_{ij}|` are taken
  to be :math:`\delta_i`, elementwise, before anything else (ranks, balls,
  counts); :math:`\epsilon` is the machine epsilon of the inputs' dtype and
  :math:`\delta_i \ge \sqrt{\text{tiny}}`. :math:`\delta_i` is below the
  spacing between :math:`x_i`'s largest coordinate and any other float, so
  it only replaces distances to exact duplicates of :math:`x_i` (and, for
  ``d > 1``, to points that share that coordinate exactly and differ from
  :math:`x_i` by less than :math:`\delta_i`). So no :math:`\log 0`: a point
  with k duplicates in ``x`` and none in ``y`` adds
  :math:`\frac{d}{n} \log(\nu_k(i) / \delta_i)`, of order :math:`\frac{d}{n}
  \cdot 15` nats in float32 (large: an atom of P that Q lacks makes the true
  divergence infinite); a point with k duplicates in both adds 0 to the
  distance term, and ``"adaptive"`` counts the duplicates in its balls. Only
  the point's own entry is excluded from :math:`\rho`, never its
  duplicates. The estimator is meant for continuous distributions: add a
  little noise to rounded data. A NaN or infinite coordinate anywhere gives
  NaN.

  **Cost.** :math:`O(n (n + m) d)` time (brute force; k extra passes over the
  distances for ``k > 1``, two more for ``"adaptive"``), memory
  :math:`O(\text{chunk\_size} \cdot (n + m))`: the distances are computed for
  ``chunk_size`` points of ``x`` at a time. The estimate does not depend on
  ``chunk_size`` (to the last bit of the distances, see :ref:`knn-notes`,
  also ``help(jaxkl._knn)``).
  Float32 by default, float64 for float64 inputs (under
  ``jax_enable_x64``); 16-bit inputs are computed in float32 and the result
  cast back.

  Args:
    x: samples of P, shape ``[n, d]``, real floating; ``n >= k + 1``.
    y: samples of Q, shape ``[m, d]``, same ``d``; ``m >= k``.
    k: the neighbour rank, a positive int. Static.
    estimator: ``"wkv"`` (eq. 5 of the paper) or ``"adaptive"`` (the
      bias-reduced estimator with adaptive ranks). Static.
    chunk_size: number of points of ``x`` whose distances are computed at a
      time, a positive int, or ``None`` for about :math:`2^{20} / (n + m)`
      (between 16 and 1024, at most ``n``). Static.

  Returns:
    The estimate, a scalar in the promoted dtype of ``x`` and ``y``. It can be
    negative (the divergence itself is not). Under ``jax.jit``, pass ``k``,
    ``estimator`` and ``chunk_size`` as static arguments
    (``static_argnames``).

  Raises:
    TypeError: ``x`` or ``y`` not real floating; ``k`` or ``chunk_size`` not an
      int; ``estimator`` not a string.
    ValueError: ``x`` or ``y`` not 2-D, different dimensions ``d``, ``d = 0``,
      ``n < k + 1``, ``m < k``, ``k < 1``, ``chunk_size < 1`` or an unknown
      ``estimator``.

  Examples:
    Three points against four in 1-D: every ratio :math:`\nu_1 / \rho_1` is
    1/2, so the estimate is :math:`\log(1/2) + \log(4/2) = 0`:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> x = jnp.array([[0.0], [1.0], [3.0]])
    >>> y = jnp.array([[0.5], [2.0], [4.0], [6.0]])
    >>> jaxkl.knn_kl(x, y)
    Array(0., dtype=float32)

    N(0, 1) against N(2, 1), whose divergence is 2 (at this size the k = 1
    estimate has a standard deviation of about 0.1 and a bias of -0.02):

    >>> x = jax.random.normal(jax.random.key(0), (4000, 1))
    >>> y = 2.0 + jax.random.normal(jax.random.key(1), (4000, 1))
    >>> estimate = jaxkl.knn_kl(x, y)
    >>> bool(abs(estimate - 2.0) < 0.4)
    True

  References:
    Q. Wang, S. R. Kulkarni and S. Verdú, "Divergence Estimation for
    Multidimensional Densities Via k-Nearest-Neighbor Distances", IEEE
    Transactions on Information Theory 55(5), 2392-2405, 2009.
  """
  return _estimate(x, y, k=k, estimator=estimator, chunk_size=chunk_size)


def _estimate(
  x: ArrayLike,
  y: ArrayLike,
  *,
  k: object,
  estimator: object,
  chunk_size: object,
  distance: str = "direct",
) -> jax.Array:
  """Checks the arguments of ``knn_kl`` and runs the jitted computation."""
  k = _check_k(k)
  if not isinstance(estimator, str):
    raise TypeError(
      f"`estimator` must be a string, one of {ESTIMATORS}; got "
      f"{estimator!r} of type {type(estimator).__name__}."
    )
  if estimator not in ESTIMATORS:
    raise ValueError(f"`estimator` must be one of {ESTIMATORS}; got {estimator!r}.")
  chunk_size = _check_chunk_size(chunk_size)
  x, y = _check_samples(x, y, k)
  out_dtype, compute_dtype = _checks.result_dtype(x, y)
  n, m = x.shape[0], y.shape[0]
  chunk_size = _auto_chunk_size(n, m) if chunk_size is None else min(chunk_size, n)
  resolution = np.asarray(_checks.finfo(out_dtype).eps / 4, compute_dtype)
  result: jax.Array = _knn_kl(
    x.astype(compute_dtype),
    y.astype(compute_dtype),
    resolution,
    k=k,
    estimator=estimator,
    chunk_size=chunk_size,
    distance=distance,
  )
  return result.astype(out_dtype)
