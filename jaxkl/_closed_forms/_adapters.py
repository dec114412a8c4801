r"""Distribution objects of NumPyro, Distrax and TFP-on-JAX, read as jaxkl sees them.

Two questions are answered here, at trace time, for any object:

* :func:`canonical`: is it one of the canonical families of the closed forms
  (see :mod:`jaxkl._closed_forms._registry`), and with which parameters?
  Returns a :class:`Canonical` (family, parameters under the canonical
  names, batch shape, event shape) or ``None``.
* :func:`structure`: is it a structural wrapper (Independent, Expanded,
  Masked, a point mass, a transformed distribution, TFP's ``Sample``, a
  mixture)? Returns a :class:`Structure` or ``None``.

Classes are matched along the object's method resolution order, as
``torch.distributions.kl`` does: a subclass of a listed class is read as
that class (NumPyro's ``Chi2`` is listed itself, so it is read as ``chi2``
and not as its base class ``Gamma``). A library is imported only when an
object whose class (or a base class) it defines is seen, so jaxkl imports
without NumPyro, Distrax or TFP. Distrax's wrappers of TFP distributions
(``distrax.Independent(tfd.Normal(...))`` holds one) are read as the TFP
class they subclass.

Library parameter conventions mapped to the canonical names (read from the
libraries' sources and checked against their own ``kl_divergence`` or
``log_prob`` in ``tests/test_kl_dispatch.py``): NumPyro ``Pareto(scale,
alpha)`` and TFP ``Pareto(concentration, scale)`` (``alpha =
concentration``); ``Weibull(scale, concentration)`` in NumPyro,
``Weibull(concentration, scale)`` in TFP; Distrax ``Beta(alpha, beta)``
(``concentration1 = alpha``, ``concentration0 = beta``); TFP ``Gamma`` and
``Poisson`` given ``log_rate`` are read with ``rate = exp(log_rate)``;
TFP's ``MultivariateNormalDiagPlusLowRankCovariance`` (covariance
``diag(cov_diag_factor) + U Uᵀ``) is ``mvn_low_rank``; multivariate normals
given by a general scale matrix :math:`S` (covariance :math:`S S^\top`) or a
covariance are read as ``mvn`` with the lower Cholesky factor of the
covariance, computed from a QR factorization of :math:`S^\top` (which does
not square the condition number); Binomial ``total_count`` is cast to the
floating dtype of the probabilities.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxkl import _monte_carlo

# ----------------------------------------------------------------------------
# Results.


class Canonical(NamedTuple):
  """An object read as a canonical family.

  Attributes:
    family: the canonical family name, e.g. ``"normal"``.
    params: its parameters under the canonical names, as arrays (not
      broadcast against each other).
    batch_shape: the object's batch shape.
    event_shape: the object's event shape.
  """

  family: str
  params: dict[str, jax.Array]
  batch_shape: tuple[int, ...]
  event_shape: tuple[int, ...]


class Structure(NamedTuple):
  """A structural wrapper and what it wraps.

  ``kind`` is one of

  * ``"independent"``: ``base`` with its ``ndims`` rightmost batch
    dimensions reinterpreted as event dimensions (nested wrappers are
    flattened: ``ndims`` is their total);
  * ``"expanded"``: ``base`` broadcast to a larger batch shape (NumPyro's
    ``ExpandedDistribution``, TFP's ``BatchBroadcast``);
  * ``"masked"``: ``base`` with a boolean ``mask`` over the batch;
    ``convention`` is ``"numpyro"`` (``MaskedDistribution``) or ``"tfp"``
    (``Masked``; its ``validity_mask``);
  * ``"delta"``: a point mass at ``value`` with log-density
    ``log_density`` (NumPyro ``Delta``; TFP ``Deterministic`` and
    ``VectorDeterministic`` and Distrax ``Deterministic``, log-density 0);
  * ``"transformed"``: ``base`` pushed through ``transforms`` (a tuple of
    transforms or bijectors, applied in order);
  * ``"sample"``: TFP's ``Sample``: ``sample_shape`` i.i.d. draws of
    ``base``;
  * ``"mixture"``: a mixture (``MixtureSameFamily`` and the like), with
    ``mixing`` and ``components``.
  """

  kind: str
  base: Any = None
  ndims: int = 0
  mask: Any = None
  convention: str = ""
  value: Any = None
  log_density: Any = None
  transforms: tuple[Any, ...] = ()
  sample_shape: tuple[int, ...] = ()
  mixing: Any = None


Converter = Callable[[Any], "tuple[str, dict[str, jax.Array]] | None"]

# ----------------------------------------------------------------------------
# Helpers.


def _array(value: Any) -> jax.Array:
  return jnp.asarray(value)


def _batch_shape(obj: Any) -> tuple[int, ...]:
  return tuple(int(n) for n in obj.batch_shape)


def _event_shape(obj: Any) -> tuple[int, ...]:
  return tuple(int(n) for n in obj.event_shape)


def _logits_or_probs(logits: Any, probs: Any) -> dict[str, jax.Array]:
  """``{"logits": ...}`` when logits were given, else ``{"probs": ...}``."""
  if logits is not None:
    return {"logits": _array(logits)}
  return {"probs": _array(probs)}


def _with_total_count(
  total_count: Any, other: dict[str, jax.Array]
) -> dict[str, jax.Array]:
  (value,) = other.values()
  return {"total_count": _array(total_count).astype(value.dtype), **other}


def tril_from_scale(scale: jax.Array) -> jax.Array:
  r"""The lower Cholesky factor :math:`L` of :math:`S S^\top`, from ``S``.

  Computed from the QR factorization :math:`S^\top = Q R`: :math:`S S^\top
  = R^\top R`, so :math:`L = R^\top` with its columns' signs flipped to make
  the diagonal non-negative. No product :math:`S S^\top` is formed, so the
  condition number is not squared.
  """
  r = jnp.linalg.qr(jnp.swapaxes(scale, -1, -2), mode="r")
  diagonal = jnp.diagonal(r, axis1=-2, axis2=-1)
  sign = jnp.where(diagonal < 0, -1, 1).astype(r.dtype)
  return jnp.swapaxes(r, -1, -2) * sign[..., None, :]


def _diag_normal(
  base: Canonical, ndims: int
) -> tuple[str, dict[str, jax.Array]] | None:
  """A normal with one reinterpreted batch dimension is an ``mvn_diag``."""
  if base.family != "normal" or ndims != 1 or not base.batch_shape:
    return None
  shape = base.batch_shape
  return "mvn_diag", {
    "loc": jnp.broadcast_to(base.params["loc"], shape),
    "scale_diag": jnp.broadcast_to(base.params["scale"], shape),
  }


def _independent_canonical(obj: Any) -> tuple[str, dict[str, jax.Array]] | None:
  """An ``Independent`` normal (also of an expanded normal, NumPyro's
  ``Normal(0, 1).expand([d]).to_event(1)``) with one reinterpreted
  dimension, as an ``mvn_diag``; None otherwise, and None when a
  ``jaxkl.register_kl`` registration names the normal's type (the
  registration then applies, through the structural rules)."""
  from jaxkl._closed_forms import _registry

  found = structure(obj)
  if found is None or found.kind != "independent":
    return None
  inner = found.base
  batch = _batch_shape(inner)
  wrapped = structure(inner)
  if wrapped is not None and wrapped.kind == "expanded":
    inner = wrapped.base
  base = canonical(inner)
  if base is None or _registry.involves(type(inner)):
    return None
  return _diag_normal(base._replace(batch_shape=batch), found.ndims)


# ----------------------------------------------------------------------------
# The tables: class name -> (family, for the documentation; converter).

Entry = tuple[str, Converter]


def _attrs(family: str, **names: str) -> Entry:
  """An entry reading canonical parameter ``name`` from attribute ``attr``."""

  def convert(d: Any) -> tuple[str, dict[str, jax.Array]]:
    return family, {name: getattr(d, attr) for name, attr in names.items()}

  return family, convert


def _given(family: str, logits: str, probs: str) -> Entry:
  """An entry for a family given by logits or probabilities (whichever was)."""

  def convert(d: Any) -> tuple[str, dict[str, jax.Array]]:
    return family, _logits_or_probs(getattr(d, logits), getattr(d, probs))

  return family, convert


def _only(family: str, name: str) -> Entry:
  """An entry whose class holds only logits or only probabilities."""

  def convert(d: Any) -> tuple[str, dict[str, jax.Array]]:
    return family, {name: getattr(d, name)}

  return family, convert


def _binomial(name: str | None) -> Entry:
  """Binomial: ``total_count`` and ``name`` (None: whichever TFP was given)."""

  def convert(d: Any) -> tuple[str, dict[str, jax.Array]]:
    if name is None:
      given = _logits_or_probs(d.logits, d.probs)
    else:
      given = {name: _array(getattr(d, name))}
    return "binomial", _with_total_count(d.total_count, given)

  return "binomial", convert


_INDEPENDENT: Entry = (
  "mvn_diag (of a normal, one dimension)",
  lambda d: _independent_canonical(d),
)


# NumPyro.


def _numpyro_table() -> dict[type, Entry]:
  import numpyro.distributions as nd

  table: dict[str, Entry] = {
    "Normal": _attrs("normal", loc="loc", scale="scale"),
    "MultivariateNormal": _attrs("mvn", loc="loc", scale_tril="scale_tril"),
    "LowRankMultivariateNormal": _attrs(
      "mvn_low_rank", loc="loc", cov_factor="cov_factor", cov_diag="cov_diag"
    ),
    "BernoulliLogits": _only("bernoulli", "logits"),
    "BernoulliProbs": _only("bernoulli", "probs"),
    "CategoricalLogits": _only("categorical", "logits"),
    "CategoricalProbs": _only("categorical", "probs"),
    "BinomialLogits": _binomial("logits"),
    "BinomialProbs": _binomial("probs"),
    "GeometricLogits": _only("geometric", "logits"),
    "GeometricProbs": _only("geometric", "probs"),
    "Poisson": _attrs("poisson", rate="rate"),
    "Exponential": _attrs("exponential", rate="rate"),
    "Gamma": _attrs("gamma", concentration="concentration", rate="rate"),
    "Chi2": _attrs("chi2", df="df"),
    "Beta": _attrs(
      "beta", concentration1="concentration1", concentration0="concentration0"
    ),
    "Dirichlet": _attrs("dirichlet", concentration="concentration"),
    "Laplace": _attrs("laplace", loc="loc", scale="scale"),
    "Gumbel": _attrs("gumbel", loc="loc", scale="scale"),
    "HalfNormal": _attrs("half_normal", scale="scale"),
    "Cauchy": _attrs("cauchy", loc="loc", scale="scale"),
    "LogNormal": _attrs("log_normal", loc="loc", scale="scale"),
    "Uniform": _attrs("uniform", low="low", high="high"),
    "Pareto": _attrs("pareto", scale="scale", alpha="alpha"),
    "Weibull": _attrs("weibull", scale="scale", concentration="concentration"),
    "VonMises": _attrs("von_mises", loc="loc", concentration="concentration"),
    "Kumaraswamy": _attrs(
      "kumaraswamy", concentration1="concentration1", concentration0="concentration0"
    ),
    "Independent": _INDEPENDENT,
  }
  return _resolve(nd, table)


def _numpyro_structure(obj: Any) -> Structure | None:
  import numpyro.distributions as nd

  if isinstance(obj, nd.Independent):
    return Structure(
      "independent", base=obj.base_dist, ndims=obj.reinterpreted_batch_ndims
    )
  if isinstance(obj, nd.ExpandedDistribution):
    return Structure("expanded", base=obj.base_dist)
  if isinstance(obj, nd.MaskedDistribution):
    return Structure("masked", base=obj.base_dist, mask=obj._mask, convention="numpyro")
  if isinstance(obj, nd.Delta):
    return Structure("delta", value=obj.v, log_density=obj.log_density)
  if isinstance(obj, nd.MixtureSameFamily):
    return Structure(
      "mixture", mixing=obj.mixing_distribution, base=obj.component_distribution
    )
  if isinstance(obj, nd.TransformedDistribution):
    return Structure(
      "transformed", base=obj.base_dist, transforms=tuple(obj.transforms)
    )
  return None


# Distrax.


def _distrax_tri(d: Any) -> tuple[str, dict[str, jax.Array]]:
  matrix = _array(d.scale_tri)
  if d.is_lower:
    return "mvn", {"loc": d.loc, "scale_tril": jnp.tril(matrix)}
  return "mvn", {"loc": d.loc, "scale_tril": tril_from_scale(jnp.triu(matrix))}


def _distrax_from_bijector(d: Any) -> tuple[str, dict[str, jax.Array]]:
  return "mvn", {"loc": d.loc, "scale_tril": tril_from_scale(_array(d.scale.matrix))}


def _distrax_table() -> dict[type, Entry]:
  import distrax

  table: dict[str, Entry] = {
    "Normal": _attrs("normal", loc="loc", scale="scale"),
    "MultivariateNormalDiag": _attrs("mvn_diag", loc="loc", scale_diag="scale_diag"),
    "MultivariateNormalTri": ("mvn", _distrax_tri),
    "MultivariateNormalFullCovariance": ("mvn", _distrax_tri),
    "MultivariateNormalFromBijector": ("mvn", _distrax_from_bijector),
    "Bernoulli": _given("bernoulli", "_logits", "_probs"),
    "Categorical": _given("categorical", "_logits", "_probs"),
    "OneHotCategorical": _given("one_hot_categorical", "_logits", "_probs"),
    "Beta": _attrs("beta", concentration1="alpha", concentration0="beta"),
    "Gamma": _attrs("gamma", concentration="concentration", rate="rate"),
    "Dirichlet": _attrs("dirichlet", concentration="concentration"),
    "Laplace": _attrs("laplace", loc="loc", scale="scale"),
    "Gumbel": _attrs("gumbel", loc="loc", scale="scale"),
    "Uniform": _attrs("uniform", low="low", high="high"),
    "VonMises": _attrs("von_mises", loc="loc", concentration="concentration"),
    "Independent": _INDEPENDENT,
  }
  return _resolve(distrax, table)


def _distrax_structure(obj: Any) -> Structure | None:
  import distrax

  if isinstance(obj, distrax.Independent):
    return Structure(
      "independent", base=obj.distribution, ndims=obj.reinterpreted_batch_ndims
    )
  if isinstance(obj, distrax.Deterministic):
    return Structure("delta", value=obj.loc, log_density=0)
  if isinstance(obj, distrax.MixtureSameFamily):
    return Structure(
      "mixture", mixing=obj.mixture_distribution, base=obj.components_distribution
    )
  if isinstance(obj, distrax.Transformed):
    return Structure("transformed", base=obj.distribution, transforms=(obj.bijector,))
  return None


# TFP on JAX.


def _tfp_mvn(d: Any) -> tuple[str, dict[str, jax.Array]]:
  """A ``MultivariateNormalLinearOperator``, by the kind of its scale."""
  scale = d.scale
  loc = _array(d.mean())
  kind = type(scale).__name__
  if kind == "LinearOperatorDiag":
    return "mvn_diag", {"loc": loc, "scale_diag": _array(scale.diag_part())}
  if kind == "LinearOperatorLowerTriangular":
    return "mvn", {"loc": loc, "scale_tril": _array(scale.to_dense())}
  return "mvn", {"loc": loc, "scale_tril": tril_from_scale(_array(scale.to_dense()))}


def _tfp_low_rank(d: Any) -> tuple[str, dict[str, jax.Array]]:
  params = d.parameters
  return "mvn_low_rank", {
    "loc": _array(d.mean()),
    "cov_factor": _array(params["cov_perturb_factor"]),
    "cov_diag": _array(params["cov_diag_factor"]),
  }


def _tfp_rate(family: str, **names: str) -> Entry:
  """Gamma and Poisson: ``rate`` from ``rate`` or ``log_rate``."""

  def convert(d: Any) -> tuple[str, dict[str, jax.Array]]:
    params = {name: getattr(d, attr) for name, attr in names.items()}
    rate = d.rate if d.rate is not None else jnp.exp(_array(d.log_rate))
    return family, {**params, "rate": rate}

  return family, convert


def _tfp_table() -> dict[type, Entry]:
  from tensorflow_probability.substrates.jax import distributions as tfd

  table: dict[str, Entry] = {
    "Normal": _attrs("normal", loc="loc", scale="scale"),
    "MultivariateNormalLinearOperator": ("mvn or mvn_diag", _tfp_mvn),
    "MultivariateNormalDiagPlusLowRankCovariance": ("mvn_low_rank", _tfp_low_rank),
    "Bernoulli": _given("bernoulli", "logits", "probs"),
    "Categorical": _given("categorical", "logits", "probs"),
    "OneHotCategorical": _given("one_hot_categorical", "logits", "probs"),
    "Binomial": _binomial(None),
    "Geometric": _given("geometric", "logits", "probs"),
    "Poisson": _tfp_rate("poisson"),
    "Exponential": _attrs("exponential", rate="rate"),
    "Gamma": _tfp_rate("gamma", concentration="concentration"),
    "Chi2": _attrs("chi2", df="df"),
    "Beta": _attrs(
      "beta", concentration1="concentration1", concentration0="concentration0"
    ),
    "Dirichlet": _attrs("dirichlet", concentration="concentration"),
    "Laplace": _attrs("laplace", loc="loc", scale="scale"),
    "Gumbel": _attrs("gumbel", loc="loc", scale="scale"),
    "HalfNormal": _attrs("half_normal", scale="scale"),
    "Cauchy": _attrs("cauchy", loc="loc", scale="scale"),
    "LogNormal": _attrs("log_normal", loc="loc", scale="scale"),
    "Uniform": _attrs("uniform", low="low", high="high"),
    "Pareto": _attrs("pareto", scale="scale", alpha="concentration"),
    "Weibull": _attrs("weibull", scale="scale", concentration="concentration"),
    "VonMises": _attrs("von_mises", loc="loc", concentration="concentration"),
    "Kumaraswamy": _attrs(
      "kumaraswamy", concentration1="concentration1", concentration0="concentration0"
    ),
    "ContinuousBernoulli": _given("continuous_bernoulli", "logits", "probs"),
    "Independent": _INDEPENDENT,
  }
  return _resolve(tfd, table)


def _tfp_structure(obj: Any) -> Structure | None:
  from tensorflow_probability.substrates.jax import distributions as tfd

  if isinstance(obj, tfd.Independent):
    ndims = len(_event_shape(obj)) - len(_event_shape(obj.distribution))
    return Structure("independent", base=obj.distribution, ndims=ndims)
  if isinstance(obj, tfd.BatchBroadcast):
    return Structure("expanded", base=obj.distribution)
  if isinstance(obj, tfd.Masked):
    return Structure(
      "masked", base=obj.distribution, mask=obj.validity_mask, convention="tfp"
    )
  if isinstance(obj, (tfd.Deterministic, tfd.VectorDeterministic)):
    return Structure("delta", value=obj.loc, log_density=0)
  if isinstance(obj, tfd.Sample):
    shape = tuple(int(n) for n in np.atleast_1d(np.asarray(obj.sample_shape)))
    return Structure("sample", base=obj.distribution, sample_shape=shape)
  if isinstance(obj, tfd.MixtureSameFamily):
    return Structure(
      "mixture", mixing=obj.mixture_distribution, base=obj.components_distribution
    )
  if isinstance(obj, tfd.Mixture):
    return Structure("mixture", mixing=obj.cat, base=None)
  if isinstance(obj, tfd.TransformedDistribution):
    return Structure("transformed", base=obj.distribution, transforms=(obj.bijector,))
  return None


# ----------------------------------------------------------------------------
# Lookup.

_LIBRARIES: dict[
  str, tuple[Callable[[], dict[type, Entry]], Callable[[Any], Structure | None]]
] = {
  "numpyro": (_numpyro_table, _numpyro_structure),
  "distrax": (_distrax_table, _distrax_structure),
  "tensorflow_probability": (_tfp_table, _tfp_structure),
}
_TABLES: dict[str, dict[type, Entry]] = {}


def _resolve(module: types.ModuleType, table: dict[str, Entry]) -> dict[type, Entry]:
  """Class name -> entry, to class -> entry (classes absent here skipped)."""
  resolved: dict[type, Entry] = {}
  for name, converter in table.items():
    cls = getattr(module, name, None)
    if isinstance(cls, type):
      resolved[cls] = converter
  return resolved


def _table(library: str) -> dict[type, Entry]:
  if library not in _TABLES:
    _TABLES[library] = _LIBRARIES[library][0]()
  return _TABLES[library]


def _library(cls: type) -> str | None:
  root = (getattr(cls, "__module__", None) or "").partition(".")[0]
  return root if root in _LIBRARIES else None


def _libraries(obj: Any) -> Iterator[str]:
  """The libraries that define ``obj``'s class or a base class, in MRO order."""
  seen: set[str] = set()
  for cls in type(obj).__mro__:
    library = _library(cls)
    if library is not None and library not in seen:
      seen.add(library)
      yield library


def canonical(obj: Any) -> Canonical | None:
  """``obj`` as a canonical family, or None.

  The first class along ``type(obj).__mro__`` listed by its library wins;
  the parameters are read under NumPyro's, Distrax's or TFP's promotion
  rules (``_monte_carlo._library_context``).
  """
  for cls in type(obj).__mro__:
    library = _library(cls)
    if library is None:
      continue
    entry = _table(library).get(cls)
    if entry is None:
      continue
    converter = entry[1]
    with _monte_carlo._library_context():
      found = converter(obj)
      if found is None:
        return None
      family, params = found
      arrays = {name: _array(value) for name, value in params.items()}
      return Canonical(family, arrays, _batch_shape(obj), _event_shape(obj))
  return None


def structure(obj: Any) -> Structure | None:
  """``obj`` as a structural wrapper, or None.

  Nested ``Independent`` wrappers are flattened into one (their
  reinterpreted dimensions add up).
  """
  for library in _libraries(obj):
    with _monte_carlo._library_context():
      found = _LIBRARIES[library][1](obj)
    if found is None:
      continue
    if found.kind == "independent":
      inner = structure(found.base)
      if inner is not None and inner.kind == "independent":
        return inner._replace(ndims=inner.ndims + found.ndims)
    return found
  return None


def supported_types() -> dict[str, dict[str, str]]:
  """Library -> {class name: canonical family} of every installed library.

  For documentation (the coverage table): imports each library that is
  installed.
  """
  out: dict[str, dict[str, str]] = {}
  probes = {"numpyro": "numpyro", "distrax": "distrax", "tensorflow_probability": "tfp"}
  for library, label in probes.items():
    try:
      table = _table(library)
    except ImportError:
      continue
    names = {cls.__name__: family for cls, (family, _) in table.items()}
    out[label] = dict(sorted(names.items()))
  return out


# ----------------------------------------------------------------------------
# Deciding whether two transforms are the same.

_SKIPPED_ATTRIBUTES = frozenset({"_inv", "name", "validate_args", "_name", "_cache"})
_MAX_DEPTH = 8


class Undecidable(Exception):
  """Two transforms' parameters cannot be compared at trace time."""


def _is_tracer(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _arraylike(value: Any) -> bool:
  return isinstance(value, (jax.Array, np.ndarray, np.generic))


def same(a: Any, b: Any, depth: int = 0) -> bool:
  """Whether ``a`` and ``b`` are the same transform (conservatively).

  True when they are the same object, or of the same type with the same
  parameters: arrays equal elementwise (concrete values only), Python
  scalars and strings equal, containers and nested transforms the same by
  this rule; attributes that do not define the map (names, validation
  flags, caches and NumPyro's cached inverse) are ignored. TFP bijectors
  are compared by their ``parameters``. Functions are the same only when
  they are the same object.

  Raises:
    Undecidable: two different traced arrays (under ``jit``) are compared,
      or the objects nest too deeply.
  """
  if a is b:
    return True
  if depth > _MAX_DEPTH:
    raise Undecidable("the transforms nest too deeply to compare")
  if _arraylike(a) or _arraylike(b):
    if _is_tracer(a) or _is_tracer(b):
      raise Undecidable(
        "their parameters are traced arrays (under jit or another "
        "transformation) that are not the same object"
      )
    x, y = np.asarray(a), np.asarray(b)
    return x.shape == y.shape and bool(np.array_equal(x, y))
  if type(a) is not type(b):
    return False
  if a is None or isinstance(a, (bool, int, float, complex, str, bytes)):
    return bool(a == b)
  if isinstance(a, (tuple, list)):
    return len(a) == len(b) and all(
      same(x, y, depth + 1) for x, y in zip(a, b, strict=True)
    )
  if isinstance(a, dict):
    keys = set(a) - _SKIPPED_ATTRIBUTES
    if keys != set(b) - _SKIPPED_ATTRIBUTES:
      return False
    return all(same(a[k], b[k], depth + 1) for k in sorted(keys, key=str))
  if callable(a) and not hasattr(a, "__dict__"):
    return False
  if isinstance(a, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
    return False
  if _library(type(a)) == "tensorflow_probability" and hasattr(a, "parameters"):
    return same(dict(a.parameters), dict(b.parameters), depth + 1)
  attributes_a = getattr(a, "__dict__", None)
  attributes_b = getattr(b, "__dict__", None)
  if attributes_a is None or attributes_b is None:
    return False
  return same(dict(attributes_a), dict(attributes_b), depth + 1)


def injective(transform: Any) -> bool:
  """False for the transforms known not to be one-to-one.

  NumPyro's ``AbsTransform`` and any TFP bijector that says so
  (``_is_injective`` False, e.g. ``AbsoluteValue``), also inside chains.
  """
  if type(transform).__name__ == "AbsTransform":
    return False
  if getattr(transform, "_is_injective", True) is False:
    return False
  parts = getattr(transform, "parts", None) or getattr(transform, "bijectors", None)
  if isinstance(parts, (list, tuple)):
    return all(injective(part) for part in parts)
  return True


# ----------------------------------------------------------------------------
# Gaussian mixtures.


def as_gaussian_mixture(dist: Any) -> Any:
  r"""A NumPyro, Distrax or TFP Gaussian (mixture) as a ``jaxkl.GaussianMixture``.

  Reads ``MixtureSameFamily`` objects whose mixing distribution is a
  categorical (logits or probabilities) and whose components are normals
  (a mixture of univariate normals, event shape ``()``) or multivariate
  normals (full, triangular, diagonal, low-rank, or an ``Independent``
  normal), and single normals and multivariate normals (one-component
  mixtures), for ``jaxkl.kl_gaussian_mixture``:

  .. math::

     P = \sum_{k=1}^K \pi_k\, \mathcal N(\mu_k, L_k L_k^\top).

  A univariate mixture becomes a ``GaussianMixture`` with ``d = 1`` (event
  shape ``(1,)``); its KL divergences are those of the library's object.
  Low-rank covariances :math:`W W^\top + D` are factored by a QR
  decomposition of :math:`[W, D^{1/2}]^\top` (no product is formed).

  Args:
    dist: the distribution object.

  Returns:
    A ``jaxkl.GaussianMixture`` with ``logits [..., K]``, ``loc [..., K,
    d]`` and ``scale_tril [..., K, d, d]``.

  Raises:
    TypeError: ``dist`` is not a Gaussian mixture or Gaussian of a
      supported library.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpyro.distributions as dist
    >>> import jaxkl
    >>> mix = dist.MixtureSameFamily(
    ...     dist.CategoricalProbs(jnp.array([0.3, 0.7])),
    ...     dist.Normal(jnp.array([-1.0, 1.0]), 0.5))
    >>> g = jaxkl.as_gaussian_mixture(mix)
    >>> g.num_components, g.event_shape
    (2, (1,))
    >>> value = jaxkl.kl_gaussian_mixture(
    ...     g, jaxkl.as_gaussian_mixture(dist.Normal(0.0, 1.0)), method="lower")
    >>> bool(value > 0)
    True
  """
  from jaxkl._closed_forms.mixture import GaussianMixture

  found = structure(dist)
  if found is not None and found.kind == "mixture" and found.base is not None:
    mixing = canonical(found.mixing)
    components = canonical(found.base)
    if mixing is not None and mixing.family == "categorical" and components is not None:
      with _monte_carlo._library_context():
        weights = mixing.params
        logits = weights["logits"] if "logits" in weights else jnp.log(weights["probs"])
        gaussian = _gaussian_fields(components)
      if gaussian is not None:
        loc, tril = gaussian
        return GaussianMixture(logits, loc, tril)
  else:
    single = canonical(dist)
    if single is not None:
      with _monte_carlo._library_context():
        gaussian = _gaussian_fields(single)
      if gaussian is not None:
        loc, tril = gaussian
        batch = single.batch_shape
        logits = jnp.zeros((*batch, 1), loc.dtype)
        return GaussianMixture(logits, loc[..., None, :], tril[..., None, :, :])
  raise TypeError(
    "`as_gaussian_mixture` reads a MixtureSameFamily of normals or "
    "multivariate normals with a categorical mixing distribution, or a single "
    f"(multivariate) normal; got {type(dist).__module__}.{type(dist).__qualname__}."
  )


def _gaussian_fields(found: Canonical) -> tuple[jax.Array, jax.Array] | None:
  """``(loc [..., d], scale_tril [..., d, d])`` of a Gaussian family, batch
  dimensions broadcast; None for other families."""
  params = found.params
  batch = found.batch_shape
  if found.family == "normal":
    loc = jnp.broadcast_to(params["loc"], batch)[..., None]
    scale = jnp.broadcast_to(params["scale"], batch)
    return loc, scale[..., None, None]
  if found.event_shape == ():
    return None
  (d,) = found.event_shape
  loc = jnp.broadcast_to(params["loc"], (*batch, d))
  if found.family == "mvn":
    return loc, jnp.broadcast_to(jnp.tril(params["scale_tril"]), (*batch, d, d))
  if found.family == "mvn_diag":
    diag = jnp.broadcast_to(params["scale_diag"], (*batch, d))
    return loc, diag[..., :, None] * jnp.eye(d, dtype=diag.dtype)
  if found.family == "mvn_low_rank":
    factor = jnp.broadcast_to(
      params["cov_factor"], (*batch, *params["cov_factor"].shape[-2:])
    )
    diag = jnp.broadcast_to(jnp.sqrt(params["cov_diag"]), (*batch, d))
    root = jnp.concatenate(
      [factor, diag[..., :, None] * jnp.eye(d, dtype=diag.dtype)], -1
    )
    return loc, tril_from_scale(root)
  return None
