"""Benchmark ``jaxkl.knn_kl`` against a scipy ``cKDTree`` implementation.

What it measures
----------------
For samples ``x ~ P = N(0, I_d)`` and ``y ~ Q = N(2 e_1, I_d)`` (float32,
``n = m = 10^4`` by default), whose divergence is ``KL(P || Q) = |mu|^2 / 2
= 2`` in every dimension ``d`` (default ``d`` in 1, 5, 20), and ``k = 1``:

1. ``jaxkl wkv``      -- ``jaxkl.knn_kl(x, y, k=k)`` (in 1-D the sorted path,
   otherwise brute force in chunks, direct-difference distances, float32);
2. ``jaxkl adaptive`` -- ``jaxkl.knn_kl(x, y, k=k, estimator="adaptive")``;
3. ``jaxkl gram``     -- the ``"wkv"`` code with squared distances from the
   expansion ``|a|^2 + |b|^2 - 2 a.b`` (a matrix product, clamped at 0), through
   the private ``jaxkl._knn._estimate(..., distance="gram")``: kept only to
   measure why ``knn_kl`` does not use it;
   ``jaxkl brute``    -- the ``"wkv"`` brute force that the sorted path (1-D)
   and the projection-pruned path (2-8 D) replace
   (``_estimate(..., method="brute")``);
4. ``scipy cKDTree``  -- the same ``"wkv"`` estimator with
   ``scipy.spatial.cKDTree`` (float64 copies of the same data,
   ``workers=-1``: all cores), the straightforward implementation, with the
   same floor on zero distances as ``knn_kl``. float32 samples repeat: in 1-D
   at n = 10^4 a few x_i have a duplicate in x or in y, and without the floor
   the estimate is infinite (listed under "Zero distances").

For each it reports the estimate, its error against the true 2, and the time
of one estimate: best and median of ``--repeats`` runs after one warm-up call
(for jaxkl the warm-up compiles; its time is listed as "first call"). The
runs of the implementations are interleaved (one call of each in turn), so
that the machine's load changes hit all of them alike; the load average is
recorded before and after. cKDTree is also timed alone, before the
interleaved runs ("scipy cKDTree (alone)"): interleaved, it runs right after
an XLA computation whose threads can still hold the cores. Each run ends with ``block_until_ready()``. The
scipy time includes building both trees.

``--large N``: also one ``jaxkl wkv`` estimate at ``n = m = N`` in 20-D (in a
child process, whose peak resident memory is reported: ``ru_maxrss``), the
first call (compile included) and a second call; no scipy run there (cKDTree
in 20-D is slower than the brute force already at ``10^4``).

Sanity: ``jaxkl wkv`` must agree with the cKDTree implementation to 1e-4
(float32 distances against float64 ones); the script exits with status 1 if
not. It also prints the squared distance that each formula gives between two
identical points (0 for direct differences).

On the machine where the results file was made, other jobs shared the two
cores: the best time is the cost of the computation, the median carries the
other tenants' load.

How to run
----------
    . .venv/bin/activate
    python benchmarks/bench_knn.py                      # defaults
    python benchmarks/bench_knn.py --n 10000 --dims 1,5,20 --repeats 7 \\
        --large 100000 --output benchmarks/results/knn_cpu.md

Output: a Markdown table printed and written to ``--output`` (default
``benchmarks/results/knn_<backend>.md``), the raw numbers to a JSON file with
the same stem.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _common  # benchmarks/_common.py
import jax
import jax.numpy as jnp
import numpy as np
import scipy
from scipy.spatial import cKDTree

from jaxkl import _knn

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHIFT = 2.0
TRUE_KL = SHIFT**2 / 2
SANITY_ATOL = 1e-4


def scipy_radii(x: np.ndarray, y: np.ndarray, k: int):
  """k-th neighbour distances of each x_i in x (itself excluded) and in y."""
  rho = cKDTree(x).query(x, k=[k + 1], workers=-1)[0][:, 0]
  nu = cKDTree(y).query(x, k=[k], workers=-1)[0][:, 0]
  return rho, nu


def scipy_wkv(x: np.ndarray, y: np.ndarray, k: int, floor: bool = True) -> float:
  """The "wkv" estimator with cKDTree.

  With ``floor``, distances from x_i below eps32 / 4 * max_j |x_ij| count as
  that floor, the zero-distance rule of ``knn_kl``; without it, duplicate
  points give log 0.
  """
  (n, d), m = x.shape, y.shape[0]
  rho, nu = scipy_radii(x, y, k)
  if floor:
    low = np.maximum(
      float(np.finfo(np.float32).eps) / 4 * np.abs(x).max(axis=1),
      math.sqrt(float(np.finfo(np.float32).tiny)),
    )
    rho, nu = np.maximum(rho, low), np.maximum(nu, low)
  with np.errstate(divide="ignore"):
    return d * float(np.mean(np.log(nu / rho))) + math.log(m / (n - 1))


def make_inputs(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng([seed, d])
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.normal(size=(n, d)).astype(np.float32)
  y[:, 0] += SHIFT
  return x, y


def time_interleaved(candidates: dict[str, Callable[[], float]], repeats: int) -> dict:
  """One warm-up call of each (timed: compile for jaxkl), then ``repeats``
  rounds, each timing one call of every candidate in turn."""
  results = {}
  for name, fn in candidates.items():
    start = time.perf_counter()
    value = fn()
    results[name] = {"value": value, "first_s": time.perf_counter() - start}
    results[name]["times_s"] = []
  for _ in range(repeats):
    for name, fn in candidates.items():
      start = time.perf_counter()
      fn()
      results[name]["times_s"].append(time.perf_counter() - start)
  for item in results.values():
    item["best_s"] = min(item["times_s"])
    item["median_s"] = statistics.median(item["times_s"])
  return results


def jax_runner(x, y, **kwargs) -> Callable[[], float]:
  xj, yj = jnp.asarray(x), jnp.asarray(y)

  def run():
    return float(_knn._estimate(xj, yj, **kwargs)[0].block_until_ready())

  return run


def identical_point_distances(d: int, seed: int) -> dict:
  """Squared distance between a point and its copy, by each formula."""
  x, _ = make_inputs(1000, d, seed)
  a = jnp.asarray(x[:64])
  exact = _knn._squared_distances(a, a.T, "direct")
  gram = _knn._squared_distances(a, a.T, "gram")
  norms = np.sum(np.asarray(a, np.float64) ** 2, axis=1)
  return {
    "direct_max": float(jnp.max(jnp.diagonal(exact))),
    "gram_max": float(jnp.max(jnp.diagonal(gram))),
    "mean_sq_norm": float(norms.mean()),
  }


def environment() -> dict:
  return _common.environment(
    versions={"scipy": scipy.__version__},
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--n", type=int, default=10_000, help="samples of P and of Q (n = m)"
  )
  parser.add_argument("--dims", default="1,5,20", help="comma-separated dimensions")
  parser.add_argument("--k", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", type=Path, default=None)
  parser.add_argument(
    "--large",
    type=int,
    default=0,
    help="also time one estimate at n = m = LARGE in 20-D (child process)",
  )
  parser.add_argument("--large-child", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.large_child:
    return large_child(args.large_child, args.seed)
  dims = [int(v) for v in args.dims.split(",")]
  output = args.output or RESULTS_DIR / f"knn_{jax.default_backend()}.md"
  env = environment()

  load_start = os.getloadavg()
  rows, checks, identical, zeros = [], [], [], []
  ok = True
  for d in dims:
    x, y = make_inputs(args.n, d, args.seed)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    candidates = {
      "jaxkl wkv": jax_runner(x, y, k=args.k, estimator="wkv", chunk_size=None),
      "jaxkl adaptive": jax_runner(
        x, y, k=args.k, estimator="adaptive", chunk_size=None
      ),
    }
    if d > 1:
      candidates["jaxkl brute"] = jax_runner(
        x, y, k=args.k, estimator="wkv", chunk_size=None, method="brute"
      )
    candidates["jaxkl gram"] = jax_runner(
      x, y, k=args.k, estimator="wkv", chunk_size=None, distance="gram"
    )
    candidates["scipy cKDTree"] = lambda x64=x64, y64=y64: scipy_wkv(x64, y64, args.k)
    # cKDTree alone first (no XLA threads around), then all interleaved.
    alone = time_interleaved(
      {"scipy cKDTree (alone)": candidates["scipy cKDTree"]}, args.repeats
    )
    results = {**time_interleaved(candidates, args.repeats), **alone}
    candidates["scipy cKDTree (alone)"] = candidates["scipy cKDTree"]
    for name in candidates:
      row = {
        "d": d,
        "implementation": name,
        **results[name],
        "error": results[name]["value"] - TRUE_KL,
      }
      rows.append(row)
      print(
        f"d={d:>3} {name:<15} estimate {row['value']:+.4f} "
        f"(error {row['error']:+.4f}) best {row['best_s']:.4f} s, "
        f"median {row['median_s']:.4f} s, first call "
        f"{row['first_s']:.2f} s",
        flush=True,
      )
    diff = abs(results["jaxkl wkv"]["value"] - results["scipy cKDTree"]["value"])
    good = diff <= SANITY_ATOL
    ok &= good
    checks.append(
      f"d={d}: |jaxkl wkv - scipy cKDTree| = {diff:.2e} -> "
      f"{'OK' if good else 'MISMATCH'} (tol {SANITY_ATOL:g})"
    )
    identical.append({"d": d, **identical_point_distances(d, args.seed)})
    rho, nu = scipy_radii(x64, y64, args.k)
    zeros.append(
      {
        "d": d,
        "rho_zero": int(np.sum(rho == 0)),
        "nu_zero": int(np.sum(nu == 0)),
        "jaxkl_duplicates": _knn._estimate(x, y, k=1, estimator="wkv", chunk_size=None)[
          1
        ].tolist(),
        "scipy_without_floor": scipy_wkv(x64, y64, args.k, floor=False),
      }
    )

  load_end = os.getloadavg()
  large = None
  if args.large:
    print(f"n = m = {args.large}, d = 20 (child process) ...", flush=True)
    child = subprocess.run(
      [sys.executable, __file__, "--large-child", str(args.large)],
      capture_output=True,
      text=True,
      check=True,
    )
    large = json.loads(child.stdout.strip().splitlines()[-1])
    print(large, flush=True)
  load_line = (
    "Load average (1, 5, 15 min) before the main runs: "
    + " ".join(f"{v:.2f}" for v in load_start)
    + "; after: "
    + " ".join(f"{v:.2f}" for v in load_end)
    + "."
  )
  lines = [
    "# k-NN KL estimator benchmark",
    "",
    f"Problem: P = N(0, I_d), Q = N({SHIFT:g} e_1, I_d), KL(P||Q) = "
    f"{TRUE_KL:g} for every d; n = m = {args.n}, k = {args.k}, float32 "
    f"samples (float64 copies for scipy); time of one estimate, best "
    f'(median) of {args.repeats} runs after a warm-up call ("first call": '
    "compile included for jaxkl). scipy: cKDTree build + query, "
    "`workers=-1`. On this shared 2-core machine the median carries other "
    "tenants' load; the best time is the cost of the computation. The "
    "implementations' runs are interleaved (one call of each in turn); "
    "`scipy cKDTree (alone)` is the same cKDTree code timed on its own "
    "just before (no XLA computation between its calls). `best vs scipy` "
    "divides by the interleaved cKDTree time.",
    "",
    load_line,
    "",
    "## Environment",
    "",
  ]
  lines += [f"- {key}: {value}" for key, value in env.items()]
  lines += ["", "## Sanity", ""] + [f"- {c}" for c in checks]
  lines += [
    "",
    "## Results",
    "",
    "| d | implementation | estimate | error vs KL | best (s) | median (s) "
    "| first call (s) | best vs scipy |",
    "|---:|---|---:|---:|---:|---:|---:|---:|",
  ]
  for row in rows:
    scipy_best = next(
      r["best_s"]
      for r in rows
      if r["d"] == row["d"] and r["implementation"] == "scipy cKDTree"
    )
    lines.append(
      f"| {row['d']} | {row['implementation']} | {row['value']:.4f} | "
      f"{row['error']:+.4f} | {row['best_s']:.4f} | {row['median_s']:.4f} "
      f"| {row['first_s']:.2f} | {row['best_s'] / scipy_best:.2f}x |"
    )
  if large is not None:
    lines += [
      "",
      f"## n = m = {large['n']}, d = 20",
      "",
      "One `jaxkl wkv` estimate in a child process (scipy not run: cKDTree in "
      "20-D is already 2-10x slower than the brute force at n = 10^4). Peak "
      "memory: the child's `ru_maxrss` (Python, JAX and the samples "
      "included).",
      "",
      "| first call (s) | second call (s) | estimate | peak RSS (MiB) | load before |",
      "|---:|---:|---:|---:|---|",
      f"| {large['first_s']:.1f} | {large['second_s']:.1f} | "
      f"{large['value']:.4f} | {large['peak_rss_mib']:.0f} | "
      f"{large['load_before']} |",
    ]
  lines += [
    "",
    "## Zero distances",
    "",
    "Points x_i whose k-th neighbour distance is 0 (duplicates among the "
    "float32 samples), the duplicate counts of `knn_kl(..., "
    "return_duplicates=True)` (points of x with a copy in x, in y: the "
    "nearest distance at the floor; the warning threshold is 1% of n), "
    "and the cKDTree estimate without the floor:",
    "",
    "| d | rho_k = 0 | nu_k = 0 | jaxkl duplicates (x, y) | scipy without floor |",
    "|---:|---:|---:|---:|---:|",
  ]
  for item in zeros:
    lines.append(
      f"| {item['d']} | {item['rho_zero']} | {item['nu_zero']} | "
      f"{tuple(item['jaxkl_duplicates'])} | "
      f"{item['scipy_without_floor']:.4f} |"
    )
  lines += [
    "",
    "## Identical points",
    "",
    "Largest squared distance between a point and itself among 64 points "
    "(float32): direct differences give exactly 0, the Gram expansion "
    "gives rounding noise of order eps * |a|^2, i.e. a distance of order "
    "sqrt(eps) * |a|. That is the Gram form's resolution for any pair of "
    "points: in 1-D at this n most nearest-neighbour distances are below "
    "it (hence its error there), in 5-D and 20-D they are far above it.",
    "",
    "| d | mean \\|a\\|^2 | direct | gram | gram distance |",
    "|---:|---:|---:|---:|---:|",
  ]
  for item in identical:
    lines.append(
      f"| {item['d']} | {item['mean_sq_norm']:.2f} | "
      f"{item['direct_max']:.3g} | {item['gram_max']:.3g} | "
      f"{math.sqrt(item['gram_max']):.3g} |"
    )
  text = "\n".join(lines) + "\n"
  print()
  print(text)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(text, encoding="utf-8")
  payload = {
    "problem": {
      "n": args.n,
      "m": args.n,
      "dims": dims,
      "k": args.k,
      "shift": SHIFT,
      "true_kl": TRUE_KL,
      "repeats": args.repeats,
      "seed": args.seed,
      "dtype": "float32",
    },
    "environment": env,
    "sanity": {"ok": ok, "checks": checks},
    "results": rows,
    "identical_points": identical,
    "zero_distances": zeros,
    "load_average": {"start": load_start, "end": load_end},
    "large": large,
  }
  output.with_suffix(".json").write_text(
    json.dumps(payload, indent=2) + "\n", encoding="utf-8"
  )
  print(f"wrote {output} and {output.with_suffix('.json')}")
  return 0 if ok else 1


def large_child(n: int, seed: int) -> int:
  """One estimate at n = m in 20-D; prints a JSON line with the peak RSS."""
  load = " ".join(f"{v:.2f}" for v in os.getloadavg())
  x, y = make_inputs(n, 20, seed)
  run = jax_runner(x, y, k=1, estimator="wkv", chunk_size=None)
  start = time.perf_counter()
  value = run()
  first = time.perf_counter() - start
  start = time.perf_counter()
  run()
  second = time.perf_counter() - start
  peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  result = {
    "n": n,
    "value": value,
    "first_s": first,
    "second_s": second,
    "peak_rss_mib": peak_kib / 1024,
    "load_before": load,
  }
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
