r"""``jaxkl.kl(p, q)``: the KL divergence between two distribution objects."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkl import _estimators
from jaxkl import _monte_carlo
from jaxkl._closed_forms import _adapters
from jaxkl._closed_forms import _registry
from jaxkl._monte_carlo import KLEstimate


class _NoClosedForm(Exception):
  """No closed form for a pair; ``args[0]`` says why."""

  def __init__(self, reason: str, mixture: bool = False) -> None:
    super().__init__(reason)
    self.reason = reason
    self.mixture = mixture


def kl(
  p: Any,
  q: Any,
  *,
  key: jax.Array | None = None,
  num_samples: int | None = None,
  estimator: _estimators.Estimator = "k1",
) -> jax.Array | KLEstimate:
  r"""KL divergence :math:`D_{\mathrm{KL}}(P \,\|\, Q)` between two distribution objects.

  .. math::

     D_{\mathrm{KL}}(P \,\|\, Q) = \mathbb{E}_{x \sim P}
       \left[\log \frac{p(x)}{q(x)}\right],

  for NumPyro (``numpyro.distributions``), Distrax and TFP-on-JAX
  (``tensorflow_probability.substrates.jax.distributions``) objects, in
  any combination, and for types registered with
  :func:`jaxkl.register_kl`. None of these libraries is imported by jaxkl
  unless an object of it is passed.

  **Dispatch**, at trace time on the objects' Python types (so under
  ``jit`` it costs nothing: the compiled computation is that of the
  closed form), the first rule that applies:

  1. a function registered with :func:`jaxkl.register_kl` for the types
     (the most specific registration; see there);
  2. a built-in closed form: both objects are read as canonical families
     (``normal``, ``mvn``, ``gamma``, ...; NumPyro's ``Pareto(scale,
     alpha)`` and TFP's ``Pareto(concentration, scale)`` alike) and the
     pair of families has a formula among jaxkl's ``kl_*`` functions, with
     their numerics (never negative, exactly 0 for equal parameters,
     accurate at extreme parameters);
  3. structural rules, applied recursively to what the wrappers hold:

     * ``Independent`` / ``to_event`` on both sides: the KL of the base
       distributions summed over the reinterpreted dimensions (both sides
       must reinterpret the same number, nested wrappers counted
       together; otherwise rule 4 applies). An ``Independent`` normal with
       one reinterpreted dimension is also a diagonal multivariate normal
       (rule 2);
     * NumPyro ``ExpandedDistribution`` and TFP ``BatchBroadcast``, on
       either side: the KL of the base, broadcast;
     * NumPyro ``MaskedDistribution`` (``.mask(m)``), on either side: 0
       where either mask is False, as NumPyro does; TFP ``Masked`` on both
       sides: the KL where both are valid, 0 where neither is, NaN where
       only one is (undefined), as TFP does;
     * a point mass as :math:`P` (NumPyro ``Delta(v, log_density)``; TFP
       ``Deterministic``, ``VectorDeterministic`` and Distrax
       ``Deterministic`` with log-density 0): NumPyro's and TFP's
       convention :math:`\text{log\_density} - \log q(v)`. For a discrete
       :math:`Q` (and log-density 0) this is the exact KL; for a continuous
       :math:`Q` the exact KL of a point mass is :math:`+\infty`, and this
       is the cross-entropy term that point-estimate (MAP) guides use;
     * ``TransformedDistribution`` (Distrax ``Transformed``) on both sides
       with the same injective transform: the KL of the bases, the KL
       being invariant under a shared bijection. "Same" is decided
       conservatively, at trace time: the same object, or objects of the
       same type whose parameters are equal (concrete arrays compared
       elementwise; names and validation flags ignored). Traced parameters
       that are not the same object (a transform passed through ``jit``)
       cannot be compared, and non-injective transforms (NumPyro
       ``AbsTransform``, TFP ``AbsoluteValue``) are refused: rule 4;
     * TFP ``Sample`` on both sides with the same ``sample_shape``: the
       base KL times the number of draws;

  4. otherwise, with a ``key``: a Monte-Carlo estimate,
     ``jaxkl.monte_carlo_kl(key, p, q, num_samples=num_samples,
     estimator=estimator)``, returned as a ``KLEstimate`` (value,
     standard error, tail diagnostic). Without a key: ``NotImplementedError``
     naming both types and saying how to get an estimate. Gaussian
     mixtures (``MixtureSameFamily`` of normals) have no closed form:
     ``jaxkl.kl_gaussian_mixture(jaxkl.as_gaussian_mixture(p),
     jaxkl.as_gaussian_mixture(q))`` gives the variational approximation
     and bounds.

  Support mismatch (:math:`P` puts mass where :math:`Q` has none, e.g.
  Normal against Exponential, or Uniform(0, 2) against Uniform(0, 1))
  gives :math:`+\infty` elementwise, as torch.distributions does.

  Batches: the batch shapes of ``p`` and ``q`` broadcast by NumPy's rules,
  as the libraries' own ``kl_divergence`` do; the event shapes must be
  equal.

  A ``key`` is used only when no closed form exists: then the result is a
  ``KLEstimate``, otherwise the exact array (check with
  ``isinstance(result, jaxkl.KLEstimate)``). ``key`` and ``num_samples``
  go together: there is no default sample size (the right one depends on
  the pair and the accuracy wanted).

  Args:
    p: the distribution :math:`P`.
    q: the distribution :math:`Q`, with the same event shape.
    key: a ``jax.random`` key for the Monte-Carlo fallback (rule 4), or
      None (the default) for closed forms only.
    num_samples: the number of draws of the fallback, a Python int >= 2;
      required with ``key`` and only with it.
    estimator: the fallback's estimator, ``'k1' | 'k2' | 'k3' | 'cv' |
      'cv_crossfit'`` (see ``jaxkl.monte_carlo_kl``).

  Returns:
    A ``jax.Array`` of the broadcast batch shape (in the parameters'
    promoted floating dtype; 16-bit parameters are computed in float32)
    when a closed form or structural rule applies; a registered function's
    result as a ``jax.Array``; otherwise (with a ``key``) a ``KLEstimate``
    whose fields have the broadcast batch shape.

  Raises:
    NotImplementedError: no closed form and no ``key``.
    ValueError: event shapes that differ, batch shapes that do not
      broadcast, a ``key`` without ``num_samples`` or the reverse.
    TypeError: an ambiguous :func:`jaxkl.register_kl` registration, an
      object that is not a distribution, or the errors of
      ``jaxkl.monte_carlo_kl`` (a bad key).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpyro.distributions as dist
    >>> import jaxkl
    >>> jaxkl.kl(dist.Normal(0.0, 1.0), dist.Normal(1.0, 1.0))
    Array(0.5, dtype=float32)
    >>> # Batches broadcast; `to_event` sums over the event dimensions.
    >>> p = dist.Normal(jnp.zeros((4, 3)), 1.0).to_event(1)
    >>> q = dist.Normal(jnp.ones(3), 2.0).to_event(1)
    >>> jaxkl.kl(p, q).shape
    (4,)
    >>> # Support mismatch: P has mass below 0, where Q has none.
    >>> jaxkl.kl(dist.Normal(0.0, 1.0), dist.Exponential(1.0))
    Array(inf, dtype=float32)
    >>> # No closed form: Monte Carlo with a key, an error without one.
    >>> est = jaxkl.kl(dist.Normal(0.0, 1.0), dist.StudentT(3.0),
    ...                key=jax.random.key(0), num_samples=10_000)
    >>> type(est).__name__, est.num_samples
    ('KLEstimate', 10000)

  References:
    S. Kullback and R. A. Leibler, "On Information and Sufficiency",
    Annals of Mathematical Statistics 22(1), 1951.
    J. R. Hershey and P. A. Olsen, "Approximating the Kullback Leibler
    Divergence Between Gaussian Mixture Models", ICASSP 2007.
  """
  if (key is None) != (num_samples is None):
    given, missing = (
      ("key", "num_samples") if num_samples is None else ("num_samples", "key")
    )
    raise ValueError(
      f"`jaxkl.kl`: `{given}` was given without `{missing}`; they go together "
      "(the Monte-Carlo fallback for pairs without a closed form): pass both, "
      "e.g. `key=jax.random.key(0), num_samples=10_000`, or neither."
    )
  if key is not None:
    _monte_carlo.check_key(key, p, q, "jaxkl.kl")
    estimator = _estimators.validate_estimator(estimator)
  try:
    return _closed_form(p, q)
  except _NoClosedForm as missing:
    if key is None:
      raise NotImplementedError(_message(p, q, missing)) from None
  assert num_samples is not None
  return _monte_carlo.monte_carlo_kl(
    key, p, q, num_samples=num_samples, estimator=estimator
  )


# ----------------------------------------------------------------------------
# Messages.


def _describe(obj: Any) -> str:
  cls = type(obj)
  root = (cls.__module__ or "").partition(".")[0]
  library = {
    "numpyro": "NumPyro",
    "distrax": "Distrax",
    "tensorflow_probability": "TFP",
    "jaxkl": "jaxkl",
  }.get(root, cls.__module__)
  found = None
  try:
    found = _adapters.canonical(obj)
  except Exception:  # a description must not fail
    found = None
  family = f" (family '{found.family}')" if found is not None else ""
  return f"{library} {cls.__qualname__}{family}"


def _message(p: Any, q: Any, missing: _NoClosedForm) -> str:
  names = f"{type(p).__qualname__}, {type(q).__qualname__}"
  text = (
    f"no closed-form KL divergence for P = {_describe(p)} and Q = "
    f"{_describe(q)}: {missing.reason}. For a Monte-Carlo estimate (a "
    "`jaxkl.KLEstimate` with a standard error) pass a key and a sample size: "
    "`jaxkl.kl(p, q, key=jax.random.key(0), num_samples=10_000)` (or call "
    "`jaxkl.monte_carlo_kl`); to add a closed form, "
    f"`@jaxkl.register_kl({names})`."
  )
  if missing.mixture:
    text += (
      " For Gaussian mixtures, `jaxkl.kl_gaussian_mixture("
      "jaxkl.as_gaussian_mixture(p), jaxkl.as_gaussian_mixture(q), "
      "method=...)` gives the variational approximation and the lower and "
      "upper bounds."
    )
  return text


# ----------------------------------------------------------------------------
# Dispatch.


def _is_distribution(obj: Any) -> bool:
  return hasattr(obj, "batch_shape") and hasattr(obj, "event_shape")


def _shape(value: Any) -> tuple[int, ...]:
  return tuple(int(n) for n in value)


def _batch(p: Any, q: Any) -> tuple[int, ...]:
  bp, bq = _shape(p.batch_shape), _shape(q.batch_shape)
  try:
    return tuple(np.broadcast_shapes(bp, bq))
  except ValueError:
    raise ValueError(
      f"the batch shapes of P {bp} and Q {bq} do not broadcast against each "
      "other (NumPy's rules)."
    ) from None


def _broadcast(value: Any, shape: tuple[int, ...], what: str) -> jax.Array:
  array = jnp.asarray(value)
  try:
    return jnp.broadcast_to(array, shape)
  except ValueError:
    raise _NoClosedForm(
      f"{what} has shape {tuple(array.shape)}, which does not broadcast to the "
      f"batch shape {shape}"
    ) from None


def _sum_rightmost(value: jax.Array, ndims: int) -> jax.Array:
  if ndims == 0:
    return value
  return jnp.sum(value, axis=tuple(range(value.ndim - ndims, value.ndim)))


def _closed_form(p: Any, q: Any) -> jax.Array:
  """The exact KL by rules 1-3 of ``kl``; raises ``_NoClosedForm``."""
  registered = _registry.lookup(type(p), type(q))
  if registered is not None:
    return jnp.asarray(registered(p, q))
  for name, obj in (("p", p), ("q", q)):
    if not _is_distribution(obj):
      raise TypeError(
        f"`{name}` must be a distribution object (NumPyro, Distrax, TFP on "
        "JAX, a jaxkl container, or a type registered with "
        f"`jaxkl.register_kl`); got an object of type {type(obj).__name__}."
      )
  shape = _batch(p, q)
  event_p, event_q = _shape(p.event_shape), _shape(q.event_shape)
  if event_p != event_q:
    raise ValueError(
      f"the event shapes of P {event_p} and Q {event_q} differ: a KL "
      "divergence compares distributions on the same space."
    )
  canon_p, canon_q = _adapters.canonical(p), _adapters.canonical(q)
  if canon_p is not None and canon_q is not None:
    formula = _registry.builtin(canon_p.family, canon_q.family)
    if formula is not None:
      return _broadcast(formula(canon_p.params, canon_q.params), shape, "the KL")
  return _structural(p, q, shape, canon_p, canon_q)


def _structural(
  p: Any,
  q: Any,
  shape: tuple[int, ...],
  canon_p: _adapters.Canonical | None,
  canon_q: _adapters.Canonical | None,
) -> jax.Array:
  """Rule 3 of ``kl``: the structural wrappers."""
  sp, sq = _adapters.structure(p), _adapters.structure(q)
  kind_p = None if sp is None else sp.kind
  kind_q = None if sq is None else sq.kind

  if sp is not None and kind_p == "expanded":
    return _broadcast(_closed_form(sp.base, q), shape, "the KL of P's base")
  if sq is not None and kind_q == "expanded":
    return _broadcast(_closed_form(p, sq.base), shape, "the KL of Q's base")

  numpyro_masked = [
    s
    for s in (sp, sq)
    if s is not None and s.kind == "masked" and s.convention == "numpyro"
  ]
  if numpyro_masked:
    base_p = sp.base if sp in numpyro_masked and sp is not None else p
    base_q = sq.base if sq in numpyro_masked and sq is not None else q
    return _numpyro_masked([s.mask for s in numpyro_masked], base_p, base_q, shape)
  if (
    sp is not None
    and sq is not None
    and kind_p == kind_q == "masked"
    and sp.convention == sq.convention == "tfp"
  ):
    return _tfp_masked(sp, sq, shape)

  if sp is not None and kind_p == "delta":
    log_q = _monte_carlo._log_prob_fn(q, "q")(sp.value)
    log_density = jnp.asarray(sp.log_density).astype(log_q.dtype)
    return _broadcast(log_density - log_q, shape, "the point mass's KL")

  if sp is not None and sq is not None and kind_p == kind_q == "independent":
    if sp.ndims != sq.ndims:
      raise _NoClosedForm(
        f"P reinterprets {sp.ndims} batch dimension(s) as event dimensions "
        f"and Q {sq.ndims} (Independent / to_event); the structural rule "
        "needs the same number on both sides"
      )
    inner = _closed_form(sp.base, sq.base)
    inner = _broadcast(inner, _batch(sp.base, sq.base), "the KL of the bases")
    return _broadcast(_sum_rightmost(inner, sp.ndims), shape, "the summed KL")

  if sp is not None and sq is not None and kind_p == kind_q == "sample":
    if sp.sample_shape != sq.sample_shape:
      raise _NoClosedForm(
        f"the TFP Sample shapes differ ({sp.sample_shape} and {sq.sample_shape})"
      )
    inner = _closed_form(sp.base, sq.base)
    draws = int(np.prod(sp.sample_shape, dtype=np.int64))
    return _broadcast(inner * jnp.asarray(draws, inner.dtype), shape, "the KL")

  both_families = canon_p is not None and canon_q is not None
  # Two families without a pair are not compared as transforms (TFP's
  # Weibull and Kumaraswamy are TransformedDistributions): the family reason
  # below is the clearer one.
  if (
    sp is not None
    and sq is not None
    and kind_p == kind_q == "transformed"
    and not both_families
  ):
    return _transformed(p, q, sp, sq, shape)

  mixture = (
    "mixture" in (kind_p, kind_q) or _is_jaxkl_mixture(p) or _is_jaxkl_mixture(q)
  )
  if mixture:
    raise _NoClosedForm(
      "the KL divergence involving a mixture has no closed form", mixture=True
    )
  if both_families:
    assert canon_p is not None and canon_q is not None
    raise _NoClosedForm(
      f"jaxkl has no closed form for the pair of families ('{canon_p.family}', "
      f"'{canon_q.family}')"
    )
  unknown = [
    name
    for name, canon, s in (("P", canon_p, sp), ("Q", canon_q, sq))
    if canon is None and s is None
  ]
  if unknown:
    raise _NoClosedForm(
      f"{' and '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not of a "
      "family with closed forms"
    )
  raise _NoClosedForm("no structural rule applies to this pair of wrappers")


def _is_jaxkl_mixture(obj: Any) -> bool:
  from jaxkl._closed_forms import mixture

  container = getattr(mixture, "GaussianMixture", None)
  return container is not None and isinstance(obj, container)


def _numpyro_masked(
  masks: list[Any], base_p: Any, base_q: Any, shape: tuple[int, ...]
) -> jax.Array:
  """NumPyro's rule: the KL where every mask is True, else 0."""
  if any(m is False for m in masks):
    return jnp.zeros(shape)
  arrays = [m for m in masks if m is not True]
  inner = _broadcast(_closed_form(base_p, base_q), shape, "the KL of the bases")
  if not arrays:
    return inner
  mask = jnp.broadcast_to(jnp.asarray(arrays[0], bool), shape)
  for other in arrays[1:]:
    mask = mask & jnp.broadcast_to(jnp.asarray(other, bool), shape)
  return jnp.where(mask, inner, jnp.zeros((), inner.dtype))


def _tfp_masked(
  sp: _adapters.Structure, sq: _adapters.Structure, shape: tuple[int, ...]
) -> jax.Array:
  """TFP's rule: the KL where both are valid, 0 where neither, NaN otherwise."""
  inner = _broadcast(_closed_form(sp.base, sq.base), shape, "the KL of the bases")
  valid_p = jnp.broadcast_to(jnp.asarray(sp.mask, bool), shape)
  valid_q = jnp.broadcast_to(jnp.asarray(sq.mask, bool), shape)
  zero = jnp.zeros((), inner.dtype)
  nan = jnp.full((), jnp.nan, inner.dtype)
  return jnp.where(valid_p & valid_q, inner, jnp.where(~valid_p & ~valid_q, zero, nan))


def _transformed(
  p: Any,
  q: Any,
  sp: _adapters.Structure,
  sq: _adapters.Structure,
  shape: tuple[int, ...],
) -> jax.Array:
  """Both transformed: the KL of the bases when the transforms are the same."""
  tp, tq = sp.transforms, sq.transforms
  if len(tp) != len(tq):
    raise _NoClosedForm(
      f"the transforms differ (chains of {len(tp)} and {len(tq)} transforms)"
    )
  for a, b in zip(tp, tq, strict=True):
    try:
      equal = _adapters.same(a, b)
    except _adapters.Undecidable as err:
      raise _NoClosedForm(
        f"cannot decide whether the transforms {type(a).__name__} and "
        f"{type(b).__name__} are the same: {err} (build both distributions "
        "with the same transform object, or call `jaxkl.kl` outside `jit`)"
      ) from None
    if not equal:
      raise _NoClosedForm(
        f"the transforms differ ({type(a).__name__} and {type(b).__name__}, "
        "or their parameters)"
      )
    if not _adapters.injective(a):
      raise _NoClosedForm(
        f"the transform {type(a).__name__} is not one-to-one, so the KL of the "
        "bases is only an upper bound"
      )
  base_p, base_q = sp.base, sq.base
  for outer, base in ((p, base_p), (q, base_q)):
    if len(_shape(outer.event_shape)) != len(_shape(base.event_shape)):
      raise _NoClosedForm(
        "a transform changes the number of event dimensions (the base's batch "
        "dimensions would be summed over); this is not handled"
      )
  return _broadcast(_closed_form(base_p, base_q), shape, "the KL of the bases")
