"""Shared test configuration.

Strict dtype promotion and rank promotion checks are on for the whole suite,
so that jaxkl never relies on an implicit promotion a user may have disabled.
Tests that need float64 use the ``x64`` fixture.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
  """Enables float64 for the duration of one test."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def standard_promotion():
  """Standard (non-strict) dtype promotion for one test."""
  with jax.numpy_dtype_promotion("standard"):
    yield


def _memory_maps() -> int:
  try:
    with open("/proc/self/maps", encoding="ascii") as maps:
      return sum(1 for _ in maps)
  except OSError:  # not Linux
    return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's compiled programs after each test module.

  Every XLA:CPU executable keeps its own memory mappings; the suite compiles
  thousands of programs, and a process has at most ``vm.max_map_count``
  (65530 by default on Linux) mappings: past it, XLA's compiler crashed with
  a segmentation fault inside a later compilation. The programs of one module
  are rarely reused by the next.
  """
  yield
  if os.environ.get("JAXKL_TEST_MAPS"):
    print(f"\nmemory maps before clearing: {_memory_maps()}")
  jax.clear_caches()
