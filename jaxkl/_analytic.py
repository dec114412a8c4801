r"""Closed-form KL divergences between two distributions of the same family.

Every function takes the parameters of :math:`P` and of :math:`Q` as plain
arrays and returns :math:`D_{\mathrm{KL}}(P \,\|\, Q)` elementwise over the
batch: the parameters broadcast against each other by NumPy's rules (the
trailing event dimensions of multivariate families excluded, which must match
exactly). All functions are pure, work under ``jit``, ``vmap``, ``grad`` and
``hessian``, and take float16/bfloat16 inputs, which are computed in float32
and returned in the input dtype.

Numerics. Where the textbook formula cancels, it is rearranged into sums of
non-negative terms; :math:`D_{\mathrm{KL}}(P \,\|\, P)` is exactly 0 for
every family but the matrix-normal ones (rounding in the triangular solve).
Two building blocks recur:

* scale ratios: :math:`r - 1 - \log r = \operatorname{expm1}(u) - u` with
  :math:`u = \log r` (Normal, Exponential, Gamma, Laplace, and the diagonal
  of the multivariate Normal);
* probabilities: :math:`p (\log p - \log q)` from log-probabilities, exactly 0
  where :math:`p = 0` (with zero gradient) and :math:`+\infty` where
  :math:`p > 0 = q` (Categorical, Bernoulli, Poisson; the NaN-free pointwise
  terms of :mod:`jaxkl._pointwise`).

Parameters outside the family's support (a negative scale, a non-positive
concentration) give NaN, as :mod:`jax.scipy.stats` does; this cannot be
checked at trace time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln
from jax.scipy.special import digamma
from jax.scipy.special import gammaln
from jax.typing import ArrayLike

from jaxkl import _checks
from jaxkl import _pointwise

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
  event_owner = None
  for name, array, ndim in zip(names, arrays, event_ndims):
    if ndim == 0:
      continue
    wanted = "[..., d]" if ndim == 1 else "[..., d, d]"
    if array.ndim < ndim or (ndim == 2 and array.shape[-1] != array.shape[-2]):
      raise ValueError(
          f"`{name}` must have shape {wanted}; got shape "
          f"{tuple(array.shape)}.")
    size = array.shape[-1]
    if event_size is None:
      event_size, event_owner = size, (name, array.shape)
    elif size != event_size:
      raise ValueError(
          f"event sizes differ: `{event_owner[0]}` has shape "
          f"{tuple(event_owner[1])} (d={event_size}) but `{name}` has shape "
          f"{tuple(array.shape)} (d={size}); the trailing event dimensions "
          "must be equal (only batch dimensions broadcast).")
  batch_shapes = [a.shape[:a.ndim - e] for a, e in zip(arrays, event_ndims)]
  try:
    batch = np.broadcast_shapes(*batch_shapes)
  except ValueError:
    listed = ", ".join(
        f"`{name}`: {tuple(shape)}" for name, shape in zip(names, batch_shapes))
    what = "batch shapes (event dimensions excluded)" if any(
        event_ndims) else "shapes"
    raise ValueError(
        f"the parameters' {what} do not broadcast against each other by "
        f"NumPy's rules: {listed}.") from None
  shapes = tuple(batch + a.shape[a.ndim - e:]
                 for a, e in zip(arrays, event_ndims))
  return _evaluate(core, tuple(arrays), shapes, compute_dtype, out_dtype)


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _evaluate(core, arrays, shapes, compute_dtype, out_dtype) -> jax.Array:
  """Casts, broadcasts, applies ``core`` and casts back, as one computation.

  Compiled once per formula, shapes and dtypes, so that eager calls do not
  dispatch (and compile) dozens of small operations one at a time.
  """
  arrays = [jnp.broadcast_to(a.astype(compute_dtype), shape)
            for a, shape in zip(arrays, shapes)]
  return core(*arrays).astype(out_dtype)


def _expm1_minus(u: jax.Array) -> jax.Array:
  """``r - 1 - log r`` for ``r = exp(u)``: non-negative, 0 exactly at u = 0."""
  return jnp.expm1(u) - u


def _normal_terms(loc_p, scale_p, loc_q, scale_q) -> jax.Array:
  """Elementwise KL between univariate normals (inputs already broadcast)."""
  u = 2 * (jnp.log(scale_p) - jnp.log(scale_q))
  z = (loc_p - loc_q) / scale_q
  return 0.5 * (_expm1_minus(u) + z * z)


def _p_log_p_over_q(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """``exp(log_p) * (log_p - log_q)``; 0 (zero gradient) where p == 0.

  ``+inf`` wherever ``log_q = -inf < log_p``, even if ``exp(log_p)``
  underflows to 0 (e.g. ``log_p = -800``): P still has mass where Q has none.
  """
  terms = _pointwise.kl_terms_log_target(log_q, log_p)
  unsupported = (log_q == -jnp.inf) & (log_p > -jnp.inf)
  return jnp.where(unsupported, jnp.inf, terms)


def _log_where_needed(q: jax.Array, p: jax.Array) -> jax.Array:
  """``log q`` where ``p != 0``; 0 (and no gradient through it) elsewhere.

  A term ``p log(p / q)`` with ``p == 0`` ignores ``log q``, but the
  gradient of ``log q`` at ``q == 0`` (``inf``) would still meet its zero
  coefficient and give NaN; the double ``where`` keeps it out.
  """
  needed = p != 0
  return jnp.where(needed, jnp.log(jnp.where(needed, q, 1)), 0)


# ----------------------------------------------------------------------------
# Normal families.


def kl_normal(loc_p: ArrayLike, scale_p: ArrayLike, loc_q: ArrayLike,
              scale_q: ArrayLike) -> jax.Array:
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
  return _kl(_normal_terms, [("loc_p", loc_p), ("scale_p", scale_p),
                              ("loc_q", loc_q), ("scale_q", scale_q)],
             (0, 0, 0, 0))


def kl_multivariate_normal_diag(loc_p: ArrayLike, scale_diag_p: ArrayLike,
                                loc_q: ArrayLike,
                                scale_diag_q: ArrayLike) -> jax.Array:
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
  return _kl(_kl_mvn_diag,
             [("loc_p", loc_p), ("scale_diag_p", scale_diag_p),
              ("loc_q", loc_q), ("scale_diag_q", scale_diag_q)], (1, 1, 1, 1))


def _kl_mvn_diag(loc_p, scale_p, loc_q, scale_q) -> jax.Array:
  return jnp.sum(_normal_terms(loc_p, scale_p, loc_q, scale_q), axis=-1)


def kl_multivariate_normal(loc_p: ArrayLike, scale_tril_p: ArrayLike,
                           loc_q: ArrayLike,
                           scale_tril_q: ArrayLike) -> jax.Array:
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
  return _kl(_kl_mvn_tril,
             [("loc_p", loc_p), ("scale_tril_p", scale_tril_p),
              ("loc_q", loc_q), ("scale_tril_q", scale_tril_q)], (1, 2, 1, 2))


def _kl_mvn_tril(loc_p, tril_p, loc_q, tril_q) -> jax.Array:
  """``kl_multivariate_normal``'s formula (arguments already broadcast)."""
  d = loc_p.shape[-1]
  tril_p = jnp.tril(tril_p)
  tril_q = jnp.tril(tril_q)
  rhs = jnp.concatenate([tril_p, (loc_p - loc_q)[..., None]], axis=-1)
  solved = jax.scipy.linalg.solve_triangular(tril_q, rhs, lower=True)
  off_diagonal = jnp.tril(solved[..., :d], -1)
  delta = solved[..., d]
  diag_p = jnp.diagonal(tril_p, axis1=-2, axis2=-1)
  diag_q = jnp.diagonal(tril_q, axis1=-2, axis2=-1)
  u = 2 * (jnp.log(jnp.abs(diag_p)) - jnp.log(jnp.abs(diag_q)))
  total = (jnp.sum(off_diagonal * off_diagonal, axis=(-2, -1))
           + jnp.sum(_expm1_minus(u), axis=-1)
           + jnp.sum(delta * delta, axis=-1))
  return 0.5 * total


def kl_multivariate_normal_from_covariance(loc_p: ArrayLike, cov_p: ArrayLike,
                                           loc_q: ArrayLike,
                                           cov_q: ArrayLike) -> jax.Array:
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
  return _kl(_kl_mvn_cov, [("loc_p", loc_p), ("cov_p", cov_p),
                           ("loc_q", loc_q), ("cov_q", cov_q)], (1, 2, 1, 2))


def _kl_mvn_cov(loc_p, cov_p, loc_q, cov_q) -> jax.Array:
  return _kl_mvn_tril(loc_p, jnp.linalg.cholesky(cov_p), loc_q,
                      jnp.linalg.cholesky(cov_q))


# ----------------------------------------------------------------------------
# Discrete families.


def kl_categorical(logits_p: ArrayLike, logits_q: ArrayLike, *,
                   axis: int = -1) -> jax.Array:
  r"""KL divergence between categorical distributions given by logits.

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \sum_{k} p_k (\log p_k - \log q_k),
     \qquad \log p = \operatorname{log\_softmax}(\text{logits}_p),

  the log-probabilities coming from log-sum-exp (exact for extreme logits).
  A class with :math:`p_k = 0` (logit :math:`-\infty`) contributes exactly 0,
  with zero gradient, whatever :math:`q_k`; a class with :math:`p_k > 0` and
  :math:`q_k = 0` gives :math:`+\infty` (and a gradient that is not finite,
  for that example only). Unlike
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
          f"{tuple(array.shape)}; the categorical needs a class axis.")
    moved.append(jnp.moveaxis(array, int(axis), -1))
  return _kl(_kl_categorical, [("logits_p", moved[0]),
                               ("logits_q", moved[1])], (1, 1))


def _kl_categorical(logits_p, logits_q) -> jax.Array:
  log_p = jax.nn.log_softmax(logits_p, axis=-1)
  log_q = jax.nn.log_softmax(logits_q, axis=-1)
  return jnp.sum(_p_log_p_over_q(log_p, log_q), axis=-1)


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
  accurate values (to an absolute error of a few ``finfo.eps``; when
  :math:`P \approx Q` the two terms cancel, as in the textbook formula).
  Infinite logits are allowed: :math:`a = \pm\infty` is a point mass (its
  zero-probability outcome contributes 0), and :math:`b = \pm\infty` gives
  :math:`+\infty` unless :math:`P` is the same point mass (a finite
  :math:`a` gives :math:`+\infty` even where :math:`\sigma(a)` underflows).
  Where the value is :math:`+\infty` the gradient is not finite.

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
  return _kl(_kl_bernoulli, [("logits_p", logits_p), ("logits_q", logits_q)],
             (0, 0))


def _kl_bernoulli(a, b) -> jax.Array:
  return (_p_log_p_over_q(jax.nn.log_sigmoid(a), jax.nn.log_sigmoid(b))
          + _p_log_p_over_q(jax.nn.log_sigmoid(-a), jax.nn.log_sigmoid(-b)))


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
  return _kl(_kl_bernoulli_probs, [("probs_p", probs_p),
                                   ("probs_q", probs_q)], (0, 0))


def _kl_bernoulli_probs(p, q) -> jax.Array:
  # 1 - p is exact for p >= 1/2 (Sterbenz) and accurate below; taking
  # log(1 - q) the same way as twice_kl_terms takes log(1 - p) makes P = Q
  # give exactly 0.
  twice = (_pointwise.twice_kl_terms(_log_where_needed(q, p), p)
           + _pointwise.twice_kl_terms(_log_where_needed(1 - q, 1 - p), 1 - p))
  return 0.5 * twice


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


def _kl_poisson(rate_p, rate_q) -> jax.Array:
  twice = _pointwise.twice_kl_terms(_log_where_needed(rate_q, rate_p), rate_p)
  return 0.5 * twice + (rate_q - rate_p)


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
  return _kl(_kl_exponential, [("rate_p", rate_p), ("rate_q", rate_q)],
             (0, 0))


def _kl_exponential(rate_p, rate_q) -> jax.Array:
  return _expm1_minus(jnp.log(rate_q) - jnp.log(rate_p))


def kl_gamma(concentration_p: ArrayLike, rate_p: ArrayLike,
             concentration_q: ArrayLike, rate_q: ArrayLike) -> jax.Array:
  r"""KL divergence between gamma distributions (shape and rate).

  For densities :math:`\beta^\alpha x^{\alpha-1} e^{-\beta x} / \Gamma(\alpha)`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = (\alpha_p - \alpha_q)\,\psi(\alpha_p)
       - \log\Gamma(\alpha_p) + \log\Gamma(\alpha_q)
       + \alpha_q \log\frac{\beta_p}{\beta_q}
       + \alpha_p \frac{\beta_q - \beta_p}{\beta_p},

  evaluated with :math:`u = \log(\beta_q / \beta_p)` as
  :math:`(\alpha_p - \alpha_q)(\psi(\alpha_p) + u)
  - (\log\Gamma(\alpha_p) - \log\Gamma(\alpha_q))
  + \alpha_p\,(\operatorname{expm1}(u) - u)`, which is exactly 0 for
  :math:`P = Q`. :math:`\psi` is the digamma function.

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
  return _kl(_kl_gamma,
             [("concentration_p", concentration_p), ("rate_p", rate_p),
              ("concentration_q", concentration_q), ("rate_q", rate_q)],
             (0, 0, 0, 0))


def _kl_gamma(a_p, rate_p, a_q, rate_q) -> jax.Array:
  u = jnp.log(rate_q) - jnp.log(rate_p)
  return ((a_p - a_q) * (digamma(a_p) + u)
          - (gammaln(a_p) - gammaln(a_q))
          + a_p * _expm1_minus(u))


def kl_beta(a_p: ArrayLike, b_p: ArrayLike, a_q: ArrayLike,
            b_q: ArrayLike) -> jax.Array:
  r"""KL divergence between beta distributions.

  For densities :math:`x^{a-1} (1 - x)^{b-1} / B(a, b)`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \log\frac{B(a_q, b_q)}{B(a_p, b_p)}
       + (a_p - a_q)\,\psi(a_p) + (b_p - b_q)\,\psi(b_p)
       + (a_q - a_p + b_q - b_p)\,\psi(a_p + b_p),

  with :math:`\log B` from :func:`jax.scipy.special.betaln` (accurate for
  large arguments) and :math:`\psi` the digamma function.

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
  return _kl(_kl_beta, [("a_p", a_p), ("b_p", b_p), ("a_q", a_q),
                        ("b_q", b_q)], (0, 0, 0, 0))


def _kl_beta(a_p, b_p, a_q, b_q) -> jax.Array:
  psi_total = digamma(a_p + b_p)
  return ((betaln(a_q, b_q) - betaln(a_p, b_p))
          + (a_p - a_q) * (digamma(a_p) - psi_total)
          + (b_p - b_q) * (digamma(b_p) - psi_total))


def kl_dirichlet(concentration_p: ArrayLike,
                 concentration_q: ArrayLike) -> jax.Array:
  r"""KL divergence between Dirichlet distributions.

  With :math:`\alpha_0 = \sum_k \alpha_k`,

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \log\Gamma(\alpha_{p,0})
       - \log\Gamma(\alpha_{q,0})
       - \sum_k \big(\log\Gamma(\alpha_{p,k}) - \log\Gamma(\alpha_{q,k})\big)
       + \sum_k (\alpha_{p,k} - \alpha_{q,k})
         \big(\psi(\alpha_{p,k}) - \psi(\alpha_{p,0})\big),

  grouped as written so that it is exactly 0 for :math:`P = Q`.

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
  return _kl(_kl_dirichlet, [("concentration_p", concentration_p),
                             ("concentration_q", concentration_q)], (1, 1))


def _kl_dirichlet(alpha_p, alpha_q) -> jax.Array:
  total_p = jnp.sum(alpha_p, axis=-1)
  total_q = jnp.sum(alpha_q, axis=-1)
  psi_total = digamma(total_p)[..., None]
  return ((gammaln(total_p) - gammaln(total_q))
          - jnp.sum(gammaln(alpha_p) - gammaln(alpha_q), axis=-1)
          + jnp.sum((alpha_p - alpha_q) * (digamma(alpha_p) - psi_total),
                    axis=-1))


def kl_laplace(loc_p: ArrayLike, scale_p: ArrayLike, loc_q: ArrayLike,
               scale_q: ArrayLike) -> jax.Array:
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
  return _kl(_kl_laplace, [("loc_p", loc_p), ("scale_p", scale_p),
                           ("loc_q", loc_q), ("scale_q", scale_q)],
             (0, 0, 0, 0))


def _kl_laplace(loc_p, scale_p, loc_q, scale_q) -> jax.Array:
  t = jnp.abs(loc_p - loc_q) / scale_p
  return (_expm1_minus(jnp.log(scale_p) - jnp.log(scale_q))
          + (scale_p / scale_q) * (t + jnp.expm1(-t)))
