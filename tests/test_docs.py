"""The documentation's own checks: what ``make docs`` (Sphinx with -W) cannot see.

The README is not part of the site, the API page is generated from ``__all__`` and the
CLI page from ``--help``: these tests hold them to the code.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import ev_api  # noqa: E402
import ev_cli  # noqa: E402

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_readme_is_a_landing_page_with_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    first = _code_blocks(text, "bash")[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"]
    # the commands come before any section
    assert text.index("make demo") < text.index("\n## ")


_DOC_PAGES = sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md") if "_build" not in p.parts)
PAGES = ["README.md", "CHANGELOG.md", *_DOC_PAGES]


@pytest.mark.parametrize("page", PAGES)
def test_local_links_resolve(page):
    path = ROOT / page
    text = path.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links in code are not links
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"{page}: {missing}"


def test_readme_example_uses_only_public_names():
    import ensemblevi as ev

    code = _code_blocks((ROOT / "README.md").read_text(), "python")[0]
    used = set(re.findall(r"\bev\.(\w+)\.(\w+)", code))
    assert used, "the example names no ensemblevi function"
    for pkg, name in used:
        module = getattr(ev, pkg)
        assert name in module.__all__, f"ev.{pkg}.{name} is not public"


def test_every_public_name_gets_an_api_page(tmp_path):
    api = (DOCS / "api.md").read_text()
    packages = ev_api.packages()
    assert {"ensemblevi.data", "ensemblevi.model", "ensemblevi.tl", "ensemblevi.pl"} <= set(
        packages
    )
    for package in packages:
        assert f"```{{ev-api}} {package}\n" in api, f"{package} has no section in api.md"
    written = {p.stem for p in ev_api.write_stubs(tmp_path)}
    for package in packages:
        names = ev_api.public_names(package)
        assert names, package
        assert {f"{package}.{n}" for n in names} <= written
    # a name that is no longer public loses its page
    stale = tmp_path / ev_api.STUB_DIR / "ensemblevi.data.gone.rst"
    stale.write_text("x")
    ev_api.write_stubs(tmp_path)
    assert not stale.exists()


def test_cli_reference_covers_every_command():
    names = ev_cli.command_names()
    assert {"run", "de", "map", "annotate", "train", "merge"} <= set(names)
    top = ev_cli.help_text()
    for name in names:
        assert name in top
    text = ev_cli.help_text("map")
    assert "Usage: ensemblevi map" in text and "--query" in text
    assert not any(line != line.rstrip() for line in text.splitlines())


def test_citation_and_references_name_the_methods():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    from ensemblevi import __version__

    assert str(cff["version"]) == __version__
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()
    titles = " ".join(r["title"] for r in cff["references"])
    bib = (DOCS / "references.bib").read_text()
    for key, title in [
        ("Lopez2018", "Deep generative modeling"),
        ("Wen2020", "BatchEnsemble"),
        ("Wenzel2020", "Hyperparameter Ensembles"),
        ("Lakshminarayanan2017", "Deep Ensembles"),
        ("Gal2016", "Dropout as a Bayesian"),
        ("Lotfollahi2022", "reference atlases"),
        ("Xu2021", "harmonization and annotation"),
        ("Stephens2017", "new deal"),
        ("Lei2018", "Distribution-Free Predictive"),
        ("Squair2021", "false discoveries"),
        ("Muzellec2023", "PyDESeq2"),
    ]:
        assert "{" + key + "," in bib
        assert title in titles


def test_package_metadata_for_publishing():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "BSD-3-Clause"
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text()
    assert {"Documentation", "Source", "Issues"} <= set(meta["urls"])
    docs = " ".join(meta["optional-dependencies"]["docs"])
    for pkg in ("sphinx", "myst-nb", "sphinx-book-theme", "sphinxcontrib-bibtex"):
        assert pkg in docs
    assert ".[dev,docs]" in (ROOT / "Makefile").read_text()
