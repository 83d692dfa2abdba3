"""06: do my clusters hold up?"""

CELLS = [
    (
        "md",
        """
# Do my clusters hold up?

**The question.** Leiden on an scVI latent space gave you clusters and each cluster its
marker genes. Would another training run of the same model give the same clusters, the
same neighbours for each cell, the same markers?

Every member of an ensemble is a training run, so this is measured from one model:

- `ev.tl.neighbourhood_stability`: per cell, how much its nearest neighbours overlap
  between members (each member's neighbours found in that member's own latent space;
  latent spaces are never averaged);
- `ev.tl.cluster_stability`: Leiden in every member, a consensus partition, and per
  consensus cluster its stability (the mean Jaccard index of its best match in each
  member; Hennig 2007: below 0.6, "should not be trusted") and its markers' overlap;
- `ev.tl.marker_stability`: the same marker check for *your own* clusters or annotation.

On the project's benchmark (PBMC 3k, `docs/benchmarks.md`), a K = 4 model ranked the
clusters' stability exactly as 36 independent scVI seeds did (Spearman 1.00).""",
    ),
    ("setup", ""),
    (
        "code",
        """
path = shared_data("pbmc3k.h5ad")
if path is not None:
    adata = ev.data.read(path)
else:
    print("pbmc3k.h5ad not found beside the clone: using the heart-like simulator instead")
    adata = ev.data.synthetic(preset="heartlike", seed=0, n_cells=2500)
if QUICK:
    keep = np.random.default_rng(0).choice(adata.n_obs, size=600, replace=False)
    adata = adata[np.sort(keep)].copy()
ev.data.preprocess(adata, n_top_genes=300 if QUICK else 1200)

ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts")
model = ev.model.EnsembleSCVI(adata, n_members=4, ensemble="deep", seed=0)
model.train(max_epochs=4 if QUICK else 30, seed=0, enable_progress_bar=False)""",
    ),
    (
        "md",
        """
## 1. Clusters in every member, and how well they match""",
    ),
    (
        "code",
        """
clusters = ev.tl.cluster_stability(model, adata, resolution=1.0, threshold=0.6)
clusters""",
    ),
    (
        "md",
        """
**Reading.** One row per consensus cluster (`obs["ensemblevi_consensus_leiden"]`):
`stability` is the mean over members of the Jaccard index between the cluster and its
best-matching cluster in that member, `reproducible` whether it reaches 0.6; the marker
columns give the mean pairwise Jaccard of the members' top-10 markers and the markers
that at least 75% of members rank in their top 10. In the run committed here six of the
seven clusters hold up (0.71-0.99: B cells 0.99 with CD79A, MS4A1, TCL1A; the
megakaryocytes' 13 cells 0.97); the one that does not is the largest, cluster 2 (1,075
cells, markers LTB, MAL, AQP3: CD4 T cells) at 0.45: the members cut the CD4 T cells
differently. The project's benchmark found the same cluster unstable across 36 scVI
seeds (0.39).""",
    ),
    ("code", """ev.pl.cluster_stability(adata, show=True)"""),
    (
        "md",
        """
## 2. Which cells are stable?

The neighbourhood stability is per cell; on the ensemble's UMAP (of its denoised
expression) it shows where the members agree on who neighbours whom. The consensus
clusters and the per-cell agreement (the share of members whose best match of the cell's
cluster contains it) are drawn beside it.""",
    ),
    (
        "code",
        """
stability = ev.tl.neighbourhood_stability(model, adata, n_neighbors=15, groupby="cell_type")
ev.tl.expression_umap(model, adata, n_epochs=50 if QUICK else 150)
stability.groupby(adata.obs["cell_type"], observed=True).median().rename("median stability")""",
    ),
    ("code", """ev.pl.stability_umap(adata, show=True)"""),
    (
        "md",
        """
**Reading.** A neighbourhood stability of 1 means every member finds the same 15
neighbours for the cell. In the run committed here the medians are low everywhere
(0.02-0.17) except for the 15 megakaryocytes (0.91), whose 15 neighbours are each other
in every member: inside a large homogeneous population, *which* 15 of a thousand similar
cells are nearest depends on the training run. It says that single-cell neighbourhoods
(and what is computed from them: kNN smoothing, fine-grained trajectories) are not
reproducible here, not that the cell's type is uncertain; the per-cell agreement
(right) is high outside the CD4 T cells.""",
    ),
    (
        "md",
        """
## 3. One UMAP per member

Members' latent spaces are not aligned, so each member gets its own UMAP; for display
only, they are rotated onto the first (orthogonal Procrustes). Clusters that keep their
shape and their neighbours across the panels are what the stability numbers say: here B
cells, monocytes and NK cells keep theirs, while the border between CD4 and CD8 T cells
moves from member to member.""",
    ),
    (
        "code",
        """
ev.tl.member_umaps(model, adata, members=4, n_epochs=50 if QUICK else 100)
ev.pl.member_embeddings(adata, color="cell_type", show=True)""",
    ),
    (
        "md",
        """
## 4. Your own clusters: are their markers reproducible?

`marker_stability` takes any partition (here the annotated cell types) and ranks each
group's markers in every member.""",
    ),
    (
        "code",
        """
markers = ev.tl.marker_stability(
    model, adata, clusters=adata.obs["cell_type"].to_numpy(), n_top=10, share=0.75
)
markers""",
    ),
    (
        "md",
        """
**Reading.** Per group: how much the members' top-10 marker lists overlap (mean pairwise
Jaccard) and the markers at least 75% of members agree on. In the run committed here the
overlap ranges from 0.63 (CD4 T cells) to 1.0 (CD14+ monocytes), and every type keeps 8
to 10 consensus markers: the annotated types' markers are reproducible even where the
clusters are not. Report the consensus markers, not one run's list.

## What to take away

- Trust clusters whose stability is at least 0.6; merge or re-resolve the others
  (`resolution=`).
- Report the markers the members agree on.
- Do not build on single-cell neighbourhoods where their stability is low.
- From the command line: `ensemblevi run` writes the section "Do the clusters hold up?"
  and `tables/cluster_stability.csv` (`--resolution` sets Leiden's resolution).""",
    ),
]
