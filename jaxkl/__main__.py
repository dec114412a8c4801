"""``python -m jaxkl``: a short demonstration of jaxkl on the devices JAX sees.

Prints the backend and devices, then computes the KL divergence of a small
worked example with every reduction in three columns:

* ``jaxkl``: ``jaxkl.kl_div`` in float32 (float64 with ``--x64``);
* ``float64 reference``: the exact value, computed here term by term in
  Python's float64 (``math.log``), so it needs nothing installed;
* ``torch``: PyTorch's own ``torch.nn.functional.kl_div`` on the same inputs
  in the same dtype, when PyTorch is installed (imported only then; without
  it the column is left out and a note says so).

It ends with the zero-probability case where PyTorch returns NaN and jaxkl
does not, and says how far jaxkl is from the reference and from PyTorch.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxkl

# Two rows (a batch of two distributions over three outcomes).
_P = ((0.2, 0.5, 0.3), (0.0, 0.5, 0.5))  # target probabilities
_Q = ((0.3, 0.4, 0.3), (0.2, 0.2, 0.6))  # model probabilities; input = log q
REDUCTIONS = ("none", "sum", "batchmean", "mean")


def _pointwise_reference() -> list[list[float]]:
  """The pointwise losses p·(log p − log q), in float64, 0 where p = 0."""
  return [
    [
      p * (math.log(p) - math.log(q)) if p > 0 else 0.0
      for p, q in zip(row_p, row_q, strict=False)
    ]
    for row_p, row_q in zip(_P, _Q, strict=False)
  ]


def _reference(reduction: str) -> Any:
  """The exact value of the worked example, in float64 (Python floats)."""
  pointwise = _pointwise_reference()
  if reduction == "none":
    return pointwise
  total = math.fsum(term for row in pointwise for term in row)
  return {
    "sum": total,
    "batchmean": total / len(_P),
    "mean": total / (len(_P) * len(_P[0])),
  }[reduction]


def _import_torch() -> Any:
  """PyTorch if it is installed, else None (it is not a dependency)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return torch


def _torch_kl_div(
  torch: Any, log_q: np.ndarray, target: np.ndarray, reduction: str, log_target: bool
) -> Any:
  """``torch.nn.functional.kl_div`` on the same arrays, as a NumPy value."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # 'mean' warns
    value = torch.nn.functional.kl_div(
      torch.from_numpy(log_q),
      torch.from_numpy(target),
      reduction=reduction,
      log_target=log_target,
    )
  return value.numpy()


def _format(value: Any) -> str:
  """``value`` with 8 decimals, and no minus sign on a value shown as 0.

  ``-0.0`` (a zero-mass term ``0 * (negative)``) and tiny negative values
  that round to zero print as ``0.00000000``, as the reference shows them.
  """
  text = f"{float(value) + 0.0:.8f}"  # + 0.0 turns -0.0 into 0.0
  return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def _largest_difference(a: Any, b: Any) -> float:
  """max |a − b| over the entries where both are not NaN."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  both = ~(np.isnan(a) | np.isnan(b))
  return float(np.max(np.abs(a - b)[both], initial=0.0))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m jaxkl",
    description=(
      "Demonstrate jaxkl.kl_div: print the JAX backend and devices, then "
      "the KL divergence of a small worked example (a batch of two "
      "distributions over three outcomes) with every reduction, next to "
      "the exact float64 value computed by hand and, if PyTorch is "
      "installed, PyTorch's own torch.nn.functional.kl_div, and the "
      "zero-probability case where PyTorch returns NaN. Runs on whatever "
      "device JAX picks (CPU by default; set JAX_PLATFORMS=cuda or tpu "
      "to choose)."
    ),
  )
  parser.add_argument(
    "--x64",
    action="store_true",
    help="enable float64 (jax_enable_x64) and compute in it",
  )
  parser.add_argument(
    "--log-target", action="store_true", help="pass the target as log-probabilities"
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the demonstration; returns the process exit code."""
  args = _parse(argv)
  if args.x64:
    # jax.config.update is unannotated in jax.
    jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]
  dtype = jnp.float64 if args.x64 else jnp.float32
  dtype_name = jnp.dtype(dtype).name
  torch = _import_torch()
  print(f"jaxkl {jaxkl.__version__} on JAX {jax.__version__}")
  print(f"backend: {jax.default_backend()}")
  for device in jax.devices():
    print(f"device:  {device.platform}:{device.id} {device.device_kind}")

  p = jnp.asarray(_P, dtype)
  log_q = jnp.log(jnp.asarray(_Q, dtype))
  with np.errstate(divide="ignore"):
    target = jnp.log(p) if args.log_target else p
  print(f"\ntarget p = {_P}\ninput = log q, q = {_Q}\nlog_target = {args.log_target}\n")
  print(f"jaxkl:             jaxkl.kl_div in {dtype_name}")
  print(
    "float64 reference: the exact value, p·(log p − log q) summed in "
    "float64 by hand (math.log)"
  )
  if torch is not None:
    print(
      f"torch:             torch.nn.functional.kl_div (PyTorch "
      f"{torch.__version__}) on the same {dtype_name} inputs"
    )
  else:
    print(
      "torch:             PyTorch is not installed: no torch column "
      "(pip install torch to compare with PyTorch's own values)"
    )

  header = f"\n{'reduction':<11}{'jaxkl':>14}{'float64 reference':>20}"
  print(header + (f"{'torch':>14}" if torch is not None else ""))
  worst_reference = worst_torch = 0.0
  torch_nan = []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # 'mean' warns, as in torch
    for reduction in REDUCTIONS:
      value = jaxkl.kl_div(
        log_q, target, reduction=reduction, log_target=args.log_target
      )
      expected = _reference(reduction)
      worst_reference = max(worst_reference, _largest_difference(value, expected))
      theirs = None
      if torch is not None:
        theirs = _torch_kl_div(
          torch, np.asarray(log_q), np.asarray(target), reduction, args.log_target
        )
        worst_torch = max(worst_torch, _largest_difference(value, theirs))
        if np.any(np.isnan(theirs)):
          torch_nan.append(reduction)
      if reduction == "none":
        rows = [("jaxkl", np.asarray(value)), ("reference", np.asarray(expected))]
        if theirs is not None:
          rows.append(("torch", theirs))
        print("none")
        for label, array in rows:
          entries = ", ".join(_format(x) for x in array.ravel().tolist())
          print(f"  {label:<10}[{entries}]")
        continue
      line = f"{reduction:<11}{_format(value):>14}{_format(expected):>20}"
      if theirs is not None:
        line += f"{_format(theirs):>14}"
      print(line)

  edge = jaxkl.kl_div(
    jnp.asarray([-jnp.inf, 0.0], dtype), jnp.asarray([0.0, 1.0], dtype), reduction="sum"
  )
  print(
    "\ntarget [0, 1] against input [-inf, 0] (reduction='sum'; the exact value is 0):"
  )
  if torch is not None:
    edge_torch = _torch_kl_div(
      torch,
      np.asarray([-np.inf, 0.0], dtype_name),
      np.asarray([0.0, 1.0], dtype_name),
      "sum",
      False,
    )
    print(
      f"  jaxkl: {float(edge) + 0.0}   torch: {float(edge_torch) + 0.0} "
      "(0 * log 0 evaluated as 0 * inf)"
    )
  else:
    print(
      f"  jaxkl: {float(edge) + 0.0}   (PyTorch returns nan here: it evaluates "
      "0 * log 0 as 0 * inf)"
    )

  tolerance = 1e-12 if args.x64 else 1e-6
  status = 0
  print(
    f"\njaxkl ({dtype_name}) against the float64 reference: largest "
    f"difference {worst_reference:.2g}"
    + (" (float32 rounding)" if not args.x64 else "")
  )
  if worst_reference > tolerance:
    print(
      f"MISMATCH: largest difference {worst_reference:.3g} from the "
      f"reference > {tolerance:g}"
    )
    status = 1
  if torch is not None:
    skipped = (
      (
        f"; torch returns nan for {', '.join(torch_nan)} (0 · (−inf) "
        "at the zero-probability target), where jaxkl gives the exact "
        "value"
      )
      if torch_nan
      else ""
    )
    print(
      f"jaxkl ({dtype_name}) against torch ({dtype_name}, same inputs): "
      f"largest difference {worst_torch:.2g} where torch is not nan"
      f"{skipped}"
    )
    if worst_torch > tolerance:
      print(
        f"MISMATCH: largest difference {worst_torch:.3g} from torch > {tolerance:g}"
      )
      status = 1
  return status


if __name__ == "__main__":
  sys.exit(main())
