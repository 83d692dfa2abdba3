"""Command-line interface: ``ensemblevi --help``.

One module per group of commands; importing them registers each on :data:`app`.
"""

from __future__ import annotations

import sys

from ensemblevi._names import console_text
from ensemblevi.cli import _commands, _training  # noqa: F401  (register)
from ensemblevi.cli._app import app, console

__all__ = ["app", "console", "main"]


def main() -> None:
    """The ``ensemblevi`` command: an interruption exits 130 (SIGINT) or 143 (SIGTERM).

    The one line printed then says what was kept and how to resume
    (:func:`ensemblevi._interrupt.set_resume_hint`).
    """
    from ensemblevi._interrupt import Interrupted, interruptible, message

    with interruptible():
        try:
            app()
        except Interrupted as err:
            # a progress bar may have left the cursor mid-line: the message gets its own
            console.print(f"\n{console_text(message(err))}", soft_wrap=True)
            sys.exit(err.exit_code)
