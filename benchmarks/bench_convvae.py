"""The convolutional VAE baseline on digits: does Hyper-BatchEnsemble help a vanilla VAE?

scikit-learn's 8 x 8 digits, binarised at 0.5. Every model trains on 80% of the images of
digits 0-4 (HBE tunes on 10% of those as validation; every kind holds the same 10% out);
scored on the other 20% of 0-4 (held-out) and on all of 5-9 (out of distribution).
Per kind (single, deep / BE / HBE / MC dropout with K = 4) and seed (0, 1, 2): held-out
NLL (importance-weighted bound, 100 samples, nats per image, of the member mixture),
reconstruction error (mean squared error of the mean prediction), member diversity
(mean pairwise |p_k - p_l| of predicted pixel means), OOD AUROC of the epistemic score
(between-member variance of predicted pixel means) for 5-9 against held-out 0-4, and the
training time; mean and spread (min..max) over seeds. All kinds run side by side in one
process. Writes ``docs/figures/convvae_digits.png``.

Run: ``.venv/bin/python benchmarks/bench_convvae.py`` (about 10 minutes here).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# (label, kind, K, module arguments, train arguments). Two HBE ablations: the reference's
# initial intervals (mid-range L2 = 14.5, dropout 0.1 on a network that has none) in place
# of the default start at the untuned baseline, and a 10x larger tuner learning rate.
REFERENCE_INIT = {
    "dropout": {"init": 0.1},
    "kl_weight": {},
    **{f"l2_{g}": {"init": 14.5} for g in ("encoder", "latent", "decoder", "heads")},
}
KINDS = [
    ("single K=1", "single", 1, {}, {}),
    ("deep K=4", "deep", 4, {}, {}),
    ("batch K=4", "batch", 4, {}, {}),
    ("hyperbatch K=4", "hyperbatch", 4, {}, {}),
    ("hyperbatch K=4, reference init", "hyperbatch", 4, {"hyperparameters": REFERENCE_INIT}, {}),
    ("hyperbatch K=4, tune_lr 1e-2", "hyperbatch", 4, {}, {"tune_lr": 1e-2}),
    ("mcdropout K=4", "mcdropout", 4, {}, {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "convvae_digits")
    args = parser.parse_args()
    import torch
    from sklearn.metrics import roc_auc_score

    import ensemblevi as ev

    torch.set_num_threads(args.threads)
    images, labels = ev.data.digits()
    seen = np.flatnonzero(labels < 5)
    order = np.random.default_rng(0).permutation(seen)
    n_train = int(0.8 * len(order))
    train, held = images[order[:n_train]], images[order[n_train:]]
    unseen = images[labels >= 5]
    print(
        f"digits: {len(train)} train (0-4), {len(held)} held-out (0-4), {len(unseen)} OOD "
        f"(5-9); {args.epochs} epochs"
    )
    rows = []
    for seed in range(args.seeds):
        for label, kind, k, extra, train_args in KINDS:
            vae = ev.model.ConvVAE(train, ensemble=kind, n_members=k, seed=seed, **extra)
            vae.train(max_epochs=args.epochs, seed=seed, progress=False, **train_args)
            score_in = vae.epistemic_score(held)
            score_out = vae.epistemic_score(unseen)
            auroc = (
                roc_auc_score(
                    np.r_[np.zeros(len(held)), np.ones(len(unseen))], np.r_[score_in, score_out]
                )
                if k > 1
                else np.nan
            )
            rows.append(
                {
                    "kind": label,
                    "seed": seed,
                    "held-out NLL": float(-vae.log_likelihood(held, n_samples=100).mean()),
                    "recon. MSE": float(vae.reconstruction_error(held).mean()),
                    "diversity": vae.diversity(held) if k > 1 else np.nan,
                    "OOD AUROC": auroc,
                    "train (s)": vae.train_time_,
                }
            )
            print(rows[-1], flush=True)
            if kind == "hyperbatch":
                table = vae.get_hyperparameters()
                first = vae.hyper_trajectory_.query("step == 0")
                table["initial mean"] = (first["high"] - first["low"]).to_numpy() / np.log(
                    first["high"] / first["low"]
                ).to_numpy()
                print(table.round(4).to_string(index=False), flush=True)
    frame = pd.DataFrame(rows)
    metrics = ["held-out NLL", "recon. MSE", "diversity", "OOD AUROC", "train (s)"]
    print("\n| model | " + " | ".join(metrics) + " |\n|" + " --- |" * (len(metrics) + 1))
    for kind, sub in frame.groupby("kind", sort=False):
        cells = []
        for m in metrics:
            v = sub[m].to_numpy()
            cells.append(
                "" if np.isnan(v).all() else f"{v.mean():.3f} ({v.min():.3f}..{v.max():.3f})"
            )
        print(f"| {kind} | " + " | ".join(cells) + " |")
    figure(frame, args.figure)


def figure(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ensemblevi.pl._utils import save_figure

    kinds = list(dict.fromkeys(frame["kind"]))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, (metric, label) in zip(
        axes,
        [
            ("held-out NLL", "held-out NLL (nats / image, lower is better)"),
            ("OOD AUROC", "OOD AUROC, digits 5-9 vs held-out 0-4"),
            ("train (s)", "training time (s)"),
        ],
        strict=True,
    ):
        for i, kind in enumerate(kinds):
            v = frame.loc[frame["kind"] == kind, metric].to_numpy()
            if np.isnan(v).all():
                continue
            ax.scatter(np.full(len(v), i), v, s=14, color="C0", alpha=0.7)
            ax.hlines(v.mean(), i - 0.25, i + 0.25, color="k", lw=1.2)
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
        ax.set_title(label, fontsize=9)
    fig.suptitle("ConvVAE on digits: each dot a seed, bar the mean", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
