"""Seeding helpers shared by the model and the analyses (rank 0: no model imports).

Two kinds of seeding, kept apart on purpose: :func:`seeded_globally` seeds every global
generator for a block that runs third-party code drawing from them (scvi-tools' training,
its data split), and :func:`private_torch_rng` gives a block its own torch stream, for
outputs that should be reproducible without the caller's random state moving.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ensemblevi._compat import data_split_seed


@contextmanager
def seeded_globally(seed: int | None) -> Iterator[None]:
    """Seed torch, numpy, Python and the data split for a block; restore them all afterwards.

    Parameters
    ----------
    seed
        The seed; ``None`` leaves every generator as it is (a no-op block).
    """
    if seed is None:
        yield
        return
    # numpy's legacy global generator is the one third-party code draws from
    states = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)
    try:
        with data_split_seed(seed):
            yield
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])  # noqa: NPY002
        random.setstate(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def private_torch_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Fork torch's generator (CPU and ``device``) for a block, seeded with ``seed``.

    Parameters
    ----------
    seed
        Seed of the block's stream; ``None`` continues the global stream inside the block
        (it is still restored afterwards).
    device
        The device whose CUDA generator is forked too (CPU devices fork only the CPU one).
    """
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield
