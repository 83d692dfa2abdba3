"""Does ``tl.group_novelty`` flag an unseen population, and only it? PBMC 3k without B cells.

Trains on 80% of PBMC 3k's seen cells (1,200 HVGs; no B cells) (the novelty suite's settings: 150
epochs, lr 1e-3, seed 0), then tests groups of cells with ``ev.tl.group_novelty``:

- *query*: 20% of the seen cells, drawn before training and never given to the model
  (not even as validation cells), plus every B cell, grouped by cell type;
- *own*: the training AnnData (seen types only), each type's non-training cells;

each with ``reference="matched"`` (the default: each group against its cells' nearest
validation cells, the tested cells left out) and ``reference="all"`` (every validation
cell; on the model's own AnnData those of the other types).

Per cell it also reports the AUROC of ``novelty_cv`` for B against held-out seen cells
and the TPR at 1% and 5% FPR (thresholds at the query's seen cells' 99th / 95th
percentile), and the rule's own FPR / TPR (``cell_novelty``'s ``is_novel``).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_group_novelty.py --pbmc
../shared/data/pbmc3k.h5ad --kinds deep batch``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: share of the seen cells kept out of the model's AnnData, to arrive in the query
QUERY_SHARE = 0.2


def parse_variant(variant: str) -> tuple[str, dict]:
    """``"batch:random_sign_init=0.5"`` -> ``("batch", {"random_sign_init": 0.5})``."""
    kind, _, rest = variant.partition(":")
    extra = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        extra[key] = float(value)
    return kind, extra


def split_and_model(
    pbmc: str,
    variant: str,
    seed: int,
    epochs: int,
    lr: float,
    models: str | None = None,
    batch: bool = False,
):
    """``(model, its AnnData, the query, training seconds)`` of the benchmark's split: the
    model trained on 80% of the seen cells (or loaded from ``models``), the query the other
    20% and every B cell. With ``batch``, the model's cells are set up as one batch
    ``"reference"`` (``obs["batch"]``), so that a query can arrive as a new batch."""
    import ensemblevi as ev
    from ensemblevi.benchmark._runs import train_timed

    adata = ev.data.read(pbmc)
    ev.data.preprocess(adata, n_top_genes=1200)
    is_seen = (adata.obs["cell_type"].astype(str) != "B cells").to_numpy()
    rng = np.random.default_rng(seed)
    kept = is_seen & (rng.random(adata.n_obs) >= QUERY_SHARE)  # the model's cells
    seen, query = adata[kept].copy(), adata[~kept].copy()
    seen.obs["batch"] = "reference"
    for a in (seen, query):
        ev.model.EnsembleSCVI.setup_anndata(
            a, layer="counts", batch_key="batch" if batch and a is seen else None
        )
    kind, extra = parse_variant(variant)
    name = variant.replace(":", "_").replace("=", "") + ("_batch" if batch else "")
    path = Path(models) / f"pbmc_noB_q20_{name}_seed{seed}" if models else None
    if path is not None and path.exists():
        return ev.model.EnsembleSCVI.load(str(path), adata=seen), seen, query, float("nan")
    model, secs = train_timed(seen, kind, 4, seed, epochs, lr, **extra)
    if path is not None:
        model.save(str(path))
    return model, seen, query, secs


def main_loop(doc: str, out: str, evaluate, markdown, extra: list | None = None) -> None:
    """The benchmarks' command line: ``evaluate(variant, args)`` per ``--kinds`` entry, the
    records written to ``--out`` as each finishes, ``markdown(record)`` printed; ``extra``:
    further ``(flag, add_argument keywords)``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--pbmc", default="../shared/data/pbmc3k.h5ad")
    parser.add_argument("--kinds", nargs="+", default=["deep", "batch"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default=out)
    parser.add_argument("--models", default=None, help="save/reuse the trained models here")
    for flag, kwargs in extra or []:
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args()
    if not Path(args.pbmc).exists():
        print(f"skipped: no {args.pbmc} (pass --pbmc PATH to pbmc3k.h5ad)")
        return
    from ensemblevi._files import write_text

    records = []
    for variant in args.kinds:
        records.append(evaluate(variant, args))
        write_text(Path(args.out), json.dumps(records, default=float))
        print(markdown(records[-1]), flush=True)


def run(variant: str, args) -> dict:
    from sklearn.metrics import roc_auc_score

    import ensemblevi as ev

    seed = args.seed
    model, _, query, secs = split_and_model(
        args.pbmc, variant, seed, args.epochs, args.lr, args.models
    )
    t = time.perf_counter()
    tables = {}
    for ref in ("matched", "all"):
        kw = {"groupby": "cell_type", "seed": seed, "reference": ref, "progress": False}
        tables[f"query, {ref}"] = ev.tl.group_novelty(model, query, **kw)
        tables[f"own, {ref}"] = ev.tl.group_novelty(model, **kw)
    test_s = time.perf_counter() - t
    is_b = (query.obs["cell_type"] == "B cells").to_numpy()
    score = query.obs["ensemblevi_novelty_knn"].to_numpy()
    neg = score[~is_b]
    cells = {
        "auroc": float(roc_auc_score(is_b, score)),
        "auroc_cv": float(roc_auc_score(is_b, query.obs["ensemblevi_novelty_cv"])),
    }
    for fpr in (0.01, 0.05):
        cells[f"tpr_at_{fpr:g}_fpr"] = float(np.mean(score[is_b] > np.quantile(neg, 1 - fpr)))
    for alpha in (0.01, 0.05):  # the rule itself: threshold from the validation cells
        flags = ev.tl.cell_novelty(model, query, alpha=alpha, seed=seed, progress=False)
        flagged = flags["is_novel"].to_numpy()
        cells[f"rule_fpr_{alpha:g}"] = float(flagged[~is_b].mean())
        cells[f"rule_tpr_{alpha:g}"] = float(flagged[is_b].mean())
    own = ev.tl.cell_novelty(model, alpha=0.01, seed=seed, progress=False)
    cells["own_flagged_0.01"] = float(own["is_novel"].mean())
    return {
        "kind": variant,
        "train_s": secs,
        "test_s": test_s,
        "cells": cells,
        "tables": {k: v.reset_index().to_dict(orient="list") for k, v in tables.items()},
    }


def markdown(record: dict) -> str:
    import pandas as pd

    out = []
    for r in [record]:
        c = r["cells"]
        title = f"#### {r['kind']} K=4 (training {r['train_s']:.0f} s, tests {r['test_s']:.0f} s)"
        line = (
            f"Per cell (`novelty_knn`, B vs the query's seen cells): AUROC {c['auroc']:.3f} "
            f"(`novelty_cv` {c['auroc_cv']:.3f}), TPR "
            f"{c['tpr_at_0.01_fpr']:.2f} at 1% FPR and {c['tpr_at_0.05_fpr']:.2f} "
            "at 5% (oracle thresholds). The rule (`is_novel`, threshold from the "
            f"validation cells): alpha 1%: FPR {c['rule_fpr_0.01']:.3f} on the seen query "
            f"cells, TPR {c['rule_tpr_0.01']:.2f} on B; alpha 5%: FPR "
            f"{c['rule_fpr_0.05']:.3f}, TPR {c['rule_tpr_0.05']:.2f}. On the model's own "
            f"AnnData at 1%: {100 * c['own_flagged_0.01']:.2f}% of all cells flagged "
            "(training cells are not tested)."
        )
        out += [title, "", line, ""]
        for name, table in r["tables"].items():
            df = pd.DataFrame(table)
            out += [
                f"`{name}`:",
                "",
                "| group | n_tested | n_reference | auroc | qval | is_novel |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            rows = zip(
                df["group"],
                df["n_tested"],
                df["n_reference"],
                df["auroc"],
                df["qval"],
                df["is_novel"],
                strict=True,
            )
            out += [
                f"| {g} | {n} | {m} | {a:.3f} | {qv:.2g} | {bool(v)} |"
                for g, n, m, a, qv, v in rows
            ]
            out.append("")
    return "\n".join(out)


def main() -> None:
    main_loop(__doc__, "bench_results/group_novelty.json", run, markdown)


if __name__ == "__main__":
    from ensemblevi._warnings import quiet_third_party

    with quiet_third_party(loggers=True):
        main()
