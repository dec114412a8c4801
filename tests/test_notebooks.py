"""Executes every notebook in ``notebooks/``; a cell that raises fails the test.

Each notebook runs top to bottom in a fresh IPython kernel (nbclient), with
``notebooks/`` as its working directory and a 300 s limit per cell. The
notebooks ``assert`` their key numbers (jaxkl against torch, scipy and closed
forms), so executing them checks results, not only that they run. They read as
tutorials on the docs site: the asserts live in cells tagged ``remove-cell``
(myst-nb leaves them out of the rendered page; they still run, here and in the
docs build), code lines fit in 88 columns, and no output shows a path of the
machine that ran them.

The kernel is always this interpreter: the kernel spec manager is given no
kernel directories, so only ipykernel's built-in ``python3`` spec remains,
whose command is ``sys.executable -m ipykernel_launcher`` (a ``python3``
spec installed elsewhere, e.g. in the user's Jupyter directory, could point
at another Python without jaxkl). The kernel inherits this process's
environment, including ``JAX_PLATFORMS=cpu`` from ``conftest.py``; the strict
promotion settings of ``conftest.py`` do not apply inside the kernel.

The notebooks are committed without outputs (the documentation build
executes them); ``test_notebooks_are_saved_without_outputs`` checks that.
"""

import pathlib
import re
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = {
  "01_quickstart_pytorch.ipynb",
  "02_distillation.ipynb",
  "03_monte_carlo.ipynb",
  "04_knn.ipynb",
  "05_topk_distillation.ipynb",
  "06_rl_kl.ipynb",
  "07_kl_between_distributions.ipynb",
}
CELL_TIMEOUT_S = 300


def _kernel_manager() -> KernelManager:
  """A manager for ipykernel's built-in ``python3`` kernel: this interpreter."""
  specs = KernelSpecManager(kernel_dirs=[])
  manager = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
  assert manager.kernel_spec.argv[0] == sys.executable, manager.kernel_spec.argv
  return manager


def test_the_notebooks_are_found():
  """The glob below is not empty: every notebook of the issue is there."""
  assert {path.name for path in NOTEBOOKS} >= EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_saved_without_outputs(path):
  """Committed notebooks are valid, start with markdown and have no outputs."""
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  assert notebook.cells[0].cell_type == "markdown"
  assert notebook.metadata.kernelspec.name == "python3"
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
        f"{path.name}: clear the outputs before committing"
      )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path):
  """Runs every cell; nbclient raises CellExecutionError on the first error."""
  notebook = nbformat.read(path, as_version=4)
  client = NotebookClient(
    notebook,
    km=_kernel_manager(),
    timeout=CELL_TIMEOUT_S,
    resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
  )
  client.execute()
  code_cells = [c for c in notebook.cells if c.cell_type == "code"]
  assert code_cells and all(c.execution_count for c in code_cells)
  errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
  assert not errors
  # No output shows where the notebook ran (the docs site is built elsewhere).
  local = [
    d for d in (str(NOTEBOOKS_DIR.parent), str(pathlib.Path.home())) if len(d) > 1
  ]
  for cell in code_cells:
    for output in cell.outputs:
      text = output.get("text", "") + "".join(
        str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")
      )
      assert not any(d in text for d in local), (
        f"{path.name}: an output shows a local path:\n{text}"
      )


HIDDEN = {"remove-cell", "remove-input"}
_ASSERT = re.compile(r"^\s*(assert\b|np\.testing\.assert_)", re.MULTILINE)


def _tags(cell):
  return set(cell.metadata.get("tags", []))


def test_checks_detector_on_a_worked_example():
  assert _ASSERT.search("x = 1\nassert x == 1")
  assert _ASSERT.search("  np.testing.assert_allclose(a, b)")
  assert not _ASSERT.search("print('assert')\nasserted = True")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_read_as_tutorials(path):
  """Checks in hidden cells, code within 88 columns."""
  notebook = nbformat.read(path, as_version=4)
  code = [c for c in notebook.cells if c.cell_type == "code"]
  shown = [c for c in code if not _tags(c) & HIDDEN]
  hidden = [c for c in code if _tags(c) & HIDDEN]
  for cell in shown:
    assert not _ASSERT.search(cell.source), (
      f"{path.name}: move the checks of this cell into a cell tagged "
      f"remove-cell:\n{cell.source}"
    )
  # The checks are still there, and run (test_notebook_executes).
  assert hidden and all(_ASSERT.search(c.source) for c in hidden), path.name
  for cell in code:
    for line in cell.source.splitlines():
      assert len(line) <= 88, f"{path.name}: line over 88 columns: {line!r}"
