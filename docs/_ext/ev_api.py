"""The API page from each package's ``__all__``: no name is written by hand.

Another part of the project decides what is public; this page follows it. At
``config-inited`` (before Sphinx looks for source files) one stub page per public name is
written under ``api/generated/`` (git-ignored), and the ``ev-api`` directive renders an
autosummary table per package that links to them.
"""

from __future__ import annotations

import importlib
import inspect
import re
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


def _is_constant(obj) -> bool:
    return not (inspect.isclass(obj) or callable(obj))


def _stub(package: str, name: str) -> str:
    obj = getattr(importlib.import_module(package), name)
    full = f"{package}.{name}"
    title = f"{full}\n{'=' * len(full)}\n\n.. currentmodule:: {package}\n\n"
    if inspect.isclass(obj):
        return title + f".. autoclass:: {name}\n   :members:\n   :show-inheritance:\n"
    if callable(obj):
        return title + f".. autofunction:: {name}\n"
    # a constant's own __doc__ is its type's (dict, tuple): say what it holds instead
    kind = type(obj).__name__
    if isinstance(obj, dict):
        what = f"A ``{kind}`` with the keys " + ", ".join(f"``{k}``" for k in list(obj)[:12])
        what += ", ..." if len(obj) > 12 else ""
    elif isinstance(obj, (tuple, list, set, frozenset)):
        what = f"A ``{kind}`` of {len(obj)}: " + ", ".join(f"``{v!r}``" for v in list(obj)[:12])
        what += ", ..." if len(obj) > 12 else ""
    elif hasattr(obj, "shape"):
        what = f"A ``{kind}`` of shape ``{tuple(obj.shape)}``"
    else:
        what = f"``{obj!r}``" if "\n" not in repr(obj) else f"A ``{kind}``"
    return title + f".. py:data:: {name}\n   :type: {kind}\n\n   {what}.\n"


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
    """``ev-api PACKAGE`` (in a MyST page): the package's docstring line and autosummary table."""

    required_arguments = 1

    def run(self):
        package = self.arguments[0]
        mod = importlib.import_module(package)
        doc = (inspect.getdoc(mod) or "").strip().splitlines()
        lines = [doc[0], ""] if doc else []
        names = public_names(package)
        mod_objs = {n: getattr(mod, n) for n in names}
        consts = [n for n in names if _is_constant(mod_objs[n])]
        # autosummary writes RST: inside a MyST page it must run in an eval-rst block
        lines += ["```{eval-rst}", f".. currentmodule:: {package}", ""]
        lines += [".. autosummary::", f"   :toctree: {STUB_DIR}", "   :nosignatures:", ""]
        lines += [f"   {n}" for n in names if n not in consts]
        if consts:
            # a constant's summary would be its type's docstring (dict, tuple): listed apart
            lines += ["", "Constants: " + ", ".join(f":data:`{n}`" for n in consts), ""]
            lines += [".. toctree::", "   :hidden:", ""]
            lines += [f"   {STUB_DIR}/{package}.{n}" for n in consts]
        lines += ["```"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=f"ev-api {package}"), 0, container)
        return container.children


_SUBSTITUTION = re.compile(r"(?<![`\\\w])\|([^|`\n]+)\|(?![`\w])")


def _escape_bars(app, what, name, obj, options, lines):
    """``|LFC|`` in a docstring means an absolute value, not an RST substitution."""
    for i, line in enumerate(lines):
        if "|" in line and not line.lstrip().startswith(("|", "+")):  # not a grid table
            parts = line.split("``")  # even parts lie outside inline literals
            parts[::2] = [_SUBSTITUTION.sub(r"\|\1\|", p) for p in parts[::2]]
            lines[i] = "``".join(parts)


_NAMES = re.compile(r"^[A-Za-z_][\w, ]*$")
_SECTION = re.compile(r"^-{3,}$")


def _return_label(obj) -> str:
    try:
        ann = inspect.signature(obj).return_annotation
    except (TypeError, ValueError):
        return "result"
    if ann is inspect.Signature.empty:
        return "result"
    return ann if isinstance(ann, str) else getattr(ann, "__name__", "result")


def _mend_numpydoc(app, what, name, obj, options, lines):
    """Before napoleon: two layouts numpydoc tolerates and napoleon misreads.

    A parameter list wrapped onto a second unindented line (``a, b,`` / ``c``) is joined;
    a free-text ``Returns`` section (no ``name : type`` line) becomes the description of
    one entry typed by the return annotation, so napoleon does not read each of its
    lines as a type.
    """
    i = 0
    while i < len(lines) - 1:
        line, nxt = lines[i], lines[i + 1]
        if line.endswith(",") and _NAMES.match(line) and _NAMES.match(nxt):
            lines[i : i + 2] = [f"{line} {nxt}"]
            continue
        i += 1
    for i in range(len(lines) - 2):
        if lines[i] in ("Returns", "Yields") and _SECTION.match(lines[i + 1]):
            end = i + 2
            while end < len(lines) and lines[end].strip():
                end += 1
            body = lines[i + 2 : end]
            if len(body) > 1 and " : " not in body[0] and not body[1].startswith(" "):
                lines[i + 2 : end] = [_return_label(obj), *("    " + b for b in body)]
            break


def _on_config(app, config):
    write_stubs(Path(app.srcdir))


def setup(app):
    app.connect("config-inited", _on_config)
    app.connect("autodoc-process-docstring", _mend_numpydoc, priority=400)  # before napoleon
    app.connect("autodoc-process-docstring", _escape_bars, priority=600)  # after napoleon
    app.add_directive("ev-api", EvApi)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
