"""Calibration of count predictive distributions on held-out cells: one VAE vs ensembles.

For each data set, the models train on 80% of the cells (same seed, architecture and
epochs); on the other 20%, ``ensemblevi.metrics.predictive_calibration`` scores every count
with the model's posterior predictive (equal mixture over members x 10 latent draws):
randomised-PIT uniformity (half-l1 distance of the 10-bin histogram from flat; PIT variance,
1/12 when the spread is right) and randomised coverage of central 50/80/90/95% intervals,
for the ensemble and (mean) for its members. Writes ``docs/figures/calibration_<data>.png``.

Run: ``.venv/bin/python benchmarks/bench_calibration.py`` (not run yet; no results in
``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ARCH = {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "gene_likelihood": "zinb"}
KINDS = [("single K=1", "single", 1), ("deep K=4", "deep", 4), ("batch K=4", "batch", 4),
         ("hyperbatch K=4", "hyperbatch", 4)]  # fmt: skip


def datasets(epochs):
    import anndata as ad

    import ensemblevi as ev
    from ensemblevi.data import preprocess

    yield "lopez2020", ev.data.synthetic("lopez2020", seed=0), "batch", epochs
    path = SHARED / "pbmc3k.h5ad"
    if path.exists():
        pbmc = ad.read_h5ad(path)
        preprocess(pbmc, n_top_genes=1200)
        yield "pbmc3k", pbmc, None, epochs
    else:
        print(f"skipping PBMC 3k: {path} not found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for logger in ("scvi", "lightning", "lightning.pytorch"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    for name, adata, batch_key, epochs in datasets(args.epochs):
        order = np.random.default_rng(args.seed).permutation(adata.n_obs)
        n_train = int(0.8 * adata.n_obs)
        train, test = adata[order[:n_train]].copy(), adata[order[n_train:]].copy()
        EnsembleSCVI.setup_anndata(train, layer="counts", batch_key=batch_key)
        EnsembleSCVI.setup_anndata(test, layer="counts", batch_key=batch_key)
        results, rows = {}, []
        for label, kind, k in KINDS:
            model = EnsembleSCVI(train, n_members=k, ensemble=kind, seed=args.seed, **ARCH)
            model.train(max_epochs=epochs, seed=args.seed, enable_progress_bar=False)
            res = ev.metrics.predictive_calibration(model, test, n_samples=10, progress=False)
            results[label] = res
            cov, uni = res["coverage"], res["uniformity"]
            row = {"model": label, "PIT l1": uni.loc["hist_l1", "ensemble"],
                   "PIT var x12": 12 * uni.loc["var", "ensemble"],
                   "member PIT l1": uni.loc["hist_l1", "members (mean)"]}  # fmt: skip
            for c in cov.index:
                row[f"cov {c:.0%}"] = cov.loc[c, "randomized"]
            row["member cov 90%"] = cov.loc[0.9, "member randomized"]
            rows.append(row)
            print(f"  {name}: {row}", flush=True)
        print(f"\n### {name}: {train.n_obs:,} train / {test.n_obs:,} held-out cells, "
              f"{adata.n_vars:,} genes, {epochs} epochs, seed {args.seed}\n")  # fmt: skip
        cols = list(rows[0])
        print("| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
        for r in rows:
            print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                    for v in r.values()) + " |")  # fmt: skip
        fig = ev.pl.calibration(results)
        fig.suptitle(f"{name}: held-out counts", fontsize=10)
        ev.pl.save_figure(fig, args.figures / f"calibration_{name}")


if __name__ == "__main__":
    main()
