"""``ev-tutorials``: a toctree of every notebook in the page's folder, found at build time.

A plain glob toctree warns (an error under ``-W``) when the folder holds no notebook yet,
and that warning cannot be suppressed by type; an empty folder gets a sentence instead.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


class EvTutorials(SphinxDirective):
    def run(self):
        here = Path(self.env.doc2path(self.env.docname)).parent
        books = sorted(p.stem for p in here.glob("*.ipynb"))
        if not books:
            return [nodes.paragraph(text="No tutorial notebook is in this build.")]
        lines = [".. toctree::", "   :maxdepth: 1", ""] + [f"   {b}" for b in books]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="ev-tutorials"), 0, container)
        return container.children


def setup(app):
    app.add_directive("ev-tutorials", EvTutorials)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
