"""Seeding: the one place that seeds and restores global random generators (rank 0).

:func:`forked_rng` forks every global generator a block may draw from (torch's CPU one,
every CUDA device's, numpy's legacy global one, Python's ``random``), seeds them all when
given a seed, and restores them all afterwards, so that a seeded output never moves the
caller's random state. :func:`seeded_globally` is the same for a block that runs third-party
code drawing from those generators (scvi-tools' training and its data split), with ``None``
meaning "draw from the caller's streams", as scvi-tools does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ensemblevi._compat import data_split_seed


def _states() -> tuple:
    # numpy's legacy global generator is the one third-party code draws from
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.random.get_rng_state(), cuda, np.random.get_state(), random.getstate()  # noqa: NPY002


def _restore(states: tuple) -> None:
    cpu, cuda, numpy_state, python_state = states
    torch.random.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(numpy_state)  # noqa: NPY002
    random.setstate(python_state)


@contextmanager
def forked_rng(seed: int | None = None) -> Iterator[None]:
    """Fork every global random generator for a block, seed them, restore them all after.

    Forks torch's CPU generator, every CUDA device's (where CUDA is available), numpy's
    legacy global generator and Python's ``random``; restores them all when the block ends,
    also on an error. ``torch.random.fork_rng(devices=[])`` with ``torch.manual_seed`` is
    not enough: ``manual_seed`` reseeds every CUDA device too, and only the forked ones
    come back.

    Parameters
    ----------
    seed
        Seed of every generator inside the block; ``None`` continues the caller's streams
        inside the block (they are still restored afterwards).

    Examples
    --------
    >>> import torch
    >>> from ensemblevi._seeding import forked_rng
    >>> before = torch.random.get_rng_state()
    >>> with forked_rng(0):
    ...     _ = torch.rand(3)
    >>> torch.equal(before, torch.random.get_rng_state())
    True
    """
    states = _states()
    try:
        if seed is not None:
            torch.manual_seed(seed)  # the CPU and every CUDA device
            np.random.seed(seed)  # noqa: NPY002
            random.seed(seed)
        yield
    finally:
        _restore(states)


@contextmanager
def seeded_globally(seed: int | None) -> Iterator[None]:
    """Seed every global generator and the data split for a block; restore them afterwards.

    Parameters
    ----------
    seed
        The seed; ``None`` leaves every generator as it is (a no-op block: third-party code
        inside draws from the caller's streams, as it would without ensemblevi).
    """
    if seed is None:
        yield
        return
    with forked_rng(seed), data_split_seed(seed):
        yield
