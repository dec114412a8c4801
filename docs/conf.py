"""Sphinx configuration for the jaxkl documentation.

Why Sphinx with myst-nb (and not mkdocs-material with mkdocstrings): autodoc
and napoleon read jaxkl's Google-style docstrings as they are, including their
reStructuredText ``.. math::`` blocks and ``:math:`` roles; myst-nb renders
the notebooks of ``notebooks/`` and executes them during the build, so a
broken notebook breaks the build; and ``sphinx-build -W --keep-going`` turns
every warning (a malformed docstring, a broken cross-reference in a page, a
notebook cell that raises) into an error, reported all at once.

Build (from the repository root, see docs/README.md):

  sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
# Import the jaxkl of this checkout even when it is not installed.
sys.path.insert(0, str(ROOT))

import jaxkl  # noqa: E402

project = "jaxkl"
author = "jaxkl developers"
copyright = "jaxkl developers"  # noqa: A001
release = jaxkl.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]

# The notebooks live in notebooks/ at the repository root; docs/notebooks is a
# symbolic link to it (Sphinx follows links when it collects sources), so the
# toctree glob ``notebooks/*`` picks up every notebook and the kernels run with
# notebooks/ as their working directory, as when the notebooks run on their own.
exclude_patterns = ["_build", "README.md", "notebooks/README.md",
                    "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb",
                 ".ipynb": "myst-nb"}
root_doc = "index"

# -- autodoc / napoleon: the Google-style docstrings ---------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_attr_annotations = False  # the types are in the signature
# Docstring Examples are executed by pytest (--doctest-modules over jaxkl), not
# by Sphinx: they are rendered here only.

# -- myst-nb: the notebooks ---------------------------------------------------
# Every build executes every notebook (they are committed without outputs); a
# cell that raises fails the build. NB_EXECUTION_MODE=off skips execution for a
# quick local look at the pages (the CI build never sets it).
nb_execution_mode = os.environ.get("NB_EXECUTION_MODE", "force")
nb_execution_raise_on_error = True
nb_execution_timeout = 300  # seconds per cell
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# -- HTML ----------------------------------------------------------------------
html_theme = "furo"
html_title = f"jaxkl {release}"
html_static_path = []


# -- Readable signatures ---------------------------------------------------------
# Annotations are evaluated, so ``ArrayLike`` would print as the union it stands
# for (``Array | ndarray | bool | number | ...``) and ``jax.Array`` under its
# implementation module. Put the public names back.
_ARRAY_NAMES = {}


def _readable_annotations(app, what, name, obj, options, signature,
                          return_annotation):
  del app, what, name, obj, options
  if not _ARRAY_NAMES:
    import jax  # pylint: disable=import-outside-toplevel
    from jax.typing import ArrayLike  # pylint: disable=import-outside-toplevel
    from sphinx.util.typing import stringify_annotation  # pylint: disable=import-outside-toplevel
    for mode in ("smart", "fully-qualified-except-typing"):
      _ARRAY_NAMES[stringify_annotation(ArrayLike, mode)] = "~jax.typing.ArrayLike"
      _ARRAY_NAMES[stringify_annotation(jax.Array, mode)] = "~jax.Array"
  def fix(text):
    if text is None:
      return None
    for long, short in _ARRAY_NAMES.items():  # the union first, then Array
      text = text.replace(long, short)
    return text
  return fix(signature), fix(return_annotation)


def setup(app):
  app.connect("autodoc-process-signature", _readable_annotations)
