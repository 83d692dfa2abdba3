"""Warnings and log levels: the one place that quiets third-party noise, for a block only.

ensemblevi never changes the process' warning filters or logger levels for good:
:func:`quiet_third_party` is a context manager that ignores only the named categories of
third-party warnings a user cannot act on (Lightning's ``PossibleUserWarning`` about data
loader workers and logging intervals; deprecation notices raised inside torch, Lightning,
scvi-tools and anndata) and, on request, lowers the named loggers, and restores both when
the block ends. ensemblevi's own warnings (and every other category) still show.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: modules whose deprecation notices are not the user's to act on
THIRD_PARTY = r"(torch|lightning|pytorch_lightning|scvi|anndata|scanpy|umap|numba|pynndescent)\b"

#: loggers lowered to ERROR by ``quiet_third_party(loggers=True)``
LOGGERS = ("scvi", "lightning", "lightning.pytorch", "lightning.fabric")


def _possible_user_warning() -> type[Warning] | None:
    try:
        from lightning.fabric.utilities.warnings import PossibleUserWarning
    except ImportError:  # an older Lightning: the category does not exist, nothing to hide
        return None
    return PossibleUserWarning


@contextmanager
def quiet_third_party(*, loggers: bool = False) -> Iterator[None]:
    """Hide named categories of third-party warnings (and log lines) inside a block.

    Parameters
    ----------
    loggers
        Also lower scvi-tools' and Lightning's loggers (:data:`LOGGERS`) to ``ERROR`` for the
        block (restored afterwards), for batch runs that print their own progress.

    Examples
    --------
    >>> import warnings
    >>> from ensemblevi._warnings import quiet_third_party
    >>> before = list(warnings.filters)
    >>> with quiet_third_party():
    ...     pass
    >>> warnings.filters == before
    True
    """
    levels = {name: logging.getLogger(name).level for name in LOGGERS} if loggers else {}
    with warnings.catch_warnings():
        category = _possible_user_warning()
        if category is not None:
            warnings.filterwarnings("ignore", category=category)
        for deprecation in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=deprecation, module=THIRD_PARTY)
        for name in levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
