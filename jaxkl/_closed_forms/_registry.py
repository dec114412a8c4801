r"""The registry of KL divergences between distribution objects.

Two tables, consulted in this order by ``jaxkl.kl``:

1. **User registrations**, made with :func:`register_kl`: a function of the
   two objects, for a pair of Python types. Among the registrations whose
   types are base classes of (or equal to) the objects' types, the most
   specific wins: registration :math:`(A, B)` is more specific than
   :math:`(C, D)` when :math:`A` is a subclass of :math:`C` and :math:`B` a
   subclass of :math:`D` (one of them strictly). When no single
   registration is more specific than every other match, the call is
   ambiguous and raises ``TypeError`` naming the tied registrations
   (register the exact pair to settle it). A registration shadows the
   built-in closed forms and the structural rules for the types it matches.
2. **Built-in closed forms**: the ``PAIRS`` dictionaries of the family
   modules (``normal``, ``discrete``, ``positive``, ``location_scale``,
   ``cross``, ``mixture``), keyed by canonical family names
   ``(family_of_P, family_of_Q)``; each value is a function
   ``f(p_params, q_params)`` of the canonical parameters (dictionaries of
   arrays, see :mod:`jaxkl._closed_forms._adapters`) returning
   :math:`D_{\mathrm{KL}}(P \,\|\, Q)` elementwise over the broadcast batch
   shape. Library objects are converted to families by
   :func:`jaxkl._closed_forms._adapters.canonical`.

Both tables are read at trace time (once per ``jit`` trace), so dispatch
costs nothing at run time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import TypeVar

import jax

PairFunction = Callable[[Mapping[str, jax.Array], Mapping[str, jax.Array]], jax.Array]
UserFunction = Callable[[Any, Any], Any]
F = TypeVar("F", bound=Callable[..., Any])

#: The family modules whose ``PAIRS`` make up the built-in table.
FAMILY_MODULES = (
  "normal",
  "discrete",
  "positive",
  "location_scale",
  "cross",
  "mixture",
)

_USER: dict[tuple[type, type], UserFunction] = {}


def same_family(function: Callable[..., jax.Array], *names: str) -> PairFunction:
  """The registry entry of a same-family closed form with named parameters.

  ``same_family(kl_gamma, "concentration", "rate")`` is the function
  ``(p, q) -> kl_gamma(p["concentration"], p["rate"], q["concentration"],
  q["rate"])``: P's parameters in ``names`` order, then Q's.
  """

  def pair(p: Mapping[str, jax.Array], q: Mapping[str, jax.Array]) -> jax.Array:
    return function(*(p[name] for name in names), *(q[name] for name in names))

  pair.__name__ = f"_pair_{function.__name__}"
  pair.__doc__ = f"Both distributions of one family: :func:`{function.__name__}`."
  return pair


def builtin_pairs(strict: bool = False) -> dict[tuple[str, str], PairFunction]:
  """Every built-in closed form: ``(family_p, family_q) -> f(p_params, q_params)``.

  Collected from the family modules' ``PAIRS`` on each call (a dictionary
  merge, at trace time), in the order of ``FAMILY_MODULES``: a pair listed
  by two modules takes the first module's function (``strict=True`` raises
  instead; the tests check that no pair is listed twice).

  Raises:
    RuntimeError: with ``strict``, two modules register the same pair with
      different functions.
  """
  merged: dict[tuple[str, str], PairFunction] = {}
  owner: dict[tuple[str, str], str] = {}
  for name in FAMILY_MODULES:
    module = importlib.import_module(f"jaxkl._closed_forms.{name}")
    pairs: Mapping[tuple[str, str], PairFunction] = getattr(module, "PAIRS", {})
    for key, function in pairs.items():
      if key in merged:
        if not strict or merged[key] is function:
          continue
        raise RuntimeError(
          f"the closed form for {key} is registered twice, in "
          f"jaxkl._closed_forms.{owner[key]} and jaxkl._closed_forms.{name}."
        )
      merged[key] = function
      owner[key] = name
  return merged


def builtin(family_p: str, family_q: str) -> PairFunction | None:
  """The built-in closed form for a pair of families, or None."""
  return builtin_pairs().get((family_p, family_q))


def register_kl(type_p: type, type_q: type) -> Callable[[F], F]:
  r"""Registers a KL divergence for a pair of distribution types.

  Used as a decorator: ``@jaxkl.register_kl(TypeP, TypeQ)`` above a
  function ``f(p, q)`` that returns :math:`D_{\mathrm{KL}}(P \,\|\, Q)`
  (an array of the pair's broadcast batch shape). ``jaxkl.kl(p, q)`` then
  calls ``f`` for every ``p`` whose type is ``TypeP`` or a subclass and
  every ``q`` whose type is ``TypeQ`` or a subclass, returning its result
  as a ``jax.Array``.

  **Precedence.** Registrations come first, before jaxkl's built-in closed
  forms and structural rules (so a registration shadows them for the
  types it matches). Among several matching registrations the most
  specific wins: :math:`(A, B)` beats :math:`(C, D)` when
  ``issubclass(A, C)`` and ``issubclass(B, D)``. If no single match beats
  all the others (e.g. ``(Normal, Distribution)`` and
  ``(Distribution, Normal)`` for two normals), ``jaxkl.kl`` raises
  ``TypeError`` naming the tied registrations; register the exact pair to
  settle the tie. Registering a pair again replaces the earlier function.

  Dispatch happens at trace time, on the Python types: ``f`` runs once per
  ``jit`` trace and must be traceable (JAX operations on the objects'
  arrays).

  Args:
    type_p: the type of :math:`P` (a class; subclasses match too).
    type_q: the type of :math:`Q`.

  Returns:
    A decorator that registers its function and returns it unchanged.

  Raises:
    TypeError: ``type_p`` or ``type_q`` is not a class, or the decorated
      object is not callable.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxkl
    >>> class PointGrid:  # a toy distribution: probabilities on a grid
    ...   def __init__(self, probs):
    ...     self.probs = jnp.asarray(probs)
    >>> @jaxkl.register_kl(PointGrid, PointGrid)
    ... def _kl_grid(p, q):
    ...   return jnp.sum(p.probs * jnp.log(p.probs / q.probs), axis=-1)
    >>> jaxkl.kl(PointGrid([0.5, 0.5]), PointGrid([0.25, 0.75]))
    Array(0.14384104, dtype=float32)
  """
  for name, value in (("type_p", type_p), ("type_q", type_q)):
    if not isinstance(value, type):
      raise TypeError(
        f"`register_kl({name}=...)` takes a class (the distribution's type); "
        f"got {value!r}."
      )

  def decorator(function: F) -> F:
    if not callable(function):
      raise TypeError(
        "`@register_kl(type_p, type_q)` decorates a function `f(p, q)`; got "
        f"{function!r}."
      )
    _USER[(type_p, type_q)] = function
    return function

  return decorator


def registered_pairs() -> dict[tuple[type, type], UserFunction]:
  """A copy of the user registrations: ``(type_p, type_q) -> f``."""
  return dict(_USER)


def involves(cls: type) -> bool:
  """Whether a user registration names ``cls`` or one of its base classes."""
  return any(issubclass(cls, a) or issubclass(cls, b) for a, b in _USER)


def _name(cls: type) -> str:
  return f"{cls.__module__}.{cls.__qualname__}"


def lookup(type_p: type, type_q: type) -> UserFunction | None:
  """The most specific user registration matching the types, or None.

  Raises:
    TypeError: the most specific match is ambiguous.
  """
  matches = [
    (a, b) for (a, b) in _USER if issubclass(type_p, a) and issubclass(type_q, b)
  ]
  if not matches:
    return None
  best = [
    m
    for m in matches
    if not any(
      o != m and issubclass(o[0], m[0]) and issubclass(o[1], m[1]) for o in matches
    )
  ]
  if len(best) > 1:
    listed = " and ".join(f"({_name(a)}, {_name(b)})" for a, b in best)
    raise TypeError(
      f"ambiguous KL registration for ({_name(type_p)}, {_name(type_q)}): "
      f"{listed} match equally specifically. Register the exact pair with "
      f"`@jaxkl.register_kl({type_p.__qualname__}, {type_q.__qualname__})` "
      "to settle it."
    )
  return _USER[best[0]]
