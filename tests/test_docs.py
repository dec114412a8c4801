"""The documentation site: its sources, and the pages Sphinx renders.

The API reference (``docs/api/*.rst``) must have an entry for every public
name (``jaxkl.__all__``) and for nothing else, and the strict docs build that
CI runs must be the command that ``docs/README.md`` and ``README.md`` document.
The first tests parse the sources as plain text. The last ones build the site
(without executing the notebooks, 15-60 s) and read the HTML a reader
sees: every mention of a public name on the landing page, the guide and the
notebooks links to its API entry, no ``Returns`` section shows a type that is
really the start of a sentence, the notes the docstrings point to are on the
site, and the notebooks' checks are hidden. CI's full strict build
(``sphinx-build -W``, notebooks executed) runs in ``.ci/run``.
"""

import collections
import os
import pathlib
import re
import subprocess
import sys

import pytest

import jaxkl

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# An autodoc entry, in reStructuredText (``.. autofunction:: jaxkl.kl_div``)
# or MyST (```{autofunction} jaxkl.kl_div`` or ``:::{autoclass} ...``).
_AUTO = r"auto(?:function|class|data|exception|decorator|method|attribute)"
_DIRECTIVE = re.compile(
  rf"^[ \t]*(?:\.\.[ \t]+{_AUTO}::|(?:`{{3,}}|:{{3,}})\{{{_AUTO}\}})"
  r"[ \t]*(\S+)",
  re.MULTILINE,
)


def documented_targets(text: str) -> list[str]:
  """The objects named by the autodoc directives in one source file."""
  return _DIRECTIVE.findall(text)


def docs_sources() -> list[pathlib.Path]:
  """The .rst and .md sources of the site (not the build, not notebooks/)."""
  sources = []
  for directory, subdirs, files in os.walk(DOCS):  # links are not followed
    subdirs[:] = [d for d in subdirs if not d.startswith(("_", "."))]
    sources += [
      pathlib.Path(directory, f) for f in files if f.endswith((".rst", ".md"))
    ]
  return sorted(sources)


def public_name(target: str) -> str:
  """``jaxkl.kl_div`` -> ``kl_div``; anything else is returned whole."""
  match = re.fullmatch(r"jaxkl\.(\w+)", target)
  return match.group(1) if match else target


def reference_entries() -> collections.Counter:
  entries = collections.Counter()
  for path in docs_sources():
    for target in documented_targets(path.read_text(encoding="utf-8")):
      entries[public_name(target)] += 1
  return entries


PUBLIC = sorted(set(jaxkl.__all__) - {"__version__"})


def test_directive_parser_on_a_worked_example():
  text = """\
Title
=====

.. autofunction:: jaxkl.kl_div

   .. autoclass:: jaxkl.KLDivLoss
      :members: __call__

``.. autofunction:: jaxkl.in_literal_text`` is not an entry.
.. function:: jaxkl.not_autodoc

```{autofunction} jaxkl.kl_normal
```
:::{autoclass} jaxkl._monte_carlo.KLEstimate
:::
"""
  assert documented_targets(text) == [
    "jaxkl.kl_div",
    "jaxkl.KLDivLoss",
    "jaxkl.kl_normal",
    "jaxkl._monte_carlo.KLEstimate",
  ]
  assert public_name("jaxkl.kl_div") == "kl_div"
  assert public_name("jaxkl._monte_carlo.KLEstimate") == (
    "jaxkl._monte_carlo.KLEstimate"
  )


def test_the_reference_is_found():
  sources = {p.relative_to(DOCS).as_posix() for p in docs_sources()}
  assert "api/index.rst" in sources and "conf.py" not in sources
  assert not any(s.startswith(("_build/", "notebooks/")) for s in sources)
  assert sum(reference_entries().values()) >= len(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_in_the_api_reference(name):
  entries = reference_entries()
  assert entries[name] >= 1, (
    f"jaxkl.{name} is in jaxkl.__all__ but has no autodoc entry under "
    f"docs/ (add `.. autofunction:: jaxkl.{name}` to the docs/api/ page of "
    "its concept)"
  )


def test_every_entry_names_a_public_object_once():
  entries = reference_entries()
  not_public = sorted(set(entries) - set(PUBLIC))
  assert not not_public, (
    f"documented but not in jaxkl.__all__ (as `jaxkl.<name>`): {not_public}"
  )
  twice = sorted(name for name, count in entries.items() if count > 1)
  assert not twice, f"documented more than once: {twice}"


def test_every_api_page_is_in_the_api_toctree():
  index = (DOCS / "api" / "index.rst").read_text(encoding="utf-8")
  listed = set(re.findall(r"^ {3}(\w+)\s*$", index, re.MULTILINE))
  pages = {p.stem for p in (DOCS / "api").glob("*.rst")} - {"index"}
  assert pages == listed


def test_notebooks_are_the_repository_notebooks():
  link = DOCS / "notebooks"
  assert link.is_symlink() and os.readlink(link) == "../notebooks"
  assert link.resolve() == (ROOT / "notebooks").resolve()
  index = (DOCS / "index.md").read_text(encoding="utf-8")
  assert re.search(r":glob:\n(?:.*\n)*?\s*notebooks/\*\n", index)


def documented_command(path: pathlib.Path) -> str:
  """The sphinx-build command in the code block after `<!-- docs-command -->`."""
  text = path.read_text(encoding="utf-8")
  block = re.search(r"<!-- docs-command -->\s*```bash\n(.+?)\n```", text, re.DOTALL)
  assert block, f"{path.name} has no command after <!-- docs-command -->"
  command = re.search(r"sphinx-build [^\n&;|]+", block.group(1))
  assert command, f"{path.name}'s docs command does not run sphinx-build"
  return command.group(0).strip()


def test_ci_builds_the_docs_with_the_documented_strict_command():
  command = documented_command(DOCS / "README.md")
  assert command.split()[:3] == ["sphinx-build", "-W", "--keep-going"]
  assert command == documented_command(ROOT / "README.md")
  ci_lines = [
    line.strip()
    for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
  ]
  assert command in ci_lines, f"{command!r} is not a command of .ci/run"
  assert "set -euo pipefail" in ci_lines  # a failed build fails CI


def test_readme_api_table_lists_every_public_name():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  section = re.search(r"^## API\n(.*?)^## ", readme, re.DOTALL | re.MULTILINE)
  assert section, "README.md has no `## API` section"
  named = set(re.findall(r"`(\w+)[(`]", section.group(1)))
  missing = [name for name in PUBLIC if name not in named]
  assert not missing, f"missing from README's API table: {missing}"


# -- The rendered site ----------------------------------------------------------
# A quick build of the whole site (the notebooks' markdown rendered, their code
# not executed: NB_EXECUTION_MODE=off), then checks of the HTML a reader sees.
# CI's strict build (`.ci/run`) also executes the notebooks.

# A backticked mention of a public name: `kl_div`, `jaxkl.kl_div`,
# `kl_div(log_q, p)`, `KLEstimate.confidence_interval`.
_MENTION = re.compile(r"(?:jaxkl\.)?(\w+)(?:$|[(.])")


def mentioned_name(code_text: str):
  """The public jaxkl name an inline code element starts with, or None."""
  match = _MENTION.match(" ".join(code_text.split()))
  return match.group(1) if match and match.group(1) in PUBLIC else None


def test_mention_parser_on_a_worked_example():
  assert mentioned_name("kl_div") == "kl_div"
  assert mentioned_name("jaxkl.kl_div") == "kl_div"
  assert mentioned_name("kl_div(input, target)") == "kl_div"
  assert mentioned_name("monte_carlo_kl(...).confidence_interval()") == (
    "monte_carlo_kl"
  )
  assert mentioned_name("KLEstimate.value") == "KLEstimate"
  assert mentioned_name("torch.nn.functional.kl_div") is None
  assert mentioned_name("kl_divergences") is None
  assert mentioned_name("reduction='sum'") is None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """{page path relative to the site root: parsed HTML} of a fresh build."""
  import bs4  # pylint: disable=import-outside-toplevel  # furo's dependency

  out = tmp_path_factory.mktemp("site")
  env = dict(os.environ, NB_EXECUTION_MODE="off")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sphinx",
      "-W",
      "--keep-going",
      "-q",
      "-b",
      "html",
      "-d",
      str(out / "doctrees"),
      str(DOCS),
      str(out / "html"),
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
    check=False,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  pages = {}
  for page in (out / "html").rglob("*.html"):
    relative = page.relative_to(out / "html").as_posix()
    if relative.startswith(("_", "genindex", "search", "py-modindex")):
      continue
    pages[relative] = bs4.BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
  return pages


def article(page):
  """The page's main text (without the navigation and the table of contents)."""
  return page.find("article") or page


def narrative_pages(site):
  return {
    name: page
    for name, page in site.items()
    if name in ("index.html", "guide.html") or name.startswith("notebooks/")
  }


def test_the_site_has_its_pages(site):
  names = set(site)
  assert {"index.html", "guide.html", "api/notes.html"} <= names
  notebooks = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
  assert {f"notebooks/{n}.html" for n in notebooks} <= names


def test_every_mention_of_a_public_name_links_to_its_api_entry(site):
  """On the landing page, the guide and the notebooks (issue: 0 of 34 did)."""
  unlinked, linked = [], 0
  for name, page in narrative_pages(site).items():
    for code in article(page).find_all("code"):
      public = mentioned_name(code.get_text())
      if public is None:
        continue
      link = code.find_parent("a")
      href = link.get("href", "") if link else ""
      if re.search(rf"api/\w+\.html#jaxkl\.{public}\b", href):
        linked += 1
      else:
        unlinked.append(f"{name}: {code.get_text()!r} (link: {href!r})")
  assert not unlinked, "not linked to the API reference:\n" + "\n".join(unlinked)
  assert linked >= 34, linked  # the mentions are found


def test_no_returns_section_renders_a_fake_type(site):
  """Napoleon must not read "The divergence, shape: ..." as type: text."""
  returns, fake = 0, []
  for name, page in site.items():
    if not name.startswith("api/"):
      continue
    for label in page.find_all("dt"):
      if label.get_text(strip=True).rstrip(":") not in ("Returns", "Return type"):
        continue
      returns += 1
      body = label.find_next_sibling("dd")
      first = body.find(True)
      first = first.find(True) if first and first.name == "p" else first
      text = body.get_text(" ", strip=True)
      if label.get_text(strip=True).startswith("Return type") or (
        first is not None
        and first.name in ("em", "strong")
        and text.startswith(first.get_text(" ", strip=True))
      ):
        fake.append(f"{name}: {text[:80]!r}")
  assert not fake, "Returns sections rendered with a type:\n" + "\n".join(fake)
  functions = [n for n in PUBLIC if not isinstance(getattr(jaxkl, n), type)]
  assert returns >= len(functions), returns  # every function has one


def test_private_notes_the_docstrings_point_to_are_on_the_site(site):
  notes = article(site["api/notes.html"]).get_text(" ")
  for needed in (
    "Accepted distributions",
    "StandardNormalPushforward",
    "sample(seed=key",
    "Gradients with the samples held fixed",
    "Squared distances by direct differences",
  ):
    assert needed in notes, needed
  pointers = {
    "api/monte_carlo.html": "#monte-carlo-distributions",
    "api/knn.html": "#knn-notes",
  }
  for name, anchor in pointers.items():
    hrefs = [a.get("href", "") for a in article(site[name]).find_all("a")]
    assert any(h.endswith(f"notes.html{anchor}") for h in hrefs), name
  for name, page in site.items():
    text = article(page).get_text(" ")
    assert "module notes" not in text and "notes of jaxkl._" not in text, name


def test_notebook_checks_are_not_shown(site):
  for name, page in narrative_pages(site).items():
    if name.startswith("notebooks/"):
      code = " ".join(pre.get_text() for pre in article(page).find_all("pre"))
      assert code, name  # the code cells are there ...
      assert not re.search(r"\bassert\b|np\.testing", code), name  # ... not checks
