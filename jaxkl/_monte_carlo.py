r"""Monte-Carlo KL divergence between distributions, with gradients and errors.

``monte_carlo_kl(key, p, q, num_samples=n)`` draws :math:`x_i \sim P` (or from
a proposal), evaluates :math:`\log p` and :math:`\log q` and returns a
``KLEstimate``: the estimate of :math:`D_{\mathrm{KL}}(P \,\|\, Q)`, its
standard error and a normal-approximation confidence interval. With
``atol=``/``rtol=`` and ``max_samples=`` instead of ``num_samples``, it draws
batches until the standard error is small enough (under
``jax.lax.while_loop``; the batches' statistics are combined exactly by
``jaxkl._streaming``). The per-sample estimators and their reduction live in
``jaxkl._estimators``.

Accepted distributions
----------------------
A *sampling* distribution (``p``, or ``proposal``) is one of:

1. a NumPyro distribution (``numpyro.distributions.Distribution``), sampled
   with ``rsample(key, (n,))`` for pathwise gradients (which need
   ``has_rsample``) and ``sample(key, (n,))`` otherwise. It is recognised
   without importing NumPyro: only if ``numpyro.distributions`` is already in
   ``sys.modules``;
2. a ``jaxkl.StandardNormalPushforward(transform, log_prob, event_shape)``:
   samples ``transform(z)`` for ``z ~ N(0, I)`` of shape ``[n, *event_shape]``;
   always reparameterized, and supports ``antithetic=True``;
3. a pair ``(sample, log_prob)`` of callables (a tuple, or any NamedTuple of
   two callables): ``sample(key, n)`` returns a pytree of samples whose
   leaves have leading axis ``n``, ``log_prob(samples)`` returns ``[n, ...]``.
   With ``gradient='pathwise'`` (or ``'auto'``, unless the samples are
   integers) the caller vouches that ``sample`` is differentiable in the
   parameters (reparameterized); pass ``gradient='score_function'`` for a
   sampler that is not, e.g. one that draws floats with ``stop_gradient``;
4. any other object with ``sample`` and ``log_prob`` methods in the
   TensorFlow Probability / Distrax convention: ``sample(seed=key,
   sample_shape=(n,))``, e.g. ``distrax.Normal`` or
   ``tensorflow_probability.substrates.jax.distributions.Normal`` (both
   tested). An object whose ``reparameterization_type`` says
   ``NOT_REPARAMETERIZED`` (TFP sets it) is refused by
   ``gradient='pathwise'`` and gets the score function under ``'auto'``;
   otherwise it is taken as reparameterized when its samples are floats.
   Distrax has no such attribute: pass ``gradient='score_function'`` for a
   Distrax distribution whose samples are not differentiable in its
   parameters (e.g. ``distrax.MixtureSameFamily``: its mixture weights get
   no pathwise gradient). Integer samples (``distrax.Categorical``) get the
   score function under ``'auto'``.

A *density* (``q``, or ``p`` when a ``proposal`` is given) is any of the
above (only its ``log_prob`` is used) or a plain callable
``log_prob(samples) -> [n, ...]``.

Calls into NumPyro, Distrax and TFP (objects whose class is defined in the
``numpyro``, ``distrax`` or ``tensorflow_probability`` packages) are made
under ``jax.numpy_rank_promotion('allow')`` and standard dtype promotion,
which those libraries rely on, whatever the caller's settings; everything
else, including the caller's own callables and duck-typed objects, runs
under the caller's settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import statistics
import sys
import types
import warnings
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import SupportsIndex
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxkl import _checks
from jaxkl import _estimators
from jaxkl import _streaming

Gradient = Literal["auto", "pathwise", "score_function"]
GRADIENTS: tuple[str, ...] = ("auto", "pathwise", "score_function")


# ----------------------------------------------------------------------------
# Result.


#: k-hat at and above which ``KLEstimate.confidence_interval`` warns.
PARETO_K_THRESHOLD = 0.5


#: ``KLEstimate``'s array fields: its pytree leaves, compared by ``==``.
_ARRAY_FIELDS = (
  "value",
  "stderr",
  "effective_sample_size",
  "pareto_k",
  "samples_used",
  "target_met",
)


@dataclasses.dataclass(frozen=True, eq=False)
class KLEstimate:
  r"""A Monte-Carlo estimate of a KL divergence: a pytree (jit/vmap-safe).

  ``value``, ``stderr``, ``effective_sample_size`` and ``pareto_k`` (and,
  for an adaptive estimate, ``samples_used`` and ``target_met``) are
  arrays (the batch shape of the distributions; a leading axis is added by
  ``vmap``) and the pytree's leaves; ``num_samples`` and ``estimator`` are
  static metadata (part of the tree structure). So a ``KLEstimate`` can be
  returned from, and passed into, ``jax.jit``, ``vmap``, ``jax.checkpoint``
  and ``lax.scan``; it copies, deep-copies and pickles like its arrays.

  It is immutable (a frozen dataclass). Like ``jax.Array`` it is not
  hashable (so it cannot be a *static* argument of ``jit``; it need not be,
  being a pytree). ``a == b`` compares concrete values: the same
  ``num_samples`` and ``estimator`` and every array field equal, NaN equal
  to NaN (so an estimate equals its copy; a field that is None only equals
  None); it raises ``TypeError`` on
  traced values (compare the fields with ``jnp.array_equal`` inside
  ``jit``).

  Attributes:
    value: the estimate; differentiable (see ``monte_carlo_kl``'s
      ``gradient``).
    stderr: its standard error (no gradient). For ``'k2'`` it is the error
      around :math:`\mathbb{E}[\mathrm{k2}]`, which is not the KL divergence.
    effective_sample_size: Kish's :math:`(\sum w)^2 / \sum w^2` of the
      importance weights; ``num_samples`` without a proposal. At least
      float32 (a count: float16 ends at 65504).
    num_samples: the number of draws :math:`n`; for an adaptive estimate
      the most it could draw: ``max_samples`` rounded down to whole batches
      (``samples_used`` says how many it did draw).
    estimator: the estimator's name.
    pareto_k: the tail diagnostic :math:`\hat k` (no gradient): the
      largest generalized-Pareto shape fitted to the tails of the blocks of
      the estimator's terms (:math:`\log r`, :math:`r`, importance
      weights), as in Pareto-smoothed importance sampling (see
      ``monte_carlo_kl``). Below 0.5 the terms' variance is finite and
      ``stderr`` can be trusted; from 0.5 up it is probably infinite and the
      interval's coverage can fall far below its level; from 0.7 up even
      the estimate converges very slowly. NaN when not computed
      (``tail_diagnostic=False``, fewer than 25 terms, non-finite terms).
      :math:`-\infty` when the fitted tail is constant, e.g. for ``P == Q``
      (every term 0): a point mass is the limit :math:`\xi \to -\infty`
      of a bounded generalized Pareto tail, so it reads as "trust" (below
      0.5, no warning), and rightly: the terms' variance is finite (0, and
      ``stderr`` is 0). ``None`` only in an estimate built by hand without
      it.
    samples_used: adaptive estimates (``monte_carlo_kl(..., atol=/rtol=)``):
      the number of samples each entry used, a multiple of the batch size
      (int32, the shape of ``value``). ``None`` for a fixed-size estimate,
      which used ``num_samples``.
    target_met: adaptive estimates: whether each entry's standard error
      reached its tolerance (bool, the shape of ``value``); False where
      ``max_samples`` ran out first. ``None`` for a fixed-size estimate.
  """

  value: jax.Array
  stderr: jax.Array
  effective_sample_size: jax.Array
  num_samples: int
  estimator: str
  pareto_k: jax.Array | None = None
  samples_used: jax.Array | None = None
  target_met: jax.Array | None = None

  # Holds arrays, which are not hashable; `= None` is Python's way to say so,
  # which mypy reads as overriding object.__hash__ with the wrong type.
  __hash__ = None  # type: ignore[assignment]

  def __eq__(self, other: object) -> bool:
    """Exact equality of every field (NaN equal to NaN), for copies and pickles.

    Two computations of the same estimate need not be bitwise equal: under
    ``jit`` XLA fuses operations and may round differently from op-by-op
    execution (``pareto_k``, a fit to the largest terms, shows it first).
    Compare such results with a tolerance, field by field.
    """
    if type(other) is not type(self):
      return NotImplemented
    if (self.num_samples, self.estimator) != (other.num_samples, other.estimator):
      return False
    for name in _ARRAY_FIELDS:
      a, b = getattr(self, name), getattr(other, name)
      if a is None or b is None:
        if a is not b:
          return False
        continue
      if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
        raise TypeError(
          "KLEstimate equality compares concrete values; under a JAX "
          "transformation compare the fields, e.g. "
          "`jnp.array_equal(a.value, b.value)`."
        )
      if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
        return False
    return True

  def confidence_interval(self, level: float = 0.95) -> tuple[jax.Array, jax.Array]:
    r"""The normal-approximation interval :math:`\hat D \pm z\,\mathrm{SE}`.

    :math:`z = \Phi^{-1}((1 + \text{level}) / 2)` (1.96 for 95%). The
    coverage is approximate: it relies on the central limit theorem, which
    needs the terms to have a finite variance and which heavy-tailed
    log-ratios approach slowly. The lower end is not clipped at 0.

    **Tail warning.** When ``pareto_k`` is concrete (not under ``jit`` or
    another transformation) and :math:`\hat k \ge 0.5` for any entry, a
    ``RuntimeWarning`` says that the terms' variance is probably infinite
    and the interval unreliable. Under tracing nothing can be inspected, so
    nothing is warned: check ``pareto_k`` yourself on the returned values.

    Args:
      level: the confidence level, a Python float in (0, 1).

    Returns:
      ``(low, high)``, each of the shape of ``value``.

    Raises:
      TypeError, ValueError: ``level`` is not a float in (0, 1).
    """
    if isinstance(level, bool) or not isinstance(
      level, (float, int, np.floating, np.integer)
    ):
      raise TypeError(f"`level` must be a Python float in (0, 1); got {level!r}.")
    if not 0.0 < float(level) < 1.0:
      raise ValueError(f"`level` must lie in (0, 1); got {level!r}.")
    self._warn_if_heavy_tailed()
    z = statistics.NormalDist().inv_cdf(0.5 + float(level) / 2)
    return self.value - z * self.stderr, self.value + z * self.stderr

  def _warn_if_heavy_tailed(self) -> None:
    k = self.pareto_k
    if k is None or isinstance(k, jax.core.Tracer):
      return
    khat = np.asarray(k, dtype=np.float64)
    flagged = khat >= PARETO_K_THRESHOLD  # NaN compares False
    if not np.any(flagged):
      return
    where = ""
    if khat.ndim:
      where = f" for {int(np.sum(flagged))} of {khat.size} entries"
    warnings.warn(
      f"KLEstimate(estimator={self.estimator!r}): the tail diagnostic "
      f"pareto_k = {float(np.max(khat[flagged])):.2f} >= "
      f"{PARETO_K_THRESHOLD}{where}: the estimator's terms probably have "
      "an infinite variance, so `stderr` and this interval are not "
      "reliable (their coverage can be far below the level asked). "
      "Prefer estimator='k1' (finite variance when E_P[(log p/q)^2] is "
      "finite; 'k3', 'cv' and 'cv_crossfit' also need E_P[(q/p)^2] < "
      "inf), a proposal with heavier tails, or a closed form; more "
      "samples do not fix the interval, and from pareto_k >= 0.7 even "
      "the estimate converges very slowly.",
      RuntimeWarning,
      stacklevel=2,
    )


jax.tree_util.register_dataclass(
  KLEstimate,
  data_fields=list(_ARRAY_FIELDS),
  meta_fields=["num_samples", "estimator"],
)


def _as_int(value: object) -> int | None:
  """``operator.index(value)`` (ints, NumPy and concrete JAX integers), else None.

  Bools are refused (``True`` is no size).
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, SupportsIndex):
    return None
  try:
    return operator.index(value)
  except TypeError:  # a float array's __index__, or a traced value
    return None


def _check_event_shape(event_shape: object) -> tuple[int, ...]:
  """``event_shape`` as a tuple of non-negative Python ints, or raises.

  Accepts any sequence of ints (``[2]``, ``(2, 3)``, ``np.array([2])``,
  NumPy integers), so that equal shapes give equal, hashable pushforwards.

  Raises:
    TypeError: not a sequence, or an entry that is not an int (a bool, a
      float, a traced value).
    ValueError: a negative entry.
  """
  allowed = "a tuple of non-negative ints, the shape of one `z`"
  if isinstance(event_shape, (str, bytes)) or not isinstance(event_shape, Iterable):
    hint = ""
    if isinstance(event_shape, (int, np.integer)) and not isinstance(
      event_shape, (bool, np.bool_)
    ):
      hint = f" For {int(event_shape)} coordinates pass `({int(event_shape)},)`."
    raise TypeError(
      f"`event_shape` must be {allowed}; got {event_shape!r} of type "
      f"{type(event_shape).__name__}.{hint}"
    )
  dims: list[int] = []
  for d in event_shape:
    size = _as_int(d)
    if size is None:
      raise TypeError(
        f"`event_shape` must be {allowed}; got {event_shape!r}, whose entry "
        f"{d!r} (type {type(d).__name__}) is not an int."
      )
    if size < 0:
      raise ValueError(
        f"`event_shape` must be {allowed}; got {event_shape!r}, with the "
        f"negative entry {size}."
      )
    dims.append(size)
  return tuple(dims)


class _PushforwardFields(NamedTuple):
  """The fields of ``StandardNormalPushforward`` (which checks them)."""

  transform: Callable[[jax.Array], Any]
  log_prob: Callable[[Any], jax.Array]
  event_shape: tuple[int, ...] = ()
  dtype: Any = None


_Pushforward = TypeVar("_Pushforward", bound="StandardNormalPushforward")


class StandardNormalPushforward(_PushforwardFields):
  r"""A distribution given as ``transform(z)``, ``z ~ N(0, I)``.

  Samples are :math:`x = T(z)` with :math:`z` standard normal of shape
  ``[n, *event_shape]``, so they are reparameterized (``gradient='pathwise'``
  differentiates through ``transform``) and support antithetic pairs
  :math:`T(z), T(-z)`. Location-scale families are the typical case:
  ``transform = lambda z: loc + scale * z``.

  It is a ``NamedTuple`` (a subclass, which checks ``event_shape``):
  immutable, compared and hashed by its fields (the callables by identity),
  so it can be a static argument of ``jax.jit`` (or be closed over), copied,
  deep-copied (the callables are shared, as ``copy.deepcopy`` does for
  functions) and kept as an attribute of a Flax NNX module. ``copy.deepcopy`` returns the object itself: its fields are
  callables, which ``deepcopy`` treats as immutable (it would otherwise copy
  a ``functools.partial`` into a new, unequal object and defeat ``jit``'s
  cache). It pickles exactly when its callables do: module-level
  functions (or ``functools.partial`` of them, with picklable arguments)
  pickle by reference; lambdas and nested functions do not (``pickle``
  raises ``PicklingError`` or ``AttributeError``). For a checkpointable
  distribution, write ``transform`` and ``log_prob`` as module-level
  functions and put their parameters in ``functools.partial``. An
  unpickled copy computes the same numbers, but as ``functools.partial``
  objects compare by identity it is not ``==`` the original (as a static
  argument of ``jit`` it compiles once more).

  Attributes:
    transform: ``z -> samples``, vectorized over the leading axis.
    log_prob: ``samples -> [n, ...]`` log-densities.
    event_shape: the shape of one ``z`` (default scalar): a sequence of
      non-negative ints (``(2,)``, ``[2]``, NumPy integers), stored as a
      tuple of Python ints, so that equal shapes give equal (and equally
      hashed) objects.
    dtype: the dtype of ``z`` (default: JAX's default float).

  Raises:
    TypeError: ``event_shape`` is not a sequence of ints (e.g. a bare ``2``:
      pass ``(2,)``).
    ValueError: ``event_shape`` has a negative entry.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> loc, scale = 1.0, 2.0
    >>> p = jaxkl.StandardNormalPushforward(
    ...     transform=lambda z: loc + scale * z,
    ...     log_prob=lambda x: jax.scipy.stats.norm.logpdf(x, loc, scale))
    >>> q = jax.scipy.stats.norm.logpdf  # N(0, 1)
    >>> est = jaxkl.monte_carlo_kl(jax.random.key(0), p, q, num_samples=4096,
    ...                            antithetic=True)
    >>> true = jnp.log(1 / scale) + (scale**2 + loc**2) / 2 - 0.5  # 1.307
    >>> bool(abs(est.value - true) < 4 * est.stderr)
    True
  """

  __slots__ = ()

  def __new__(
    cls,
    transform: Callable[[jax.Array], Any],
    log_prob: Callable[[Any], jax.Array],
    event_shape: Iterable[int] = (),
    dtype: Any = None,
  ) -> StandardNormalPushforward:
    return super().__new__(
      cls, transform, log_prob, _check_event_shape(event_shape), dtype
    )

  # NamedTuple's `_make` (and so `_replace`) bypasses `__new__`. mypy reports
  # every `_make` override in a NamedTuple subclass, even one with its own
  # synthesized signature, as incompatible.
  @classmethod
  def _make(cls: type[_Pushforward], iterable: Iterable[Any]) -> _Pushforward:  # type: ignore[override]
    return cls(*iterable)

  def __deepcopy__(self, memo: dict[int, object]) -> StandardNormalPushforward:
    return self  # immutable; its callables are shared, as deepcopy does


# ----------------------------------------------------------------------------
# Recognising and calling distributions.


@contextlib.contextmanager
def _library_context() -> Iterator[None]:
  """The promotion rules NumPyro's, Distrax's and TFP's code is written for."""
  with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
    yield


# Packages whose distributions are called under ``_library_context``.
_LIBRARY_PACKAGES = ("numpyro", "distrax", "tensorflow_probability")


def _from_library(obj: Any) -> bool:
  """Whether ``obj``'s class comes from NumPyro, Distrax or TFP."""
  module = getattr(type(obj), "__module__", None) or ""
  return module.split(".")[0] in _LIBRARY_PACKAGES


def _call_method(obj: Any, method: str) -> Callable[..., Any]:
  """``obj.<method>``, under ``_library_context`` for library objects."""
  bound: Callable[..., Any] = getattr(obj, method)
  if not _from_library(obj):
    return bound

  def call(*args: Any, **kwargs: Any) -> Any:
    with _library_context():
      return bound(*args, **kwargs)

  return call


def _numpyro_distributions() -> types.ModuleType | None:
  """``numpyro.distributions`` if it is already imported, else None."""
  return sys.modules.get("numpyro.distributions")


def _is_numpyro(obj: Any) -> bool:
  module = _numpyro_distributions()
  return module is not None and isinstance(obj, module.Distribution)


def _is_pair(obj: Any) -> bool:
  return (
    isinstance(obj, (tuple, list)) and len(obj) == 2 and all(callable(f) for f in obj)
  )


def _has_sample_and_log_prob(obj: Any) -> bool:
  return callable(getattr(obj, "sample", None)) and callable(
    getattr(obj, "log_prob", None)
  )


def _sampling_form(obj: Any, name: str) -> str:
  """Which of the accepted forms a sampling distribution has."""
  if isinstance(obj, StandardNormalPushforward):
    return "pushforward"
  if _is_numpyro(obj):
    return "numpyro"
  if _is_pair(obj):
    return "pair"
  if _has_sample_and_log_prob(obj):
    return "object"
  raise TypeError(
    f"`{name}` must be a distribution that can be sampled: a NumPyro "
    "distribution, a `jaxkl.StandardNormalPushforward`, a pair "
    "`(sample(key, n), log_prob(x))` of callables, or an object with "
    "`sample(seed=, sample_shape=)` and `log_prob` methods (TFP/Distrax); "
    f"got an object of type {type(obj).__name__}."
  )


def _log_prob_fn(obj: Any, name: str) -> Callable[[Any], jax.Array]:
  """The log-density of any accepted form, including a plain callable."""
  if isinstance(obj, StandardNormalPushforward):
    return obj.log_prob
  if _is_numpyro(obj):

    def numpyro_log_prob(x: Any) -> jax.Array:
      with _library_context():
        log_prob: jax.Array = obj.log_prob(x)
      return log_prob

    return numpyro_log_prob
  if _is_pair(obj):
    pair_log_prob: Callable[[Any], jax.Array] = obj[1]
    return pair_log_prob
  if callable(getattr(obj, "log_prob", None)):
    return _call_method(obj, "log_prob")
  if callable(obj):
    plain_log_prob: Callable[[Any], jax.Array] = obj
    return plain_log_prob
  raise TypeError(
    f"`{name}` must be a distribution (NumPyro, TFP/Distrax-style, a "
    "`(sample, log_prob)` pair, a `jaxkl.StandardNormalPushforward`) or a "
    f"callable `log_prob(x)`; got an object of type {type(obj).__name__}."
  )


def _numpyro_normal_transform(
  dist: Any,
) -> tuple[tuple[int, ...], DTypeLike, Callable[[jax.Array], jax.Array]] | None:
  """``(z_shape, dtype, T)`` with ``dist`` the law of ``T(z)``, or None.

  Supports ``Normal``, ``MultivariateNormal``, and ``Independent`` and
  ``TransformedDistribution`` (e.g. ``LogNormal``) built on them.
  """
  module = _numpyro_distributions()
  if module is None:  # not a NumPyro distribution
    return None
  if isinstance(dist, module.Normal):
    loc: jax.Array = dist.loc
    scale: jax.Array = dist.scale
    return (tuple(dist.batch_shape), jnp.result_type(loc), lambda z: loc + scale * z)
  if isinstance(dist, module.MultivariateNormal):
    loc, tril = dist.loc, dist.scale_tril

    def mvn(z: jax.Array) -> jax.Array:
      return loc + jnp.squeeze(jnp.matmul(tril, z[..., None]), axis=-1)

    return (
      tuple(dist.batch_shape) + tuple(dist.event_shape),
      jnp.result_type(loc),
      mvn,
    )
  if isinstance(dist, module.Independent):
    return _numpyro_normal_transform(dist.base_dist)
  if isinstance(dist, module.TransformedDistribution):
    inner = _numpyro_normal_transform(dist.base_dist)
    if inner is None:
      return None
    shape, dtype, base = inner
    transforms = tuple(dist.transforms)

    def pushed(z: jax.Array) -> jax.Array:
      x = base(z)
      for t in transforms:
        x = t(x)
      return x

    return shape, dtype, pushed
  return None


def _standard_normal(
  key: jax.Array,
  n: int,
  shape: tuple[int, ...],
  dtype: DTypeLike | None,
  antithetic: bool,
) -> jax.Array:
  """``[n, *shape]`` standard normals; ``z`` then ``-z`` if antithetic."""
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.zeros(()).dtype  # JAX's default float (honours x64)
  # Drawn flat and reshaped: the same numbers as drawing the shape directly,
  # but XLA:CPU compiles threefry for a [n, d] shape with small d several
  # times more slowly.
  rows = n // 2 if antithetic else n
  size = rows * int(np.prod(shape, dtype=np.int64))
  z = jnp.reshape(jax.random.normal(key, (size,), dtype), (rows, *tuple(shape)))
  return jnp.concatenate([z, -z], axis=0) if antithetic else z


def _pathwise_possible(form: str, dist: Any) -> bool | None:
  """Whether samples are reparameterized: True, False, or None if unknown."""
  if form == "pushforward":
    return True
  if form == "numpyro":
    return bool(dist.has_rsample)
  if form == "object":
    rep = getattr(dist, "reparameterization_type", None)
    if rep is not None:
      return "NOT_REPARAMETERIZED" not in str(rep).upper()
  return None


def _resolve_gradient(gradient: str, form: str, dist: Any, name: str) -> bool:
  """Returns whether to differentiate through the samples (pathwise)."""
  possible = _pathwise_possible(form, dist)
  if gradient == "auto":
    return possible is not False
  if gradient == "pathwise" and possible is False:
    raise ValueError(
      f"`gradient='pathwise'` needs reparameterized samples, but `{name}` "
      f"({type(dist).__name__}) does not provide them; use "
      "`gradient='score_function'` (or 'auto')."
    )
  return gradient == "pathwise"


def _draw(
  form: str,
  dist: Any,
  name: str,
  key: jax.Array,
  n: int,
  *,
  pathwise: bool,
  antithetic: bool,
) -> Any:
  """Draws ``n`` samples in the way ``gradient`` and ``antithetic`` ask."""
  if form == "pushforward":
    z = _standard_normal(key, n, dist.event_shape, dist.dtype, antithetic)
    return dist.transform(z)
  if form == "numpyro":
    if antithetic:
      found = _numpyro_normal_transform(dist)
      if found is None:
        raise ValueError(
          f"`antithetic=True` needs a reparameterized standard-normal base; "
          f"`{name}` is a NumPyro {type(dist).__name__}, and only Normal, "
          "MultivariateNormal, and Independent/TransformedDistribution "
          "(e.g. LogNormal) built on them are supported. Pass a "
          "`jaxkl.StandardNormalPushforward` for other families."
        )
      shape, dtype, transform = found
      with _library_context():
        return transform(_standard_normal(key, n, shape, dtype, True))
    with _library_context():
      if pathwise:
        return dist.rsample(key, (n,))
      return dist.sample(key, (n,))
  if antithetic:
    raise ValueError(
      "`antithetic=True` needs a reparameterized standard-normal base: pass "
      f"`{name}` as a `jaxkl.StandardNormalPushforward` or a NumPyro Normal/"
      "MultivariateNormal (or Independent/TransformedDistribution of one)."
    )
  if form == "pair":
    return dist[0](key, n)
  return _call_method(dist, "sample")(seed=key, sample_shape=(n,))


def _all_integer(tree: Any) -> bool:
  leaves = jax.tree_util.tree_leaves(tree)
  return bool(leaves) and all(
    not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for leaf in leaves
  )


def _check_log_density(value: Any, name: str, n: int) -> jax.Array:
  """Checks that a log-density evaluation has leading axis ``n``."""
  array = _checks.as_float_array(value, f"log-density of `{name}`")
  if array.ndim == 0 or array.shape[0] != n:
    raise ValueError(
      f"the log-density of `{name}` at the {n} samples has shape "
      f"{tuple(array.shape)}; its leading axis must be the {n} samples."
    )
  return array


def _validate_num_samples(
  num_samples: Any, antithetic: bool, name: str = "num_samples"
) -> int:
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
    raise TypeError(
      f"`{name}` must be a Python int (it fixes array shapes at trace "
      f"time); got {num_samples!r} of type {type(num_samples).__name__}."
    )
  n = int(num_samples)
  if antithetic and (n % 2 or n < 4):
    raise ValueError(
      f"`antithetic=True` draws pairs (z, -z): `{name}` must be even "
      f"and at least 4 (two pairs, for the standard error); got {n}."
    )
  if n < 2:
    raise ValueError(f"`{name}` must be at least 2 (for the standard error); got {n}.")
  return n


#: Default ``batch_size`` of adaptive estimates (at most ``max_samples``, or
#: half of it for ``'cv_crossfit'``, which needs two batches).
DEFAULT_BATCH_SIZE = 4096
#: Most samples of an adaptive estimate (its counts are int32).
MAX_SAMPLES = 2**31 - 1
#: Most batches of an adaptive estimate with the tail diagnostic.
MAX_TAIL_BATCHES = 2**20


class _Plan(NamedTuple):
  """An adaptive estimate's stopping rule and batch count."""

  atol: float
  rtol: float
  batches: int


def _check_tolerance(value: Any, name: str) -> float:
  """A finite, positive Python float, or raises naming ``name``."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(
    value, (int, float, np.integer, np.floating)
  ):
    raise TypeError(
      f"`{name}` must be a positive Python float (a tolerance on the standard "
      f"error); got {_describe(value)}."
    )
  tolerance = float(value)
  if not (np.isfinite(tolerance) and tolerance > 0):
    raise ValueError(
      f"`{name}` must be a finite positive float; got {value!r}. Leave it "
      "out (None) to use only the other tolerance."
    )
  return tolerance


def _validate_sizes(
  num_samples: Any,
  atol: Any,
  rtol: Any,
  max_samples: Any,
  batch_size: Any,
  antithetic: bool,
  estimator: str,
  tail_diagnostic: bool,
) -> tuple[int, _Plan | None]:
  """``(n, plan)``: the (first) batch size, and None for a fixed size."""
  adaptive = atol is not None or rtol is not None
  if num_samples is not None:
    if adaptive:
      given = " and ".join(
        f"`{k}`" for k, v in (("atol", atol), ("rtol", rtol)) if v is not None
      )
      raise ValueError(
        f"pass either `num_samples` (a fixed sample size) or {given} (draw "
        "until the standard error is that small), not both."
      )
    for name, value in (("max_samples", max_samples), ("batch_size", batch_size)):
      if value is not None:
        raise ValueError(
          f"`{name}` belongs to the adaptive mode (`atol`/`rtol`); with "
          f"`num_samples={num_samples!r}` leave it out."
        )
    return _validate_num_samples(num_samples, antithetic), None
  if not adaptive:
    if max_samples is not None or batch_size is not None:
      raise ValueError(
        "`max_samples` and `batch_size` need a tolerance: pass `atol=` "
        "and/or `rtol=` (draw until the standard error is at most "
        "max(atol, rtol * |value|))."
      )
    raise TypeError(
      "`monte_carlo_kl` needs a sample size: `num_samples=n` (fixed), or a "
      "tolerance `atol=`/`rtol=` with `max_samples=` (adaptive)."
    )
  atol_f = 0.0 if atol is None else _check_tolerance(atol, "atol")
  rtol_f = 0.0 if rtol is None else _check_tolerance(rtol, "rtol")
  if max_samples is None:
    raise ValueError(
      "an adaptive estimate (`atol`/`rtol`) needs `max_samples`, the most "
      "samples to draw if the tolerance is not reached first."
    )
  cap = _validate_num_samples(max_samples, False, "max_samples")
  if cap > MAX_SAMPLES:
    raise ValueError(
      f"`max_samples` must be at most {MAX_SAMPLES} (2**31 - 1: the sample "
      f"counts are int32); got {cap}."
    )
  fewest = 2 if estimator == "cv_crossfit" else 1
  if batch_size is None:
    smallest = 4 if antithetic else 2
    if cap < fewest * smallest:
      what = "antithetic pairs" if antithetic else "samples"
      folds = " in each of two folds" if fewest == 2 else ""
      raise ValueError(
        f"`max_samples={cap}` is too small: a batch needs at least {smallest} "
        f"{what}{folds}."
      )
    n = min(cap // fewest, DEFAULT_BATCH_SIZE)
    if antithetic:
      n -= n % 2
  else:
    n = _validate_num_samples(batch_size, antithetic, "batch_size")
  if cap < fewest * n:
    need = "twice `batch_size` (two folds)" if fewest == 2 else "`batch_size`"
    raise ValueError(
      f"`max_samples` must be at least {need}; got max_samples={cap} and "
      f"batch_size={n}."
    )
  batches = cap // n
  if tail_diagnostic and batches > MAX_TAIL_BATCHES:
    raise ValueError(
      f"max_samples // batch_size = {batches} batches is more than the tail "
      f"diagnostic allows ({MAX_TAIL_BATCHES}: its tables grow with the "
      "number of batches); pass a larger `batch_size` (it is "
      f"{n}), or `tail_diagnostic=False`."
    )
  return n, _Plan(atol_f, rtol_f, batches)


class _Required:
  """Default of ``p`` and ``q``: lets a missing key be reported as such."""

  def __repr__(self) -> str:
    return "<required>"


REQUIRED: Any = _Required()


def _describe(obj: Any) -> str:
  if isinstance(obj, (bool, np.bool_)):
    return f"the bool {bool(obj)}"
  if isinstance(obj, (int, np.integer)):
    return f"the int {int(obj)}"
  if isinstance(obj, (float, np.floating)):
    return f"the float {float(obj)!r}"
  shape = getattr(obj, "shape", None)
  dtype = getattr(obj, "dtype", None)
  if shape is not None and dtype is not None:
    return f"an array of shape {tuple(shape)} and dtype {dtype}"
  return f"an object of type {type(obj).__name__}"


def _looks_like_distribution(obj: Any) -> bool:
  return (
    isinstance(obj, StandardNormalPushforward)
    or _is_numpyro(obj)
    or _is_pair(obj)
    or callable(getattr(obj, "log_prob", None))
    or callable(obj)
  )


def _legacy_key_shape() -> tuple[int, ...]:
  """The shape of a raw ``uint32`` key of JAX's default implementation."""
  return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)


def check_key(key: Any, p: Any, q: Any, function: str) -> None:
  """Checks that ``key`` is one PRNG key and that ``p`` and ``q`` are given.

  Allowed: a typed key of shape ``()`` (``jax.random.key(0)``) or a raw
  ``uint32`` key of the default implementation's shape
  (``jax.random.PRNGKey(0)``, shape ``(2,)``), concrete or traced.
  """
  call = f"{function}(jax.random.key(0), p, q, num_samples=...)"
  if p is REQUIRED or q is REQUIRED:
    if _looks_like_distribution(key):
      raise TypeError(
        f"`key` is missing: the first argument of `{function}` is a "
        f"jax.random key, and {_describe(key)} was passed in its place "
        f"(taken as `key`). Call `{call}`."
      )
    missing = "p" if p is REQUIRED else "q"
    raise TypeError(f"`{function}` is missing the argument `{missing}`; call `{call}`.")
  allowed = (
    "a jax.random key: `jax.random.key(seed)` (or a legacy "
    "`jax.random.PRNGKey(seed)`), one key per estimate"
  )
  if isinstance(key, (bool, int, np.integer)):
    raise TypeError(
      f"`key` must be {allowed}; got {_describe(key)}. Pass "
      f"`jax.random.key({int(key)})` instead of an integer seed."
    )
  dtype = getattr(key, "dtype", None)
  shape = tuple(getattr(key, "shape", ()) or ())
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    if shape == ():
      return
    raise ValueError(
      f"`key` must be {allowed}; got a key array of shape {shape}. "
      "For several estimates, `jax.vmap` over the keys."
    )
  if (
    dtype is not None and np.dtype(dtype) == np.uint32 and shape == _legacy_key_shape()
  ):
    return
  if _looks_like_distribution(key):
    raise TypeError(
      f"`key` must be {allowed}; got {_describe(key)}, which looks like a "
      f"distribution: was the key left out? Call `{call}`."
    )
  raise TypeError(f"`key` must be {allowed}; got {_describe(key)}.")


# ----------------------------------------------------------------------------
# The estimator.


def monte_carlo_kl(
  key: jax.Array,
  p: Any = REQUIRED,
  q: Any = REQUIRED,
  *,
  num_samples: int | None = None,
  atol: float | None = None,
  rtol: float | None = None,
  max_samples: int | None = None,
  batch_size: int | None = None,
  estimator: _estimators.Estimator = "k1",
  gradient: Gradient = "auto",
  antithetic: bool = False,
  proposal: Any = None,
  self_normalized: bool = False,
  tail_diagnostic: bool = True,
) -> KLEstimate:
  r"""Monte-Carlo estimate of :math:`D_{\mathrm{KL}}(P \,\|\, Q)`, with its error.

  Draws :math:`x_1, \dots, x_n \sim P` and averages one of the estimators of
  ``jaxkl.kl_from_samples`` (``'k1'``: :math:`\log p - \log q`; ``'k2'``;
  ``'k3'``; ``'cv'``: ``k1`` with the optimal control variate :math:`r - 1`;
  ``'cv_crossfit'``: the same with each coefficient fitted to the other
  samples, unbiased):

  .. math::

     \hat D = \frac1n \sum_{i=1}^n k(x_i), \qquad
     \mathrm{SE} = \frac{s_k}{\sqrt n},

  where :math:`s_k` is the sample standard deviation of the terms (the
  interval from ``confidence_interval`` needs a finite variance: see
  ``kl_from_samples``). The accepted forms of ``p``, ``q`` and ``proposal``
  are listed in :ref:`monte-carlo-distributions` (the API reference's notes,
  also ``help(jaxkl._monte_carlo)``: NumPyro distributions, TFP/Distrax-style
  objects, ``(sample, log_prob)`` pairs, ``jaxkl.StandardNormalPushforward``;
  ``q`` may be a plain ``log_prob`` callable).

  **Gradients** (with respect to parameters that ``p``, ``q`` or
  ``proposal`` close over) of ``.value``:

  * ``'auto'`` (default): ``'pathwise'`` when the sampling distribution is
    known to be reparameterized (``StandardNormalPushforward``; NumPyro with
    ``has_rsample``) or not known not to be (pairs and TFP/Distrax-style
    objects with float samples), else ``'score_function'`` (NumPyro without
    ``rsample``, e.g. discrete distributions and mixtures; integer samples).

  * ``'pathwise'``: differentiates through reparameterized samples
    :math:`x = T_\theta(\varepsilon)` and both log-densities. Unbiased for
    :math:`\nabla D_{\mathrm{KL}}` with ``k1`` and ``k3`` (their means equal
    the KL divergence for every :math:`\theta`), for
    :math:`\nabla \mathbb{E}[\mathrm{k2}]` with ``k2``; with ``cv`` up to the
    small-sample bias of the fitted coefficient (see ``kl_from_samples``),
    which ``cv_crossfit`` removes.
    Needs ``has_rsample`` for NumPyro.
  * ``'score_function'``: samples are gradient-stopped and the DiCE surrogate
    :math:`\hat D + \frac1n \sum_i (e^{\ell_i - \bot\ell_i} - 1)
    (\bot k_i - b_i)`, with :math:`\ell_i = \log p(x_i)` and the
    leave-one-out baseline :math:`b_i = \frac{1}{n-1}\sum_{j\ne i} k_j`, is
    returned: its value is :math:`\hat D` and its gradient
    :math:`\frac1n \sum_i [\nabla k_i + (k_i - b_i) \nabla \ell_i]`, an
    unbiased estimate of :math:`\nabla \mathbb{E}_P[k]` for any distribution,
    discrete ones included (REINFORCE; Foerster et al., 2018); ``cv`` and
    ``cv_crossfit`` as above.

  Differentiating the estimate with samples simply held fixed is *not* an
  unbiased KL gradient (Tang & Munos, 2025); both modes avoid that.

  **Variance reduction.**

  * ``antithetic=True``: draws :math:`z_1..z_{n/2} \sim N(0, I)` and uses
    :math:`T(z_k)` and :math:`T(-z_k)`. It needs a reparameterized
    standard-normal base (``StandardNormalPushforward``, or a NumPyro Normal,
    MultivariateNormal, or Independent/TransformedDistribution of one). It
    helps when the terms are close to odd functions of :math:`z`, e.g. ``k1``
    between location families; the standard error is computed from the
    :math:`n/2` pair means, so it stays honest either way.
  * ``estimator='cv'`` or ``'cv_crossfit'``: the regression control
    variate, fitted to all samples or, unbiased, to all samples but the one
    (or antithetic pair) it is applied to (see ``kl_from_samples``). The
    latter needs a moderate :math:`n` to pay off (for Gaussians one standard
    deviation apart, about 30 to beat ``k1`` and 50 to beat ``k3``).
  * ``proposal=ρ``: importance sampling, :math:`x_i \sim \rho`,
    :math:`w_i = p(x_i) / \rho(x_i)`; then ``p`` only needs a ``log_prob``.
    ``self_normalized=False``: :math:`\frac1n\sum_i w_i k_i` (unbiased);
    ``True``: :math:`\sum_i w_i k_i / \sum_i w_i` (consistent). With
    ``'score_function'`` the DiCE factor uses :math:`\log\rho`; gradients
    with respect to ``p``'s parameters flow through the weights. Check
    ``effective_sample_size``: far below ``num_samples`` means the weights
    are degenerate and the standard error unreliable. A proposal may cover
    more than ``p``'s support: samples where :math:`\log p = -\infty` have
    :math:`w_i = 0` and add 0 (:math:`0 \log 0 = 0`), whatever ``q`` is
    there. With ``self_normalized=True`` and every weight 0 the estimate
    is NaN (:math:`0/0`).

  **Tail diagnostic** (``tail_diagnostic=True``, the default):
  ``pareto_k`` is :math:`\hat k`, the shape of a generalized Pareto
  distribution fitted to the upper tail of the estimate's terms, as
  Pareto-smoothed importance sampling (PSIS) does for importance ratios
  (Vehtari et al., 2024): with :math:`G` independent terms (:math:`n`, or
  :math:`n/2` antithetic pair means), the
  :math:`M = \lceil\min(G/5, 3\sqrt G)\rceil` largest are fitted by Zhang &
  Stephens' (2009) estimator with PSIS's weakly informative prior.
  Which tails: the terms are linear combinations of a few building blocks,
  and each block's tail is fitted separately, ``pareto_k`` being the
  largest:

  * :math:`\log r`, both tails (``k1``, ``k3``, ``'cv'``, ``'cv_crossfit'``;
    ``k2``: the upper tail of :math:`(\log r)^2`): ``k1``'s terms can be
    heavy on either side;
  * :math:`r = q/p`, upper tail (``k3``, ``'cv'``, ``'cv_crossfit'``, whose
    terms contain :math:`r - 1`; their variance needs
    :math:`\mathbb{E}_P[r^2] < \infty`);
  * with a ``proposal``, each block times the weight :math:`w`, and
    :math:`w` itself (upper tail) where it enters alone.

  A combination has a finite variance when every block does. Fitting the
  blocks rather than the terms avoids a false alarm where two blocks' tails
  meet near the threshold: ``k3`` for :math:`N(0, 1)` against
  :math:`N(1, 1)` at :math:`n = 10^4` gets :math:`\hat k \approx 0.49` on
  its terms :math:`r - 1 - \log r` (whose upper tail mixes large and small
  :math:`r`), 0.25 on :math:`r` and :math:`-0.06` on :math:`\log r`, and
  its interval covers 95.8%. Read it as PSIS does: :math:`\hat k < 0.5`,
  finite variance, the interval can be trusted; :math:`0.5 \le \hat k <
  0.7`, the variance is probably infinite: the estimate is usable but the
  standard error is not; :math:`\hat k \ge 0.7`, even the estimate is
  unreliable. ``confidence_interval`` warns from 0.5 (on concrete values).
  A finite sample cannot always reveal an infinite variance (a sample
  without an extreme draw looks light-tailed): for :math:`N(0, 1)` against
  Student-t(3) at :math:`n = 10^4`, ``k3`` is flagged in 96% of runs. It
  costs a ``lax.top_k`` of :math:`M + 1` values per tail and a fit on a
  :math:`(30 + \sqrt M) \times M` grid (see the README's benchmark);
  ``tail_diagnostic=False`` skips it (``pareto_k`` is then NaN). It is NaN
  with fewer than 25 terms (no tail to fit) or non-finite terms, and
  :math:`-\infty` when the tail is constant (e.g. ``p == q``, every term
  0): the limit of a bounded tail, which is trusted (see ``KLEstimate``).

  **Adaptive sample size** (``atol`` and/or ``rtol``, with ``max_samples``,
  instead of ``num_samples``): batches of ``batch_size`` samples are drawn,
  batch :math:`b = 0, 1, \dots` from ``jax.random.fold_in(key, b)``, under
  ``jax.lax.while_loop`` (so the whole estimate can be ``jit``-ed), until

  .. math::

     \mathrm{SE} \le \max(\texttt{atol},\ \texttt{rtol} \cdot |\hat D|)

  holds after a batch, or ``max_samples // batch_size`` batches are used
  (samples are drawn in whole batches: a ``max_samples`` that is not a
  multiple of ``batch_size`` is rounded down). With a ``proposal`` the rule
  also needs an ``effective_sample_size`` of at least 30 (a standard error
  from a few effective samples says little: a single nonzero weight gives
  :math:`0 \pm 0`); batches whose weights are all 0 add nothing. With a batch shape, the rule
  is per entry: an entry that meets it keeps the estimate of the batches it
  used (later batches are drawn for the others but not added to it), so
  ``samples_used`` and ``target_met`` are per entry; under ``vmap`` the
  same holds per key. Each batch is reduced to a few sums (weights, means,
  centred second moments, effective-sample-size sums, the largest
  :math:`M_{\max} + 1` values of each tail row, :math:`M_{\max}` PSIS's
  tail size for ``max_samples``), combined exactly with the running ones
  (Chan, Golub & LeVeque, 1979; self-normalized weights are rescaled to a
  common shift): the memory is that of one batch, plus
  :math:`O(\sqrt{\texttt{max\_samples}})` values per entry for the tail
  diagnostic, never ``max_samples`` samples. Keeping those values exact
  costs a ``top_k`` over them at every batch: with the diagnostic, a
  ``max_samples`` far beyond what will be used slows every batch (measured
  on 2 CPU cores, one entry, batches of 4096: 16 ms a batch at
  ``max_samples=10**9``, 1.4 ms at ``10**6``, 0.2 ms without the
  diagnostic). Give ``max_samples`` as a budget, not as "no limit", or pass
  ``tail_diagnostic=False``. The result equals, up to
  rounding, the fixed-size estimate on the concatenated batches (antithetic
  pairs stay within their batch): the same ``value``, ``stderr``,
  ``effective_sample_size`` and ``pareto_k`` (its tail size :math:`M` that of
  the samples used), for ``'k1'``, ``'k2'``, ``'k3'`` and ``'cv'``. The
  exception is ``'cv_crossfit'``: leave-one-out coefficients cannot be
  streamed, so adaptively it cross-fits over *batches*: batch :math:`b`'s
  terms get the coefficient fitted to all other batches used,
  :math:`\hat D = \frac1n\sum_b \sum_{i \in b} [-\log r_i +
  \hat\lambda_{-b}(r_i - 1)]` (``K``-fold cross-fitting with the batches as
  folds; unbiased likewise), with the one-shot's standard error (including
  its bias-gap term, see ``jaxkl._streaming.crossfit``). It keeps the
  sums of at most 64 folds per entry (batch :math:`b` joins fold
  :math:`b \bmod 64` when more batches are allowed: memory and the re-fit's
  :math:`O(K)` work per batch stay bounded), needs at least two batches
  (so ``max_samples >= 2 * batch_size``; the default ``batch_size`` is
  ``min(max_samples // 2, 4096)``; it never stops after the first batch),
  and equals the one-shot leave-one-out estimate only if every batch held
  one sample (or one antithetic pair), which is not allowed.

  An *infinite* KL (:math:`\log q = -\infty` at a sample, e.g. ``q``'s
  support smaller than ``p``'s) gives an infinite batch estimate, which no
  number of samples makes precise: an entry stops at the first batch whose
  estimate is not finite, with that batch's own result (``value`` +inf,
  ``stderr`` NaN, as the fixed-size estimate reports it; NaN for NaN
  log-densities), ``pareto_k`` NaN and ``target_met`` False; its other
  fields count that batch. ``max_samples`` is at most :math:`2^{31} - 1`
  (int32 counts), and with the tail diagnostic at most :math:`2^{20}`
  batches are allowed (its tables grow with their number).

  *The gradient of an adaptively stopped estimate.* A ``while_loop`` cannot
  be differentiated in reverse mode, and the average of per-batch gradients
  over a number of batches that depends on the samples is biased (optional
  stopping). So ``value`` is the adaptive estimate, but its gradient is that
  of batch 0 alone: ``value = stop_gradient(adaptive) + (first -
  stop_gradient(first))``, with ``first`` the fixed-size estimate of batch 0
  (pathwise or score-function, as above). Its gradient is exactly that of
  ``monte_carlo_kl(jax.random.fold_in(key, 0), p, q,
  num_samples=batch_size, ...)``: unbiased, with the variance of
  ``batch_size`` samples, whatever the tolerance. Where batch 0's estimate
  is not finite (an infinite KL; no importance weight in batch 0) the
  gradient is 0 instead: there is none to follow.

  The interval of an adaptive estimate is the fixed-size one. Stopping on
  an estimated standard error is valid as the tolerance shrinks (Chow &
  Robbins, 1965) but a small first batch makes the estimated error noisy,
  and for skewed terms a small error comes with a low estimate: for
  :math:`N(0, 1)` against :math:`N(1, 1)`, ``'k3'`` with batches of 128 and
  ``atol=0.03`` covered 91% of the time at the 95% level (1000 runs),
  with batches of 1024 and ``atol=0.01`` 94.4% (``'k1'``: 94.8%). Keep
  ``batch_size`` in the thousands (the default is
  ``min(max_samples, 4096)``).

  Batches: distributions with a batch shape ``B`` give a ``value`` of shape
  ``B`` (the sample axis is the leading axis of the log-densities). The
  function is pure: ``jit`` it (NumPyro distributions are pytrees and can be
  arguments), ``vmap`` it over keys or parameters.

  Args:
    key: a ``jax.random`` key, one per estimate: ``jax.random.key(seed)``
      (typed, shape ``()``) or a legacy ``jax.random.PRNGKey(seed)``; not an
      integer seed. ``vmap`` over keys for several estimates.
    p: the distribution sampled (or, with ``proposal``, any log-density).
    q: the second distribution: anything with a ``log_prob``, or a callable.
    num_samples: :math:`n`, a Python int >= 2 (even and >= 4 with
      ``antithetic``), for a fixed sample size. Static. Exactly one of
      ``num_samples`` and (``atol`` and/or ``rtol``) is given.
    atol: absolute tolerance on the standard error, a positive Python
      float: draw batches until ``stderr <= max(atol, rtol * |value|)``.
      Static.
    rtol: relative tolerance (see ``atol``), a positive Python float.
      Static.
    max_samples: with ``atol``/``rtol``, the most samples to draw, a Python
      int <= 2**31 - 1 and >= ``batch_size`` (>= ``2 * batch_size`` for ``'cv_crossfit'``);
      rounded down to a multiple of ``batch_size``. Static.
    batch_size: with ``atol``/``rtol``, the samples per batch, a Python
      int >= 2 (even and >= 4 with ``antithetic``); default
      ``min(max_samples, 4096)``, ``min(max_samples // 2, 4096)`` for
      ``'cv_crossfit'`` (made even with ``antithetic``). Static.
    estimator: ``'k1' | 'k2' | 'k3' | 'cv' | 'cv_crossfit'``. Static.
    gradient: ``'auto' | 'pathwise' | 'score_function'``. Static.
    antithetic: use antithetic pairs. Static.
    proposal: optional sampling distribution for importance sampling.
    self_normalized: normalize the importance weights. Static; needs
      ``proposal``.
    tail_diagnostic: compute ``pareto_k`` (default). Static.

  Returns:
    A ``KLEstimate`` with ``value``, ``stderr``, ``effective_sample_size``,
    ``pareto_k`` (arrays of the batch shape, in the log-densities' dtype),
    ``num_samples`` and ``confidence_interval(level)``; adaptive estimates
    also have ``samples_used`` (int32) and ``target_met`` (bool) of the
    batch shape (None for fixed-size ones), and ``num_samples`` is then the
    most that could be drawn. An infinite KL gives ``value`` +inf
    (``stderr`` NaN) for every estimator.

  Raises:
    ValueError: bad static arguments (``num_samples`` together with
      ``atol``/``rtol``; ``max_samples`` or ``batch_size`` with
      ``num_samples`` or without a tolerance; a tolerance without
      ``max_samples``; a non-positive or non-finite tolerance; sizes too
      small, or odd with ``antithetic``; ``max_samples`` above
      :math:`2^{31} - 1`, or more than :math:`2^{20}` batches with the tail
      diagnostic), a ``p`` that cannot sample as asked
      (pathwise without reparameterization, antithetic without a normal
      base), log-densities without the sample axis first, or an array of
      several keys.
    TypeError: no sample size at all (neither ``num_samples`` nor a
      tolerance), sizes or tolerances of the wrong type, an unrecognised
      distribution, non-static flags, a ``key``
      that is not a PRNG key (an integer seed, or a distribution passed
      first because the key was left out: ``monte_carlo_kl(p, q, ...)``).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> # Plain callables: P = N(0, 1) as (sampler, log_prob), Q = N(1, 1).
    >>> p = (lambda key, n: jax.random.normal(key, (n,)),
    ...      jax.scipy.stats.norm.logpdf)
    >>> q = lambda x: jax.scipy.stats.norm.logpdf(x, loc=1.0)
    >>> est = jaxkl.monte_carlo_kl(jax.random.key(0), p, q,
    ...                            num_samples=10_000, estimator="k3")
    >>> low, high = est.confidence_interval(0.95)
    >>> bool(low < 0.5 < high), est.num_samples
    (True, 10000)
    >>> bool(est.pareto_k < 0.5)  # light tails: the interval can be trusted
    True
    >>> # Pathwise gradient with respect to P's mean (d/dm m^2/2 at m=0.5).
    >>> def kl(m):
    ...   pm = (lambda key, n: m + jax.random.normal(key, (n,)),
    ...         lambda x: jax.scipy.stats.norm.logpdf(x, loc=m))
    ...   return jaxkl.monte_carlo_kl(jax.random.key(1), pm,
    ...                               jax.scipy.stats.norm.logpdf,
    ...                               num_samples=10_000).value
    >>> bool(abs(jax.grad(kl)(0.5) - 0.5) < 0.05)
    True
    >>> # Adaptive: batches of 1024 until the standard error is <= 0.01.
    >>> est = jax.jit(lambda key: jaxkl.monte_carlo_kl(
    ...     key, p, q, atol=0.01, max_samples=100_000, batch_size=1024,
    ...     estimator="k3"))(jax.random.key(2))
    >>> bool(est.target_met), bool(est.stderr <= 0.01)
    (True, True)
    >>> int(est.samples_used) % 1024, int(est.samples_used) < 100_000
    (0, True)
    >>> bool(abs(est.value - 0.5) < 4 * est.stderr)
    True

  References:
    J. Schulman, "Approximating KL Divergence", 2020.
    J. Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo
    Estimator", ICML 2018.
    S. Mohamed, M. Rosca, M. Figurnov and A. Mnih, "Monte Carlo Gradient
    Estimation in Machine Learning", JMLR 21, 2020.
    Y. Tang and R. Munos, "On a few pitfalls in KL divergence gradient
    estimation for RL", 2025, arXiv:2506.09477.
    A. B. Owen, "Monte Carlo theory, methods and examples", 2013 (antithetic
    sampling, control variates, importance sampling).
    A. Vehtari, D. Simpson, A. Gelman, Y. Yao and J. Gabry, "Pareto smoothed
    importance sampling", JMLR 25(72), 2024 (the k-hat diagnostic).
    J. Zhang and M. A. Stephens, "A new and efficient estimation method for
    the generalized Pareto distribution", Technometrics 51(3), 2009.
    T. F. Chan, G. H. Golub and R. J. LeVeque, "Updating formulae and a
    pairwise algorithm for computing sample variances", Stanford
    STAN-CS-79-773, 1979 (combining the batches' statistics).
    Y. S. Chow and H. Robbins, "On the asymptotic theory of fixed-width
    sequential confidence intervals for the mean", Annals of Mathematical
    Statistics 36(2), 1965.
  """
  check_key(key, p, q, "monte_carlo_kl")
  estimator = _estimators.validate_estimator(estimator)
  tail_diagnostic = _checks.check_bool(tail_diagnostic, "tail_diagnostic")
  if not (isinstance(gradient, str) and gradient in GRADIENTS):
    raise ValueError(
      f"`gradient` must be one of {', '.join(map(repr, GRADIENTS))}; got {gradient!r}."
    )
  antithetic = _checks.check_bool(antithetic, "antithetic")
  self_normalized = _checks.check_bool(self_normalized, "self_normalized")
  if self_normalized and proposal is None:
    raise ValueError("`self_normalized=True` needs a `proposal`.")
  n, plan = _validate_sizes(
    num_samples,
    atol,
    rtol,
    max_samples,
    batch_size,
    antithetic,
    estimator,
    tail_diagnostic,
  )
  sampler, sampler_name = (p, "p") if proposal is None else (proposal, "proposal")
  form = _sampling_form(sampler, sampler_name)
  log_p_fn = _log_prob_fn(p, "p")
  log_q_fn = _log_prob_fn(q, "q")
  log_s_fn = None if proposal is None else _log_prob_fn(proposal, "proposal")

  pathwise = _resolve_gradient(gradient, form, sampler, sampler_name)
  first_key = key if plan is None else jax.random.fold_in(key, 0)
  x = _draw(
    form, sampler, sampler_name, first_key, n, pathwise=pathwise, antithetic=antithetic
  )
  if gradient == "auto" and _all_integer(x):
    pathwise = False  # integer samples cannot carry a pathwise gradient
  if not pathwise:
    x = jax.tree_util.tree_map(jax.lax.stop_gradient, x)

  def densities(x: Any) -> tuple[list[jax.Array], DTypeLike]:
    """``[log p, log q(, log proposal)]`` at ``x``, broadcast, and the out dtype."""
    log_p = _check_log_density(log_p_fn(x), "p", n)
    log_q = _check_log_density(log_q_fn(x), "q", n)
    found = [log_p, log_q]
    if log_s_fn is not None:
      found.append(_check_log_density(log_s_fn(x), "proposal", n))
    try:
      shape = jnp.broadcast_shapes(*(d.shape for d in found))
    except ValueError:
      raise ValueError(
        "the log-densities at the samples have shapes "
        f"{[tuple(d.shape) for d in found]} (p, q[, proposal]), which do "
        "not broadcast together."
      ) from None
    out_dtype, compute_dtype = _checks.result_dtype(*found)
    return [jnp.broadcast_to(d.astype(compute_dtype), shape) for d in found], out_dtype

  computed, out_dtype = densities(x)
  log_p, log_q = computed[0], computed[1]
  log_s = computed[2] if log_s_fn is not None else None

  log_w = None if log_s is None else log_p - log_s
  score = None
  if not pathwise:
    score = log_p if log_s is None else log_s
  results = _estimators.estimate_from_log_ratios(
    log_q - log_p,
    estimator=estimator,
    axes=(0,),
    log_weights=log_w,
    self_normalized=self_normalized,
    groups=2 if antithetic else 1,
    score_log_prob=score,
    tail_diagnostic=tail_diagnostic and plan is None,
    log_r_scale=jnp.abs(log_p) + jnp.abs(log_q),
  )
  value, stderr, ess = results[:3]
  if plan is None:
    khat = results[3] if tail_diagnostic else jnp.full(value.shape, jnp.nan)
    return KLEstimate(
      value=value.astype(out_dtype),
      stderr=stderr.astype(out_dtype),
      effective_sample_size=ess.astype(_checks.at_least_float32(out_dtype)),
      num_samples=n,
      estimator=estimator,
      pareto_k=khat.astype(out_dtype),
    )

  # Adaptive: batch i is drawn with fold_in(key, i); batch 0 above carries
  # the gradient, the others only the value (see the docstring).
  settings = _streaming.Settings(
    estimator=estimator,
    weighted=log_s_fn is not None,
    self_normalized=self_normalized,
    groups=2 if antithetic else 1,
    batch_size=n,
    batches=plan.batches,
    atol=plan.atol,
    rtol=plan.rtol,
    tail_diagnostic=tail_diagnostic,
  )

  def ratios(
    log_p: jax.Array, log_q: jax.Array, log_s: jax.Array | None
  ) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    log_w = None if log_s is None else log_p - log_s
    return log_q - log_p, log_w, jnp.abs(log_p) + jnp.abs(log_q)

  def draw(index: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    batch_key = jax.random.fold_in(key, index)
    x = _draw(
      form,
      sampler,
      sampler_name,
      batch_key,
      n,
      pathwise=pathwise,
      antithetic=antithetic,
    )
    x = jax.tree_util.tree_map(jax.lax.stop_gradient, x)
    computed = [jax.lax.stop_gradient(d) for d in densities(x)[0]]
    return ratios(
      computed[0], computed[1], computed[2] if log_s_fn is not None else None
    )

  first_batch = _streaming.summarize(*ratios(log_p, log_q, log_s), settings)
  total, stderr, ess, khat, used, met = _streaming.run(draw, first_batch, settings)
  # The value is the adaptive estimate; its gradient that of batch 0's.
  fixed = jax.lax.stop_gradient(value)
  own = jnp.where(jnp.isfinite(fixed), value - fixed, 0)
  value = jax.lax.stop_gradient(total) + own
  return KLEstimate(
    value=value.astype(out_dtype),
    stderr=stderr.astype(out_dtype),
    effective_sample_size=ess.astype(_checks.at_least_float32(out_dtype)),
    num_samples=plan.batches * n,
    estimator=estimator,
    pareto_k=khat.astype(out_dtype),
    samples_used=used * n,
    target_met=met,
  )
