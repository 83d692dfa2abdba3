"""One streamed pass through the members' decoders, feeding several reducers.

``EnsembleSCVI.iter_uncertainty`` yields the variance parts of a chunk of cells; a
*reducer* keeps what one analysis needs of each chunk (a sum, a per-cell score, a few
genes' values) and turns it into that analysis' result at the end. Every analysis of a
run reads the same chunks, so the data go through the decoders once however many
analyses there are, and every analysis sees the same latent draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from anndata import AnnData

from ensemblevi.model.base._uncertainty import VarianceParts


class Reducer(Protocol):
    """What a streamed analysis keeps of each chunk of cells.

    ``cells`` are the positions in the AnnData it needs (``None``: all cells) and ``genes``
    the genes it needs (``None``: all); :meth:`add` receives only those, the genes in
    ``var_names`` order.
    """

    cells: np.ndarray | None
    genes: Sequence[str] | None

    def add(self, pos: np.ndarray, parts: VarianceParts, members: torch.Tensor) -> None:
        """Take one chunk of cells.

        Parameters
        ----------
        pos
            The chunk's cells: positions in the AnnData.
        parts
            Their variance parts, each ``(B, G)``.
        members
            The members' means over latent samples ``(K, B, G)``.
        """


class SummaryReducer:
    """Adapter of an :class:`~ensemblevi.model._uncertainty.UncertaintySummary` over all cells.

    Parameters
    ----------
    summary
        The summary to feed; its rows are the cells' positions in the AnnData.
    """

    cells = None
    genes = None

    def __init__(self, summary) -> None:
        self.summary = summary

    def add(self, pos: np.ndarray, parts: VarianceParts, members: torch.Tensor) -> None:
        """Add the chunk to the summary.

        Parameters
        ----------
        pos
            The chunk's cells: positions in the AnnData.
        parts
            Their variance parts, each ``(B, G)``.
        members
            The members' means over latent samples ``(K, B, G)``.
        """
        self.summary.add(pos, parts)


class ElboReducer:
    """Every cell's member ELBOs, read from the first latent sample of the streamed pass.

    The novelty score ``novelty_llgap`` needs each member's ELBO of each cell; reading it
    off the pass that decodes the cells anyway saves a second pass through the encoders
    and decoders (``get_elbo``). It is the same one-sample estimate as ``get_elbo``'s,
    from another latent draw (the pass' first sample): equal to ``get_elbo`` where the
    draws are equal (one sample, the same minibatches; tested).

    Parameters
    ----------
    n_members
        K.
    n_cells
        Cells of the AnnData (rows: their positions).
    """

    cells = None
    genes = None
    elbo = True  # asks :func:`stream` for the members' ELBOs

    def __init__(self, n_members: int, n_cells: int) -> None:
        self.values = np.full((n_members, n_cells), np.nan)

    def add(
        self,
        pos: np.ndarray,
        parts: VarianceParts,
        members: torch.Tensor,
        elbo: torch.Tensor | None = None,
    ) -> None:
        """Keep the chunk's member ELBOs.

        Parameters
        ----------
        pos
            The chunk's cells: positions in the AnnData.
        parts, members
            Unused (the :class:`Reducer` arguments).
        elbo
            The members' ELBOs of the chunk's cells ``(K, B)``.
        """
        self.values[:, pos] = elbo.double().cpu().numpy()


def stream(
    model,
    adata: AnnData,
    reducers: Sequence[Reducer],
    n_samples: int,
    library_size: float = 1e4,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
) -> None:
    """Run one ``iter_uncertainty`` pass over the union of what ``reducers`` need.

    Parameters
    ----------
    model
        A trained :class:`~ensemblevi.model.EnsembleSCVI`.
    adata
        AnnData registered with the model.
    reducers
        The reducers to feed (see :class:`Reducer`).
    n_samples, library_size, seed, batch_size, progress
        As in ``EnsembleSCVI.iter_uncertainty``. The latent draws of a cell depend on
        the cells streamed before it: the same reducers on the same cells see the same
        draws, whatever else is in the pass only when the pass' cells are the same.
    """
    if not reducers:
        return
    wanted = [r.cells for r in reducers]
    cells = None if any(c is None for c in wanted) else np.unique(np.concatenate(wanted))
    if any(r.genes is None for r in reducers):
        names = adata.var_names
        gene_list = None
    else:
        union = {g for r in reducers for g in r.genes}
        names = adata.var_names[adata.var_names.isin(list(union))]
        gene_list = list(names)
    col = {g: i for i, g in enumerate(names)}
    plans = []
    for r in reducers:
        rows = None
        if r.cells is not None and (cells is None or len(r.cells) != len(cells)):
            rows = np.zeros(adata.n_obs, dtype=bool)
            rows[np.asarray(r.cells)] = True
        cols = None
        if r.genes is not None and len(set(r.genes)) != len(names):
            mine = set(r.genes)
            cols = torch.tensor([col[g] for g in names if g in mine])
        plans.append((r, rows, cols))
    adata, idx, mask = model._uncertainty_cells_genes(adata, cells, gene_list, n_samples)
    want_elbo = any(getattr(r, "elbo", False) for r in reducers)
    chunks = model._uncertainty_chunks(
        adata, idx, mask, n_samples, library_size, batch_size, seed, progress, elbo=want_elbo
    )
    for pos, parts, members, elbo in chunks:
        for r, rows, cols in plans:
            p, m, at, e = parts, members, pos, elbo
            if rows is not None:
                keep = rows[pos]
                if not keep.any():
                    continue
                sel = torch.from_numpy(np.flatnonzero(keep)).to(parts.mean.device)
                p = VarianceParts(*(t.index_select(0, sel) for t in p))
                m, at = m.index_select(1, sel), pos[keep]
                e = None if e is None else e.index_select(1, sel)
            if cols is not None:
                cols = cols.to(parts.mean.device)
                p = VarianceParts(*(t.index_select(1, cols) for t in p))
                m = m.index_select(2, cols)
            if getattr(r, "elbo", False):
                r.add(at, p, m, e)
            else:
                r.add(at, p, m)
