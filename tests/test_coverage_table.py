"""The coverage table (``docs/coverage.md``) is current and says true things.

``scripts/coverage_table.py`` reads jaxkl's closed-form registry and the
installed torch.distributions, TFP, Distrax and NumPyro registries. The page
is regenerated in-process once (about 20 s: library imports, jaxkl's +inf
probes, the structural probes) and compared with the committed file. The
peers' registries change between releases, so the full comparison runs when
the installed versions are those recorded in the page; jaxkl's own columns
are compared always. The spot checks assert cells against the libraries
themselves (torch's ``_KL_REGISTRY``, jaxkl's ``builtin_pairs``, and values
computed here).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "coverage_table.py"
PAGE = ROOT / "docs" / "coverage.md"

pytest.importorskip("torch")
pytest.importorskip("numpyro")
pytest.importorskip("tensorflow_probability.substrates.jax")


def _load():
  spec = importlib.util.spec_from_file_location("coverage_table", SCRIPT)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  sys.modules["coverage_table"] = module  # dataclasses look the module up
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def ct():
  return _load()


@pytest.fixture(scope="module")
def built(ct):
  return ct.build()


@pytest.fixture(scope="module")
def result(built):
  return built[0]


@pytest.fixture(scope="module")
def text(built):
  return built[1]


def _versions(page: str) -> dict[str, str]:
  line = next(l for l in page.splitlines() if l.startswith("Generated with "))
  items = line.removeprefix("Generated with ").rstrip(".").split(", ")
  return dict(item.rsplit(" ", 1) for item in items)


def _column(page: str, title: str) -> dict[str, str]:
  """``{row label: mark}`` of one column, over both tables."""
  out = {}
  header = None
  for line in page.splitlines():
    if not line.startswith("|"):
      header = None
      continue
    cells = [c.strip() for c in line.strip("|").split("|")]
    if header is None:
      header = cells
      continue
    if set(cells[0]) <= {"-", ":"}:
      continue
    out[cells[0]] = cells[header.index(title)]
  return out


def _cell(result, p: str, q: str, column: str) -> str:
  row = result.cells.get((p, q))
  return "—" if row is None else row[column].mark


def test_jaxkl_columns_are_current(text):
  """jaxkl's column (closed forms and structural rules) matches the page."""
  committed = PAGE.read_text(encoding="utf-8")
  assert _column(committed, "jaxkl") == _column(text, "jaxkl"), (
    "docs/coverage.md is out of date: run `python scripts/coverage_table.py`"
  )


def test_page_is_current(text):
  """The whole page matches, when the peers' versions are the page's."""
  committed = PAGE.read_text(encoding="utf-8")
  recorded, installed = _versions(committed), _versions(text)
  peers = {k: v for k, v in installed.items() if k != "jaxkl"}
  if {k: recorded.get(k) for k in peers} != peers:
    pytest.skip(
      f"the page was generated with {recorded}, installed: {installed}; "
      "jaxkl's columns are checked by test_jaxkl_columns_are_current"
    )
  assert committed == text, (
    "docs/coverage.md is out of date: run `python scripts/coverage_table.py`"
  )


def test_check_flag(ct, text, tmp_path, monkeypatch):
  """``--check`` fails on a stale file and passes on a current one."""
  monkeypatch.setattr(ct, "generate", lambda: text)
  page = tmp_path / "coverage.md"
  page.write_text(text.replace("✓", "x", 1), encoding="utf-8")
  assert ct.main(["--check", "--output", str(page)]) == 1
  assert ct.main(["--output", str(page)]) == 0
  assert page.read_text(encoding="utf-8") == text
  assert ct.main(["--check", "--output", str(page)]) == 0


def test_spot_checks(result):
  """Cells whose truth is known independently of the script."""
  for column in ("jaxkl", "torch", "tfp", "distrax", "numpyro"):
    assert _cell(result, "normal", "normal", column) == "✓", column
  # Weibull ‖ Gamma: jaxkl, TFP and NumPyro have it; torch does not.
  assert _cell(result, "weibull", "gamma", "jaxkl") == "✓"
  assert _cell(result, "weibull", "gamma", "torch") == "—"
  assert _cell(result, "weibull", "gamma", "tfp") == "✓"
  assert _cell(result, "weibull", "gamma", "numpyro") == "✓"
  # Support mismatches, and a finite pair with the same families reversed.
  assert _cell(result, "normal", "exponential", "jaxkl") == "+∞"
  assert _cell(result, "normal", "exponential", "torch") == "+∞"
  assert _cell(result, "exponential", "normal", "jaxkl") == "✓"
  # Resolved through torch's subclassing (Chi2 is a Gamma) ...
  assert _cell(result, "chi2", "exponential", "torch") == "✓"
  # ... and through a generic rule that answers (LogNormal: same transform)
  # or does not (Weibull: the transforms hold the parameters).
  assert _cell(result, "log_normal", "log_normal", "torch") == "✓"
  assert (
    "TransformedDistribution"
    in result.cells[("log_normal", "log_normal")]["torch"].note
  )
  assert _cell(result, "weibull", "weibull", "torch") == "—"
  # NumPyro registers Categorical for its probs class only.
  assert _cell(result, "categorical", "categorical", "numpyro") == "(✓)"
  structural = dict(result.structural)
  mixture = next(v for k, v in structural.items() if k.startswith("Gaussian mixture"))
  assert mixture["jaxkl"].mark == "✓"
  assert {mixture[c].mark for c in ("torch", "tfp", "distrax", "numpyro")} == {"—"}
  independent = next(v for k, v in structural.items() if k.startswith("Independent"))
  assert {cell.mark for cell in independent.values()} == {"✓"}


def test_jaxkl_column_is_the_registry(ct, result):
  """A row has jaxkl ✓/+∞ exactly when the pair is in jaxkl's registry."""
  ours = set(ct.jaxkl_pairs())
  assert ours, "jaxkl registers no closed form"
  marked = {pair for pair, row in result.cells.items() if row["jaxkl"].mark != "—"}
  assert marked == ours


def test_torch_column_has_every_mapped_registration(ct, result):
  """Each pair torch registers between two mapped classes is in the table."""
  import torch.distributions as td
  from torch.distributions.kl import _KL_REGISTRY

  family = {getattr(td, name): f for f, names in ct.TORCH.items() for name in names}
  registered = {
    (family[a], family[b]) for a, b in _KL_REGISTRY if a in family and b in family
  }
  assert len(registered) > 50
  for fp, fq in registered:
    assert _cell(result, fp, fq, "torch") in {"✓", "+∞"}, (fp, fq)


def test_infinite_marks_are_infinite(ct, result):
  """Every +∞ of jaxkl's column is +inf in jaxkl and in torch, at new
  parameters (not the script's probes)."""
  import torch

  ours = ct.jaxkl_pairs()
  rng = np.random.default_rng(0)
  infinite = [pair for pair, row in result.cells.items() if row["jaxkl"].mark == "+∞"]
  assert len(infinite) >= 10
  for fp, fq in infinite:
    p = {k: np.asarray(v, np.float32) for k, v in ct.PROBE_PARAMS[fp][1].items()}
    q = {k: np.asarray(v, np.float32) for k, v in ct.PROBE_PARAMS[fq][0].items()}
    # Scale the positive parameters by a random factor (probabilities kept).
    factor = np.float32(rng.uniform(0.5, 2.0))
    p = {k: v if k == "probs" else v * factor for k, v in p.items()}
    value = np.asarray(ours[(fp, fq)](p, q))
    assert np.all(np.isposinf(value)), (fp, fq, value)
    if result.cells[(fp, fq)]["torch"].mark != "—":
      tp = ct.TORCH[fp][0]
      tq = ct.TORCH[fq][0]
      torch_p = getattr(torch.distributions, tp)(
        **{k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()}
      )
      torch_q = getattr(torch.distributions, tq)(
        **{k: torch.tensor(v, dtype=torch.float64) for k, v in q.items()}
      )
      assert torch.distributions.kl_divergence(torch_p, torch_q).item() == np.inf


@pytest.mark.parametrize(
  ("p", "q", "expected"),
  [
    ("normal", "exponential", True),
    ("exponential", "normal", False),
    ("beta", "uniform", False),  # finite when [0, 1] ⊂ [low, high]
    ("uniform", "beta", False),
    ("pareto", "uniform", True),
    ("exponential", "pareto", True),
    ("uniform", "pareto", False),
    ("poisson", "binomial", True),
    ("bernoulli", "poisson", False),
    ("normal", "bernoulli", False),  # different kinds: not compared
  ],
)
def test_support_mismatch(ct, p, q, expected):
  assert ct.support_mismatch(p, q) is expected


def test_page_format(text):
  """Title, the two tables, one count per column, no path of this machine."""
  assert text.startswith("# KL divergence coverage\n")
  assert "## Closed forms" in text and "## Structural rules" in text
  counts = next(l for l in text.splitlines() if l.startswith("Pairs covered"))
  for title in ("jaxkl", "torch.distributions", "TFP", "Distrax", "NumPyro"):
    assert re.search(rf"{re.escape(title)} \d+", counts), title
  assert str(ROOT) not in text
