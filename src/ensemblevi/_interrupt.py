"""Interruptions (SIGINT, SIGTERM) as an exception, and the line printed when one happens.

Minimal version written in the ``run`` branch against the agreed API; the ``safety``
branch owns this module and its ``main()`` handling.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_hint: str | None = None


class Interrupted(BaseException):
    """Raised in the main thread when SIGINT or SIGTERM arrives inside :func:`interruptible`.

    A ``BaseException`` (as ``KeyboardInterrupt``) so that ``except Exception`` blocks do
    not swallow it.

    Parameters
    ----------
    signum
        The signal received.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        #: the shell convention: 128 + signal number (130 SIGINT, 143 SIGTERM)
        self.exit_code = 128 + signum


def set_resume_hint(text: str | None) -> None:
    """Record the one-line message printed on interruption (what was kept, how to resume).

    Parameters
    ----------
    text
        The message, or ``None`` to clear it.
    """
    global _hint
    _hint = text


def resume_hint() -> str | None:
    """The message recorded by :func:`set_resume_hint`, if any."""
    return _hint


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` while the block runs.

    Outside the main thread signals cannot be handled, and the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
