"""The documentation site's sources, checked without Sphinx.

The API reference (``docs/api/*.rst``) must have an entry for every public
name (``jaxkl.__all__``) and for nothing else, and the strict docs build that
CI runs must be the command that ``docs/README.md`` and ``README.md`` document.
Plain text parsing: these tests run in the normal suite, where Sphinx is not
installed; the build itself (``sphinx-build -W``) runs in ``.ci/run``.
"""

import collections
import os
import pathlib
import re

import pytest

import jaxkl

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# An autodoc entry, in reStructuredText (``.. autofunction:: jaxkl.kl_div``)
# or MyST (```{autofunction} jaxkl.kl_div`` or ``:::{autoclass} ...``).
_AUTO = r"auto(?:function|class|data|exception|decorator|method|attribute)"
_DIRECTIVE = re.compile(
    rf"^[ \t]*(?:\.\.[ \t]+{_AUTO}::|(?:`{{3,}}|:{{3,}})\{{{_AUTO}\}})"
    r"[ \t]*(\S+)", re.MULTILINE)


def documented_targets(text: str) -> list[str]:
  """The objects named by the autodoc directives in one source file."""
  return _DIRECTIVE.findall(text)


def docs_sources() -> list[pathlib.Path]:
  """The .rst and .md sources of the site (not the build, not notebooks/)."""
  sources = []
  for directory, subdirs, files in os.walk(DOCS):  # links are not followed
    subdirs[:] = [d for d in subdirs if not d.startswith(("_", "."))]
    sources += [pathlib.Path(directory, f) for f in files
                if f.endswith((".rst", ".md"))]
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
      "jaxkl.kl_div", "jaxkl.KLDivLoss", "jaxkl.kl_normal",
      "jaxkl._monte_carlo.KLEstimate"]
  assert public_name("jaxkl.kl_div") == "kl_div"
  assert public_name("jaxkl._monte_carlo.KLEstimate") == (
      "jaxkl._monte_carlo.KLEstimate")


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
      "its concept)")


def test_every_entry_names_a_public_object_once():
  entries = reference_entries()
  not_public = sorted(set(entries) - set(PUBLIC))
  assert not not_public, (
      f"documented but not in jaxkl.__all__ (as `jaxkl.<name>`): {not_public}")
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
  block = re.search(r"<!-- docs-command -->\s*```bash\n(.+?)\n```", text,
                    re.DOTALL)
  assert block, f"{path.name} has no command after <!-- docs-command -->"
  command = re.search(r"sphinx-build [^\n&;|]+", block.group(1))
  assert command, f"{path.name}'s docs command does not run sphinx-build"
  return command.group(0).strip()


def test_ci_builds_the_docs_with_the_documented_strict_command():
  command = documented_command(DOCS / "README.md")
  assert command.split()[:3] == ["sphinx-build", "-W", "--keep-going"]
  assert command == documented_command(ROOT / "README.md")
  ci_lines = [line.strip() for line in
              (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
  assert command in ci_lines, f"{command!r} is not a command of .ci/run"
  assert "set -euo pipefail" in ci_lines  # a failed build fails CI


def test_readme_api_table_lists_every_public_name():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  section = re.search(r"^## API\n(.*?)^## ", readme, re.DOTALL | re.MULTILINE)
  assert section, "README.md has no `## API` section"
  named = set(re.findall(r"`(\w+)[(`]", section.group(1)))
  missing = [name for name in PUBLIC if name not in named]
  assert not missing, f"missing from README's API table: {missing}"
