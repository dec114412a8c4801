"""The `python -m jaxkl` demo and the README's quickstart.

The demo prints three columns: jaxkl, an exact float64 reference computed by
hand, and PyTorch's own ``torch.nn.functional.kl_div`` when PyTorch is
installed. The tests recompute the reference with ``scipy.special.rel_entr``
in float64 and PyTorch's values with PyTorch itself, and check that each
column holds what its label says, with and without PyTorch installed.
"""

import contextlib
import decimal
import io
import pathlib
import re
import subprocess
import sys
import warnings

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.special
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
P = np.array([[0.2, 0.5, 0.3], [0.0, 0.5, 0.5]])
Q = np.array([[0.3, 0.4, 0.3], [0.2, 0.2, 0.6]])
NUMBER = r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|-?inf"


def run_demo(*args, hide_torch=False):
  """Runs ``python -m jaxkl args`` (PyTorch made unimportable if asked)."""
  if hide_torch:  # `import torch` raises ImportError when sys.modules has None
    code = (
      "import runpy, sys; sys.modules['torch'] = None; "
      f"sys.argv = ['jaxkl', *{list(args)!r}]; "
      "runpy.run_module('jaxkl', run_name='__main__')"
    )
    command = [sys.executable, "-c", code]
  else:
    command = [sys.executable, "-m", "jaxkl", *args]
  result = subprocess.run(
    command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT
  )
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def table(out):
  """{reduction: [numbers of its row]} for the scalar reductions, and 'none'."""
  rows = {}
  for reduction in ("sum", "batchmean", "mean"):
    line = re.search(rf"^{reduction}\s+(.*)$", out, re.MULTILINE)
    assert line, out
    rows[reduction] = [float(x) for x in re.findall(NUMBER, line.group(1))]
  for label in ("jaxkl", "reference", "torch"):
    line = re.search(rf"^  {label}\s+\[(.*)\]$", out, re.MULTILINE)
    if line:
      rows["none", label] = [float(x) for x in re.findall(NUMBER, line.group(1))]
  return rows


def expected_reference():
  """The exact values in float64, from scipy's rel_entr (0 where p = 0)."""
  pointwise = scipy.special.rel_entr(P, Q)
  total = pointwise.sum()
  return pointwise.ravel(), {"sum": total, "batchmean": total / 2, "mean": total / 6}


def torch_values(dtype, log_target):
  """PyTorch's own kl_div on the demo's inputs, in the demo's dtype."""
  p = torch.tensor(P, dtype=dtype)
  log_q = torch.log(torch.tensor(Q, dtype=dtype))
  target = torch.log(p) if log_target else p
  values = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    for reduction in ("none", "sum", "batchmean", "mean"):
      values[reduction] = F.kl_div(
        log_q, target, reduction=reduction, log_target=log_target
      ).numpy()
  return values


@pytest.mark.parametrize(
  "args, dtype",
  [
    ([], torch.float32),
    (["--x64", "--log-target"], torch.float64),
  ],
)
def test_demo_columns_hold_what_their_labels_say(args, dtype):
  out = run_demo(*args)
  assert "backend: cpu" in out
  dtype_name = str(dtype).removeprefix("torch.")
  header = re.search(r"^reduction\s+(.*)$", out, re.MULTILINE).group(1).split()
  assert header == ["jaxkl", "float64", "reference", "torch"]
  assert f"jaxkl.kl_div in {dtype_name}" in out
  assert f"PyTorch {torch.__version__}) on the same {dtype_name} inputs" in out
  rows = table(out)
  pointwise, reductions = expected_reference()
  log_target = "--log-target" in args
  theirs = torch_values(dtype, log_target)
  tolerance = 1e-12 if dtype == torch.float64 else 2e-7
  for reduction, value in reductions.items():
    ours, reference, torch_column = rows[reduction]
    # The reference column is the float64 value (to the 8 printed decimals).
    assert reference == pytest.approx(value, abs=6e-9)
    assert ours == pytest.approx(value, abs=tolerance + 6e-9)
    # The torch column is what PyTorch returns (nan with log_target=True at
    # the zero probability, 0 * (-inf)).
    want = float(theirs[reduction])
    if np.isnan(want):
      assert np.isnan(torch_column)
    else:
      assert torch_column == pytest.approx(want, abs=6e-9)
  np.testing.assert_allclose(rows["none", "reference"], pointwise, atol=6e-9)
  np.testing.assert_allclose(rows["none", "torch"], theirs["none"].ravel(), atol=6e-9)
  np.testing.assert_allclose(rows["none", "jaxkl"], pointwise, atol=tolerance + 6e-9)
  # sum of the worked example: 0.2 log(2/3) + 0.5 log(5/4) + 0.5 log(5/2)
  # + 0.5 log(5/6) = 0.3974633...
  assert "0.397463" in out
  # The summary lines say what is compared with what, and nothing claims
  # that the hand-computed float64 value is PyTorch's.
  assert "agree with torch" not in out
  line = re.search(
    rf"^jaxkl \({dtype_name}\) against the float64 reference: "
    rf"largest difference ({NUMBER})",
    out,
    re.MULTILINE,
  )
  assert line, out
  assert float(line.group(1)) <= tolerance
  line = re.search(
    rf"^jaxkl \({dtype_name}\) against torch \({dtype_name}, "
    rf"same inputs\): largest difference ({NUMBER}) where "
    r"torch is not nan(.*)$",
    out,
    re.MULTILINE,
  )
  assert line, out
  assert float(line.group(1)) <= tolerance
  if log_target:
    assert "torch returns nan for none, sum, batchmean, mean" in line.group(2)
  else:
    assert line.group(2) == ""
  # The zero-probability case: PyTorch's own nan, jaxkl's exact 0.
  assert re.search(r"jaxkl: 0\.0\s+torch: nan", out), out
  assert_no_negative_zero(out)


def assert_no_negative_zero(out):
  """No number in the demo's output is a zero printed with a minus sign."""
  assert "-0.0000" not in out, out
  for number in re.findall(NUMBER, out):
    if number.startswith("-") and "nan" not in number and "inf" not in number:
      assert float(number) != 0.0, (number, out)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
  st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1e-8, 1e-8),
    st.sampled_from([0.0, -0.0, -4.9e-9, -5.1e-9, 5e-9, -1e-300]),
  )
)
def test_demo_numbers_have_no_negative_zero(x):
  """``_format`` is ``x`` to 8 decimals (as ``decimal`` rounds it), signless at 0."""
  from jaxkl.__main__ import _format  # pylint: disable=import-outside-toplevel

  text = _format(np.float64(x))
  exact = decimal.Context(prec=400)  # enough digits for any float64 to 1e-8
  want = decimal.Decimal(x).quantize(
    decimal.Decimal("1e-8"), decimal.ROUND_HALF_EVEN, context=exact
  )
  assert decimal.Decimal(text) == want, (x, text)
  assert text.startswith("-") == (want < 0), (x, text)


def test_demo_without_torch_has_no_torch_column():
  out = run_demo(hide_torch=True)
  header = re.search(r"^reduction\s+(.*)$", out, re.MULTILINE).group(1).split()
  assert header == ["jaxkl", "float64", "reference"]
  assert "PyTorch is not installed: no torch column" in out
  assert "against torch" not in out
  rows = table(out)
  assert ("none", "torch") not in rows
  _, reductions = expected_reference()
  for reduction, value in reductions.items():
    ours, reference = rows[reduction]
    assert reference == pytest.approx(value, abs=6e-9)
    assert ours == pytest.approx(value, abs=2e-7)
  assert "against the float64 reference: largest difference" in out
  assert_no_negative_zero(out)


def test_demo_help():
  result = subprocess.run(
    [sys.executable, "-m", "jaxkl", "--help"],
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  assert "--x64" in result.stdout and "--log-target" in result.stdout


def quickstart_block():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  section = re.search(r"^## Quickstart\n(.*?)^## ", readme, re.DOTALL | re.MULTILINE)
  assert section, "README.md has no `## Quickstart` section"
  block = re.search(r"```python\n(.*?)```", section.group(1), re.DOTALL)
  assert block, "README's quickstart has no python block"
  return block.group(1)


def documented_outputs(code):
  """The output written after each ``print(...)`` as ``# ...`` comments.

  A ``print`` line's trailing comment is the first line of its output; the
  comment-only lines right below it, aligned with it, continue it.
  """
  outputs = []
  lines = code.splitlines()
  for i, line in enumerate(lines):
    match = re.match(r"print\(.*\)(\s*)# (.*)$", line)
    if not match:
      continue
    column = line.index("# ")
    output = [match.group(2)]
    for following in lines[i + 1 :]:
      if following[:column].strip() or following[column : column + 2] != "# ":
        break
      output.append(following[column + 2 :])
    outputs.append("\n".join(output))
  return outputs


def test_documented_outputs_parser_on_a_worked_example():
  code = (
    "x = 1\nprint(x)    # 1\n"
    "print(y)    # [[1 2]\n            #  [3 4]]\n# not output\n"
    "print(z)\n"
  )
  assert documented_outputs(code) == ["1", "[[1 2]\n [3 4]]"]


def test_readme_quickstart_prints_what_its_comments_say():
  code = quickstart_block()
  documented = documented_outputs(code)
  prints = re.findall(r"^print\(", code, re.MULTILINE)
  assert documented and len(documented) == len(prints), (
    "every print(...) of the quickstart shows its output in a comment"
  )
  stdout = io.StringIO()
  namespace = {}
  with contextlib.redirect_stdout(stdout):
    exec(compile(code, "README.md", "exec"), namespace)
  printed = stdout.getvalue()
  # Numbers compared with a tolerance (another backend may differ in the
  # last digit), everything else literally.
  assert re.sub(NUMBER, "#", printed) == re.sub(
    NUMBER, "#", "\n".join(documented) + "\n"
  )
  np.testing.assert_allclose(
    [float(x) for x in re.findall(NUMBER, printed)],
    [float(x) for x in re.findall(NUMBER, "\n".join(documented))],
    rtol=1e-5,
    atol=1e-7,
  )
  # The printed values are right: the loss is the batch mean of the
  # per-example KL divergences (scipy), in both spellings, and the gradient
  # of the batch mean with respect to log q is -p / batch size.
  p = np.asarray(namespace["p"], np.float64)
  q = np.exp(np.asarray(namespace["log_q"], np.float64))
  per_example = scipy.special.rel_entr(p, q).sum(axis=1)
  np.testing.assert_allclose(namespace["per_example"], per_example, rtol=1e-5)
  np.testing.assert_allclose(namespace["loss"], per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(namespace["same"], per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(namespace["grads"], -p / p.shape[0], atol=1e-7)
  with torch.no_grad():
    torch_loss = F.kl_div(
      torch.tensor(np.asarray(namespace["log_q"])),
      torch.tensor(np.asarray(namespace["p"])),
      reduction="batchmean",
    )
  np.testing.assert_allclose(namespace["loss"], torch_loss.numpy(), rtol=1e-6)


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  command = re.search(r"<!-- test-command -->\s*```bash\n\s*(.+)\n", readme)
  assert command and "pytest" in command.group(1)
  assert "README.md" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
