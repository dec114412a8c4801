"""Benchmark ``jaxkl.fused_linear_distillation_loss`` against materialized logits.

What it measures
----------------
One training-step-like computation, float32, on the default JAX backend (CPU
here): the distillation loss (forward KL, temperature 2, ``'mean'``) of a
student head ``h_s @ W_s`` against a frozen teacher head ``h_t @ W_t`` and its
gradient with respect to ``h_s`` and ``W_s``, i.e.
``jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))``, for these variants:

1. ``baseline``   -- ``jaxkl.distillation_loss(h_s @ W_s, h_t @ W_t, ...)``:
   ``[N, V]`` logits, softmaxes and gradients are materialized.
2. ``fused``      -- ``jaxkl.fused_linear_distillation_loss(..., chunk_size=C)``
   (``custom_vjp``; the gradients are computed in the same pass over the
   chunks as the loss, the backward pass only scales them), for each ``C`` in
   ``--chunks``.
3. ``recompute``  -- the same function with ``reduction='none'`` followed by
   ``jnp.mean`` outside: its ``custom_vjp`` backward pass recomputes the
   logits chunk by chunk (what any per-token cotangent requires).
4. ``checkpoint`` -- the alternative design: ``lax.scan`` over chunks whose
   body (the per-row code of ``jaxkl.distillation_loss`` on ``[C, V]``
   logits) is wrapped in ``jax.checkpoint``, differentiated by JAX's autodiff
   (the backward pass recomputes each chunk's logits).

Variants 3 and 4 run at ``--target-chunk`` only.

Each (variant, chunk size) runs in a fresh Python subprocess, so that its peak
resident set size (RSS) is its own: the parent reads it from ``os.wait4``'s
``ru_maxrss`` (kernel-reported, nothing subtracted). The child also reports
its RSS after creating the inputs (the Python + JAX runtime and the input
arrays) so that the reader can see the working set of the step itself, XLA's
own estimate of the step's temporary buffers (``memory_analysis()``), and the
1-minute load average when it finished (this machine is shared: the load
inflates and scatters times, not memory). Time is the median (and minimum) of
``--steps`` steps after the first call; compilation is done ahead of time
and excluded.

Because the load changes from one process to the next, the time ratio that is
checked against the target comes from one more process in which baseline and
fused (at ``--target-chunk``) steps alternate, ``--interleaved-steps`` of
each (rounds reverse the order); the per-process ratio is printed too.

Before the measurements, each non-baseline variant's value and gradients are
compared with the baseline's on a small problem (``N=300, H=64, V=1000``) in
a separate process; a mismatch beyond 1e-4 relative stops the run.

Targets (against ``baseline``, for ``fused`` at ``--target-chunk``): peak RSS
ratio <= 0.25 (separate processes) and median step time ratio <= 1.5
(interleaved). The exit status is 0 if both pass.

Default problem: N=8192 tokens, H=1024, V=32768. N and H are those of the
target shape (8192, 1024, 131072); V is 4x smaller so that one baseline step
(2.2 TFLOP of matmuls) takes about a minute on this 2-core CPU, where it
materializes 3 GiB of [N, V] buffers. The memory ratio depends mostly on N / H
(the fused loss still holds O(H V): both weights, the weight gradient and its
accumulator), so the full V would only lengthen the run.

The default run takes about half an hour on this machine (11 processes,
about 20 steps of about a minute); ``--variants baseline fused --chunks 512``
is the short version.

Output: a Markdown table and the ratios with PASS/FAIL, printed and written
to ``benchmarks/results/fused_linear_<backend>.md`` and ``.json``.

How to run
----------
    . .venv/bin/activate
    python benchmarks/bench_fused_linear.py                 # defaults
    python benchmarks/bench_fused_linear.py --tokens 4096 --hidden 1024 \\
        --vocab 65536 --chunks 256 1024 --steps 3
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TEMPERATURE = 2.0
CHECK_RTOL = 1e-4


# --------------------------------------------------------------------------- #
# Child process: one variant.
# --------------------------------------------------------------------------- #
def _current_rss_mib() -> float:
  with open("/proc/self/statm", encoding="ascii") as f:
    pages = int(f.read().split()[1])
  return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def _losses(variant: str, chunk: int):
  """The loss function of a variant: (h_s, w_s, h_t, w_t) -> scalar."""
  import jax
  import jax.numpy as jnp

  import jaxkl
  from jaxkl import _logits

  if variant == "baseline":

    def loss(h_s, w_s, h_t, w_t):
      return jaxkl.distillation_loss(h_s @ w_s, h_t @ w_t, temperature=TEMPERATURE)
  elif variant == "fused":

    def loss(h_s, w_s, h_t, w_t):
      return jaxkl.fused_linear_distillation_loss(
        h_s, w_s, h_t, w_t, temperature=TEMPERATURE, chunk_size=chunk
      )
  elif variant == "recompute":

    def loss(h_s, w_s, h_t, w_t):
      per_token = jaxkl.fused_linear_distillation_loss(
        h_s, w_s, h_t, w_t, temperature=TEMPERATURE, chunk_size=chunk, reduction="none"
      )
      return jnp.mean(per_token)
  elif variant == "checkpoint":

    def loss(h_s, w_s, h_t, w_t):
      n = h_s.shape[0]
      if n % chunk:
        raise ValueError("the checkpoint variant needs chunk | N")

      @jax.checkpoint
      def body(total, rows):
        hs_c, ht_c = rows
        per_token = _logits.divergence_from_logits(
          hs_c @ w_s, ht_c @ jax.lax.stop_gradient(w_t), temperature=TEMPERATURE
        )
        return total + jnp.sum(per_token), None

      rows = (
        h_s.reshape(n // chunk, chunk, -1),
        jax.lax.stop_gradient(h_t).reshape(n // chunk, chunk, -1),
      )
      total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), rows)
      return total * (TEMPERATURE**2 / n)
  else:
    raise ValueError(f"unknown variant {variant!r}")
  return loss


def _inputs(n, hidden, vocab, seed):
  """Hidden states of unit variance, weights of variance 1/H (float32).

  The values are pseudo-random (uniform, from the classic ``sin`` hash
  ``frac(43758.5453 sin(12.9898 i + 78.233 j + c))``), computed by one XLA
  loop per array straight into its buffer: generating them with
  ``jax.random`` or NumPy left up to a few hundred MiB of transients in the
  process' peak RSS, which would blur the comparison.
  """
  import jax
  import jax.numpy as jnp
  from jax import lax

  @functools.partial(jax.jit, static_argnums=(0, 1, 2))
  def pseudo_random(shape, offset, scale):
    i = lax.broadcasted_iota(jnp.float32, shape, 0)
    j = lax.broadcasted_iota(jnp.float32, shape, 1)
    u = jnp.sin(i * 12.9898 + j * 78.233 + offset) * 43758.5453
    return (u - jnp.floor(u) - 0.5) * (12**0.5 * scale)

  arrays = []
  for k, (shape, scale) in enumerate(
    (
      ((n, hidden), 1.0),
      ((hidden, vocab), hidden**-0.5),
      ((n, hidden), 1.0),
      ((hidden, vocab), hidden**-0.5),
    )
  ):
    offset = 37.719 * (4 * seed + k + 1)
    arrays.append(pseudo_random(shape, offset, scale).block_until_ready())
  return tuple(arrays)


def _check(variant, chunk) -> str:
  """Compares a variant with the baseline on a small problem."""
  import jax
  import numpy as np

  args = _inputs(300, 64, 1000, seed=1)
  small_chunk = 50 if variant == "checkpoint" else 64

  def grad(f):
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(*args)

  v_ref, g_ref = grad(_losses("baseline", 0))
  v, g = grad(_losses(variant, small_chunk))
  errors = [abs(float(v) - float(v_ref)) / abs(float(v_ref))]
  for a, b in zip(g, g_ref, strict=False):
    errors.append(float(np.max(np.abs(a - b)) / np.max(np.abs(b))))
  worst = max(errors)
  if worst > CHECK_RTOL:
    raise SystemExit(f"{variant}: mismatch with the baseline: {errors}")
  return f"{variant} vs baseline (N=300, H=64, V=1000): max rel diff {worst:.1e}"


def interleaved(args) -> dict:
  """Baseline and fused steps alternating in one process (times only).

  On a shared machine the load changes between the per-variant processes;
  here both see the same load. Rounds alternate the order.
  """
  import jax

  inputs = _inputs(args.tokens, args.hidden, args.vocab, args.seed)
  steps = {}
  for variant, chunk in (("baseline", 0), ("fused", args.chunk)):
    steps[variant] = (
      jax.jit(jax.value_and_grad(_losses(variant, chunk), argnums=(0, 1)))
      .lower(*inputs)
      .compile()
    )
    jax.block_until_ready(steps[variant](*inputs))  # first step
  times = {variant: [] for variant in steps}
  for r in range(args.steps):
    for variant in list(steps) if r % 2 == 0 else list(steps)[::-1]:
      start = time.perf_counter()
      out = jax.block_until_ready(steps[variant](*inputs))
      times[variant].append(time.perf_counter() - start)
      del out
  return {
    "interleaved": {
      variant: {"times_s": t, "median_s": statistics.median(t), "min_s": min(t)}
      for variant, t in times.items()
    },
    "chunk": args.chunk,
    "loadavg_1min_at_end": os.getloadavg()[0],
  }


def worker(args) -> None:
  import jax

  if args.check:
    print(json.dumps({"check": _check(args.variant, args.chunk)}))
    return
  if args.variant == "interleaved":
    print(json.dumps(interleaved(args)))
    return
  rss_start = _current_rss_mib()
  inputs = _inputs(args.tokens, args.hidden, args.vocab, args.seed)
  rss_inputs = _current_rss_mib()
  loss = _losses(args.variant, args.chunk)
  start = time.perf_counter()
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*inputs).compile()
  compile_s = time.perf_counter() - start
  peak_compile = _peak_rss_mib()
  memory = step.memory_analysis()
  start = time.perf_counter()
  jax.block_until_ready(step(*inputs))  # first step
  first_s = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    out = jax.block_until_ready(step(*inputs))
    times.append(time.perf_counter() - start)
    value = float(out[0])
    del out  # no step's outputs are alive during the next step
  print(
    json.dumps(
      {
        "variant": args.variant,
        "chunk": args.chunk,
        "value": value,
        "rss_start_mib": rss_start,
        "rss_after_inputs_mib": rss_inputs,
        "peak_rss_after_compile_mib": peak_compile,
        "xla_temp_mib": memory.temp_size_in_bytes / 2**20,
        "compile_s": compile_s,
        "peak_rss_self_mib": _peak_rss_mib(),
        "first_call_s": first_s,
        "loadavg_1min_at_end": os.getloadavg()[0],
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
      }
    )
  )


# --------------------------------------------------------------------------- #
# Parent process.
# --------------------------------------------------------------------------- #
def run_child(args, variant: str, chunk: int, check: bool = False) -> dict:
  """Runs one variant in a fresh interpreter; returns its report and peak RSS.

  With ``check``, the child only compares the variant with the baseline on a
  small problem (a separate process, so that it does not add to the peak RSS
  of the measured one).
  """
  cmd = [
    sys.executable,
    __file__,
    "--worker",
    variant,
    "--chunk",
    str(chunk),
    *(["--check"] if check else []),
    "--tokens",
    str(args.tokens),
    "--hidden",
    str(args.hidden),
    "--vocab",
    str(args.vocab),
    "--steps",
    str(args.steps),
    "--seed",
    str(args.seed),
  ]
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
    # os.wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the
    # maximum over every child so far).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  if proc.returncode != 0:
    tail = stderr.strip().splitlines()[-5:]
    return {
      "variant": variant,
      "chunk": chunk,
      "error": f"exit status {proc.returncode}: " + " | ".join(tail),
      "peak_rss_mib": usage.ru_maxrss / 1024,
    }
  report = json.loads(stdout.strip().splitlines()[-1])
  report["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
  return report


def environment() -> dict:
  import _common  # benchmarks/_common.py; imports jax, hence here

  return _common.environment()


def render_markdown(args, env, rows, ratios, checks, together) -> str:
  n, h, v = args.tokens, args.hidden, args.vocab
  out = ["# Fused linear distillation loss benchmark", ""]
  out.append(
    f"Problem: N={n} tokens, H={h} (student and teacher), V={v}, float32; "
    f"`jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))` of the forward-KL "
    f"distillation loss (T={TEMPERATURE:g}, reduction 'mean') with respect "
    f"to the student's hidden states and weight; the teacher is frozen. One "
    f"`[N, V]` float32 array is {n * v * 4 / 2**20:.0f} MiB; the four "
    f"inputs are {(2 * n * h + 2 * h * v) * 4 / 2**20:.0f} MiB and the two "
    f"gradients {(n * h + h * v) * 4 / 2**20:.0f} MiB. Each row is a fresh "
    f"process (see the script's docstring); step times are the median (min)"
    f" of {args.steps} steps after the first call, compilation excluded."
  )
  out += ["", "## Environment", ""]
  out += [f"- {k}: {val}" for k, val in env.items()]
  out += ["", "## Sanity (small problem, separate processes)", ""]
  out += [f"- {c}" for c in checks] or ["- (skipped)"]
  out += ["", "## Results", ""]
  out.append(
    "| variant | chunk | peak RSS MiB | RSS after inputs MiB "
    "| peak - after inputs MiB | XLA temp MiB "
    "| step s: median (min) | first step s | load at end "
    "| peak RSS / baseline | median time / baseline |"
  )
  out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  base = next(
    (r for r in rows if r["variant"] == "baseline" and "error" not in r), None
  )
  for r in rows:
    chunk = "-" if r["variant"] == "baseline" else str(r["chunk"])
    if "error" in r:
      out.append(
        f"| {r['variant']} | {chunk} | {r['peak_rss_mib']:.0f} "
        f"| | | | failed: {r['error']} | | | | |"
      )
      continue
    mem_ratio = f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}" if base else ""
    time_ratio = f"{r['median_s'] / base['median_s']:.2f}" if base else ""
    out.append(
      f"| {r['variant']} | {chunk} | {r['peak_rss_mib']:.0f} "
      f"| {r['rss_after_inputs_mib']:.0f} "
      f"| {r['peak_rss_mib'] - r['rss_after_inputs_mib']:.0f} "
      f"| {r['xla_temp_mib']:.0f} "
      f"| {r['median_s']:.2f} ({r['min_s']:.2f}) | {r['first_call_s']:.2f} "
      f"| {r['loadavg_1min_at_end']:.1f} | {mem_ratio} | {time_ratio} |"
    )
  if together:
    out += ["", f"## Interleaved timing (one process, chunk {together['chunk']})", ""]
    out.append(
      "Baseline and fused steps alternate in one process (rounds "
      "reverse the order), so that both see the same machine load; "
      f"load at the end: {together['loadavg_1min_at_end']:.1f}."
    )
    out += ["", "| variant | step s: median (min) | all steps s |", "|---|---:|---|"]
    for variant, t in together["interleaved"].items():
      out.append(
        f"| {variant} | {t['median_s']:.2f} ({t['min_s']:.2f}) | "
        + ", ".join(f"{x:.2f}" for x in t["times_s"])
        + " |"
      )
  out += [
    "",
    f"## Targets (fused at chunk {args.target_chunk} against the baseline)",
    "",
  ]
  for r in ratios:
    verdict = "PASS" if r["pass"] else "FAIL"
    if r.get("informative"):
      verdict += " (not the checked ratio: the load differs between processes)"
    out.append(
      f"- {r['name']} = {r['value']:.3f} (target <= {r['target']:g}): {verdict}"
    )
  if not ratios:
    out.append("- not computed (a run failed)")
  return "\n".join(out) + "\n"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tokens", type=int, default=8192)
  p.add_argument("--hidden", type=int, default=1024)
  p.add_argument("--vocab", type=int, default=32768)
  p.add_argument(
    "--chunks",
    type=int,
    nargs="+",
    default=[512, 1024],
    help="chunk sizes for the 'fused' variant",
  )
  p.add_argument(
    "--target-chunk",
    type=int,
    default=None,
    help="chunk size of the 'fused' row checked against the "
    "targets, and of the 'recompute' and 'checkpoint' "
    "rows (default: the first of --chunks)",
  )
  p.add_argument(
    "--variants", nargs="+", default=["baseline", "fused", "recompute", "checkpoint"]
  )
  p.add_argument("--steps", type=int, default=2)
  p.add_argument(
    "--interleaved-steps",
    type=int,
    default=2,
    help="steps of each of baseline and fused (target chunk) "
    "alternating in one process, for the time ratio; 0 "
    "skips it",
  )
  p.add_argument(
    "--skip-check",
    action="store_true",
    help="skip the small-problem comparison with the baseline",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--output",
    type=Path,
    default=None,
    help="Markdown path (default benchmarks/results/"
    "fused_linear_<backend>.md); the JSON goes next to it",
  )
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.variant = args.worker
  if args.target_chunk is None:
    args.target_chunk = args.chunks[0]
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    worker(args)
    return 0
  env = environment()
  for k, val in env.items():
    print(f"{k}: {val}")
  checks = []
  for variant in args.variants:
    if variant != "baseline" and not args.skip_check:
      result = run_child(args, variant, args.chunks[0], check=True)
      if "error" in result:
        print(f"SANITY CHECK FAILED: {result['error']}", file=sys.stderr)
        return 1
      checks.append(result["check"])
      print(result["check"], flush=True)
  rows = []
  for variant in args.variants:
    chunks = {"baseline": [0], "fused": args.chunks}.get(variant, [args.target_chunk])
    for chunk in chunks:
      row = run_child(args, variant, chunk)
      rows.append(row)
      print(
        json.dumps({k: val for k, val in row.items() if k != "times_s"}), flush=True
      )
  together = None
  if args.interleaved_steps:
    together = run_child(
      argparse.Namespace(**{**vars(args), "steps": args.interleaved_steps}),
      "interleaved",
      args.target_chunk,
    )
    print(json.dumps(together), flush=True)
    if "error" in together:
      together = None
  base = next(
    (r for r in rows if r["variant"] == "baseline" and "error" not in r), None
  )
  fused = next(
    (
      r
      for r in rows
      if r["variant"] == "fused"
      and r["chunk"] == args.target_chunk
      and "error" not in r
    ),
    None,
  )
  ratios = []
  if base and fused:
    ratios.append(
      {
        "name": "fused peak RSS / baseline peak RSS",
        "value": fused["peak_rss_mib"] / base["peak_rss_mib"],
        "target": 0.25,
      }
    )
    if together:
      times = together["interleaved"]
      ratios.append(
        {
          "name": "fused median step time / baseline (interleaved, one process)",
          "value": times["fused"]["median_s"] / times["baseline"]["median_s"],
          "target": 1.5,
        }
      )
    ratios.append(
      {
        "name": "fused median step time / baseline (separate "
        "processes" + (", for information)" if together else ")"),
        "value": fused["median_s"] / base["median_s"],
        "target": 1.5,
        "informative": bool(together),
      }
    )
    for r in ratios:
      r["pass"] = r["value"] <= r["target"]
  md = render_markdown(args, env, rows, ratios, checks, together)
  print("\n" + md.split("## Results\n\n", 1)[1])
  import jax

  output = args.output or RESULTS_DIR / f"fused_linear_{jax.default_backend()}.md"
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(md, encoding="utf-8")
  json_path = output.with_suffix(".json")
  json_path.write_text(
    json.dumps(
      {
        "problem": {
          "tokens": args.tokens,
          "hidden": args.hidden,
          "vocab": args.vocab,
          "dtype": "float32",
          "temperature": TEMPERATURE,
          "reduction": "mean",
          "divergence": "forward",
          "steps": args.steps,
          "seed": args.seed,
          "chunks": args.chunks,
          "target_chunk": args.target_chunk,
        },
        "environment": env,
        "results": rows,
        "interleaved": together,
        "ratios": ratios,
      },
      indent=2,
    )
    + "\n",
    encoding="utf-8",
  )
  print(f"wrote {output}\nwrote {json_path}")
  checked = [r for r in ratios if not r.get("informative")]
  return 0 if checked and all(r["pass"] for r in checked) else 1


if __name__ == "__main__":
  sys.exit(main())
