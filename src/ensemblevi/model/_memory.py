"""How much memory an ensemble needs, checked before anything large is allocated.

An ensemble's parameters grow with its members; ``--members 100000`` would otherwise end
in a raw allocation error (or the kernel's OOM killer) deep inside torch, after the data
were loaded. The estimate counts what training cannot do without: the weights, their
gradients and Adam's two moment buffers (4 float32 copies of every parameter), plus the
per-member likelihood tensors of one minibatch. It is a lower bound, so a refusal is never
a false alarm. Parameters are counted on torch's meta device, so counting a
100,000-member model allocates nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: float32 copies of every parameter during training: weights, gradients, Adam's two moments
COPIES_PER_PARAMETER = 4
BYTES_PER_FLOAT = 4
#: member x cells x genes float tensors alive in one step of the fused likelihood
LIKELIHOOD_TENSORS = 6


def parameter_count(build: Callable[[int], Any], n_members: int) -> int:
    """Parameters of ``build(n_members)``, built on torch's meta device (nothing allocated).

    Parameters
    ----------
    build
        ``build(n_members)`` returns a model (with ``.module``) or a ``torch.nn.Module``.
    n_members
        Members to count.
    """
    import torch

    with torch.device("meta"):
        obj = build(n_members)
    module = getattr(obj, "module", obj)
    return sum(p.numel() for p in module.parameters())


def training_bytes(n_parameters: int, n_members: int, batch_size: int, n_genes: int) -> int:
    """Lower bound of the memory training ``n_members`` members needs.

    Parameters
    ----------
    n_parameters
        Parameters of the model (all members).
    n_members
        Members trained at once.
    batch_size
        Cells per minibatch (seen by every member).
    n_genes
        Genes modelled.
    """
    activations = LIKELIHOOD_TENSORS * n_members * batch_size * n_genes
    return (COPIES_PER_PARAMETER * n_parameters + activations) * BYTES_PER_FLOAT


def available_bytes(accelerator: str = "auto") -> int | None:
    """Free memory where training will run (GPU when one is used), ``None`` if unknown.

    Parameters
    ----------
    accelerator
        ``"cpu"``, ``"gpu"``/``"cuda"`` or ``"auto"`` (a GPU when torch sees one).
    """
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:  # Linux: MemAvailable counts the page cache the kernel would give up
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no cheap, honest number
        return None


class NotEnoughMemory(MemoryError, ValueError):
    """A model or its training would not fit in the free memory (refused before allocating).

    Also a ``ValueError``: like any bad input, commands report it as a one-line error.
    """


def _refuse(need: int, free: int | None, n_members: int, n_parameters: int, what: str) -> None:
    if free is not None and need > free:
        raise NotEnoughMemory(
            f"{what} {n_members:,} members needs at least {need / 2**30:,.1f} GiB "
            f"({n_parameters:,} parameters), but only {free / 2**30:,.1f} GiB is free. Use "
            "fewer members, train them in shards in separate jobs (`ensemblevi train --shard "
            "I/N`, then `ensemblevi merge`), or a smaller model / --batch-size / fewer genes."
        )


def check_training_memory(
    build: Callable[[int], Any],
    n_members: int,
    batch_size: int,
    n_genes: int,
    accelerator: str = "auto",
    available: int | None = None,
    also_built: int = 0,
) -> int:
    """Refuse, before allocating, an ensemble whose training cannot fit in memory.

    Parameters
    ----------
    build
        ``build(n_members)`` returns a model of the architecture to train (built on the
        meta device here, so it costs nothing).
    n_members
        Members to train.
    batch_size
        Cells per minibatch.
    n_genes
        Genes modelled.
    accelerator
        Where training runs (see :func:`available_bytes`).
    available
        Free bytes (default: measured).
    also_built
        Members whose weights are built besides (a shard initialises the whole ensemble
        once, to take its members' slice).

    Returns
    -------
    The estimated bytes.

    Raises
    ------
    NotEnoughMemory
        The estimate exceeds the free memory; the message gives both numbers and the fix.
    """
    n_parameters = parameter_count(build, n_members)
    need = training_bytes(n_parameters, n_members, batch_size, n_genes)
    if also_built:
        need += parameter_count(build, also_built) * BYTES_PER_FLOAT
    free = available_bytes(accelerator) if available is None else available
    _refuse(need, free, n_members, n_parameters, "Training")
    return need


def check_weights_memory(
    build: Callable[[int], Any], n_members: int, available: int | None = None
) -> int:
    """Refuse, before allocating, a model whose weights alone do not fit in free memory.

    For a model's constructor: its weights are built on the CPU first, whatever device
    training uses later.

    Parameters
    ----------
    build
        ``build(n_members)`` returns the module (built on the meta device here).
    n_members
        Members built.
    available
        Free bytes (default: measured, CPU).

    Returns
    -------
    The bytes of the weights.
    """
    n_parameters = parameter_count(build, n_members)
    need = n_parameters * BYTES_PER_FLOAT
    _refuse(
        need,
        available_bytes("cpu") if available is None else available,
        n_members,
        n_parameters,
        "Building",
    )
    return need
