"""scvi-tools' DE modes (``change``, ``vanilla``) on the ensemble posterior, and member-wise
posterior draws for the ensemble's own estimands.

The ensemble posterior is the equal-weight mixture of the members' posteriors, so a sample
of it is drawn member by member: each member gives an equal share of the samples, through
scvi-tools' own ``get_normalized_expression`` on ``model.members[k]`` (with its importance
weights, ``weights="importance"``, which refer to that member's posterior alone), and the
shares are concatenated. scvi-tools' :class:`~scvi.model.base.DifferentialComputation`
then does its own pairing and hypothesis testing on those samples: with one member it is
exactly ``scvi.model.SCVI.differential_expression`` on that member. Outlier filtering
(``filter_outlier_cells``) works in one latent space, so it runs per member too: each
member samples only the cells that are inliers in its own latent space.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from scvi.model.base import DifferentialComputation

#: ``get_bayes_factors`` keywords (scvi-tools' ``**kwargs``) and the modes they apply to
SCVI_KWARGS = {
    "n_samples_overall": ("change", "vanilla"),
    "use_permutation": ("change", "vanilla"),
    "m_permutation": ("change", "vanilla"),
    "change_fn": ("change",),
    "m1_domain_fn": ("change",),
    "threshold_counts": ("change",),
    "test_mode": ("change", "counts", "population"),
    "cred_interval_lvls": ("change",),
}


def check_kwargs(kwargs: dict[str, Any], mode: str) -> None:
    """Refuse keywords that do not apply to ``mode`` (nothing is silently dropped).

    Parameters
    ----------
    kwargs
        The ``**kwargs`` of a ``differential_expression`` call.
    mode
        ``change``, ``vanilla``, or the ensemble estimand (``counts``, ``population``).
    """
    for name in kwargs:
        if name == "pseudocount":
            raise TypeError(
                "differential_expression has no 'pseudocount'; pass pseudocounts= (scvi-tools' "
                "name, added to expression per unit library: 0.1 per 1e4 counts is 1e-5)."
            )
        modes = SCVI_KWARGS.get(name)
        if modes is None:
            raise TypeError(
                f"differential_expression got an unexpected keyword {name!r}; the keywords "
                f"forwarded to scvi-tools' get_bayes_factors are {sorted(SCVI_KWARGS)}."
            )
        if mode not in modes:
            raise ValueError(
                f"{name}= applies to mode={' or '.join(map(repr, modes))}, not to "
                f"{mode!r}; drop it or choose that mode."
            )
    if kwargs.get("test_mode", "two") not in ("two", "three"):
        raise ValueError(f"test_mode must be 'two' or 'three', got {kwargs['test_mode']!r}.")


class MemberFilter:
    """Cells of a group that are inliers in member ``k``'s latent space (scvi-tools'
    ``filter_outlier_cells``, run per member), cached so that every use of a group within
    one call sees the same cells.

    Parameters
    ----------
    model
        The ensemble.
    adata
        The validated AnnData.
    enabled
        ``False``: every cell is kept.
    """

    def __init__(self, model: Any, adata: Any, enabled: bool):
        self.model, self.adata, self.enabled = model, adata, enabled
        self._cache: dict[tuple[int, bytes], np.ndarray] = {}

    def __call__(self, k: int, cells: np.ndarray) -> np.ndarray:
        """The inliers of ``cells`` for member ``k``.

        Parameters
        ----------
        k
            The member.
        cells
            Cell positions in the AnnData.
        """
        cells = np.asarray(cells)
        if not self.enabled:
            return cells
        key = (k, cells.tobytes())
        if key not in self._cache:
            manager = self.model.get_anndata_manager(self.adata, required=True)
            latent = self.model.members[k].get_latent_representation
            dc = DifferentialComputation(None, latent, manager)
            self._cache[key] = np.asarray(dc.filter_outlier_cells(cells))
        return self._cache[key]


def member_shares(n: int, n_members: int, name: str = "n_samples_overall") -> list[int]:
    """Equal shares of ``n`` samples over the members (the first get the remainder).

    Parameters
    ----------
    n
        Samples in all.
    n_members
        Members.
    name
        The argument ``n`` came from, for the error.
    """
    if n < n_members:
        raise ValueError(
            f"{name}={n} is fewer than the {n_members} members; every member of the mixture "
            f"needs a sample: pass at least {n_members}."
        )
    return [n // n_members + (k < n % n_members) for k in range(n_members)]


def ensemble_scale_fn(
    model: Any,
    weights: str,
    batch_size: int | None,
    importance_kwargs: dict[str, Any],
    member_filter: MemberFilter,
):
    """A ``model_fn`` for ``DifferentialComputation``: samples of the ensemble posterior's
    normalised expression, an equal share from each member (scvi-tools' own sampling).

    Parameters
    ----------
    model
        The ensemble.
    weights
        ``uniform`` or ``importance`` (each member's own importance weights).
    batch_size
        Minibatch size of the members' passes.
    importance_kwargs
        Passed to scvi-tools' ``get_importance_weights`` of each member.
    member_filter
        The per-member inlier cells (or all cells).
    """

    def scales(adata, indices, transform_batch, n_samples_overall):
        parts = []
        for k, share in enumerate(member_shares(n_samples_overall, model.n_members)):
            part = model.members[k].get_normalized_expression(
                adata,
                indices=member_filter(k, indices),
                transform_batch=transform_batch,
                n_samples_overall=share,
                weights=weights,
                batch_size=batch_size,
                return_numpy=True,
                **importance_kwargs,
            )
            parts.append(part)
        return np.concatenate(parts)

    return scales


def scvi_mode_de(
    model: Any,
    adata: Any,
    cells1: np.ndarray,
    cells2: np.ndarray,
    mode: str,
    delta: float | None,
    pseudocounts: float | None,
    batch_correction: bool,
    batchid1: Any,
    batchid2: Any,
    weights: str,
    batch_size: int | None,
    importance_kwargs: dict[str, Any],
    member_filter: MemberFilter,
    kwargs: dict[str, Any],
) -> dict[str, np.ndarray]:
    """scvi-tools' ``get_bayes_factors`` on samples of the ensemble posterior.

    Parameters
    ----------
    model, adata
        The ensemble and the validated AnnData.
    cells1, cells2
        Cell positions of the two sides.
    mode
        ``change`` or ``vanilla``.
    delta, pseudocounts, batch_correction, batchid1, batchid2
        As in scvi-tools' ``differential_expression``.
    weights, batch_size, importance_kwargs, member_filter
        As in :func:`ensemble_scale_fn`.
    kwargs
        Further ``get_bayes_factors`` keywords (checked by :func:`check_kwargs`).
    """
    manager = model.get_anndata_manager(adata, required=True)
    fn = ensemble_scale_fn(model, weights, batch_size, importance_kwargs, member_filter)
    dc = DifferentialComputation(fn, None, manager)
    extra = {"delta": delta, "pseudocounts": pseudocounts} if mode == "change" else {}
    return dc.get_bayes_factors(
        cells1,
        cells2,
        mode=mode,
        batchid1=batchid1,
        batchid2=batchid2,
        use_observed_batches=not batch_correction,
        **extra,
        **kwargs,
    )


def member_draws(
    model: Any,
    adata: Any,
    k: int,
    cells: np.ndarray,
    n_samples: int,
    library_size: float,
    transform_batch: Any,
    weights: str,
    batch_size: int | None,
    importance_kwargs: dict[str, Any],
) -> np.ndarray:
    """``(n_samples, n_cells, G)`` normalised expression draws of member ``k``.

    Uniform weights: each draw decodes one latent sample of every cell. Importance weights:
    each draw is ``n_cells`` samples drawn with replacement from the member's importance-
    weighted posterior of the group (scvi-tools' ``n_samples_overall`` resampling), a
    weighted bootstrap of the group.

    Parameters
    ----------
    model, adata
        The ensemble and the validated AnnData.
    k
        The member.
    cells
        Cell positions of the group.
    n_samples
        Draws.
    library_size
        Counts the expression is scaled to.
    transform_batch
        Batch(es) to decode in (``None``: observed).
    weights, batch_size, importance_kwargs
        As in :func:`ensemble_scale_fn`.
    """
    get = functools.partial(
        model.members[k].get_normalized_expression,
        adata,
        indices=cells,
        transform_batch=transform_batch,
        library_size=library_size,
        batch_size=batch_size,
        return_numpy=True,
    )
    if weights == "importance":
        x = get(n_samples_overall=n_samples * len(cells), weights="importance", **importance_kwargs)
        return x.reshape(n_samples, len(cells), -1)
    x = get(n_samples=n_samples, return_mean=False)
    return x if n_samples > 1 else x[None]
