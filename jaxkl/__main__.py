"""``python -m jaxkl``: a short demonstration of jaxkl on the devices JAX sees.

Prints the backend and devices, then computes the KL divergence of a small
worked example with every reduction, next to the value PyTorch's
``torch.nn.functional.kl_div`` gives (computed by hand here, so PyTorch is not
needed), and shows the cases where PyTorch returns NaN and jaxkl does not.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

import jaxkl

# Two rows (a batch of two distributions over three outcomes).
_P = ((0.2, 0.5, 0.3), (0.0, 0.5, 0.5))   # target probabilities
_Q = ((0.3, 0.4, 0.3), (0.2, 0.2, 0.6))   # model probabilities; input = log q


def _reference(reduction: str) -> float:
  """PyTorch's value for the worked example, computed in plain Python."""
  terms = [p * (math.log(p) - math.log(q)) if p > 0 else 0.0
           for row_p, row_q in zip(_P, _Q) for p, q in zip(row_p, row_q)]
  total = sum(terms)
  return {"sum": total, "batchmean": total / len(_P),
          "mean": total / len(terms)}[reduction]


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m jaxkl",
      description=(
          "Demonstrate jaxkl.kl_div: print the JAX backend and devices, then "
          "the KL divergence of a small worked example (a batch of two "
          "distributions over three outcomes) with every reduction, next to "
          "PyTorch's value, and the zero-probability cases where PyTorch "
          "returns NaN. Runs on whatever device JAX picks (CPU by default; "
          "set JAX_PLATFORMS=cuda or tpu to choose)."),
  )
  parser.add_argument("--x64", action="store_true",
                      help="enable float64 (jax_enable_x64) and compute in it")
  parser.add_argument("--log-target", action="store_true",
                      help="pass the target as log-probabilities")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the demonstration; returns the process exit code."""
  args = _parse(argv)
  if args.x64:
    jax.config.update("jax_enable_x64", True)
  dtype = jnp.float64 if args.x64 else jnp.float32
  print(f"jaxkl {jaxkl.__version__} on JAX {jax.__version__}")
  print(f"backend: {jax.default_backend()}")
  for device in jax.devices():
    print(f"device:  {device.platform}:{device.id} {device.device_kind}")

  p = jnp.asarray(_P, dtype)
  log_q = jnp.log(jnp.asarray(_Q, dtype))
  target = jnp.log(p) if args.log_target else p
  print(f"\ntarget p = {_P}\ninput = log q, q = {_Q}"
        f"\nlog_target = {args.log_target}\n")
  print(f"{'reduction':<11}{'jaxkl':>14}{'torch':>14}")
  worst = 0.0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # 'mean' warns, as in torch
    for reduction in ("none", "sum", "batchmean", "mean"):
      value = jaxkl.kl_div(log_q, target, reduction=reduction,
                           log_target=args.log_target)
      if reduction == "none":
        print(f"{'none':<11}{value.tolist()}")
        continue
      expected = _reference(reduction)
      worst = max(worst, abs(float(value) - expected))
      print(f"{reduction:<11}{float(value):>14.8f}{expected:>14.8f}")

  edge = jaxkl.kl_div(jnp.asarray([-jnp.inf, 0.0], dtype),
                      jnp.asarray([0.0, 1.0], dtype), reduction="sum")
  print("\ntarget [0, 1] against input [-inf, 0] (reduction='sum'):")
  print(f"  jaxkl: {float(edge)}   torch: nan (0 * log 0 evaluated as 0 * inf)")
  tolerance = 1e-12 if args.x64 else 1e-6
  if worst > tolerance:
    print(f"MISMATCH: largest difference {worst:.3g} > {tolerance:g}")
    return 1
  print(f"\nall reductions agree with torch (largest difference {worst:.2g})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
