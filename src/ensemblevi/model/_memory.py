"""How much memory training an ensemble needs, checked before anything large is allocated.

An ensemble's parameters grow with its members; ``--members 100000`` would otherwise end
in a raw allocation error (or the kernel's OOM killer) deep inside torch, after the data
were loaded. The estimate counts what training cannot do without: the weights, their
gradients and Adam's two moment buffers (4 float32 copies of every parameter), plus the
per-member likelihood tensors of one minibatch. It is a lower bound, so a refusal is never
a false alarm.
"""

from __future__ import annotations

import os

#: float32 copies of every parameter during training: weights, gradients, Adam's two moments
COPIES_PER_PARAMETER = 4
BYTES_PER_FLOAT = 4
#: member x cells x genes float tensors alive in one step of the fused likelihood
LIKELIHOOD_TENSORS = 6


def member_parameters(build) -> tuple[int, int]:
    """``(shared, per_member)`` parameter counts of a model, from two tiny builds.

    Parameters
    ----------
    build
        ``build(n_members)`` returns a model (or module) with ``parameters()``.
    """

    def count(k: int) -> int:
        obj = build(k)
        module = getattr(obj, "module", obj)
        return sum(p.numel() for p in module.parameters())

    one, two = count(1), count(2)
    return 2 * one - two, two - one


def training_bytes(
    shared: int, per_member: int, n_members: int, batch_size: int, n_genes: int
) -> int:
    """Lower bound of the memory training ``n_members`` members needs.

    Parameters
    ----------
    shared
        Parameters shared by the members.
    per_member
        Parameters of each member.
    n_members
        Members trained at once.
    batch_size
        Cells per minibatch (seen by every member).
    n_genes
        Genes modelled.
    """
    params = shared + per_member * n_members
    activations = LIKELIHOOD_TENSORS * n_members * batch_size * n_genes
    return (COPIES_PER_PARAMETER * params + activations) * BYTES_PER_FLOAT


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
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no cheap, honest number
        return None


def check_training_memory(
    build,
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
        ``build(n_members)`` returns a model of the same architecture with that many
        members (called with 1 and 2 only).
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
    MemoryError
        The estimate exceeds the free memory; the message gives both numbers and the fix.
    """
    shared, per_member = member_parameters(build)
    need = training_bytes(shared, per_member, n_members, batch_size, n_genes)
    need += (shared + per_member * also_built) * BYTES_PER_FLOAT
    free = available_bytes(accelerator) if available is None else available
    if free is not None and need > free:
        params = shared + per_member * max(n_members, also_built)
        raise MemoryError(
            f"Training {n_members:,} members needs at least {need / 2**30:,.1f} GiB "
            f"({params:,} parameters x {COPIES_PER_PARAMETER} float32 copies for weights, "
            f"gradients and Adam, plus one minibatch's likelihood), but only "
            f"{free / 2**30:,.1f} GiB is free. Use fewer members, train them in shards in "
            "separate jobs (`ensemblevi train --shard I/N`, then `ensemblevi merge`), or a "
            "smaller --batch-size / fewer genes."
        )
    return need
