"""Novelty of cells arriving through ``load_query_data``: PBMC 3k, the B cells in a query batch.

The split of ``bench_group_novelty.py`` (a K = 4 model trained on 80% of PBMC 3k's seen
cells, 1,200 HVGs, 150 epochs, lr 1e-3; the query the other 20% of the seen cells and every
B cell), but the reference is set up with a batch column (one batch, ``"reference"``) and
the query is mapped as a new batch ``"query"`` with scArches
(``EnsembleSCVI.load_query_data``, default freezing), trained ``--query-epochs`` epochs,
then scored with ``reference_model=`` (calibrated on the reference's validation cells).

Per cell: AUROC of each score for B against the query's seen cells, TPR at 1% / 5% FPR
(oracle thresholds), the rule's FPR / TPR at alpha 1% and 5%; per group: ``group_novelty``
(its default ``reference="matched"``). The same numbers with the query scored by the
reference model itself (no mapping: same batch) are the comparison.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_query_novelty.py --pbmc
../shared/data/pbmc3k.h5ad --kinds deep batch --seed S --out bench_results/query_s<S>.json``
for S = 0, 1, 2, then ``... bench_query_novelty.py --summarise bench_results/query_s*.json``
for the table over seeds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_group_novelty import main_loop, split_and_model

SCORES = ("novelty_knn", "novelty_cv", "novelty_llgap")


def cell_metrics(ev, model, query, is_b: np.ndarray, seed: int, reference_model) -> dict:
    """AUROC, oracle TPR and the rule's FPR / TPR of the query's cells."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for alpha in (0.05, 0.01):  # 0.01 last: its scores stay in obs
        flags = ev.tl.cell_novelty(
            model, query, alpha=alpha, seed=seed, progress=False, reference_model=reference_model
        )
        flagged = flags["is_novel"].to_numpy()
        out[f"rule_fpr_{alpha:g}"] = float(flagged[~is_b].mean())
        out[f"rule_tpr_{alpha:g}"] = float(flagged[is_b].mean())
    for name in SCORES:
        score = flags[name].to_numpy()
        out[f"auroc_{name}"] = float(roc_auc_score(is_b, score))
    score = flags["novelty_knn"].to_numpy()
    for fpr in (0.01, 0.05):
        out[f"tpr_at_{fpr:g}_fpr"] = float(
            np.mean(score[is_b] > np.quantile(score[~is_b], 1 - fpr))
        )
    info = query.uns["ensemblevi"]["cell_novelty"]
    cal = np.asarray(info["calibration_scores"]["novelty_knn"])
    out["median_query_seen"] = float(np.median(score[~is_b]))
    out["median_calibration"] = float(np.median(cal))
    return out


def run(variant: str, args) -> dict:
    import ensemblevi as ev

    seed = args.seed
    model, _, query, secs = split_and_model(
        args.pbmc, variant, seed, args.epochs, args.lr, args.models, batch=True
    )
    is_b = (query.obs["cell_type"] == "B cells").to_numpy()
    record = {"kind": variant, "train_s": secs, "query_epochs": args.query_epochs}
    direct = query.copy()
    direct.obs["batch"] = "reference"
    ev.model.EnsembleSCVI.setup_anndata(direct, layer="counts", batch_key="batch")
    record["direct"] = cell_metrics(ev, model, direct, is_b, seed, None)
    record["direct_groups"] = (
        ev.tl.group_novelty(model, direct, groupby="cell_type", seed=seed, progress=False)
        .reset_index()
        .to_dict("list")
    )
    q = query.copy()
    q.obs["batch"] = "query"
    t = time.perf_counter()
    mapped = ev.model.EnsembleSCVI.load_query_data(q, model)
    mapped.train(max_epochs=args.query_epochs, seed=seed, enable_progress_bar=False)
    record["query_train_s"] = time.perf_counter() - t
    record["mapped"] = cell_metrics(ev, mapped, q, is_b, seed, model)
    record["mapped_groups"] = (
        ev.tl.group_novelty(
            mapped, q, groupby="cell_type", seed=seed, progress=False, reference_model=model
        )
        .reset_index()
        .to_dict("list")
    )
    return record


def markdown(r: dict) -> str:
    import pandas as pd

    out = [
        f"#### {r['kind']} K=4, query mapped as a new batch ({r['query_epochs']} query "
        f"epochs, {r['query_train_s']:.0f} s)",
        "",
        "| scored | AUROC knn | AUROC cv | AUROC llgap | TPR@1% | TPR@5% | rule FPR 1% "
        "| rule TPR 1% | rule FPR 5% | rule TPR 5% | median knn seen / calibration |",
        "| --- " * 11 + "|",
    ]
    for arm in ("direct", "mapped"):
        c = r[arm]
        out.append(
            f"| {arm} | {c['auroc_novelty_knn']:.3f} | {c['auroc_novelty_cv']:.3f} | "
            f"{c['auroc_novelty_llgap']:.3f} | {c['tpr_at_0.01_fpr']:.2f} | "
            f"{c['tpr_at_0.05_fpr']:.2f} | {c['rule_fpr_0.01']:.3f} | "
            f"{c['rule_tpr_0.01']:.2f} | {c['rule_fpr_0.05']:.3f} | "
            f"{c['rule_tpr_0.05']:.2f} | {c['median_query_seen']:.2f} / "
            f"{c['median_calibration']:.2f} |"
        )
    out.append("")
    for arm in ("direct", "mapped"):
        df = pd.DataFrame(r[f"{arm}_groups"])
        flagged = [
            f"{g} (AUROC {a:.2f}, q {qv:.1g})"
            for g, a, qv, v in zip(
                df["group"], df["auroc"], df["qval"], df["is_novel"], strict=True
            )
            if v
        ]
        out.append(f"- `group_novelty`, {arm}: flags {', '.join(flagged) or 'nothing'}.")
    return "\n".join(out) + "\n"


def summary(paths: list[str]) -> str:
    """One row per (kind, seed) from the ``--out`` files of several seeds."""
    import pandas as pd

    out = [
        "| kind | seed | AUROC knn | rule FPR / TPR at 5% | rule FPR / TPR at 1% | groups "
        "flagged, direct | groups flagged, mapped |",
        "| --- " * 7 + "|",
    ]
    for path in paths:
        seed = Path(path).stem.rsplit("_s", 1)[-1]
        for r in json.loads(Path(path).read_text()):
            c = r["mapped"]
            flags = []
            for arm in ("direct", "mapped"):
                df = pd.DataFrame(r[f"{arm}_groups"])
                flags.append(
                    ", ".join(g for g, v in zip(df["group"], df["is_novel"], strict=True) if v)
                    or "none"
                )
            out.append(
                f"| {r['kind']} | {seed} | {c['auroc_novelty_knn']:.3f} | "
                f"{c['rule_fpr_0.05']:.3f} / {c['rule_tpr_0.05']:.2f} | "
                f"{c['rule_fpr_0.01']:.3f} / {c['rule_tpr_0.01']:.2f} | {flags[0]} | "
                f"{flags[1]} |"
            )
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["--summarise"]:  # the table of several seeds' --out files
        print(summary(sys.argv[2:]))
        return
    main_loop(
        __doc__,
        "bench_results/query_novelty.json",
        run,
        markdown,
        extra=[("--query-epochs", {"type": int, "default": 100})],
    )


if __name__ == "__main__":
    main()
