"""Benchmark ``jaxkl.kl_div`` against PyTorch, optax and a plain jnp expression.

What it measures
----------------
For one (batch, classes) float32 problem (default 2048 x 32000) it times, on
the default JAX backend (CPU here) and on PyTorch CPU:

* forward: the scalar loss with ``reduction='batchmean'`` semantics;
* fwd+bwd: the loss and its gradient with respect to ``input``;

for four implementations:

1. ``jaxkl``  -- ``jaxkl.kl_div(input, target, reduction='batchmean')``, jitted;
2. ``torch``  -- ``torch.nn.functional.kl_div(..., reduction='batchmean')``
   (forward under ``torch.no_grad()``; fwd+bwd with ``requires_grad`` and
   ``.backward()``), ``torch.set_num_threads(os.cpu_count())``;
3. ``optax``  -- ``optax.losses.kl_divergence(input, target).mean()``, jitted
   (per-row sum then mean over rows == batchmean);
4. ``plain``  -- ``jnp.sum(t * (jnp.log(t) - x)) / B``, jitted, with no
   guard for zero probabilities.

JAX fwd+bwd is ``jax.jit(jax.value_and_grad(f))``.

Inputs: ``input = log_softmax(z1)``, ``target = softmax(z2)`` with ``z1, z2``
standard normal, so the target has no zeros and every candidate is finite.
The same data (copied) is used for PyTorch.

Timing: every function is warmed up (compiled) first; each (implementation,
mode) is then timed in contiguous blocks of calls, and the set of blocks is
repeated three times in alternating order (see ``time_blocks``).
Each run ends with ``block_until_ready()``. The median and minimum are
reported.

Before timing, the script checks that jaxkl's value agrees with PyTorch, optax
and the plain expression to 1e-5 relative (and its gradient with theirs), and
exits with status 1 if not.

Output: environment lines, a Markdown table and the target ratios

* optax_fwd / jaxkl_fwd       (target >= 3)
* jaxkl_fwd / plain_fwd       (target <= 1.5)
* jaxkl_fwdbwd / optax_fwdbwd (target <= 1.0)

are printed and written to ``--output`` (default
``benchmarks/results/kl_div_<backend>.md``); the raw timings go to a JSON file
with the same stem.

How to run
----------
    . .venv/bin/activate
    python benchmarks/bench_kl_div.py                       # defaults
    python benchmarks/bench_kl_div.py --batch 2048 --classes 32000 \\
        --repeats 20 --output benchmarks/results/kl_div_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import _common  # benchmarks/_common.py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

import jaxkl

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMPLEMENTATIONS = ("jaxkl", "torch", "optax", "plain")
MODES = ("fwd", "fwdbwd")
RTOL = 1e-5


# --------------------------------------------------------------------------- #
# Candidates
# --------------------------------------------------------------------------- #
def _jaxkl_loss(x, t):
  return jaxkl.kl_div(x, t, reduction="batchmean")


def _optax_loss(x, t):
  return optax.losses.kl_divergence(x, t).mean()


def _plain_loss(x, t):
  return jnp.sum(t * (jnp.log(t) - x)) / x.shape[0]


def make_jax_runners(loss, x, t):
  """Jitted forward and fwd+bwd thunks that block until the result is ready."""
  fwd = jax.jit(loss)
  fwdbwd = jax.jit(jax.value_and_grad(loss))

  def run_fwd():
    return fwd(x, t).block_until_ready()

  def run_fwdbwd():
    return jax.block_until_ready(fwdbwd(x, t))

  return run_fwd, run_fwdbwd


def make_torch_runners(x_np, t_np):
  """Forward (no_grad) and fwd+bwd (``.backward()``) thunks for PyTorch CPU."""
  x = torch.from_numpy(x_np.copy())
  t = torch.from_numpy(t_np.copy())
  x_req = x.clone().requires_grad_(True)

  def run_fwd():
    with torch.no_grad():
      return F.kl_div(x, t, reduction="batchmean")

  def run_fwdbwd():
    x_req.grad = None
    loss = F.kl_div(x_req, t, reduction="batchmean")
    loss.backward()
    return loss.detach(), x_req.grad

  return run_fwd, run_fwdbwd


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def make_inputs(batch: int, classes: int, seed: int):
  """log_softmax / softmax of independent standard normal logits (float32)."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  z1 = jax.random.normal(k1, (batch, classes), jnp.float32)
  z2 = jax.random.normal(k2, (batch, classes), jnp.float32)
  x = jax.nn.log_softmax(z1, axis=-1)
  t = jax.nn.softmax(z2, axis=-1)
  return jax.block_until_ready((x, t))


def to_np(a) -> np.ndarray:
  if isinstance(a, torch.Tensor):
    return a.detach().numpy()
  return np.asarray(a)


def sanity_check(runners) -> tuple[bool, list[str]]:
  """Compare every candidate's value and gradient with jaxkl's."""
  ref_v, ref_g = (to_np(a).astype(np.float64) for a in runners["jaxkl"]["fwdbwd"]())
  ref_fwd = float(to_np(runners["jaxkl"]["fwd"]()))
  ok = abs(ref_fwd - float(ref_v)) <= RTOL * abs(float(ref_v))
  lines = [f"jaxkl value = {float(ref_v):.8g} (fwd {ref_fwd:.8g})"]
  g_scale = float(np.max(np.abs(ref_g)))
  for name in IMPLEMENTATIONS[1:]:
    fwd_v = float(to_np(runners[name]["fwd"]()))
    v, g = (to_np(a).astype(np.float64) for a in runners[name]["fwdbwd"]())
    rel = max(abs(fwd_v - float(ref_v)), abs(float(v) - float(ref_v))) / abs(
      float(ref_v)
    )
    g_err = float(np.max(np.abs(g - ref_g))) / g_scale
    good = rel <= RTOL and g_err <= RTOL
    ok &= good
    lines.append(
      f"jaxkl vs {name:<5}: value rel diff {rel:.2e}, grad max rel diff "
      f"{g_err:.2e} -> {'OK' if good else 'MISMATCH'} (tol {RTOL:g})"
    )
  return ok, lines


def render_markdown(env, args, summary, ratios, sanity_lines) -> str:
  out = ["# KL divergence benchmark", ""]
  out.append(
    f"Problem: input/target ({args.batch}, {args.classes}) float32, "
    f"reduction='batchmean'; best (median) of {args.repeats} runs after "
    f"warm-up, in blocks (see time_blocks). Ratios use the best time: on "
    f"this shared 2-core machine the median carries other tenants' load, "
    f"the minimum is the cost of the computation itself (the advice of "
    f"Python's timeit)."
  )
  out += ["", "## Environment", ""]
  out += [f"- {k}: {v}" for k, v in env.items()]
  out += ["", "## Sanity", ""]
  out += [f"- {line}" for line in sanity_lines]
  out += ["", "## Timings", ""]
  out.append(
    "| implementation | forward ms: best (median) "
    "| fwd+bwd ms: best (median) "
    "| forward time / jaxkl's | fwd+bwd time / jaxkl's |"
  )
  out.append("|---|---:|---:|---:|---:|")
  jf, jb = summary["jaxkl"]["fwd"]["min"], summary["jaxkl"]["fwdbwd"]["min"]
  for impl in IMPLEMENTATIONS:
    f, b = summary[impl]["fwd"], summary[impl]["fwdbwd"]
    out.append(
      f"| {impl} | {f['min']:.1f} ({f['median']:.1f}) "
      f"| {b['min']:.1f} ({b['median']:.1f}) "
      f"| {f['min'] / jf:.2f} | {b['min'] / jb:.2f} |"
    )
  out += ["", "## Targets", ""]
  for r in ratios:
    out.append(
      f"- {r['name']} = {r['value']:.2f} (target {r['op']} "
      f"{r['target']:g}): {'PASS' if r['pass'] else 'FAIL'}"
    )
  return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
def environment() -> dict:
  return _common.environment(
    versions={"torch": torch.__version__, "optax": optax.__version__},
    extra={"torch_num_threads": torch.get_num_threads()},
  )


def time_blocks(runners, repeats: int, rounds: int = 3) -> dict:
  """``_common.time_blocks`` over this script's implementations and modes."""
  return _common.time_blocks(runners, IMPLEMENTATIONS, MODES, repeats, rounds)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=2048)
  p.add_argument("--classes", type=int, default=32000)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument(
    "--warmup",
    type=int,
    default=2,
    help="untimed calls per function before timing (>=1)",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--output",
    type=Path,
    default=None,
    help="Markdown path (default benchmarks/results/"
    "kl_div_<backend>.md); the JSON goes next to it",
  )
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  torch.set_num_threads(os.cpu_count() or 1)
  env = environment()
  for k, v in env.items():
    print(f"{k}: {v}")
  print(f"problem: ({args.batch}, {args.classes}) float32, repeats={args.repeats}")

  x, t = make_inputs(args.batch, args.classes, args.seed)
  x_np, t_np = np.asarray(x), np.asarray(t)

  runners = {}
  for name, loss in (
    ("jaxkl", _jaxkl_loss),
    ("optax", _optax_loss),
    ("plain", _plain_loss),
  ):
    fwd, fwdbwd = make_jax_runners(loss, x, t)
    runners[name] = {"fwd": fwd, "fwdbwd": fwdbwd}
  fwd, fwdbwd = make_torch_runners(x_np, t_np)
  runners["torch"] = {"fwd": fwd, "fwdbwd": fwdbwd}

  # Warm-up: compile every jitted function and touch every code path.
  for _ in range(max(1, args.warmup)):
    for impl in IMPLEMENTATIONS:
      for mode in MODES:
        runners[impl][mode]()

  ok, sanity_lines = sanity_check(runners)
  print("\nSanity:")
  for line in sanity_lines:
    print("  " + line)
  if not ok:
    print("SANITY CHECK FAILED: jaxkl disagrees with a reference", file=sys.stderr)
    return 1

  times = time_blocks(runners, args.repeats)
  env["load_average_at_end"] = _common.load_average()
  summary = _common.summarize(times, IMPLEMENTATIONS, MODES)
  med = lambda impl, mode: summary[impl][mode]["min"]  # noqa: E731
  ratios = [
    {
      "name": "optax_fwd / jaxkl_fwd",
      "value": med("optax", "fwd") / med("jaxkl", "fwd"),
      "op": ">=",
      "target": 3.0,
    },
    {
      "name": "jaxkl_fwd / plain_fwd",
      "value": med("jaxkl", "fwd") / med("plain", "fwd"),
      "op": "<=",
      "target": 1.5,
    },
    {
      "name": "jaxkl_fwdbwd / optax_fwdbwd",
      "value": med("jaxkl", "fwdbwd") / med("optax", "fwdbwd"),
      "op": "<=",
      "target": 1.0,
    },
  ]
  for r in ratios:
    r["pass"] = (
      r["value"] >= r["target"] if r["op"] == ">=" else r["value"] <= r["target"]
    )

  md = render_markdown(env, args, summary, ratios, sanity_lines)
  # Print the table and targets (environment and sanity were printed above).
  print("\n" + md.split("## Timings\n\n", 1)[1])

  output = args.output or RESULTS_DIR / f"kl_div_{jax.default_backend()}.md"
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(md, encoding="utf-8")
  json_path = output.with_suffix(".json")
  json_path.write_text(
    json.dumps(
      {
        "problem": {
          "batch": args.batch,
          "classes": args.classes,
          "dtype": "float32",
          "reduction": "batchmean",
          "repeats": args.repeats,
          "warmup": args.warmup,
          "seed": args.seed,
        },
        "environment": env,
        "sanity": sanity_lines,
        "results_ms": summary,
        "ratios": ratios,
      },
      indent=2,
    )
    + "\n",
    encoding="utf-8",
  )
  print(f"wrote {output}\nwrote {json_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
