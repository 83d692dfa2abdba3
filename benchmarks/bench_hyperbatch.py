"""Hyper-BatchEnsemble in scVI against BatchEnsemble, the deep ensemble and one network.

On PBMC 3k (1,200 HVGs) and the ``hard`` preset, side by side in one run with the same
architecture (128 hidden, 10 latent, ZINB), epochs and seed:

1. 80/20 split of cells; ``single``, ``batch`` K=4, ``hyperbatch`` K=4 and ``deep`` K=4
   train on the 80% (HBE tunes on a further 10% validation split of it, as every kind
   early-stops/validates on); reported: held-out log p(x) of the member mixture and the
   mean member (100 importance samples, nats per cell), member diversity (mean pairwise
   |log1p(rho_k) - log1p(rho_l)|, per 1e4 counts) and its ratio to the deep ensemble's,
   training time and its ratio to BatchEnsemble's.
2. Out of distribution: each ensemble trains without one cell type (B cells on PBMC, the
   smallest type on ``hard``); AUROC of ``tl.cell_novelty``'s ``novelty_cv`` for those
   cells against held-out cells of the seen types.

Targets (issue 8): HBE better than BE on held-out NLL and at least half way from BE to
the deep ensemble; HBE's OOD AUROC at least BE's; HBE training time <= 2x BE's. Also
writes ``docs/figures/hbe_trajectories_<data>.png`` (the tuned intervals over training).

Run: ``.venv/bin/python benchmarks/bench_hyperbatch.py`` (about 35 minutes here); more
seeds of the quality part: ``--seed 1 --data pbmc3k --no-ood`` (about 15 minutes each).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ensemblevi.pl._utils import save_figure

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ARCH = {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "gene_likelihood": "zinb"}
# (label, kind, K, extra module arguments): the default HBE ties the likelihood heads'
# second kernel (W' = W); the "full heads" row gives them their own, as in the reference
KINDS = [
    ("single K=1", "single", 1, {}),
    ("batch K=4", "batch", 4, {}),
    ("hyperbatch K=4", "hyperbatch", 4, {}),
    ("hyperbatch K=4, full heads", "hyperbatch", 4, {"hyper_heads": "full"}),
    ("deep K=4", "deep", 4, {}),
]
OOD_KINDS = ("batch K=4", "hyperbatch K=4", "deep K=4")


def datasets(epochs_pbmc: int, epochs_hard: int):
    import anndata as ad

    import ensemblevi as ev
    from ensemblevi.data import preprocess

    pbmc = ad.read_h5ad(SHARED / "pbmc3k.h5ad")
    pbmc.obs["cell_type"] = pbmc.obs["cell_type"].astype(str)
    preprocess(pbmc, n_top_genes=1200)
    yield "pbmc3k", pbmc, None, "B cells", epochs_pbmc
    hard = ev.data.synthetic("hard", seed=0)
    hard.obs["cell_type"] = hard.obs["cell_type"].astype(str)
    smallest = hard.obs["cell_type"].value_counts().index[-1]
    yield "hard", hard, "batch", smallest, epochs_hard


def diversity(members: np.ndarray) -> float:
    logs = np.log1p(members)
    pairs = itertools.combinations(range(len(logs)), 2)
    return float(np.mean([np.abs(logs[i] - logs[j]).mean() for i, j in pairs]))


def quality(name, adata, batch_key, epochs, seed):
    import torch

    from ensemblevi.model import EnsembleSCVI

    order = np.random.default_rng(seed).permutation(adata.n_obs)
    n_train = int(0.8 * adata.n_obs)
    train, test = adata[order[:n_train]].copy(), adata[order[n_train:]].copy()
    EnsembleSCVI.setup_anndata(train, layer="counts", batch_key=batch_key)
    EnsembleSCVI.setup_anndata(test, layer="counts", batch_key=batch_key)
    rows, hbe = [], None
    for label, kind, k, extra in KINDS:
        model = EnsembleSCVI(train, n_members=k, ensemble=kind, seed=seed, **ARCH, **extra)
        t = time.perf_counter()
        model.train(max_epochs=epochs, seed=seed, enable_progress_bar=False)
        secs = time.perf_counter() - t
        ll = model.get_marginal_ll(test, n_mc_samples=100, return_table=True, seed=0)
        torch.manual_seed(0)
        members = model.get_normalized_expression(
            test, library_size=1e4, n_samples=10, return_members=True
        )
        rows.append(
            {
                "model": label,
                "mixture log p(x)": float(ll["mixture"]),
                "mean member log p(x)": float(ll.drop("mixture").mean()),
                "diversity": diversity(members) if k > 1 else np.nan,
                "train (s)": secs,
            }
        )
        print(f"  {name}: {rows[-1]}", flush=True)
        if label == "hyperbatch K=4":
            hbe = model
    frame = pd.DataFrame(rows).set_index("model")
    frame["diversity vs deep"] = frame["diversity"] / frame.loc["deep K=4", "diversity"]
    frame["time vs BE"] = frame["train (s)"] / frame.loc["batch K=4", "train (s)"]
    return frame, hbe, train.n_obs, test.n_obs


def ood(name, adata, batch_key, unseen, epochs, seed):
    from sklearn.metrics import roc_auc_score

    import ensemblevi as ev
    from ensemblevi.model import EnsembleSCVI

    seen = adata[adata.obs["cell_type"] != unseen].copy()
    full = adata.copy()
    EnsembleSCVI.setup_anndata(seen, layer="counts", batch_key=batch_key)
    EnsembleSCVI.setup_anndata(full, layer="counts", batch_key=batch_key)
    is_new = (full.obs["cell_type"] == unseen).to_numpy()
    rows = []
    for label, kind, k, extra in KINDS:
        if label not in OOD_KINDS:
            continue
        model = EnsembleSCVI(seen, n_members=k, ensemble=kind, seed=seed, **ARCH, **extra)
        model.train(max_epochs=epochs, seed=seed, enable_progress_bar=False)
        scores = ev.tl.cell_novelty(model, full, progress=False)
        held = full.obs_names.isin(seen.obs_names[model.validation_indices])
        sel = is_new | held
        rows.append(
            {
                "model": label,
                "AUROC novelty_cv": roc_auc_score(is_new[sel], scores["novelty_cv"][sel]),
                "AUROC novelty_llgap": roc_auc_score(is_new[sel], scores["novelty_llgap"][sel]),
            }
        )
        print(f"  {name} OOD: {rows[-1]}", flush=True)
    return pd.DataFrame(rows).set_index("model"), int(is_new.sum()), int(held.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs-pbmc", type=int, default=150)
    parser.add_argument("--epochs-hard", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument(
        "--data",
        choices=["pbmc3k", "hard"],
        nargs="*",
        default=None,
        help="data sets to run (default: both)",
    )
    parser.add_argument("--no-ood", action="store_true", help="skip the OOD part")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args()
    if args.fast:
        args.epochs_pbmc, args.epochs_hard = 5, 5
    warnings.filterwarnings("ignore")
    for logger in ("scvi", "lightning", "lightning.pytorch"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    import torch

    import ensemblevi as ev

    torch.set_num_threads(args.threads)
    for name, adata, batch_key, unseen, epochs in datasets(args.epochs_pbmc, args.epochs_hard):
        if args.data and name not in args.data:
            continue
        frame, hbe, n_train, n_test = quality(name, adata, batch_key, epochs, args.seed)
        print(
            f"\n### {name}: {n_train:,} train / {n_test:,} held-out cells, "
            f"{adata.n_vars:,} genes, {epochs} epochs, seed {args.seed}\n"
        )
        print(frame.round(3).to_csv(sep="|"))
        be, hb, deep = (
            frame.loc[m, "mixture log p(x)"] for m in ("batch K=4", "hyperbatch K=4", "deep K=4")
        )
        share = (hb - be) / (deep - be) if deep != be else float("nan")
        print(f"HBE - BE: {hb - be:+.2f} nats per cell; share of the BE->deep gap: {share:.2f}")
        table = hbe.get_hyperparameters()
        start = hbe.hyper_trajectory_.query("step == 0").set_index(["member", "hyperparameter"])
        table = table.set_index(["member", "hyperparameter"])
        table["initial low"], table["initial high"] = start["low"], start["high"]
        print("\nHBE tuned intervals (initial -> final):\n")
        print(table.round(4).to_csv(sep="|"))
        fig = ev.pl.hyperparameter_trajectories(hbe, return_fig=True)
        suffix = "" if args.seed == 0 else f"_seed{args.seed}"
        save_figure(fig, args.figures / f"hbe_trajectories_{name}{suffix}")
        if args.no_ood:
            continue
        scores, n_new, n_held = ood(name, adata, batch_key, unseen, epochs, args.seed)
        print(f"\nOOD, {unseen!r} left out ({n_new} cells) vs {n_held} held-out seen cells:\n")
        print(scores.round(3).to_csv(sep="|"), flush=True)


if __name__ == "__main__":
    main()
