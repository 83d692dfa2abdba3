"""Sphinx configuration of the ensemblevi documentation.

Builds offline: no intersphinx fetch (inventories are read only where a local copy lies in
``docs/_inventories/``), notebooks are rendered as committed (executed by
``make tutorials``), and the CLI and API pages are generated from the code.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))  # a source checkout builds without installing

from ensemblevi import __version__  # noqa: E402

project = "ensemblevi"
author = "the ensemblevi developers"
copyright = f"{date.today().year}, {author}"
version = release = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_copybutton",
    "sphinxcontrib.bibtex",
    "ev_api",
    "ev_cli",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = [
    "_build",
    "_ext",
    "_templates",
    "**.ipynb_checkpoints",
    "figures/README.md",
]
templates_path = ["_templates"]
html_static_path = ["_static"]

# notebooks are committed executed; the build never runs them (CI runs them separately)
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist", "substitution"]
myst_heading_anchors = 4
myst_url_schemes = ["http", "https", "mailto"]

# autodoc: numpydoc-style docstrings through napoleon
autosummary_generate = False  # the stubs are written by ev_api from each package's __all__
autodoc_member_order = "bysource"
autodoc_default_options = {"exclude-members": "__init__"}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_custom_sections = ["Shape", "Reference", "References", "Notes"]
typehints_defaults = "comma"
always_document_param_types = False
autodoc_typehints = "description"

bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "alpha"
bibtex_reference_style = "author_year"

# intersphinx: a local inventory per project if one lies in _inventories/<name>.inv
# (fetch once with e.g. `curl -o docs/_inventories/scanpy.inv
# https://scanpy.readthedocs.io/en/stable/objects.inv`); otherwise that project is
# left out, so the build never touches the network and a missing file is not an error.
_INTERSPHINX = {
    "scvi-tools": "https://docs.scvi-tools.org/en/stable/",
    "scanpy": "https://scanpy.readthedocs.io/en/stable/",
    "anndata": "https://anndata.readthedocs.io/en/stable/",
    "numpy": "https://numpy.org/doc/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
}
intersphinx_mapping = {
    name: (url, str(HERE / "_inventories" / f"{name}.inv"))
    for name, url in _INTERSPHINX.items()
    if (HERE / "_inventories" / f"{name}.inv").exists()
}
intersphinx_disabled_reftypes = ["*"]
intersphinx_timeout = 1

html_theme = "sphinx_book_theme"
html_title = f"ensemblevi {version}"
html_logo = None
html_theme_options = {
    "repository_url": "https://github.com/ensemblevi/ensemblevi",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "show_toc_level": 2,
}
html_show_sourcelink = False
