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
