"""The API page from each package's ``__all__``: no name is written by hand.

Another part of the project decides what is public; this page follows it. At
``config-inited`` (before Sphinx looks for source files) one stub page per public name is
written under ``api/generated/`` (git-ignored), and the ``ev-api`` directive renders an
autosummary table per package that links to them.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

STUB_DIR = "api/generated"


def packages() -> list[str]:
    """Every public subpackage of ensemblevi, as ``ensemblevi.<name>``."""
    import ensemblevi

    subs = {n for n in ensemblevi.__all__ if inspect.ismodule(getattr(ensemblevi, n, None))}
    # the benchmark and pipeline layers are public but not re-exported at the top
    for extra in ("pipeline", "benchmark"):
        try:
            importlib.import_module(f"ensemblevi.{extra}")
            subs.add(extra)
        except ImportError:
            pass
    return [f"ensemblevi.{n}" for n in sorted(subs)]


def public_names(package: str) -> list[str]:
    """``package.__all__``, minus submodules (their names are documented by their members)."""
    mod = importlib.import_module(package)
    return [n for n in getattr(mod, "__all__", []) if not inspect.ismodule(getattr(mod, n))]


def _stub(package: str, name: str) -> str:
    obj = getattr(importlib.import_module(package), name)
    full = f"{package}.{name}"
    title = f"{full}\n{'=' * len(full)}\n\n.. currentmodule:: {package}\n\n"
    if inspect.isclass(obj):
        return title + f".. autoclass:: {name}\n   :members:\n   :show-inheritance:\n"
    if callable(obj):
        return title + f".. autofunction:: {name}\n"
    return title + f".. autodata:: {name}\n   :no-value:\n"


def write_stubs(srcdir: Path) -> list[Path]:
    """One ``.rst`` page per public name; stale pages of names no longer public go."""
    out = Path(srcdir) / STUB_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for package in packages():
        for name in public_names(package):
            path = out / f"{package}.{name}.rst"
            text = _stub(package, name)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
            written.append(path)
    for stale in set(out.glob("*.rst")) - set(written):
        stale.unlink()
    return written


class EvApi(SphinxDirective):
    """``ev-api PACKAGE``: the package's first docstring line and its autosummary table."""

    required_arguments = 1

    def run(self):
        package = self.arguments[0]
        mod = importlib.import_module(package)
        doc = (inspect.getdoc(mod) or "").strip().splitlines()
        lines = [doc[0], ""] if doc else []
        lines += [f".. currentmodule:: {package}", "", ".. autosummary::"]
        lines += [f"   :toctree: {STUB_DIR}", "   :nosignatures:", ""]
        lines += [f"   {name}" for name in public_names(package)]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=f"ev-api {package}"), 0, container)
        return container.children


def _on_config(app, config):
    write_stubs(Path(app.srcdir))


def setup(app):
    app.connect("config-inited", _on_config)
    app.add_directive("ev-api", EvApi)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
