"""Label transfer: scvi-tools' SCANVI against EnsembleSCANVI, on held-out labels and an
unseen type.

Two arms, each on one data set and seed, every model trained the same way (scVI part
``--epochs`` epochs, then the scANVI fine-tuning ``--scanvi-epochs``; 1,200 HVGs):

* ``seen``: 20% of the cells (stratified) have their labels hidden; accuracy, NLL, Brier,
  ECE and classwise ECE (15 bins) on them.
* ``unseen``: one type (``--unseen``, default B cells) is removed from the reference; the
  query is the removed cells plus 20% of the other cells, also kept out of the reference,
  predicted directly by the reference model (no batch effect: the encoder does not take
  the batch). AUROC of each score for the unseen type against the seen query cells, and
  the unknown rule at 5% (threshold on the reference's held-out labelled cells): its TPR
  on the unseen type and FPR on the seen query cells.

Run one arm and seed per call, then summarise::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_label_transfer.py --arm seen \
        --data ../shared/data/pbmc3k.h5ad --seed 0 --out bench_results/labels_pbmc_s0.json
    PYTHONPATH=src .venv/bin/python benchmarks/bench_label_transfer.py \
        --summarise bench_results/labels_*.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

UNLABELED = "Unknown"
LABELS = "bench_labels"


def _split(adata, seed: int, frac: float = 0.2) -> np.ndarray:
    """Stratified held-out mask: ``frac`` of each type (at least one cell of each)."""
    rng = np.random.default_rng(seed)
    hold = np.zeros(adata.n_obs, dtype=bool)
    types = adata.obs["cell_type"].astype(str).to_numpy()
    for t in np.unique(types):
        idx = np.flatnonzero(types == t)
        hold[rng.choice(idx, max(1, round(frac * len(idx))), replace=False)] = True
    return hold


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def _train_scanvi(adata, seed: int, epochs: int, scanvi_epochs: int):
    import scvi

    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(adata, layer="counts")
    vae = scvi.model.SCVI(adata)
    t = time.perf_counter()
    vae.train(max_epochs=epochs, enable_progress_bar=False)
    model = scvi.model.SCANVI.from_scvi_model(vae, UNLABELED, labels_key=LABELS)
    model.train(max_epochs=scanvi_epochs, enable_progress_bar=False)
    return model, time.perf_counter() - t


def _train_ensemble(adata, kind: str, seed: int, epochs: int, scanvi_epochs: int):
    import ensemblevi as ev

    ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts")
    vae = ev.model.EnsembleSCVI(adata, n_members=4, ensemble=kind, seed=seed)
    t = time.perf_counter()
    vae.train(max_epochs=epochs, seed=seed, enable_progress_bar=False)
    model = ev.model.EnsembleSCANVI.from_ensemble_scvi(vae, UNLABELED, labels_key=LABELS)
    model.train(max_epochs=scanvi_epochs, seed=seed, enable_progress_bar=False)
    return model, time.perf_counter() - t


def _member_probs(method: str, model, adata, indices=None) -> np.ndarray:
    """(K, cells, types) for an ensemble; (1, cells, types) for scANVI."""
    if method == "scanvi":
        return model.predict(adata, indices=indices, soft=True).to_numpy()[None]
    return model.predict_members(adata, indices=indices)


def _types(method: str, model) -> list[str]:
    if method == "scanvi":
        return [str(c) for c in model._label_mapping[: model.n_labels]]
    return model.cell_types


def _held_out_labelled(model) -> np.ndarray:
    return np.intersect1d(np.asarray(model.validation_indices), model._labeled_indices)


def run(args) -> dict:
    import pandas as pd

    import ensemblevi as ev
    from ensemblevi.metrics import fit_temperature, label_calibration_metrics
    from ensemblevi.metrics._labels import apply_temperature, label_uncertainty_parts
    from ensemblevi.tl._thresholds import conformal_threshold

    warnings.simplefilter("ignore")
    full = ev.data.read(args.data)
    ev.data.preprocess(full, n_top_genes=1200)
    full.obs["cell_type"] = full.obs["cell_type"].astype(str)
    hold = _split(full, args.seed)
    if args.arm == "seen":
        ref = full.copy()
        query = None
    else:
        unseen = full.obs["cell_type"].to_numpy() == args.unseen
        if not unseen.any():
            raise SystemExit(f"No cell of type {args.unseen!r} in {args.data}.")
        ref = full[~unseen & ~hold].copy()
        query = full[unseen | hold].copy()
        query.obs[LABELS] = UNLABELED
        is_unseen = query.obs["cell_type"].to_numpy() == args.unseen
        # the reference's own held-out labels: 20% of its cells
        hold = _split(ref, args.seed + 1000)
    labels = ref.obs["cell_type"].to_numpy().copy()
    labels[hold] = UNLABELED
    ref.obs[LABELS] = labels
    out = {
        "data": Path(args.data).stem,
        "arm": args.arm,
        "seed": args.seed,
        "epochs": args.epochs,
        "scanvi_epochs": args.scanvi_epochs,
        "methods": {},
    }
    for method in args.methods:
        adata = ref.copy()
        if method == "scanvi":
            model, secs = _train_scanvi(adata, args.seed, args.epochs, args.scanvi_epochs)
        else:
            model, secs = _train_ensemble(adata, method, args.seed, args.epochs, args.scanvi_epochs)
        types = _types(method, model)
        row: dict = {"train_s": secs}
        if args.arm == "seen":
            idx = np.flatnonzero(hold)
            probs = _member_probs(method, model, adata, idx).mean(0)
            y = pd.Categorical(adata.obs["cell_type"].to_numpy()[idx], categories=types).codes
            known = y >= 0  # a type too rare to keep a training label is not scored
            row.update(label_calibration_metrics(probs[known], y[known]))
            # temperature of the pooled probabilities, fitted on the validation split's
            # labelled cells (not the held-out ones scored here)
            cal = _held_out_labelled(model)
            p_cal = _member_probs(method, model, adata, cal).mean(0)
            y_cal = adata.obs[LABELS].to_numpy()[cal]
            t = fit_temperature(p_cal, pd.Categorical(y_cal, categories=types).codes)
            scaled = label_calibration_metrics(apply_temperature(probs[known], t), y[known])
            row.update(
                temperature=t,
                **{f"{k}_ts": scaled[k] for k in ("nll", "brier", "ece", "classwise_ece")},
            )
        else:
            q = query.copy()
            parts = label_uncertainty_parts(_member_probs(method, model, q))
            cal = label_uncertainty_parts(
                _member_probs(method, model, adata, _held_out_labelled(model))
            )
            scores = {
                "max_probability": lambda p: 1 - p["confidence"],
                "entropy": lambda p: p["entropy"],
            }
            if method != "scanvi":
                scores["mutual_information"] = lambda p: p["mutual_information"]
            for name, f in scores.items():
                s, s_cal = f(parts), f(cal)
                thr, _ = conformal_threshold(s_cal, 0.05)
                row[f"auroc_{name}"] = _auroc(s[is_unseen], s[~is_unseen])
                row[f"tpr_{name}"] = float((s[is_unseen] > thr).mean())
                row[f"fpr_{name}"] = float((s[~is_unseen] > thr).mean())
            if method != "scanvi":
                # the latent kNN novelty of the same model (tl.cell_novelty, its own 5% rule
                # calibrated on the validation split), inherited from EnsembleSCVI
                ev.tl.cell_novelty(model, q, alpha=0.05, seed=args.seed, progress=False)
                knn = q.obs["ensemblevi_novelty_knn"].to_numpy()
                flag = q.obs["ensemblevi_is_novel"].to_numpy().astype(bool)
                row["auroc_novelty_knn"] = _auroc(knn[is_unseen], knn[~is_unseen])
                row["tpr_novelty_knn"] = float(flag[is_unseen].mean())
                row["fpr_novelty_knn"] = float(flag[~is_unseen].mean())
            row.update(
                n_unseen=int(is_unseen.sum()),
                n_seen=int((~is_unseen).sum()),
                n_calibration=len(s_cal),
            )
        print(
            method,
            {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
            flush=True,
        )
        out["methods"][method] = row
        del model
    return out


def summarise(files: list[str]) -> str:
    """Markdown tables (mean and range over seeds) from the JSON results."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    lines = []
    for arm, cols in (
        (
            "seen",
            [
                "accuracy",
                "nll",
                "brier",
                "ece",
                "classwise_ece",
                "train_s",
                "temperature",
                "nll_ts",
                "ece_ts",
                "classwise_ece_ts",
            ],
        ),
        (
            "unseen",
            [
                "auroc_max_probability",
                "auroc_entropy",
                "auroc_mutual_information",
                "tpr_entropy",
                "fpr_entropy",
                "tpr_mutual_information",
                "fpr_mutual_information",
                "tpr_max_probability",
                "fpr_max_probability",
                "auroc_novelty_knn",
                "tpr_novelty_knn",
                "fpr_novelty_knn",
            ],
        ),
    ):
        for data in sorted({r["data"] for r in runs if r["arm"] == arm}):
            chosen = [r for r in runs if r["arm"] == arm and r["data"] == data]
            seeds = sorted(r["seed"] for r in chosen)
            lines += [
                f"**{data}, {arm} arm** (seeds {', '.join(map(str, seeds))}; mean, min-max)",
                "",
                "| method | " + " | ".join(cols) + " |",
                "| --- |" + " --- |" * len(cols),
            ]
            for method in ("scanvi", "deep", "batch", "hyperbatch", "mcdropout"):
                vals = [r["methods"][method] for r in chosen if method in r["methods"]]
                if not vals:
                    continue
                cells = []
                for c in cols:
                    v = np.array([x.get(c, np.nan) for x in vals], dtype=float)
                    if np.isnan(v).all():
                        cells.append("-")
                    elif len(v) == 1:
                        cells.append(f"{v[0]:.3f}" if c != "train_s" else f"{v[0]:.0f}")
                    else:
                        fmt = "{:.0f}" if c == "train_s" else "{:.3f}"
                        cells.append(
                            f"{fmt.format(np.nanmean(v))} ({fmt.format(np.nanmin(v))}-"
                            f"{fmt.format(np.nanmax(v))})"
                        )
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k.h5ad")
    parser.add_argument("--arm", choices=["seen", "unseen"], default="seen")
    parser.add_argument("--unseen", default="B cells")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--scanvi-epochs", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=["scanvi", "deep", "batch"])
    parser.add_argument("--out")
    parser.add_argument("--summarise", nargs="+")
    args = parser.parse_args()
    if args.summarise:
        print(summarise(args.summarise))
        return
    result = run(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    from ensemblevi._warnings import quiet_third_party

    with quiet_third_party(loggers=True):
        main()
