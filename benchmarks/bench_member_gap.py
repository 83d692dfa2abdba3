"""The PBMC member gap: is a deep-ensemble member as good as scvi.model.SCVI on PBMC 3k?

docs/benchmarks.md once reported each deep member ~8 nats per cell worse than one scVI on
PBMC 3k held-out log-likelihood. The cause was the scVI number, not the members:
scvi-tools 1.4.2's ``VAEMixin.get_marginal_ll(return_mean=True)`` returns the *mean of the
minibatch means* (``numpy.mean`` over the per-minibatch values), so the last, short
minibatch (15 of 527 held-out cells here) weighs as much as a full one of 128; PBMC cells
differ by tens of nats, so that figure moves by several nats with which cells come last.
This script measures it: per seed (0, 1, 2), with the same 80/20 split, architecture
(128 hidden, 10 latent, ZINB) and epochs,

* ``scvi.model.SCVI``: held-out log p(x) (100 importance samples) as scvi-tools' mean of
  minibatch means and as the per-cell mean (``return_mean=False``, then averaged);
* the same trained SCVI's weights evaluated through EnsembleSCVI (``from_scvi``): the
  evaluation paths must agree;
* ``EnsembleSCVI(ensemble="single")`` and the mean member of ``EnsembleSCVI(deep, K=4)``,
  trained with the same seed.

Run: ``.venv/bin/python benchmarks/bench_member_gap.py`` (about 10 minutes here).
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ARCH = {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "gene_likelihood": "zinb"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-mc", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("scvi").setLevel(logging.ERROR)
    import anndata as ad
    import scvi
    import torch

    from ensemblevi.data import preprocess
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.model._ensemble_scvi import _seeded_globally

    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(SHARED / "pbmc3k.h5ad")
    preprocess(adata, n_top_genes=1200)
    order = np.random.default_rng(0).permutation(adata.n_obs)
    n_train = int(0.8 * adata.n_obs)
    train, test = adata[order[:n_train]].copy(), adata[order[n_train:]].copy()
    print(
        f"PBMC 3k: {train.n_obs} train / {test.n_obs} held-out cells, {adata.n_vars} genes, "
        f"{args.epochs} epochs, {args.n_mc} importance samples"
    )
    rows = []
    for seed in range(args.seeds):
        scvi.model.SCVI.setup_anndata(train, layer="counts")
        with _seeded_globally(seed):
            single_scvi = scvi.model.SCVI(train, **ARCH)
            single_scvi.train(max_epochs=args.epochs, enable_progress_bar=False)
        scvi.model.SCVI.setup_anndata(test, layer="counts")
        torch.manual_seed(0)
        batch_mean = float(single_scvi.get_marginal_ll(test, n_mc_samples=args.n_mc))
        torch.manual_seed(0)
        per_cell = single_scvi.get_marginal_ll(test, n_mc_samples=args.n_mc, return_mean=False)
        EnsembleSCVI.setup_anndata(train, layer="counts")
        EnsembleSCVI.setup_anndata(test, layer="counts")
        via_ours = EnsembleSCVI.from_scvi([single_scvi], adata=train)
        ours_path = via_ours.get_marginal_ll(test, n_mc_samples=args.n_mc, seed=0)
        single = EnsembleSCVI(train, ensemble="single", seed=seed, **ARCH)
        single.train(max_epochs=args.epochs, seed=seed, enable_progress_bar=False)
        deep = EnsembleSCVI(train, ensemble="deep", n_members=4, seed=seed, **ARCH)
        deep.train(max_epochs=args.epochs, seed=seed, enable_progress_bar=False)
        table = deep.get_marginal_ll(test, n_mc_samples=args.n_mc, return_table=True, seed=0)
        members = table.drop("mixture")
        rows.append(
            {
                "seed": seed,
                "SCVI (scvi-tools' mean of minibatch means)": batch_mean,
                "SCVI (per-cell mean)": float(per_cell.mean()),
                "SCVI weights via EnsembleSCVI": ours_path,
                "EnsembleSCVI single": single.get_marginal_ll(test, n_mc_samples=args.n_mc, seed=0),
                "deep K=4 mean member": float(members.mean()),
                "deep K=4 mixture": float(table["mixture"]),
            }
        )
        print(rows[-1], flush=True)
    frame = pd.DataFrame(rows).set_index("seed")
    ref = frame["SCVI (per-cell mean)"]
    print(
        "\n| held-out log p(x), nats per cell | mean | sd over seeds | minus SCVI per-cell "
        "(mean, min..max) |\n| --- | --- | --- | --- |"
    )
    for col in frame.columns:
        diff = frame[col] - ref
        print(
            f"| {col} | {frame[col].mean():.2f} | {frame[col].std():.2f} | "
            f"{diff.mean():+.2f} ({diff.min():+.2f}..{diff.max():+.2f}) |"
        )


if __name__ == "__main__":
    main()
