"""Benchmark ``jaxkl.kl`` on distribution objects: dispatch cost and throughput.

What it measures
----------------
For ``--pairs`` (default 10^6) random float32 parameter pairs of each case
below, on the default JAX backend (CPU here) and on PyTorch CPU:

(a) **Dispatch adds nothing under jit.** ``jax.jit(lambda p, q:
    jaxkl.kl(p, q))`` on NumPyro objects (passed as pytrees) is compiled and
    its optimized HLO (``.lower(p, q).compile().as_text()``) compared with
    that of ``jax.jit`` of the direct call on the parameter arrays: the
    public ``kl_*`` function for same-family pairs, the registry's ``PAIRS``
    function (``f(p_params, q_params)``) for cross-family pairs, which have
    no public ``kl_*``. The texts are compared after removing what names
    and source locations leave in them (metadata, stack frames, the
    module's name, parameter and instruction names): "identical" means
    the same instructions, shapes and operands in the same order. Both are
    timed, and their outputs must be bitwise equal.
(b) **Throughput against torch.distributions.** The same pairs as
    ``torch.distributions`` objects (float32, built before timing, argument
    validation off) through ``torch.distributions.kl_divergence`` under
    ``torch.no_grad()``, ``torch.set_num_threads(os.cpu_count())``.

Cases (P ‖ Q): Normal, MultivariateNormal (d = 4, Cholesky factors),
Gamma, Beta, Dirichlet (K = 8), Categorical (K = 16, logits), Poisson,
Laplace, and the cross-family Exponential ‖ Gamma and Uniform ‖ Normal.
Parameters are drawn from seeded NumPy generators (log-normal scales,
rates and concentrations; standard normal locations and logits).

Sanity, before timing (exit status 1 if it fails): on the first 20 000
pairs, jaxkl's float32 values must lie within 1e-4 relative (plus 1e-6
absolute) of torch.distributions in float64; torch's float32 error against
the same reference is reported alongside.

Timing: every function is warmed up (compiled) first; each
(implementation, case) is then timed in contiguous blocks of calls, the
set of blocks repeated three times in alternating order
(``_common.time_blocks``); each call ends with ``block_until_ready()``. We
report the best and the median; ratios use the best (on this shared
machine the median carries other tenants' load).

Output: a Markdown table written to ``--output`` (default
``benchmarks/results/closed_forms_<backend>.md``) and the raw timings as
JSON next to it.

How to run
----------
    . .venv/bin/activate
    python benchmarks/bench_closed_forms.py            # 10^6 pairs, a few minutes
    python benchmarks/bench_closed_forms.py --quick    # 10^4 pairs, for validation
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import sys
import tempfile
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common  # benchmarks/_common.py
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import torch
import torch.distributions as td

import jaxkl
from jaxkl._closed_forms import _registry
from jaxkl._closed_forms import discrete
from jaxkl._closed_forms import normal
from jaxkl._closed_forms import positive

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMPLEMENTATIONS = ("jaxkl.kl", "direct", "torch")
SANITY_PAIRS = 20_000
RTOL, ATOL = 1e-4, 1e-6

# `jaxkl.kl` once the lead exports it; the private module until then.
KL = getattr(jaxkl, "kl", None) or __import__("jaxkl._kl", fromlist=["kl"]).kl


# --------------------------------------------------------------------------- #
# Cases
# --------------------------------------------------------------------------- #
@dataclass
class Case:
  """One pair of families: parameters, the three ways to compute the KL."""

  name: str
  params: Callable[[np.random.Generator, int], tuple[dict, dict]]
  numpyro: Callable[[dict], Any]  # NumPyro object from parameters
  torch: Callable[[dict], Any]  # torch object from (tensor) parameters
  direct: Callable[[dict, dict], Any]  # jaxkl function on the arrays
  direct_name: str
  q_numpyro: Callable[[dict], Any] | None = None  # when Q's family differs
  q_torch: Callable[[dict], Any] | None = None


def _positive(rng, n, sigma=0.5, shape=()):
  return np.exp(sigma * rng.standard_normal((n, *shape))).astype(np.float32)


def _normal(rng, n, shape=()):
  return rng.standard_normal((n, *shape)).astype(np.float32)


def _tril(rng, n, d):
  off = np.tril(0.3 * rng.standard_normal((n, d, d)), -1)
  diag = np.exp(0.3 * rng.standard_normal((n, d)))
  return (off + diag[..., None] * np.eye(d)).astype(np.float32)


def _loc_scale(rng, n):
  return {"loc": _normal(rng, n), "scale": _positive(rng, n)}


def _pair(make):
  return lambda rng, n: (make(rng, n), make(rng, n))


def _registry_fn(p_family: str, q_family: str) -> Callable[[dict, dict], Any]:
  fn = _registry.builtin(p_family, q_family)
  if fn is None:
    raise SystemExit(f"jaxkl has no closed form for {p_family} ‖ {q_family}")
  return fn


CASES = [
  Case(
    "Normal ‖ Normal",
    _pair(_loc_scale),
    lambda a: dist.Normal(a["loc"], a["scale"]),
    lambda a: td.Normal(a["loc"], a["scale"]),
    lambda p, q: normal.kl_normal(p["loc"], p["scale"], q["loc"], q["scale"]),
    "kl_normal",
  ),
  Case(
    "MVN ‖ MVN (d=4)",
    _pair(
      lambda rng, n: {"loc": _normal(rng, n, (4,)), "scale_tril": _tril(rng, n, 4)}
    ),
    lambda a: dist.MultivariateNormal(a["loc"], scale_tril=a["scale_tril"]),
    lambda a: td.MultivariateNormal(a["loc"], scale_tril=a["scale_tril"]),
    lambda p, q: normal.kl_multivariate_normal(
      p["loc"], p["scale_tril"], q["loc"], q["scale_tril"]
    ),
    "kl_multivariate_normal",
  ),
  Case(
    "Gamma ‖ Gamma",
    _pair(
      lambda rng, n: {"concentration": _positive(rng, n), "rate": _positive(rng, n)}
    ),
    lambda a: dist.Gamma(a["concentration"], a["rate"]),
    lambda a: td.Gamma(a["concentration"], a["rate"]),
    lambda p, q: positive.kl_gamma(
      p["concentration"], p["rate"], q["concentration"], q["rate"]
    ),
    "kl_gamma",
  ),
  Case(
    "Beta ‖ Beta",
    _pair(lambda rng, n: {"c1": _positive(rng, n), "c0": _positive(rng, n)}),
    lambda a: dist.Beta(a["c1"], a["c0"]),
    lambda a: td.Beta(a["c1"], a["c0"]),
    lambda p, q: positive.kl_beta(p["c1"], p["c0"], q["c1"], q["c0"]),
    "kl_beta",
  ),
  Case(
    "Dirichlet ‖ Dirichlet (K=8)",
    _pair(lambda rng, n: {"concentration": _positive(rng, n, shape=(8,))}),
    lambda a: dist.Dirichlet(a["concentration"]),
    lambda a: td.Dirichlet(a["concentration"]),
    lambda p, q: positive.kl_dirichlet(p["concentration"], q["concentration"]),
    "kl_dirichlet",
  ),
  Case(
    "Categorical ‖ Categorical (K=16)",
    _pair(lambda rng, n: {"logits": _normal(rng, n, (16,))}),
    lambda a: dist.CategoricalLogits(a["logits"]),
    lambda a: td.Categorical(logits=a["logits"]),
    lambda p, q: discrete.kl_categorical(p["logits"], q["logits"]),
    "kl_categorical",
  ),
  Case(
    "Poisson ‖ Poisson",
    _pair(lambda rng, n: {"rate": _positive(rng, n, 1.0)}),
    lambda a: dist.Poisson(a["rate"]),
    lambda a: td.Poisson(a["rate"]),
    lambda p, q: discrete.kl_poisson(p["rate"], q["rate"]),
    "kl_poisson",
  ),
  Case(
    "Laplace ‖ Laplace",
    _pair(_loc_scale),
    lambda a: dist.Laplace(a["loc"], a["scale"]),
    lambda a: td.Laplace(a["loc"], a["scale"]),
    lambda p, q: positive.kl_laplace(p["loc"], p["scale"], q["loc"], q["scale"]),
    "kl_laplace",
  ),
  Case(
    "Exponential ‖ Gamma",
    lambda rng, n: (
      {"rate": _positive(rng, n)},
      {"concentration": _positive(rng, n), "rate": _positive(rng, n)},
    ),
    lambda a: dist.Exponential(a["rate"]),
    lambda a: td.Exponential(a["rate"]),
    _registry_fn("exponential", "gamma"),
    "PAIRS[('exponential', 'gamma')]",
    q_numpyro=lambda a: dist.Gamma(a["concentration"], a["rate"]),
    q_torch=lambda a: td.Gamma(a["concentration"], a["rate"]),
  ),
  Case(
    "Uniform ‖ Normal",
    lambda rng, n: (
      (lambda low: {"low": low, "high": low + _positive(rng, n)})(_normal(rng, n)),
      _loc_scale(rng, n),
    ),
    lambda a: dist.Uniform(a["low"], a["high"]),
    lambda a: td.Uniform(a["low"], a["high"]),
    _registry_fn("uniform", "normal"),
    "PAIRS[('uniform', 'normal')]",
    q_numpyro=lambda a: dist.Normal(a["loc"], a["scale"]),
    q_torch=lambda a: td.Normal(a["loc"], a["scale"]),
  ),
]


# --------------------------------------------------------------------------- #
# HLO comparison
# --------------------------------------------------------------------------- #
_DEBUG_SECTIONS = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def normalize_hlo(text: str) -> str:
  """Optimized HLO text without names and source locations.

  Drops the debug tables (file/function names, locations, stack frames),
  ``metadata={...}`` and ``stack_frame_id=`` attributes, the module's name,
  parameter names in computation signatures, and renames every ``%name``
  by order of first appearance.
  """
  lines, skipping = [], False
  for line in text.splitlines():
    if line.strip() in _DEBUG_SECTIONS:
      skipping = True
      continue
    if skipping:
      skipping = bool(line.strip())
      continue
    lines.append(line)
  text = "\n".join(lines)
  text = re.sub(r",?\s*metadata=\{[^}]*\}", "", text)
  text = re.sub(r",?\s*stack_frame_id=\d+", "", text)
  text = re.sub(r"^HloModule \S+", "HloModule", text, flags=re.M)
  text = re.sub(r"([(,]\s*)[\w.\-]+(?=: [a-z]+\d*\[)", r"\1_", text)
  names: dict[str, str] = {}
  return re.sub(
    r"%[\w.\-]+", lambda m: names.setdefault(m.group(0), f"%v{len(names)}"), text
  )


_COMPUTATION = re.compile(r"^(ENTRY\s+)?(%[\w.\-]+)\s*\(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?(%[\w.\-]+)\s*=\s*(.*)$")
# Instructions whose called computation is a piece of the same dataflow
# (its parameters are the call's operands, in whatever order XLA chose).
_INLINED = ("fusion", "call")


def _balanced(text: str, start: int) -> int:
  """The index just past the parenthesis closing the one at ``start``."""
  depth = 0
  for k in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[k], 0)
    if depth == 0:
      return k + 1
  raise ValueError(f"unbalanced parentheses in {text!r}")


def _parse_instruction(rhs: str) -> tuple[str, str, list[str], str]:
  """``(type, opcode, operand names, attributes)`` of an instruction."""
  rhs = re.sub(r"/\*index=\d+\*/", "", rhs)
  end = _balanced(rhs, 0) if rhs.startswith("(") else rhs.index(" ")
  shape, rest = rhs[:end], rhs[end:].lstrip()
  open_paren = rest.index("(")
  close = _balanced(rest, open_paren)
  opcode = rest[:open_paren]
  operands = re.findall(r"%[\w.\-]+", rest[open_paren:close])
  literal = re.sub(r"%[\w.\-]+", "", rest[open_paren:close])  # constants
  return shape, opcode + literal, operands, rest[close:]


def hlo_fingerprint(text: str, entry_labels: list[str]) -> str:
  """A hash of the ENTRY computation's dataflow graph.

  The ENTRY computation's ``parameter(i)`` is hashed as ``entry_labels[i]``
  (what the argument is, e.g. ``"p.loc"``), so programs that number their
  arguments differently, or take unused ones, compare by what reaches the
  output. Each instruction hashes its type, opcode, attributes and its
  operands' hashes; a ``fusion`` or ``call`` hashes its called computation
  evaluated on the operands' hashes (so the order XLA gave the fused
  computation's parameters does not matter); other called computations
  (reductions' ``to_apply``, loop bodies) are hashed on their own. Names,
  and the printing order of independent instructions and of computations,
  do not enter: equal fingerprints mean the same computation graph.
  """
  text = normalize_hlo(text)
  computations: dict[str, list[tuple[str, str, bool]]] = {}
  entry, current = "", ""
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
      continue
    match = _INSTRUCTION.match(line)
    if match and current:
      root, name, rhs = match.groups()
      computations[current].append((name, rhs, bool(root)))
  memo: dict[tuple[str, tuple[str, ...] | None], str] = {}

  def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]

  def evaluate(comp: str, args: tuple[str, ...] | None) -> str:
    key = (comp, args)
    if key in memo:
      return memo[key]
    hashes: dict[str, str] = {}
    result = ""
    for name, rhs, is_root in computations[comp]:
      shape, opcode, operands, attrs = _parse_instruction(rhs)
      ins = tuple(hashes.get(o, o) for o in operands)
      called = re.findall(r"(\w+)=(%[\w.\-]+)", attrs)
      attrs_plain = re.sub(r"\w+=%[\w.\-]+", "", attrs)
      if opcode.startswith("parameter") and args is not None:
        index = int(re.search(r"\d+", opcode).group())
        hashes[name] = args[index]
      elif opcode in _INLINED and called:
        (_, callee), *_ = called
        inner = evaluate(callee, ins)
        hashes[name] = digest(shape, opcode, attrs_plain, inner)
      else:
        subs = [f"{k}:{evaluate(c, None)}" for k, c in called if c in computations]
        hashes[name] = digest(shape, opcode, attrs_plain, *ins, *subs)
      if is_root:
        result = hashes[name]
    memo[key] = result
    return result

  if not entry:
    return ""
  entry_args = tuple(digest("entry", label) for label in entry_labels)
  return evaluate(entry, entry_args)


def _kl_objects(p, q):
  return KL(p, q)


# --------------------------------------------------------------------------- #
# Runners
# --------------------------------------------------------------------------- #
def build(case: Case, n: int, seed: int):
  """Parameters, objects, jitted functions and runners for one case."""
  rng = np.random.default_rng(seed)
  p_np, q_np = case.params(rng, n)
  p_jx = {k: jnp.asarray(v) for k, v in p_np.items()}
  q_jx = {k: jnp.asarray(v) for k, v in q_np.items()}
  p_obj = case.numpyro(p_jx)
  q_obj = (case.q_numpyro or case.numpyro)(q_jx)
  p_t = {k: torch.from_numpy(v.copy()) for k, v in p_np.items()}
  q_t = {k: torch.from_numpy(v.copy()) for k, v in q_np.items()}
  tp, tq = case.torch(p_t), (case.q_torch or case.torch)(q_t)

  via_kl = jax.jit(_kl_objects)
  # The direct call takes the arrays as tuples in the order the objects
  # flatten them (NumPyro's constructor order), so that the two programs
  # number their parameters alike.
  p_keys, q_keys = tuple(p_jx), tuple(q_jx)

  def direct_fn(pt, qt):
    return case.direct(
      dict(zip(p_keys, pt, strict=True)), dict(zip(q_keys, qt, strict=True))
    )

  direct = jax.jit(direct_fn)
  p_jx, q_jx = tuple(p_jx.values()), tuple(q_jx.values())

  def run_kl():
    return via_kl(p_obj, q_obj).block_until_ready()

  def run_direct():
    return direct(p_jx, q_jx).block_until_ready()

  def run_torch():
    with torch.no_grad():
      return td.kl_divergence(tp, tq)

  # For the HLO, every argument is kept (``keep_unused``), so that ENTRY's
  # parameter(i) is the i-th leaf of the arguments, labelled by name: the
  # objects may carry leaves the KL does not read (NumPyro's Beta holds its
  # stacked concentrations too).
  hlo_kl = (
    jax.jit(_kl_objects, keep_unused=True).lower(p_obj, q_obj).compile().as_text()
  )
  hlo_direct = (
    jax.jit(direct_fn, keep_unused=True).lower(p_jx, q_jx).compile().as_text()
  )
  labelled = [(f"p.{k}", v) for k, v in zip(p_keys, p_jx, strict=True)]
  labelled += [(f"q.{k}", v) for k, v in zip(q_keys, q_jx, strict=True)]
  names = {id(v): label for label, v in labelled}

  def label(i: int, leaf) -> str:
    """The argument a leaf is: the same array, or else an equal one (an
    object may store a broadcast or converted copy of its parameter)."""
    if id(leaf) in names:
      return names[id(leaf)]
    for name, v in labelled:
      if leaf.shape == v.shape and bool(jnp.array_equal(leaf, v)):
        return name
    return f"unlabelled{i}"

  kl_labels = [
    label(i, leaf) for i, leaf in enumerate(jax.tree_util.tree_leaves((p_obj, q_obj)))
  ]
  direct_labels = [names[id(v)] for v in (*p_jx, *q_jx)]
  a, b = normalize_hlo(hlo_kl), normalize_hlo(hlo_direct)
  if a == b:
    verdict = "identical"
  elif hlo_fingerprint(hlo_kl, kl_labels) == hlo_fingerprint(hlo_direct, direct_labels):
    verdict = "identical graph"
  else:
    verdict = "DIFFERENT"
  diff = list(difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0))
  return {
    "runners": {"jaxkl.kl": run_kl, "direct": run_direct, "torch": run_torch},
    "hlo": verdict,
    "hlo_identical": verdict != "DIFFERENT",
    "hlo_diff": [] if verdict != "DIFFERENT" else diff[:40],
    "hlo_lines": len(normalize_hlo(hlo_direct).splitlines()),
    "p_np": p_np,
    "q_np": q_np,
  }


def sanity(case: Case, built: dict) -> tuple[bool, dict]:
  """jaxkl (f32) and torch (f32) against torch in float64, first pairs."""
  runners = built["runners"]
  v_kl = np.asarray(runners["jaxkl.kl"]())
  v_direct = np.asarray(runners["direct"]())
  v_torch = runners["torch"]().numpy()
  m = min(SANITY_PAIRS, v_kl.shape[0])

  def f64(params):
    return {k: torch.from_numpy(v[:m].astype(np.float64)) for k, v in params.items()}

  ref = td.kl_divergence(
    case.torch(f64(built["p_np"])), (case.q_torch or case.torch)(f64(built["q_np"]))
  ).numpy()

  def err(x):
    x = x[:m].astype(np.float64)
    return float(np.max(np.abs(x - ref) / (np.abs(ref) + ATOL / RTOL)))

  bitwise = bool(np.array_equal(v_kl, v_direct))
  info = {
    "jaxkl_max_rel_err_vs_torch_f64": err(v_kl),
    "torch_f32_max_rel_err_vs_torch_f64": err(v_torch),
    "jaxkl_kl_equals_direct_bitwise": bitwise,
    "finite": bool(np.all(np.isfinite(v_kl))),
  }
  ok = bitwise and info["finite"] and info["jaxkl_max_rel_err_vs_torch_f64"] <= RTOL
  return ok, info


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #
def render_markdown(env, args, cases, summary, checks) -> str:
  out = ["# Closed-form KL benchmark: `jaxkl.kl` dispatch and throughput", ""]
  out.append(
    f"Problem: {args.pairs:,} float32 parameter pairs per case; "
    "`jax.jit(lambda p, q: jaxkl.kl(p, q))` on NumPyro objects (pytrees) vs "
    "`jax.jit` of the direct call on the arrays (the public `kl_*` function; "
    "for cross-family pairs the registry's `PAIRS` function) vs "
    "`torch.distributions.kl_divergence` (float32, `no_grad`, "
    f"{torch.get_num_threads()} threads). Best (median) of {args.repeats} runs "
    "after warm-up, in blocks (see `_common.time_blocks`); ratios use the "
    "best time (on this shared machine the median carries other tenants' "
    "load)."
  )
  out.append("")
  out.append(
    "HLO: the optimized HLO of the two jitted functions, compared after "
    "removing names, metadata and source locations (see `normalize_hlo`). "
    '"identical" means the compiled programs are the same instruction for '
    "instruction, so the dispatch (reading the objects' types, mapping their "
    "parameters, choosing the formula) runs only at trace time."
  )
  out += ["", "## Environment", ""]
  out += [f"- {k}: {v}" for k, v in env.items()]
  out += ["", "## Results", ""]
  out.append(
    "| P ‖ Q | direct call | HLO | jaxkl.kl ms | direct ms | torch ms "
    "| jaxkl.kl / direct | torch / jaxkl.kl |"
  )
  out.append("|---|---|---|---:|---:|---:|---:|---:|")
  for case in cases:
    s = {impl: summary[impl][case.name] for impl in IMPLEMENTATIONS}
    c = checks[case.name]
    out.append(
      f"| {case.name} | `{case.direct_name}` "
      f"| {c['hlo']} "
      + " ".join(f"| {s[i]['min']:.2f} ({s[i]['median']:.2f})" for i in IMPLEMENTATIONS)
      + f" | {s['jaxkl.kl']['min'] / s['direct']['min']:.2f} "
      f"| {s['torch']['min'] / s['jaxkl.kl']['min']:.2f} |"
    )
  out += ["", "## Per-call host overhead (one pair)", ""]
  out.append(
    "The same jitted functions on a single pair, best of 5 x 200 calls: what "
    "remains is Python's side of a call (flattening the NumPyro objects as "
    "pytrees, the jit cache lookup), paid once per call, not per pair."
  )
  out.append("")
  out.append("| P ‖ Q | jaxkl.kl µs | direct µs |")
  out.append("|---|---:|---:|")
  for case in cases:
    c = checks[case.name]
    out.append(
      f"| {case.name} | {c['per_call_us_one_pair_jaxkl.kl']:.1f} "
      f"| {c['per_call_us_one_pair_direct']:.1f} |"
    )
  out += ["", "## Sanity (first pairs, against torch.distributions in float64)", ""]
  out.append(
    "| P ‖ Q | jaxkl f32 max rel. err. | torch f32 max rel. err. "
    "| jaxkl.kl == direct (bitwise) |"
  )
  out.append("|---|---:|---:|:-:|")
  for case in cases:
    c = checks[case.name]
    out.append(
      f"| {case.name} | {c['jaxkl_max_rel_err_vs_torch_f64']:.1e} "
      f"| {c['torch_f32_max_rel_err_vs_torch_f64']:.1e} "
      f"| {'yes' if c['jaxkl_kl_equals_direct_bitwise'] else 'NO'} |"
    )
  out.append("")
  out.append(
    f"Relative error: max |x - ref| / (|ref| + {ATOL / RTOL:g}) over the first "
    f"{SANITY_PAIRS:,} pairs (all of them if fewer)."
  )
  return "\n".join(out) + "\n"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--pairs", type=int, default=1_000_000)
  p.add_argument("--repeats", type=int, default=15)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--quick",
    action="store_true",
    help="10^4 pairs, 3 repeats, output to the temporary directory: for "
    "validating the script",
  )
  p.add_argument(
    "--output",
    type=Path,
    default=None,
    help="Markdown path (default benchmarks/results/closed_forms_<backend>.md, "
    "with --quick in the temporary directory); the JSON goes next to it",
  )
  args = p.parse_args(argv)
  if args.quick:
    args.pairs, args.repeats = 10_000, 3
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  torch.set_num_threads(os.cpu_count() or 1)
  td.Distribution.set_default_validate_args(False)
  numpyro.enable_validation(False)
  env = _common.environment(
    versions={"torch": torch.__version__, "numpyro": numpyro.__version__},
    extra={"torch_num_threads": torch.get_num_threads()},
  )
  for k, v in env.items():
    print(f"{k}: {v}")
  print(f"problem: {args.pairs} pairs per case, float32, repeats={args.repeats}")

  built = {}
  checks = {}
  ok = True
  for i, case in enumerate(CASES):
    built[case.name] = build(case, args.pairs, args.seed + i)
    for run in built[case.name]["runners"].values():  # warm-up: compile
      run()
    good, info = sanity(case, built[case.name])
    info["hlo"] = built[case.name]["hlo"]
    info["hlo_identical"] = built[case.name]["hlo_identical"]
    info["hlo_lines"] = built[case.name]["hlo_lines"]
    info["hlo_diff"] = built[case.name]["hlo_diff"]
    if info["hlo_diff"]:
      print("\n".join(info["hlo_diff"]))
    checks[case.name] = info
    ok &= good and info["hlo_identical"]
    print(
      f"{case.name}: HLO {info['hlo']} "
      f"({info['hlo_lines']} lines), jaxkl err "
      f"{info['jaxkl_max_rel_err_vs_torch_f64']:.1e}, torch f32 err "
      f"{info['torch_f32_max_rel_err_vs_torch_f64']:.1e}, bitwise "
      f"{info['jaxkl_kl_equals_direct_bitwise']} -> {'OK' if good else 'FAIL'}"
    )
  if not ok:
    print("SANITY CHECK FAILED", file=sys.stderr)
    return 1

  # Host-side cost per call at one pair: flattening the objects (pytrees)
  # and the jit cache lookup; the compiled programs are the same.
  for i, case in enumerate(CASES):
    tiny = build(case, 1, args.seed + i)["runners"]
    for impl in ("jaxkl.kl", "direct"):
      tiny[impl]()
      best = min(timeit.repeat(tiny[impl], number=200, repeat=5)) / 200
      checks[case.name][f"per_call_us_one_pair_{impl}"] = best * 1e6

  runners = {
    impl: {case.name: built[case.name]["runners"][impl] for case in CASES}
    for impl in IMPLEMENTATIONS
  }
  names = [case.name for case in CASES]
  times = _common.time_blocks(runners, IMPLEMENTATIONS, names, args.repeats)
  env["load_average_at_end"] = _common.load_average()
  summary = _common.summarize(times, IMPLEMENTATIONS, names)

  md = render_markdown(env, args, CASES, summary, checks)
  print("\n" + md.split("## Results\n\n", 1)[1])
  # --quick validates the script: its numbers do not go to results/.
  results = Path(tempfile.gettempdir()) if args.quick else RESULTS_DIR
  output = args.output or results / f"closed_forms_{jax.default_backend()}.md"
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(md, encoding="utf-8")
  json_path = output.with_suffix(".json")
  json_path.write_text(
    json.dumps(
      {
        "problem": {
          "pairs": args.pairs,
          "dtype": "float32",
          "repeats": args.repeats,
          "seed": args.seed,
          "cases": {c.name: c.direct_name for c in CASES},
        },
        "environment": env,
        "checks": checks,
        "results_ms": summary,
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
