"""The CLI reference from the commands themselves: ``ensemblevi --help`` and each command's.

Run at build time through Typer's ``CliRunner``, so the page cannot drift from the code.
"""

from __future__ import annotations

import os

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def command_names() -> list[str]:
    """The registered commands, in the order ``ensemblevi --help`` lists them."""
    import typer.main

    from ensemblevi.cli import app

    group = typer.main.get_command(app)
    return list(group.commands)


def help_text(*args: str) -> str:
    """``ensemblevi ARGS --help`` as plain text, 80 columns, no colours or boxes' markup."""
    from typer.testing import CliRunner

    from ensemblevi.cli import app

    env = {"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = CliRunner().invoke(app, [*args, "--help"], prog_name="ensemblevi", color=False)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if result.exit_code != 0:
        raise RuntimeError(f"ensemblevi {' '.join(args)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


class EvCli(SphinxDirective):
    """``ev-cli``: the top-level help, then one section per command with its help."""

    def run(self):
        out: list[nodes.Node] = [nodes.literal_block(text=help_text(), language="text")]
        for name in command_names():
            section = nodes.section(ids=[nodes.make_id(f"cli-{name}")])
            section += nodes.title(text=f"ensemblevi {name}")
            section += nodes.literal_block(text=help_text(name), language="text")
            out.append(section)
        return out


def setup(app):
    app.add_directive("ev-cli", EvCli)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
