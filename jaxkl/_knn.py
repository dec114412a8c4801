r"""Sample-only k-nearest-neighbour estimators of the KL divergence.

Given samples :math:`x_1, \dots, x_n \sim P` and
:math:`y_1, \dots, y_m \sim Q` in :math:`\mathbb{R}^d`, ``knn_kl`` estimates
:math:`D_{\mathrm{KL}}(P \,\|\, Q)` from nearest-neighbour distances alone,
without densities (Wang, Kulkarni & Verdú, 2009).

Design (measurements in ``benchmarks/bench_knn.py`` and
``benchmarks/results/knn_cpu.md``):

* In 1-D, sorting instead of brute force (``_sorted_radii_1d``): both samples
  are sorted once; since the computed :math:`(a - b)^2` is monotone in ``b``
  on each side of ``a`` (rounding is monotone), the k nearest entries of a
  row are among the k sorted neighbours on each side, and ``"adaptive"``'s
  balls are ranges of the sorted arrays found by binary search with the
  brute force's own predicate. Same squared distances, floor, ties and
  self-exclusion, so the per-point radii, ranks and duplicate flags are
  bitwise those of the brute force (tested); the estimate may differ in its
  last bit (XLA rounds the final logs and sum of differently fused
  programs differently). At :math:`n = m = 10^4`, k = 1: 3.4-3.9 ms
  against 18-20 ms for the brute force and 5.5-8 ms for SciPy's cKDTree
  (``"adaptive"``: 6-8 ms against 43 ms).
* In 2-8 D with at least 2048 points in each sample, projection pruning
  (``_windowed_radii``): both samples sorted by their projection on the
  pooled sample's first principal axis; each chunk of consecutive query
  points is compared with a fixed window of sorted points of ``x`` and of
  ``y`` around it, which bounds every neighbour radius from above; a point
  whose radius (plus a rounding margin) reaches, in projection, beyond the
  window is recomputed by the brute force (gathered, in chunks skipped
  beyond their number). Bitwise the brute force's radii, ranks and flags per
  point (tested with windows from 4 points to all of them). Window: 0.1 n in
  2-D, 0.2 n in 3-D, 0.3 n in 4-D, 0.4 n in 5-D, 0.6 n in 6-8 D
  (``_WINDOW_FRACTION``, measured at :math:`n = m = 10^4`, k = 1, P = N(0,
  I), Q = N(2 e_1, I), under load: 2-D 26 ms against 52 ms for the brute
  force; 3-D 20 against 69; 4-D 32 against 85; 5-D 44-46 against 82-92
  (39 ms unloaded, see the results file for the final unloaded figures);
  6-D 70 against 154; 8-D 138 against 183). A per-chunk fallback (the whole
  chunk to the brute force when one point's range leaves the window), as
  first planned, was simulated in NumPy: in 5-D it computed 1.2-1.5x the
  brute force's distances, since every chunk holds some point with a far
  neighbour in ``y``; per point fallback computes about half. The principal
  axis here is nearly ``e_1`` (the separating axis); the all-ones and
  ``e_2`` directions needed 1.5-3x wider windows for ``y`` in the same
  simulation. In 20-D the windows would have to hold almost all points: the
  brute force stays.
* In 20-D the Gram expansion is 1.9x faster than direct differences
  (0.062 s against 0.117 s) but keeps its resolution problem; a Gram screen
  with a rounding margin followed by exact distances for the candidates is
  the candidate there. Fusing the coordinate sum into the minimum (no
  ``[chunk, n]`` accumulator) was 2x slower, and splitting the rows into
  independent loops did not bring a second XLA thread in.
* Scale: ``_knn_kl`` and ``_neighbour_radii`` first divide both samples by
  the power of two :math:`2^e \le \max |\text{coordinate}| < 2^{e+1}`
  (``_normalize``; the exponent bits of the maximum, so exact). The
  estimators use distances only through their ratios, and squared distances
  overflow float32 beyond about :math:`10^{19}` and flush to 0 below about
  :math:`10^{-19}`: normalized, the coordinates are below 2 and the floor's
  :math:`\sqrt{\text{tiny}}` term scales with the data, so the estimate of
  :math:`2^s x, 2^s y` is bitwise that of :math:`x, y` (tested for
  :math:`|s| \le 100` on the three paths). Against the unnormalized
  computation, per-point squared radii (``neighbour_radii``, scaled back)
  and duplicate counts were bitwise unchanged on Gaussian samples in 1, 2,
  3, 5 and 12-D at scales 1e-3, 1 and 37; the estimates moved by a few ulps
  (the logs of :math:`4^{-e}` times the radii round differently: 0-6 ulps
  for ``knn_kl``, at most 5e-7 for ``knn_kl_estimate``'s values and
  standard errors); gradients were unchanged; only
  copies of points within :math:`3.6 \cdot 10^{-12}\, 2^e` of the origin
  changed, their floor becoming :math:`2^e \sqrt{\text{tiny}}` instead of
  :math:`\sqrt{\text{tiny}}`.
* Duplicates are counted where they are found: a point's nearest distance at
  the floor (below) marks an exact copy, in ``x`` and in ``y``; ``knn_kl``
  returns the two counts with the estimate from the compiled computation and
  raises or warns in Python only when they are concrete (eager calls), the
  one place a value can decide an error.
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
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxkl import _checks

ESTIMATORS = ("wkv", "adaptive")
# Duplicate samples (see knn_kl's docstring): an error when at least this
# fraction of the points of x also appear in y; a RuntimeWarning when more than
# this fraction of them have an exact copy in x or in y. Continuous float32
# samples repeat by chance: in 1-D at n = m = 1e4 about 1 point in 1e4 has a
# copy (benchmarks/results/knn_cpu.md, "Zero distances").
SHARED_FRACTION_ERROR = 0.5
DUPLICATE_FRACTION_WARNING = 0.01
# Automatic chunk size: about this many squared distances per chunk
# ([chunk, n] plus [chunk, m]; 4 MiB in float32, which stays in cache: on CPU
# at n = m = 1e4, chunks of 32-128 rows ran 1.4-2.5x faster than 1024), within
# the bounds below.
_AUTO_CHUNK_ELEMENTS = 1 << 20
_AUTO_CHUNK_BOUNDS = (16, 1024)
# Projection pruning (``_windowed_radii``): the window, a fraction of the
# sample size, by dimension, where it beat the brute force; and the smallest
# samples it is used for.
_WINDOW_FRACTION: dict[int, float] = {
  2: 0.1,
  3: 0.2,
  4: 0.3,
  5: 0.4,
  6: 0.6,
  7: 0.6,
  8: 0.6,
}
_WINDOW_MIN_POINTS = 2048


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


def _auto_window(n: int, m: int, dim: int) -> int | None:
  """Window of the projection-pruned path (``_windowed_radii``), or None
  where the brute force is faster (measured: see the module docstring)."""
  fraction = _WINDOW_FRACTION.get(dim)
  if fraction is None or min(n, m) < _WINDOW_MIN_POINTS:
    return None
  return int(fraction * max(n, m))


def _window_chunk_size(window: int) -> int:
  low, high = _AUTO_CHUNK_BOUNDS
  return max(low, min(high, _AUTO_CHUNK_ELEMENTS // (2 * window)))


def _auto_chunk_size(n: int, m: int) -> int:
  low, high = _AUTO_CHUNK_BOUNDS
  return min(n, max(low, min(high, _AUTO_CHUNK_ELEMENTS // (n + m))))


def _check_independent(x: object, y: object, function: str) -> None:
  """Raises when ``x`` and ``y`` are the same object (see ``knn_kl``)."""
  if x is y:
    raise ValueError(
      "`x` and `y` must be independent samples; got the same array for both "
      f"({function}(x, x) compares every point with itself: each nu_k would "
      "be the floor and the estimate meaningless)."
    )


def _normalize(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Both samples divided by :math:`p = 2^e`, and :math:`p`.

  :math:`2^e \le a < 2^{e+1}` for :math:`a` the largest finite
  :math:`|\text{coordinate}|` of ``x`` and ``y`` (its exponent bits, so exact);
  :math:`p = 1` when :math:`a` is 0 or subnormal. Dividing by a power of two
  is exact for every result above the smallest normal number, so the
  normalized samples are the given ones in other units: every coordinate
  below 2 in magnitude, every squared distance at most :math:`16 d` (no
  overflow), and the floor :math:`\sqrt{\text{tiny}}` (``_chunk_radii``)
  relative to :math:`a` (no squared distance underflows, whatever the
  scale). Non-finite coordinates stay non-finite.
  """
  dtype = x.dtype
  info = _checks.finfo(dtype)
  int_dtype = {4: jnp.int32, 8: jnp.int64}[dtype.itemsize]

  def largest(z: jax.Array) -> jax.Array:
    return jnp.max(jnp.where(jnp.isfinite(z), jnp.abs(z), 0))

  a = jnp.maximum(largest(x), largest(y))
  exponent_bits = np.array(((1 << info.nexp) - 1) << info.nmant, int_dtype)
  power = lax.bitcast_convert_type(
    lax.bitcast_convert_type(a, int_dtype) & exponent_bits, dtype
  )
  # Piecewise constant in the samples: no gradient through it.
  power = lax.stop_gradient(jnp.where(power > 0, power, jnp.ones_like(power)))
  return x / power, y / power, power


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


def _kth_smallest(sq: jax.Array, ks: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """The k-th smallest entries of each row of ``sq`` ``[c, p]``, ties counted.

  Returns the smallest entries ``[c]`` and ``[c, len(ks)]``, column ``j`` the
  ``ks[j]``-th smallest entry.
  Walks up the distinct values of the row, ``v_1 < v_2 < ...``: one pass
  gives the number of entries equal to ``v_j`` and ``v_{j+1}``, the smallest
  entry above ``v_j``; the k-th smallest is the first ``v_j`` at which the
  running count reaches ``k``. ``max(ks)`` passes in all (a ``fori_loop``,
  compiled once).
  """
  first = jnp.min(sq, axis=1)
  k_max = max(ks)
  if k_max == 1:
    return first, first[:, None]
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
  return first, result


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
  own: jax.Array,
  *,
  ks: tuple[int, ...],
  estimator: str,
  distance: str,
) -> tuple[jax.Array, ...]:
  """Neighbour radii (and ranks) of the query rows ``rows [c, d]``.

  ``own`` ``[c]`` holds the column of ``x_t`` of each row's own point, whose
  entry is excluded from its row of x-distances (an index outside
  ``[0, x_t.shape[1])`` excludes nothing); ``resolution`` is the relative floor
  on distances (see ``knn_kl``). Returns squared radii for x and for y:
  ``"wkv"``: ``[c, len(ks)]``, the ``ks[j]``-th; ``"adaptive"`` (one ``k``):
  ``[c]``, the largest in the ball, then the ranks ``[c]`` (counts in the
  ball) in x and y. Only exact operations (min, max, counts) follow the
  squared distances.
  """
  n = x_t.shape[1]
  sq_x = _squared_distances(rows, x_t, distance)
  sq_x = jnp.where(
    own[:, None] == jnp.arange(n, dtype=jnp.int32)[None, :], jnp.inf, sq_x
  )
  sq_y = _squared_distances(rows, y_t, distance)
  # Distances below the query point's floor are the floor (elementwise, so also
  # the k-th values and the balls' largest ones).
  tiny_root = np.sqrt(_checks.finfo(rows.dtype).tiny).astype(rows.dtype)
  floor = jnp.maximum(resolution * jnp.max(jnp.abs(rows), axis=1), tiny_root)
  floor_sq = jnp.square(floor)[:, None]
  first_x, rho_sq = _kth_smallest(sq_x, ks)
  first_y, nu_sq = _kth_smallest(sq_y, ks)
  # Exact duplicates of the query point (nearest distance at the floor).
  dup_x, dup_y = first_x <= floor_sq[:, 0], first_y <= floor_sq[:, 0]
  rho_sq = jnp.maximum(rho_sq, floor_sq)
  nu_sq = jnp.maximum(nu_sq, floor_sq)
  if estimator == "wkv":
    return rho_sq, nu_sq, dup_x, dup_y
  # Adaptive (the paper's letters): the closed ball of radius
  # eps = max(rho_k, nu_k) around x_i holds l_i >= k points of x (x_i
  # excluded) and k_i >= k points of y; rho_{l_i} and nu_{k_i} are the largest
  # distances inside it.
  floor_sq = floor_sq[:, 0]
  eps_sq = jnp.maximum(rho_sq[:, 0], nu_sq[:, 0])
  l_i, rho_in = _ball(sq_x, eps_sq)
  k_i, nu_in = _ball(sq_y, eps_sq)
  return (
    jnp.maximum(rho_in, floor_sq),
    jnp.maximum(nu_in, floor_sq),
    l_i,
    k_i,
    dup_x,
    dup_y,
  )


def _padded_square(a: jax.Array, b: jax.Array) -> jax.Array:
  """``(a - b)^2``, ``inf`` where ``b`` is the ``inf`` padding, with a zero
  (not NaN) gradient there: the square's slope at ``inf`` times a zero
  cotangent would be NaN."""
  pad = jnp.isinf(b)
  return jnp.where(pad, jnp.inf, jnp.square(a - jnp.where(pad, a, b)))


def _sorted_radii_1d(
  x: jax.Array,
  y: jax.Array,
  resolution: jax.Array,
  *,
  ks: tuple[int, ...],
  estimator: str,
) -> list[jax.Array]:
  r"""``_chunk_radii``'s results for every point of a 1-D ``x``, by sorting.

  Exact and equal to the brute-force path: the squared distance
  ``(a - b)^2`` computed in floating point is monotone in ``b`` on each side
  of ``a`` (rounding is monotone), so along the sorted samples the distances
  from ``a`` grow away from ``a``'s position, on each side. The k smallest
  entries of a row are then among the ``k`` sorted neighbours on each side
  (of ``a``'s own position in sorted ``x``, which excludes exactly its own
  entry; of its ``searchsorted`` position in sorted ``y``), and the k-th
  smallest of the union of the two ascending sides ``L``, ``R`` is
  :math:`\min_{s=0}^{k} \max(L_s, R_{k-s})` (``L_s`` the s-th of ``L``,
  ``L_0 = 0``), with ties counted. The balls of ``"adaptive"`` are ranges of
  the sorted samples, found by a binary search with the same predicate
  ``(a - b)^2 <= eps^2`` as the brute force.
  """
  n, m = x.shape[0], y.shape[0]
  dtype = x.dtype
  k_max = max(ks)
  xs, ys = x[:, 0], y[:, 0]
  order = jnp.argsort(xs)
  sx = xs[order]
  sy = jnp.sort(ys)
  inf = jnp.full((k_max,), jnp.inf, dtype)
  # Padded with +inf on both sides: (a - inf)^2 = inf never counts.
  px = jnp.concatenate([inf, sx, inf])
  py = jnp.concatenate([inf, sy, inf])
  steps = jnp.arange(1, k_max + 1, dtype=jnp.int32)
  j = jnp.arange(n, dtype=jnp.int32)
  p = jnp.searchsorted(sy, sx, side="left").astype(jnp.int32)

  def sides(
    padded: jax.Array, left_end: jax.Array, right_start: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    # Squared distances to the k_max sorted neighbours on each side, nearest
    # first: positions left_end - s + 1 and right_start + s - 1, s = 1..k_max.
    left = padded[(k_max + left_end + 1)[:, None] - steps[None, :]]
    right = padded[(k_max + right_start - 1)[:, None] + steps[None, :]]
    return _padded_square(sx[:, None], left), _padded_square(sx[:, None], right)

  def kth(left: jax.Array, right: jax.Array) -> tuple[jax.Array, jax.Array]:
    zero = jnp.zeros((n, 1), dtype)
    left = jnp.concatenate([zero, left], axis=1)
    right = jnp.concatenate([zero, right], axis=1)
    columns = [
      jnp.min(jnp.maximum(left[:, : k + 1], right[:, k::-1]), axis=1) for k in ks
    ]
    return jnp.minimum(left[:, 1], right[:, 1]), jnp.stack(columns, axis=1)

  first_x, rho_sq = kth(*sides(px, j - 1, j + 1))
  first_y, nu_sq = kth(*sides(py, p - 1, p))
  tiny_root = np.sqrt(_checks.finfo(dtype).tiny).astype(dtype)
  floor = jnp.maximum(resolution * jnp.abs(sx), tiny_root)
  floor_sq = jnp.square(floor)
  dup_x, dup_y = first_x <= floor_sq, first_y <= floor_sq
  rho_sq = jnp.maximum(rho_sq, floor_sq[:, None])
  nu_sq = jnp.maximum(nu_sq, floor_sq[:, None])
  results = [rho_sq, nu_sq]
  if estimator == "adaptive":
    eps_sq = jnp.maximum(rho_sq[:, 0], nu_sq[:, 0])

    def reach(
      sorted_: jax.Array, start: jax.Array, stop: jax.Array, step: int
    ) -> tuple[jax.Array, jax.Array]:
      """Count of sorted_[start], sorted_[start + step], ... (before stop)
      within eps, and the largest squared distance among them."""
      # Binary search for the number c of leading entries inside the ball:
      # the predicate is true for the first c entries and false after.
      size = sorted_.shape[0]
      low = jnp.zeros((n,), jnp.int32)
      high = jnp.abs(stop - start).astype(jnp.int32)

      def halve(
        _: int | jax.Array, bounds: tuple[jax.Array, jax.Array]
      ) -> tuple[jax.Array, jax.Array]:
        low, high = bounds
        active = low < high
        mid = (low + high + 1) // 2
        index = jnp.clip(start + step * (mid - 1), 0, size - 1)
        inside = jnp.square(sx - sorted_[index]) <= eps_sq
        return (
          jnp.where(active & inside, mid, low),
          jnp.where(active & ~inside, mid - 1, high),
        )

      # A rolled loop: unrolled, the four searches took 2 s to compile.
      low, high = lax.fori_loop(0, int(size).bit_length() + 1, halve, (low, high))
      last = jnp.clip(start + step * (low - 1), 0, size - 1)
      largest = jnp.where(low > 0, jnp.square(sx - sorted_[last]), 0)
      return low, largest

    counts, largest = [], []
    for sorted_, start, stop, step in (
      (sx, j - 1, -jnp.ones_like(j), -1),
      (sx, j + 1, jnp.full_like(j, n), 1),
      (sy, p - 1, -jnp.ones_like(j), -1),
      (sy, p, jnp.full_like(j, m), 1),
    ):
      count, big = reach(sorted_, start, stop, step)
      counts.append(count)
      largest.append(big)
    results = [
      jnp.maximum(jnp.maximum(largest[0], largest[1]), floor_sq),
      jnp.maximum(jnp.maximum(largest[2], largest[3]), floor_sq),
      counts[0] + counts[1],
      counts[2] + counts[3],
    ]
  results += [dup_x, dup_y]
  # Back to the order of x.
  inverse = jnp.zeros((n,), jnp.int32).at[order].set(j)
  return [value[inverse] for value in results]


def _windowed_radii(
  x: jax.Array,
  y: jax.Array,
  resolution: jax.Array,
  *,
  ks: tuple[int, ...],
  estimator: str,
  distance: str,
  chunk_size: int,
  window_chunk_size: int,
  window: int,
) -> list[jax.Array]:
  r"""``_chunk_radii``'s results for every point of ``x``, pruned by a projection.

  Exact: per point, the brute force's results. Both samples are sorted by
  their projection :math:`s(z) = u \cdot z` on the first principal axis
  :math:`u` of the pooled sample (unit length, so :math:`|s(a) - s(b)| \le
  \|a - b\|`). The sorted points of ``x`` are taken in chunks of
  consecutive ones; each chunk meets ``window`` consecutive sorted points of
  ``x`` and of ``y`` around its position, and ``_chunk_radii`` on those
  windows gives every query point radii :math:`r` at least its true ones (a
  k-th smallest over a subset). All the points that could be as close as
  :math:`r` lie within :math:`|s(z) - s(x_i)| \le r` (widened by a
  rounding margin, below), a range of the sorted projections found by
  binary search: when that range lies inside the window, for ``x`` and for
  ``y``, the window held every point that the brute force's k-th values, ties
  and balls depend on, so its results are the brute force's. The other
  points (and all of them if any coordinate is not finite) are gathered and
  computed by the brute force, in chunks skipped (``lax.cond``) beyond their
  number.

  The margin: the computed squared distance, its square root and the
  projections carry relative errors of a few :math:`d \epsilon`; the range
  uses :math:`r (1 + \delta) + \delta A` with :math:`\delta = 16 (d + 2)
  \epsilon` and :math:`A = \max_z \sum_c |u_c z_c|`, far above them.
  """
  (n, dim), m = x.shape, y.shape[0]
  dtype = x.dtype
  k_max = max(ks)
  w_x, w_y = min(n, max(window, k_max + 1)), min(m, max(window, k_max))
  finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
  # The direction: the principal axis of the pooled sample (any unit vector
  # keeps the method exact; this one spreads the points most).
  pooled = jnp.concatenate([x, y])
  centred = jnp.where(finite, pooled - jnp.mean(pooled, axis=0)[None, :], 0)
  cov = jnp.matmul(centred.T, centred, precision=lax.Precision.HIGHEST)
  axis = jnp.linalg.eigh(cov)[1][:, -1]
  axis = axis / jnp.sqrt(jnp.sum(jnp.square(axis)))

  def project(z: jax.Array) -> jax.Array:
    return jnp.sum(z * axis[None, :], axis=1)

  s_x, s_y = project(x), project(y)
  order_x, order_y = jnp.argsort(s_x), jnp.argsort(s_y)
  xs, ys = x[order_x], y[order_y]
  px, py = s_x[order_x], s_y[order_y]
  delta = 16 * (dim + 2) * _checks.finfo(dtype).eps
  scale = jnp.maximum(
    jnp.max(jnp.sum(jnp.abs(x * axis[None, :]), axis=1)),
    jnp.max(jnp.sum(jnp.abs(y * axis[None, :]), axis=1)),
  )
  xs_t, ys_t = xs.T, ys.T
  chunk = functools.partial(_chunk_radii, ks=ks, estimator=estimator, distance=distance)
  c = min(window_chunk_size, n)
  num_chunks = -(-n // c)
  steps = jnp.arange(c, dtype=jnp.int32)

  def covered(
    sorted_: jax.Array,
    centre: jax.Array,
    radius_sq: jax.Array,
    low: jax.Array,
    size: int,
  ) -> jax.Array:
    reach = jnp.sqrt(radius_sq) * (1 + delta) + delta * scale
    first = jnp.searchsorted(sorted_, centre - reach, side="left")
    last = jnp.searchsorted(sorted_, centre + reach, side="right")
    return (first >= low) & (last <= low + size)

  def window_chunk(start: jax.Array) -> tuple[jax.Array, ...]:
    index = jnp.minimum(start + steps, n - 1)  # padding rows repeat the last
    rows, s_rows = xs[index], px[index]
    middle = jnp.minimum(start + c // 2, n - 1)
    low_x = jnp.clip(middle - w_x // 2, 0, n - w_x)
    low_y = jnp.clip(
      jnp.searchsorted(py, px[middle]).astype(jnp.int32) - w_y // 2, 0, m - w_y
    )
    win_x = lax.dynamic_slice_in_dim(xs_t, low_x, w_x, axis=1)
    win_y = lax.dynamic_slice_in_dim(ys_t, low_y, w_y, axis=1)
    out = chunk(win_x, win_y, resolution, rows, index - low_x)
    if estimator == "wkv":
      reach_x, reach_y = jnp.max(out[0], axis=1), jnp.max(out[1], axis=1)
    else:
      reach_x = reach_y = jnp.maximum(out[0], out[1])
    ok = covered(px, s_rows, reach_x, low_x, w_x) & covered(
      py, s_rows, reach_y, low_y, w_y
    )
    return (*out, ok)

  starts = jnp.arange(num_chunks, dtype=jnp.int32) * c
  mapped = lax.map(window_chunk, starts)
  *results, ok = (
    value.reshape(num_chunks * c, *value.shape[2:])[:n] for value in mapped
  )
  fail = ~ok | ~finite
  # The failed points first (stable: in sorted order), then brute force in
  # chunks, those past the number of failures skipped.
  count = jnp.sum(fail, dtype=jnp.int32)
  b = min(chunk_size, n)
  num_blocks = -(-n // b)
  picked = jnp.argsort(~fail, stable=True).astype(jnp.int32)
  picked = jnp.pad(picked, (0, num_blocks * b - n), constant_values=n - 1)

  def brute_block(start: jax.Array) -> tuple[jax.Array, ...]:
    index = lax.dynamic_slice_in_dim(picked, start, b)
    shapes = jax.eval_shape(lambda: chunk(xs_t, ys_t, resolution, xs[index], index))
    return lax.cond(  # type: ignore[no-any-return]
      start < count,
      lambda: chunk(xs_t, ys_t, resolution, xs[index], index),
      lambda: tuple(jnp.zeros(v.shape, v.dtype) for v in shapes),
    )

  blocks = lax.map(brute_block, jnp.arange(num_blocks, dtype=jnp.int32) * b)
  # Scatter back: the i-th picked point is valid while i < count.
  target = jnp.where(jnp.arange(num_blocks * b) < count, picked, n)
  merged = []
  for value, fixed in zip(results, blocks, strict=True):
    fixed = fixed.reshape(num_blocks * b, *fixed.shape[2:])
    merged.append(value.at[target].set(fixed, mode="drop"))
  # Back to the order of x.
  inverse = jnp.zeros((n,), jnp.int32).at[order_x].set(jnp.arange(n, dtype=jnp.int32))
  return [value[inverse] for value in merged]


def _per_point(
  x: jax.Array,
  y: jax.Array,
  resolution: jax.Array,
  *,
  ks: tuple[int, ...],
  estimator: str,
  chunk_size: int,
  distance: str,
  method: str,
  window: int | None = None,
  window_chunk_size: int | None = None,
) -> list[jax.Array]:
  """``_chunk_radii``'s results for every point of ``x``.

  Each result has the point axis first (``[n]`` or ``[n, len(ks)]``).
  ``method``: ``"brute"`` (in chunks), ``"sort"`` (1-D only), or ``"auto"``:
  ``"sort"`` in 1-D with direct distances, else ``"brute"``.
  """
  n, dim = x.shape
  if method == "auto":
    if dim == 1 and distance == "direct":
      method = "sort"
    elif _auto_window(n, y.shape[0], dim) is not None:
      method = "window"
    else:
      method = "brute"
  if method == "sort":
    per_point = _sorted_radii_1d(x, y, resolution, ks=ks, estimator=estimator)
    return lax.optimization_barrier(per_point)  # type: ignore[no-any-return,no-untyped-call]  # jax.lax.optimization_barrier is unannotated
  if method == "window":
    if window is None:
      window = _auto_window(n, y.shape[0], dim) or n
    per_point = _windowed_radii(
      x,
      y,
      resolution,
      ks=ks,
      estimator=estimator,
      distance=distance,
      chunk_size=chunk_size,
      window_chunk_size=window_chunk_size or _window_chunk_size(window),
      window=window,
    )
    return lax.optimization_barrier(per_point)  # type: ignore[no-any-return,no-untyped-call]  # jax.lax.optimization_barrier is unannotated
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
  mapped = lax.map(
    lambda args: chunk(args[0], args[1] + jnp.arange(chunk_size, dtype=jnp.int32)),
    (blocks, starts),
  )
  per_point = [
    value.reshape(num_chunks * chunk_size, *value.shape[2:])[:n] for value in mapped
  ]
  # The rounding steps (logs, digammas, the sum) run on whole [n] vectors, which
  # the barrier keeps from being fused back into chunk-shaped loops, so that
  # they round the same way whatever chunk_size.
  return lax.optimization_barrier(per_point)  # type: ignore[no-any-return,no-untyped-call]  # jax.lax.optimization_barrier is unannotated


@functools.partial(
  jax.jit, static_argnames=("k", "estimator", "chunk_size", "distance", "method")
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
  method: str,
) -> tuple[jax.Array, jax.Array]:
  """Traced part of ``knn_kl``; arguments already checked and cast.

  ``resolution`` (a scalar of x's dtype) is the relative floor on distances,
  a quarter of the machine epsilon of the computation dtype (float32 for
  16-bit inputs, whose values it holds exactly); traced, like a value.
  Returns the estimate and the duplicate counts, int32 ``[2]``: the points
  of ``x`` with an exact copy elsewhere in ``x`` and in ``y``.
  """
  (n, dim), m = x.shape, y.shape[0]
  dtype = x.dtype
  # The estimate depends on the distances only through their ratios: computed
  # on the normalized samples, whose squared distances neither overflow nor
  # underflow, and exactly the same for x, y and 2^s x, 2^s y.
  x, y, _ = _normalize(x, y)
  per_point = _per_point(
    x,
    y,
    resolution,
    ks=(k,),
    estimator=estimator,
    chunk_size=chunk_size,
    distance=distance,
    method=method,
  )
  rho_sq, nu_sq = (radius.reshape(n) for radius in per_point[:2])
  terms = 0.5 * dim * (jnp.log(nu_sq) - jnp.log(rho_sq))
  if estimator == "adaptive":
    l_i, k_i = (count.astype(dtype) for count in per_point[2:4])
    digamma = jax.scipy.special.digamma
    terms = terms + (digamma(l_i) - digamma(k_i))
  estimate = jnp.sum(terms) / n + math.log(m / (n - 1))
  # A NaN or infinite coordinate would otherwise drop out of the minima and
  # counts silently (in y) or poison only some terms: say so with NaN.
  finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
  duplicates = jnp.stack([jnp.sum(flags, dtype=jnp.int32) for flags in per_point[-2:]])
  return jnp.where(finite, estimate, jnp.nan), duplicates


@functools.partial(
  jax.jit, static_argnames=("ks", "chunk_size", "normalized", "method")
)
def _neighbour_radii(
  x: jax.Array,
  y: jax.Array,
  resolution: jax.Array,
  *,
  ks: tuple[int, ...],
  chunk_size: int,
  normalized: bool = False,
  method: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  x, y, power = _normalize(x, y)
  rho_sq, nu_sq, dup_x, dup_y = _per_point(
    x,
    y,
    resolution,
    ks=ks,
    estimator="wkv",
    chunk_size=chunk_size,
    distance="direct",
    method=method,
  )
  duplicates = jnp.stack(
    [jnp.sum(dup_x, dtype=jnp.int32), jnp.sum(dup_y, dtype=jnp.int32)]
  )
  if not normalized:
    # Back to the units of x: exact wherever the result is a normal float (one
    # factor p at a time: p^2 alone may overflow or underflow when the result
    # does not).
    rho_sq, nu_sq = ((radius * power) * power for radius in (rho_sq, nu_sq))
  return rho_sq.T, nu_sq.T, duplicates


def neighbour_radii(
  x: ArrayLike,
  y: ArrayLike,
  *,
  ks: tuple[int, ...],
  chunk_size: int | None = None,
  return_duplicates: bool = False,
  normalized: bool = False,
) -> tuple[jax.Array, ...]:
  r"""Squared k-th neighbour distances of every point of ``x``, for several k.

  The building block of the k-NN estimators (private): the same distances,
  floor, normalization and self-exclusion as ``knn_kl`` (see its docstring).
  The distances are computed on the samples divided by :math:`2^e` (as in
  ``knn_kl``); by default the squared radii are multiplied back by
  :math:`4^e`, exactly where the result is a normal float: the same values
  as computing on the given samples, so at extreme scales they overflow to
  infinity or underflow (float32 distances above about :math:`1.8 \cdot
  10^{19}` or below :math:`1.1 \cdot 10^{-19}`). ``normalized=True`` returns
  the radii of the normalized samples, :math:`4^{-e}` times those, which
  never overflow or underflow: for anything that uses only their ratios
  (the estimators' logs of ratios).

  Args:
    x: samples of P, ``[n, d]``.
    y: samples of Q, ``[m, d]``.
    ks: the neighbour ranks, a tuple of positive ints, ``n > max(ks)``,
      ``m >= max(ks)``. Static.
    chunk_size: as in ``knn_kl``.
    return_duplicates: also return the duplicate counts of ``knn_kl``
      (int32 ``[2]``, see its ``return_duplicates``); pass them to
      ``report_duplicates`` to raise or warn as ``knn_kl`` does. Nothing is
      checked here.
    normalized: return the squared radii of the normalized samples (above),
      a Python bool. Static.

  Returns:
    ``(rho_sq, nu_sq)``, each ``[len(ks), n]`` in the computation dtype
    (float32, or float64 for float64 inputs): row ``j`` holds the squared
    distances from each :math:`x_i` to its ``ks[j]``-th neighbour among the
    other points of ``x`` and in ``y``, floored as in ``knn_kl`` (divided by
    :math:`4^e` if ``normalized``); then the duplicate counts if
    ``return_duplicates``. Not checked for non-finite inputs.
  """
  if not isinstance(ks, tuple) or not ks:
    raise TypeError(f"`ks` must be a non-empty tuple of ints; got {ks!r}.")
  ks = tuple(_check_k(k) for k in ks)
  chunk_size = _check_chunk_size(chunk_size)
  x, y = _check_samples(x, y, max(ks))
  _, compute_dtype = _checks.result_dtype(x, y)
  n, m = x.shape[0], y.shape[0]
  chunk_size = _auto_chunk_size(n, m) if chunk_size is None else min(chunk_size, n)
  if x.shape[1] == 1:
    chunk_size = n  # unused by the sorted path: one compiled program
  resolution = np.asarray(_checks.finfo(compute_dtype).eps / 4, compute_dtype)
  return_duplicates = _checks.check_bool(return_duplicates, "return_duplicates")
  normalized = _checks.check_bool(normalized, "normalized")
  rho_sq, nu_sq, duplicates = _neighbour_radii(
    x.astype(compute_dtype),
    y.astype(compute_dtype),
    resolution,
    ks=ks,
    chunk_size=chunk_size,
    normalized=normalized,
  )
  if return_duplicates:
    return rho_sq, nu_sq, duplicates
  return rho_sq, nu_sq


def knn_kl(
  x: ArrayLike,
  y: ArrayLike,
  *,
  k: int = 1,
  estimator: str = "wkv",
  chunk_size: int | None = None,
  return_duplicates: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
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

  asymptotically unbiased and mean-square consistent for fixed ``k``, but
  biased at practical sizes, more so in higher dimensions:
  ``jaxkl.knn_kl_estimate`` gives a bias-reduced estimate with a standard
  error.

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
  its floor :math:`\delta_i = \max(\frac{\epsilon}{4} \max_j |x_{ij}|,
  2^e \sqrt{\text{tiny}})` are taken to be :math:`\delta_i`, elementwise,
  before anything else (ranks, balls, counts); :math:`\epsilon` and
  :math:`\text{tiny}` are the machine epsilon and smallest normal number of
  the inputs' dtype (of float32 for 16-bit inputs), and :math:`2^e` is the
  samples' scale (below). :math:`\frac{\epsilon}{4} \max_j |x_{ij}|` is
  below the spacing between :math:`x_i`'s largest coordinate and any other
  float, so it only replaces distances to exact duplicates of :math:`x_i`
  (and, for ``d > 1``, to points that share that coordinate exactly and
  differ from :math:`x_i` by less than :math:`\delta_i`); the second term
  takes over only for points whose every coordinate is below
  :math:`\frac{4}{\epsilon} \sqrt{\text{tiny}}` times the scale
  (:math:`3.6 \cdot 10^{-12}\, 2^e` in float32), such as copies of the
  origin, and there also absorbs distinct points closer than
  :math:`2^e \sqrt{\text{tiny}}`. So no :math:`\log 0`: a point
  with k duplicates in ``x`` and none in ``y`` adds
  :math:`\frac{d}{n} \log(\nu_k(i) / \delta_i)`, of order :math:`\frac{d}{n}
  \cdot 15` nats in float32 (large: an atom of P that Q lacks makes the true
  divergence infinite); a point with k duplicates in both adds 0 to the
  distance term, and ``"adaptive"`` counts the duplicates in its balls. Only
  the point's own entry is excluded from :math:`\rho`, never its
  duplicates. The estimator is meant for continuous distributions: add a
  little noise to rounded data. A NaN or infinite coordinate anywhere gives
  NaN.

  **Scale and precision.** The estimate depends on the distances only
  through their ratios: it is invariant under a common rescaling of ``x``
  and ``y``. Both samples are first divided by :math:`2^e`, the power of
  two with :math:`2^e \le a < 2^{e+1}` for :math:`a` the largest finite
  :math:`|\text{coordinate}|` of ``x`` and ``y`` (1 if all are 0). That is
  exact in floating point, and the squared distances can then neither
  overflow (in float32 they would from distances of about
  :math:`1.8 \cdot 10^{19}`, giving NaN) nor underflow unnoticed (below
  about :math:`1.1 \cdot 10^{-19}` they would flush to 0, and distinct points
  would count as duplicates); ``knn_kl(c * x, c * y)`` equals
  ``knn_kl(x, y)`` exactly for a power of two ``c`` (from the smallest
  normal number to the largest float; subnormal coordinates count as 0 on
  CPU); for another ``c``, up to the rounding of ``c * x`` and ``c * y``.
  What the normalization cannot restore is precision lost in the
  coordinates themselves: samples far from the origin relative to their
  spread, such as float32 :math:`10^6 + N(0, 1)`, hold only the floats at
  that magnitude (spaced 0.0625 there), so the distances are multiples of
  that spacing and many points are exact duplicates (counted, and reported
  below). The estimate is also invariant under a common translation:
  centre such samples before rounding them to float32, or pass float64.

  **Independence and duplicate checks.** The samples must be independent:
  ``knn_kl(x, x)`` would compare every point with itself. The computation
  counts the points of ``x`` whose nearest distance hits the floor, in ``x``
  (an exact copy elsewhere in ``x``) and in ``y`` (the point also appears in
  ``y``). When ``knn_kl`` runs eagerly (its result is concrete), it raises a
  ``ValueError`` if at least half of the points of ``x`` appear in ``y``
  (``SHARED_FRACTION_ERROR``; e.g. the same sample passed twice), and warns
  (``RuntimeWarning``) if more than 1% of them (``DUPLICATE_FRACTION_WARNING``)
  have a copy in ``x`` or in ``y``. Continuous float32 samples repeat by
  chance far below that (in 1-D at :math:`n = m = 10^4`, about one point in
  :math:`10^4`). Under ``jax.jit``, ``jax.vmap`` or ``jax.grad`` the counts
  are traced and nothing is checked: pass ``return_duplicates=True`` to get
  them as an output and inspect them outside the transformation. Passing
  the same Python object as ``x`` and ``y`` raises at once, before any
  computation; inside a transformed function that includes one traced value
  passed as both (``jax.jit(lambda a: knn_kl(a, a))``), but not
  ``jax.jit(knn_kl)(x, x)``: there ``x`` and ``y`` are two arguments of the
  jitted function, traced separately, so nothing is raised and the estimate
  is the meaningless one (the counts come out as ``[0, n]``).

  **Cost.** In 1-D, :math:`O((n + m) \log(n + m) + n k)` time and
  :math:`O((n + m) + n k)` memory: both samples are sorted once and each
  point's neighbours are read off the sorted arrays (exactly the brute-force
  result, ties and floor included; ``chunk_size`` is not used). In more
  dimensions, :math:`O(n (n + m) d)` time (brute force; k extra passes over
  the distances for ``k > 1``, two more for ``"adaptive"``), memory
  :math:`O(\text{chunk\_size} \cdot (n + m))`: the distances are computed for
  ``chunk_size`` points of ``x`` at a time. From 2-D to 8-D with at least
  2048 points in each sample, both samples are first sorted along their
  principal axis and each point compared with a window of nearby points
  (a fraction of the sample), the brute force only recomputing the points
  whose neighbours could lie outside it: the same result, about 2-3x faster
  at :math:`n = m = 10^4`. The estimate does not depend on
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
      (between 16 and 1024, at most ``n``). Static. Unused in 1-D.
    return_duplicates: also return the duplicate counts (a Python bool,
      static).

  Returns:
    The estimate, a scalar in the promoted dtype of ``x`` and ``y``. It can be
    negative (the divergence itself is not). With ``return_duplicates``, the
    pair ``(estimate, duplicates)``, ``duplicates`` int32 ``[2]``: the number
    of points of ``x`` with an exact copy elsewhere in ``x``, and the number
    that also appear in ``y`` (distance at the floor). Under ``jax.jit``, pass
    ``k``, ``estimator``, ``chunk_size`` and ``return_duplicates`` as static
    arguments (``static_argnames``).

  Raises:
    TypeError: ``x`` or ``y`` not real floating; ``k`` or ``chunk_size`` not an
      int; ``estimator`` not a string; ``return_duplicates`` not a bool.
    ValueError: ``x`` or ``y`` not 2-D, different dimensions ``d``, ``d = 0``,
      ``n < k + 1``, ``m < k``, ``k < 1``, ``chunk_size < 1`` or an unknown
      ``estimator``; ``x`` and ``y`` the same object (at trace time, so also
      one traced value passed as both; not two arguments of a jitted
      ``knn_kl``); when run eagerly, at least half of the points of ``x``
      also in ``y``.

  Warns:
    RuntimeWarning: when run eagerly, more than 1% of the points of ``x``
      with an exact copy in ``x`` or in ``y``.

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

    Under ``jax.jit`` nothing can be checked; the counts come out instead:

    >>> kl = jax.jit(jaxkl.knn_kl, static_argnames="return_duplicates")
    >>> estimate, duplicates = kl(x, x[::-1], return_duplicates=True)
    >>> duplicates
    Array([   0, 4000], dtype=int32)

  References:
    Q. Wang, S. R. Kulkarni and S. Verdú, "Divergence Estimation for
    Multidimensional Densities Via k-Nearest-Neighbor Distances", IEEE
    Transactions on Information Theory 55(5), 2392-2405, 2009.
  """
  _check_independent(x, y, "knn_kl")
  return_duplicates = _checks.check_bool(return_duplicates, "return_duplicates")
  estimate, duplicates = _estimate(
    x, y, k=k, estimator=estimator, chunk_size=chunk_size
  )
  report_duplicates(duplicates, n=np.shape(x)[0])
  if return_duplicates:
    return estimate, duplicates
  return estimate


def report_duplicates(duplicates: jax.Array, *, n: int) -> None:
  """Raises or warns on duplicated samples; does nothing under a transformation.

  Args:
    duplicates: int32 ``[2]``, the points of ``x`` (of ``n``) with an exact
      copy elsewhere in ``x`` and those that also appear in ``y``, as returned
      by ``knn_kl(..., return_duplicates=True)`` or ``neighbour_radii``.
    n: the number of points of ``x``.

  Raises:
    ValueError: if at least ``SHARED_FRACTION_ERROR`` (half) of the points of
      ``x`` also appear in ``y``.

  Warns:
    RuntimeWarning: if more than ``DUPLICATE_FRACTION_WARNING`` (1%) of the
      points of ``x`` have an exact copy in ``x`` or in ``y``.
  """
  if isinstance(duplicates, jax.core.Tracer):
    return  # traced (jit, vmap, grad): the values are not known here
  in_x, in_y = (int(count) for count in np.asarray(duplicates))
  if in_y >= SHARED_FRACTION_ERROR * n:
    raise ValueError(
      f"`x` and `y` must be independent samples; {in_y} of {n} points of `x` "
      "also appear in `y` (exactly, or within the floor on distances). The "
      "estimator compares each x_i with its nearest neighbours in `y`: with "
      "shared points those are at distance 0 and the estimate is meaningless. "
      "Draw `y` independently of `x`; if they are independent but discrete "
      "or rounded (ties, e.g. integer data or float32 values far from 0), the "
      "k-NN estimator (for continuous distributions) does not apply: use a "
      "discrete KL, add a little noise (jitter), or centre the data before "
      "rounding it to float32."
    )
  if max(in_x, in_y) > DUPLICATE_FRACTION_WARNING * n:
    warnings.warn(
      f"Heavily duplicated samples: {in_x} of {n} points of `x` have an exact "
      f"copy elsewhere in `x` and {in_y} appear in `y` (warning above "
      f"{DUPLICATE_FRACTION_WARNING:.0%}). The k-NN estimator assumes "
      "continuous distributions, independent samples: zero distances are "
      "replaced by a tiny floor, which adds about d/n * log(distance / floor) "
      "per duplicated point (large). Remove the duplicates, or add a little "
      "noise (jitter) to rounded or discrete data.",
      RuntimeWarning,
      stacklevel=3,
    )


def _estimate(
  x: ArrayLike,
  y: ArrayLike,
  *,
  k: object,
  estimator: object,
  chunk_size: object,
  distance: str = "direct",
  method: str = "auto",
) -> tuple[jax.Array, jax.Array]:
  """Checks the arguments of ``knn_kl`` and runs the jitted computation.

  Returns the estimate and the duplicate counts (nothing reported here).
  """
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
  if x.shape[1] == 1 and method != "brute":
    chunk_size = n  # unused by the sorted path: one compiled program
  resolution = np.asarray(_checks.finfo(compute_dtype).eps / 4, compute_dtype)
  result, duplicates = _knn_kl(
    x.astype(compute_dtype),
    y.astype(compute_dtype),
    resolution,
    k=k,
    estimator=estimator,
    chunk_size=chunk_size,
    distance=distance,
    method=method,
  )
  return result.astype(out_dtype), duplicates
