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
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
# Import the jaxkl of this checkout even when it is not installed.
sys.path.insert(0, str(ROOT))

from docutils import nodes  # noqa: E402
from sphinx import addnodes  # noqa: E402
from sphinx.ext.napoleon import docstring as napoleon_docstring  # noqa: E402
from sphinx.transforms import SphinxTransform  # noqa: E402

import jaxkl  # noqa: E402

project = "jaxkl"
author = "jaxkl developers"
copyright = "jaxkl developers"
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
exclude_patterns = [
  "_build",
  "README.md",
  "notebooks/README.md",
  "**.ipynb_checkpoints",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
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


def _returns_as_prose(self, preprocess_types=False):
  """A Google ``Returns:`` section read as prose, never as ``type: text``.

  Napoleon takes the text before the first colon of a ``Returns:`` section as
  the return type, so ``The divergence, shape: the batch shapes`` rendered as
  a fake italic type "*The divergence, shape*". jaxkl's types are in the
  signatures; its ``Returns:`` sections are descriptions only (Google style),
  so the whole section is the description. ``tests/test_docs.py`` checks the
  rendered pages.
  """
  del preprocess_types  # there is no type to preprocess
  lines = self._dedent(self._consume_to_next_section())
  if not lines:
    return []
  return [("", "", self.__class__(lines, self._config).lines())]


napoleon_docstring.GoogleDocstring._consume_returns_section = _returns_as_prose

# -- myst-nb: the notebooks ---------------------------------------------------
# Every build executes every notebook (they are committed without outputs); a
# cell that raises fails the build. NB_EXECUTION_MODE=off skips execution for a
# quick local look at the pages (the CI build never sets it).
nb_execution_mode = os.environ.get("NB_EXECUTION_MODE", "force")
nb_execution_raise_on_error = True
nb_execution_timeout = 300  # seconds per cell
nb_execution_show_tb = True
nb_merge_streams = True
# Markdown outputs (IPython.display.Markdown, e.g. the benchmark tables of
# notebook 02) are GitHub-flavoured: tables render as tables.
nb_render_markdown_format = "gfm"
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


def _readable_annotations(app, what, name, obj, options, signature, return_annotation):
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


# -- Mentions of jaxkl's functions link to their API entries ----------------
# The landing page, the guide (included from README.md, which is read on
# GitHub too) and the notebooks (read in Jupyter too) name jaxkl's functions in
# plain backticks: `kl_div`, `jaxkl.kl_div`, `kl_div(input, target)`. MyST
# roles would show as raw text on GitHub and in Jupyter, so the site turns every
# inline literal that names a public jaxkl object into a link to its API entry
# instead, on every page. tests/test_docs.py checks the built pages.
PUBLIC_NAMES = frozenset(set(jaxkl.__all__) - {"__version__"})
_MENTION = re.compile(
  r"(?:jaxkl\.)?(?P<name>[A-Za-z_]\w*)(?:\.(?P<member>[A-Za-z_]\w*))?"
  r"(?P<rest>\(.*)?",
  re.DOTALL,
)


def api_target(text):
  """The API entry that an inline literal names, or None.

  ``kl_div``, ``jaxkl.kl_div``, ``kl_div(log_q, p)`` and
  ``monte_carlo_kl(...).confidence_interval()`` name ``jaxkl.kl_div`` and
  ``jaxkl.monte_carlo_kl``; ``KLEstimate.confidence_interval`` names that
  method (a method of a public class; any other attribute names the class).
  ``torch.nn.functional.kl_div``, ``kl_multivariate_normal*`` and
  ``jaxkl._estimators`` name no entry.
  """
  match = _MENTION.fullmatch(text.strip())
  if not match or match.group("name") not in PUBLIC_NAMES:
    return None
  name, member = match.group("name"), match.group("member")
  if member is None:
    return f"jaxkl.{name}"
  obj = getattr(jaxkl, name)
  if isinstance(obj, type) and callable(getattr(obj, member, None)):
    return f"jaxkl.{name}.{member}"
  return f"jaxkl.{name}" if isinstance(obj, type) else None


class LinkApiMentions(SphinxTransform):
  """Turns inline literals that name a public jaxkl object into API links."""

  default_priority = 500

  def apply(self, **kwargs):
    del kwargs
    for literal in list(self.document.findall(nodes.literal)):
      if isinstance(
        literal.parent,
        (nodes.reference, addnodes.pending_xref, addnodes.desc_signature),
      ):
        continue
      target = api_target(literal.astext())
      if target is None:
        continue
      literal["classes"] += ["xref", "py", "py-obj"]
      xref = addnodes.pending_xref(
        "",
        refdomain="py",
        reftype="obj",
        reftarget=target,
        refexplicit=True,
        refwarn=True,
        refdoc=self.env.docname,
      )
      xref["py:module"] = None
      xref["py:class"] = None
      literal.replace_self(xref)
      xref += literal


def setup(app):
  app.connect("autodoc-process-signature", _readable_annotations)
  app.add_transform(LinkApiMentions)
