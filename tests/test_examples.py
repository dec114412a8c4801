"""Runs the examples in ``examples/`` (imported with importlib) end to end."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("optax")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
  """Imports ``examples/<name>.py`` as a module named ``<name>``."""
  path = EXAMPLES / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def test_distill_flax_reduces_heldout_kl(capsys):
  """The student's held-out KL at T=1 falls at least 5-fold in 300 steps.

  Observed with the defaults (300 steps, T=2), initial -> final held-out KL:
  seeds 0-9 gave 1.088->0.118 (9.2x), 1.036->0.117 (8.9x),
  1.058->0.123 (8.6x), 1.101->0.125 (8.8x), 1.105->0.124 (8.9x),
  1.086->0.127 (8.5x), 0.975->0.125 (7.8x), 1.064->0.121 (8.8x),
  1.030->0.123 (8.4x), 1.067->0.118 (9.0x); seed 0 at T=1 and T=4 gave 8.9x
  and 9.1x. The assertion asks for 5x, a margin of over 1.5x on the worst.
  """
  example = load_example("distill_flax")
  metrics = example.main(["--steps", "300", "--temperature", "2.0", "--seed", "0"])

  losses = metrics["losses"]
  assert losses.shape == (300,)
  assert losses.dtype == np.float32
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-20:]) < np.mean(losses[:20]) / 3

  assert np.isfinite(metrics["initial_kl"]) and metrics["initial_kl"] > 0.5
  assert 0 < metrics["final_kl"] <= metrics["initial_kl"] / 5
  # The padding mask is in use: about half the tokens are padding.
  assert 0.3 < metrics["kept_fraction"] < 0.8
  assert "held-out KL" in capsys.readouterr().out
