"""Benchmark ``jaxkl.monte_carlo_kl`` against ``torch.distributions``.

What it measures
----------------
The Monte-Carlo estimate of KL(P || Q) between two 10-D Gaussians with
diagonal covariance (P = N(m1, diag s1^2), Q = N(m2, diag s2^2)) from
``--samples`` (default 10^6) draws of P, estimator ``k1`` (log p - log q),
returning the estimate *and* its standard error, in float32:

* ``value``: the estimate and standard error;
* ``value+grad``: also the pathwise (reparameterized) gradient of the
  estimate with respect to P's and Q's parameters (m1, s1, m2, s2).

Implementations (fresh random numbers every call, from a new key / the
generator's state):

1. ``jaxkl-numpyro``: ``jaxkl.monte_carlo_kl(key, p, q, num_samples=n)`` with
   ``p, q = numpyro.distributions.Normal(loc, scale).to_event(1)``, jitted
   (the distributions are built inside the jitted function from the
   parameters); it also returns the tail diagnostic ``pareto_k`` (the
   default);
2. ``jaxkl-pushforward``: the same with ``p`` a
   ``jaxkl.StandardNormalPushforward`` (``loc + scale * z``) and ``q`` a
   plain ``log_prob`` callable, jitted;
1b, 2b. ``jaxkl-numpyro-no-tail``, ``jaxkl-pushforward-no-tail``: the same
   with ``tail_diagnostic=False``: the difference is the cost of
   ``pareto_k`` (two ``lax.top_k`` of 3001 of the 10^6 terms and the
   generalized-Pareto fit);
3. ``plain-jax``: a hand-written jitted JAX expression (draw, log-densities,
   mean, standard deviation / sqrt(n)): the floor for any JAX implementation;
4. ``torch``: ``torch.distributions.Independent(Normal(loc, scale), 1)``,
   ``rsample((n,))`` and ``log_prob``; mean and ``std() / sqrt(n)``; the
   gradient with ``.backward()``; ``torch.set_num_threads(os.cpu_count())``.

Before timing, every implementation's estimate must lie within 5 of its
standard errors of the closed form, and the gradients within 5% (relative
to the largest component) of the closed-form gradient; else exit status 1.

Timing: every function is warmed up (compiled) first; each
(implementation, mode) is then timed in contiguous blocks of calls, the set
of blocks repeated three times in alternating order; each call ends with
``block_until_ready()``. We report the best and the median.

Output: a Markdown table written to ``--output`` (default
``benchmarks/results/monte_carlo_<backend>.md``) and the raw timings as JSON
next to it.

How to run
----------
    . .venv/bin/activate
    python benchmarks/bench_monte_carlo.py                  # defaults
    python benchmarks/bench_monte_carlo.py --samples 1000000 --repeats 15 \
        --pairs 20
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import _common  # benchmarks/_common.py
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import torch

import jaxkl

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMPLEMENTATIONS = (
  "jaxkl-numpyro",
  "jaxkl-numpyro-no-tail",
  "jaxkl-pushforward",
  "jaxkl-pushforward-no-tail",
  "plain-jax",
  "torch",
)
MODES = ("value", "value+grad")
DIM = 10


def make_parameters(seed: int):
  rng = np.random.default_rng(seed)
  m1, m2 = rng.normal(0.0, 0.5, size=(2, DIM)).astype(np.float32)
  s1, s2 = rng.uniform(0.8, 1.25, size=(2, DIM)).astype(np.float32)
  return m1, s1, m2, s2


def closed_form(m1, s1, m2, s2):
  """KL between diagonal Gaussians, and its gradient (float64)."""
  m1, s1, m2, s2 = (np.asarray(a, np.float64) for a in (m1, s1, m2, s2))
  kl = np.sum(np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5)
  grad = (
    (m1 - m2) / s2**2,  # d/dm1
    -1 / s1 + s1 / s2**2,  # d/ds1
    (m2 - m1) / s2**2,  # d/dm2
    1 / s2 - (s1**2 + (m1 - m2) ** 2) / s2**3,  # d/ds2
  )
  return kl, grad


# --------------------------------------------------------------------------- #
# Candidates: each returns (estimate, stderr) or ((estimate, stderr), grads).
# --------------------------------------------------------------------------- #
def jaxkl_numpyro(params, key, n, tail_diagnostic=True):
  m1, s1, m2, s2 = params
  p = dist.Normal(m1, s1).to_event(1)
  q = dist.Normal(m2, s2).to_event(1)
  est = jaxkl.monte_carlo_kl(key, p, q, num_samples=n, tail_diagnostic=tail_diagnostic)
  if tail_diagnostic:  # returned, so that XLA cannot drop it
    return est.value, (est.stderr, est.pareto_k)
  return est.value, est.stderr


def jaxkl_pushforward(params, key, n, tail_diagnostic=True):
  m1, s1, m2, s2 = params
  norm = jax.scipy.stats.norm.logpdf
  p = jaxkl.StandardNormalPushforward(
    lambda z: m1[None, :] + s1[None, :] * z,
    lambda x: norm(x, m1[None, :], s1[None, :]).sum(-1),
    (DIM,),
  )
  est = jaxkl.monte_carlo_kl(
    key,
    p,
    lambda x: norm(x, m2[None, :], s2[None, :]).sum(-1),
    num_samples=n,
    tail_diagnostic=tail_diagnostic,
  )
  if tail_diagnostic:
    return est.value, (est.stderr, est.pareto_k)
  return est.value, est.stderr


def plain_jax(params, key, n):
  m1, s1, m2, s2 = params
  z = jax.random.normal(key, (n * DIM,)).reshape(n, DIM)
  x = m1[None, :] + s1[None, :] * z
  norm = jax.scipy.stats.norm.logpdf
  k1 = norm(x, m1[None, :], s1[None, :]).sum(-1) - norm(
    x, m2[None, :], s2[None, :]
  ).sum(-1)
  return jnp.mean(k1), jnp.std(k1, ddof=1) / math.sqrt(n)


def make_jax_runners(fn, params, n, seed):
  value = jax.jit(fn, static_argnums=2)
  # Differentiates the estimate (first output); the stderr rides along.
  both = jax.jit(jax.value_and_grad(fn, has_aux=True), static_argnums=2)
  state = {"key": jax.random.key(seed)}

  def next_key():
    state["key"], key = jax.random.split(state["key"])
    return key

  def run_value():
    return jax.block_until_ready(value(params, next_key(), n))

  def run_both():
    (v, se), g = both(params, next_key(), n)
    return jax.block_until_ready(((v, se), g))

  return {"value": run_value, "value+grad": run_both}


def make_torch_runners(params_np, n, seed):
  torch.manual_seed(seed)
  tensors = [torch.tensor(a) for a in params_np]
  leaves = [t.clone().requires_grad_(True) for t in tensors]
  D = torch.distributions

  def estimate(m1, s1, m2, s2):
    p = D.Independent(D.Normal(m1, s1), 1)
    q = D.Independent(D.Normal(m2, s2), 1)
    x = p.rsample((n,))
    k1 = p.log_prob(x) - q.log_prob(x)
    return k1.mean(), k1.std() / math.sqrt(n)

  def run_value():
    with torch.no_grad():
      return estimate(*tensors)

  def run_both():
    for leaf in leaves:
      leaf.grad = None
    v, se = estimate(*leaves)
    v.backward()
    return (v.detach(), se.detach()), tuple(leaf.grad for leaf in leaves)

  return {"value": run_value, "value+grad": run_both}


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def without_tail(fn):
  return lambda params, key, n: fn(params, key, n, tail_diagnostic=False)


def to_np(a) -> np.ndarray:
  if isinstance(a, torch.Tensor):
    return a.detach().numpy()
  return np.asarray(a)


def sanity_check(runners, truth, true_grad) -> tuple[bool, list[str]]:
  """Each estimate within 5 SE of the truth; gradients within 5%."""
  ok, lines = True, []
  flat_true = np.concatenate(true_grad)
  scale = np.max(np.abs(flat_true))
  for name in IMPLEMENTATIONS:
    value, se = runners[name]["value"]()
    (v2, se2), grads = runners[name]["value+grad"]()
    khat = ""
    if isinstance(se, tuple):  # (stderr, pareto_k)
      khat = f"; pareto_k {float(se[1]):.3f}"
      if not float(se[1]) < 0.5:
        ok = False
        khat += " (flagged: the terms here are Gaussian)"
      se, se2 = se[0], se2[0]
    value, se = float(to_np(value)), float(to_np(se))
    v2, se2 = float(to_np(v2)), float(to_np(se2))
    g = np.concatenate([to_np(a).astype(np.float64).ravel() for a in grads])
    z = max(abs(value - truth) / se, abs(v2 - truth) / se2)
    g_err = float(np.max(np.abs(g - flat_true)) / scale)
    good = z <= 5 and g_err <= 0.05
    ok &= good
    lines.append(
      f"{name:<17}: estimate {value:.5f} +- {se:.5f} (truth {truth:.5f}, "
      f"max |z| {z:.2f}); grad max rel err {g_err:.4f}{khat} -> "
      f"{'OK' if good else 'MISMATCH'}"
    )
  return ok, lines


def paired_tail_cost(runners, pairs: int) -> dict:
  """Alternates calls with and without ``pareto_k``; ms and ratios."""
  out = {}
  for impl in ("jaxkl-numpyro", "jaxkl-pushforward"):
    for mode in MODES:
      with_fn, without_fn = runners[impl][mode], runners[impl + "-no-tail"][mode]
      times = {"with": [], "without": []}
      for i in range(pairs):
        order = (("with", with_fn), ("without", without_fn))
        for name, fn in order if i % 2 == 0 else order[::-1]:
          start = time.perf_counter()
          fn()
          times[name].append((time.perf_counter() - start) * 1e3)
      ratios = sorted(
        a / b for a, b in zip(times["with"], times["without"], strict=False)
      )
      q = statistics.quantiles(ratios, n=4)
      out[(impl, mode)] = {
        **times,
        "ratio_median": statistics.median(ratios),
        "ratio_q1": q[0],
        "ratio_q3": q[2],
      }
  return out


def isolated_tail_cost(n: int, pairs: int, seed: int) -> dict:
  """The estimator alone on ``n`` precomputed log-ratios, with/without k-hat.

  ``jaxkl._estimators.estimate_from_log_ratios`` (mean, standard error and,
  with ``tail_diagnostic=True``, pareto_k), jitted, alternating; ms.
  """
  from jaxkl import _estimators  # pylint: disable=import-outside-toplevel

  log_r = jax.random.normal(jax.random.key(seed), (n,))
  out = {}
  for estimator in ("k1", "k3"):
    fns = {
      flag: jax.jit(
        functools.partial(
          _estimators.estimate_from_log_ratios,
          estimator=estimator,
          axes=(0,),
          tail_diagnostic=flag,
        )
      )
      for flag in (True, False)
    }
    for fn in fns.values():
      jax.block_until_ready(fn(log_r))
    times = {True: [], False: []}
    for i in range(pairs):
      for flag in (True, False) if i % 2 == 0 else (False, True):
        start = time.perf_counter()
        jax.block_until_ready(fns[flag](log_r))
        times[flag].append((time.perf_counter() - start) * 1e3)
    out[estimator] = {"with": times[True], "without": times[False]}
  return out


def render_markdown(env, args, summary, sanity_lines, paired, isolated) -> str:
  out = ["# Monte-Carlo KL benchmark", ""]
  out.append(
    f"Problem: KL(P || Q) between two {DIM}-D diagonal Gaussians from "
    f"{args.samples:,} reparameterized samples of P, estimator k1, float32;"
    f" each call returns the estimate and its standard error, with fresh "
    f"random numbers; 'value+grad' adds the pathwise gradient with respect"
    f" to both distributions' means and scales. Best (median) of "
    f"{args.repeats} runs after warm-up, in blocks (see time_blocks). "
    f"Ratios use the best time: on this shared 2-core machine the median "
    f"carries other tenants' load."
  )
  out += ["", "## Environment", ""]
  out += [f"- {k}: {v}" for k, v in env.items()]
  out += ["", "## Sanity (against the closed form)", ""]
  out += [f"- {line}" for line in sanity_lines]
  out += ["", "## Timings", ""]
  out.append(
    "| implementation | value ms: best (median) "
    "| value+grad ms: best (median) "
    "| value time / torch's | value+grad time / torch's |"
  )
  out.append("|---|---:|---:|---:|---:|")
  tv = summary["torch"]["value"]["min"]
  tb = summary["torch"]["value+grad"]["min"]
  for impl in IMPLEMENTATIONS:
    v, b = summary[impl]["value"], summary[impl]["value+grad"]
    out.append(
      f"| {impl} | {v['min']:.1f} ({v['median']:.1f}) "
      f"| {b['min']:.1f} ({b['median']:.1f}) "
      f"| {v['min'] / tv:.2f} | {b['min'] / tb:.2f} |"
    )
  out += ["", "## Cost of the tail diagnostic (pareto_k)", ""]
  out.append(
    f"Paired: {args.pairs} calls with and {args.pairs} without "
    "`pareto_k`, alternating one by one (same kind of work, so the "
    "machine's drift hits both alike); the ratio is the median over pairs "
    "of (with / without). The block timings above give the same "
    "comparison from separate blocks."
  )
  out.append("")
  out.append(
    "| sampler | mode | with ms: best (median) | without ms: best "
    "(median) | paired ratio: median [quartiles] | blocks: best "
    "ratio |"
  )
  out.append("|---|---|---:|---:|---:|---:|")
  for impl in ("jaxkl-numpyro", "jaxkl-pushforward"):
    for mode in MODES:
      c = paired[(impl, mode)]
      a, b = summary[impl][mode], summary[impl + "-no-tail"][mode]
      out.append(
        f"| {impl} | {mode} | {min(c['with']):.1f} "
        f"({statistics.median(c['with']):.1f}) | {min(c['without']):.1f} "
        f"({statistics.median(c['without']):.1f}) | "
        f"{c['ratio_median']:.3f} [{c['ratio_q1']:.3f}, "
        f"{c['ratio_q3']:.3f}] | {a['min'] / b['min']:.3f} |"
      )
  out.append("")
  out.append(
    f"The estimator alone on {args.samples:,} precomputed float32 "
    "log-ratios (`estimate_from_log_ratios`: mean and standard error, "
    "plus pareto_k or not), alternating, ms: the diagnostic's absolute "
    "cost, which is what it adds to any `monte_carlo_kl` call of this n "
    "(a large share when sampling and log-densities are cheap, e.g. 1-D "
    "problems: pass `tail_diagnostic=False` there if it matters)."
  )
  out.append("")
  out.append(
    "| estimator | with: best (median) | without: best (median) | added: best |"
  )
  out.append("|---|---:|---:|---:|")
  for name, c in isolated.items():
    out.append(
      f"| {name} | {min(c['with']):.2f} "
      f"({statistics.median(c['with']):.2f}) | "
      f"{min(c['without']):.2f} "
      f"({statistics.median(c['without']):.2f}) | "
      f"{min(c['with']) - min(c['without']):.2f} |"
    )
  out += ["", "## Notes", ""]
  out.append(
    "- Most of the time is drawing 10^7 normal numbers and evaluating two "
    "log-densities on them; jaxkl's own reduction (mean, standard error) "
    "is one fused pass. `plain-jax` is the same computation written by "
    "hand: the gap to it is jaxkl's overhead."
  )
  out.append(
    "- JAX draws with threefry (counter-based, reproducible across "
    "devices), PyTorch with its CPU generator (Mersenne Twister): the "
    "random-number generators differ in cost."
  )
  return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
def environment() -> dict:
  return _common.environment(
    versions={"numpyro": numpyro.__version__, "torch": torch.__version__},
    extra={"torch_num_threads": torch.get_num_threads()},
  )


def time_blocks(runners, repeats: int, rounds: int = 3) -> dict:
  """``_common.time_blocks`` over this script's implementations and modes."""
  return _common.time_blocks(runners, IMPLEMENTATIONS, MODES, repeats, rounds)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--samples", type=int, default=1_000_000)
  p.add_argument("--repeats", type=int, default=15)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--pairs",
    type=int,
    default=20,
    help="alternating with/without-pareto_k pairs per mode",
  )
  p.add_argument(
    "--output",
    type=Path,
    default=None,
    help="Markdown path (default benchmarks/results/"
    "monte_carlo_<backend>.md); the JSON goes next to it",
  )
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  torch.set_num_threads(os.cpu_count() or 1)
  env = environment()
  for k, v in env.items():
    print(f"{k}: {v}")
  params_np = make_parameters(args.seed)
  truth, true_grad = closed_form(*params_np)
  params = tuple(jnp.asarray(a) for a in params_np)
  n = args.samples

  runners = {
    "jaxkl-numpyro": make_jax_runners(jaxkl_numpyro, params, n, args.seed),
    "jaxkl-numpyro-no-tail": make_jax_runners(
      without_tail(jaxkl_numpyro), params, n, args.seed
    ),
    "jaxkl-pushforward": make_jax_runners(jaxkl_pushforward, params, n, args.seed),
    "jaxkl-pushforward-no-tail": make_jax_runners(
      without_tail(jaxkl_pushforward), params, n, args.seed
    ),
    "plain-jax": make_jax_runners(plain_jax, params, n, args.seed),
    "torch": make_torch_runners(params_np, n, args.seed),
  }
  for impl in IMPLEMENTATIONS:  # warm-up: compile everything
    for mode in MODES:
      runners[impl][mode]()

  ok, sanity_lines = sanity_check(runners, truth, true_grad)
  print("\nSanity:")
  for line in sanity_lines:
    print("  " + line)
  if not ok:
    print("SANITY CHECK FAILED", file=sys.stderr)
    return 1

  times = time_blocks(runners, args.repeats)
  summary = _common.summarize(times, IMPLEMENTATIONS, MODES)
  paired = paired_tail_cost(runners, args.pairs)
  isolated = isolated_tail_cost(n, 2 * args.pairs, args.seed)
  env["load_average_at_end"] = _common.load_average()
  md = render_markdown(env, args, summary, sanity_lines, paired, isolated)
  print("\n" + md.split("## Timings\n\n", 1)[1])
  output = args.output or RESULTS_DIR / f"monte_carlo_{jax.default_backend()}.md"
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(md, encoding="utf-8")
  json_path = output.with_suffix(".json")
  json_path.write_text(
    json.dumps(
      {
        "problem": {
          "dim": DIM,
          "samples": n,
          "dtype": "float32",
          "estimator": "k1",
          "repeats": args.repeats,
          "seed": args.seed,
          "closed_form_kl": truth,
        },
        "environment": env,
        "sanity": sanity_lines,
        "results_ms": summary,
        "tail_diagnostic_paired_ms": {
          f"{impl}/{mode}": v for (impl, mode), v in paired.items()
        },
        "tail_diagnostic_isolated_ms": isolated,
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
