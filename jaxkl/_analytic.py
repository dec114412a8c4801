r"""Closed-form KL divergences between two distributions of the same family.

Every function takes the parameters of :math:`P` and of :math:`Q` as plain
arrays and returns :math:`D_{\mathrm{KL}}(P \,\|\, Q)` elementwise over the
batch: the parameters broadcast against each other by NumPy's rules (the
trailing event dimensions of multivariate families excluded, which must match
exactly). All functions are pure, work under ``jit``, ``vmap``, ``grad`` and
``hessian``, and take float16/bfloat16 inputs, which are computed in float32
and returned in the input dtype.

Numerics. Every textbook formula that cancels (when :math:`P \approx Q`, or
when parameters are large) is rearranged into sums of non-negative terms
computed from *small* quantities (parameter differences, log-ratios via
``log1p``, :math:`x - \log(1 + x)` and :math:`e^u - 1 - u` by series near 0,
Stirling-series differences for Gamma/Beta/Dirichlet; see
:mod:`jaxkl._special`). Results are never negative, and
:math:`D_{\mathrm{KL}}(P \,\|\, P)` is exactly 0 for every family (also
for zero or subnormal scales and rates). Stated accuracy, tested against
50-digit mpmath on the rounded parameters over a grid spanning 1e-3 to 1e8
with equal, nearly equal (relative differences 1e-7 to 1e-1) and distant
pairs, for Gamma and Beta the full product grid
:math:`\{10^{-3}, 0.05, 1, 30, 10^3, 10^5, 10^8\}^4`
(``tests/test_analytic_precision.py``): relative error at most 1e-11
in float64, and 1e-4 in float32 (1e-3 for Beta and Dirichlet, whose float32
error grows like ``eps / min(concentration)`` when a tiny component sits
next to a large one and only the large one changes). Gradients are those of
the rearranged formulas (equal to the textbook ones, finite wherever the
value is).

Zero mass (the library-wide rule): a class has zero mass under :math:`P`
exactly when its probability, computed in the computation dtype (float32 for
16-bit inputs; XLA flushes subnormals to zero), is 0. Such a class
contributes exactly 0, with zero gradient, whatever :math:`Q` gives it (even
:math:`-\infty`); positive mass where :math:`Q` has none gives
:math:`+\infty`. So ``kl_categorical([0., -1000.], [0., -inf])`` is 0, as in
torch.distributions, TFP and distrax.

Subnormal parameters are read as 0 (XLA flushes them): a scale or rate below
``finfo.tiny`` behaves as a point mass (:math:`+\infty` against a proper
distribution, 0 against the same parameters); for the multivariate normals a
Cholesky factor or covariance with such a diagonal entry is degenerate, with
the same rule (0 against identical parameters, :math:`+\infty` otherwise). Infinite concentrations (Gamma,
Beta, Dirichlet) are outside the families and give NaN.

Parameters outside the family's support (a negative scale, a non-positive
concentration) give NaN, as :mod:`jax.scipy.stats` does; this cannot be
checked at trace time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _pointwise
from jaxkl import _special

# ----------------------------------------------------------------------------
# Argument handling.


def _kl(
  core: Callable[..., jax.Array],
  named: Sequence[tuple[str, ArrayLike]],
  event_ndims: Sequence[int],
) -> jax.Array:
  """Validates the parameters of a KL function and evaluates ``core``.

  Args:
    core: the formula, a function of the parameters (in order), called with
      arrays of the compute dtype broadcast to a common batch shape.
    named: ``(name, value)`` of every parameter, for error messages.
    event_ndims: the number of trailing event dimensions of each parameter
      (0 for scalars, 1 for vectors ``[..., d]``, 2 for matrices
      ``[..., d, d]``). All event sizes must be equal; the batch dimensions
      (the leading ones) broadcast by NumPy's rules.

  Returns:
    ``core``'s result in the promoted dtype of the parameters; 16-bit
    parameters are computed in float32.

  Raises:
    TypeError: a parameter is not a real floating array.
    ValueError: a parameter has too few dimensions, a matrix is not square,
      event sizes differ, or the batch shapes do not broadcast.
  """
  names = [name for name, _ in named]
  arrays = [_checks.as_float_array(value, name) for name, value in named]
  out_dtype, compute_dtype = _checks.result_dtype(*arrays)
  event_size = None
  event_owner: tuple[str, tuple[int, ...]] = ("", ())
  for name, array, ndim in zip(names, arrays, event_ndims, strict=False):
    if ndim == 0:
      continue
    wanted = "[..., d]" if ndim == 1 else "[..., d, d]"
    if array.ndim < ndim or (ndim == 2 and array.shape[-1] != array.shape[-2]):
      raise ValueError(
        f"`{name}` must have shape {wanted}; got shape {tuple(array.shape)}."
      )
    size = array.shape[-1]
    if event_size is None:
      event_size, event_owner = size, (name, array.shape)
    elif size != event_size:
      raise ValueError(
        f"event sizes differ: `{event_owner[0]}` has shape "
        f"{tuple(event_owner[1])} (d={event_size}) but `{name}` has shape "
        f"{tuple(array.shape)} (d={size}); the trailing event dimensions "
        "must be equal (only batch dimensions broadcast)."
      )
  batch_shapes = [
    a.shape[: a.ndim - e] for a, e in zip(arrays, event_ndims, strict=False)
  ]
  try:
    batch = np.broadcast_shapes(*batch_shapes)
  except ValueError:
    listed = ", ".join(
      f"`{name}`: {tuple(shape)}"
      for name, shape in zip(names, batch_shapes, strict=False)
    )
    what = "batch shapes (event dimensions excluded)" if any(event_ndims) else "shapes"
    raise ValueError(
      f"the parameters' {what} do not broadcast against each other by "
      f"NumPy's rules: {listed}."
    ) from None
  shapes = tuple(
    batch + a.shape[a.ndim - e :] for a, e in zip(arrays, event_ndims, strict=False)
  )
  result: jax.Array = _evaluate(core, tuple(arrays), shapes, compute_dtype, out_dtype)
  return result


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _evaluate(
  core: Callable[..., jax.Array],
  arrays: tuple[jax.Array, ...],
  shapes: tuple[tuple[int, ...], ...],
  compute_dtype: np.dtype[Any],
  out_dtype: np.dtype[Any],
) -> jax.Array:
  """Casts, broadcasts, applies ``core`` and casts back, as one computation.

  Compiled once per formula, shapes and dtypes, so that eager calls do not
  dispatch (and compile) dozens of small operations one at a time.
  """
  cast = [
    jnp.broadcast_to(a.astype(compute_dtype), shape)
    for a, shape in zip(arrays, shapes, strict=False)
  ]
  return core(*cast).astype(out_dtype)


def _phi(x: jax.Array, y: jax.Array) -> jax.Array:
  """``y/x - 1 - log(y/x)`` (>= 0, exactly 0 where x == y)."""
  return _special.phi(x, _special.difference(x, y), y)


def _x_phi(x: jax.Array, y: jax.Array) -> jax.Array:
  """``x phi(y/x) = y - x - x log(y/x)`` (>= 0; ``y`` where x == 0)."""
  return _special.x_phi(x, _special.difference(x, y), y)


def _standardized(loc_p: jax.Array, loc_q: jax.Array, scale: jax.Array) -> jax.Array:
  """``(loc_p - loc_q) / scale``, and 0 for equal locations whatever the
  scale (a zero or subnormal, flushed, scale included), so that identical
  distributions give 0, not 0/0; different locations with a zero scale give
  ``inf``, with an infinite scale 0.
  """
  regular = (scale >= _checks.finfo(scale.dtype).tiny) & (scale < jnp.inf)
  diff = _special.difference(loc_q, loc_p)
  safe = jnp.where(regular, scale, 1)
  degenerate = jnp.where(diff == 0, 0, jnp.where(scale < jnp.inf, jnp.inf, 0))
  return jnp.where(regular, diff / safe, degenerate)


def _normal_terms(
  loc_p: jax.Array, scale_p: jax.Array, loc_q: jax.Array, scale_q: jax.Array
) -> jax.Array:
  """Elementwise KL between univariate normals (inputs already broadcast)."""
  z = _standardized(loc_p, loc_q, scale_q)
  u = 2 * _special.log_ratio(scale_q, _special.difference(scale_q, scale_p), scale_p)
  return 0.5 * (_special.expm1_minus(u) + z * z)


def _kl_log_probs(
  log_p: jax.Array, log_q: jax.Array, shift: jax.Array, both_impossible: jax.Array
) -> jax.Array:
  r"""KL between categoricals from normalized log-probabilities, last axis.

  ``shift`` is the logit difference ``logits_q - logits_p`` per class (NaN
  or infinite where a logit is infinite) and ``both_impossible`` marks the
  classes whose logits are ``-inf`` in both. Two evaluations, selected per
  row:

  * precise (every class has a finite ``log_p`` and ``shift``, or is
    impossible under both; no ``shift`` more than ``log(max) / 2`` above its
    P-mean; a class whose :math:`p_k` underflows to 0 contributes 0 to the
    sum and its share :math:`\exp(\log p_k + e_k)` to :math:`s`): with :math:`e_k = \Delta_k - \bar\Delta`
    (:math:`\bar\Delta = \sum_k p_k \Delta_k`), the log-ratios are
    :math:`\log(q_k/p_k) = e_k - \operatorname{log1p}(s)`, with
    :math:`s = \sum_k p_k \operatorname{expm1}(e_k) \ge 0`, and
    :math:`\mathrm{KL} = \sum_k p_k\,(e^{D_k} - 1 - D_k)`, a sum of
    non-negative terms computed from the small :math:`e_k`: the relative
    error stays a few ``eps`` however close P and Q are (the textbook sum of
    :math:`p_k(\log p_k - \log q_k)` loses ``eps * |logits|`` absolutely);
  * otherwise :math:`\sum_k p_k(\log p_k - \log q_k)` with the
    library's zero-mass rule (:mod:`jaxkl._pointwise`): a class whose
    :math:`p_k = \exp(\log p_k)` is 0 contributes exactly 0 (zero
    gradient) whatever :math:`q_k`, and :math:`p_k > 0 = q_k` gives
    :math:`+\infty`.
  """
  generic = jnp.sum(_pointwise.kl_terms_log_target(log_q, log_p), axis=-1)
  p = jnp.exp(log_p)
  mass = p > 0
  finite_shift = jnp.isfinite(shift)
  usable = mass & finite_shift
  # Zero mass under P (p_k underflows) with finite logits: contributes 0 to
  # the sum, but its q-share p_k e^(e_k) = exp(log p_k + e_k) still enters s.
  unseen = ~mass & finite_shift & jnp.isfinite(log_p)
  valid = jnp.all(usable | unseen | both_impossible, axis=-1, keepdims=True)
  weight = jnp.where(usable, p, 0)
  total = jnp.sum(weight, axis=-1, keepdims=True)
  total = jnp.where(total > 0, total, 1)
  delta = jnp.where(usable | unseen, shift, 0)
  mean = jnp.sum(weight * delta, axis=-1, keepdims=True) / total
  e = jnp.where(usable | unseen, delta - mean, 0)
  unseen_exponent = jnp.where(unseen, log_p + e, -jnp.inf)
  limit = 0.5 * float(np.log(_checks.finfo(p.dtype).max))
  precise_ok = valid & jnp.all(
    (e <= limit) & (unseen_exponent <= limit), axis=-1, keepdims=True
  )
  e = jnp.where(precise_ok, e, 0)
  unseen_share = jnp.exp(jnp.where(precise_ok & unseen, unseen_exponent, -jnp.inf))
  s = jnp.sum(weight * jnp.expm1(e) + unseen_share, axis=-1, keepdims=True) / total
  log_ratio = e - _special.log1p(s)
  precise = jnp.sum(weight * _special.expm1_minus(log_ratio), axis=-1)
  return jnp.where(precise_ok[..., 0], precise, generic)


# ----------------------------------------------------------------------------
# Normal families.


def kl_normal(
  loc_p: ArrayLike, scale_p: ArrayLike, loc_q: ArrayLike, scale_q: ArrayLike
) -> jax.Array:
  r"""KL divergence between univariate normal distributions.

  .. math::

     D_{\mathrm{KL}}\big(\mathcal N(\mu_p, \sigma_p^2) \,\|\,
     \mathcal N(\mu_q, \sigma_q^2)\big)
     = \log\frac{\sigma_q}{\sigma_p}
       + \frac{\sigma_p^2 + (\mu_p - \mu_q)^2}{2 \sigma_q^2} - \frac12,

  evaluated as :math:`\tfrac12\big(\operatorname{expm1}(u) - u + z^2\big)`
  with :math:`u = 2 \log(\sigma_p / \sigma_q)` and
  :math:`z = (\mu_p - \mu_q) / \sigma_q`, a sum of two non-negative terms.

  Args:
    loc_p: mean :math:`\mu_p` of :math:`P`, any shape.
    scale_p: standard deviation :math:`\sigma_p > 0` of :math:`P`.
    loc_q: mean :math:`\mu_q` of :math:`Q`.
    scale_q: standard deviation :math:`\sigma_q > 0` of :math:`Q`.

  Returns:
    The divergence, shape: the four shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jaxkl
    >>> jaxkl.kl_normal(0.0, 1.0, 1.0, 2.0)  # log 2 + 2/8 - 1/2
    Array(0.4431472, dtype=float32)

  References:
    Penny, "KL-Divergences of Normal, Gamma, Dirichlet and Wishart densities",
    Wellcome Department of Cognitive Neurology, 2001.
  """
  return _kl(
    _normal_terms,
    [("loc_p", loc_p), ("scale_p", scale_p), ("loc_q", loc_q), ("scale_q", scale_q)],
    (0, 0, 0, 0),
  )


def kl_multivariate_normal_diag(
  loc_p: ArrayLike, scale_diag_p: ArrayLike, loc_q: ArrayLike, scale_diag_q: ArrayLike
) -> jax.Array:
  r"""KL divergence between multivariate normals with diagonal covariances.

  With :math:`\Sigma = \operatorname{diag}(s)^2` this is the sum over the
  :math:`d` coordinates of the univariate divergences (:func:`kl_normal`):

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \frac12 \sum_{i=1}^{d} \left(
       \frac{s_{p,i}^2}{s_{q,i}^2} - 1 - \log\frac{s_{p,i}^2}{s_{q,i}^2}
       + \frac{(\mu_{p,i} - \mu_{q,i})^2}{s_{q,i}^2} \right).

  Args:
    loc_p: mean of :math:`P`, shape ``[..., d]``.
    scale_diag_p: standard deviations of :math:`P` (the square root of the
      covariance's diagonal), positive, shape ``[..., d]``.
    loc_q: mean of :math:`Q`, shape ``[..., d]``.
    scale_diag_q: standard deviations of :math:`Q`, shape ``[..., d]``.

  Returns:
    The divergence, shape: the batch shapes ``[...]`` broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: a 0-d argument, different event sizes ``d``, or batch shapes
      that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> jaxkl.kl_multivariate_normal_diag(
    ...     jnp.zeros(2), jnp.ones(2), jnp.array([1.0, 0.0]), jnp.full(2, 2.0))
    Array(0.7612944, dtype=float32)

  References:
    Penny, "KL-Divergences of Normal, Gamma, Dirichlet and Wishart densities",
    2001.
  """
  return _kl(
    _kl_mvn_diag,
    [
      ("loc_p", loc_p),
      ("scale_diag_p", scale_diag_p),
      ("loc_q", loc_q),
      ("scale_diag_q", scale_diag_q),
    ],
    (1, 1, 1, 1),
  )


def _kl_mvn_diag(
  loc_p: jax.Array, scale_p: jax.Array, loc_q: jax.Array, scale_q: jax.Array
) -> jax.Array:
  return jnp.sum(_normal_terms(loc_p, scale_p, loc_q, scale_q), axis=-1)


def kl_multivariate_normal(
  loc_p: ArrayLike, scale_tril_p: ArrayLike, loc_q: ArrayLike, scale_tril_q: ArrayLike
) -> jax.Array:
  r"""KL divergence between multivariate normals from Cholesky factors.

  With :math:`\Sigma_p = L_p L_p^\top` and :math:`\Sigma_q = L_q L_q^\top`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \frac12 \Big(
       \operatorname{tr}(\Sigma_q^{-1} \Sigma_p)
       + (\mu_p - \mu_q)^\top \Sigma_q^{-1} (\mu_p - \mu_q) - d
       + \log\frac{\det \Sigma_q}{\det \Sigma_p} \Big).

  One triangular solve gives :math:`M = L_q^{-1} L_p` (lower triangular, so
  :math:`\operatorname{tr}(\Sigma_q^{-1}\Sigma_p) = \|M\|_F^2`) and
  :math:`\delta = L_q^{-1}(\mu_p - \mu_q)`; with
  :math:`u_i = \log(L_{p,ii}^2 / L_{q,ii}^2) = \log M_{ii}^2` the
  divergence is evaluated as the sum of non-negative terms

  .. math::

     \frac12 \Big( \sum_{i > j} M_{ij}^2
       + \sum_i \big(\operatorname{expm1}(u_i) - u_i\big)
       + \|\delta\|^2 \Big).

  No matrix is inverted and no determinant is formed.

  Args:
    loc_p: mean of :math:`P`, shape ``[..., d]``.
    scale_tril_p: lower-triangular :math:`L_p`, shape ``[..., d, d]``, with a
      non-zero diagonal. Only the lower triangle (diagonal included) is read;
      the signs of the diagonal do not matter (:math:`\Sigma = L L^\top` is
      unchanged by flipping the sign of a column).
    loc_q: mean of :math:`Q`, shape ``[..., d]``.
    scale_tril_q: lower-triangular :math:`L_q`, shape ``[..., d, d]``.

  Returns:
    The divergence, shape: the batch shapes ``[...]`` of the four arguments
    broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: a ``loc`` that is 0-d, a ``scale_tril`` that is not a stack of
      square matrices, different event sizes ``d``, or batch shapes that do
      not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> scale_tril_p = jnp.array([[1.0, 0.0], [0.5, 1.0]])
    >>> jaxkl.kl_multivariate_normal(jnp.zeros(2), scale_tril_p,
    ...                              jnp.ones(2), jnp.eye(2))
    Array(1.125, dtype=float32)

  References:
    Penny, "KL-Divergences of Normal, Gamma, Dirichlet and Wishart densities",
    2001. Rasmussen & Williams, "Gaussian Processes for Machine Learning",
    MIT Press, 2006, appendix A.5.
  """
  return _kl(
    _kl_mvn_tril,
    [
      ("loc_p", loc_p),
      ("scale_tril_p", scale_tril_p),
      ("loc_q", loc_q),
      ("scale_tril_q", scale_tril_q),
    ],
    (1, 2, 1, 2),
  )


def _kl_mvn_tril(
  loc_p: jax.Array, tril_p: jax.Array, loc_q: jax.Array, tril_q: jax.Array
) -> jax.Array:
  """``kl_multivariate_normal``'s formula (arguments already broadcast).

  The off-diagonal of :math:`M = L_q^{-1} L_p` is that of
  :math:`L_q^{-1}(L_p - L_q)`, solved from the *difference* of the factors
  (small when they are close, so its relative accuracy is kept), and the
  diagonal ratios' logarithms come from the differences of the diagonals.
  """
  d = loc_p.shape[-1]
  tril_p = jnp.tril(tril_p)
  tril_q = jnp.tril(tril_q)
  degenerate = _singular(jnp.abs(jnp.diagonal(tril_p, axis1=-2, axis2=-1))) | _singular(
    jnp.abs(jnp.diagonal(tril_q, axis1=-2, axis2=-1))
  )
  eye = jnp.eye(d, dtype=tril_p.dtype)
  point_mass = _point_mass_kl(degenerate, loc_p, tril_p, loc_q, tril_q)
  tril_p = jnp.where(degenerate[..., None, None], eye, tril_p)
  tril_q = jnp.where(degenerate[..., None, None], eye, tril_q)
  tril_diff = tril_p - tril_q
  loc_diff = _special.difference(loc_q, loc_p)
  rhs = jnp.concatenate([tril_diff, loc_diff[..., None]], axis=-1)
  solved = jax.scipy.linalg.solve_triangular(tril_q, rhs, lower=True)
  off_diagonal = jnp.tril(solved[..., :d], -1)
  delta = solved[..., d]
  diag_p = jnp.abs(jnp.diagonal(tril_p, axis1=-2, axis2=-1))
  diag_q = jnp.abs(jnp.diagonal(tril_q, axis1=-2, axis2=-1))
  u = 2 * _special.log_ratio(diag_q, _special.difference(diag_q, diag_p), diag_p)
  total = (
    jnp.sum(off_diagonal * off_diagonal, axis=(-2, -1))
    + jnp.sum(_special.expm1_minus(u), axis=-1)
    + jnp.sum(delta * delta, axis=-1)
  )
  return jnp.where(degenerate, point_mass, 0.5 * total)


def _singular(diagonal: jax.Array) -> jax.Array:
  """A non-negative diagonal (of a factor or covariance) with an entry below
  ``finfo.tiny`` (0 or subnormal, flushed by XLA): a degenerate normal."""
  tiny = _checks.finfo(diagonal.dtype).tiny
  return jnp.any(diagonal < tiny, axis=-1) & jnp.all(diagonal >= 0, axis=-1)


def _point_mass_kl(
  degenerate: jax.Array,
  loc_p: jax.Array,
  matrix_p: jax.Array,
  loc_q: jax.Array,
  matrix_q: jax.Array,
) -> jax.Array:
  """The module's rule for degenerate normals: 0 against identical
  parameters, ``+inf`` otherwise (where ``degenerate``; 0 elsewhere)."""
  same = jnp.all(loc_p == loc_q, axis=-1) & jnp.all(matrix_p == matrix_q, axis=(-2, -1))
  return jnp.where(degenerate & ~same, jnp.inf, 0).astype(loc_p.dtype)


def kl_multivariate_normal_from_covariance(
  loc_p: ArrayLike, cov_p: ArrayLike, loc_q: ArrayLike, cov_q: ArrayLike
) -> jax.Array:
  r"""KL divergence between multivariate normals from covariance matrices.

  Computes the Cholesky factors :math:`\Sigma = L L^\top` with
  :func:`jax.numpy.linalg.cholesky` (which reads the symmetric part
  :math:`(\Sigma + \Sigma^\top)/2`) and applies
  :func:`kl_multivariate_normal`:

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \frac12 \Big(
       \operatorname{tr}(\Sigma_q^{-1} \Sigma_p)
       + (\mu_p - \mu_q)^\top \Sigma_q^{-1} (\mu_p - \mu_q) - d
       + \log\frac{\det \Sigma_q}{\det \Sigma_p} \Big).

  Prefer :func:`kl_multivariate_normal` when the factors are at hand (more
  accurate for ill-conditioned covariances, and no factorisation to
  differentiate through). A covariance that is not positive definite gives
  NaN.

  Args:
    loc_p: mean of :math:`P`, shape ``[..., d]``.
    cov_p: covariance :math:`\Sigma_p`, symmetric positive definite, shape
      ``[..., d, d]``.
    loc_q: mean of :math:`Q`, shape ``[..., d]``.
    cov_q: covariance :math:`\Sigma_q`, shape ``[..., d, d]``.

  Returns:
    The divergence, shape: the batch shapes ``[...]`` broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: as :func:`kl_multivariate_normal`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> cov_p = jnp.array([[1.0, 0.5], [0.5, 1.25]])  # the example above
    >>> jaxkl.kl_multivariate_normal_from_covariance(
    ...     jnp.zeros(2), cov_p, jnp.ones(2), jnp.eye(2))
    Array(1.125, dtype=float32)

  References:
    Penny, "KL-Divergences of Normal, Gamma, Dirichlet and Wishart densities",
    2001.
  """
  return _kl(
    _kl_mvn_cov,
    [("loc_p", loc_p), ("cov_p", cov_p), ("loc_q", loc_q), ("cov_q", cov_q)],
    (1, 2, 1, 2),
  )


def _kl_mvn_cov(
  loc_p: jax.Array, cov_p: jax.Array, loc_q: jax.Array, cov_q: jax.Array
) -> jax.Array:
  r"""``kl_multivariate_normal_from_covariance``'s formula.

  Near-equal covariances (the whitened difference
  :math:`S = L_q^{-1}(\Sigma_p - \Sigma_q)L_q^{-\top}` has Frobenius
  norm at most 1/2): :math:`I + S = (I + N)(I + N)^\top` with :math:`N`
  computed from :math:`S` (a Cholesky factorisation refined by one Newton
  step on :math:`N + N^\top + N N^\top = S`, so that :math:`N` keeps its
  relative accuracy however small), then the sum of non-negative terms
  :math:`\sum_i (e^{u_i} - 1 - u_i) + \sum_{i>j} N_{ij}^2`,
  :math:`u_i = 2\operatorname{log1p}(N_{ii})`. Otherwise the two
  Cholesky factors and :func:`_kl_mvn_tril`.
  """
  d = loc_p.shape[-1]
  eye = jnp.broadcast_to(jnp.eye(d, dtype=cov_p.dtype), cov_p.shape)
  degenerate = _singular(jnp.diagonal(cov_p, axis1=-2, axis2=-1)) | _singular(
    jnp.diagonal(cov_q, axis1=-2, axis2=-1)
  )
  point_mass = _point_mass_kl(degenerate, loc_p, cov_p, loc_q, cov_q)
  cov_p = jnp.where(degenerate[..., None, None], eye, cov_p)
  cov_q = jnp.where(degenerate[..., None, None], eye, cov_q)
  sym_p = 0.5 * (cov_p + jnp.swapaxes(cov_p, -1, -2))
  sym_q = 0.5 * (cov_q + jnp.swapaxes(cov_q, -1, -2))
  tril_q = jnp.linalg.cholesky(cov_q)
  diff = sym_p - sym_q
  half = jax.scipy.linalg.solve_triangular(tril_q, diff, lower=True)
  s = jax.scipy.linalg.solve_triangular(tril_q, jnp.swapaxes(half, -1, -2), lower=True)
  s = 0.5 * (s + jnp.swapaxes(s, -1, -2))
  near = jnp.sum(s * s, axis=(-2, -1)) <= 0.25
  s = jnp.where(near[..., None, None], s, 0)
  chol = jnp.linalg.cholesky(eye + s)
  n = jnp.tril(chol - eye)
  residual = s - (n + jnp.swapaxes(n, -1, -2) + n @ jnp.swapaxes(n, -1, -2))
  left = jax.scipy.linalg.solve_triangular(chol, residual, lower=True)
  whitened = jax.scipy.linalg.solve_triangular(
    chol, jnp.swapaxes(left, -1, -2), lower=True
  )
  phi = jnp.tril(whitened, -1) + 0.5 * whitened * eye
  n = n + chol @ phi
  loc_diff = _special.difference(loc_q, loc_p)
  delta = jax.scipy.linalg.solve_triangular(tril_q, loc_diff[..., None], lower=True)[
    ..., 0
  ]
  diag = jnp.diagonal(n, axis1=-2, axis2=-1)
  precise = 0.5 * (
    jnp.sum(jnp.tril(n, -1) ** 2, axis=(-2, -1))
    + jnp.sum(_special.expm1_minus(2 * _special.log1p(diag)), -1)
    + jnp.sum(delta * delta, axis=-1)
  )
  tril_p = jnp.linalg.cholesky(jnp.where(near[..., None, None], cov_q, cov_p))
  far = _kl_mvn_tril(loc_p, tril_p, loc_q, tril_q)
  return jnp.where(degenerate, point_mass, jnp.where(near, precise, far))


# ----------------------------------------------------------------------------
# Discrete families.


def kl_categorical(
  logits_p: ArrayLike, logits_q: ArrayLike, *, axis: int = -1
) -> jax.Array:
  r"""KL divergence between categorical distributions given by logits.

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \sum_{k} p_k (\log p_k - \log q_k),
     \qquad \log p = \operatorname{log\_softmax}(\text{logits}_p),

  evaluated as :math:`\sum_k p_k (e^{D_k} - 1 - D_k)` with
  :math:`D_k = \log(q_k / p_k)` obtained from the logit differences (no
  cancellation when :math:`P \approx Q`). A class with :math:`p_k = 0`
  (logit :math:`-\infty`, or :math:`\exp(\log p_k)` underflowing to 0: the
  library's zero-mass rule) contributes exactly 0, with zero gradient,
  whatever :math:`q_k`; a class with :math:`p_k > 0` and :math:`q_k = 0`
  gives :math:`+\infty` (and a gradient that is not finite, for that
  example only). Unlike
  :func:`jaxkl.kl_divergence_from_logits` the batch dimensions broadcast.

  Args:
    logits_p: unnormalised log-probabilities of :math:`P`, shape
      ``[..., K]`` (classes on ``axis``); ``-inf`` marks impossible classes
      (at least one must be finite).
    logits_q: unnormalised log-probabilities of :math:`Q`, the same number
      of classes ``K`` on ``axis``.
    axis: the class axis of each argument (an int; negative values count
      from the end of each argument's shape). Static.

  Returns:
    The divergence, shape: the batch shapes (``axis`` removed) broadcast
    together.

  Raises:
    TypeError: a non-floating argument or a non-int ``axis``.
    ValueError: ``axis`` out of range, different numbers of classes, or
      batch shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> logits_p = jnp.log(jnp.array([0.5, 0.5, 0.0]))  # log 0 = -inf
    >>> logits_q = jnp.log(jnp.array([0.25, 0.25, 0.5]))
    >>> jaxkl.kl_categorical(logits_p, logits_q)  # log 2
    Array(0.6931472, dtype=float32)

  References:
    Cover & Thomas, "Elements of Information Theory", 2nd ed., Wiley, 2006,
    section 2.3.
  """
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise TypeError(f"`axis` must be an int; got {axis!r}.")
  moved = []
  for name, value in (("logits_p", logits_p), ("logits_q", logits_q)):
    array = _checks.as_float_array(value, name)
    if not -array.ndim <= axis < array.ndim:
      raise ValueError(
        f"`axis`={axis} is out of range for `{name}` of shape "
        f"{tuple(array.shape)}; the categorical needs a class axis."
      )
    moved.append(jnp.moveaxis(array, int(axis), -1))
  return _kl(_kl_categorical, [("logits_p", moved[0]), ("logits_q", moved[1])], (1, 1))


def _kl_categorical(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(logits_p, axis=-1)
  log_q = jax.nn.log_softmax(logits_q, axis=-1)
  impossible = (logits_p == -jnp.inf) & (logits_q == -jnp.inf)
  return _kl_log_probs(log_p, log_q, logits_q - logits_p, impossible)


def kl_bernoulli(logits_p: ArrayLike, logits_q: ArrayLike) -> jax.Array:
  r"""KL divergence between Bernoulli distributions given by logits.

  With :math:`p = \sigma(a)`, :math:`q = \sigma(b)` for logits :math:`a`,
  :math:`b`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = p \log\frac{p}{q}
       + (1 - p) \log\frac{1 - p}{1 - q},

  with every logarithm taken as a log-sigmoid,
  :math:`\log p = -\operatorname{softplus}(-a)` and
  :math:`\log(1 - p) = -\operatorname{softplus}(a)`, so that neither
  :math:`p` nor :math:`1 - p` is rounded to 0 or 1 before its logarithm is
  taken: finite logits of any size (even :math:`\pm 10^{30}`) give finite,
  accurate values.
  Infinite logits are allowed: :math:`a = \pm\infty` is a point mass (its
  zero-probability outcome contributes 0), and :math:`b = \pm\infty` gives
  :math:`+\infty` unless :math:`P` is the same point mass, or :math:`P`'s
  probability of the missing outcome underflows to 0 (the library's
  zero-mass rule: ``kl_bernoulli(-1000., -inf)`` is 0). Where the value is
  :math:`+\infty` the gradient is not finite. For finite logits the value is
  the categorical's with logits :math:`[a, 0]`, :math:`[b, 0]`, evaluated
  without cancellation (relative accuracy also when :math:`P \approx Q`).

  Args:
    logits_p: log-odds :math:`a = \log(p / (1 - p))` of :math:`P`, any shape.
    logits_q: log-odds :math:`b` of :math:`Q`.

  Returns:
    The divergence, shape: the two shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> jaxkl.kl_bernoulli(jnp.array([0.0, 40.0]), jnp.array([0.0, -40.0]))
    Array([ 0., 40.], dtype=float32)

  References:
    Cover & Thomas, "Elements of Information Theory", 2nd ed., Wiley, 2006,
    section 2.3.
  """
  return _kl(_kl_bernoulli, [("logits_p", logits_p), ("logits_q", logits_q)], (0, 0))


def _kl_bernoulli(a: jax.Array, b: jax.Array) -> jax.Array:
  # The categorical with logits [a, 0] and [b, 0].
  log_p = jnp.stack([jax.nn.log_sigmoid(a), jax.nn.log_sigmoid(-a)], -1)
  log_q = jnp.stack([jax.nn.log_sigmoid(b), jax.nn.log_sigmoid(-b)], -1)
  shift = jnp.stack([b - a, jnp.zeros_like(a)], -1)
  return _kl_log_probs(log_p, log_q, shift, jnp.zeros(shift.shape, bool))


def kl_bernoulli_probs(probs_p: ArrayLike, probs_q: ArrayLike) -> jax.Array:
  r"""KL divergence between Bernoulli distributions given by probabilities.

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = p \log\frac{p}{q}
       + (1 - p) \log\frac{1 - p}{1 - q},

  a term with zero probability under :math:`P` is exactly 0 whatever
  :math:`q` (its derivative with respect to that probability is taken as 0,
  as :func:`jax.scipy.special.rel_entr` does), and a term with :math:`p > 0 =
  q` is :math:`+\infty` (with a gradient that is not finite); elsewhere
  gradients are finite. Probabilities within about ``finfo.eps`` of 1 cannot
  be told from 1: use :func:`kl_bernoulli` with logits when they matter.

  Args:
    probs_p: :math:`p = P(X = 1)` in :math:`[0, 1]`, any shape.
    probs_q: :math:`q = Q(X = 1)` in :math:`[0, 1]`.

  Returns:
    The divergence, shape: the two shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> jaxkl.kl_bernoulli_probs(jnp.array([0.5, 0.0, 1.0]),
    ...                          jnp.array([0.5, 0.5, 0.0]))
    Array([0.       , 0.6931472,       inf], dtype=float32)

  References:
    Cover & Thomas, "Elements of Information Theory", 2nd ed., Wiley, 2006,
    section 2.3.
  """
  return _kl(_kl_bernoulli_probs, [("probs_p", probs_p), ("probs_q", probs_q)], (0, 0))


def _kl_bernoulli_probs(p: jax.Array, q: jax.Array) -> jax.Array:
  # p phi(q/p) + (1 - p) phi((1 - q)/(1 - p)): the two differences are
  # q - p and p - q (exact for close p, q), whatever the rounding of 1 - p.
  d = _special.difference(p, q)
  return _special.x_phi(p, d, q) + _special.x_phi(1 - p, -d, 1 - q)


def kl_poisson(rate_p: ArrayLike, rate_q: ArrayLike) -> jax.Array:
  r"""KL divergence between Poisson distributions.

  From :math:`\log\frac{P(k)}{Q(k)} = k \log\frac{\lambda_p}{\lambda_q}
  - \lambda_p + \lambda_q` and :math:`\mathbb E_P[k] = \lambda_p`:

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \lambda_p \log\frac{\lambda_p}{\lambda_q}
       - \lambda_p + \lambda_q,

  with :math:`0 \log 0 = 0`: :math:`\lambda_p = 0` (a point mass at 0) gives
  :math:`\lambda_q`. There the derivative of the
  :math:`\lambda_p \log(\lambda_p/\lambda_q)` term is taken as 0 (as
  :func:`jax.scipy.special.rel_entr` does; the one-sided derivative is
  :math:`-\infty`), so the gradient with respect to :math:`\lambda_p` is
  :math:`-1` and with respect to :math:`\lambda_q` is 1. :math:`\lambda_q =
  0 < \lambda_p` gives :math:`+\infty`.

  Args:
    rate_p: rate :math:`\lambda_p \ge 0` of :math:`P`, any shape.
    rate_q: rate :math:`\lambda_q \ge 0` of :math:`Q`.

  Returns:
    The divergence, shape: the two shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> jaxkl.kl_poisson(jnp.array([0.0, 2.0]), jnp.array([3.0, 2.0]))
    Array([3., 0.], dtype=float32)

  References:
    Cover & Thomas, "Elements of Information Theory", 2nd ed., Wiley, 2006,
    section 2.3 (the definition; the closed form follows as above). Johnson,
    Kemp & Kotz, "Univariate Discrete Distributions", 3rd ed., Wiley, 2005,
    ch. 4 (the Poisson distribution).
  """
  return _kl(_kl_poisson, [("rate_p", rate_p), ("rate_q", rate_q)], (0, 0))


def _kl_poisson(rate_p: jax.Array, rate_q: jax.Array) -> jax.Array:
  return _x_phi(rate_p, rate_q)


# ----------------------------------------------------------------------------
# Continuous families with positive parameters.


def kl_exponential(rate_p: ArrayLike, rate_q: ArrayLike) -> jax.Array:
  r"""KL divergence between exponential distributions.

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \log\frac{\lambda_p}{\lambda_q}
       + \frac{\lambda_q}{\lambda_p} - 1
       = \operatorname{expm1}(u) - u, \qquad
       u = \log\frac{\lambda_q}{\lambda_p}.

  Args:
    rate_p: rate :math:`\lambda_p > 0` of :math:`P` (mean
      :math:`1/\lambda_p`), any shape.
    rate_q: rate :math:`\lambda_q > 0` of :math:`Q`.

  Returns:
    The divergence, shape: the two shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jaxkl
    >>> jaxkl.kl_exponential(1.0, 2.0)  # 1 - log 2
    Array(0.30685282, dtype=float32)

  References:
    Gil, Alajaji & Linder, "Rényi divergence measures for commonly used
    univariate continuous distributions", Information Sciences 249, 2013
    (the Gamma case with shape 1).
  """
  return _kl(_kl_exponential, [("rate_p", rate_p), ("rate_q", rate_q)], (0, 0))


def _kl_exponential(rate_p: jax.Array, rate_q: jax.Array) -> jax.Array:
  return _phi(rate_p, rate_q)


def kl_gamma(
  concentration_p: ArrayLike,
  rate_p: ArrayLike,
  concentration_q: ArrayLike,
  rate_q: ArrayLike,
) -> jax.Array:
  r"""KL divergence between gamma distributions (shape and rate).

  For densities :math:`\beta^\alpha x^{\alpha-1} e^{-\beta x} / \Gamma(\alpha)`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = (\alpha_p - \alpha_q)\,\psi(\alpha_p)
       - \log\Gamma(\alpha_p) + \log\Gamma(\alpha_q)
       + \alpha_q \log\frac{\beta_p}{\beta_q}
       + \alpha_p \frac{\beta_q - \beta_p}{\beta_p},

  :math:`\psi` the digamma function, evaluated as the sum of two
  non-negative terms

  .. math::

     B_h(\alpha_q; \alpha_p) + \alpha_q\,(e^w - 1 - w), \qquad
     w = \log\frac{\beta_q\,\alpha_p}{\beta_p\,\alpha_q},

  where :math:`B_h` is the Bregman divergence of the convex
  :math:`h(x) = \log\Gamma(x) - x\log x + x`
  (:func:`jaxkl._special.bregman_h`, from Stirling's series and the
  recurrence of :math:`\Gamma`) and :math:`w` comes from an exactly
  cancelling product difference: accurate for near-equal and for huge
  shapes (``kl_gamma(1e6, 1., 1e6 + 1, 1.)`` is 5.0e-7 in float32).

  Args:
    concentration_p: shape :math:`\alpha_p > 0` of :math:`P`, any shape.
    rate_p: rate :math:`\beta_p > 0` of :math:`P` (inverse scale).
    concentration_q: shape :math:`\alpha_q > 0` of :math:`Q`.
    rate_q: rate :math:`\beta_q > 0` of :math:`Q`.

  Returns:
    The divergence, shape: the four shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jaxkl
    >>> jaxkl.kl_gamma(2.0, 1.0, 2.0, 2.0)  # 2 (1 - log 2)
    Array(0.61370564, dtype=float32)

  References:
    Penny, "KL-Divergences of Normal, Gamma, Dirichlet and Wishart densities",
    2001 (there with scale :math:`1/\beta`). Gil, Alajaji & Linder, "Rényi
    divergence measures for commonly used univariate continuous
    distributions", Information Sciences 249, 2013.
  """
  return _kl(
    _kl_gamma,
    [
      ("concentration_p", concentration_p),
      ("rate_p", rate_p),
      ("concentration_q", concentration_q),
      ("rate_q", rate_q),
    ],
    (0, 0, 0, 0),
  )


def _gamma_log_mismatch(
  a_p: jax.Array, rate_p: jax.Array, a_q: jax.Array, rate_q: jax.Array
) -> jax.Array:
  """``w = log((rate_q / rate_p) / (a_q / a_p))``, accurate near 0.

  Where the two ratios are close, from the exactly cancelling product
  difference ``rate_q a_p - rate_p a_q``; elsewhere as the difference of the
  two log-ratios. Exactly 0 where both pairs are equal.
  """
  d_a = _special.difference(a_p, a_q)
  d_rate = _special.difference(rate_p, rate_q)
  apart = _special.log_ratio(rate_p, d_rate, rate_q) - _special.log_ratio(a_p, d_a, a_q)
  finite = (
    jnp.isfinite(a_p) & jnp.isfinite(a_q) & jnp.isfinite(rate_p) & jnp.isfinite(rate_q)
  )
  tiny = _checks.finfo(a_p.dtype).tiny
  bound = jnp.sqrt(_checks.finfo(a_p.dtype).max) * 0.5
  usable = (
    finite
    & (a_p > tiny)
    & (a_q > tiny)
    & (rate_p > tiny)
    & (rate_q > tiny)
    & (jnp.maximum(a_p, rate_q) < bound)
    & (jnp.maximum(a_q, rate_p) < bound)
    & (
      jnp.minimum(a_p * rate_q, a_q * rate_p)
      > tiny / float(_checks.finfo(a_p.dtype).eps)
    )
  )
  safe = [jnp.where(usable, v, 1) for v in (rate_q, a_p, rate_p, a_q)]
  numerator = _special.product_difference(*safe)
  denominator = safe[2] * safe[3]
  near = usable & (jnp.abs(numerator) <= 0.5 * denominator)
  close = _special.log1p(jnp.where(near, numerator / denominator, 0))
  both_equal = (d_a == 0) & (d_rate == 0) & ~near
  return jnp.where(both_equal, 0, jnp.where(near, close, apart))


def _kl_gamma(
  a_p: jax.Array, rate_p: jax.Array, a_q: jax.Array, rate_q: jax.Array
) -> jax.Array:
  # B_h(a_q; a_p) + a_q phi(e^w): both non-negative (see kl_gamma).
  w = _gamma_log_mismatch(a_p, rate_p, a_q, rate_q)
  big = w > 40
  w_small = jnp.where(big, 0, w)
  w_big = jnp.where(big, w, 41)
  mismatch = jnp.where(
    big,
    jnp.exp(w_big + jnp.log(a_q)) - a_q * (1 + w_big),
    a_q * _special.expm1_minus(w_small),
  )
  return _special.bregman_h(a_p, _special.difference(a_p, a_q), a_q) + mismatch


def kl_beta(
  a_p: ArrayLike, b_p: ArrayLike, a_q: ArrayLike, b_q: ArrayLike
) -> jax.Array:
  r"""KL divergence between beta distributions.

  For densities :math:`x^{a-1} (1 - x)^{b-1} / B(a, b)`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) &= \log\frac{B(a_q, b_q)}{B(a_p, b_p)}
       + (a_p - a_q)\,\psi(a_p) \\
       &\quad + (b_p - b_q)\,\psi(b_p)
       + (a_q - a_p + b_q - b_p)\,\psi(a_p + b_p),

  with :math:`\psi` the digamma function, evaluated as the two-component
  :func:`kl_dirichlet` (sums of non-negative terms, accurate for large and
  near-equal concentrations).

  Args:
    a_p: first concentration :math:`a_p > 0` of :math:`P` (``alpha``), any
      shape.
    b_p: second concentration :math:`b_p > 0` of :math:`P` (``beta``).
    a_q: first concentration :math:`a_q > 0` of :math:`Q`.
    b_q: second concentration :math:`b_q > 0` of :math:`Q`.

  Returns:
    The divergence, shape: the four shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jaxkl
    >>> jaxkl.kl_beta(1.0, 1.0, 2.0, 1.0)  # uniform vs density 2x: 1 - log 2
    Array(0.30685, dtype=float32)

  References:
    Gil, Alajaji & Linder, "Rényi divergence measures for commonly used
    univariate continuous distributions", Information Sciences 249, 2013.
    Penny, 2001 (the Dirichlet with two components).
  """
  return _kl(
    _kl_beta, [("a_p", a_p), ("b_p", b_p), ("a_q", a_q), ("b_q", b_q)], (0, 0, 0, 0)
  )


def _kl_beta(
  a_p: jax.Array, b_p: jax.Array, a_q: jax.Array, b_q: jax.Array
) -> jax.Array:
  return _kl_dirichlet(jnp.stack([a_p, b_p], -1), jnp.stack([a_q, b_q], -1))


def kl_dirichlet(concentration_p: ArrayLike, concentration_q: ArrayLike) -> jax.Array:
  r"""KL divergence between Dirichlet distributions.

  With :math:`\alpha_0 = \sum_k \alpha_k`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) &= \log\Gamma(\alpha_{p,0})
       - \log\Gamma(\alpha_{q,0})
       - \sum_k \big(\log\Gamma(\alpha_{p,k}) - \log\Gamma(\alpha_{q,k})\big) \\
       &\quad + \sum_k (\alpha_{p,k} - \alpha_{q,k})
         \big(\psi(\alpha_{p,k}) - \psi(\alpha_{p,0})\big),

  evaluated, with :math:`a = \alpha_p`, :math:`b = \alpha_q`,
  :math:`t_k = (a_k / a_0) / (b_k / b_0)` and :math:`h` as in
  :func:`kl_gamma`, as

  .. math::

     \sum_k b_k\,(t_k - 1 - \log t_k)
       + \Big(\sum_k B_h(b_k; a_k) - B_h(b_0; a_0)\Big),

  the first sum :math:`b_0\,\mathrm{KL}(\hat b \,\|\, \hat a)` of the
  normalized means, the second the remaining shape term, both from
  differences of the parameters (``kl_dirichlet([1e6]*5, [1e6]*4 +
  [1.001e6])`` is 0.3998 in float32). A final ``max(., 0)`` only guards the
  last ulp.

  Args:
    concentration_p: concentrations :math:`\alpha_p > 0` of :math:`P`, shape
      ``[..., K]`` (event axis last).
    concentration_q: concentrations :math:`\alpha_q > 0` of :math:`Q`, shape
      ``[..., K]``.

  Returns:
    The divergence, shape: the batch shapes ``[...]`` broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: a 0-d argument, different numbers of components ``K``, or
      batch shapes that do not broadcast.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> jaxkl.kl_dirichlet(jnp.ones(2), jnp.array([2.0, 1.0]))  # as kl_beta
    Array(0.30685, dtype=float32)

  References:
    Penny, "KL-Divergences of Normal, Gamma, Dirichlet and Wishart densities",
    2001.
  """
  return _kl(
    _kl_dirichlet,
    [("concentration_p", concentration_p), ("concentration_q", concentration_q)],
    (1, 1),
  )


def _kl_dirichlet(alpha_p: jax.Array, alpha_q: jax.Array) -> jax.Array:
  # sum_k b_k phi(t_k) + sum_k B_h(b_k; a_k) - B_h(b_0; a_0) with a = alpha_p,
  # b = alpha_q, t_k = (a_k / a_0) / (b_k / b_0) (see kl_dirichlet).
  d = _special.difference(alpha_p, alpha_q)
  total_p = jnp.sum(alpha_p, axis=-1)
  total_q = jnp.sum(alpha_q, axis=-1)
  d_total = jnp.sum(d, axis=-1)
  log_t = _special.log_ratio(total_p, d_total, total_q)[..., None] - _special.log_ratio(
    alpha_p, d, alpha_q
  )
  mean_part = jnp.sum(alpha_q * _special.expm1_minus(log_t), axis=-1)
  # One call for the components and the totals: one copy of bregman_h.
  bregman = _special.bregman_h(
    jnp.concatenate([alpha_p, total_p[..., None]], -1),
    jnp.concatenate([d, d_total[..., None]], -1),
    jnp.concatenate([alpha_q, total_q[..., None]], -1),
  )
  shape_part = jnp.sum(bregman[..., :-1], axis=-1) - bregman[..., -1]
  return jnp.maximum(mean_part + shape_part, 0)


def kl_laplace(
  loc_p: ArrayLike, scale_p: ArrayLike, loc_q: ArrayLike, scale_q: ArrayLike
) -> jax.Array:
  r"""KL divergence between Laplace distributions.

  For densities :math:`\exp(-|x - \mu| / b) / (2 b)`, with
  :math:`\delta = |\mu_p - \mu_q|`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \log\frac{b_q}{b_p} + \frac{\delta}{b_q}
       + \frac{b_p}{b_q} e^{-\delta / b_p} - 1,

  evaluated with :math:`r = b_p / b_q` and :math:`t = \delta / b_p` as the
  sum of non-negative terms
  :math:`(\operatorname{expm1}(\log r) - \log r)
  + r\,(t + \operatorname{expm1}(-t))`.

  Args:
    loc_p: location :math:`\mu_p` of :math:`P`, any shape.
    scale_p: scale :math:`b_p > 0` of :math:`P`.
    loc_q: location :math:`\mu_q` of :math:`Q`.
    scale_q: scale :math:`b_q > 0` of :math:`Q`.

  Returns:
    The divergence, shape: the four shapes broadcast together.

  Raises:
    TypeError: a non-floating argument.
    ValueError: shapes that do not broadcast.

  Examples:
    >>> import jaxkl
    >>> jaxkl.kl_laplace(0.0, 1.0, 1.0, 1.0)  # 1 / e
    Array(0.36787945, dtype=float32)

  References:
    Gil, Alajaji & Linder, "Rényi divergence measures for commonly used
    univariate continuous distributions", Information Sciences 249, 2013.
  """
  return _kl(
    _kl_laplace,
    [("loc_p", loc_p), ("scale_p", scale_p), ("loc_q", loc_q), ("scale_q", scale_q)],
    (0, 0, 0, 0),
  )


def _kl_laplace(
  loc_p: jax.Array, scale_p: jax.Array, loc_q: jax.Array, scale_q: jax.Array
) -> jax.Array:
  t = jnp.abs(_standardized(loc_p, loc_q, scale_p))
  ratio_part = _phi(scale_q, scale_p)
  r = jnp.exp(
    _special.log_ratio(scale_q, _special.difference(scale_q, scale_p), scale_p)
  )
  shift_part = jnp.where(t == 0, 0, r) * _special.expm1_minus(-t)
  return ratio_part + shift_part
