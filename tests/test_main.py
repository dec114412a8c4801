"""The `python -m jaxkl` demo and the README's code."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [[], ["--x64", "--log-target"]])
def test_demo_runs_and_agrees_with_torch_formula(args):
  result = subprocess.run([sys.executable, "-m", "jaxkl", *args],
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "backend: cpu" in out
  for reduction in ("none", "sum", "batchmean", "mean"):
    assert re.search(rf"^{reduction}\s", out, re.MULTILINE), out
  # sum of the worked example: 0.2 log(2/3) + 0.5 log(5/4) + 0.5 log(5/2)
  # + 0.5 log(5/6) = 0.3974633...
  assert "0.397463" in out
  assert "all reductions agree with torch" in out


def test_demo_help():
  result = subprocess.run([sys.executable, "-m", "jaxkl", "--help"],
                          capture_output=True, text=True, timeout=120,
                          check=True)
  assert "--x64" in result.stdout and "--log-target" in result.stdout


def test_readme_quickstart_runs():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
  assert blocks, "README has no python block"
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
  assert namespace["loss"].shape == ()
  assert namespace["per_example"].shape == (8,)
  assert abs(float(namespace["same"]) - float(namespace["loss"])) < 1e-6


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  command = re.search(r"<!-- test-command -->\s*```bash\n\s*(.+)\n", readme)
  assert command and "pytest" in command.group(1)
  assert "README.md" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
