"""Benchmark ``jaxkl.fused_linear_distillation_loss`` against materialized logits.

What it measures
----------------
One training-step-like computation on the default JAX backend (CPU here, or a
GPU): the distillation loss (``--divergence`` forward KL, reverse KL or JSD
with beta 0.5; temperature 2, ``'mean'``) of a student head ``h_s @ W_s``
against a frozen teacher head ``h_t @ W_t`` and its gradient with respect to
``h_s`` and ``W_s``, i.e. ``jax.jit(jax.value_and_grad(loss, argnums=(0,
1)))``, with float32 (default) or bfloat16 (``--dtype``) inputs, for these
variants:

1. ``baseline``   -- ``jaxkl.distillation_loss(s, t, ...)`` with the logits
   ``s = h_s @ W_s`` and ``t = h_t @ W_t`` materialized in float32
   (``preferred_element_type``: the same float32 accumulation as the fused
   loss, also for bfloat16 inputs); ``[N, V]`` logits, softmaxes and
   gradients exist at once.
2. ``fused``      -- ``jaxkl.fused_linear_distillation_loss(...,
   chunk_size=C, vocab_chunk=K)`` for each ``C`` in ``--chunks`` and ``K`` in
   ``--vocab-chunk``; by default only the library's automatic choice
   (``chunk_size='auto', vocab_chunk='auto'``), which is what is checked
   against the targets.
3. ``recompute``  -- the same function with ``reduction='none'`` followed by
   ``jnp.mean`` outside: its backward pass recomputes the logits chunk by
   chunk (what any per-token cotangent requires).
4. ``checkpoint`` -- the alternative design: ``lax.scan`` over token chunks
   whose body (the per-row code of ``jaxkl.distillation_loss`` on ``[C, V]``
   logits) is wrapped in ``jax.checkpoint``, differentiated by JAX's autodiff.

Variants 3 and 4 run at the target configuration only (``checkpoint`` needs
an integer chunk that divides N; with ``'auto'`` it uses 512) and only when
named in ``--variants`` (default: ``baseline fused``). Tables show what
``'auto'`` resolved to, e.g. ``auto (1024)``, where jaxkl has its
``chunk_sizes`` rule.

Memory. Each (variant, configuration) runs in a fresh Python subprocess, so
that its peak is its own. On CPU the parent reads the child's peak resident
set size (RSS) from ``os.wait4``'s ``ru_maxrss`` (kernel-reported); on a GPU
the child reads ``jax.devices()[0].memory_stats()['peak_bytes_in_use']``. The
child also reports the memory in use after creating the inputs (on CPU: the
Python + JAX runtime and the input arrays), and XLA's own estimates for the
compiled step (``compiled.memory_analysis()``: temporary buffers and outputs).
The checked memory ratio is that of the *working sets*, (peak - in use after
the inputs) of fused / baseline: the memory the step itself needs. It
includes the step's outputs, i.e. the ``[H, V]`` weight gradient, which no
implementation can avoid; the ratio without the outputs (XLA's output size
subtracted) and the ratio of the whole peaks are printed for information.

Time. Compilation is done ahead of time and excluded; each process times
``--steps`` steps after the first call (``--steps 0``: the first call only).
Because the load of this shared machine changes from one process to the next,
the time ratio that is checked comes from one more process in which baseline
and fused (target configuration) steps alternate, ``--interleaved-steps`` of
each after ``--interleaved-warmup`` untimed calls of each (rounds reverse the
order); its median ratio is checked, the separate processes' ratio is printed
for information (with ``--interleaved-steps 0`` it is the checked one).

Sanity. Before the measurements, each non-baseline variant's value and
gradients are compared with the baseline's on a small problem (``N=300,
H=64, V=1000``, with a small chunk and, unless ``--vocab-chunk none``, a
vocabulary chunk of 384 that does not divide V; and with the ``'auto'``
settings when they are requested), in a separate process; a mismatch beyond
1e-4 relative (float32, matmuls at 'highest' precision; 1e-2 for bfloat16,
whose gradients are rounded to bfloat16) stops the run.

Targets (fused at the target configuration against the baseline), for
``--divergence`` forward, reverse and jsd alike:

* working-set ratio <= ``--memory-target`` (default 0.05, the target at the
  big CPU shapes below);
* median step time ratio (interleaved) <= ``--time-target`` (default 0.8).

``--grid small`` instead runs the small-N grid: N = 256, 1024, 4096 at
H = 1024, V = 32768 (``--grid-tokens`` to change), forward KL by default, one
process per N in which the baseline and the fused loss (``'auto'``)
alternate for ``--grid-steps`` steps each after one warm-up call; target
fused / baseline median time <= 1.0 per row (``--time-target`` does not
apply). XLA's temp sizes of both are reported. Results go to
``benchmarks/results/fused_linear_grid_<backend>.md`` and ``.json``.

``--plan`` compiles every requested variant from abstract shapes (nothing
is allocated or run, a few seconds per variant) and prints XLA's memory
estimates: a check that the baseline fits in memory before a long run.

Memory guard. After compiling, a process whose step would need more than is
available (``MemAvailable``; the device's free memory on a GPU), by XLA's
estimate (temporaries + outputs) times 1.4, does not run it: its row says
"skipped", no interleaved process runs, and the fused working set is
compared with the baseline's XLA estimate for information
(``--no-memory-guard`` runs it anyway). The factor is measured: the forward
baseline's working set at 8192 x 1024 x 131072 was 1.36x XLA's estimate on
CPU; on a shared machine a step killed for lack of memory may take other
processes with it.

The exit status is 0 if every checked ratio passes.

Shapes and expected durations (float32, this 2-core shared CPU, 24 GB)
--------------------------------------------------------------------------
XLA's estimates (``--plan``, compiled for the CPU; temporaries + outputs,
GiB) of the materialized baseline; the fused loss with ``'auto'`` sizes needs
0.6-1.2 GiB at the float32 shapes, most of it the weight gradient (7.2 GiB
at the bfloat16 one, as compiled for the CPU):

============================  =======  =======  =====
shape                         forward  reverse  JSD
============================  =======  =======  =====
8192 x 1024 x 131072 (f32)    12.5     24.5     40.5
2048 x 1024 x 262144 (f32)     7.0     15.0     23.0
8192 x 4096 x 128256 (bf16)   14.9     26.5     42.1
============================  =======  =======  =====

So on this 24 GB machine the forward baseline runs at both shapes, reverse
at the second only if the machine is otherwise idle (1.4 x 15.0 GiB against
about 21 GiB available; the memory guard decides), JSD at neither.

* Default: N=8192, H=1024, V=32768 (4 GiB of [N, V] buffers in the
  baseline): about 50-80 s per baseline step; 10-15 min for the default run.
* ``--preset cpu-131k``: 8192 x 1024 x 131072, the issue's first shape. The
  forward-KL baseline peaks at 18.8 GB RSS; a baseline step takes 3 min on
  the idle machine and up to 10 min under load (first call 4-7 min), the old
  fused loss (chunk 512) 2-4 min. With ``--steps 0 --interleaved-steps 1
  --interleaved-warmup 0`` a divergence costs 2 baseline and 2 fused steps
  plus compilation: 15-40 min for forward; a skipped baseline costs only its
  compilation, so reverse and JSD add 2 fused steps each (5-15 min). Run
  nothing else meanwhile.
* ``--preset cpu-262k``: 2048 x 1024 x 262144, the issue's second shape:
  half the matmul work and [N, V] size of the first, about half the time.
  Its weight gradient alone ([H, V] float32, 1 GiB) is 10-15% of the
  baseline's working set, so a working-set ratio <= 0.05 cannot be reached
  there; the ratio without outputs is printed beside it.
* ``--grid small``: 3 processes, about 4-6 min with the default 3 steps (the
  N=4096 process is most of it; N=256 takes 30 s).
* ``--preset gpu``: 8192 x 4096 x 128256, bfloat16 (the Liger-Kernel
  comparison shape: 3.5x faster than torch with 84% less memory at BT=8192,
  V=128256 on an H100); seconds per process on an H100/H200 (compilation
  dominates), for ``benchmarks/gpu.sh``.

Output: a Markdown table per divergence and the ratios with PASS/FAIL,
printed and written to ``benchmarks/results/fused_linear_<backend>.md`` (or
``--output``) and a ``.json`` beside it.

How to run
----------
    . .venv/bin/activate
    python benchmarks/bench_fused_linear.py                 # defaults
    python benchmarks/bench_fused_linear.py --plan --preset cpu-131k \\
        --divergence all                                    # seconds
    python benchmarks/bench_fused_linear.py --preset cpu-131k --divergence all \\
        --steps 0 --interleaved-steps 1 --interleaved-warmup 0 \\
        --output benchmarks/results/fused_linear_cpu_v131072.md
    python benchmarks/bench_fused_linear.py --preset cpu-262k --divergence all \\
        --steps 0 --interleaved-steps 1 --interleaved-warmup 0 \\
        --output benchmarks/results/fused_linear_cpu_v262144.md
    python benchmarks/bench_fused_linear.py --grid small
    python benchmarks/bench_fused_linear.py --tokens 512 --hidden 64 \\
        --vocab 4096 --chunks auto 128 --vocab-chunk auto none \\
        --variants baseline fused recompute checkpoint \\
        --output /tmp/fused_smoke.md                        # a quick smoke run
"""

from __future__ import annotations

import argparse
import functools
import inspect
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
CHECK_RTOL = {"float32": 1e-4, "bfloat16": 1e-2}
DIVERGENCES = ("forward", "reverse", "jsd")
CHECKPOINT_DEFAULT_CHUNK = 512
GUARD_FACTOR = 1.4  # measured working set / XLA's estimate (see _memory_guard)
PRESETS = {
  # name: (tokens, hidden, vocab, dtype)
  "cpu-131k": (8192, 1024, 131072, "float32"),
  "cpu-262k": (2048, 1024, 262144, "float32"),
  "gpu": (8192, 4096, 128256, "bfloat16"),
}
GRIDS = {"small": (256, 1024, 4096)}
GRID_HIDDEN, GRID_VOCAB, GRID_TIME_TARGET = 1024, 32768, 1.0


# --------------------------------------------------------------------------- #
# Configuration values: chunk sizes are an int, 'auto' or (vocabulary) None.
# --------------------------------------------------------------------------- #
def parse_size(text: str):
  """``'auto'`` -> ``'auto'``, ``'none'`` -> ``None``, digits -> int."""
  low = str(text).lower()
  if low == "auto":
    return "auto"
  if low == "none":
    return None
  value = int(low)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"a chunk size must be > 0, got {text}")
  return value


def show_size(value) -> str:
  return "none" if value is None else str(value)


def _fused_kwargs(chunk, vocab_chunk) -> dict:
  """``chunk_size`` and ``vocab_chunk`` for the installed jaxkl.

  A jaxkl without the ``vocab_chunk`` argument only runs ``--vocab-chunk
  none``.
  """
  import jaxkl

  params = inspect.signature(jaxkl.fused_linear_distillation_loss).parameters
  if "vocab_chunk" in params:
    return {"chunk_size": chunk, "vocab_chunk": vocab_chunk}
  if vocab_chunk is not None:
    raise SystemExit(
      "this jaxkl's fused_linear_distillation_loss has no vocab_chunk "
      "argument: run with --vocab-chunk none"
    )
  return {"chunk_size": chunk}


def _resolved(n, vocab, chunk, vocab_chunk) -> dict:
  """What ``'auto'`` resolves to, from jaxkl's ``chunk_sizes`` if it has one."""
  import jax.numpy as jnp

  import jaxkl

  module = getattr(jaxkl, "_fused_linear", None)
  rule = getattr(jaxkl, "chunk_sizes", None) or getattr(module, "chunk_sizes", None)
  if rule is None or "auto" not in (chunk, vocab_chunk):
    return {}
  rows, block = rule(
    n, vocab, chunk_size=chunk, vocab_chunk=vocab_chunk, dtype=jnp.float32
  )
  return {"resolved_chunk": rows, "resolved_vocab_chunk": block}


# --------------------------------------------------------------------------- #
# Child process: one variant.
# --------------------------------------------------------------------------- #
def _current_rss_mib() -> float:
  with open("/proc/self/statm", encoding="ascii") as f:
    pages = int(f.read().split()[1])
  return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def _device_memory_mib() -> dict | None:
  """``{'in_use', 'peak'}`` in MiB from the device's allocator, or None.

  None on CPU, whose client keeps no such statistics.
  """
  import jax

  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # platforms without the statistics
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return {
    "in_use": stats["bytes_in_use"] / 2**20,
    "peak": stats["peak_bytes_in_use"] / 2**20,
  }


def _losses(variant: str, chunk, vocab_chunk, divergence: str):
  """The loss function of a variant: (h_s, w_s, h_t, w_t) -> scalar."""
  import jax
  import jax.numpy as jnp

  import jaxkl
  from jaxkl import _logits

  def logits(h, w):
    return jnp.matmul(h, w, preferred_element_type=jnp.float32)

  if variant == "baseline":

    def loss(h_s, w_s, h_t, w_t):
      return jaxkl.distillation_loss(
        logits(h_s, w_s),
        logits(h_t, w_t),
        temperature=TEMPERATURE,
        divergence=divergence,
      )
  elif variant in ("fused", "recompute"):
    kwargs = _fused_kwargs(chunk, vocab_chunk)
    reduction = "mean" if variant == "fused" else "none"

    def loss(h_s, w_s, h_t, w_t):
      value = jaxkl.fused_linear_distillation_loss(
        h_s,
        w_s,
        h_t,
        w_t,
        temperature=TEMPERATURE,
        divergence=divergence,
        reduction=reduction,
        **kwargs,
      )
      return value if variant == "fused" else jnp.mean(value)
  elif variant == "checkpoint":
    rows_per_chunk = chunk if isinstance(chunk, int) else CHECKPOINT_DEFAULT_CHUNK

    def loss(h_s, w_s, h_t, w_t):
      n = h_s.shape[0]
      if n % rows_per_chunk:
        raise ValueError("the checkpoint variant needs chunk | N")

      @jax.checkpoint
      def body(total, rows):
        hs_c, ht_c = rows
        per_token = _logits.divergence_from_logits(
          logits(hs_c, w_s),
          logits(ht_c, jax.lax.stop_gradient(w_t)),
          temperature=TEMPERATURE,
          divergence=divergence,
        )
        return total + jnp.sum(per_token), None

      rows = (
        h_s.reshape(n // rows_per_chunk, rows_per_chunk, -1),
        jax.lax.stop_gradient(h_t).reshape(n // rows_per_chunk, rows_per_chunk, -1),
      )
      total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), rows)
      return total * (TEMPERATURE**2 / n)
  else:
    raise ValueError(f"unknown variant {variant!r}")
  return loss


def _shapes(n, hidden, vocab):
  """Shapes and scales of (h_s, W_s, h_t, W_t)."""
  return (
    ((n, hidden), 1.0),
    ((hidden, vocab), hidden**-0.5),
    ((n, hidden), 1.0),
    ((hidden, vocab), hidden**-0.5),
  )


def _inputs(n, hidden, vocab, seed, dtype="float32"):
  """Hidden states of unit variance, weights of variance 1/H, in ``dtype``.

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
    return ((u - jnp.floor(u) - 0.5) * (12**0.5 * scale)).astype(dtype)

  arrays = []
  for k, (shape, scale) in enumerate(_shapes(n, hidden, vocab)):
    offset = 37.719 * (4 * seed + k + 1)
    arrays.append(pseudo_random(shape, offset, scale).block_until_ready())
  return tuple(arrays)


def _step(variant, chunk, vocab_chunk, divergence, inputs):
  """The compiled step (value and gradients w.r.t. h_s and W_s)."""
  import jax

  loss = _losses(variant, chunk, vocab_chunk, divergence)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*inputs).compile()


def _xla_memory(compiled) -> dict:
  memory = compiled.memory_analysis()
  if memory is None:  # a backend without the analysis
    return {}
  return {
    "xla_temp_mib": memory.temp_size_in_bytes / 2**20,
    "xla_output_mib": memory.output_size_in_bytes / 2**20,
    "xla_argument_mib": memory.argument_size_in_bytes / 2**20,
  }


def _available_mib() -> float | None:
  """Memory a step can still take: the device's free memory on a GPU, the
  system's ``MemAvailable`` on CPU (None if unknown)."""
  import jax

  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # platforms without the statistics
    stats = None
  if stats and "bytes_limit" in stats:
    return (stats["bytes_limit"] - stats["bytes_in_use"]) / 2**20
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def _memory_guard(args, variant, memory) -> str | None:
  """Why a step that would not fit in memory is not run (None: run it).

  XLA's outputs + temp estimate is a lower bound (the forward-KL baseline's
  working set at 8192 x 1024 x 131072 was 1.36x it on CPU), hence the
  factor: a step killed for lack of memory after minutes of work may, on a
  shared machine, take other processes with it.
  """
  if args.no_memory_guard or "xla_temp_mib" not in memory:
    return None
  need = GUARD_FACTOR * (memory["xla_temp_mib"] + memory["xla_output_mib"])
  available = _available_mib()
  if available is not None and need > available:
    return (
      f"skipped {variant}: needs about {need:.0f} MiB ({GUARD_FACTOR} x XLA's "
      f"temporaries + outputs), {available:.0f} MiB available "
      f"(--no-memory-guard to try)"
    )
  return None


def _check(args) -> list[str]:
  """Compares a variant with the baseline on a small problem."""
  import jax
  import numpy as np

  small = (300, 64, 1000)
  inputs = _inputs(*small, seed=1, dtype=args.dtype)
  configs = []
  if args.variant == "checkpoint":
    configs.append((50, None))
  else:
    configs.append((64, None if args.vchunk is None else 384))
    if "auto" in (args.chunk, args.vchunk):
      configs.append((args.chunk, args.vchunk))

  def run(variant, chunk, vocab_chunk):
    # Full float32 matmuls: a GPU's default (TF32) would blur the comparison,
    # which is about the algorithm.
    with jax.default_matmul_precision("highest"):
      out = _step(variant, chunk, vocab_chunk, args.divergence, inputs)(*inputs)
    value, grads = out
    return float(value), [np.asarray(g, np.float64) for g in grads]

  v_ref, g_ref = run("baseline", None, None)
  lines = []
  for chunk, vocab_chunk in configs:
    v, g = run(args.variant, chunk, vocab_chunk)
    errors = [abs(v - v_ref) / abs(v_ref)]
    errors += [
      float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
      for a, b in zip(g, g_ref, strict=True)
    ]
    worst = max(errors)
    where = f"chunk {show_size(chunk)}, vocab chunk {show_size(vocab_chunk)}"
    if not worst <= CHECK_RTOL[args.dtype]:
      raise SystemExit(
        f"{args.variant} ({where}, {args.divergence}): mismatch with the "
        f"baseline (value, d h_s, d W_s relative errors): {errors}"
      )
    lines.append(
      f"{args.variant} ({where}) vs baseline, {args.divergence}, {args.dtype}"
      f" (N={small[0]}, H={small[1]}, V={small[2]}): max rel diff {worst:.1e}"
    )
  return lines


def interleaved(args) -> dict:
  """Baseline and fused steps alternating in one process (times only).

  On a shared machine the load changes between the per-variant processes;
  here both see the same load. Rounds alternate the order.
  """
  import jax

  inputs = _inputs(args.tokens, args.hidden, args.vocab, args.seed, args.dtype)
  steps, memory = {}, {}
  for variant, chunk, vocab_chunk in (
    ("baseline", None, None),
    ("fused", args.chunk, args.vchunk),
  ):
    steps[variant] = _step(variant, chunk, vocab_chunk, args.divergence, inputs)
    memory[variant] = _xla_memory(steps[variant])
    skipped = _memory_guard(args, variant, memory[variant])
    if skipped:
      raise SystemExit(skipped)
  for _ in range(args.warmup):
    for step in steps.values():
      jax.block_until_ready(step(*inputs))
  times = {variant: [] for variant in steps}
  for r in range(args.steps):
    for variant in list(steps) if r % 2 == 0 else list(steps)[::-1]:
      start = time.perf_counter()
      out = jax.block_until_ready(steps[variant](*inputs))
      times[variant].append(time.perf_counter() - start)
      del out
  return {
    "interleaved": {
      variant: {
        "times_s": t,
        "median_s": statistics.median(t),
        "min_s": min(t),
        **memory[variant],
      }
      for variant, t in times.items()
    },
    "tokens": args.tokens,
    "chunk": args.chunk,
    "vocab_chunk": args.vchunk,
    **_resolved(args.tokens, args.vocab, args.chunk, args.vchunk),
    "warmup": args.warmup,
    "loadavg_1min_at_end": os.getloadavg()[0],
  }


def worker(args) -> None:
  import jax

  if args.check:
    print(json.dumps({"check": _check(args)}))
    return
  if args.variant == "interleaved":
    print(json.dumps(interleaved(args)))
    return
  rss_start = _current_rss_mib()
  inputs = _inputs(args.tokens, args.hidden, args.vocab, args.seed, args.dtype)
  rss_inputs = _current_rss_mib()
  device_inputs = _device_memory_mib()
  start = time.perf_counter()
  step = _step(args.variant, args.chunk, args.vchunk, args.divergence, inputs)
  compile_s = time.perf_counter() - start
  peak_compile = _peak_rss_mib()
  memory = _xla_memory(step)
  skipped = _memory_guard(args, args.variant, memory)
  if skipped:
    print(json.dumps({"skipped": skipped, **memory}))
    return
  start = time.perf_counter()
  out = jax.block_until_ready(step(*inputs))  # first step
  first_s = time.perf_counter() - start
  value = float(out[0])
  del out
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    out = jax.block_until_ready(step(*inputs))
    times.append(time.perf_counter() - start)
    value = float(out[0])
    del out  # no step's outputs are alive during the next step
  timed = times or [first_s]
  report = {
    "variant": args.variant,
    "chunk": args.chunk,
    "vocab_chunk": args.vchunk,
    **(
      _resolved(args.tokens, args.vocab, args.chunk, args.vchunk)
      if args.variant in ("fused", "recompute")
      else {}
    ),
    "value": value,
    "rss_start_mib": rss_start,
    "rss_after_inputs_mib": rss_inputs,
    "peak_rss_after_compile_mib": peak_compile,
    **memory,
    "compile_s": compile_s,
    "peak_rss_self_mib": _peak_rss_mib(),
    "first_call_s": first_s,
    "loadavg_1min_at_end": os.getloadavg()[0],
    "times_s": times,
    "median_s": statistics.median(timed),
    "min_s": min(timed),
    "timed_first_call_only": not times,
  }
  device_end = _device_memory_mib()
  if device_inputs is not None and device_end is not None:
    report["device_after_inputs_mib"] = device_inputs["in_use"]
    report["device_peak_mib"] = device_end["peak"]
  print(json.dumps(report))


# --------------------------------------------------------------------------- #
# Parent process.
# --------------------------------------------------------------------------- #
def run_child(args, variant: str, chunk, vocab_chunk, check: bool = False) -> dict:
  """Runs one variant in a fresh interpreter; returns its report and peak RSS.

  With ``check``, the child only compares the variant with the baseline on a
  small problem (a separate process, so that it does not add to the peak RSS
  of the measured one).
  """
  # fmt: off
  cmd = [
    sys.executable, __file__, "--worker", variant,
    "--chunk", show_size(chunk), "--vchunk", show_size(vocab_chunk),
    *(["--check"] if check else []),
    "--divergence", args.divergence_now, "--dtype", args.dtype,
    "--tokens", str(args.tokens), "--hidden", str(args.hidden),
    "--vocab", str(args.vocab), "--steps", str(args.steps),
    "--interleaved-warmup", str(args.interleaved_warmup),
    "--seed", str(args.seed),
    *(["--no-memory-guard"] if args.no_memory_guard else []),
  ]
  # fmt: on
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
      "vocab_chunk": vocab_chunk,
      "error": f"exit status {proc.returncode}: " + " | ".join(tail),
      "peak_rss_mib": usage.ru_maxrss / 1024,
    }
  report = json.loads(stdout.strip().splitlines()[-1])
  report["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
  if "skipped" in report:  # too big for the memory (see _memory_guard)
    report.update(variant=variant, chunk=chunk, vocab_chunk=vocab_chunk)
    report["error"] = report["skipped"]
    return report
  if not check and variant != "interleaved":
    # The memory the checked ratio uses: the device's allocator on a GPU,
    # the process' RSS on CPU.
    if "device_peak_mib" in report:
      report["memory_source"] = "device peak_bytes_in_use"
      report["peak_mib"] = report["device_peak_mib"]
      report["after_inputs_mib"] = report["device_after_inputs_mib"]
    else:
      report["memory_source"] = "process RSS"
      report["peak_mib"] = report["peak_rss_mib"]
      report["after_inputs_mib"] = report["rss_after_inputs_mib"]
    report["working_set_mib"] = report["peak_mib"] - report["after_inputs_mib"]
  return report


def environment() -> dict:
  import _common  # benchmarks/_common.py; imports jax, hence here
  import jax

  return _common.environment(extra={"device_kind": jax.devices()[0].device_kind})


def _problem_line(args, n) -> str:
  h, v = args.hidden, args.vocab
  size = 2 if args.dtype == "bfloat16" else 4
  return (
    f"Problem: N={n} tokens, H={h} (student and teacher), V={v}, {args.dtype} "
    f"inputs; `jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))` of the "
    f"distillation loss (T={TEMPERATURE:g}, reduction 'mean') with respect "
    f"to the student's hidden states and weight; the teacher is frozen. One "
    f"`[N, V]` float32 array is {n * v * 4 / 2**20:.0f} MiB; the four "
    f"inputs are {(2 * n * h + 2 * h * v) * size / 2**20:.0f} MiB and the two "
    f"gradients {(n * h + h * v) * size / 2**20:.0f} MiB."
  )


def _show(r, key) -> str:
  """A chunk size, with what ``'auto'`` resolved to, e.g. ``auto (1024)``."""
  text = show_size(r[key])
  if r[key] == "auto" and f"resolved_{key}" in r:
    text += f" ({show_size(r[f'resolved_{key}'])})"
  return text


def _config(r) -> str:
  if r["variant"] == "baseline":
    return "- | -"
  return f"{_show(r, 'chunk')} | {_show(r, 'vocab_chunk')}"


def _ratio_lines(ratios) -> list[str]:
  out = []
  for r in ratios:
    if r.get("target") is None:
      out.append(f"- {r['name']} = {r['value']:.3f} (for information)")
      continue
    verdict = "PASS" if r["pass"] else "FAIL"
    out.append(
      f"- {r['name']} = {r['value']:.3f} (target <= {r['target']:g}): {verdict}"
    )
  return out or ["- not computed (a run failed)"]


def render_markdown(args, env, sections) -> str:
  out = ["# Fused linear distillation loss benchmark", ""]
  out.append(
    _problem_line(args, args.tokens) + " Each row is a fresh process (see the "
    "script's docstring); step times are the median (min) of "
    f"{args.steps} steps after the first call"
    + (" (0: the first call itself)" if not args.steps else "")
    + ", compilation excluded. Working set = peak - in use after the inputs."
  )
  out += ["", "## Environment", ""]
  out += [f"- {k}: {val}" for k, val in env.items()]
  for divergence, sec in sections.items():
    out += [
      "",
      f"## {divergence}",
      "",
      "Sanity (small problem, separate processes):",
      "",
    ]
    out += [f"- {c}" for c in sec["checks"]] or ["- (skipped)"]
    out += [""]
    source = next(
      (r["memory_source"] for r in sec["rows"] if "memory_source" in r), "memory"
    )
    out.append(
      f"Memory: {source}, MiB.\n\n"
      "| variant | chunk | vocab chunk | peak | after inputs | working set "
      "| XLA temp | XLA outputs | step s: median (min) | first step s "
      "| load at end | working set / baseline | time / baseline |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = _ok_row(sec["rows"], "baseline")
    for r in sec["rows"]:
      if "error" in r:
        out.append(
          f"| {r['variant']} | {_config(r)} | {r['peak_rss_mib']:.0f} "
          f"| | | | | failed: {r['error']} | | | | |"
        )
        continue
      mem = f"{r['working_set_mib'] / base['working_set_mib']:.3f}" if base else ""
      tim = f"{r['median_s'] / base['median_s']:.3f}" if base else ""
      out.append(
        f"| {r['variant']} | {_config(r)} | {r['peak_mib']:.0f} "
        f"| {r['after_inputs_mib']:.0f} | {r['working_set_mib']:.0f} "
        f"| {r.get('xla_temp_mib', float('nan')):.0f} "
        f"| {r.get('xla_output_mib', float('nan')):.0f} "
        f"| {r['median_s']:.3f} ({r['min_s']:.3f}) | {r['first_call_s']:.3f} "
        f"| {r['loadavg_1min_at_end']:.1f} | {mem} | {tim} |"
      )
    together = sec["interleaved"]
    if together:
      out += [
        "",
        f"Interleaved timing (one process; fused at chunk "
        f"{_show(together, 'chunk')}, vocab chunk "
        f"{_show(together, 'vocab_chunk')}; {together['warmup']} warm-up "
        f"call(s) each; rounds reverse the order; load at the end "
        f"{together['loadavg_1min_at_end']:.1f}):",
        "",
        "| variant | step s: median (min) | all steps s |",
        "|---|---:|---|",
      ]
      for variant, t in together["interleaved"].items():
        out.append(
          f"| {variant} | {t['median_s']:.3f} ({t['min_s']:.3f}) | "
          + ", ".join(f"{x:.3f}" for x in t["times_s"])
          + " |"
        )
    out += ["", "Targets (fused at the target configuration against the baseline):", ""]
    out += _ratio_lines(sec["ratios"])
  return "\n".join(out) + "\n"


def _ok_row(rows, variant, chunk=None, vocab_chunk=None):
  for r in rows:
    if r["variant"] != variant or "error" in r:
      continue
    if variant == "baseline" or (r["chunk"], r["vocab_chunk"]) == (chunk, vocab_chunk):
      return r
  return None


def _ratios(args, base, fused, together, skipped_base=None) -> list[dict]:
  ratios = []
  if fused and skipped_base:
    estimate = skipped_base["xla_temp_mib"] + skipped_base["xla_output_mib"]
    ratios.append(
      {
        "name": "fused working set / the baseline's XLA estimate (temp + "
        "outputs; the baseline did not fit in memory and was not run)",
        "value": fused["working_set_mib"] / estimate,
        "target": None,
      }
    )
  if not (base and fused):
    return ratios
  ratios.append(
    {
      "name": "fused working set / baseline working set",
      "value": fused["working_set_mib"] / base["working_set_mib"],
      "target": args.memory_target,
    }
  )
  if "xla_output_mib" in fused and "xla_output_mib" in base:
    without = [r["working_set_mib"] - r["xla_output_mib"] for r in (fused, base)]
    if without[1] > 0:
      ratios.append(
        {
          "name": "fused / baseline working set without the outputs "
          "(gradients; XLA's output size subtracted)",
          "value": without[0] / without[1],
          "target": None,
        }
      )
  ratios.append(
    {
      "name": "fused peak / baseline peak",
      "value": fused["peak_mib"] / base["peak_mib"],
      "target": None,
    }
  )
  if "xla_temp_mib" in fused and base.get("xla_temp_mib"):
    ratios.append(
      {
        "name": "fused XLA temp / baseline XLA temp",
        "value": fused["xla_temp_mib"] / base["xla_temp_mib"],
        "target": None,
      }
    )
  if together:
    times = together["interleaved"]
    ratios.append(
      {
        "name": "fused median step time / baseline (interleaved, one process)",
        "value": times["fused"]["median_s"] / times["baseline"]["median_s"],
        "target": args.time_target,
      }
    )
  ratios.append(
    {
      "name": "fused median step time / baseline (separate processes)",
      "value": fused["median_s"] / base["median_s"],
      "target": None if together else args.time_target,
    }
  )
  for r in ratios:
    if r["target"] is not None:
      r["pass"] = r["value"] <= r["target"]
  return ratios


def _sanity(args, variants) -> list[str] | None:
  """The small-problem checks of ``variants``; None if one failed."""
  checks = []
  if args.skip_check:
    return checks
  for variant in variants:
    if variant == "baseline":
      continue
    result = run_child(args, variant, args.target_chunk, args.target_vocab_chunk, True)
    if "error" in result:
      print(f"SANITY CHECK FAILED: {result['error']}", file=sys.stderr)
      return None
    checks += result["check"]
    for line in result["check"]:
      print(line, flush=True)
  return checks


def run_divergence(args) -> dict | None:
  """Sanity, one process per row, the interleaved process, the ratios."""
  checks = _sanity(args, args.variants)
  if checks is None:
    return None
  rows = []
  target = (args.target_chunk, args.target_vocab_chunk)
  for variant in args.variants:
    if variant == "baseline":
      configs = [(None, None)]
    elif variant == "fused":
      configs = [(c, k) for c in args.chunks for k in args.vocab_chunk]
      if target not in configs:
        configs.insert(0, target)
    elif variant == "checkpoint":
      chunk = args.target_chunk
      configs = [(chunk if isinstance(chunk, int) else CHECKPOINT_DEFAULT_CHUNK, None)]
    else:
      configs = [target]
    for chunk, vocab_chunk in configs:
      row = run_child(args, variant, chunk, vocab_chunk)
      rows.append(row)
      print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)
  together = None
  base_skipped = any("skipped" in r for r in rows if r["variant"] == "baseline")
  if (
    args.interleaved_steps
    and {"baseline", "fused"} <= set(args.variants)
    and not base_skipped
  ):
    together = run_child(
      argparse.Namespace(**{**vars(args), "steps": args.interleaved_steps}),
      "interleaved",
      *target,
    )
    print(json.dumps(together), flush=True)
    if "error" in together:
      together = None
  base = _ok_row(rows, "baseline")
  fused = _ok_row(rows, "fused", *target)
  skipped = next(
    (r for r in rows if r["variant"] == "baseline" and "skipped" in r), None
  )
  return {
    "checks": checks,
    "rows": rows,
    "interleaved": together,
    "ratios": _ratios(args, base, fused, together, skipped),
  }


def run_grid(args) -> dict:
  """One interleaved process per N of the grid (see the docstring)."""
  sections = {}
  for divergence in args.divergences:
    args.divergence_now = divergence
    checks = _sanity(args, ["fused"])
    if checks is None:
      sections[divergence] = {"checks": [], "rows": [], "error": "sanity check failed"}
      continue
    rows = []
    for n in args.grid_tokens:
      child_args = argparse.Namespace(
        **{**vars(args), "tokens": n, "steps": args.grid_steps, "interleaved_warmup": 1}
      )
      result = run_child(
        child_args, "interleaved", args.target_chunk, args.target_vocab_chunk
      )
      print(json.dumps(result), flush=True)
      if "error" not in result:
        t = result["interleaved"]
        result["ratio"] = t["fused"]["median_s"] / t["baseline"]["median_s"]
        result["target"] = GRID_TIME_TARGET
        result["pass"] = result["ratio"] <= GRID_TIME_TARGET
      result["tokens"] = n
      rows.append(result)
    sections[divergence] = {"checks": checks, "rows": rows}
  return sections


def render_grid(args, env, sections) -> str:
  out = ["# Fused linear distillation loss: small-N grid", ""]
  out.append(
    f"H={args.hidden}, V={args.vocab}, {args.dtype} inputs, T={TEMPERATURE:g}, "
    f"'mean'; value and gradients w.r.t. the student's hidden states and weight "
    f"(frozen teacher). One process per N: the baseline (float32 logits "
    f"materialized) and the fused loss (chunk "
    f"{show_size(args.target_chunk)}, vocab chunk "
    f"{show_size(args.target_vocab_chunk)}) alternate, {args.grid_steps} steps "
    f"each after one warm-up call each; median (min) seconds. Target: fused / "
    f"baseline median <= {GRID_TIME_TARGET:g}."
  )
  out += ["", "## Environment", ""]
  out += [f"- {k}: {val}" for k, val in env.items()]
  for divergence, sec in sections.items():
    out += ["", f"## {divergence}", ""]
    out += [f"- {c}" for c in sec["checks"]] or [f"- {sec.get('error', 'skipped')}"]
    out += [
      "",
      "| N | chunk | vocab chunk | baseline s | fused s | fused / baseline "
      "| XLA temp MiB: baseline | fused | load at end | result |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sec["rows"]:
      if "error" in r:
        out.append(f"| {r['tokens']} | | | | | | | | | failed: {r['error']} |")
        continue
      b, f = r["interleaved"]["baseline"], r["interleaved"]["fused"]
      out.append(
        f"| {r['tokens']} | {_show(r, 'chunk')} | {_show(r, 'vocab_chunk')} "
        f"| {b['median_s']:.3f} ({b['min_s']:.3f}) "
        f"| {f['median_s']:.3f} ({f['min_s']:.3f}) | {r['ratio']:.3f} "
        f"| {b.get('xla_temp_mib', float('nan')):.0f} "
        f"| {f.get('xla_temp_mib', float('nan')):.0f} "
        f"| {r['loadavg_1min_at_end']:.1f} | {'PASS' if r['pass'] else 'FAIL'} |"
      )
  return "\n".join(out) + "\n"


def plan(args) -> int:
  """XLA's memory estimates of every requested variant (nothing is run)."""
  import jax
  import jax.numpy as jnp

  dtype = jnp.dtype(args.dtype)
  inputs = [
    jax.ShapeDtypeStruct(shape, dtype)
    for shape, _ in _shapes(args.tokens, args.hidden, args.vocab)
  ]
  target = (args.target_chunk, args.target_vocab_chunk)
  print(
    f"N={args.tokens} H={args.hidden} V={args.vocab} {args.dtype}: XLA "
    f"memory_analysis of each compiled step (MiB); 'total' = arguments + "
    f"outputs + temp, about the working set plus the inputs"
  )
  print(
    "divergence | variant | chunk | vocab chunk | arguments | outputs | temp | total"
  )
  for divergence in args.divergences:
    for variant in args.variants:
      if variant == "fused":
        configs = [(c, k) for c in args.chunks for k in args.vocab_chunk]
      else:
        configs = [(None, None)] if variant == "baseline" else [target]
      for chunk, vocab_chunk in configs:
        loss = _losses(variant, chunk, vocab_chunk, divergence)
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*inputs)
        m = _xla_memory(compiled.compile())
        total = m["xla_argument_mib"] + m["xla_output_mib"] + m["xla_temp_mib"]
        print(
          f"{divergence} | {variant} | {show_size(chunk)} | "
          f"{show_size(vocab_chunk)} | {m['xla_argument_mib']:.0f} | "
          f"{m['xla_output_mib']:.0f} | {m['xla_temp_mib']:.0f} | {total:.0f}",
          flush=True,
        )
  return 0


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--preset",
    choices=sorted(PRESETS),
    default=None,
    help="shape and dtype: cpu-131k = 8192x1024x131072 float32, cpu-262k = "
    "2048x1024x262144 float32, gpu = 8192x4096x128256 bfloat16 (explicit "
    "--tokens/--hidden/--vocab/--dtype win)",
  )
  p.add_argument("--tokens", type=int, default=None, help="N (default 8192)")
  p.add_argument("--hidden", type=int, default=None, help="H (default 1024)")
  p.add_argument("--vocab", type=int, default=None, help="V (default 32768)")
  p.add_argument(
    "--dtype",
    choices=["float32", "bfloat16"],
    default=None,
    help="input dtype (default float32); logits accumulate in float32",
  )
  p.add_argument(
    "--divergence",
    nargs="+",
    choices=[*DIVERGENCES, "all"],
    default=["forward"],
    help="one or more; 'all' = forward reverse jsd (one section each)",
  )
  p.add_argument(
    "--chunks",
    type=parse_size,
    nargs="+",
    default=["auto"],
    help="token chunk sizes (int or 'auto') of the 'fused' rows",
  )
  p.add_argument(
    "--vocab-chunk",
    type=parse_size,
    nargs="+",
    default=["auto"],
    help="vocabulary chunk sizes (int, 'none' or 'auto') of the 'fused' rows",
  )
  p.add_argument(
    "--target-chunk",
    type=parse_size,
    default=None,
    help="token chunk of the 'fused' configuration checked against the "
    "targets, and of the 'recompute' and 'checkpoint' rows (default: the "
    "first of --chunks)",
  )
  p.add_argument(
    "--target-vocab-chunk",
    type=parse_size,
    default=None,
    help="its vocabulary chunk (default: the first of --vocab-chunk)",
  )
  p.add_argument(
    "--variants",
    nargs="+",
    choices=["baseline", "fused", "recompute", "checkpoint"],
    default=["baseline", "fused"],
  )
  p.add_argument(
    "--steps",
    type=int,
    default=2,
    help="timed steps per process after the first call (0: time the first call)",
  )
  p.add_argument(
    "--interleaved-steps",
    type=int,
    default=2,
    help="timed steps of each of baseline and fused (target configuration) "
    "alternating in one process, for the checked time ratio; 0 skips it",
  )
  p.add_argument(
    "--interleaved-warmup",
    type=int,
    default=1,
    help="untimed calls of each before the interleaved steps",
  )
  p.add_argument("--memory-target", type=float, default=0.05)
  p.add_argument("--time-target", type=float, default=0.8)
  p.add_argument(
    "--grid",
    choices=sorted(GRIDS),
    default=None,
    help="run the small-N grid instead (N = 256, 1024, 4096 at H=1024, V=32768)",
  )
  p.add_argument("--grid-tokens", type=int, nargs="+", default=None)
  p.add_argument("--grid-steps", type=int, default=3)
  p.add_argument(
    "--plan",
    action="store_true",
    help="only print XLA's memory estimates of each variant (nothing runs)",
  )
  p.add_argument(
    "--skip-check",
    action="store_true",
    help="skip the small-problem comparison with the baseline",
  )
  p.add_argument(
    "--no-memory-guard",
    action="store_true",
    help="run steps even where XLA's estimate exceeds the available memory",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--output",
    type=Path,
    default=None,
    help="Markdown path (default benchmarks/results/fused_linear_<backend>.md, "
    "or fused_linear_grid_<backend>.md); the JSON goes next to it",
  )
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--chunk", type=parse_size, default=None, help=argparse.SUPPRESS)
  p.add_argument("--vchunk", type=parse_size, default=None, help=argparse.SUPPRESS)
  p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  preset = PRESETS.get(args.preset, (None, None, None, None))
  grid = args.grid is not None
  defaults = (8192, GRID_HIDDEN if grid else 1024, GRID_VOCAB if grid else 32768)
  for name, from_preset, default in zip(
    ("tokens", "hidden", "vocab", "dtype"), preset, (*defaults, "float32"), strict=True
  ):
    if getattr(args, name) is None:
      setattr(args, name, default if from_preset is None else from_preset)
  args.variant = args.worker
  args.divergences = (
    list(DIVERGENCES)
    if "all" in args.divergence
    else list(dict.fromkeys(args.divergence))
  )
  args.divergence_now = args.divergences[0]
  if args.target_chunk is None:
    args.target_chunk = args.chunks[0]
  if args.target_vocab_chunk is None:
    args.target_vocab_chunk = args.vocab_chunk[0]
  if args.grid_tokens is None:
    args.grid_tokens = list(GRIDS.get(args.grid, ()))
  return args


def _write(output: Path, md: str, payload: dict) -> None:
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(md, encoding="utf-8")
  json_path = output.with_suffix(".json")
  json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
  print(f"wrote {output}\nwrote {json_path}")


def _problem(args) -> dict:
  return {
    "tokens": args.grid_tokens if args.grid else args.tokens,
    "hidden": args.hidden,
    "vocab": args.vocab,
    "dtype": args.dtype,
    "logits_dtype": "float32",
    "temperature": TEMPERATURE,
    "reduction": "mean",
    "divergences": args.divergences,
    "steps": args.grid_steps if args.grid else args.steps,
    "interleaved_steps": args.interleaved_steps,
    "interleaved_warmup": args.interleaved_warmup,
    "seed": args.seed,
    "chunks": [show_size(c) for c in args.chunks],
    "vocab_chunks": [show_size(c) for c in args.vocab_chunk],
    "target_chunk": show_size(args.target_chunk),
    "target_vocab_chunk": show_size(args.target_vocab_chunk),
    "memory_target": None if args.grid else args.memory_target,
    "time_target": GRID_TIME_TARGET if args.grid else args.time_target,
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    args.divergence_now = args.divergence[0]
    args.divergence = args.divergence[0]
    args.warmup = args.interleaved_warmup
    worker(args)
    return 0
  if args.plan:
    return plan(args)
  import jax

  env = environment()
  for k, val in env.items():
    print(f"{k}: {val}")
  backend = jax.default_backend()
  if args.grid:
    sections = run_grid(args)
    env["load_average_at_end"] = _load_average()
    md = render_grid(args, env, sections)
    print("\n" + md.split("## Environment", 1)[0])
    for divergence in sections:
      body = md.split(f"## {divergence}\n", 1)[1].split("\n## ", 1)[0]
      print(f"## {divergence}\n{body}")
    output = args.output or RESULTS_DIR / f"fused_linear_grid_{backend}.md"
    _write(
      output,
      md,
      {"problem": _problem(args), "environment": env, "by_divergence": sections},
    )
    rows = [r for sec in sections.values() for r in sec["rows"]]
    ok = rows and all(r.get("pass") for r in rows)
    ok = ok and all("error" not in sec for sec in sections.values())
    return 0 if ok else 1
  sections = {}
  for divergence in args.divergences:
    args.divergence_now = divergence
    print(f"\n== {divergence} ==", flush=True)
    sec = run_divergence(args)
    if sec is None:
      return 1
    sections[divergence] = sec
  env["load_average_at_end"] = _load_average()
  md = render_markdown(args, env, sections)
  for divergence in sections:
    body = md.split(f"## {divergence}\n", 1)[1].split("\n## ", 1)[0]
    print(f"\n## {divergence}\n{body}")
  output = args.output or RESULTS_DIR / f"fused_linear_{backend}.md"
  _write(
    output,
    md,
    {"problem": _problem(args), "environment": env, "by_divergence": sections},
  )
  checked = [
    r for sec in sections.values() for r in sec["ratios"] if r["target"] is not None
  ]
  complete = all(
    any(r["target"] is not None for r in sec["ratios"]) for sec in sections.values()
  )
  return 0 if complete and checked and all(r["pass"] for r in checked) else 1


def _load_average() -> str:
  import _common

  return _common.load_average()


if __name__ == "__main__":
  sys.exit(main())
