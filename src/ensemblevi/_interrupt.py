"""Interruptions (SIGINT, SIGTERM) as one exception that reaches the command line's ``main``.

Without this, an interrupted training ends in other people's handlers: Lightning answers
``KeyboardInterrupt`` with ``sys.exit(1)`` and SIGTERM with a flag that ends training
normally (exit status 0, as if the model were finished), and scvi-tools' ``TrainRunner``
prints ``Exception raised during training. <class 'NameError'>`` for any exception. Inside
:func:`interruptible` both signals raise :class:`Interrupted` instead: it derives from
``BaseException`` but not from ``KeyboardInterrupt``, so Lightning re-raises it untouched
(its ``except BaseException`` branch) and ``main`` turns it into the conventional exit
status (128 + signal number) and one line saying what was kept and how to resume
(:func:`set_resume_hint`).

scvi-tools' line is printed through a module-level ``print`` in the private
``TrainRunner._run_training_core``; no public hook reaches it (the models' ``_train_runner_cls``
covers ensemblevi's own models only, not the ``scvi.model.SCVI`` models ``--seeds`` trains, and
would mean overriding that private method), so the shim replaces the module's ``print`` only
while a signal is being handled inside :func:`interruptible`, passes every other line through,
and is removed when the block exits.

This module imports nothing from the rest of the package (it is the lowest layer).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

#: the signals turned into :class:`Interrupted`
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# scvi-tools' TrainRunner prints every training exception through this module's `print`
_SCVI_RUNNER = "scvi.train._trainrunner"

_hint: str | None = None


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM.

    Parameters
    ----------
    signum
        The signal number.

    Attributes
    ----------
    signum
        The signal number.
    exit_code
        ``128 + signum``: 130 for SIGINT, 143 for SIGTERM (what a shell reports for a
        process the signal killed).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(self.signum)  # args = (signum,): it pickles (DDP, multiprocessing)

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"


def set_resume_hint(text: str | None) -> None:
    """Record the line printed when the command is interrupted (``None``: a generic one).

    Parameters
    ----------
    text
        What was kept and how to resume, e.g. ``"kept the checkpoint after epoch 3 in
        out/...; rerun with --resume to continue"``.
    """
    global _hint
    _hint = text


def resume_hint() -> str | None:
    """The line recorded by :func:`set_resume_hint` (``None`` when none is)."""
    return _hint


def _quiet_print(*args: Any, **kwargs: Any) -> None:
    # scvi-tools announces every training exception, an interruption included, as
    # "Exception raised during training. <class 'NameError'> ..."; that line is wrong here
    if any(isinstance(a, Interrupted) for a in args):
        return
    print(*args, **kwargs)


def _handler(signum: int, frame: Any) -> None:
    runner = sys.modules.get(_SCVI_RUNNER)
    if runner is not None:
        runner.print = _quiet_print  # removed again when interruptible() exits
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` for the block (main thread only).

    The previous handlers are put back afterwards. In another thread (where Python cannot
    install signal handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    set_resume_hint(None)  # a hint from an earlier block does not describe this one
    # a signal the caller ignores (`nohup`, a background job of a non-interactive shell)
    # stays ignored
    previous = {
        s: signal.signal(s, _handler) for s in SIGNALS if signal.getsignal(s) != signal.SIG_IGN
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        runner = sys.modules.get(_SCVI_RUNNER)
        if runner is not None and getattr(runner, "print", None) is _quiet_print:
            del runner.print


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for a short block that must finish (a commit); raise after it.

    Inside :func:`interruptible` only (elsewhere the block runs unchanged): a signal that
    arrives during the block raises :class:`Interrupted` once the block is done, so what
    the block writes is either all there or not started.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous = {s: signal.signal(s, hold) for s in SIGNALS if signal.getsignal(s) is _handler}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        raise Interrupted(pending[0])


def message(err: Interrupted) -> str:
    """The one line ``main`` prints for ``err``: the signal, then the recorded hint.

    Parameters
    ----------
    err
        The interruption.
    """
    name = signal.Signals(err.signum).name
    # without a hint: every writer is atomic, so what exists is whole
    hint = _hint or "what had been written completely is kept; rerun the same command"
    return f"Interrupted ({name}): {hint}"
