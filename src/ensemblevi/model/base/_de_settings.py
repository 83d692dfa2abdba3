"""The options of a differential-expression call: one settings object, checked once, and
the parameter docs that ``EnsembleSCVI.differential_expression`` and
``ensemblevi.tl.differential_expression`` share.

The docs are shared with docrep (a dependency of scvi-tools, which shares its own DE
parameter docs the same way: ``scvi.utils._docstrings.de_dsp``): each public entry point
writes ``%(de_params)s`` and ``%(de_returns)s`` where they go.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from docrep import DocstringProcessor

from ._de_lfc import LIBRARY_SIZE, PSEUDOCOUNT
from ._de_samples import DESIGNS, SAMPLE_METHODS
from ._de_scvi import check_kwargs

#: the ensemble's estimands (``mode=None``); scvi-tools' cell-pair question is mode="change"
ESTIMANDS = ("counts", "population")
MODES = (None, "change", "vanilla")
#: the registry key of ``setup_anndata(sample_key=...)``'s column (not a model covariate)
SAMPLE_REGISTRY_KEY = "ensemblevi_sample"


@dataclass(frozen=True, kw_only=True)
class DESettings:
    """Every option of a DE call (the comparison itself and ``key_added`` aside), checked
    once when made: a wrong combination raises here, naming the fix, before any model pass.

    The fields are the parameters of ``differential_expression`` (``%(de_params)s`` there);
    ``bayes_kwargs`` holds its ``**kwargs`` (scvi-tools' ``get_bayes_factors`` keywords).
    """

    mode: str | None = None
    delta: float | None = 0.5
    batch_size: int | None = None
    all_stats: bool = True
    batch_correction: bool = False
    batchid1: Any = None
    batchid2: Any = None
    fdr_target: float = 0.05
    silent: bool = False
    weights: str | None = "uniform"
    filter_outlier_cells: bool = False
    importance_weighting_kwargs: dict | None = None
    estimand: str = "counts"
    n_samples: int | None = None
    max_cells: int | None = None
    pseudocounts: float | None = None
    seed: int = 0
    progress: bool = True
    null_check: bool = False
    n_null: int = 3
    sample_key: str | None = None
    method: str | None = None
    design: str = "auto"
    lfc_threshold: float = 0.0
    bayes_kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_call(cls, call: dict[str, Any]) -> DESettings:
        """The settings from a public entry point's ``locals()`` (its ``kwargs`` become
        ``bayes_kwargs``); other names (``self``, ``adata``, the groups) are left out.

        Parameters
        ----------
        call
            The caller's arguments by name.
        """
        names = {f.name for f in fields(cls)} - {"bayes_kwargs"}
        return cls(
            **{k: v for k, v in call.items() if k in names},
            bayes_kwargs=dict(call.get("kwargs") or {}),
        )

    def __post_init__(self) -> None:
        if not isinstance(self.fdr_target, int | float) or not 0 < self.fdr_target < 1:
            raise ValueError(f"fdr_target must be in (0, 1), got {self.fdr_target}.")
        if self.sample_key is not None:
            self._check_samples()
            return
        if self.method is not None or self.design != "auto" or self.lfc_threshold != 0:
            raise ValueError(
                "method=, design= and lfc_threshold= belong to the sample-aware test; "
                "pass sample_key= (the obs column of the biological samples), or register "
                "it with setup_anndata(sample_key=...)."
            )
        self._check_cells()

    def _check_samples(self) -> None:
        method = self.sample_method
        if method not in SAMPLE_METHODS:
            raise ValueError(
                f"method must be one of {SAMPLE_METHODS} (with sample_key), got {method!r}."
            )
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {self.design!r}.")
        if self.mode is not None or self.estimand != "counts":
            raise ValueError(
                "mode= and estimand= choose a cell-level test; with sample_key the "
                "test compares samples (choose it with method=)."
            )
        if self.lfc_threshold < 0 or (method == "pseudobulk" and self.lfc_threshold > 0):
            raise ValueError(
                "lfc_threshold must be >= 0, and 0 with method='pseudobulk' "
                "(PyDESeq2 tests any change here)."
            )
        if self.null_check:
            raise ValueError(
                "null_check= repeats the cell-level test on halves of group1; the "
                "sample-aware test is checked by its between-sample variance. Drop "
                "null_check, or drop sample_key to check the cell-level test."
            )

    def _check_cells(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"mode must be None (the ensemble's estimand=), 'change' or 'vanilla' "
                f"(scvi-tools' modes), got {self.mode!r}."
            )
        if self.estimand not in ESTIMANDS:
            hint = (
                " (the randomly paired cells of 'cell_pairs' are scvi-tools' mode='change')"
                if self.estimand == "cell_pairs"
                else ""
            )
            raise ValueError(f"estimand must be one of {ESTIMANDS}, got {self.estimand!r}{hint}.")
        if self.weights not in (None, "uniform", "importance"):
            raise ValueError(f"weights must be 'uniform' or 'importance', got {self.weights!r}.")
        if self.mode is not None and self.estimand != "counts":
            raise ValueError(
                f"estimand={self.estimand!r} is one of the ensemble's estimands (mode=None) "
                f"and mode={self.mode!r} is scvi-tools'; pass one of them."
            )
        check_kwargs(self.bayes_kwargs, self.estimand if self.mode is None else self.mode)
        if self.delta is not None and self.delta <= 0:
            raise ValueError(f"delta must be > 0 (a log2 fold change), got {self.delta}.")
        if self.pseudocounts is not None and self.pseudocounts < 0:
            raise ValueError(f"pseudocounts must be >= 0, got {self.pseudocounts}.")
        if self.importance_weighting_kwargs and self.weights != "importance":
            raise ValueError("importance_weighting_kwargs need weights='importance'.")
        if self.max_cells is not None and self.max_cells < 1:
            raise ValueError(f"max_cells must be >= 1, got {self.max_cells}.")
        if self.mode is None:
            if self.delta is None:
                raise ValueError(
                    "delta=None (estimated from the LFCs) is scvi-tools' change mode; pass a "
                    "number for the ensemble's estimand, or mode='change'."
                )
            return
        if self.n_samples is not None:
            raise ValueError(
                "n_samples= is the ensemble estimand's draws per member; scvi-tools' modes "
                "take n_samples_overall= (all members' samples together, default 5000)."
            )
        if self.mode == "vanilla" and self.pseudocounts is not None:
            raise ValueError(
                "pseudocounts= applies to mode='change' and the ensemble's estimands, "
                "not to 'vanilla' (which compares scales, no log)."
            )
        if self.mode == "vanilla" and self.null_check:
            raise ValueError(
                "null_check needs genes called at fdr_target, which mode='vanilla' does not "
                "make (it has no proba_de); use mode=None or mode='change'."
            )

    @property
    def show(self) -> bool:
        """Whether progress bars are shown."""
        return self.progress and not self.silent

    @property
    def weighting(self) -> str:
        """``weights``, with ``None`` read as ``"uniform"``."""
        return "uniform" if self.weights is None else self.weights

    @property
    def draws(self) -> int | None:
        """Posterior draws per member of the ensemble's estimands (``None``: scvi modes)."""
        if self.mode is not None:
            return None
        return 50 if self.n_samples is None else self.n_samples

    @property
    def cells_cap(self) -> int | None:
        """Cells per group (``None``: every cell, scvi-tools' modes' default)."""
        if self.mode is None and self.max_cells is None:
            return 500
        return self.max_cells

    @property
    def pseudocount(self) -> float | None:
        """The pseudocount per ``LIBRARY_SIZE`` (ensemble estimands) or per unit library
        (scvi-tools' ``change``; ``None``: its own estimate)."""
        if self.mode is not None:
            return self.pseudocounts
        return PSEUDOCOUNT if self.pseudocounts is None else self.pseudocounts * LIBRARY_SIZE

    @property
    def sample_method(self) -> str:
        """The sample-aware method (``None`` read as the default, ``"counts"``)."""
        from ._de_samples import DEFAULT_SAMPLE_METHOD

        return DEFAULT_SAMPLE_METHOD if self.method is None else self.method

    def params(self) -> dict[str, Any]:
        """The call's settings as ``uns[key]["params"]`` keeps them (h5ad-storable)."""
        if self.sample_key is not None:
            return {
                "estimand": f"samples_{self.sample_method}",
                "fdr_target": float(self.fdr_target),
                "delta": float(self.lfc_threshold),
                "lfc_threshold": float(self.lfc_threshold),
                "design": self.design,
                "seed": int(self.seed),
                "p_adjust": "bh" if self.sample_method == "pseudobulk" else "storey",
            }
        return {
            "delta": "auto" if self.delta is None else float(self.delta),
            "fdr_target": float(self.fdr_target),
            "estimand": self.estimand if self.mode is None else f"scvi_{self.mode}",
            "n_samples": int(
                self.draws
                if self.draws is not None
                else self.bayes_kwargs.get("n_samples_overall", 5000)
            ),
            "max_cells": -1 if self.cells_cap is None else int(self.cells_cap),
            "batch_correction": bool(self.batch_correction),
            "seed": int(self.seed),
            "weights": self.weighting,
            "filter_outlier_cells": bool(self.filter_outlier_cells),
        }


DE_PARAMS = """\
adata
    Cells to use (default: the model's AnnData).
groupby
    ``obs`` column of the groups (``None``: ``"cell_type"``, unless ``idx1`` is given).
group1
    One group, a list of groups (each a comparison), or ``None``: every group in turn.
group2
    The reference group; ``None``: all other cells (``group2`` column ``"Rest"``).
idx1, idx2
    The two sides' cells instead of groups: boolean masks, integer positions or
    ``adata.obs.query`` strings (``idx2=None``: all other cells).
mode
    ``None`` (the ensemble's ``estimand``), or scvi-tools' ``"change"`` (LFCs of random
    pairs of single-cell posterior samples, scvi-tools' ``delta``/``pseudocounts``
    handling and ``test_mode="three"``) or ``"vanilla"`` (``P(scale1 > scale2)`` of such
    pairs), computed by scvi-tools' ``DifferentialComputation`` on samples of the
    ensemble posterior, an equal share from each member.
delta
    Smallest |LFC| (log2) that counts as a change; ``None`` (``change`` only):
    scvi-tools' estimate from the LFC means. Unused by ``vanilla``.
batch_size
    Minibatch size of the model passes.
all_stats
    Add scvi-tools' raw-count columns (``raw_mean1/2``, ``non_zeros_proportion1/2``,
    ``raw_normalized_mean1/2``) of the full groups.
batch_correction
    Compare the groups decoded in every batch (``batchid1``/``batchid2``: in those
    batches) instead of each cell's own. Ensemble estimands: each cell's expression
    averaged over the batches (``counts``: the means standardised to one batch mix);
    scvi-tools' modes: samples paired within a batch.
batchid1, batchid2
    Batch categories each side is decoded in (need ``batch_correction=True``).
fdr_target
    Target of ``is_de_fdr_<target>``: the posterior expected FDR rule on the cell path
    (not ``vanilla``, which has no ``proba_de``, as in scvi-tools), the adjusted
    p-values on the sample path.
silent
    Hide the progress bars (as ``progress=False``).
weights
    ``"uniform"`` or ``"importance"`` (``None``: uniform): scvi-tools' importance
    weights, computed per member on that member's posterior. ``population``: each draw is
    a weighted bootstrap of the group's cells; scvi-tools' modes: each member's samples
    are resampled with its weights; ``counts``: they shape the strata only.
filter_outlier_cells
    Drop a group's outlier cells (scvi-tools' elliptic envelope in latent space) before
    sampling; per member, in that member's latent space.
importance_weighting_kwargs
    Passed to each member's ``get_importance_weights`` (with ``weights="importance"``).
estimand
    With ``mode=None``: ``"counts"`` (default: the log2 ratio of the groups' mean
    normalised counts, empirical Bayes within strata of the ensemble's
    ``P(|LFC| >= delta)``) or ``"population"`` (the model alone: per posterior draw, the
    LFC of the groups' median log2 expression).
n_samples
    Ensemble estimands: posterior draws per member (``None``: 50). scvi-tools' modes
    take ``n_samples_overall=`` instead (all members together, default 5000).
max_cells
    Cells per group, subsampled without replacement (seeded) above this cap
    (``None``: 500 for the ensemble's estimands, every cell for scvi-tools' modes).
pseudocounts
    Added to the expression per unit library (scvi-tools' units) before the log2;
    ``None``: ``1e-5`` (0.1 per 1e4 counts) for the ensemble's estimands, scvi-tools'
    estimate from non-expressed genes in ``change`` mode.
seed
    Seed of the cell subsample and the draws (scvi-tools' modes and member-wise draws
    run under torch's and numpy's global generators seeded with it; the caller's states
    are restored after).
key_added
    Write the result to ``adata.uns[key_added]`` in ``rank_genes_groups``' layout, so
    ``scanpy.get.rank_genes_groups_df(adata, group, key=key_added)`` reads it, plus the
    full table under ``"table"``; ``None``: write nothing (the model method's default,
    as scvi-tools'). The layout's fields hold Bayesian quantities on the cell path:
    ``scores`` = ``proba_de``, ``logfoldchanges`` = ``lfc_median``, ``pvals`` =
    ``proba_not_de`` (a posterior probability, not a p-value), ``pvals_adj`` =
    ``expected_fdr`` (``vanilla``: ``scores`` = ``bayes_factor``, ``logfoldchanges`` =
    log2 scale ratio, ``pvals`` = ``pvals_adj`` = ``proba_m2``); on the sample path
    ``t``, ``lfc``, ``pval`` and ``padj``. ``params`` says which.
progress
    Show progress bars.
null_check, n_null
    Repeat the cell-level test on ``n_null`` seeded random halves of each comparison's
    ``group1`` (no true change) and warn when they get calls; the summary goes to
    ``result.attrs["null_check"]`` and ``adata.uns[key_added]["null_check"]``.
sample_key
    ``obs`` column of the biological samples (donors, patients): the test then compares
    samples, not cells: pseudobulks per sample and side, a moderated t-test whose
    variance is the between-sample variance, adjusted p-values at ``fdr_target``.
    ``None``: the column registered by ``setup_anndata(sample_key=...)`` if any, else
    cells are the replicates and the result says that its calls describe these cells,
    not the population (a warning names any ``obs`` column that looks like samples).
    With fewer than 2 samples (pairs) per side the test falls back to cells, with the
    same statement; below 3 per side it warns that calibration was not shown.
method
    With samples: ``"counts"`` (default: the moderated test on raw pseudobulk counts,
    calibrated on samples), ``"ensemble"`` (the same test on each member's denoised
    pseudobulks, the members' disagreement added as variance; over-calls from 4 samples
    per side) or ``"pseudobulk"`` (PyDESeq2, optional dependency). See
    ``docs/de_replicates.md`` for the measurements behind the default.
design
    With samples: ``"between"`` (each sample on one side), ``"paired"`` (both sides in
    every sample: paired by sample) or ``"auto"`` (paired when samples have cells on
    both sides).
lfc_threshold
    With samples: test ``|LFC| > lfc_threshold`` (log2; TREAT) instead of any change
    (0, as PyDESeq2 and limma). ``delta`` belongs to the cell-level estimands.
**kwargs
    scvi-tools' ``get_bayes_factors`` keywords where they apply (``n_samples_overall``,
    ``use_permutation``, ``m_permutation``, ``change_fn``, ``m1_domain_fn``,
    ``threshold_counts``, ``cred_interval_lvls``: scvi modes; ``test_mode``: also the
    ensemble's estimands, default ``"two"`` there); others raise."""

DE_RETURNS = """\
One row per gene and comparison (comparisons concatenated, as scvi-tools), built by one
table builder (:func:`ensemblevi.model.base._de_calls.de_table`). Ensemble estimands,
sorted by ``proba_de`` then ``|lfc_median|``: ``proba_de``, ``proba_not_de``,
``bayes_factor``, ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max``,
``lfc_q2.5``, ``lfc_q97.5``, ``lfc_member_std``, ``member_calls``, ``call_flips``,
``expected_fdr``, ``is_de_fdr_<target>``, ``scale1``, ``scale2`` (mean normalised
expression per unit library), ``pseudocounts``, ``delta``; ``counts`` adds
``model_proba_de``, ``model_lfc_median`` (the population estimand), ``lfc_counts``,
``lfc_counts_se`` (the counts' LFC before shrinkage) and ``stratum``. scvi-tools' modes:
its columns (``change`` adds ``expected_fdr`` and ``is_de_fdr_<target>``). With samples,
sorted by p-value: ``lfc``, ``lfc_se``, ``t``, ``df``, ``pval``, ``padj``,
``is_de_fdr_<target>``, ``mean_log_cpm``, ``lfc_member_std`` (ensemble), ``n_samples1``,
``n_samples2``, ``design``, ``inference_unit``. Then the ``all_stats`` columns, and
``comparison``, ``group1``, ``group2`` for ``groupby`` calls. ``attrs`` say what the calls
describe (``inference_unit``, ``statement``, ``replicates``, ``sample_key`` and where it
came from)."""

#: the shared docs: ``@de_docs.dedent`` fills ``%(de_params)s`` and ``%(de_returns)s``
de_docs = DocstringProcessor(de_params=DE_PARAMS, de_returns=DE_RETURNS)
