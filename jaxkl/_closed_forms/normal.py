"""Normal families: univariate, multivariate (diagonal, Cholesky factor,
covariance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _special
from jaxkl._closed_forms._base import _kl
from jaxkl._closed_forms._base import _standardized


def _normal_terms(
  loc_p: jax.Array, scale_p: jax.Array, loc_q: jax.Array, scale_q: jax.Array
) -> jax.Array:
  """Elementwise KL between univariate normals (inputs already broadcast)."""
  z = _standardized(loc_p, loc_q, scale_q)
  u = 2 * _special.log_ratio(scale_q, _special.difference(scale_q, scale_p), scale_p)
  return 0.5 * (_special.expm1_minus(u) + z * z)


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
