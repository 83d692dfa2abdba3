"""01: quick start on PBMC 3k."""

CELLS = [
    (
        "md",
        """
# Quick start: which values, genes, markers and cells to trust (PBMC 3k)

**The question.** You trained scVI on your counts and it gave you denoised expression, a
latent space and a UMAP. How much of that would come out the same if you had trained it
again? ensemblevi trains *K* scVI models at once (an ensemble, one vectorised pass) and
turns their disagreement into answers:

- **values**: are the model's predictive distributions of the counts as wide as they should be?
- **markers**: how far do the members disagree on a marker's denoised level in each cell type
  (the *model spread*), next to how much the cells of a type differ (the *biological spread*)?
- **genes**: which genes' denoised values depend on the training run?
- **cells**: which cells lie outside what the model was trained on?

The data are the classic 10x PBMC 3k (2,638 cells, 8 annotated types), read from
`shared/data/pbmc3k.h5ad` beside the clone; without that file the notebook falls back to
the embedded heart-like simulator and says so.""",
    ),
    ("setup", ""),
    (
        "md",
        """
## 1. Read and check the counts

`ev.data.read` reads `.h5ad`, 10x `.h5` or a 10x matrix folder and checks that the matrix
holds raw counts (finite, non-negative integers); anything else raises a `ValueError`
that names the problem and the fix. `preprocess` is the project's recipe: raw counts kept
in `layers["counts"]`, log-normalised values in `X`, highly variable genes selected on
the counts, and the marker genes kept even when they are not among them.""",
    ),
    (
        "code",
        """
PBMC_MARKERS = {
    "CD14+ Monocytes": ["CD14", "LYZ"],
    "FCGR3A+ Monocytes": ["FCGR3A"],
    "B cells": ["MS4A1", "CD79A"],
    "NK cells": ["NKG7", "GNLY"],
    "CD8 T cells": ["CD8A"],
    "CD4 T cells": ["IL7R"],
}
HEART_MARKERS = {
    "Fibroblast": ["DCN", "GSN", "PDGFRA"],
    "Smooth_muscle_cells": ["MYH11", "TAGLN", "ACTA2"],
    "Myeloid": ["CD14", "C1QA", "CD68"],
}

path = shared_data("pbmc3k.h5ad")
if path is not None:
    adata = ev.data.read(path)
    markers = PBMC_MARKERS
else:
    print("pbmc3k.h5ad not found beside the clone: using the heart-like simulator instead")
    adata = ev.data.synthetic(preset="heartlike", seed=0, n_cells=2500)
    markers = HEART_MARKERS

if QUICK:  # a quarter of the cells, for a check in seconds
    keep = np.random.default_rng(0).choice(adata.n_obs, size=600, replace=False)
    adata = adata[np.sort(keep)].copy()

report = ev.data.validate_counts(adata, warn_zeros=False)
print(report)
print(adata.obs["cell_type"].value_counts().to_string())""",
    ),
    (
        "code",
        """
marker_genes = sorted({gene for genes in markers.values() for gene in genes})
ev.data.preprocess(adata, n_top_genes=300 if QUICK else 1200, keep_genes=marker_genes)
adata""",
    ),
    (
        "md",
        """
## 2. Train an ensemble of four scVI models

`EnsembleSCVI` is a drop-in for `scvi.model.SCVI`: the same `setup_anndata`, the same
options, the same outputs. `ensemble="deep"` makes the four members independent networks
(each gets exactly the gradient it would get alone), trained together in one pass; the
`seed` fixes initialisation, data split and training, so rerunning gives the same model.""",
    ),
    (
        "code",
        """
ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts")
model = ev.model.EnsembleSCVI(adata, n_members=4, ensemble="deep", seed=0)
model.train(max_epochs=4 if QUICK else 40, seed=0, enable_progress_bar=False)""",
    ),
    (
        "md",
        """
## 3. Which values to trust: is the predictive distribution calibrated?

On cells the model did not train on (its validation split), each count is scored by its
randomised PIT under the model's predictive distribution (the equal mixture over members
and latent draws). If the model is calibrated, the PIT is uniform and the central 50%,
80%, 90%, 95% intervals cover that share of the counts.""",
    ),
    (
        "code",
        """
calib = ev.metrics.predictive_calibration(
    model, adata, indices=model.validation_indices, n_samples=3 if QUICK else 10, progress=False
)
calib["coverage"]""",
    ),
    ("code", """ev.pl.calibration({"deep K=4": calib}, show=True)"""),
    (
        "md",
        """
**Reading.** Each row of the table is an interval level: `randomized` is the coverage that
should equal the level, `interval` the conservative (non-randomised) coverage of the same
interval, and `member randomized` what a single member's own predictive gives on average.
The histogram on the left should be flat; a U shape would mean intervals too narrow
(over-confident), a hump in the middle too wide. In the run committed here (full
settings) the randomised coverage is within one percentage point of every level (0.502
at 50%, 0.955 at 95%) on the 263 held-out cells: on PBMC 3k the model's count intervals
can be read at face value. The project's benchmark found the same on PBMC and
over-confident intervals on two of its simulators (`docs/benchmarks.md`), so check this
on your own data.""",
    ),
    (
        "md",
        """
## 4. Markers, genes and cells in one pass

`ev.tl.uncertainty_analysis` decodes every cell once with every member and writes three
analyses into `adata`: the spread of the markers per cell type, a score per gene, and a
novelty score and flag per cell (with `embedding=True` also a UMAP of the ensemble's
denoised expression, never of averaged latent codes: the members' latent spaces are not
aligned).""",
    ),
    (
        "code",
        """
out = ev.tl.uncertainty_analysis(
    model,
    adata,
    markers=markers,
    groupby="cell_type",
    n_samples=3 if QUICK else 10,
    embedding=True,
    progress=False,
)
summary = out["spread"]["summary"].set_index(["group", "gene"])
summary[["mean", "cv", "member_cv", "frac_between", "frac_uncertain_cells"]].round(3)""",
    ),
    (
        "md",
        """
**Reading the marker table.** One row per (cell type, marker): `mean` is the denoised
level (per 10,000 counts), `cv` how much it varies between the type's cells, `member_cv`
how much the four members disagree on it in the average cell, `frac_between` the share of
the model's variance that comes from the members disagreeing (rather than from the
latent posterior within a member), and `frac_uncertain_cells` the share of the type's
cells where the members' CV exceeds 10%.

In the run committed here the members disagree by 17-36% (`member_cv`) on every marker,
against a cell-to-cell variation (`cv`) of 24-54%, and almost all of the model's
variance is between members (`frac_between` 0.85-0.95): the model spread is of the same
order as the biological spread, which is the science's original finding. Differences in
a marker's denoised level between single cells that are smaller than its `member_cv`
belong to the training run, not to the cells. (This is a 40-epoch training; how far the
members agree is a property of the training as much as of the data, which is why it is
measured rather than assumed.)""",
    ),
    ("code", """ev.pl.model_spread(adata, show=True)"""),
    ("code", """ev.pl.biological_spread(adata, show=True)"""),
    (
        "md",
        """
**Reading the two figures.** In the model spread each point is a cell of the type: the
members' mean of the marker's denoised level against their standard deviation; cells
above the dashed line (a CV of 0.1) are those counted in `frac_uncertain_cells`, here
nearly all of them. In the biological spread each point is a member: the marker's
average over the type's cells against its standard deviation over them. If the four
points lay close together, the type's level and its cell-to-cell variation would not
depend on which training run you happened to keep; here they do not lie close: the
members' averages of GNLY in NK cells range from about 230 to 460 per 10,000, those of
LYZ in CD14+ monocytes from about 490 to 670.""",
    ),
    (
        "md",
        """
## 5. Which genes depend on the training run?

Every gene gets a score, the mean over cells of the members' CV of its denoised level,
written to `adata.var["ensemblevi_cv_between"]` with its rank.""",
    ),
    (
        "code",
        """
genes = out["genes"]
print(f"{len(genes)} genes scored; the ten least reproducible:")
genes[["cv_between", "mean", "frac_between", "rank"]].head(10)""",
    ),
    ("code", """ev.pl.gene_uncertainty(adata, highlight=marker_genes[:6], show=True)"""),
    (
        "md",
        """
**Reading.** The score is plotted against each gene's mean denoised level: genes at the
top are those whose denoised values you should not interpret gene by gene (their
cell-to-cell pattern changes with the training run). In the run committed here the ten
least reproducible genes are all lowly expressed (3.6-14 per 10,000), where a few counts
leave the decoders free; the highlighted markers sit in the middle of the cloud (scores
0.25-0.45), so even they move with the training run, as the marker table said.""",
    ),
    (
        "md",
        """
## 6. Which cells lie outside what the model trained on?

`novelty_knn` is, per member, a cell's mean distance to its 15 nearest training cells in
that member's latent space, over the median for the validation cells, averaged over
members; `novelty_expr` is the same distance in 20 principal components of the counts;
`novelty_fit` is how badly the members' decoders fit the cell's counts (its misfit beyond
count noise, over the validation cells' median); `novelty_combined` is the mean of the
two distances or `novelty_fit`, whichever is larger, each over its 95th percentile on
the validation cells. A cell is flagged (`is_novel`) when its
`novelty_combined` exceeds the 95th percentile of the validation cells (a conformal
threshold: about 5% of new cells like the training cells are flagged by design). Cells
the model trained on are never tested: every score is biased on them.""",
    ),
    (
        "code",
        """
novelty = out["novelty"]
tested = novelty[novelty["novelty_tested"]]
print(
    f"{len(tested)} of {len(novelty)} cells tested (the validation split);"
    f" {tested['is_novel'].mean():.1%} of them flagged"
)
# medians over the tested cells only: on training cells every score is biased low
tested.groupby(adata.obs["cell_type"], observed=True)[
    ["novelty_combined", "novelty_knn", "novelty_fit", "novelty_cv"]
].median()""",
    ),
    ("code", """ev.pl.novelty_umap(adata, color="cell_type", show=True)"""),
    (
        "md",
        """
**Reading.** The UMAP is of the ensemble's denoised expression. Of the 263 validation cells
4.2% are flagged, as the 5% rule is set for: these cells come from the same sample as the
training cells, so the threshold holds for them. The rare types have the highest
distances (megakaryocytes 1.9, dendritic cells 1.3 times the validation median in
`novelty_knn`): with 15 and 37 cells in the data, few training cells are near them.
`novelty_combined` is in units of the 95th percentile of the validation cells; the
megakaryocytes' median is above it (1.33), the other types' below (0.75-0.97).
`novelty_fit` runs the other way: the decoders fit the T and NK cells' counts a little
worse than the monocytes' and megakaryocytes' (medians 0.95-1.14 against 0.59-0.76).
For a *new* sample, see tutorial 03, which calibrates on samples the model never saw.

## What to take away

- Read count intervals at face value where the calibration table's `randomized` column
  matches the level (here it does).
- Do not read differences in a marker's denoised level between cells smaller than its
  `member_cv` as biology; the two spread figures show how far the training run moves it.
- Do not interpret the genes at the top of the gene-uncertainty ranking one by one.
- A flagged cell is weak evidence on its own; whole populations are tested in tutorial 03.

The same analysis runs from the command line as
`ensemblevi run --data pbmc3k.h5ad --markers pbmc3k --out pbmc/`, which writes the
tables, figures and an HTML report.""",
    ),
]
