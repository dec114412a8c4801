r"""Generates ``docs/coverage.md``: which KL pairs jaxkl and its peers compute.

Usage::

    python scripts/coverage_table.py           # (re)writes docs/coverage.md
    python scripts/coverage_table.py --check   # exit 1 if the file is stale
    python scripts/coverage_table.py --stdout  # print the page instead

The rows are pairs :math:`P \| Q` of the canonical families of
``jaxkl._closed_forms`` (``normal``, ``gamma``, ...; see ``FAMILIES``). The
columns are read at generation time from the installed packages, never typed
in by hand:

* **jaxkl**: the built-in closed forms, i.e. the union of the ``PAIRS``
  dictionaries of ``jaxkl/_closed_forms/{normal,discrete,positive,
  location_scale,cross,mixture}.py`` (through
  ``jaxkl._closed_forms._registry.builtin_pairs`` when it exists). A pair
  whose registered function returns :math:`+\infty` for every probe
  parameter set (``PROBE_PARAMS``, P and Q each at two settings) is a
  support mismatch and is marked ``+∞``.
* **torch.distributions**: ``torch.distributions.kl._KL_REGISTRY``, resolved
  for each pair of classes by torch's own ``_dispatch_kl`` (so subclasses
  count, e.g. torch's ``Chi2`` is a ``Gamma``).
* **TFP** (on JAX): ``tensorflow_probability.substrates.jax.distributions.
  kullback_leibler._DIVERGENCES``, resolved by TFP's ``_registered_kl``.
* **Distrax**: its distributions register their KL functions in TFP's table
  (``tfd.RegisterKL`` in ``distrax/_src/distributions/*.py``; Distrax's
  ``kl_divergence`` calls TFP's); resolved by ``_registered_kl`` on Distrax's
  classes.
* **NumPyro**: ``numpyro.distributions.kl.kl_divergence``, a
  ``multipledispatch`` dispatcher (its ``funcs``), resolved by its
  ``dispatch``.

Library classes are mapped to the canonical families by the explicit tables
``TORCH``, ``TFP``, ``DISTRAX`` and ``NUMPYRO`` below; registered classes that
no table names are listed in the page's notes, not dropped silently. When the
resolved function is a generic rule rather than one written for the pair
(torch's ``ExponentialFamily`` or ``TransformedDistribution`` rules, TFP's
``TransformedDistribution`` rule), the script calls the library's
``kl_divergence`` on two instances with different parameters: a generic rule
that raises (e.g. torch's ``Weibull`` transforms differ whenever the
parameters do) does not count, one that answers counts and is noted.

The second table lists jaxkl's structural rules (``Independent``, expanded,
masked, point masses, transformed distributions with the same bijector, TFP's
``Sample``, Gaussian mixtures, Monte Carlo), each checked by calling
``jaxkl.kl`` on small NumPyro/TFP objects, next to the libraries' own
registrations for the same wrappers.

``tests/test_coverage_table.py`` regenerates the page in-process and checks
that the committed file is current.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import sys
import warnings
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "coverage.md"

CHECK = "✓"
INF = "+∞"
PARTIAL = "(✓)"
NONE = "—"

# ----------------------------------------------------------------------------
# The canonical families (jaxkl/_closed_forms/_registry.py), in table order,
# with the names shown in the table.

FAMILIES: dict[str, str] = {
  "normal": "Normal",
  "mvn": "MultivariateNormal",
  "mvn_diag": "MultivariateNormal (diagonal)",
  "mvn_low_rank": "LowRankMultivariateNormal",
  "bernoulli": "Bernoulli",
  "categorical": "Categorical",
  "one_hot_categorical": "OneHotCategorical",
  "binomial": "Binomial",
  "geometric": "Geometric",
  "poisson": "Poisson",
  "exponential": "Exponential",
  "gamma": "Gamma",
  "chi2": "Chi2",
  "beta": "Beta",
  "dirichlet": "Dirichlet",
  "laplace": "Laplace",
  "gumbel": "Gumbel",
  "half_normal": "HalfNormal",
  "cauchy": "Cauchy",
  "log_normal": "LogNormal",
  "uniform": "Uniform",
  "pareto": "Pareto",
  "weibull": "Weibull",
  "von_mises": "VonMises",
  "kumaraswamy": "Kumaraswamy",
  "continuous_bernoulli": "ContinuousBernoulli",
}

# Two parameter settings per family (canonical names, batch shape ()): P and
# Q each take both, four combinations per pair. Uniform and Pareto have one
# narrow and one wide support, so that a pair whose finiteness depends on the
# parameters (Beta ‖ Uniform, Uniform ‖ Pareto) is finite for one of them;
# Binomial keeps one total count (torch needs P's ≤ Q's).
PROBE_PARAMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
  "normal": ({"loc": 0.3, "scale": 1.2}, {"loc": -0.5, "scale": 0.7}),
  "mvn": (
    {"loc": [0.1, -0.2], "scale_tril": [[1.0, 0.0], [0.3, 0.8]]},
    {"loc": [0.4, 0.1], "scale_tril": [[0.7, 0.0], [-0.2, 1.3]]},
  ),
  "mvn_diag": (
    {"loc": [0.1, -0.2], "scale_diag": [1.0, 0.8]},
    {"loc": [0.4, 0.1], "scale_diag": [0.7, 1.3]},
  ),
  "mvn_low_rank": (
    {"loc": [0.1, -0.2], "cov_factor": [[0.5], [0.2]], "cov_diag": [1.0, 0.6]},
    {"loc": [0.4, 0.1], "cov_factor": [[-0.3], [0.4]], "cov_diag": [0.7, 1.3]},
  ),
  "bernoulli": ({"probs": 0.3}, {"probs": 0.6}),
  "categorical": ({"probs": [0.2, 0.3, 0.5]}, {"probs": [0.4, 0.4, 0.2]}),
  "one_hot_categorical": ({"probs": [0.2, 0.3, 0.5]}, {"probs": [0.4, 0.4, 0.2]}),
  "binomial": ({"total_count": 5.0, "probs": 0.3}, {"total_count": 5.0, "probs": 0.6}),
  "geometric": ({"probs": 0.3}, {"probs": 0.6}),
  "poisson": ({"rate": 1.5}, {"rate": 3.0}),
  "exponential": ({"rate": 1.5}, {"rate": 0.8}),
  "gamma": ({"concentration": 2.0, "rate": 1.5}, {"concentration": 3.0, "rate": 0.8}),
  "chi2": ({"df": 3.0}, {"df": 5.0}),
  "beta": (
    {"concentration1": 2.0, "concentration0": 3.0},
    {"concentration1": 1.5, "concentration0": 0.8},
  ),
  "dirichlet": ({"concentration": [1.5, 2.0, 3.0]}, {"concentration": [0.8, 1.2, 2.5]}),
  "laplace": ({"loc": 0.3, "scale": 1.2}, {"loc": -0.5, "scale": 0.7}),
  "gumbel": ({"loc": 0.3, "scale": 1.2}, {"loc": -0.5, "scale": 0.7}),
  "half_normal": ({"scale": 1.2}, {"scale": 0.7}),
  "cauchy": ({"loc": 0.3, "scale": 1.2}, {"loc": -0.5, "scale": 0.7}),
  "log_normal": ({"loc": 0.3, "scale": 1.2}, {"loc": -0.5, "scale": 0.7}),
  "uniform": ({"low": 0.2, "high": 0.8}, {"low": -1.0, "high": 2.0}),
  "pareto": ({"scale": 0.1, "alpha": 2.5}, {"scale": 1.5, "alpha": 3.0}),
  "weibull": (
    {"scale": 1.2, "concentration": 1.5},
    {"scale": 0.8, "concentration": 2.5},
  ),
  "von_mises": (
    {"loc": 0.3, "concentration": 2.0},
    {"loc": -0.5, "concentration": 0.7},
  ),
  "kumaraswamy": (
    {"concentration1": 2.0, "concentration0": 3.0},
    {"concentration1": 1.5, "concentration0": 0.8},
  ),
  "continuous_bernoulli": ({"probs": 0.3}, {"probs": 0.6}),
}

# ----------------------------------------------------------------------------
# Library class -> canonical family. A family may have several classes (e.g.
# NumPyro's CategoricalProbs and CategoricalLogits); a cell is ✓ when every
# combination has a KL, (✓) when only some do (listed in the notes).

TORCH: dict[str, tuple[str, ...]] = {
  "normal": ("Normal",),
  "mvn": ("MultivariateNormal",),
  "mvn_low_rank": ("LowRankMultivariateNormal",),
  "bernoulli": ("Bernoulli",),
  "categorical": ("Categorical",),
  "one_hot_categorical": ("OneHotCategorical",),
  "binomial": ("Binomial",),
  "geometric": ("Geometric",),
  "poisson": ("Poisson",),
  "exponential": ("Exponential",),
  "gamma": ("Gamma",),
  "chi2": ("Chi2",),
  "beta": ("Beta",),
  "dirichlet": ("Dirichlet",),
  "laplace": ("Laplace",),
  "gumbel": ("Gumbel",),
  "half_normal": ("HalfNormal",),
  "cauchy": ("Cauchy",),
  "log_normal": ("LogNormal",),
  "uniform": ("Uniform",),
  "pareto": ("Pareto",),
  "weibull": ("Weibull",),
  "von_mises": ("VonMises",),
  "kumaraswamy": ("Kumaraswamy",),
  "continuous_bernoulli": ("ContinuousBernoulli",),
}

TFP: dict[str, tuple[str, ...]] = {
  "normal": ("Normal",),
  "mvn": ("MultivariateNormalTriL", "MultivariateNormalFullCovariance"),
  "mvn_diag": ("MultivariateNormalDiag",),
  "mvn_low_rank": ("MultivariateNormalDiagPlusLowRankCovariance",),
  "bernoulli": ("Bernoulli",),
  "categorical": ("Categorical",),
  "one_hot_categorical": ("OneHotCategorical",),
  "binomial": ("Binomial",),
  "geometric": ("Geometric",),
  "poisson": ("Poisson",),
  "exponential": ("Exponential",),
  "gamma": ("Gamma",),
  "chi2": ("Chi2",),
  "beta": ("Beta",),
  "dirichlet": ("Dirichlet",),
  "laplace": ("Laplace",),
  "gumbel": ("Gumbel",),
  "half_normal": ("HalfNormal",),
  "cauchy": ("Cauchy",),
  "log_normal": ("LogNormal",),
  "uniform": ("Uniform",),
  "pareto": ("Pareto",),
  "weibull": ("Weibull",),
  "von_mises": ("VonMises",),
  "kumaraswamy": ("Kumaraswamy",),
  "continuous_bernoulli": ("ContinuousBernoulli",),
}

DISTRAX: dict[str, tuple[str, ...]] = {
  "normal": ("Normal",),
  "mvn": ("MultivariateNormalTri", "MultivariateNormalFullCovariance"),
  "mvn_diag": ("MultivariateNormalDiag",),
  "bernoulli": ("Bernoulli",),
  "categorical": ("Categorical",),
  "one_hot_categorical": ("OneHotCategorical",),
  "gamma": ("Gamma",),
  "beta": ("Beta",),
  "dirichlet": ("Dirichlet",),
  "laplace": ("Laplace",),
  "gumbel": ("Gumbel",),
  "uniform": ("Uniform",),
  "von_mises": ("VonMises",),
}

NUMPYRO: dict[str, tuple[str, ...]] = {
  "normal": ("Normal",),
  "mvn": ("MultivariateNormal",),
  "mvn_low_rank": ("LowRankMultivariateNormal",),
  "bernoulli": ("BernoulliProbs", "BernoulliLogits"),
  "categorical": ("CategoricalProbs", "CategoricalLogits"),
  "binomial": ("BinomialProbs", "BinomialLogits"),
  "geometric": ("GeometricProbs", "GeometricLogits"),
  "poisson": ("Poisson",),
  "exponential": ("Exponential",),
  "gamma": ("Gamma",),
  "chi2": ("Chi2",),
  "beta": ("Beta",),
  "dirichlet": ("Dirichlet",),
  "laplace": ("Laplace",),
  "gumbel": ("Gumbel",),
  "half_normal": ("HalfNormal",),
  "cauchy": ("Cauchy",),
  "log_normal": ("LogNormal",),
  "uniform": ("Uniform",),
  "pareto": ("Pareto",),
  "weibull": ("Weibull",),
  "von_mises": ("VonMises",),
  "kumaraswamy": ("Kumaraswamy",),
}

# Base classes that are specific to one family (a KL registered between them
# is written for that family, not a generic rule).
FAMILY_BASES: dict[str, tuple[str, ...]] = {
  "torch": (),
  "tfp": ("MultivariateNormalLinearOperator",),
  "distrax": ("MultivariateNormalFromBijector",),
  "numpyro": (),
}

# Constructor argument names that differ from the canonical ones.
RENAMES: dict[str, dict[str, dict[str, str]]] = {
  "torch": {},
  "tfp": {"pareto": {"alpha": "concentration"}},
  "distrax": {"beta": {"concentration1": "alpha", "concentration0": "beta"}},
  "numpyro": {},
}

# ----------------------------------------------------------------------------
# Structural rules: (label, {library: (class of P, class of Q)}); the jaxkl
# cell is checked by STRUCTURAL_PROBES below.

STRUCTURAL: list[tuple[str, str, dict[str, tuple[str, str]]]] = [
  (
    "independent",
    "Independent ‖ Independent (`to_event`; sum over the event dimensions)",
    {
      "torch": ("Independent", "Independent"),
      "tfp": ("Independent", "Independent"),
      "distrax": ("Independent", "Independent"),
      "numpyro": ("Independent", "Independent"),
    },
  ),
  (
    "expanded",
    "Expanded ‖ Expanded (NumPyro `expand`, TFP `BatchBroadcast`)",
    {
      "tfp": ("BatchBroadcast", "BatchBroadcast"),
      "numpyro": ("ExpandedDistribution", "ExpandedDistribution"),
    },
  ),
  (
    "masked",
    "Masked ‖ Masked (NumPyro `mask`, TFP `Masked`)",
    {
      "tfp": ("Masked", "Masked"),
      "numpyro": ("MaskedDistribution", "MaskedDistribution"),
    },
  ),
  (
    "delta",
    "Point mass ‖ Normal (NumPyro `Delta`, TFP/Distrax `Deterministic`)",
    {
      "tfp": ("Deterministic", "Normal"),
      "distrax": ("Deterministic", "Normal"),
      "numpyro": ("Delta", "Normal"),
    },
  ),
  (
    "transformed",
    "TransformedDistribution ‖ TransformedDistribution (same bijector)",
    {
      "torch": ("TransformedDistribution", "TransformedDistribution"),
      "tfp": ("TransformedDistribution", "TransformedDistribution"),
      "distrax": ("Transformed", "Transformed"),
      "numpyro": ("TransformedDistribution", "TransformedDistribution"),
    },
  ),
  (
    "sample",
    "Sample ‖ Sample (TFP `Sample`: i.i.d. draws)",
    {"tfp": ("Sample", "Sample")},
  ),
  (
    "mixture",
    "Gaussian mixture ‖ Gaussian mixture (`MixtureSameFamily` of Normal/MVN):"
    " variational approximation, lower and upper bounds, Monte Carlo",
    {
      "torch": ("MixtureSameFamily", "MixtureSameFamily"),
      "tfp": ("MixtureSameFamily", "MixtureSameFamily"),
      "distrax": ("MixtureSameFamily", "MixtureSameFamily"),
      "numpyro": ("MixtureSameFamily", "MixtureSameFamily"),
    },
  ),
  (
    "monte_carlo",
    "Any pair with `sample` and `log_prob` and no closed form (Monte Carlo,"
    " given a `key`)",
    {},
  ),
]

# Registered classes that wrap any distribution, not a structural rule.
GENERIC_WRAPPERS = ("JitPublicMethods", "_NonCompositeTensorCast")

# ----------------------------------------------------------------------------
# Libraries.


@dataclass
class Library:
  """One peer library: its classes, KL resolution and instance factory."""

  name: str  # key in RENAMES / FAMILY_BASES
  title: str  # column title
  distribution: str  # project name for the version
  module: Any  # the module holding the classes
  families: Mapping[str, tuple[str, ...]]
  resolve: Callable[[type, type], Callable[..., Any] | None]
  registry: Mapping[tuple[type, type], Callable[..., Any]]
  make: Callable[[type, Mapping[str, Any]], Any]
  kl: Callable[[Any, Any], Any]
  owns: Callable[[type], bool] = lambda cls: True
  classes: dict[str, list[type]] = field(default_factory=dict)
  used: set[tuple[type, type]] = field(default_factory=set)  # keys in a cell

  def __post_init__(self) -> None:
    for family, names in self.families.items():
      found = [getattr(self.module, n) for n in names if hasattr(self.module, n)]
      if found:
        self.classes[family] = found

  def specific(self) -> set[type]:
    """Classes whose registrations are written for a family."""
    out = {c for cs in self.classes.values() for c in cs}
    for name in FAMILY_BASES[self.name]:
      if hasattr(self.module, name):
        out.add(getattr(self.module, name))
    return out


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def _torch() -> Library | None:
  try:
    import torch
    import torch.distributions as td
    import torch.distributions.kl as tkl
  except ImportError:
    return None

  def make(cls: type, params: Mapping[str, Any]) -> Any:
    return cls(**{k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()})

  def resolve(a: type, b: type) -> Callable[..., Any] | None:
    fn = tkl._dispatch_kl(a, b)
    return None if fn is NotImplemented else fn

  return Library(
    "torch",
    "torch.distributions",
    "torch",
    td,
    TORCH,
    resolve,
    tkl._KL_REGISTRY,
    make,
    td.kl_divergence,
  )


def _tfd() -> Any:
  from tensorflow_probability.substrates import jax as tfp

  return tfp.distributions


def _tfp_library(name: str) -> Library | None:
  try:
    tfd = _tfd()
    from tensorflow_probability.substrates.jax.distributions import (
      kullback_leibler as tkl,
    )

    if name == "distrax":
      import distrax
  except ImportError:
    return None
  module = distrax if name == "distrax" else tfd

  def make(cls: type, params: Mapping[str, Any]) -> Any:
    return cls(**{k: np.asarray(v, np.float32) for k, v in params.items()})

  def owns(cls: type) -> bool:
    return cls.__module__.startswith(module.__name__.split(".")[0])

  return Library(
    name,
    "Distrax" if name == "distrax" else "TFP",
    "distrax" if name == "distrax" else "tfp-nightly",
    module,
    DISTRAX if name == "distrax" else TFP,
    tkl._registered_kl,
    tkl._DIVERGENCES,
    make,
    tkl.kl_divergence,
    owns,
  )


def _numpyro() -> Library | None:
  try:
    import numpyro.distributions as nd
    from numpyro.distributions.kl import kl_divergence
  except ImportError:
    return None

  def make(cls: type, params: Mapping[str, Any]) -> Any:
    return cls(**{k: np.asarray(v, np.float32) for k, v in params.items()})

  def resolve(a: type, b: type) -> Callable[..., Any] | None:
    fn: Callable[..., Any] | None = kl_divergence.dispatch(a, b)
    return fn

  return Library(
    "numpyro",
    "NumPyro",
    "numpyro",
    nd,
    NUMPYRO,
    resolve,
    kl_divergence.funcs,
    make,
    kl_divergence,
  )


def libraries() -> list[Library]:
  """The installed peers, in column order (an absent one is skipped)."""
  # Distrax registers its KLs in TFP's table on import: import it first so
  # that TFP's table is the same whichever library is read first.
  with contextlib.suppress(ImportError):
    import distrax  # noqa: F401
  found = [_torch(), _tfp_library("tfp"), _tfp_library("distrax"), _numpyro()]
  return [lib for lib in found if lib is not None]


COLUMN_ORDER = ("torch", "tfp", "distrax", "numpyro")
COLUMN_TITLES = {
  "torch": "torch.distributions",
  "tfp": "TFP",
  "distrax": "Distrax",
  "numpyro": "NumPyro",
}

# ----------------------------------------------------------------------------
# jaxkl.


def jaxkl_pairs() -> dict[tuple[str, str], Callable[..., Any]]:
  """jaxkl's built-in closed forms: ``(family_p, family_q) -> f``."""
  try:
    from jaxkl._closed_forms._registry import builtin_pairs
  except ImportError:
    builtin_pairs = None
  if builtin_pairs is not None:
    return dict(builtin_pairs())
  merged: dict[tuple[str, str], Callable[..., Any]] = {}
  for name in ("normal", "discrete", "positive", "location_scale", "cross", "mixture"):
    module = importlib.import_module(f"jaxkl._closed_forms.{name}")
    merged.update(getattr(module, "PAIRS", {}))
  return merged


# The support of each family, for the +∞ column: a pair can be +∞ for every
# parameter value only if P's support can never lie inside Q's. "uniform" and
# "pareto" are parametric ([low, high] and [scale, inf)). Families of
# different kinds (continuous and discrete) are never compared.
SUPPORT: dict[str, str] = {
  **dict.fromkeys(("normal", "laplace", "gumbel", "cauchy"), "real"),
  **dict.fromkeys(("mvn", "mvn_diag", "mvn_low_rank"), "real_d"),
  **dict.fromkeys(
    ("exponential", "gamma", "chi2", "weibull", "log_normal", "half_normal"),
    "positive",
  ),
  **dict.fromkeys(("beta", "kumaraswamy", "continuous_bernoulli"), "unit"),
  "uniform": "uniform",
  "pareto": "pareto",
  "bernoulli": "binary",
  "binomial": "finite_int",
  **dict.fromkeys(("geometric", "poisson"), "nat"),
  "categorical": "categorical",
  "one_hot_categorical": "one_hot",
  "dirichlet": "simplex",
  "von_mises": "circle",
}

# (kind of P, kinds of Q that can contain P's support for some parameters).
_CAN_CONTAIN: dict[str, tuple[str, ...]] = {
  "real": ("real",),
  "positive": ("real", "positive"),
  "unit": ("real", "positive", "unit", "uniform"),
  "uniform": ("real", "positive", "unit", "uniform", "pareto"),
  "pareto": ("real", "positive", "pareto"),
  "binary": ("binary", "finite_int", "nat"),
  "finite_int": ("finite_int", "nat"),
  "nat": ("nat",),
}
_CONTINUOUS = ("real", "positive", "unit", "uniform", "pareto")
_DISCRETE = ("binary", "finite_int", "nat")


def support_mismatch(fp: str, fq: str) -> bool:
  """Whether P's support lies outside Q's for every parameter value."""
  kp, kq = SUPPORT.get(fp), SUPPORT.get(fq)
  if kp not in _CAN_CONTAIN or kq is None:
    return False
  if not any(kp in g and kq in g for g in (_CONTINUOUS, _DISCRETE)):
    return False
  return kq not in _CAN_CONTAIN[kp]


def _stack(settings: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
  """Parameter settings stacked along a new leading (batch) axis, float32."""
  import jax.numpy as jnp

  settings = list(settings)
  return {
    k: jnp.asarray(np.stack([np.asarray(s[k], np.float32) for s in settings]))
    for k in settings[0]
  }


def infinite_everywhere(fp: str, fq: str, fn: Callable[..., Any]) -> bool:
  """Whether jaxkl's ``fn`` is +inf at every probe combination (P, Q)."""
  import jax

  ps, qs = PROBE_PARAMS[fp], PROBE_PARAMS[fq]
  p = _stack([ps[0], ps[0], ps[1], ps[1]])
  q = _stack([qs[0], qs[1], qs[0], qs[1]])
  try:
    with jax.disable_jit():  # op by op: no compilation per formula
      value = np.asarray(fn(p, q))
  except Exception:
    return False
  return bool(value.size) and bool(np.all(np.isposinf(value)))


# ----------------------------------------------------------------------------
# Cells.


@dataclass
class Cell:
  mark: str
  note: str = ""


@dataclass
class Result:
  libs: list[Library]
  versions: dict[str, str]
  rows: list[tuple[str, str]]
  cells: dict[tuple[str, str], dict[str, Cell]]
  structural: list[tuple[str, dict[str, Cell]]]
  unmapped: dict[str, list[str]]
  mixed: dict[str, int]
  no_class: dict[str, list[str]]
  extra_families: list[str]


def _instance_kl_works(lib: Library, a: type, fp: str, b: type, fq: str) -> bool:
  """Calls the library's KL on instances with different parameters."""
  if fp not in PROBE_PARAMS or fq not in PROBE_PARAMS:
    return False
  renames = RENAMES[lib.name]

  def params(family: str, i: int) -> dict[str, Any]:
    rename = renames.get(family, {})
    return {rename.get(k, k): v for k, v in PROBE_PARAMS[family][i].items()}

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      value = lib.kl(lib.make(a, params(fp, 0)), lib.make(b, params(fq, 1)))
      np.asarray(value)
  except Exception:
    return False
  return True


def _matching_keys(
  lib: Library, fn: Callable[..., Any], a: type, b: type
) -> list[tuple[type, type]]:
  """The registry keys of ``fn`` that match the classes ``(a, b)``."""
  return [
    k
    for k, v in lib.registry.items()
    if v is fn and issubclass(a, k[0]) and issubclass(b, k[1])
  ]


def _library_cell(lib: Library, fp: str, fq: str, mismatch: bool) -> Cell:
  """The library's cell for (fp, fq); ``mismatch``: a support mismatch."""
  cps, cqs = lib.classes.get(fp), lib.classes.get(fq)
  if not cps or not cqs:
    return Cell(NONE)
  specific = lib.specific()
  ok: list[tuple[type, type]] = []
  generic: list[str] = []
  for a in cps:
    for b in cqs:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = lib.resolve(a, b)
      if fn is None:
        continue
      keys = _matching_keys(lib, fn, a, b)
      if any(all(c in specific for c in k) for k in keys):
        ok.append((a, b))
        lib.used.update(keys)
      elif _instance_kl_works(lib, a, fp, b, fq):
        ok.append((a, b))
        lib.used.update(keys)
        rule = " / ".join(sorted({f"{k[0].__name__} ‖ {k[1].__name__}" for k in keys}))
        generic.append(f"{a.__name__} ‖ {b.__name__} through the rule for {rule}")
  if not ok:
    return Cell(NONE)
  notes = list(generic)
  mark = CHECK
  if len(ok) < len(cps) * len(cqs):
    mark = PARTIAL
    notes.insert(0, "only " + ", ".join(f"{a.__name__} ‖ {b.__name__}" for a, b in ok))
  if mismatch:
    if _library_infinite(lib, ok[0], fp, fq):
      mark = INF if mark == CHECK else f"({INF})"
    else:
      notes.append("a support mismatch, but not +inf at every probe")
  return Cell(mark, "; ".join(notes))


def _library_infinite(lib: Library, pair: tuple[type, type], fp: str, fq: str) -> bool:
  """Whether the library's KL is +inf at every probe combination."""
  renames = RENAMES[lib.name]

  def params(family: str, i: int) -> dict[str, Any]:
    rename = renames.get(family, {})
    return {rename.get(k, k): v for k, v in PROBE_PARAMS[family][i].items()}

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      values = [
        float(
          np.asarray(
            lib.kl(lib.make(pair[0], params(fp, i)), lib.make(pair[1], params(fq, j)))
          )
        )
        for i in (0, 1)
        for j in (0, 1)
      ]
  except Exception:
    return False
  return all(v == float("inf") for v in values)


def _unmapped(lib: Library) -> list[str]:
  """The library's registered pairs (its classes on both sides) that no cell
  of the page uses."""
  return sorted(
    f"{a.__name__} ‖ {b.__name__}"
    for a, b in lib.registry
    if (a, b) not in lib.used and lib.owns(a) and lib.owns(b)
  )


def _mixed(lib: Library) -> int:
  """How many registered pairs have the library's class on one side only
  (Distrax registers ``Normal ‖ tfd.Normal`` and ``tfd.Normal ‖ Normal``)."""
  return sum(lib.owns(a) != lib.owns(b) for a, b in lib.registry)


# ----------------------------------------------------------------------------
# jaxkl's structural rules, checked by calling jaxkl.kl.


def _jaxkl_kl() -> Callable[..., Any] | None:
  import jaxkl

  fn = getattr(jaxkl, "kl", None)
  if fn is None:
    try:
      fn = importlib.import_module("jaxkl._kl").kl
    except (ImportError, AttributeError):
      return None
  return fn


def _finite(value: Any) -> bool:
  value = getattr(value, "value", value)
  return bool(np.all(np.isfinite(np.asarray(value))))


def _probe_structural(kind: str) -> bool:
  """Whether ``jaxkl.kl`` handles the structural rule ``kind``."""
  kl = _jaxkl_kl()
  if kl is None:
    return False
  import jax
  import jax.numpy as jnp

  try:
    import numpyro.distributions as nd
  except ImportError:
    nd = None
  loc = jnp.array([0.1, -0.3, 0.5])
  scale = jnp.array([1.0, 0.7, 1.3])
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      if kind == "independent":
        return _finite(
          kl(
            nd.Normal(loc, scale).to_event(1),
            nd.Normal(0.0, 1.0).expand([3]).to_event(1),
          )
        )
      if kind == "expanded":
        return _finite(
          kl(nd.Normal(0.3, 1.2).expand([3]), nd.Normal(0.0, 1.0).expand([3]))
        )
      if kind == "masked":
        mask = jnp.array([True, False, True])
        return _finite(
          kl(nd.Normal(loc, scale).mask(mask), nd.Normal(0.0, jnp.ones(3)).mask(mask))
        )
      if kind == "delta":
        return _finite(kl(nd.Delta(jnp.float32(0.5)), nd.Normal(0.0, 1.0)))
      if kind == "transformed":
        t = nd.transforms.AffineTransform(1.0, 2.0)
        return _finite(
          kl(
            nd.TransformedDistribution(nd.Normal(loc, scale), t),
            nd.TransformedDistribution(nd.Normal(0.0, jnp.ones(3)), t),
          )
        )
      if kind == "sample":
        tfd = _tfd()
        return _finite(
          kl(tfd.Sample(tfd.Normal(0.3, 1.2), 3), tfd.Sample(tfd.Normal(0.0, 1.0), 3))
        )
      if kind == "mixture":
        import jaxkl

        as_mixture = getattr(jaxkl, "as_gaussian_mixture", None)
        if as_mixture is None:
          as_mixture = importlib.import_module(
            "jaxkl._closed_forms._adapters"
          ).as_gaussian_mixture
        kl_mixture = getattr(jaxkl, "kl_gaussian_mixture", None)
        if kl_mixture is None:
          kl_mixture = importlib.import_module(
            "jaxkl._closed_forms.mixture"
          ).kl_gaussian_mixture

        def mix(shift: float) -> Any:
          return as_mixture(
            nd.MixtureSameFamily(
              nd.Categorical(probs=jnp.array([0.3, 0.7])),
              nd.Normal(jnp.array([-1.0, 1.0]) + shift, jnp.array([0.5, 0.8])),
            )
          )

        values = [
          kl_mixture(mix(0.0), mix(0.5), method=m)
          for m in ("variational", "lower", "upper")
        ]
        values.append(
          kl_mixture(
            mix(0.0),
            mix(0.5),
            method="monte_carlo",
            key=jax.random.key(0),
            num_samples=64,
          )
        )
        return all(_finite(v) for v in values)
      if kind == "monte_carlo":
        value = kl(
          nd.Normal(0.0, 1.0),
          nd.StudentT(4.0, 0.0, 1.0),
          key=jax.random.key(0),
          num_samples=64,
        )
        return _finite(value)
  except Exception:
    return False
  return False


def _structural_cell(lib: Library, classes: tuple[str, str] | None) -> Cell:
  if classes is None:
    return Cell(NONE)
  if not all(hasattr(lib.module, n) for n in classes):
    return Cell(NONE)
  a, b = (getattr(lib.module, n) for n in classes)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fn = lib.resolve(a, b)
  if fn is None:
    return Cell(NONE)
  keys = _matching_keys(lib, fn, a, b)
  # A rule registered for a generic wrapper of TFP's (JitPublicMethods: a
  # jitted copy of any distribution) is not a rule for this wrapper.
  if all(any(c.__name__ in GENERIC_WRAPPERS for c in k) for k in keys):
    return Cell(NONE)
  lib.used.update(keys)
  return Cell(CHECK)


# ----------------------------------------------------------------------------
# The table.


def collect() -> Result:
  libs = libraries()
  by_name = {lib.name: lib for lib in libs}
  import jaxkl

  versions = {"jaxkl": jaxkl.__version__}
  for lib in libs:
    versions[lib.distribution] = _version(lib.distribution)

  ours = jaxkl_pairs()
  families = list(FAMILIES)
  extra = sorted({f for pair in ours for f in pair} - set(families))
  families += extra

  cells: dict[tuple[str, str], dict[str, Cell]] = {}
  for fp in families:
    for fq in families:
      mismatch = support_mismatch(fp, fq)
      row = {"jaxkl": Cell(NONE)}
      if (fp, fq) in ours:
        if not mismatch:
          row["jaxkl"] = Cell(CHECK)
        elif infinite_everywhere(fp, fq, ours[(fp, fq)]):
          row["jaxkl"] = Cell(INF)
        else:
          row["jaxkl"] = Cell(CHECK, "a support mismatch, but not +inf at every probe")
      for name in COLUMN_ORDER:
        lib = by_name.get(name)
        row[name] = Cell(NONE) if lib is None else _library_cell(lib, fp, fq, mismatch)
      if any(c.mark != NONE for c in row.values()):
        cells[(fp, fq)] = row
  rows = [(fp, fq) for fp in families for fq in families if (fp, fq) in cells]

  structural = []
  for kind, label, classes in STRUCTURAL:
    row = {"jaxkl": Cell(CHECK if _probe_structural(kind) else NONE)}
    for name in COLUMN_ORDER:
      lib = by_name.get(name)
      row[name] = (
        Cell(NONE) if lib is None else _structural_cell(lib, classes.get(name))
      )
    structural.append((label, row))

  unmapped = {lib.name: _unmapped(lib) for lib in libs}
  no_class = {lib.name: [f for f in FAMILIES if f not in lib.classes] for lib in libs}
  mixed = {lib.name: _mixed(lib) for lib in libs if lib.name == "distrax"}
  return Result(
    libs, versions, rows, cells, structural, unmapped, mixed, no_class, extra
  )


def _display(family: str) -> str:
  return FAMILIES.get(family, family)


def render(result: Result) -> str:
  columns = ["jaxkl", *COLUMN_ORDER]
  titles = {"jaxkl": "jaxkl", **COLUMN_TITLES}
  out = ["# KL divergence coverage", ""]
  out.append(
    "Which pairs $D_{\\mathrm{KL}}(P \\,\\|\\, Q)$ have a closed form in "
    "jaxkl (`jaxkl.kl`) and in torch.distributions, TFP (on JAX), Distrax "
    "and NumPyro. The page is generated by `python scripts/coverage_table.py` "
    "from the registries themselves: jaxkl's built-in closed forms (the "
    "`PAIRS` of `jaxkl/_closed_forms/`), torch's `_KL_REGISTRY`, TFP's "
    "`_DIVERGENCES` (where Distrax registers its functions too) and "
    "NumPyro's `kl_divergence` dispatcher, each resolved by the library's "
    "own dispatch for every pair of its classes (so subclasses count: "
    "torch's `Chi2` is a `Gamma`, TFP's `Exponential` is a `Gamma`). "
    "Library classes are mapped to families by an explicit table in the "
    "script; a generic rule (torch's `ExponentialFamily` or "
    "`TransformedDistribution` rule, TFP's `TransformedDistribution` rule) "
    "counts only if the library's `kl_divergence` answers for two instances "
    "with different parameters. `+∞` marks a support mismatch (P puts mass "
    "where Q has none): the KL is $+\\infty$ for every parameter value, and "
    "a library that registers the pair returns `inf`. "
    "`tests/test_coverage_table.py` checks that this page is current."
  )
  out += [""]
  out.append(
    "Legend: ✓ closed form; +∞ support mismatch, answered `inf`; (✓) for "
    "some of the library's classes of the family only (see the notes); — "
    "not available (no class for the family, or no KL registered)."
  )
  out += [""]
  out.append(
    "Generated with " + ", ".join(f"{k} {v}" for k, v in result.versions.items()) + "."
  )
  out += ["", "## Closed forms", ""]
  counts = []
  for col in columns:
    marks = [result.cells[r][col].mark for r in result.rows]
    total = sum(m != NONE for m in marks)
    infinite = sum(INF in m for m in marks)
    partial = sum(m.startswith("(") for m in marks)
    extra = [f"{infinite} of them +∞"] if infinite else []
    if partial:
      extra.append(f"{partial} partial")
    counts.append(
      f"{titles[col]} {total}" + (f" ({', '.join(extra)})" if extra else "")
    )
  out.append(f"Pairs covered ({len(result.rows)} rows): " + "; ".join(counts) + ".")
  out += [""]
  out.append("| P ‖ Q | " + " | ".join(titles[c] for c in columns) + " |")
  out.append("|---|" + "|".join(":-:" for _ in columns) + "|")
  notes: list[str] = []
  for fp, fq in result.rows:
    row = result.cells[(fp, fq)]
    label = f"{_display(fp)} ‖ {_display(fq)}"
    marks = []
    for col in columns:
      cell = row[col]
      marks.append(cell.mark)
      if cell.note:
        notes.append(f"{label}, {titles[col]}: {cell.note}.")
    out.append(f"| {label} | " + " | ".join(marks) + " |")
  out += ["", "## Structural rules", ""]
  out.append(
    "jaxkl's cell is checked by calling `jaxkl.kl` on small NumPyro (TFP for "
    "`Sample`) objects; the libraries' cells are their registrations for the "
    "wrapper classes."
  )
  out += [""]
  out.append("| rule | " + " | ".join(titles[c] for c in columns) + " |")
  out.append("|---|" + "|".join(":-:" for _ in columns) + "|")
  for label, row in result.structural:
    out.append(f"| {label} | " + " | ".join(row[c].mark for c in columns) + " |")
  out += ["", "## Notes", ""]
  for note in notes:
    out.append(f"- {note}")
  if result.extra_families:
    out.append(
      "- jaxkl families without a class in the mapping tables: "
      + ", ".join(f"`{f}`" for f in result.extra_families)
      + "."
    )
  for lib in result.libs:
    if result.no_class[lib.name]:
      out.append(
        f"- {titles[lib.name]} has no class for "
        + ", ".join(_display(f) for f in result.no_class[lib.name])
        + "."
      )
  out.append(
    "- torch.distributions and NumPyro write a diagonal normal as "
    "`Independent(Normal)` (see the structural rules); jaxkl reads it as "
    "MultivariateNormal (diagonal)."
  )
  if result.mixed.get("distrax"):
    out.append(
      f"- Distrax also registers {result.mixed['distrax']} pairs between one "
      "of its classes and a TFP class (e.g. `Normal ‖ tfd.Normal`), for "
      "mixing the two libraries; the table shows Distrax ‖ Distrax only."
    )
  for lib in result.libs:
    if result.unmapped[lib.name]:
      out.append(
        f"- Registered in {titles[lib.name]} and used by no cell (a family "
        "without a canonical name, or a generic rule that does not answer "
        "for the table's pairs): "
        + ", ".join(f"`{n}`" for n in result.unmapped[lib.name])
        + "."
      )
  return "\n".join(out) + "\n"


def build() -> tuple[Result, str]:
  """The collected cells and the page.

  Generated with JAX's default promotion rules whatever the caller's
  configuration (the test suite makes promotion strict), so that the page
  does not depend on where it is generated.
  """
  import jax

  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    result = collect()
  return result, render(result)


def generate() -> str:
  """The page, as text."""
  return build()[1]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true", help="exit 1 if stale")
  parser.add_argument("--stdout", action="store_true", help="print the page")
  parser.add_argument("--output", type=Path, default=OUTPUT)
  args = parser.parse_args(argv)
  text = generate()
  if args.stdout:
    sys.stdout.write(text)
    return 0
  if args.check:
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    if current != text:
      print(
        f"{args.output} is out of date: run `python scripts/coverage_table.py`",
        file=sys.stderr,
      )
      return 1
    print(f"{args.output} is current")
    return 0
  args.output.write_text(text, encoding="utf-8")
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
