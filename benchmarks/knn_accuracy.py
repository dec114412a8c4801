"""Accuracy of the k-NN KL estimators and coverage of the ensemble's interval.

Run: ``python benchmarks/knn_accuracy.py`` (about 25 minutes on 2 CPU cores);
``... accuracy 1`` (or ``coverage 1``) reruns the 1-D case only (dims as
arguments; ``laplace`` for the Laplace pair in ``accuracy``), ``... timing``
only the times.
Writes ``benchmarks/results/knn_accuracy_cpu.{md,json}``, which the notebook
``04_knn`` displays.

1. Error at n = m = 10^4 (float32), over ``SEEDS`` independent sample sets:
   P = N(0, I_d), Q = N(2 e_1, I_d) (KL = 2) for d = 1, 5, 20, and a
   non-Gaussian pair, products of Laplaces, P = Laplace(0, 1)^5,
   Q = Laplace(1, 2)^5 (KL from ``jaxkl.kl_laplace``, summed over
   coordinates). Estimators: ``knn_kl`` "wkv" and "adaptive" (k = 1), the
   ensemble with ``bias_terms`` = 1 (default), 2, and Berrett et al.'s even
   term 2/d alone (weights computed here). Time of one default ensemble
   estimate (jackknife included) after a warm-up call.
2. Coverage of the 95% interval of ``knn_kl_estimate`` (ensemble and WKV,
   default jackknife groups) at n = m = 2000 over ``COVERAGE_REPS`` sample
   sets, d = 1, 5, 20 (Gaussians above), with the mean error, the sd of the
   estimates and the mean standard error.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import sys
import time

import _common
import jax
import numpy as np
from scipy import special
from scipy import stats

import jaxkl
from jaxkl import _knn
from jaxkl._knn_ensemble import _DEFAULT_GROUPS as DEFAULT_GROUPS
from jaxkl._knn_ensemble import default_max_k
from jaxkl._knn_ensemble import ensemble_weights
from jaxkl._knn_ensemble import knn_kl_estimate

SEEDS = 10
N = 10_000
COVERAGE_N = 2000
COVERAGE_REPS = 200
# `python knn_accuracy.py coverage 1` reruns the 1-D rows only.
COVERAGE_DIMS = (1, 5, 20)
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def gaussian_pair(d, n, seed):
  rng = np.random.default_rng([seed, d, n])
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.normal(size=(n, d)).astype(np.float32)
  y[:, 0] += 2.0
  return x, y


LAPLACE_D = 5


def laplace_pair(n, seed):
  rng = np.random.default_rng([seed, 99, n])
  x = rng.laplace(0.0, 1.0, size=(n, LAPLACE_D)).astype(np.float32)
  y = rng.laplace(1.0, 2.0, size=(n, LAPLACE_D)).astype(np.float32)
  return x, y


def laplace_kl():
  one = float(jaxkl.kl_laplace(0.0, 1.0, 1.0, 2.0))
  return LAPLACE_D * one


def even_weights(d, max_k):
  """Berrett-Samworth-Yuan's term 2/d alone, minimum norm (for comparison)."""
  ks = np.arange(1, max_k + 1, dtype=np.float64)
  a = np.stack(
    [np.ones_like(ks), np.exp(special.gammaln(ks + 2 / d) - special.gammaln(ks))]
  )
  return a.T @ np.linalg.solve(a @ a.T, np.array([1.0, 0.0]))


def estimates(x, y):
  n, d = x.shape
  m = y.shape[0]
  max_k = default_max_k(n, d)
  rho_sq, nu_sq = _knn.neighbour_radii(x, y, ks=tuple(range(1, max_k + 1)))
  per_k = 0.5 * d * np.mean(
    np.log(np.asarray(nu_sq, np.float64)) - np.log(np.asarray(rho_sq, np.float64)),
    axis=1,
  ) + math.log(m / (n - 1))
  return {
    "wkv (k=1)": float(jaxkl.knn_kl(x, y)),
    "adaptive (k=1)": float(jaxkl.knn_kl(x, y, estimator="adaptive")),
    "ensemble (default, i=1)": float(ensemble_weights(d, max_k, 1) @ per_k),
    "ensemble i=1,2": float(ensemble_weights(d, max_k, 2) @ per_k),
    "even term 2/d (BSY)": float(even_weights(d, max_k) @ per_k),
  }


def seconds_per_estimate(d):
  """One default ``knn_kl_estimate`` (jackknife included), after a warm-up."""
  x, y = gaussian_pair(d, N, 0) if d else laplace_pair(N, 0)
  jax.block_until_ready(knn_kl_estimate(x, y).stderr)
  start = time.perf_counter()
  jax.block_until_ready(knn_kl_estimate(x, y).stderr)
  return time.perf_counter() - start


def timing(acc):
  """Rerun only the times of the stored accuracy rows."""
  for d in (1, 5, 20, None):
    name = f"Gaussian shift, d={d}" if d else f"Laplace product, d={LAPLACE_D}"
    seconds = seconds_per_estimate(d)
    print(name, seconds, flush=True)
    for r in acc:
      if r["case"] == name:
        r["seconds_default_ensemble_with_interval"] = seconds
  return acc


def accuracy(dims=(1, 5, 20, "laplace")):
  cases = [(f"Gaussian shift, d={d}", d, 2.0) for d in (1, 5, 20) if d in dims]
  if "laplace" in dims:
    cases.append((f"Laplace product, d={LAPLACE_D}", None, laplace_kl()))
  rows = []
  for name, d, truth in cases:
    table = {}
    for seed in range(SEEDS):
      x, y = gaussian_pair(d, N, seed) if d else laplace_pair(N, seed)
      for key, value in estimates(x, y).items():
        table.setdefault(key, []).append(value)
      print(name, seed, flush=True)
    seconds = seconds_per_estimate(d)
    for key, values in table.items():
      errors = np.array(values) - truth
      rows.append(
        {
          "case": name,
          "truth": truth,
          "estimator": key,
          "mean_error": float(errors.mean()),
          "sd": float(errors.std(ddof=1)),
          "rmse": float(np.sqrt(np.mean(errors**2))),
          "max_abs_error": float(np.abs(errors).max()),
          "seconds_default_ensemble_with_interval": seconds,
        }
      )
  return rows


def coverage():
  rows = []
  for d in COVERAGE_DIMS:
    for estimator in ("ensemble", "wkv"):
      run = jax.jit(functools.partial(knn_kl_estimate, estimator=estimator))
      hits, stderrs, values = 0, [], []
      for rep in range(COVERAGE_REPS):
        x, y = gaussian_pair(d, COVERAGE_N, 1000 + rep)
        est = run(x, y)
        low, high = (float(v) for v in est.confidence_interval(0.95))
        hits += low <= 2.0 <= high
        stderrs.append(float(est.stderr))
        values.append(float(est.value))
      values = np.array(values)
      sd = float(values.std(ddof=1))
      bias = float(values.mean() - 2.0)
      rows.append(
        {
          "d": d,
          "estimator": estimator,
          "n": COVERAGE_N,
          "reps": COVERAGE_REPS,
          "num_groups": DEFAULT_GROUPS,
          "coverage_95": hits / COVERAGE_REPS,
          "mean_error": bias,
          "sd_of_estimates": sd,
          "mean_stderr": float(np.mean(stderrs)),
          # Coverage of value -+ 1.96 sd if the SE were exact: the bias alone.
          "coverage_if_se_exact": float(
            stats.norm.cdf(1.959964 - bias / sd) - stats.norm.cdf(-1.959964 - bias / sd)
          ),
          # Coverage of the estimator's own mean (the bias removed).
          "coverage_of_mean": float(
            np.mean(np.abs(values - values.mean()) <= 1.959964 * np.array(stderrs))
          ),
        }
      )
      print("coverage", rows[-1], flush=True)
  return rows


def main():
  part = sys.argv[1] if len(sys.argv) > 1 else "all"
  if part not in ("all", "accuracy", "coverage", "timing"):
    raise SystemExit("usage: knn_accuracy.py [all|accuracy|coverage|timing] [dims]")
  env = _common.environment()
  path = RESULTS / "knn_accuracy_cpu.json"
  old = json.loads(path.read_text()) if path.exists() else {}
  global COVERAGE_DIMS
  if len(sys.argv) > 2:
    COVERAGE_DIMS = tuple(int(v) if v.isdigit() else v for v in sys.argv[2:])
  if part == "accuracy" and len(sys.argv) > 2:
    # `knn_accuracy.py accuracy 1` reruns the 1-D Gaussian case only.
    new = accuracy(COVERAGE_DIMS)
    names = {r["case"] for r in new}
    acc = [r for r in old["accuracy"] if r["case"] not in names] + new
    order = [f"Gaussian shift, d={d}" for d in (1, 5, 20)]
    acc.sort(key=lambda r: order.index(r["case"]) if r["case"] in order else 9)
  elif part == "timing":
    acc = timing(old["accuracy"])
  else:
    acc = accuracy() if part in ("all", "accuracy") else old["accuracy"]
  cov = coverage() if part in ("all", "coverage") else old["coverage"]
  if part == "coverage" and len(sys.argv) > 2:
    kept = [r for r in old["coverage"] if r["d"] not in COVERAGE_DIMS]
    cov = sorted(kept + cov, key=lambda r: (r["d"], r["estimator"] != "ensemble"))
  RESULTS.mkdir(exist_ok=True)
  data = {"environment": env, "accuracy": acc, "coverage": cov, "seeds": SEEDS, "n": N}
  if part != "all":
    data["note"] = f"only the {part} part rerun on this date"
  path.write_text(json.dumps(data, indent=1) + "\n")
  lines = [
    "# k-NN KL accuracy and interval coverage",
    "",
    f"Accuracy: n = m = {N}, float32, {SEEDS} sample sets per case; K = "
    f"{default_max_k(N, 5)} ranks for the ensembles ({default_max_k(N, 1)} "
    "in 1-D). Time: one "
    "`knn_kl_estimate` call (ensemble, "
    f"{DEFAULT_GROUPS} jackknife groups), after a warm-up.",
    "",
    "| case | truth | estimator | mean error | sd | RMSE | max abs error |",
    "|---|---:|---|---:|---:|---:|---:|",
  ]
  for r in acc:
    lines.append(
      f"| {r['case']} | {r['truth']:.4f} | {r['estimator']} | {r['mean_error']:+.3f} "
      f"| {r['sd']:.3f} | {r['rmse']:.3f} | {r['max_abs_error']:.3f} |"
    )
  lines += [
    "",
    "| case | seconds per ensemble estimate (with interval) |",
    "|---|---:|",
  ]
  for r in acc:
    if r["estimator"].startswith("ensemble (default"):
      lines.append(
        f"| {r['case']} | {r['seconds_default_ensemble_with_interval']:.2f} |"
      )
  lines += [
    "",
    f"Coverage of the 95% interval `value -+ 1.96 stderr` (delete-a-group "
    f"jackknife, {DEFAULT_GROUPS} groups), n = m = {COVERAGE_N}, Gaussian "
    "shift (KL = 2). 'if SE exact': the coverage of value -+ 1.96 sd given "
    "the measured bias alone; 'of own mean': how often the interval covers "
    "the mean of the estimates (the bias removed).",
    "",
    "| d | estimator | reps | coverage | mean error | sd of estimates | mean stderr "
    "| if SE exact | of own mean |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in cov:
    lines.append(
      f"| {r['d']} | {r['estimator']} | {r['reps']} | {r['coverage_95']:.3f} "
      f"| {r['mean_error']:+.3f} | {r['sd_of_estimates']:.3f} "
      f"| {r['mean_stderr']:.3f} | {r['coverage_if_se_exact']:.3f} "
      f"| {r['coverage_of_mean']:.3f} |"
    )
  if part != "all":
    lines += ["", f"(Only the {part} part was rerun on this date.)"]
  lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
  (RESULTS / "knn_accuracy_cpu.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  sys.exit(main())
