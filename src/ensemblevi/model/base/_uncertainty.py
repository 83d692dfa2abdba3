"""Decomposition of the predictive variance of normalised expression.

Written by hand: scvi-tools returns samples of normalised expression but no decomposition
of their variance into model (member), latent-posterior and count-noise parts.

For one cell and gene, let ``rho[s, k]`` be member k's normalised expression for latent
sample s, and ``y = x * L / l`` the cell's observed count rescaled to ``L`` counts per cell
(``l``: the library size in the likelihood). The law of total variance over the member
mixture, the latent posterior and the count model gives

    Var(y) = Var_k(E_s[rho]) + E_k[Var_s(rho)] + E_{k,s}[Var(y | rho)]
             (between)         (within)          (noise)

with ``rho`` in units of ``L`` and ``Var(y | rho) = L^2 Var(x | k, s) / l^2``:
Poisson ``rho/l``, NB ``rho/l + rho^2/theta``, ZINB with zero probability ``pi``
``(1 - pi)(rho/l + rho^2/theta) + pi (1 - pi) rho^2`` (all ``rho`` as fractions here);
a Normal likelihood with standard deviation ``sigma``: ``sigma^2 / l^2``.
Every moment is the plain (population) moment over the drawn samples.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ensemblevi._constants import VARIANCE_PARTS

# the field names are defined once, in ``_constants.VARIANCE_PARTS``
VarianceParts = NamedTuple("VarianceParts", [(name, torch.Tensor) for name in VARIANCE_PARTS])
VarianceParts.__doc__ = (
    "Per (cell, gene) mean and variance parts, each ``(B, G)``: "
    "``mean``, ``var_between``, ``var_within``, ``var_noise``."
)


def count_variance_fraction(
    scale: torch.Tensor,
    library: torch.Tensor,
    theta: torch.Tensor | None = None,
    zi_logits: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    overwrite_zi: bool = False,
) -> torch.Tensor:
    """``Var(x | rho) / l^2`` for Poisson (no theta), NB (theta) or ZINB (theta and zi_logits).

    Parameters
    ----------
    scale
        Normalised expression ``rho`` (fractions of the library).
    library
        Library size ``l`` (counts, not log), broadcastable to ``scale``.
    theta
        Inverse dispersion (NB, ZINB), broadcastable to ``scale``; ``None``: Poisson.
    zi_logits
        Logits of the zero probability (ZINB), broadcastable to ``scale``; ``None``: none.
    out
        A buffer of the broadcast shape to write the result into (``None``: a new tensor).
    overwrite_zi
        ``zi_logits`` may be overwritten (a throwaway tensor of the broadcast shape): saves
        one tensor of that shape.
    """
    # (samples, members, cells, genes) tensors: every new one costs its page faults, so
    # the result is built in one buffer, in place, as (1 - pi) rho (1/l + rho (1/theta + pi))
    params = [t for t in (theta, zi_logits) if t is not None]
    shape = torch.broadcast_shapes(scale.shape, library.shape, *(t.shape for t in params))
    if out is None:
        out = torch.empty(shape, dtype=scale.dtype, device=scale.device)
    inv_library = library.reciprocal()
    if not params:
        return torch.mul(scale, inv_library, out=out)
    if zi_logits is None:  # NB: rho (1/l + rho / theta)
        torch.div(scale, theta, out=out)
    else:
        own = overwrite_zi and zi_logits.shape == shape
        pi = zi_logits.sigmoid_() if own else torch.sigmoid(zi_logits)
        if theta is None:
            out.copy_(pi.expand(shape))
        else:
            torch.add(pi, theta.reciprocal(), out=out)
        out.mul_(scale)
    out.add_(inv_library).mul_(scale)
    if zi_logits is not None:
        out.addcmul_(out, pi, value=-1.0)  # times (1 - pi)
    return out


def decompose_variance(
    scale: torch.Tensor,
    library: torch.Tensor,
    theta: torch.Tensor | None = None,
    zi_logits: torch.Tensor | None = None,
    library_size: float = 1e4,
    std: torch.Tensor | None = None,
) -> VarianceParts:
    """Mean and variance parts of normalised expression from member samples.

    Parameters
    ----------
    scale
        Normalised expression ``(S, K, B, G)``: S latent samples of K members.
    library
        Library size (counts) broadcastable to ``scale``, e.g. ``(S, K, B, 1)``.
    theta, zi_logits
        Likelihood parameters broadcastable to ``scale`` (None for Poisson / no zero
        inflation).
    library_size
        ``L``: the counts per cell that expression is expressed in.
    std
        The standard deviation of a Normal likelihood (``gene_likelihood="normal"``),
        broadcastable to ``scale``: the noise is then ``std^2 / l^2``, and ``theta`` and
        ``zi_logits`` must be ``None``.

    Returns
    -------
    The four parts, each ``(B, G)``.
    """
    return decompose_members(scale, library, theta, zi_logits, library_size=library_size, std=std)[
        0
    ]


def decompose_members(
    scale: torch.Tensor,
    library: torch.Tensor,
    theta: torch.Tensor | None = None,
    zi_logits: torch.Tensor | None = None,
    *,
    library_size: float = 1e4,
    std: torch.Tensor | None = None,
    overwrite: bool = False,
    out: torch.Tensor | None = None,
) -> tuple[VarianceParts, torch.Tensor]:
    """:func:`decompose_variance` and the members' means over samples, in fewer passes.

    Parameters
    ----------
    scale, library, theta, zi_logits, library_size, std
        As in :func:`decompose_variance`.
    overwrite
        ``scale`` and ``zi_logits`` are throwaway tensors that may be overwritten: the
        streamed pass then allocates one ``(S, K, B, G)`` tensor less of each.
    out
        A throwaway buffer shaped like ``scale`` for the count noise (the streamed pass
        gives the prediction's ``rate``, read before): one tensor less again.

    Returns
    -------
    The parts, each ``(B, G)``, and the members' means ``(K, B, G)`` (per ``library_size``).
    """
    if scale.dim() != 4:
        raise ValueError(
            f"scale must be (samples, members, cells, genes), got {tuple(scale.shape)}."
        )
    if std is not None and (theta is not None or zi_logits is not None):
        raise ValueError("std (a Normal likelihood) excludes theta and zi_logits.")
    member_frac = scale.mean(0)  # (K, B, G), fractions
    member_mean = member_frac * library_size
    mean = member_mean.mean(0)
    var_between = (member_mean - mean).square_().mean(0)
    if std is None:
        noise = count_variance_fraction(
            scale, library, theta, zi_logits, out=out, overwrite_zi=overwrite
        )
    else:
        noise = (std / library).square_().expand_as(scale)
    var_noise = noise.mean((0, 1)).mul_(library_size**2)
    # the deviation from the member mean reuses the noise buffer (or scale) once it is read
    dev = scale if overwrite else (noise if noise.shape == scale.shape and std is None else None)
    dev = torch.sub(scale, member_frac, out=dev) if dev is not None else scale - member_frac
    var_within = dev.square_().mean((0, 1)).mul_(library_size**2)
    return VarianceParts(mean, var_between, var_within, var_noise), member_mean


class UncertaintySummary:
    """Per-gene and per-cell summaries of :class:`VarianceParts`, accumulated chunk by chunk.

    Memory is O(cells + groups x genes) whatever the data size: what ``get_uncertainty``
    writes to ``var``/``obs`` and what ``tl.gene_uncertainty`` and ``tl.cell_novelty``
    reduce to, without holding any cells x genes array. Sums are kept in float64.

    With ``cv = sqrt(var_between) / mean`` (between-member coefficient of variation of a
    cell and gene; ``mean`` clamped at float32's smallest normal number):

    * per gene (means over cells): ``mean``, ``var_between``, ``var_within``,
      ``var_noise``, ``cv_between`` (mean of ``cv``) and ``frac_between`` (between-member
      share of between + within, ratio of sums); with ``groups``, the mean of ``cv`` over
      each group's cells (:meth:`genes_by_group`);
    * per cell (over genes): ``cv_between`` (mean of ``cv``), ``frac_between`` (ratio of
      sums) and, in :attr:`cell_rms_cv`, the root mean square of ``cv``
      (``sqrt(mean_g var_between / mean^2)``).

    Parameters
    ----------
    n_cells
        Number of summarised cells (the ``rows`` given to :meth:`add` index them).
    n_genes
        Number of genes of each chunk.
    groups
        Optional integer group code (``0 .. n_groups - 1``) of each summarised cell.
    n_groups
        Number of groups (default: ``groups.max() + 1``).
    """

    GENE_COLUMNS = ("mean", "var_between", "var_within", "var_noise", "cv_between", "frac_between")
    CELL_COLUMNS = ("cv_between", "frac_between")

    def __init__(
        self,
        n_cells: int,
        n_genes: int,
        groups: np.ndarray | None = None,
        n_groups: int | None = None,
    ):
        self.n = 0
        self._sums = {name: np.zeros(n_genes) for name in (*VarianceParts._fields, "cv")}
        self.cell_cv = np.full(n_cells, np.nan)
        self.cell_frac = np.full(n_cells, np.nan)
        self.cell_rms_cv = np.full(n_cells, np.nan)
        self._groups = None
        if groups is not None:
            self._groups = torch.as_tensor(np.asarray(groups, dtype=np.int64))
            if len(self._groups) != n_cells:
                raise ValueError(f"groups has {len(self._groups)} codes for {n_cells} cells.")
            n_groups = int(self._groups.max()) + 1 if n_groups is None else n_groups
            self._group_cv = torch.zeros(n_groups, n_genes, dtype=torch.float64)
            self.group_counts = np.bincount(self._groups.numpy(), minlength=n_groups)

    def add(self, rows: np.ndarray, parts: VarianceParts) -> None:
        """Add a chunk of cells.

        Parameters
        ----------
        rows
            The chunk's positions among the summarised cells.
        parts
            Its variance parts, each ``(len(rows), n_genes)``.
        """
        tiny = torch.finfo(torch.float32).tiny
        p = VarianceParts(*(t.double().cpu() for t in parts))
        mean = p.mean.clamp_min(tiny)
        cv = p.var_between.sqrt() / mean
        for name, value in zip(VarianceParts._fields, p, strict=True):
            self._sums[name] += value.sum(0).numpy()
        self._sums["cv"] += cv.sum(0).numpy()
        self.cell_cv[rows] = cv.mean(1).numpy()
        self.cell_rms_cv[rows] = (p.var_between / mean.square()).mean(1).sqrt().numpy()
        model = (p.var_between + p.var_within).sum(1).clamp_min(tiny)
        self.cell_frac[rows] = (p.var_between.sum(1) / model).numpy()
        if self._groups is not None:
            self._group_cv.index_add_(0, self._groups[torch.as_tensor(rows)], cv)
        self.n += len(rows)

    def genes(self, index) -> pd.DataFrame:
        """The per-gene summaries (:attr:`GENE_COLUMNS`).

        Parameters
        ----------
        index
            The genes' names, in the chunks' column order.
        """
        n = max(self.n, 1)
        s = self._sums
        frac = s["var_between"] / np.maximum(s["var_between"] + s["var_within"], 1e-300)
        data = {name: s[name] / n for name in VarianceParts._fields}
        return pd.DataFrame({**data, "cv_between": s["cv"] / n, "frac_between": frac}, index=index)

    def genes_by_group(self, index, columns) -> pd.DataFrame:
        """Per gene and group: the mean of ``cv`` over the group's cells (0 for empty groups).

        Parameters
        ----------
        index
            The genes' names, in the chunks' column order.
        columns
            The groups' names, in code order.
        """
        if self._groups is None:
            raise ValueError("genes_by_group needs the groups given to UncertaintySummary.")
        mean = self._group_cv.numpy() / np.maximum(self.group_counts, 1)[:, None]
        return pd.DataFrame(mean.T, index=index, columns=columns)

    def cells(self, index) -> pd.DataFrame:
        """The per-cell summaries (:attr:`CELL_COLUMNS`), one row per summarised cell.

        Parameters
        ----------
        index
            The summarised cells' names.
        """
        return pd.DataFrame(
            {"cv_between": self.cell_cv, "frac_between": self.cell_frac}, index=index
        )
