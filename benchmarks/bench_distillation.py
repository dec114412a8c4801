"""Benchmark the distillation loss from logits: jaxkl against optax and PyTorch.

What it measures
----------------
For one (batch, classes) float32 problem (default 4096 x 32000, temperature
T = 2) it times the Hinton distillation loss

    T^2 * mean over rows of KL(softmax(t / T) || softmax(s / T))

('batchmean' averaging over the rows) from student logits ``s`` and teacher
logits ``t``, in two modes:

* forward: the scalar loss;
* fwd+bwd: the loss and its gradient with respect to the student logits;

for three implementations:

1. ``jaxkl`` -- ``jaxkl.distillation_loss(s, t, temperature=T,
   reduction='mean')`` (the mean over rows), jitted;
2. ``optax`` -- ``optax.losses.kl_divergence(jax.nn.log_softmax(s / T),
   jax.nn.softmax(t / T)).mean() * T**2``, jitted;
3. ``torch`` -- ``F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
   reduction='batchmean') * T**2`` on PyTorch CPU with
   ``torch.set_num_threads(2)`` (forward under ``torch.no_grad()``; fwd+bwd
   with ``requires_grad`` and ``.backward()``).

JAX fwd+bwd is ``jax.jit(jax.value_and_grad(f))`` (gradient w.r.t. ``s``).

Inputs: ``s`` and ``t`` are independent standard normal logits times
``--logit-scale`` (default 2); the same data (copied) is used for PyTorch.

Timing: every function is warmed up (compiled) first; each (implementation,
mode) is then timed in contiguous blocks of calls, and the set of blocks is
repeated three times in alternating order (``time_blocks`` below, the scheme
of ``bench_kl_div.time_blocks``: read its docstring for why). Each JAX call
ends with ``block_until_ready()``. The best (minimum) and the median are
reported; ratios use the best time.

Before timing, the script checks that the three implementations agree: the
forward value and the fwd+bwd value of each with jaxkl's to ``--rtol``
(default 1e-5) relative, and each gradient with jaxkl's to ``--rtol`` times
the largest gradient entry; it exits with status 1 if not.

Output: environment lines, a Markdown table and the ratios

* optax_fwdbwd / jaxkl_fwdbwd   (target >= 2)
* optax_fwd / jaxkl_fwd, torch_fwdbwd / jaxkl_fwdbwd, torch_fwd / jaxkl_fwd
  (reported, no target)

are printed and written to ``--output`` (default
``benchmarks/results/distillation_<backend>.md``); the raw timings go to a
JSON file with the same stem.

How to run
----------
    . .venv/bin/activate
    python benchmarks/bench_distillation.py                  # defaults
    python benchmarks/bench_distillation.py --batch 256 --classes 1000 \\
        --repeats 3 --output /tmp/distillation_smoke.md       # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from bench_kl_div import environment
from bench_kl_div import to_np

import jaxkl

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMPLEMENTATIONS = ("jaxkl", "optax", "torch")
MODES = ("fwd", "fwdbwd")
TARGET = 2.0  # optax fwd+bwd time / jaxkl fwd+bwd time


# --------------------------------------------------------------------------- #
# Candidates
# --------------------------------------------------------------------------- #
def make_jax_losses(temperature: float):
  def jaxkl_loss(s, t):
    return jaxkl.distillation_loss(s, t, temperature=temperature, reduction="mean")

  def optax_loss(s, t):
    log_q = jax.nn.log_softmax(s / temperature)
    p = jax.nn.softmax(t / temperature)
    return optax.losses.kl_divergence(log_q, p).mean() * temperature**2

  return {"jaxkl": jaxkl_loss, "optax": optax_loss}


def make_jax_runners(loss, s, t):
  """Jitted forward and fwd+bwd thunks that block until the result is ready."""
  fwd = jax.jit(loss)
  fwdbwd = jax.jit(jax.value_and_grad(loss))

  def run_fwd():
    return fwd(s, t).block_until_ready()

  def run_fwdbwd():
    return jax.block_until_ready(fwdbwd(s, t))

  return run_fwd, run_fwdbwd


def make_torch_runners(s_np, t_np, temperature: float):
  """Forward (no_grad) and fwd+bwd (``.backward()``) thunks for PyTorch CPU."""
  s = torch.from_numpy(s_np.copy())
  t = torch.from_numpy(t_np.copy())
  s_req = s.clone().requires_grad_(True)

  def loss(student):
    log_q = F.log_softmax(student / temperature, dim=-1)
    p = F.softmax(t / temperature, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean") * temperature**2

  def run_fwd():
    with torch.no_grad():
      return loss(s)

  def run_fwdbwd():
    s_req.grad = None
    value = loss(s_req)
    value.backward()
    return value.detach(), s_req.grad

  return run_fwd, run_fwdbwd


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def make_inputs(batch: int, classes: int, scale: float, seed: int):
  """Independent standard normal student and teacher logits, times scale."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  s = scale * jax.random.normal(k1, (batch, classes), jnp.float32)
  t = scale * jax.random.normal(k2, (batch, classes), jnp.float32)
  return jax.block_until_ready((s, t))


def sanity_check(runners, rtol: float) -> tuple[bool, list[str]]:
  """Compare every candidate's value and gradient with jaxkl's."""
  ref_v, ref_g = (to_np(a).astype(np.float64) for a in runners["jaxkl"]["fwdbwd"]())
  ref_v = float(ref_v)
  ref_fwd = float(to_np(runners["jaxkl"]["fwd"]()))
  ok = abs(ref_fwd - ref_v) <= rtol * abs(ref_v) and np.isfinite(ref_g).all()
  lines = [
    f"jaxkl value = {ref_v:.8g} (forward alone {ref_fwd:.8g}), "
    f"max |grad| = {np.max(np.abs(ref_g)):.3g}"
  ]
  g_scale = float(np.max(np.abs(ref_g)))
  for name in IMPLEMENTATIONS[1:]:
    fwd_v = float(to_np(runners[name]["fwd"]()))
    v, g = (to_np(a).astype(np.float64) for a in runners[name]["fwdbwd"]())
    rel = max(abs(fwd_v - ref_v), abs(float(v) - ref_v)) / abs(ref_v)
    g_err = float(np.max(np.abs(g - ref_g))) / g_scale
    good = rel <= rtol and g_err <= rtol
    ok &= good
    lines.append(
      f"jaxkl vs {name}: value rel diff {rel:.2e}, grad max diff / max "
      f"|grad| {g_err:.2e} -> {'OK' if good else 'MISMATCH'} "
      f"(tol {rtol:g})"
    )
  return bool(ok), lines


def time_blocks(runners, repeats: int, rounds: int = 3) -> dict:
  """``_common.time_blocks`` over this script's implementations and modes."""
  return _common.time_blocks(runners, IMPLEMENTATIONS, MODES, repeats, rounds)


def render_markdown(env, args, summary, ratios, sanity_lines) -> str:
  out = ["# Distillation loss benchmark (from logits, with temperature)", ""]
  out.append(
    f"Problem: student/teacher logits ({args.batch}, {args.classes}) "
    f"float32 (standard normal x {args.logit_scale:g}), temperature "
    f"T = {args.temperature:g}; loss = T^2 x mean over rows of "
    f"KL(softmax(t/T) || softmax(s/T)) ('batchmean'); fwd+bwd = value and "
    f"gradient w.r.t. the student logits. Best (median) of "
    f"{args.repeats} runs after warm-up, in blocks (see time_blocks). "
    f"Ratios use the best time: on this shared machine the median carries "
    f"other tenants' load, the minimum is the cost of the computation "
    f"itself (the advice of Python's timeit)."
  )
  out += ["", "Implementations:", ""]
  out += [
    "- jaxkl: `jax.jit(jax.value_and_grad(lambda s, t: "
    "jaxkl.distillation_loss(s, t, temperature=T, reduction='mean')))`",
    "- optax: `optax.losses.kl_divergence(jax.nn.log_softmax(s / T), "
    "jax.nn.softmax(t / T)).mean() * T**2`, jitted the same way",
    "- torch: `F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), "
    "reduction='batchmean') * T**2` and `.backward()`, "
    f"torch.set_num_threads({args.torch_threads})",
  ]
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
  out += ["", "## Ratios", ""]
  for r in ratios:
    if r.get("target") is None:
      out.append(f"- {r['name']} = {r['value']:.2f}")
    else:
      out.append(
        f"- {r['name']} = {r['value']:.2f} (target {r['op']} "
        f"{r['target']:g}): {'PASS' if r['pass'] else 'FAIL'}"
      )
  return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--classes", type=int, default=32000)
  p.add_argument("--temperature", type=float, default=2.0)
  p.add_argument(
    "--logit-scale",
    type=float,
    default=2.0,
    help="standard deviation of the random logits",
  )
  p.add_argument(
    "--repeats",
    type=int,
    default=12,
    help="timed calls per (implementation, mode), split over 3 rounds",
  )
  p.add_argument(
    "--warmup",
    type=int,
    default=1,
    help="untimed calls per function before timing (>=1)",
  )
  p.add_argument("--torch-threads", type=int, default=2)
  p.add_argument("--rtol", type=float, default=1e-5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--output",
    type=Path,
    default=None,
    help="Markdown path (default benchmarks/results/"
    "distillation_<backend>.md); the JSON goes next to it",
  )
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  torch.set_num_threads(args.torch_threads)
  env = environment()
  for k, v in env.items():
    print(f"{k}: {v}")
  print(
    f"problem: ({args.batch}, {args.classes}) float32, T={args.temperature:g}"
    f", repeats={args.repeats}"
  )

  s, t = make_inputs(args.batch, args.classes, args.logit_scale, args.seed)
  runners = {}
  for name, loss in make_jax_losses(args.temperature).items():
    fwd, fwdbwd = make_jax_runners(loss, s, t)
    runners[name] = {"fwd": fwd, "fwdbwd": fwdbwd}
  fwd, fwdbwd = make_torch_runners(np.asarray(s), np.asarray(t), args.temperature)
  runners["torch"] = {"fwd": fwd, "fwdbwd": fwdbwd}

  # Warm-up: compile every jitted function and touch every code path.
  for _ in range(max(1, args.warmup)):
    for impl in IMPLEMENTATIONS:
      for mode in MODES:
        runners[impl][mode]()

  ok, sanity_lines = sanity_check(runners, args.rtol)
  print("\nSanity:")
  for line in sanity_lines:
    print("  " + line)
  if not ok:
    print("SANITY CHECK FAILED: the implementations disagree", file=sys.stderr)
    return 1

  times = time_blocks(runners, args.repeats)
  summary = _common.summarize(times, IMPLEMENTATIONS, MODES)
  best = lambda impl, mode: summary[impl][mode]["min"]  # noqa: E731
  ratios = [
    {
      "name": "optax_fwdbwd / jaxkl_fwdbwd",
      "value": best("optax", "fwdbwd") / best("jaxkl", "fwdbwd"),
      "op": ">=",
      "target": TARGET,
    },
    {
      "name": "optax_fwd / jaxkl_fwd",
      "value": best("optax", "fwd") / best("jaxkl", "fwd"),
      "target": None,
    },
    {
      "name": "torch_fwdbwd / jaxkl_fwdbwd",
      "value": best("torch", "fwdbwd") / best("jaxkl", "fwdbwd"),
      "target": None,
    },
    {
      "name": "torch_fwd / jaxkl_fwd",
      "value": best("torch", "fwd") / best("jaxkl", "fwd"),
      "target": None,
    },
  ]
  for r in ratios:
    if r["target"] is not None:
      r["pass"] = r["value"] >= r["target"]

  md = render_markdown(env, args, summary, ratios, sanity_lines)
  print("\n" + md.split("## Timings\n\n", 1)[1])

  output = args.output or RESULTS_DIR / f"distillation_{jax.default_backend()}.md"
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
          "temperature": args.temperature,
          "logit_scale": args.logit_scale,
          "loss": "T^2 * batchmean KL(softmax(t/T) || softmax(s/T))",
          "repeats": args.repeats,
          "warmup": args.warmup,
          "torch_threads": args.torch_threads,
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
