"""Which per-cell novelty score decides? PBMC 3k without B cells, scores compared side by side.

Uses the models of ``bench_group_novelty.py`` (same split: trained on 80% of the seen cells,
query = the other 20% of seen cells + every B cell; pass the same ``--models`` folder, or
they are trained here). For each candidate score it reports

- *ranking*: AUROC of B against the query's seen cells, and the TPR at 1% / 5% FPR with the
  threshold at the seen query cells' own 99th / 95th percentile (an oracle operating point);
- *the rule*: threshold at the ``1 - alpha`` quantile of the model's validation cells
  (what ``cell_novelty`` does), its FPR on the query's seen cells and TPR on B cells;
- *honesty for training cells*: AUROC of training against validation cells of the model's
  own AnnData (0.5: the score does not know which cells the model fit) and the share of
  training cells above the validation-calibrated threshold;
- *library size*: Spearman correlation of the score with log library size on seen cells.

Candidates: ``novelty_cv`` and ``novelty_llgap`` (the package's), ``log_var`` (between-member
variance of log1p(expression per 1e4), averaged over genes), ``latent_knn`` (per member, the
mean distance to the 15 nearest *validation* cells in that member's latent space, over that
member's median for validation cells (leave-one-out), averaged over members: members' latent
spaces are never compared with each other), their library-size residuals (a linear fit on
validation cells) and rank combinations.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_cell_novelty_scores.py --pbmc
../shared/data/pbmc3k.h5ad --models MODELS --kinds deep batch``
"""

from __future__ import annotations

import numpy as np
from bench_group_novelty import main_loop, split_and_model

ALPHA = (0.01, 0.05)


def _knn_mean(ref: np.ndarray, x: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    from ensemblevi.tl._novelty_rule import knn_distance

    # exclude_self: x is ref, each row left out of its own neighbours
    return knn_distance(ref, x, k, np.arange(len(x)) if exclude_self else None)


def raw_scores(model, adata, val_pos: np.ndarray, own: bool, seed: int) -> dict[str, np.ndarray]:
    """Every candidate score of ``adata``'s cells (``own``: it is the model's AnnData)."""
    import ensemblevi as ev

    table = ev.tl.cell_novelty(model, adata, seed=seed, progress=False)
    out = {
        "novelty_cv": table["novelty_cv"].to_numpy(),
        "novelty_llgap": table["novelty_llgap"].to_numpy(),
    }
    rho = model.get_normalized_expression(
        adata, return_members=True, return_numpy=True, library_size=1e4, seed=seed
    )
    out["log_var"] = np.log1p(np.asarray(rho)).var(0).mean(1)
    knn, knn_train = [], []
    train_pos = np.sort(np.asarray(model.train_indices))
    for k in range(model.n_members):
        z_all = model.get_latent_representation(model.adata, member=k)
        z_ref = z_all[val_pos]
        z = model.get_latent_representation(adata, member=k)
        d_ref = _knn_mean(z_ref, z_ref, 15, exclude_self=True)
        d = _knn_mean(z_ref, z, 15, exclude_self=False)
        if own:  # validation cells: leave themselves out, as for the reference median
            d[val_pos] = d_ref
        knn.append(d / np.median(d_ref))
        # distance to the training cells (training cells themselves: leave-one-out)
        d_tr = _knn_mean(z_all[train_pos], z, 15, exclude_self=False)
        if own:
            d_tr[train_pos] = _knn_mean(z_all[train_pos], z_all[train_pos], 15, True)
        knn_train.append(
            d_tr
            / np.median(d_tr[val_pos] if own else _knn_mean(z_all[train_pos], z_ref, 15, False))
        )
    out["latent_knn"] = np.mean(knn, 0)
    out["latent_knn_train"] = np.mean(knn_train, 0)
    out["latent_knn_member0"] = knn[0]
    return out


def _residual(score: np.ndarray, loglib: np.ndarray, fit_score, fit_lib) -> np.ndarray:
    slope, intercept = np.polyfit(fit_lib, fit_score, 1)
    return score - (slope * loglib + intercept)


def evaluate(variant: str, args) -> dict:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    model, seen, query, _ = split_and_model(
        args.pbmc, variant, args.seed, args.epochs, args.lr, args.models
    )
    val_pos = np.sort(np.asarray(model.validation_indices))
    train_pos = np.sort(np.asarray(model.train_indices))
    own = raw_scores(model, seen, val_pos, True, args.seed)
    qry = raw_scores(model, query, val_pos, False, args.seed)
    lib_own = np.log(np.asarray(seen.layers["counts"].sum(1)).ravel())
    lib_q = np.log(np.asarray(query.layers["counts"].sum(1)).ravel())
    for name in list(own):
        own[f"{name}|lib"] = _residual(own[name], lib_own, own[name][val_pos], lib_own[val_pos])
        qry[f"{name}|lib"] = _residual(qry[name], lib_q, own[name][val_pos], lib_own[val_pos])

    def combined(scores, names):  # mean rank among the validation cells' scores
        ranks = [np.searchsorted(np.sort(own[n][val_pos]), scores[n]) for n in names]
        return np.mean(ranks, 0)

    for names in (
        ("novelty_cv", "latent_knn"),
        ("novelty_cv", "novelty_llgap", "latent_knn"),
        ("log_var", "latent_knn"),
    ):
        label = "+".join(names)
        own[label], qry[label] = combined(own, names), combined(qry, names)
    is_b = (query.obs["cell_type"] == "B cells").to_numpy()
    rows = {}
    for name in own:
        s, v = qry[name], own[name][val_pos]
        neg, pos = s[~is_b], s[is_b]
        row = {
            "auroc": float(roc_auc_score(is_b, s)),
            "train_vs_val_auroc": float(
                roc_auc_score(
                    np.r_[np.ones(len(train_pos)), np.zeros(len(val_pos))],
                    np.r_[own[name][train_pos], v],
                )
            ),
            "lib_spearman": float(spearmanr(s[~is_b], lib_q[~is_b])[0]),
        }
        for a in ALPHA:
            row[f"tpr_oracle_{a:g}"] = float(np.mean(pos > np.quantile(neg, 1 - a)))
            t = np.quantile(v, 1 - a)
            row[f"rule_fpr_{a:g}"] = float(np.mean(neg > t))
            row[f"rule_tpr_{a:g}"] = float(np.mean(pos > t))
            row[f"rule_train_flagged_{a:g}"] = float(np.mean(own[name][train_pos] > t))
        rows[name] = row
    return {"kind": variant, "scores": rows}


def markdown(record: dict) -> str:
    out = [
        f"#### {record['kind']} K=4",
        "",
        "| score | AUROC B | TPR@1% | TPR@5% | rule FPR/TPR at 1% | rule FPR/TPR at 5% "
        "| train-vs-val AUROC | training cells over the 1% rule | Spearman with log lib |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in record["scores"].items():
        out.append(
            f"| `{name}` | {r['auroc']:.3f} | {r['tpr_oracle_0.01']:.2f} | "
            f"{r['tpr_oracle_0.05']:.2f} | {r['rule_fpr_0.01']:.3f} / {r['rule_tpr_0.01']:.2f} | "
            f"{r['rule_fpr_0.05']:.3f} / {r['rule_tpr_0.05']:.2f} | "
            f"{r['train_vs_val_auroc']:.3f} | {r['rule_train_flagged_0.01']:.3f} | "
            f"{r['lib_spearman']:.2f} |"
        )
    return "\n".join([*out, ""])


def main() -> None:
    main_loop(__doc__, "bench_results/cell_novelty_scores.json", evaluate, markdown)


if __name__ == "__main__":
    main()
