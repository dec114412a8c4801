"""Executes every notebook in ``notebooks/``; a cell that raises fails the test.

Each notebook runs top to bottom in a fresh IPython kernel (nbclient), with
``notebooks/`` as its working directory and a 300 s limit per cell. The
notebooks ``assert`` their key numbers (jaxkl against torch, scipy and closed
forms), so executing them checks results, not only that they run.

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
  assert EXPECTED <= {path.name for path in NOTEBOOKS}


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
          f"{path.name}: clear the outputs before committing")


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
  errors = [o for c in code_cells for o in c.outputs
            if o.output_type == "error"]
  assert not errors
